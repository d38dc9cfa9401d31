"""Boolean fields of /v1/ bodies are strict JSON booleans: "yes" or 1 is a 400 naming the field, not true."""

import json

import pytest
from django.test import Client

from webapp.accounts.services import api_token_create

CHAT = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
COMPLETION = ("/v1/completions", {"prompt": "hi"})


def post(secret, path, body):
    return Client().post(path, json.dumps(body), content_type="application/json",
                         headers={"Authorization": f"Bearer {secret}"})


@pytest.mark.django_db
@pytest.mark.parametrize("route", [CHAT, COMPLETION], ids=["chat", "completions"])
@pytest.mark.parametrize("field, param", [
    ({"stream": "yes"}, "stream"),
    ({"stream": "true"}, "stream"),
    ({"stream": "false"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
])
def test_a_boolean_field_that_is_not_a_json_boolean_is_refused_naming_it(
        project, annotator, settings, route, field, param):
    settings.REWARDLOOP_INFERENCE_URL = "http://127.0.0.1:9"  # nothing listens: a refusal never gets there
    _, secret = api_token_create(user=annotator, name="script")
    path, body = route
    answer = post(secret, path, {"model": project.slug, **body, **field})
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"] == f"{param}: Input should be a valid boolean"


@pytest.mark.django_db
@pytest.mark.parametrize("route", [CHAT, COMPLETION], ids=["chat", "completions"])
def test_json_booleans_pass_the_body_check(project, annotator, settings, route):
    settings.REWARDLOOP_INFERENCE_URL = "http://127.0.0.1:9"
    _, secret = api_token_create(user=annotator, name="script")
    path, body = route
    for extra in ({"stream": False}, {"stream": True, "stream_options": {"include_usage": True}},
                  {"stream": True, "stream_options": {"include_usage": False}}):
        answer = post(secret, path, {"model": project.slug, **body, **extra})
        assert answer.status_code == 503, answer.content  # valid: it went on to the (absent) inference process


@pytest.mark.django_db
@pytest.mark.parametrize("route", [CHAT, COMPLETION], ids=["chat", "completions"])
@pytest.mark.parametrize("field, param", [
    ({"max_tokens": True}, "max_tokens"),  # was read as 1 token
    ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"n": True}, "n"),
    ({"seed": "7"}, "seed"),
    ({"temperature": False}, "temperature"),  # was read as 0: greedy decoding
    ({"top_p": "0.9"}, "top_p"),
])
def test_a_number_field_given_a_json_boolean_or_a_string_is_refused_naming_it(
        project, annotator, settings, route, field, param):
    settings.REWARDLOOP_INFERENCE_URL = "http://127.0.0.1:9"
    _, secret = api_token_create(user=annotator, name="script")
    path, body = route
    answer = post(secret, path, {"model": project.slug, **body, **field})
    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["param"] == param


@pytest.mark.django_db
def test_json_numbers_pass_the_body_check(project, annotator, settings):
    settings.REWARDLOOP_INFERENCE_URL = "http://127.0.0.1:9"
    _, secret = api_token_create(user=annotator, name="script")
    path, body = CHAT
    extra = {"max_tokens": 8, "n": 2, "seed": -3, "temperature": 1, "top_p": 0.5}  # an int temperature is a number
    answer = post(secret, path, {"model": project.slug, **body, **extra})
    assert answer.status_code == 503, answer.content
