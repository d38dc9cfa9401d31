"""The way from a ``/v1/`` request to the engine: the web app's relay to the inference process, the
inference process's listen queue and checks, and the timeline that shows each request on that way."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from types import SimpleNamespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from tests.webapp.serving_helpers import inference_process  # noqa: F401 - fixture
from webapp.accounts.services import api_token_create
from webapp.serving import access
from webapp.serving.client import KEEPALIVE_S, generate_events
from webapp.serving.inference_server import IDLE_TIMEOUT_S, InferenceHTTPServer, make_handler


def test_a_burst_of_new_connections_to_the_inference_process_all_get_through_at_once():
    # Nothing accepts while they connect (as when the process is busy): the listen queue alone holds
    # them. With the standard library's queue of 5, the 7th handshake is dropped and its client
    # waits for the SYN retransmit (1 s), past this timeout.
    server = InferenceHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    connections = []
    try:
        for _ in range(32):
            connections.append(socket.create_connection(server.server_address, timeout=0.5))
    finally:
        for connection in connections:
            connection.close()
        server.server_close()
    assert len(connections) == 32


class _CountingInference(ThreadingHTTPServer):
    """A stand-in inference process: answers ``POST /generate`` with ``start`` and ``done`` and counts
    the TCP connections made to it."""

    daemon_threads = True

    def __init__(self):
        self.connections = 0
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                counter.connections += 1
                super().setup()

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                body = b'{"event": "start"}\n{"event": "done"}\n'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _DatabaseWatch:
    """An inference front (no engine) whose connection threads report their database connection:
    ``between`` the DB-API connection (or None) each thread holds after each request, ``at_end``
    the same once the thread's connection ended."""

    def __init__(self, idle_timeout_s: float):
        from django.db import connection

        self.between, self.at_end, self.ended = [], [], threading.Event()
        watch = self

        class Handler(make_handler(None, SimpleNamespace(), idle_timeout_s=idle_timeout_s)):
            def handle_one_request(self):
                super().handle_one_request()
                if not self.close_connection:
                    watch.between.append(connection.connection)  # this thread's, while it waits

            def handle(self):
                super().handle()
                watch.at_end.append(connection.connection)
                watch.ended.set()

        self.server = InferenceHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def healthz(self, client: http.client.HTTPConnection) -> int:
        """One ``GET /healthz`` with a token the database has never seen (a 401 after its lookup)."""
        client.request("GET", "/healthz", headers={"Authorization": "Bearer rl_no-such-token"})
        response = client.getresponse()
        response.read()
        return response.status

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.django_db(transaction=True)
def test_an_idle_kept_alive_connection_is_closed_by_the_inference_process_and_holds_no_database_connection(
        monkeypatch):
    # Without a timeout every kept-alive connection held its thread for as long as the web
    # app's client kept it; with DJANGO_CONN_MAX_AGE=0 its thread holds no database connection.
    from django.db import connections

    assert IDLE_TIMEOUT_S > KEEPALIVE_S  # the client drops an idle connection first
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    watch = _DatabaseWatch(idle_timeout_s=0.5)
    try:
        with socket.create_connection(watch.server.server_address, timeout=5) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: inference\r\n"
                           b"Authorization: Bearer rl_no-such-token\r\n\r\n")  # checked against the database
            received = b""
            while chunk := client.recv(65536):  # until the server closes it (or the 5 s timeout raises)
                received += chunk
    finally:
        watch.close()
    assert received.startswith(b"HTTP/1.1 401 "), received
    assert watch.between == [None]


