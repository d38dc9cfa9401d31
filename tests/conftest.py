"""Fixtures shared by the web-app and end-to-end tests.

The tests run against whatever ``DATABASE_URL`` and ``CELERY_BROKER_URL``
say: SQLite and the filesystem broker by default, PostgreSQL and Redis in
CI's second pass. Models are a tiny random Llama built here (fast), or the
real SmolLM2 for tests marked ``smollm2``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised causal LM folder (same architecture family as SmolLM2)."""
    from pgcore.tiny import write_tiny_model

    return Path(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0))


@pytest.fixture
def fake_vader_sdist(tmp_path) -> Path:
    """A stand-in for the ``vaderSentiment-3.3.2`` sdist: its data archive holds 100 snippets of 20
    words, snippet ``i`` reading ``"s<i>w0 s<i>w1 ... s<i>w19"`` (id ``i``, sentiment 1.5)."""
    import io
    import tarfile

    data = "\n".join(f"{i}\t1.5\t" + " ".join(f"s{i}w{j}" for j in range(20)) for i in range(1, 101))
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        blob = data.encode()
        info = tarfile.TarInfo("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, mode="w:gz") as tar:
        blob = inner.getvalue()
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    return sdist


@pytest.fixture
def models_dir(tmp_path, settings) -> Path:
    """New versions' weights go to a per-test folder."""
    settings.REWARDLOOP_MODELS_DIR = tmp_path / "models"
    return settings.REWARDLOOP_MODELS_DIR


@pytest.fixture
def project_factory(db, models_dir):
    """``project_factory(slug, base_model_path, **fields)``: a Likert project on a tiny model with
    six prompts and one held-out prompt; v0 served."""
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.services import prompts_create
    from webapp.policies.services import project_create

    def make(slug: str, base_model_path, *, title: str = "Test project", **fields):
        settings = {
            "pool_target": 4,
            "min_new_ratings": 4,
            "max_new_tokens": 8,
            "pg_config": {"epochs": 1, "minibatch_size": 4, "lr": 1e-3, "lora_r": 4, "lora_alpha": 8},
            **fields,
        }
        project = project_create(slug=slug, title=title, base_model_path=base_model_path, **settings)
        prompts_create(
            project=project,
            rows=[PromptRow(line=i + 1, text=f"Continue this review: film number {i} was") for i in range(6)]
            + [PromptRow(line=7, text="Held-out prompt", held_out=True)],
        )
        return project

    return make


@pytest.fixture
def project(project_factory, tiny_model_dir):
    """A Likert project on the tiny model with a handful of prompts; v0 served."""
    return project_factory("t", tiny_model_dir)


@pytest.fixture
def make_user(db, django_user_model):
    """``make_user(name, staff=False, member=True)`` -> a user with password ``pw-12345678``.

    With ``member`` (the default) the user is a member of every project of the
    test, those that exist and those created later (annotator, or staff for
    ``staff=True``), so tests about something else need not set up access.
    Tests of access itself pass ``member=False`` and add memberships themselves.
    """
    from django.db.models.signals import post_save

    from webapp.policies.models import Membership, Project

    members: list = []

    def join(user, project):
        role = Membership.Role.STAFF if user.is_staff else Membership.Role.ANNOTATOR
        Membership.objects.get_or_create(project=project, user=user, defaults={"role": role})

    def on_project_saved(sender, instance, created, **kwargs):
        if created:
            for user in members:
                join(user, instance)

    post_save.connect(on_project_saved, sender=Project, weak=False, dispatch_uid="tests-make-user-members")

    def make(username: str, *, staff: bool = False, member: bool = True):
        user = django_user_model.objects.create_user(username=username, password="pw-12345678", is_staff=staff)
        if member:
            members.append(user)
            for project in Project.objects.all():
                join(user, project)
        return user

    yield make
    post_save.disconnect(sender=Project, dispatch_uid="tests-make-user-members")


@pytest.fixture
def annotator(make_user):
    return make_user("ann")


@pytest.fixture
def staff_user(make_user):
    return make_user("boss", staff=True)


@pytest.fixture
def staff_client(client, staff_user):
    """The test client, logged in as a staff member."""
    client.force_login(staff_user)
    return client


@pytest.fixture
def make_completion(db):
    """Insert a completion directly (no model call), for tests of leases and ratings."""
    from webapp.annotation.models import Completion

    def make(project, *, text="a completion", prompt=None, version=None, n_tokens=3):
        prompt = prompt or project.prompts.filter(held_out=False).order_by("id").first()
        return Completion.objects.create(
            project=project,
            prompt=prompt,
            model_version=version or project.served_version,
            text=text,
            prompt_token_ids=[5, 6, 7],
            token_ids=list(range(10, 10 + n_tokens)),
            behaviour_logprobs=[-1.0] * n_tokens,
            finished=True,
        )

    return make


# --- S3-compatible object storage: moto's standalone server, started here (no network) ---


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free local port; yields its endpoint URL."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, tmp_path, monkeypatch):
    """A fresh bucket on the moto server and the environment that points Rewardloop at it."""
    import uuid

    import boto3

    bucket = f"rl-{uuid.uuid4().hex[:12]}"
    env = {
        "REWARDLOOP_S3_BUCKET": bucket,
        "REWARDLOOP_S3_ENDPOINT_URL": s3_server,
        "REWARDLOOP_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return env


@pytest.fixture
def s3_storages(s3_env, settings, tmp_path):
    """Artifacts in the moto bucket (as ``REWARDLOOP_S3_*`` configures them); this process's cache in tmp."""
    options = {
        "bucket_name": s3_env["REWARDLOOP_S3_BUCKET"],
        "endpoint_url": s3_env["REWARDLOOP_S3_ENDPOINT_URL"],
        "region_name": "us-east-1",
        "file_overwrite": True,
        "querystring_auth": False,
    }
    settings.STORAGES = {
        **settings.STORAGES,
        **{
            kind: {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {**options, "location": kind}}
            for kind in ("models", "exports", "plots")
        },
    }
    settings.REWARDLOOP_CACHE_DIR = tmp_path / "cache"
    return s3_env
