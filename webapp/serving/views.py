"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

Every answer is stored as production completions under its ``id`` (``chatcmpl-…`` /
``cmpl-…``), linked to the token that received it, for ``POST /api/v1/feedback``.

The official ``openai`` client works unchanged with ``base_url="<rewardloop>/v1"`` and an API
token of Rewardloop as its key. The model name is a project's slug (its served version) or
``slug@N`` (version N; staff only, unless N is the served version). Any member of the project
may call its model. These views never load a model: they check the token, the role and the
body, then stream from the inference process (:mod:`webapp.serving.client`), as server-sent
events when ``stream`` is true.

Every error answers OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``:
400 ``invalid_request_error`` (``param`` names the field), 401 ``authentication_error``, 403
``permission_error``, 404 ``invalid_request_error`` with code ``model_not_found`` (no such
project, or not one of yours: not told apart), 413 (body over the cap), 429
``rate_limit_error``, 503 ``server_error`` (the inference process is down).
"""

from __future__ import annotations

import json
import secrets
import time

from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import ValidationError

from webapp.accounts import services as token_services
from webapp.annotation.production import AnswerChoice, production_answer_store
from webapp.policies.selectors import projects_for

from . import access
from .client import InferenceUnavailable, generate_events
from .schemas import MODEL_PATTERN, ChatIn, CompletionIn


class OpenAIError(access.AccessRefused):
    """A call refused by these views themselves (the body, the method, the inference process): the
    status and OpenAI's error fields of the token and role checks' :class:`~access.AccessRefused`,
    which :func:`_openai_view` answers alike (:func:`_error_response`)."""


def _error_response(exc: access.AccessRefused) -> JsonResponse:
    """``exc`` in OpenAI's shape (:meth:`~access.AccessRefused.body`) with its status, and a 429's ``Retry-After``."""
    response = JsonResponse(exc.body(), status=exc.status)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


def _authenticate(request, *, count: bool = True):
    """The request's API token (``Authorization: Bearer``); sets ``request.user`` and ``request.auth``.
    ``count``: count it against the token's rate here (:func:`webapp.serving.access.throttle_check`);
    False for generation, which the inference process counts. Raises :class:`~access.AccessRefused`
    (401, 429)."""
    token = access.token_for_header(request.headers.get("Authorization"))
    token_services.api_token_mark_used(token=token)
    request.user, request.auth = token.user, token
    if count:
        access.throttle_check(token=token)
    return token


def _body(request, schema):
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    if length > settings.REWARDLOOP_SERVE_MAX_BODY_BYTES:
        raise OpenAIError(413, f"The body is larger than {settings.REWARDLOOP_SERVE_MAX_BODY_BYTES} bytes.")
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "The body must be a JSON object.")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        message = first.get("msg", "invalid").removeprefix("Value error, ")
        if first.get("type") == "string_pattern_mismatch" and (first.get("ctx") or {}).get("pattern") == MODEL_PATTERN:
            message = "a project's slug, or slug@N for its version N (e.g. demo or demo@3)"  # not the regex
        if param is None and ":" in message.split(" ")[0]:
            # A whole-body check names its field itself ("max_tokens: at most 512"): keep it as is.
            raise OpenAIError(400, message, param=message.split(":")[0]) from None
        raise OpenAIError(400, f"{param + ': ' if param else ''}{message}", param=param) from None


def _openai_view(method: str):
    def decorate(handler):
        def view(request, *args, **kwargs):
            try:
                if request.method != method:
                    raise OpenAIError(405, f"Use {method} here.")
                return handler(request, *args, **kwargs)
            except access.AccessRefused as exc:  # OpenAIError too
                response = _error_response(exc)
                if exc.status == 405:
                    response["Allow"] = method
                return response

        view.__doc__, view.__name__ = handler.__doc__, handler.__name__
        return csrf_exempt(view)

    return decorate


def _start(body: dict, *, authorization: str):
    """The inference process's event stream, with its first event read (errors surface before we answer).

    The caller's ``Authorization`` header goes along: the inference process checks the token
    and the role again and counts the request against the token's rate (:mod:`webapp.serving.access`);
    its 429 comes back here with its ``Retry-After``."""
    try:
        events = generate_events(body, authorization=authorization)
        first = next(events)
    except (InferenceUnavailable, StopIteration) as exc:
        raise OpenAIError(503, f"The model is not available right now: {exc}", code="inference_unavailable") from None
    if first["event"] == "error":
        status = first.get("status", 500)
        default_param = "model" if status in (403, 404) else ("messages" if status == 400 else None)
        raise OpenAIError(status, first.get("message", "generation failed"),
                          code=first.get("code") or ("model_not_found" if status == 404 else None),
                          param=first.get("param", default_param), retry_after=first.get("retry_after"))
    return first, events


class _Answer:
    """Collects one request's events into OpenAI's objects (non-streaming and streaming)."""

    def __init__(self, *, id: str, chat: bool, params, start: dict, project, token, prompt_text: str):
        self.id, self.chat, self.params, self.start = id, chat, params, start
        self.project, self.token, self.prompt_text = project, token, prompt_text
        self.created = int(time.time())
        self.ends: dict[int, dict] = {}

    @property
    def fingerprint(self) -> str:
        return f"v{self.start['version']}"

    def store(self) -> None:
        """Store the answer as production completions under its id, so feedback can name it."""
        production_answer_store(
            project=self.project, version_number=self.start["version"], api_token=self.token,
            response_id=self.id, prompt_text=self.prompt_text, prompt_token_ids=self.start["prompt_token_ids"],
            choices=[AnswerChoice(index=e["index"], text=e["text"], token_ids=e["token_ids"], logprobs=e["logprobs"],
                                  finished=e["finished"]) for _, e in sorted(self.ends.items())],
        )

    def usage(self) -> dict:
        completion = sum(len(e["token_ids"]) for e in self.ends.values())
        prompt = self.start["prompt_tokens"]
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self) -> dict:
        ends = [self.ends[i] for i in sorted(self.ends)]
        if self.chat:
            choices = [{"index": e["index"], "message": {"role": "assistant", "content": e["text"]},
                        "finish_reason": e["finish_reason"], "logprobs": None} for e in ends]
        else:
            choices = [{"index": e["index"], "text": e["text"], "finish_reason": e["finish_reason"], "logprobs": None}
                       for e in ends]
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.params.model, "system_fingerprint": self.fingerprint,
                "choices": choices, "usage": self.usage()}

    def chunk(self, index: int, *, text: str | None = None, role: bool = False, finish: str | None = None) -> dict:
        if self.chat:
            delta = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.params.model, "system_fingerprint": self.fingerprint,
                "choices": [choice]}


def _prompt_text(messages: list[dict]) -> str:
    """A chat as one prompt text (what staff read beside the answer): ``role: content`` blocks."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _complete(request, schema, *, chat: bool):
    token = _authenticate(request, count=False)  # the inference process counts it
    params = _body(request, schema)
    project = access.model_project(user=request.user, model=params.model)
    answer_id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    body = {"model": params.model, "id": answer_id, **params.sampling()}  # the id names it in the timeline
    if chat:
        body["messages"] = params.chat()
        prompt_text = _prompt_text(body["messages"])
    else:
        body["prompt"] = prompt_text = params.prompt
    start, events = _start(body, authorization=request.headers.get("Authorization", ""))
    answer = _Answer(id=answer_id, chat=chat, params=params, start=start, project=project, token=token,
                     prompt_text=prompt_text)
    if not params.stream:
        for event in events:
            if event["event"] == "end":
                answer.ends[event["index"]] = event
            elif event["event"] == "error":
                raise OpenAIError(event.get("status", 500), event.get("message", "generation failed"))
        answer.store()
        return JsonResponse(answer.whole())
    response = StreamingHttpResponse(_sse(answer, events), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must not hold the stream back
    return response


def _sse(answer: _Answer, events):
    def data(obj) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    if answer.chat:
        for index in range(answer.params.n):
            yield data(answer.chunk(index, text="", role=True))
    try:
        for event in events:
            if event["event"] == "delta":
                yield data(answer.chunk(event["index"], text=event["text"]))
            elif event["event"] == "end":
                answer.ends[event["index"]] = event
                yield data(answer.chunk(event["index"], finish=event["finish_reason"]))
            elif event["event"] == "error":
                yield data({"error": {"message": event.get("message"), "type": "server_error", "param": None,
                                      "code": None}})
                return
    except InferenceUnavailable as exc:
        yield data({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        return
    answer.store()  # before [DONE]: once the client has read the whole stream, feedback on its id works
    if answer.params.include_usage:
        yield data({**answer.chunk(0), "choices": [], "usage": answer.usage()})
    yield b"data: [DONE]\n\n"


@_openai_view("POST")
def chat_completions(request):
    """``POST /v1/chat/completions``: OpenAI's Chat Completions, JSON or server-sent events."""
    return _complete(request, ChatIn, chat=True)


@_openai_view("POST")
def completions(request):
    """``POST /v1/completions``: OpenAI's (legacy) Completions, JSON or server-sent events."""
    return _complete(request, CompletionIn, chat=False)


def _model_out(project) -> dict:
    return {"id": project.slug, "object": "model", "created": int(project.created_at.timestamp()),
            "owned_by": "rewardloop"}


@_openai_view("GET")
def models(request):
    """``GET /v1/models``: the projects the token's user is a member of, one model each."""
    _authenticate(request)
    return JsonResponse({"object": "list", "data": [_model_out(p) for p, _ in projects_for(user=request.user)]})


@_openai_view("GET")
def model(request, model: str):
    """``GET /v1/models/<model>``: one project's model, or 404."""
    _authenticate(request)
    return JsonResponse(_model_out(access.model_project(user=request.user, model=model)))


@csrf_exempt
def unknown_url(request, rest: str = ""):
    """Any other path under ``/v1/`` (``/v1/embeddings``, a trailing slash): 404 in OpenAI's shape, as
    OpenAI answers an unknown URL, naming the routes served here, instead of an HTML page."""
    return _error_response(OpenAIError(
        404, f"Invalid URL ({request.method} {request.path}): this server answers POST /v1/chat/completions, "
        "POST /v1/completions, GET /v1/models and GET /v1/models/{model}.",
    ))
