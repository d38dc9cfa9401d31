"""The one error type for broken business rules.

Services raise :class:`ApplicationError` with a message meant for the person
who caused it; views turn it into a message on the page (or a 400/409 for
htmx requests), commands into ``CommandError``.

``stale=True`` marks a refusal caused by state that changed since the caller last
read it: ``message`` then ends with the page's advice ("reload the page") and
``api_message`` with the API's ("fetch the current state and retry"); the REST
API answers with ``api_message``, everything else with ``message``.
"""

PAGE_STALE_HINT = "reload the page"
API_STALE_HINT = "fetch the current state (e.g. queue/next) and retry"


class ApplicationError(Exception):
    def __init__(self, message: str, *, extra: dict | None = None, stale: bool = False):
        if stale:
            message, api_message = f"{message}; {PAGE_STALE_HINT}.", f"{message}; {API_STALE_HINT}."
        else:
            api_message = message
        super().__init__(message)
        self.message = message
        self.api_message = api_message
        self.extra = extra or {}


class InvalidFields(ApplicationError):
    """A request whose fields do not fit the rule, named one by one: ``fields`` is a list of
    ``(field, message)`` in the request's own field names. Pages show ``message`` (words for a person
    at the form); the REST API answers 400 ``invalid`` with one entry per field (webapp/api.py), as for
    a malformed body, since nothing about the present state refused it."""

    def __init__(self, message: str, *, fields: list[tuple[str, str]], stale: bool = False):
        super().__init__(message, stale=stale)
        self.fields = list(fields)
