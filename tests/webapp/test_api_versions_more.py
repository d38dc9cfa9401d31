"""Version compare and download, and the reward model's status, through the REST API (staff only),
as the versions, compare and reward models pages do them."""

import io
import zipfile

import pytest

from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from tests.webapp.arena_helpers import add_version, sample_for
from webapp.policies.models import AuditEvent, VersionExport


@pytest.fixture
def staff_api(staff_user, api_for):
    return api_for(staff_user)


@pytest.fixture
def sent_tasks(monkeypatch):
    """The Celery messages the web process sends, instead of a broker."""
    from webapp.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, queue=None, **kw: sent.append((name, args, queue)))
    return sent


@pytest.fixture
def exports_dir(tmp_path, settings):
    settings.REWARDLOOP_EXPORTS_DIR = tmp_path / "exports"
    return settings.REWARDLOOP_EXPORTS_DIR


def test_a_version_is_built_by_the_worker_then_downloaded_as_a_zip_once(
    project, staff_api, staff_user, sent_tasks, exports_dir, django_capture_on_commit_callbacks
):
    from webapp.policies import tasks as policy_tasks

    assert staff_api.get("/projects/t/versions/0/export").status_code == 404  # nothing asked for yet
    refused = staff_api.get("/projects/t/versions/0/download")
    assert refused.status_code == 409 and "POST" in refused.json()["message"]
    with django_capture_on_commit_callbacks(execute=True):
        queued = staff_api.post("/projects/t/versions/0/export")
    assert queued.status_code == 202, queued.content
    body = queued.json()
    assert body["status"] == "queued" and body["version"] == 0 and body["download"] is None
    assert sent_tasks == [("webapp.policies.tasks.version_export_build", [body["id"]], "training")]
    assert not exports_dir.exists() or not any(exports_dir.iterdir())  # nothing built in the request

    assert policy_tasks.version_export_build(body["id"]) == "ready"  # the task body, as the worker runs it
    status = staff_api.get("/projects/t/versions/0/export").json()
    assert status["status"] == "ready" and status["size_bytes"] > 0
    assert status["download"] == "/api/v1/projects/t/versions/0/download"
    response = staff_api.get("/projects/t/versions/0/download")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert 'filename="t-v0.zip"' in response["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert "t-v0/config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert AuditEvent.objects.get(action="export_version").actor == staff_user

    with django_capture_on_commit_callbacks(execute=True):
        again = staff_api.post("/projects/t/versions/0/export")
    assert again.status_code == 200 and again.json()["download"] == status["download"]
    assert len(sent_tasks) == 1 and VersionExport.objects.count() == 1  # versions never change: one build


def test_a_download_whose_file_is_gone_is_a_409_not_a_500(project, staff_api, exports_dir):
    VersionExport.objects.create(version=project.served_version, status=VersionExport.Status.READY,
                                 archive_path="t-v0-export1.zip", size_bytes=10)
    response = staff_api.get("/projects/t/versions/0/download")
    assert response.status_code == 409 and response.json()["code"] == "rejected"


def test_compare_queues_what_is_missing_and_then_reads_both_sides(project, staff_api, sent_tasks):
    held_out = list(project.prompts.filter(held_out=True))
    assert held_out
    v1 = add_version(project, 1, text="the new answer")
    started = staff_api.post("/projects/t/compare", {"a": 0, "b": 1})
    assert started.status_code == 200, started.content
    assert [(name, args) for name, args, _ in sent_tasks] == [
        ("webapp.training.tasks.version_samples_ensure", [project.served_version_id])]  # v1 is complete already
    body = started.json()
    assert body["a"] == 0 and body["b"] == 1 and body["complete"] is False and body["n_prompts"] == len(held_out)
    assert {(r["a"], r["b"]) for r in body["rows"]} == {(None, "the new answer")}

    for prompt in held_out:
        sample_for(project.served_version, prompt, "the old answer")
    read = staff_api.get("/projects/t/compare", a=0, b=1).json()
    assert read["complete"] is True
    row = read["rows"][0]
    assert (row["a"], row["b"], row["prompt"]) == ("the old answer", "the new answer", held_out[0].text)
    assert 0 < row["similarity"] < 1
    assert v1.samples.count() == len(held_out)


def test_compare_refuses_one_version_twice_an_unknown_one_and_a_broker_that_is_down(
    project, staff_api, sent_tasks, monkeypatch
):
    same = staff_api.post("/projects/t/compare", {"a": 0, "b": 0})
    assert same.status_code == 400 and [f["field"] for f in same.json()["fields"]] == ["b"]
    assert "against itself" in same.json()["message"]
    assert staff_api.get("/projects/t/compare", a=0, b=0).status_code == 400
    assert staff_api.post("/projects/t/compare", {"a": 0, "b": 7}).status_code == 404
    assert staff_api.post("/projects/t/compare", {"a": 0}).status_code == 400
    for a, b in ((False, True), ("0", "1")):  # JSON numbers only: false and true were read as v0 and v1
        wrong = staff_api.post("/projects/t/compare", {"a": a, "b": b})
        assert wrong.status_code == 400 and [f["field"] for f in wrong.json()["fields"]] == ["a", "b"]
    from webapp import broker

    monkeypatch.setattr(broker, "task_send", lambda name, args, queue=None: False)
    add_version(project, 1, prompts=[])
    down = staff_api.post("/projects/t/compare", {"a": 0, "b": 1})
    assert down.status_code == 409 and "v0 and v1" in down.json()["message"]
    assert "send this request again" in down.json()["message"]
    assert sent_tasks == []


def test_the_reward_models_status_before_and_after_a_fit(project, staff_api, annotator, make_completion):
    from webapp.annotation.models import Rating
    from webapp.rewards.models import RewardModelVersion

    before = staff_api.get("/projects/t/reward-model")
    assert before.status_code == 200, before.content
    body = before.json()
    assert body["latest"] is None and body["versions"] == [] and body["judgments"] == 0
    assert body["min_judgments"] >= 1 and body["reward_source"] == project.reward_source
    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=4)
    for number in (1, 2):
        RewardModelVersion.objects.create(
            project=project, number=number, n_ratings=number, n_judgments=number, rating_ids=[], config={},
            metrics={"held_out/pearson": 0.5 + number / 10}, backbone_path="b", artefact_path=f"rm{number}", sha256="0")
    after = staff_api.get("/projects/t/reward-model").json()
    assert after["judgments"] == 1
    assert after["latest"]["number"] == 2 and after["latest"]["metrics"] == {"held_out/pearson": 0.7}
    assert [v["number"] for v in after["versions"]] == [2, 1]


