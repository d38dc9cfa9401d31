"""The inference process's ``GET /debug/timeline``: each request's times and the engine's steps, for global staff."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.webapp.serving_helpers import inference_process  # noqa: F401 - fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_timeline_gives_staff_each_requests_times_in_order_and_the_steps(project, inference_process, make_user):
    from webapp.accounts.services import api_token_create

    server = inference_process()
    since = time.monotonic()  # one clock for the machine's processes
    events = server.generate({"model": project.slug, "prompt": "tell me", "max_tokens": 4, "temperature": 0})
    assert events[-1] == {"event": "done"}

    answer = httpx2.get(server.url + f"/debug/timeline?since={since}",
                        headers={"Authorization": f"Bearer {server.secret}"}, timeout=30)
    assert answer.status_code == 200
    timeline = answer.json()
    (request,) = timeline["requests"]
    order = [request[k] for k in ("received", "submitted", "admitted", "first_token", "end")]
    assert since <= order[0] and order == sorted(order) and order[-1] <= timeline["now"]
    assert request["steps_to_first_token"] >= 1 and request["cpu_to_first_token"] > 0
    assert request["max_tokens"] == 4 and request["n"] == 1
    kinds = [s["kind"] for s in timeline["steps"]]
    assert kinds[0] == "prefill" and set(kinds) <= {"prefill", "decode"} and len(kinds) <= 4  # 1 token each step
    assert all(s["start"] <= s["end"] for s in timeline["steps"])

    annotator = f"Bearer {api_token_create(user=make_user('rater'), name='t')[1]}"
    for header, status in ((annotator, 403), ("Bearer rl_not-a-token", 401), (None, 401)):
        refused = httpx2.get(server.url + "/debug/timeline", headers={"Authorization": header} if header else {},
                             timeout=30)
        assert refused.status_code == status and "error" in refused.json() and "requests" not in refused.json()
    bad = httpx2.get(server.url + "/debug/timeline?since=soon", headers={"Authorization": f"Bearer {server.secret}"},
                     timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


def test_a_caller_refused_by_the_token_check_never_holds_a_step(project, inference_process):
    server = inference_process("--hold-ms", "20000")
    body = json.dumps({"model": project.slug, "prompt": "tell me", "max_tokens": 2}).encode()
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=60) as slow:  # no valid token, a slow body
        slow.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rl_not-a-token\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5])
        time.sleep(1.0)  # its handler waits for the rest of the body
        since = time.monotonic()
        events = server.generate({"model": project.slug, "prompt": "tell me", "max_tokens": 2, "temperature": 0})
        assert events[-1] == {"event": "done"}
        timeline = httpx2.get(server.url + f"/debug/timeline?since={since}",
                              headers={"Authorization": f"Bearer {server.secret}"}, timeout=30).json()
        (request,) = timeline["requests"]
        assert request["admitted"] - request["submitted"] < 10  # not held for the refused caller (20 s if it were)
        slow.sendall(body[5:])
        assert slow.recv(65536).startswith(b"HTTP/1.1 401")
