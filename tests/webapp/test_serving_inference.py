"""The inference process: batches concurrent requests, streams tokens, switches versions without drops."""

from __future__ import annotations

import threading
import time

import pytest

from tests.webapp.serving_helpers import assert_throttled, fresh_hour_window
from tests.webapp.serving_helpers import inference_process  # noqa: F401 - fixture
from webapp.policies.models import ModelVersion
from webapp.policies.services import version_promote, version_register

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _events(events, kind):
    return [e for e in events if e["event"] == kind]


def test_concurrent_requests_share_one_forward_batch_and_each_gets_its_own_answer(project, inference_process):
    server = inference_process("--window-ms", "300")
    server.generate({"model": project.slug, "prompt": "warm up", "max_tokens": 2})  # loads the model
    results = [None] * 4
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(
            i, server.generate({"model": project.slug, "prompt": f"request {i}", "max_tokens": 3 + i})))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    health = server.health()
    assert (health["batches"], health["rows"]) == (2, 5)  # the warm-up, then the four together
    for i, events in enumerate(results):
        assert events[0]["event"] == "start" and events[-1] == {"event": "done"}
        (end,) = _events(events, "end")
        assert 1 <= len(end["token_ids"]) <= 3 + i  # each request's own max_tokens
        assert end["finish_reason"] == ("stop" if end["finished"] else "length")
        assert len(end["logprobs"]) == len(end["token_ids"])
        assert "".join(e["text"] for e in _events(events, "delta")) == end["text"]


def test_a_request_arriving_mid_generation_joins_the_running_batch_and_finishes_first(project, inference_process):
    import json

    import httpx2

    server = inference_process()
    long_body = {"model": project.slug, "prompt": "tell a long story", "max_tokens": 900, "temperature": 0}
    short_body = {"model": project.slug, "prompt": "a short one", "max_tokens": 8, "temperature": 0}
    long_alone = _events(server.generate(long_body), "end")[0]
    assert not long_alone["finished"]  # greedy runs to its 900-token cap: long enough to join
    short_alone = _events(server.generate(short_body), "end")[0]
    runs_before = server.health()["batches"]
    seen, started = [], threading.Event()

    def stream_long():
        headers = {"Authorization": f"Bearer {server.secret}"}
        with httpx2.Client(timeout=120) as client, client.stream(
            "POST", server.url + "/generate", json=long_body, headers=headers
        ) as r:
            for line in r.iter_lines():
                if line.strip():
                    event = json.loads(line)
                    seen.append((time.monotonic(), event))
                    if event["event"] == "delta":
                        started.set()

    thread = threading.Thread(target=stream_long)
    thread.start()
    assert started.wait(60)
    short = server.generate(short_body)
    short_done = time.monotonic()
    thread.join(120)
    (long_end,) = [(t, e) for t, e in seen if e["event"] == "end"]
    assert long_end[0] > short_done  # the short request did not wait for the long one to finish
    assert server.health()["batches"] == runs_before + 1  # it joined the long one's run
    assert _events(short, "end")[0]["token_ids"] == short_alone["token_ids"]
    assert long_end[1]["token_ids"] == long_alone["token_ids"]


def test_n_choices_seed_temperature_top_p_and_stop_sequences(project, inference_process):
    server = inference_process()
    body = {"model": project.slug, "prompt": "same seed", "max_tokens": 12, "n": 3, "seed": 7, "temperature": 0.8,
            "top_p": 0.9}
    first, second = server.generate(body), server.generate(body)
    assert [e["index"] for e in _events(first, "end")] == [0, 1, 2]
    assert [e["token_ids"] for e in _events(first, "end")] == [e["token_ids"] for e in _events(second, "end")]
    assert all(lp <= 0 for e in _events(first, "end") for lp in e["logprobs"])
    greedy = server.generate({"model": project.slug, "prompt": "greedy", "max_tokens": 6, "temperature": 0, "n": 2})
    a, b = _events(greedy, "end")
    assert a["token_ids"] == b["token_ids"] and set(a["logprobs"]) <= {0.0}
    text = a["text"]
    if len(text) >= 3:  # cut at a stop sequence taken from the greedy text itself
        stop = text[1:3]
        cut = server.generate({"model": project.slug, "prompt": "greedy", "max_tokens": 6, "temperature": 0,
                               "stop": [stop]})
        (end,) = _events(cut, "end")
        assert end["text"] == text[: text.find(stop)] and end["finish_reason"] == "stop"
        assert stop not in "".join(e["text"] for e in _events(cut, "delta"))


def test_unknown_model_and_pinned_version(project, inference_process):
    server = inference_process()
    assert server.generate({"model": "nope", "prompt": "x"})[0]["error"]["code"] == "model_not_found"
    assert server.generate({"model": f"{project.slug}@99", "prompt": "x"})[0]["status"] == 404
    assert server.generate({"model": f"{project.slug}@0", "prompt": "x", "max_tokens": 2})[0]["version"] == 0


