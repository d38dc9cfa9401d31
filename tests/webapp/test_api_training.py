"""Training runs, the ratings export and model versions through the REST API (staff only)."""

import json

import pytest

from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.annotation.models import Rating
from webapp.policies.models import AuditEvent
from webapp.policies.services import version_promote, version_register
from webapp.training import exports
from webapp.training.models import TrainingRun


@pytest.fixture
def rated(project, annotator, make_completion):
    for i in range(4):
        Rating.objects.create(completion=make_completion(project, text=f"c{i}"), annotator=annotator, score=1 + i)
    return project


@pytest.fixture
def staff_api(staff_user, api_for):
    return api_for(staff_user)


def test_staff_start_a_run_with_overrides_and_read_its_status_and_log(rated, staff_api, staff_user):
    response = staff_api.post("/projects/t/runs", {"lr": 0.0005, "epochs": 2})
    assert response.status_code == 201
    run = response.json()
    stored = TrainingRun.objects.get()
    assert run["id"] == stored.pk and run["status"] == "queued" and run["trigger"] == "manual"
    assert run["requested_by"] == "boss" and run["parent_version"] == 0
    assert stored.config["lr"] == 0.0005 and stored.config["epochs"] == 2
    assert AuditEvent.objects.filter(action="train", actor=staff_user).exists()
    assert staff_api.get(f"/projects/t/runs/{stored.pk}").json()["status"] == "queued"
    assert [r["id"] for r in staff_api.get("/projects/t/runs").json()] == [stored.pk]
    TrainingRun.objects.filter(pk=stored.pk).update(log="[12:00:00] epoch 1\n")
    log = staff_api.get(f"/projects/t/runs/{stored.pk}/log").json()
    assert log == {"run": stored.pk, "status": "queued", "log": "[12:00:00] epoch 1\n"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"lr": 5}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"kl_coef": -1}, "kl_coef"),
        ({"beta": 1}, "beta"),
        ({"epochs": True}, "epochs"),  # JSON's true is not the number 1
        ({"kl_coef": False}, "kl_coef"),
        ({"lr": "0.001"}, "lr"),  # nor a string a number
    ],
)
def test_a_run_with_a_bad_override_is_a_400_naming_it_and_queues_nothing(rated, staff_api, body, field):
    response = staff_api.post("/projects/t/runs", body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and [f["field"] for f in response.json()["fields"]] == [field]
    assert not TrainingRun.objects.exists()


def test_a_run_without_new_ratings_or_beside_an_active_one_is_refused(project, staff_api, annotator, make_completion):
    nothing = staff_api.post("/projects/t/runs")
    assert nothing.status_code == 409 and nothing.json() == {
        "code": "rejected", "message": "There are no new ratings to train on yet.", "fields": []
    }
    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=4)
    assert staff_api.post("/projects/t/runs").status_code == 201
    second = staff_api.post("/projects/t/runs")
    assert second.status_code == 409 and "already queued or running" in second.json()["message"]
    assert TrainingRun.objects.count() == 1


