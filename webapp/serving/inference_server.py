"""The inference process's HTTP front: ``POST /generate`` streams NDJSON; ``GET /healthz``.

The web app's serving views call it with their caller's ``Authorization`` header, and it checks
that header itself with the web app's rule (:mod:`webapp.serving.access`: a hashed, unrevoked
API token, and a member of the model's project; a pinned version other than the served one is
staff only), and counts it against the token's rate like the REST API and the web app
(``REWARDLOOP_API_RATE``, one count per token shared through Redis with ``REWARDLOOP_CACHE_URL``;
every generation request is counted here, and only here: the web app forwards its ``/v1/`` ones
uncounted, :func:`webapp.serving.access.throttle_check`), so calling
it directly gains nothing: a missing or bad token is a 401, a pinned version for an annotator a
403, a project that is not the caller's a 404, too many requests a 429 with ``Retry-After``, each
in OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.

``GET /debug/timeline?since=<s>`` (global staff only; else 401/403 in OpenAI's error shape) answers
the engine's latest steps and requests with their times (:meth:`Engine.timeline`, ``"now"``
added): what ``bench/serve.py`` reads to explain a late first token.

``GET /healthz`` without a token is the open liveness answer, ``{"ok": true}``. With a valid API
token it adds ``"served"``: ``{slug: served version number}`` (the ``N`` of ``vN``, as the web app's
``/healthz`` reports it) for the loaded projects the token's user
is staff of (empty for an annotator), and for global staff (``is_staff``) the engine's counters
``"batches"``, ``"rows"`` and ``"tokens"`` (forward runs, rows generated and tokens sampled, all
projects; ``tokens`` stops growing once every row has stopped); a bad or revoked
token is a 401 in OpenAI's error shape. Built on the standard
library's :class:`http.server.ThreadingHTTPServer`: one thread per connection reads the
engine's events, decodes text incrementally and applies stop sequences, while the engine's
one thread runs the forward passes. A connection idle for :data:`IDLE_TIMEOUT_S` (130 s, just over
the web app's keep-alive) is closed. A connection's thread keeps its database connection between its
requests as Django's request handling does (``DJANGO_CONN_MAX_AGE`` seconds; 0: none while idle) and
closes it when the connection ends.

``POST /generate`` takes JSON::

    {"model": "demo" | "demo@3", "prompt": "text"} or {"model": ..., "messages": [{"role", "content"}]},
    plus "max_tokens", "temperature", "top_p", "n", "seed", "stop": [str] (validated by the web app)
    and "id" (the web app's answer id, up to 64 characters: the request's ``id`` in the timeline)

and answers ``200`` with one JSON object per line::

    {"event": "start", "model": "demo@3", "version": 3, "prompt_tokens": 12}
    {"event": "delta", "index": 0, "text": "Hel"}                 (as tokens arrive)
    {"event": "end", "index": 0, "text": ..., "finish_reason": "stop" | "length",
     "token_ids": [...], "logprobs": [...], "prompt_token_ids": [...]}   (one per choice)
    {"event": "done"}

or ``{"event": "error", "status": 4xx/5xx, "message": ...}`` in place of the rest (a malformed
body is 400, a pinned version that does not exist 404, a prompt longer than the model's context 400).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from django.db import close_old_connections, connection

from webapp.policies.models import ModelVersion, Project

from . import access
from .client import KEEPALIVE_S
from .engine import Engine, SamplingParams

log = logging.getLogger(__name__)

# Seconds a connection's thread waits for the next request (or for any read or write of one) before
# it closes the connection and ends: a little longer than the web app's client keeps an idle
# connection (:data:`webapp.serving.client.KEEPALIVE_S`), so the client always drops an idle one
# first and never sends a request on one this side is closing. Without it every kept-alive
# connection held its thread for as long as the client kept it.
IDLE_TIMEOUT_S = KEEPALIVE_S + 10.0


@contextmanager
def _request_database():
    """Bracket one request's database work as Django brackets a request (its ``request_started`` and
    ``request_finished`` receivers): :func:`django.db.close_old_connections` before and after, so the
    thread's connection is kept for its next request until it is ``CONN_MAX_AGE`` seconds old
    (``DJANGO_CONN_MAX_AGE``; 0: closed after each request) and dropped once unusable."""
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()


class UnknownModel(LookupError):
    pass


class Versions:
    """Which model version each model name means, kept fresh by a poller thread.

    ``slug`` means the project's served version. The poller reads every known project's
    served version each ``poll_s`` seconds; a new one is loaded into the engine first and only
    then becomes what ``slug`` means, so requests never wait for a load and none is dropped.
    """

    def __init__(self, engine: Engine, *, poll_s: float = 1.0):
        self.engine, self.poll_s = engine, poll_s
        self.served: dict[str, int] = {}  # slug -> served version id
        self.lock = threading.Lock()  # guards ``served``
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="served-version-poller", daemon=True)
        self._thread.start()

    def resolve(self, model: str) -> int:
        """The version id ``model`` (``slug`` or ``slug@number``) means now; UnknownModel if none."""
        slug, _, pin = model.partition("@")
        if pin:
            try:
                number = int(pin)
            except ValueError:
                raise UnknownModel(model) from None
            version = ModelVersion.objects.filter(project__slug=slug, number=number).values_list("pk", flat=True).first()
            if version is None:
                raise UnknownModel(model)
            return version
        with self.lock:
            if slug in self.served:
                return self.served[slug]
        version = Project.objects.filter(slug=slug).values_list("served_version_id", flat=True).first()
        if version is None:
            raise UnknownModel(model)
        self.engine.loaded(version)
        with self.lock:
            self.served[slug] = version
        return version

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                with self.lock:
                    slugs = list(self.served)
                rows = dict(Project.objects.filter(slug__in=slugs).values_list("slug", "served_version_id"))
                for slug, version in rows.items():
                    if version is not None and version != self.served.get(slug):
                        self.engine.loaded(version)  # load before switching: requests never wait on it
                        with self.lock:
                            self.served[slug] = version
                        log.info("project %s: now serving version id %s", slug, version)
            except Exception:
                log.exception("served-version poll failed; trying again")
            finally:
                close_old_connections()

    def close(self) -> None:
        self._stop.set()


class _Choice:
    """Incremental text of one choice: decoded from its token ids, cut at the first stop sequence."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.sent = 0  # characters already streamed
        self.text = ""
        self.stopped_at: int | None = None  # tokens kept when a stop sequence appeared

    def add(self, token: int) -> str:
        """Append a token; the text that can be streamed now (held back: a possible stop prefix, a split character)."""
        if self.stopped_at is not None:
            return ""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True).replace("\x00", "\ufffd")
        hits = [at for at in (self.text.find(s) for s in self.stop) if at >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped_at = len(self.ids)
        if self.stopped_at is not None:
            return self.flush()
        safe = len(self.text) - max((len(s) - 1 for s in self.stop), default=0)
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1  # a character whose bytes are split over tokens
        if safe <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : safe], safe
        return delta

    def flush(self) -> str:
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta


