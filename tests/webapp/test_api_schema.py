"""The live OpenAPI schema: served, complete, and honoured by every route (schemathesis).

Schemathesis loads ``/api/v1/openapi.json`` from the WSGI app itself and sends
each operation generated requests, valid and invalid, with a staff member's
token: no answer may be a 5xx, and every answer must match the schema (status
code, content type, body).
"""

import os
import re

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from webapp.accounts.services import api_token_create

ROUTES = {
    ("GET", "/api/v1/projects"),
    ("POST", "/api/v1/projects"),
    ("GET", "/api/v1/projects/{slug}"),
    ("PUT", "/api/v1/projects/{slug}/rubric"),
    ("GET", "/api/v1/projects/{slug}/versions"),
    ("POST", "/api/v1/projects/{slug}/versions/{number}/serve"),
    ("POST", "/api/v1/projects/{slug}/versions/{number}/export"),
    ("GET", "/api/v1/projects/{slug}/versions/{number}/export"),
    ("GET", "/api/v1/projects/{slug}/versions/{number}/download"),
    ("POST", "/api/v1/projects/{slug}/compare"),
    ("GET", "/api/v1/projects/{slug}/compare"),
    ("GET", "/api/v1/projects/{slug}/reward-model"),
    ("GET", "/api/v1/projects/{slug}/settings"),
    ("PATCH", "/api/v1/projects/{slug}/settings"),
    ("GET", "/api/v1/projects/{slug}/members"),
    ("POST", "/api/v1/projects/{slug}/members"),
    ("PATCH", "/api/v1/projects/{slug}/members/{username}"),
    ("DELETE", "/api/v1/projects/{slug}/members/{username}"),
    ("POST", "/api/v1/projects/{slug}/prompts/import"),
    ("POST", "/api/v1/projects/{slug}/queue/next"),
    ("POST", "/api/v1/projects/{slug}/queue/{completion_id}/rate"),
    ("POST", "/api/v1/projects/{slug}/queue/{completion_id}/compare"),
    ("POST", "/api/v1/projects/{slug}/queue/{completion_id}/rank"),
    ("POST", "/api/v1/projects/{slug}/queue/{completion_id}/skip"),
    ("POST", "/api/v1/projects/{slug}/queue/undo"),
    ("GET", "/api/v1/projects/{slug}/ratings/export"),
    ("GET", "/api/v1/projects/{slug}/runs"),
    ("POST", "/api/v1/projects/{slug}/runs"),
    ("GET", "/api/v1/projects/{slug}/runs/{run_id}"),
    ("GET", "/api/v1/projects/{slug}/runs/{run_id}/log"),
    ("POST", "/api/v1/projects/{slug}/runs/{run_id}/cancel"),
    ("POST", "/api/v1/feedback"),
    ("DELETE", "/api/v1/feedback/{feedback_id}"),
}


def test_the_schema_is_served_as_openapi_3_and_lists_every_route_with_bearer_auth(client):
    schema = client.get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    listed = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert listed == ROUTES
    assert schema["components"]["securitySchemes"]["TokenAuth"] == {"type": "http", "scheme": "bearer"}
    assert set(schema["components"]["schemas"]["ErrorOut"]["properties"]) == {"code", "message", "fields"}


def test_creating_a_project_is_a_route_of_the_projects_router_with_its_schema_unchanged(client):
    from webapp.policies.api import router

    operations = router.path_operations["/projects"].operations
    assert {(method, op.view_func.__module__) for op in operations for method in op.methods} == {
        ("GET", "webapp.policies.api"), ("POST", "webapp.policies.api"),
    }
    create = client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/projects"]["post"]
    assert create["operationId"] == "webapp_annotation_api_project_create"  # as published: generated clients keep it
    assert create["tags"] == ["projects"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ProjectCreateIn"}


def test_the_docs_page_loads_swagger_ui_from_our_static_files_not_a_cdn(client):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    page = response.content.decode()
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page)
    assert any(s.endswith("swagger-ui-bundle.js") for s in sources)
    assert all(s.startswith("/static/") for s in sources), sources
    for source in sources:  # served by the app itself (whitenoise), so the CSP's 'self' allows them
        assert client.get(source).status_code == 200, source
    assert "script-src 'self'" in response["Content-Security-Policy"]


@pytest.fixture
def api_schema(db, project, staff_user, make_completion, settings):
    settings.REWARDLOOP_API_RATE = "100000/m"
    make_completion(project)
    # The start and end of each request would close the connection that holds the test's
    # transaction (Django's test client keeps it open the same way).
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def staff_token(staff_user):
    return api_token_create(user=staff_user, name="schemathesis")[1]


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("API_SCHEMA_EXAMPLES", "25")),  # 150 once by hand: no failure
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_route_answers_generated_requests_without_a_5xx_and_as_its_schema_says(case, staff_token, project):
    """Each generated request is sent as generated (mostly an unknown project: 404s and 400s), then again
    on the real project, with the real item and version where the generated id is even, so the routes'
    bodies run too."""
    headers = {"Authorization": f"Bearer {staff_token}"}
    # Any bytes are a schema-valid upload, but only a .jsonl or .csv file of good lines is a valid import;
    # feedback needs exactly one of thumbs, score or better_than (or a comment), and a new project a model
    # folder on the server, which the schema cannot say.
    loose = ("/prompts/import", "/feedback")
    new_project = (case.method.upper(), case.operation.path) == ("POST", "/api/v1/projects")
    excluded = [positive_data_acceptance] if case.operation.path.endswith(loose) or new_project else []
    case.call_and_validate(headers=headers, excluded_checks=excluded)
    params = case.path_parameters or {}
    if "slug" not in params:
        return
    params["slug"] = project.slug
    real = {"completion_id": project.completions.values_list("pk", flat=True).first(), "number": 0}
    for name, value in real.items():
        if isinstance(params.get(name), int) and params[name] % 2 == 0:
            params[name] = value
    # The rewritten request is no longer the generated one: a negative case may have become valid.
    case.call_and_validate(headers=headers, excluded_checks=[negative_data_rejection, positive_data_acceptance])
