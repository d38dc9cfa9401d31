"""Annotation's receivers of lower layers' signals."""


def pool_refill_on_version_served(sender, *, project_id: int, **kwargs) -> None:
    """Queue a pool refill once a project serves another version (``version_served_committed``).

    Never raises for a broker problem (:func:`.services.pool_refill_send`).
    """
    from .services import pool_refill_send

    pool_refill_send(project_id=project_id)