def test_cancel_stops_a_queued_run_and_a_finished_run_cannot_be_cancelled(rated, staff_api):
    run_id = staff_api.post("/projects/t/runs").json()["id"]
    response = staff_api.post(f"/projects/t/runs/{run_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = staff_api.post(f"/projects/t/runs/{run_id}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "rejected"


def test_a_run_of_another_project_or_an_unknown_run_is_a_404(rated, staff_api, tiny_model_dir):
    from tests.webapp.annotation_helpers import make_project

    make_project(tiny_model_dir, slug="other", mode="likert")
    run_id = staff_api.post("/projects/t/runs").json()["id"]
    assert staff_api.get(f"/projects/other/runs/{run_id}").status_code == 404
    assert staff_api.post(f"/projects/other/runs/{run_id}/cancel").status_code == 404
    assert staff_api.get("/projects/t/runs/999999").status_code == 404
    assert TrainingRun.objects.get().status == "queued"


@pytest.mark.parametrize("fmt", exports.FORMATS)
def test_the_ratings_export_is_the_pages_jsonl_and_is_audited(rated, staff_api, fmt):
    response = staff_api.get("/projects/t/ratings/export", format=fmt)
    assert response.status_code == 200 and response["Content-Type"].startswith("application/jsonl")
    expected, n = exports.ratings_jsonl(project=rated, fmt=fmt)
    assert response.content.decode() == expected and response["X-Rewardloop-Rows"] == str(n)
    assert all(json.loads(line) for line in expected.splitlines())
    assert AuditEvent.objects.filter(action="export_ratings", target=f"ratings ({fmt})").exists()


def test_an_export_in_an_unknown_format_is_a_400_naming_format(rated, staff_api):
    for params in ({"format": "csv"}, {}):
        response = staff_api.get("/projects/t/ratings/export", **params)
        assert response.status_code == 400 and response.json()["fields"][0]["field"] == "format"


def test_staff_list_versions_and_serve_an_older_one_to_roll_back(project, staff_api, staff_user):
    v1 = version_register(
        project=project, parent=project.served_version, kind="lora", weights_path="/nowhere", sha256="0" * 64,
        ratings_used=4, metrics={"objective/kl": 0.01},
    )
    version_promote(version=v1)
    listed = staff_api.get("/projects/t/versions").json()
    assert [(v["number"], v["served"], v["parent"]) for v in listed] == [(1, True, 0), (0, False, None)]
    assert listed[0]["metrics"] == {"objective/kl": 0.01} and listed[0]["rating"]["n"] == 0
    response = staff_api.post("/projects/t/versions/0/serve", {"reason": " v1 drifts "})
    assert response.status_code == 200 and response.json()["number"] == 0 and response.json()["served"]
    project.refresh_from_db()
    assert project.served_version.number == 0
    event = AuditEvent.objects.get(action="promote", actor=staff_user, target="v0")
    assert event.detail == {"previous": 1, "reason": "v1 drifts"}
    assert staff_api.get("/projects/t").json()["served_version"] == 0


def test_serving_the_version_already_served_is_a_409_and_writes_no_audit_event(project, staff_api):
    response = staff_api.post("/projects/t/versions/0/serve", {"reason": "again"})
    assert response.status_code == 409 and "v0 is already served" in response.json()["message"]
    assert not AuditEvent.objects.filter(action="promote").exists()


def test_serving_an_unknown_or_impossible_version_is_a_404_or_a_400_and_changes_nothing(project, staff_api):
    assert staff_api.post("/projects/t/versions/7/serve", {"reason": "r"}).status_code == 404
    for number in (2**31, 2**70, -1):
        response = staff_api.post(f"/projects/t/versions/{number}/serve", {"reason": "r"})
        assert response.status_code == 400 and response.json()["fields"][0]["field"] == "number"
    project.refresh_from_db()
    assert project.served_version.number == 0


def _held_back_v1(project):
    v1 = version_register(
        project=project, parent=project.served_version, kind="lora", weights_path="/nowhere", sha256="0" * 64,
        ratings_used=4, metrics={},
    )
    v1.held_back_reason = "KL to the base 0.9 is over the limit 0.5."
    v1.save(update_fields=["held_back_reason"])
    return v1


def test_a_held_back_version_is_served_through_the_api_only_with_override_guard_and_that_is_audited(
    project, staff_api, staff_user
):
    _held_back_v1(project)
    refused = staff_api.post("/projects/t/versions/1/serve", {"reason": "try it"})
    assert refused.status_code == 409 and refused.json()["code"] == "rejected"
    message = refused.json()["message"]
    assert "KL to the base" in message and '"override_guard": true' in message and "Serve anyway" not in message
    project.refresh_from_db()
    assert project.served_version.number == 0 and not AuditEvent.objects.filter(action="promote").exists()

    response = staff_api.post("/projects/t/versions/1/serve", {"reason": "KL is fine here", "override_guard": True})
    assert response.status_code == 200 and response.json()["served"]
    project.refresh_from_db()
    assert project.served_version.number == 1
    event = AuditEvent.objects.get(action="promote")
    assert event.actor == staff_user and event.target == "v1"
    assert event.detail == {
        "previous": 0, "reason": "KL is fine here", "override_guard": "KL to the base 0.9 is over the limit 0.5."
    }


@pytest.mark.parametrize(
    "body", [{}, {"override_guard": True}, {"reason": ""}, {"reason": "  \n "}, {"reason": "x" * 501}]
)
def test_serving_without_a_reason_is_a_400_naming_reason_and_changes_nothing(project, staff_api, body):
    _held_back_v1(project)
    response = staff_api.post("/projects/t/versions/1/serve", body)
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert [f["field"] for f in response.json()["fields"]] == ["reason"]
    project.refresh_from_db()
    assert project.served_version.number == 0 and not AuditEvent.objects.filter(action="promote").exists()


def test_an_annotator_cannot_serve_even_with_a_reason_and_override(project, annotator, api_for):
    _held_back_v1(project)
    response = api_for(annotator).post("/projects/t/versions/1/serve", {"reason": "me", "override_guard": True})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    project.refresh_from_db()
    assert project.served_version.number == 0 and not AuditEvent.objects.filter(action="promote").exists()
