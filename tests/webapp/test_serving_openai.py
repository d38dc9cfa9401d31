"""The OpenAI-compatible routes: the official ``openai`` client against a live server and inference process,
and every refusal in OpenAI's error shape."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest
from django.test import Client

from tests.webapp.serving_helpers import assert_throttled, fresh_hour_window, redis_url
from tests.webapp.serving_helpers import inference_process  # noqa: F401 - fixture
from webapp.accounts.services import api_token_create, api_token_revoke
from webapp.annotation.models import Completion
from webapp.policies.models import Membership


@pytest.fixture
def live(project, annotator, live_server, inference_process, settings):
    server = inference_process()
    settings.REWARDLOOP_INFERENCE_URL = server.url
    _, secret = api_token_create(user=annotator, name="openai client")
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=secret, max_retries=0, timeout=120)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_official_openai_client_works_unchanged_streaming_and_not(live, project):
    assert project.slug in [m.id for m in live.models.list()]
    assert live.models.retrieve(project.slug).id == project.slug

    chat = live.chat.completions.create(
        model=project.slug, messages=[{"role": "user", "content": "Say something"}], max_tokens=8, n=2, seed=3,
        temperature=0.7, top_p=0.9,
    )
    assert chat.id.startswith("chatcmpl-") and chat.object == "chat.completion"
    assert [c.index for c in chat.choices] == [0, 1]
    assert all(c.message.role == "assistant" and isinstance(c.message.content, str) for c in chat.choices)
    assert all(c.finish_reason in ("stop", "length") for c in chat.choices)
    assert 0 < chat.usage.completion_tokens <= 16 and chat.usage.prompt_tokens > 0
    assert chat.system_fingerprint == "v0"
    # The answer's id is what feedback names; the same token (the client's key) rates it.
    feedback = httpx2.post(f"{live.base_url}".replace("/v1/", "/api/v1/feedback"),
                           json={"id": chat.id, "choice": 1, "better_than": chat.id, "better_than_choice": 0},
                           headers={"Authorization": f"Bearer {live.api_key}"}, timeout=30)
    assert feedback.status_code == 201, feedback.content
    assert Completion.objects.filter(response_id=chat.id, source="production").count() == 2

    stream = live.chat.completions.create(
        model=project.slug, messages=[{"role": "user", "content": "Stream it"}], max_tokens=10, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 10
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    stored = Completion.objects.get(response_id=chunks[0].id)  # stored before [DONE]
    assert stored.text == text and stored.source == "production" and len(stored.token_ids) <= 10

    greedy = dict(model=project.slug, prompt="Once upon a time", max_tokens=8, temperature=0)
    whole = live.completions.create(**greedy)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    streamed = "".join(c.choices[0].text for c in live.completions.create(**greedy, stream=True) if c.choices)
    assert streamed == whole.choices[0].text  # greedy: the stream and the whole answer agree
    assert isinstance(text, str)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_client_errors_come_back_as_openai_exceptions(live, project, make_user):
    with pytest.raises(openai.NotFoundError) as missing:
        live.chat.completions.create(model="no-such-project", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        live.completions.create(model=project.slug, prompt="x", max_tokens=100_000)
    assert "max_tokens" in too_many.value.message
    with pytest.raises(openai.PermissionDeniedError):  # an annotator may not pin another version
        live.completions.create(model=f"{project.slug}@7", prompt="x")
    bad = openai.OpenAI(base_url=str(live.base_url), api_key="rl_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.django_db
def test_refusals_are_in_openai_error_shape_and_name_the_field(project, annotator, make_user, settings):
    settings.REWARDLOOP_INFERENCE_URL = "http://127.0.0.1:9"  # nothing listens: never reached by a refusal
    token, secret = api_token_create(user=annotator, name="t")
    client = Client()

    def post(body, path="/v1/chat/completions", secret=secret, raw=None):
        return client.post(path, raw if raw is not None else json.dumps(body), content_type="application/json",
                           headers={"Authorization": f"Bearer {secret}"})

    chat = {"model": project.slug, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        (post(chat, secret="rl_nope"), 401, "authentication_error", None),
        (post({**chat, "model": "elsewhere"}), 404, "invalid_request_error", "model"),
        (post({**chat, "max_tokens": settings.REWARDLOOP_SERVE_MAX_TOKENS + 1}), 400, "invalid_request_error", None),
        (post({**chat, "n": settings.REWARDLOOP_SERVE_MAX_N + 1}), 400, "invalid_request_error", None),
        (post({**chat, "temperature": 3}), 400, "invalid_request_error", "temperature"),
        (post({**chat, "messages": []}), 400, "invalid_request_error", "messages"),
        (post({**chat, "messages": [{"role": "user", "content": "x" * 20_000}]}), 400, "invalid_request_error", None),
        (post({**chat, "tools": [{"type": "function"}]}), 400, "invalid_request_error", None),
        (post({**chat, "stop": ["a"] * 5}), 400, "invalid_request_error", "stop"),
        (post(None, raw="{not json"), 400, "invalid_request_error", None),
        (post({"model": project.slug, "prompt": ["a", "b"]}, path="/v1/completions"), 400, "invalid_request_error",
         "prompt"),
        (client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}), 405,
         "invalid_request_error", None),
        (post({**chat, "model": f"{project.slug}@3"}), 403, "permission_error", "model"),
        (post(chat), 503, "server_error", None),  # valid, but the inference process is down
    ]
    for response, status, kind, param in cases:
        assert response.status_code == status, (status, response.content)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == kind, error
        if param:
            assert error["param"] == param, error
    assert "max_tokens" in cases[2][0].json()["error"]["message"]
    for case, name in ((cases[2], "max_tokens"), (cases[3], "n"), (cases[4], "temperature")):
        message = case[0].json()["error"]["message"]
        assert message.startswith(f"{name}: ") and message.count(f"{name}:") == 1, message
    settings.REWARDLOOP_SERVE_MAX_BODY_BYTES = 100
    assert post({**chat, "messages": [{"role": "user", "content": "x" * 200}]}).status_code == 413
    api_token_revoke(token=token)
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


@pytest.mark.django_db
def test_models_lists_only_the_projects_of_the_tokens_user(project, make_user):
    outsider = make_user("outsider", member=False)
    _, secret = api_token_create(user=outsider, name="t")
    headers = {"Authorization": f"Bearer {secret}"}
    assert Client().get("/v1/models", headers=headers).json() == {"object": "list", "data": []}
    assert Client().get(f"/v1/models/{project.slug}", headers=headers).status_code == 404
    Membership.objects.create(project=project, user=outsider, role=Membership.Role.ANNOTATOR)
    assert [m["id"] for m in Client().get("/v1/models", headers=headers).json()["data"]] == [project.slug]


def _one_token_at_a_rate(project, annotator, inference_process, settings, *, rate: str, cache: dict, env=None):
    """The web app on ``cache`` and ``rate``, a started inference process (with ``env``) it forwards to, and
    one API token: ``(server, bearer header, completion body, through_web)``, ``through_web()`` posting the
    body to ``/v1/completions``."""
    fresh_hour_window()
    settings.CACHES = {"default": cache}
    settings.REWARDLOOP_API_RATE = rate
    server = inference_process(env=env)
    settings.REWARDLOOP_INFERENCE_URL = server.url
    _, secret = api_token_create(user=annotator, name="counted")
    bearer = {"Authorization": f"Bearer {secret}"}
    body = {"model": project.slug, "prompt": "x", "max_tokens": 1}

    def through_web():
        return Client().post("/v1/completions", json.dumps(body), content_type="application/json", headers=bearer)

    return server, bearer, body, through_web


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_generation_through_the_web_app_is_counted_once_by_the_inference_process(project, annotator,
                                                                                 inference_process, settings):
    """One throttle rule across processes: each request is counted once, by the process that answers it.
    Generation is counted by the inference process only (forwarded by ``/v1/`` or called directly); the web
    app counts what it answers itself (``/v1/models``, the REST API) and passes the inference 429 on, with its
    ``Retry-After``. Here each process keeps its own memory cache, so the two counts are told apart."""
    server, bearer, body, through_web = _one_token_at_a_rate(
        project, annotator, inference_process, settings, rate="2/h",
        cache={"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "one-count"},
    )
    assert [through_web().status_code for _ in range(2)] == [200, 200]
    error = assert_throttled(through_web())  # the inference process's 429, passed on with its Retry-After
    assert "Too many requests" in error["message"]
    assert_throttled(server.post(body, bearer))  # a direct call spends the same count
    # The web app counted none of the generation: its own answers still have the whole rate.
    assert [Client().get("/v1/models", headers=bearer).status_code for _ in range(2)] == [200, 200]
    assert_throttled(Client().get("/v1/models", headers=bearer))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_web_app_and_direct_calls_share_one_count_per_token_through_redis(project, annotator, inference_process,
                                                                              settings):
    """With REWARDLOOP_CACHE_URL the web app and the inference process count one token together; a request
    the web app forwards is counted once, not again by the inference process."""
    url = redis_url()
    if url is None:
        pytest.skip("needs Redis (REWARDLOOP_CACHE_URL or CELERY_BROKER_URL=redis://…) for a shared count")
    server, bearer, body, through_web = _one_token_at_a_rate(
        project, annotator, inference_process, settings, rate="4/h", env={"REWARDLOOP_CACHE_URL": url},
        cache={"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url},
    )
    assert [through_web().status_code for _ in range(2)] == [200, 200]  # 2 counted, not 4
    assert [server.post(body, bearer).status_code for _ in range(2)] == [200, 200]
    assert_throttled(server.post(body, bearer))
    assert_throttled(through_web())
