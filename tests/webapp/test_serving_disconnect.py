"""A client that drops a streamed answer: the inference process stops generating for it."""

import json
import socket
import time

import pytest

from tests.webapp.serving_helpers import gunicorn, inference_process  # noqa: F401 - fixtures
from webapp.accounts.services import api_token_create

MAX_TOKENS = 900  # greedy rows of the tiny model run to this cap (see test_serving_inference)
N = 4


def _stream_then_drop(base_url: str, secret: str, slug: str, *, deltas: int = 3) -> int:
    """Open ``POST /v1/chat/completions`` with ``stream: true`` on a raw socket, read until ``deltas``
    content chunks have come, then close the socket (no more reads); the chunks read."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps({"model": slug, "messages": [{"role": "user", "content": "tell a long story"}],
                       "max_tokens": MAX_TOKENS, "n": N, "temperature": 0, "stream": True}).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (host.encode(), secret.encode(), len(body), body))
    received, seen = b"", 0
    while seen < deltas:
        chunk = sock.recv(65536)
        assert chunk, received.decode(errors="replace")[-2000:]
        received += chunk
        seen = received.count(b'"content": "') - received.count(b'"content": ""')
    assert b" 200 " in received.split(b"\r\n", 1)[0]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, as a killed client
    sock.close()
    return seen


def _tokens_when_settled(server, *, quiet_s: float = 1.5, deadline_s: float = 90) -> int:
    """The inference process's count of sampled tokens once it stopped growing for ``quiet_s``."""
    last, since, end = server.health()["tokens"], time.monotonic(), time.monotonic() + deadline_s
    while time.monotonic() < end:
        time.sleep(0.25)
        now = server.health()["tokens"]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"the inference process was still sampling after {deadline_s} s ({last} tokens)")


def _check_generation_stops(server, base_url, secret, slug):
    from webapp.annotation.models import Completion

    stored = Completion.objects.count()
    before = server.health()["tokens"]
    _stream_then_drop(base_url, secret, slug)
    sampled = _tokens_when_settled(server) - before
    # Kept generating: every row would run to its cap (N * MAX_TOKENS tokens).
    assert 0 < sampled < N * MAX_TOKENS // 2, sampled
    assert Completion.objects.count() == stored  # an answer the client never read whole is not stored
    # The process serves the next request as before.
    events = server.generate({"model": slug, "prompt": "again", "max_tokens": 4})
    assert events[-1]["event"] == "done"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_client_dropping_a_stream_of_the_web_app_stops_its_rows_in_the_inference_process(
    project, annotator, live_server, inference_process, settings  # noqa: F811
):
    settings.REWARDLOOP_SERVE_MAX_TOKENS = MAX_TOKENS
    server = inference_process()
    settings.REWARDLOOP_INFERENCE_URL = server.url
    _, secret = api_token_create(user=annotator, name="dropping client")
    _check_generation_stops(server, live_server.url, secret, project.slug)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_client_dropping_a_stream_under_gunicorn_stops_its_rows_in_the_inference_process(
    project, annotator, inference_process, gunicorn, monkeypatch  # noqa: F811
):
    """As the Procfile runs the web app (gunicorn, gthread workers)."""
    server = inference_process()
    monkeypatch.setenv("REWARDLOOP_INFERENCE_URL", server.url)
    monkeypatch.setenv("REWARDLOOP_SERVE_MAX_TOKENS", str(MAX_TOKENS))
    web = gunicorn()
    _, secret = api_token_create(user=annotator, name="dropping client")
    _check_generation_stops(server, web.url, secret, project.slug)
