"""Helpers for the REST API tests: a token for a user, and a client that sends it."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from webapp.accounts.services import api_token_create

API = "/api/v1"


class ApiClient:
    """The Django test client with ``Authorization: Bearer <secret>`` on every call, JSON bodies."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.secret = secret

    def _headers(self):
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}

    def get(self, path, **params):
        return self.client.get(API + path, params, headers=self._headers())

    def delete(self, path):
        return self.client.delete(API + path, headers=self._headers())

    def post(self, path, body=None, *, raw: str | None = None, **kwargs):
        if "files" in kwargs:
            return self.client.post(API + path, kwargs["files"], headers=self._headers())
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.post(API + path, data, content_type="application/json", headers=self._headers())

    def patch(self, path, body=None, *, raw: str | None = None):
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.patch(API + path, data, content_type="application/json", headers=self._headers())

    def put(self, path, body):
        return self.client.put(API + path, json.dumps(body), content_type="application/json", headers=self._headers())


@pytest.fixture
def api_for():
    """``api_for(user)`` -> an :class:`ApiClient` with a new token of ``user``."""

    def make(user, name="test token"):
        _, secret = api_token_create(user=user, name=name)
        return ApiClient(secret)

    return make