@pytest.mark.django_db(transaction=True)
def test_the_requests_of_one_kept_alive_connection_share_a_database_connection_within_conn_max_age(monkeypatch):
    # It closed its database connection after every request's checks: with DJANGO_CONN_MAX_AGE set,
    # each request to the inference process opened a new PostgreSQL connection.
    from django.db import connections

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 600)  # DJANGO_CONN_MAX_AGE=600
    watch = _DatabaseWatch(idle_timeout_s=0.5)
    try:
        client = http.client.HTTPConnection(*watch.server.server_address, timeout=5)
        assert [watch.healthz(client) for _ in range(3)] == [401, 401, 401]
        assert watch.ended.wait(5)  # idle for 0.5 s: the inference process closed the connection
        client.close()
    finally:
        watch.close()
    first = watch.between[0]
    assert first is not None and watch.between == [first, first, first]  # one database connection, kept
    assert watch.at_end == [None]  # closed with the connection that used it


@pytest.mark.django_db(transaction=True)
def test_a_database_connection_older_than_conn_max_age_is_replaced_at_the_next_request(monkeypatch):
    from django.db import connections

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 1)
    watch = _DatabaseWatch(idle_timeout_s=5)
    try:
        client = http.client.HTTPConnection(*watch.server.server_address, timeout=5)
        assert watch.healthz(client) == 401
        time.sleep(1.2)  # past its CONN_MAX_AGE while the HTTP connection waits
        assert watch.healthz(client) == 401
        client.close()
    finally:
        watch.close()
    assert len(watch.between) == 2 and None not in watch.between
    assert watch.between[0] is not watch.between[1]


@pytest.mark.slow
def test_the_relay_reuses_its_connection_to_the_inference_process_after_a_pause(settings):
    inference = _CountingInference()
    settings.REWARDLOOP_INFERENCE_URL = f"http://127.0.0.1:{inference.server_address[1]}"
    try:
        assert [e["event"] for e in generate_events({"model": "m"}, authorization="Bearer x")] == ["start", "done"]
        time.sleep(6)  # a pause between bursts of clients, longer than httpx's default keep-alive (5 s)
        assert [e["event"] for e in generate_events({"model": "m"}, authorization="Bearer x")] == ["start", "done"]
    finally:
        inference.shutdown()
        inference.server_close()
    assert inference.connections == 1


def test_calling_the_served_version_reads_the_project_once_and_a_pin_checks_the_served_number(
        project, annotator, django_assert_num_queries):
    with django_assert_num_queries(1):  # the project with the caller's role; not its served version
        assert access.model_project(user=annotator, model=project.slug) == project
    with django_assert_num_queries(2):
        assert access.model_project(user=annotator, model=f"{project.slug}@0") == project  # v0 is served
    with pytest.raises(access.AccessRefused) as refused:
        access.model_project(user=annotator, model=f"{project.slug}@1")
    assert refused.value.status == 403


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_timeline_keeps_the_latest_requests_up_to_its_setting_under_the_answer_ids(
        project, annotator, live_server, inference_process, settings):
    server = inference_process(env={"REWARDLOOP_SERVE_TIMELINE_LEN": "2"})
    settings.REWARDLOOP_INFERENCE_URL = server.url
    _, secret = api_token_create(user=annotator, name="relay")
    since = time.monotonic()
    ids = []
    for words in ("one", "two", "three"):
        answer = httpx2.post(f"{live_server.url}/v1/chat/completions", timeout=120,
                             headers={"Authorization": f"Bearer {secret}"},
                             json={"model": project.slug, "messages": [{"role": "user", "content": words}],
                                   "max_tokens": 3, "temperature": 0})
        assert answer.status_code == 200, answer.content
        ids.append(answer.json()["id"])

    timeline = httpx2.get(server.url + f"/debug/timeline?since={since}",
                          headers={"Authorization": f"Bearer {server.secret}"}, timeout=30).json()
    assert [r["id"] for r in timeline["requests"]] == ids[1:]  # the oldest dropped; each under its answer's id
    assert 1 <= len(timeline["steps"]) <= 2


def test_a_malformed_timeline_length_is_refused():
    from webapp.serving.engine import Engine

    with pytest.raises(ValueError, match="timeline_len"):
        Engine(load=lambda version_id: None, timeline_len=0)