def test_the_inference_process_checks_the_token_and_the_role_itself(project, inference_process, make_user, settings):
    """Called directly, bypassing the web app: the same hashed API tokens and project roles, OpenAI's error shape."""
    from webapp.accounts.services import api_token_create, api_token_revoke
    from webapp.serving.client import generate_events

    server = inference_process()
    body = {"model": project.slug, "prompt": "x", "max_tokens": 2}

    def refused(response, status, kind):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == kind, error
        return error

    assert refused(server.post(body, {}), 401, "authentication_error")["code"] == "invalid_api_key"
    assert server.post(body, {}).headers["WWW-Authenticate"].startswith("Bearer")
    refused(server.post(body, {"Authorization": "Bearer rl_not-a-token"}), 401, "authentication_error")
    refused(server.post(body, {"Authorization": "Basic abc"}), 401, "authentication_error")
    annotator = make_user("direct-annotator")
    token, secret = api_token_create(user=annotator, name="direct")
    member = {"Authorization": f"Bearer {secret}"}
    assert server.post(body, member).status_code == 200  # a member calls the served version
    assert server.post({**body, "model": f"{project.slug}@0"}, member).status_code == 200  # the served one, pinned
    pinned = refused(server.post({**body, "model": f"{project.slug}@5"}, member), 403, "permission_error")
    assert pinned["param"] == "model"  # another version is staff only
    outsider = make_user("outsider", member=False)
    _, outsider_secret = api_token_create(user=outsider, name="outsider")
    error = refused(server.post(body, {"Authorization": f"Bearer {outsider_secret}"}), 404, "invalid_request_error")
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    api_token_revoke(token=token)
    refused(server.post(body, member), 401, "authentication_error")
    # The web app's client reads such a refusal as one error event, with OpenAI's fields kept.
    settings.REWARDLOOP_INFERENCE_URL = server.url
    (event,) = list(generate_events(body, authorization=member["Authorization"]))
    assert (event["event"], event["status"], event["code"]) == ("error", 401, "invalid_api_key")


def test_healthz_is_open_for_liveness_and_shows_loaded_versions_only_to_their_projects_staff(
        project, project_factory, tiny_model_dir, inference_process, make_user):
    from webapp.accounts.services import api_token_create
    from webapp.policies.models import Membership

    other = project_factory("other", tiny_model_dir)
    server = inference_process()
    for p in (project, other):
        server.generate({"model": p.slug, "prompt": "load", "max_tokens": 1})
    # The version's number (v0), as the web app's /healthz reports it, not its database id.
    assert server.health()["served"] == {project.slug: 0, other.slug: 0}
    assert server.health()["batches"] == 2  # the fixture's token is global staff: it sees the counters too

    open_answer = server.healthz()
    assert open_answer.status_code == 200 and open_answer.json() == {"ok": True}

    def bearer(user):
        return f"Bearer {api_token_create(user=user, name='health')[1]}"

    lead = make_user("lead-of-one", member=False)  # staff of one project, not global staff
    Membership.objects.create(project=project, user=lead, role=Membership.Role.STAFF)
    Membership.objects.create(project=other, user=lead, role=Membership.Role.ANNOTATOR)
    assert server.healthz(bearer(lead)).json() == {"ok": True, "served": {project.slug: 0}}
    assert server.healthz(bearer(make_user("rater"))).json() == {"ok": True, "served": {}}  # annotates both
    refused = server.healthz("Bearer rl_not-a-token")
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert "served" not in refused.text


def test_direct_calls_are_throttled_per_token_at_the_api_rate(project, inference_process, make_user, settings):
    from webapp.accounts.services import api_token_create

    fresh_hour_window()
    settings.REWARDLOOP_API_RATE = "3/h"  # the inference process takes the web app's rate
    server = inference_process()
    body = {"model": project.slug, "prompt": "x", "max_tokens": 1}
    token, secret = api_token_create(user=make_user("direct"), name="direct")
    caller = {"Authorization": f"Bearer {secret}"}
    assert [server.post(body, caller).status_code for _ in range(3)] == [200, 200, 200]
    assert_throttled(server.post(body, caller))
    assert_throttled(server.post(body, {**caller, "X-Rewardloop-Counted": "anything"}))  # no header exempts a call
    _, other_secret = api_token_create(user=make_user("other"), name="other")
    assert server.post(body, {"Authorization": f"Bearer {other_secret}"}).status_code == 200  # its own count


def test_a_promoted_version_is_served_without_dropping_requests_in_flight(project, inference_process, tmp_path):
    from pgcore.tiny import write_tiny_model

    server = inference_process("--poll-s", "0.3")
    server.generate({"model": project.slug, "prompt": "warm up", "max_tokens": 2})
    results, stop = [], threading.Event()

    def client(i):
        while not stop.is_set():
            events = server.generate({"model": project.slug, "prompt": f"load {i}", "max_tokens": 16})
            results.append(events)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    weights = write_tiny_model(tmp_path / "v1", seed=1)
    v1 = version_register(project=project, parent=project.served_version, kind=ModelVersion.Kind.FULL,
                          weights_path=weights, sha256="", ratings_used=0, metrics={})
    version_promote(version=v1, refill_pool=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(e[0].get("version") == 1 for e in list(results)):
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(120)
    versions = [events[0].get("version") for events in results]
    assert all(events[-1] == {"event": "done"} for events in results), [e[-1] for e in results]
    assert 0 in versions and 1 in versions
    switched = versions.index(1)
    assert 0 not in versions[switched + 3:]  # after the switch (and the requests already running), only v1
