"""A path under /v1/ that the server does not serve answers 404 in OpenAI's error shape (as OpenAI
answers an unknown URL), so an OpenAI client reports it instead of failing to parse an HTML page."""

import pytest
from django.test import Client


@pytest.mark.django_db
@pytest.mark.parametrize("method,path", [("post", "/v1/embeddings"), ("post", "/v1/chat/completions/"),
                                         ("get", "/v1/"), ("get", "/v1/models/")])
def test_an_unknown_v1_path_is_a_404_in_openais_shape(method, path):
    client = Client()
    answer = client.post(path, data="{}", content_type="application/json") if method == "post" else client.get(path)
    assert answer.status_code == 404 and answer["Content-Type"] == "application/json"
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert f"{method.upper()} {path}" in error["message"] and "POST /v1/chat/completions" in error["message"]


@pytest.mark.django_db
def test_the_served_routes_are_not_shadowed():
    answer = Client().get("/v1/models")
    assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
    assert Client().get("/v1/chat/completions").status_code == 405
