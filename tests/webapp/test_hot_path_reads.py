"""The written-out reads of every annotator request return what the ORM reads did.

Each request of a signed-in annotator reads their user (``webapp.accounts.backends.ModelBackend``),
the project with their role (``policies.selectors.project_access``), and the card's lease with
the progress line (``annotation.selectors.lease_held(with_progress=True)``) by statements written
out for CPU (``bench/annotate_load.py``); these tests compare them with the plain reads, and check
that the login backend change keeps logins and older sessions working.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.urls import reverse
from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.accounts.backends import ModelBackend
from webapp.annotation import selectors, services
from webapp.policies.models import Membership, Project, RatingMode
from webapp.policies.selectors import project_access

LOGIN = "/accounts/login/"


def fields_of(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


# --- The signed-in user ----------------------------------------------------------------


def test_the_backend_reads_the_same_user_as_the_orm(annotator, staff_user):
    for user in (annotator, staff_user):
        read = ModelBackend().get_user(user.pk)
        assert fields_of(read) == fields_of(get_user_model().objects.get(pk=user.pk))
        assert not read._state.adding and read._state.db == "default"
    assert ModelBackend().get_user(str(annotator.pk)).pk == annotator.pk  # as a session holds it
    assert ModelBackend().get_user(10**9) is None
    assert ModelBackend().get_user("not-a-number") is None


def test_an_inactive_user_is_nobody(annotator):
    get_user_model().objects.filter(pk=annotator.pk).update(is_active=False)
    assert ModelBackend().get_user(annotator.pk) is None


def test_a_login_is_recorded_with_the_new_backend_and_opens_the_annotate_page(client, annotator, project):
    assert client.post(LOGIN, {"username": "ann", "password": "pw-12345678"}).status_code == 302
    assert client.session["_auth_user_backend"] == "webapp.accounts.backends.ModelBackend"
    assert client.get(reverse("annotation:annotate", args=[project.slug])).status_code == 200


def test_a_session_signed_in_before_the_new_backend_still_opens_the_page(client, annotator, project):
    client.force_login(annotator, backend="django.contrib.auth.backends.ModelBackend")
    assert client.session["_auth_user_backend"] == "django.contrib.auth.backends.ModelBackend"
    assert client.get(reverse("annotation:annotate", args=[project.slug])).status_code == 200


def test_a_wrong_password_is_refused_after_one_hash_not_one_per_backend(client, annotator, hashes):
    failed = []

    def on_failed(sender, **kwargs):
        failed.append(kwargs["credentials"]["username"])

    user_login_failed.connect(on_failed)
    try:
        answer = client.post(LOGIN, {"username": "ann", "password": "wrong-password"})
        assert answer.status_code == 200 and "_auth_user_id" not in client.session
        assert hashes == ["check"]
        hashes.clear()
        assert client.post(LOGIN, {"username": "nobody", "password": "wrong-password"}).status_code == 200
        assert hashes == ["make"]  # an unknown name costs one hash too (no timing difference)
    finally:
        user_login_failed.disconnect(on_failed)
    assert failed == ["ann", "nobody"]  # each failure reported once (django-axes counts these)


# --- The project and the role ----------------------------------------------------------


def test_project_access_reads_the_same_project_as_the_orm(project, annotator, staff_user, make_user):
    Project.objects.filter(pk=project.pk).update(
        rubric=[{"name": "clarity", "weight": 0.5, "description": "é"}], gold_rate=0.25, active_queue=True
    )
    expected = fields_of(Project.objects.get(pk=project.pk))
    read, role = project_access(project_slug=project.slug, user=annotator)
    assert fields_of(read) == expected and role == Membership.Role.ANNOTATOR
    assert read.rubric[0]["description"] == "é" and not read._state.adding
    read, role = project_access(project_slug=project.slug, user=staff_user)
    assert fields_of(read) == expected and role == Membership.Role.STAFF
    outsider = make_user("outsider", member=False)
    assert project_access(project_slug=project.slug, user=outsider) == (None, None)
    assert project_access(project_slug="no-such-project", user=annotator) == (None, None)


# --- The card's lease with the progress line -------------------------------------------


def test_the_progress_read_with_the_lease_is_the_progress_line(project, annotator, make_user, make_completion):
    items = [make_completion(project) for _ in range(6)]
    other = make_user("other")
    services.rating_create(annotator=annotator, completion=items[0], score=4)
    services.rating_create(annotator=other, completion=items[1], score=2)
    services.item_skip(annotator=annotator, completion=items[2])
    lease = services.lease_next(project=project, annotator=annotator, with_progress=True)
    expected = selectors.annotator_progress(project=project, annotator=annotator)
    assert lease.progress == expected
    # six items: one rated by them, one skipped, one with all its ratings (one per item) by another
    assert expected == {"today": 1, "queue": 3, "queue_capped": False, "can_undo": True}
    held = selectors.lease_held(project=project, annotator=annotator, with_progress=True)
    assert held.pk == lease.pk and held.progress == expected
    assert not hasattr(selectors.lease_held(project=project, annotator=annotator), "progress")


def test_the_progress_read_with_a_pairwise_lease_is_the_progress_line(tiny_model_dir, annotator, make_completion):
    project = make_project(tiny_model_dir, slug="pw", mode=RatingMode.PAIRWISE)
    Membership.objects.get_or_create(project=project, user=annotator)
    pairs = [make_pair(project, make_completion) for _ in range(3)]
    services.comparison_create(pair=pairs[0], annotator=annotator, choice="a")
    lease = services.lease_next(project=project, annotator=annotator, with_progress=True)
    assert lease.completion.pair_as_a.pk in {pairs[1].pk, pairs[2].pk}
    assert lease.progress == selectors.annotator_progress(project=project, annotator=annotator)
    assert lease.progress["today"] == 1 and lease.progress["queue"] == 2
