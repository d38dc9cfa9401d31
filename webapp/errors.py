"""The one error type for broken business rules.

Services raise :class:`ApplicationError` with a message meant for the person
who caused it; views turn it into a message on the page (or a 400/409 for
htmx requests), commands into ``CommandError``.
"""


class ApplicationError(Exception):
    def __init__(self, message: str, *, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
