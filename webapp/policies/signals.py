"""Signals policies sends for the apps above it, so this app never imports them or names their tasks.

``version_served``: sent inside the transaction that switches a project's served
version, after the switch. ``sender`` is ``Project``; kwargs ``project`` (the
locked row, already serving it), ``version`` (the newly served ``ModelVersion``)
and ``previous`` (the one served before, or None). A receiver's writes commit or
roll back with the switch (annotation retires older versions' open items).

``version_served_committed``: sent after the commit that made the switch, with
``project_id`` (int): the pool of unrated completions should be refilled from the
new version. Receivers must not raise for a broker problem: promotion has already
happened. Annotation connects the pool refill in its ``AppConfig.ready``.

``promotion_check``: sent before a version newer than the served one is served
(by staff or by a run), inside the promotion's transaction; kwargs ``version``
(the candidate ``ModelVersion``) and ``served`` (the served one). A receiver
returns a sentence saying why the candidate may not be served yet, or ``""``.
The arena connects its "must beat the served version" rule here.

``promotion_wait``: asked (outside any promotion) for each version newer than the served one that
passed the promotion guard and is not served, to say on the run and versions pages what it waits
for; kwargs ``version`` and ``served``. A receiver returns None (nothing to wait for) or a dict
``{"gate": str, "votes": int, "needed": int, "won": bool, "reason": str}``: a gate
that counts votes (``votes`` so far of the ``needed``), whether the candidate has passed it
(``won``), and a sentence. The arena connects its vote count here.
"""

from django.dispatch import Signal

version_served = Signal()
version_served_committed = Signal()
promotion_check = Signal()
promotion_wait = Signal()
