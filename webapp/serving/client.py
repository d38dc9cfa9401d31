"""The web app's side of the inference process: stream its NDJSON events over HTTP (httpx2).

Torch-free: web processes import this, never :mod:`webapp.serving.engine`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
from django.conf import settings


class InferenceUnavailable(Exception):
    """The inference process could not be reached, or broke off."""


_client: httpx2.Client | None = None

# How long an idle connection to the inference process stays open for the next request: longer
# than the pauses between bursts of clients (httpx's default, 5 s, is not), so a burst reuses the
# connections of the last one instead of opening one each (a new thread in the inference process).
# The inference process closes a connection idle a little longer than this
# (webapp.serving.inference_server.IDLE_TIMEOUT_S = KEEPALIVE_S + 10), so this side drops it first.
KEEPALIVE_S = 120.0


def _http() -> httpx2.Client:
    global _client
    if _client is None:  # one pooled client per process (thread-safe)
        _client = httpx2.Client(timeout=httpx2.Timeout(300.0, connect=3.0),
                                limits=httpx2.Limits(max_connections=64, keepalive_expiry=KEEPALIVE_S))
    return _client


def generate_events(body: dict, *, authorization: str) -> Iterator[dict]:
    """POST ``body`` to the inference process's ``/generate`` with the caller's ``Authorization``
    header; yield its events as they come.

    A refusal of the inference process itself (401/403/404, or 429 over the token's rate, in
    OpenAI's error shape) comes back as one ``{"event": "error", "status", "message", "param",
    "code", "retry_after"}`` event (``retry_after``: the seconds of its ``Retry-After``, else None).

    Raises:
        InferenceUnavailable: not reachable, or the connection broke before ``done``.
    """
    url = settings.REWARDLOOP_INFERENCE_URL.rstrip("/") + "/generate"
    headers = {"Authorization": authorization}
    try:
        with _http().stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                try:
                    error = response.json().get("error") or {}
                except ValueError:
                    error = {}
                if isinstance(error, dict) and error.get("message"):
                    retry_after = response.headers.get("Retry-After", "")
                    yield {"event": "error", "status": response.status_code, "message": error["message"],
                           "param": error.get("param"), "code": error.get("code"),
                           "retry_after": int(retry_after) if retry_after.isdigit() else None}
                    return
                for line in response.text.splitlines():  # an NDJSON error event with its status
                    if line.strip():
                        yield json.loads(line)
                return
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)
    except httpx2.HTTPError as exc:
        raise InferenceUnavailable(f"the inference process at {settings.REWARDLOOP_INFERENCE_URL} "
                                   f"did not answer: {exc.__class__.__name__}") from exc
