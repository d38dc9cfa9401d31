"""Annotation's signals for the apps above it, and its receivers of lower layers' signals.

``completions_stored``: sent after the commit that stored new pool completions, with
``project_id`` (int) and ``completion_ids`` (list of int). Sent with ``send_robust``: a
receiver's error is logged, never raised into the pool refill. The rewards app scores the
new completions with the latest reward model (``Completion.rm_score``/``rm_uncertainty``),
so the annotation queue can order by them without importing it.
"""

from django.dispatch import Signal

completions_stored = Signal()



def pool_refill_on_version_served(sender, *, project_id: int, **kwargs) -> None:
    """Queue a pool refill once a project serves another version (``version_served_committed``).

    Never raises for a broker problem (:func:`.services.pool_refill_send`).
    """
    from .services import pool_refill_send

    pool_refill_send(project_id=project_id)