class InferenceHTTPServer(ThreadingHTTPServer):
    """The standard library's threading HTTP server with a listen queue for bursts.

    :class:`socketserver.TCPServer` listens with a queue of 5 connections: when more relays
    connect at once than its thread accepts (16 clients' requests reaching a busy process
    together), Linux drops the extra handshakes and each such client waits for the 1 s SYN
    retransmit, so its first token comes a second late (``bench/serve.py``'s timeline at 16
    clients). 128 is the kernel's default ``somaxconn`` cap before Linux 5.4.
    """

    request_queue_size = 128
    daemon_threads = True


def make_handler(engine: Engine, versions: Versions, *, idle_timeout_s: float = IDLE_TIMEOUT_S):
    """The request handler class of the inference process's server (one instance per connection).

    A connection idle for ``idle_timeout_s`` seconds (:data:`IDLE_TIMEOUT_S`) is closed. Each
    request's checks use the thread's database connection between two
    :func:`django.db.close_old_connections`, as Django brackets a request: with
    ``DJANGO_CONN_MAX_AGE`` 0 it is closed after the checks (a thread waiting on a kept-alive
    connection holds none); above 0 the next requests on that connection reuse it until it is that
    many seconds old (or unusable). It is closed when the connection's thread ends.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout_s  # socketserver sets it on the connection: an idle one ends its thread

        def handle(self):
            try:
                super().handle()
            finally:
                connection.close()  # the thread ends here: nothing else would close its database connection

        def log_message(self, fmt, *args):  # the web app logs requests; keep this quiet
            log.debug(fmt, *args)

        def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _refused(self, exc: access.AccessRefused) -> None:
            """Answer ``exc``: its status and OpenAI body, a 401 with ``WWW-Authenticate``, a 429 with ``Retry-After``."""
            headers = {"WWW-Authenticate": 'Bearer realm="rewardloop"'} if exc.status == 401 else {}
            if exc.retry_after is not None:
                headers["Retry-After"] = str(exc.retry_after)
            self._json(exc.status, exc.body(), headers=headers)

        def do_GET(self):
            if self.path.startswith("/debug/timeline"):
                return self._timeline()
            if self.path != "/healthz":
                return self._json(404, {"error": "not found"})
            header = self.headers.get("Authorization")
            if not header:  # the orchestrator's liveness probe: no token, nothing about projects
                return self._json(200, {"ok": True})
            try:
                with _request_database():
                    token = access.token_for_header(header)
                    with versions.lock:
                        served = dict(versions.served)
                    staffed = sorted(access.staff_slugs(user=token.user, slugs=served))
                    numbers = dict(
                        ModelVersion.objects.filter(pk__in=[served[s] for s in staffed]).values_list("pk", "number"))
            except access.AccessRefused as exc:
                return self._refused(exc)
            body = {"ok": True, "served": {slug: numbers[served[slug]] for slug in staffed}}
            if token.user.is_staff:  # the engine's counters sum every project's traffic
                body.update(batches=engine.batches_run, rows=engine.rows_run, tokens=engine.tokens_run)
            return self._json(200, body)

        def _timeline(self):
            """``GET /debug/timeline?since=<monotonic s>``, global staff only: :meth:`Engine.timeline`."""
            try:
                with _request_database():
                    token = access.token_for_header(self.headers.get("Authorization"))
            except access.AccessRefused as exc:
                return self._refused(exc)
            if not token.user.is_staff:
                return self._json(403, access.openai_error_body(403, "The timeline is for staff."))
            query = parse_qs(urlsplit(self.path).query)
            try:
                since = float(query.get("since", ["0"])[0])
            except ValueError:
                return self._json(400, access.openai_error_body(400, "since must be a number", param="since"))
            return self._json(200, {"now": time.monotonic(), **engine.timeline(since)})

        def do_POST(self):
            if self.path != "/generate":
                return self._json(404, {"error": "not found"})
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with _request_database():  # the checks; done before streaming
                token = self._caller()
                if token is None:
                    return
                # Only now (the body read, the caller let in) the engine's next prefill waits for it (bounded):
                # a slow or refused caller never holds a step.
                with engine.arrival() as arrival:
                    request, prompt_ids, model, params, stop, tokenizer = self._received(raw, token, arrival)
            if request is not None:
                self._stream(request, prompt_ids, model, params, stop, tokenizer)

        def _caller(self):
            """The request's API token once it passes the token check and the rate; None once answered (401/429)."""
            try:
                token = access.token_for_header(self.headers.get("Authorization"))
                access.throttle_check(token=token)  # the REST API's per-token rate; counted here only, forwarded or not
            except access.AccessRefused as exc:
                self._refused(exc)
                return None
            return token

        def _received(self, raw, token, arrival):
            """Parse and tokenize the body ``raw`` of the caller ``token``'s request; submit.
            ``(request, ...)``, or ``(None, ...)`` once answered."""
            none = (None,) * 6
            try:
                body = json.loads(raw)
                model = str(body["model"])
                params = SamplingParams(
                    max_tokens=int(body.get("max_tokens", 16)), temperature=float(body.get("temperature", 1.0)),
                    top_p=float(body.get("top_p", 1.0)), n=int(body.get("n", 1)),
                    seed=None if body.get("seed") is None else int(body["seed"]),
                )
                stop = [str(s) for s in body.get("stop") or [] if s]
                tag = None if body.get("id") is None else str(body["id"])[:64]
            except (ValueError, KeyError, TypeError) as exc:
                self._json(400, {"event": "error", "status": 400, "message": f"malformed request: {exc}"})
                return none
            try:
                access.model_project(user=token.user, model=model)
            except access.AccessRefused as exc:
                self._refused(exc)
                return none
            try:
                version_id = versions.resolve(model)
                arrival.for_version(version_id)  # from now on only a run of its version waits for it
                item = engine.loaded(version_id)
                tokenizer = item.tokenizer
                if body.get("messages") is not None:
                    text = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
                    prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                else:
                    prompt_ids = list(tokenizer(str(body.get("prompt", "")))["input_ids"])
            except UnknownModel:
                self._json(404, {"event": "error", "status": 404, "message": f"no model {model!r}"})
                return none
            if not prompt_ids:
                self._json(400, {"event": "error", "status": 400, "message": "the prompt is empty"})
                return none
            request = engine.submit(version_id, prompt_ids, params, arrival=arrival, tag=tag)
            return request, prompt_ids, model, params, stop, tokenizer

        def _stream(self, request, prompt_ids, model, params, stop, tokenizer):
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            choices = [_Choice(tokenizer, stop) for _ in range(params.n)]
            open_choices = params.n
            try:
                while open_choices:
                    event = request.events.get()
                    kind = event[0]
                    if kind == "start":
                        self._line({"event": "start", "model": model, "version": event[1].version_number,
                                    "prompt_tokens": len(prompt_ids), "prompt_token_ids": prompt_ids})
                    elif kind == "token":
                        choice = choices[event[1]]
                        delta = choice.add(event[2])
                        if choice.stopped_at is not None:
                            request.stop_choices.add(event[1])
                        if delta:
                            self._line({"event": "delta", "index": event[1], "text": delta})
                    elif kind == "end":
                        index, info, choice = event[1], event[2], choices[event[1]]
                        if choice.stopped_at is None:
                            choice.text = tokenizer.decode(info["token_ids"], skip_special_tokens=True).replace(
                                "\x00", "\ufffd")
                        delta = choice.flush()
                        if delta:
                            self._line({"event": "delta", "index": index, "text": delta})
                        kept = choice.stopped_at if choice.stopped_at is not None else len(info["token_ids"])
                        reason = "stop" if info["finished"] or choice.stopped_at is not None else "length"
                        self._line({"event": "end", "index": index, "text": choice.text, "finish_reason": reason,
                                    "token_ids": info["token_ids"][:kept], "logprobs": info["logprobs"][:kept],
                                    "finished": bool(info["finished"] and choice.stopped_at is None)})
                        open_choices -= 1
                    elif kind == "error":
                        status = 400 if "context" in event[1] else 500
                        self._line({"event": "error", "status": status, "message": event[1]})
                        break
                else:
                    self._line({"event": "done"})
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                request.cancelled.set()  # the client left (or read nothing for idle_timeout_s): its rows stop
                self.close_connection = True  # the answer is cut: nothing more can follow on this connection

        def _line(self, obj: dict) -> None:
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    return Handler


def serve(*, host: str, port: int, window_s: float, max_batch: int, precision: str, poll_s: float,
          ready: threading.Event | None = None, prefix_cache: bool = True, hold_s: float = 0.25,
          timeline_len: int = 4096) -> None:
    """Run the inference process's server until interrupted (``timeline_len``: :class:`Engine`'s)."""
    from webapp.policies.runtime import policy_load

    def load(version_id: int):
        try:
            version = ModelVersion.objects.select_related("project").get(pk=version_id)
            return policy_load(version, trainable=False), version.number
        finally:
            close_old_connections()

    engine = Engine(load=load, window_s=window_s, max_batch=max_batch, precision=precision, prefix_cache=prefix_cache,
                    hold_s=hold_s, timeline_len=timeline_len)
    versions = Versions(engine, poll_s=poll_s)
    server = InferenceHTTPServer((host, port), make_handler(engine, versions))
    log.info("inference process listening on http://%s:%s", host, server.server_address[1])
    print(f"inference process listening on http://{host}:{server.server_address[1]}", flush=True)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        versions.close()
        engine.close()