@pytest.mark.parametrize("method, path", [
    ("post", "/projects/t/versions/0/export"),
    ("get", "/projects/t/versions/0/export"),
    ("get", "/projects/t/versions/0/download"),
    ("post", "/projects/t/compare"),
    ("get", "/projects/t/compare?a=0&b=1"),
    ("get", "/projects/t/reward-model"),
])
def test_annotators_get_403_and_strangers_404(project, annotator, make_user, api_for, method, path, sent_tasks):
    body = {"a": 0, "b": 1}
    for user, status in ((annotator, 403), (make_user("stranger", member=False), 404)):
        api = api_for(user)
        if method == "post":
            response = api.post(path, body)
        else:
            route, _, query = path.partition("?")
            response = api.get(route, **dict(p.split("=") for p in query.split("&") if p))
        assert response.status_code == status, (user, response.content)
    assert sent_tasks == [] and not VersionExport.objects.exists()


def test_no_two_schemas_of_the_api_share_a_name():
    """ninja names each schema component after its class: a second ``CompareIn`` in another app's router
    would replace the first in ``/api/v1/openapi.json`` (the queue's compare route would document the
    versions comparison's body)."""
    import inspect

    from ninja import Schema

    from webapp.annotation import api as annotation_api
    from webapp.policies import api as policies_api
    from webapp.policies import members_api
    from webapp.serving import api as serving_api
    from webapp.training import api as training_api
    from webapp import apikit

    names = [
        name
        for module in (annotation_api, policies_api, members_api, serving_api, training_api, apikit)
        for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, Schema) and value.__module__ == module.__name__
    ]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_global_staff_create_a_project_and_become_its_staff(staff_user, api_for, tiny_model_dir):
    from webapp.policies.models import Membership, Project

    api = api_for(staff_user)
    response = api.post("/projects", {"slug": "fresh", "title": "Fresh", "base_model_path": str(tiny_model_dir),
                                      "rating_mode": "thumbs", "guidelines": "Be kind."})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["slug"], body["role"], body["rating_mode"], body["served_version"]) == ("fresh", "staff", "thumbs", 0)
    project = Project.objects.get(slug="fresh")
    assert project.guidelines == "Be kind." and project.served_version.number == 0
    assert Membership.objects.get(project=project, user=staff_user).role == "staff"
    assert [p["slug"] for p in api.get("/projects").json()] == ["fresh"]
    assert AuditEvent.objects.filter(project=project).exists()  # the membership, as the page records it


@pytest.mark.parametrize("change, field", [
    ({"base_model_path": "/nowhere"}, "base_model_path"),
    ({"base_model_path": "0" * 300}, "base_model_path"),  # a name too long for the system: was a 500
    ({"slug": "FRESH"}, "slug"),  # taken in another letter case
    ({"rating_mode": "rubric"}, "rating_mode"),  # rubric mode needs a rubric
    ({"slug": "no spaces"}, "slug"),
    ({"pool_target": 0}, "pool_target"),
    ({"colour": "red"}, "colour"),
])
def test_a_project_the_page_would_refuse_is_a_400_naming_the_field_and_nothing_is_stored(
    staff_user, api_for, tiny_model_dir, change, field
):
    from webapp.policies.models import Project
    from webapp.policies.services import project_create

    project_create(slug="fresh", title="Fresh", base_model_path=tiny_model_dir)
    api = api_for(staff_user)
    response = api.post("/projects", {"slug": "other", "title": "Other", "base_model_path": str(tiny_model_dir),
                                      **change})
    assert response.status_code == 400, response.content
    assert field in [f["field"] for f in response.json()["fields"]], response.json()
    assert list(Project.objects.values_list("slug", flat=True)) == ["fresh"]


def test_only_global_staff_create_projects(project, annotator, api_for, tiny_model_dir):
    from webapp.policies.models import Project, Membership

    Membership.objects.filter(project=project, user=annotator).update(role="staff")  # project staff, not global
    response = api_for(annotator).post("/projects", {"slug": "mine", "title": "Mine",
                                                     "base_model_path": str(tiny_model_dir)})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert not Project.objects.filter(slug="mine").exists()


def test_every_documented_method_of_a_path_is_routed_not_405(staff_user, api_for):
    """Two routers declaring one path become two URL patterns, and Django sends every request to the
    first: the other's methods would answer 405 although the schema lists them."""
    from django.test import Client

    schema = Client().get("/api/v1/openapi.json").json()
    secret = api_for(staff_user).secret
    for path, operations in schema["paths"].items():
        url = path.replace("{slug}", "nope").replace("{number}", "1").replace("{run_id}", "1") \
            .replace("{completion_id}", "1").replace("{feedback_id}", "1") \
            .replace("{username}", "someone")
        for method in operations:
            response = Client().generic(method.upper(), url, "{}", content_type="application/json",
                                        headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code != 405, (method, path)
