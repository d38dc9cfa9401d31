"""One throttle rule across processes: each request is counted once, by the process that answers it.

Generation is counted by the inference process only (forwarded by the web app's ``/v1/`` or called
directly); the web app counts what it answers itself (``/v1/models``, the REST API) and passes the
inference process's 429 on, with its ``Retry-After``. Here each process keeps its own memory cache,
so the two counts are told apart (with ``REWARDLOOP_CACHE_URL`` they are one:
``test_the_web_app_and_direct_calls_share_one_count_per_token_through_redis``)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.webapp.serving_helpers import assert_throttled, fresh_hour_window
from tests.webapp.serving_helpers import inference_process  # noqa: F401 - fixture
from webapp.accounts.services import api_token_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_generation_through_the_web_app_is_counted_once_by_the_inference_process(
    project, annotator, inference_process, settings
):
    fresh_hour_window()
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "one-count"}}
    settings.REWARDLOOP_API_RATE = "2/h"
    server = inference_process()
    settings.REWARDLOOP_INFERENCE_URL = server.url
    _, secret = api_token_create(user=annotator, name="one count")
    bearer = {"Authorization": f"Bearer {secret}"}
    body = {"model": project.slug, "prompt": "x", "max_tokens": 1}

    def through_web():
        return Client().post("/v1/completions", json.dumps(body), content_type="application/json", headers=bearer)

    assert [through_web().status_code for _ in range(2)] == [200, 200]
    error = assert_throttled(through_web())  # the inference process's 429, passed on with its Retry-After
    assert "Too many requests" in error["message"]
    assert_throttled(server.post(body, bearer))  # a direct call spends the same count
    # The web app counted none of the generation: its own answers still have the whole rate.
    assert [Client().get("/v1/models", headers=bearer).status_code for _ in range(2)] == [200, 200]
    assert_throttled(Client().get("/v1/models", headers=bearer))
