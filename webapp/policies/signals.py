"""Signals policies sends for the apps above it (it never names their tasks).

``version_served``: a project now serves another version and its pool of
unrated completions should be refilled from it. Sent after the commit that
made the change, with ``project_id`` (int). Receivers must not raise for a
broker problem: promotion has already happened. Annotation connects the pool
refill in its ``AppConfig.ready``.
"""

from django.dispatch import Signal

version_served = Signal()
