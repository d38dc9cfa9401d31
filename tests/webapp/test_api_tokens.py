"""API tokens: stored hashed, shown once, revocable, scoped to the user's project roles, throttled."""

import hashlib
import re
import threading
from importlib import import_module

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from tests.webapp.api_helpers import ApiClient, api_for  # noqa: F401 - fixture
from webapp.accounts import services
from webapp.accounts.models import ApiToken
from webapp.accounts.services import api_token_create, api_token_revoke
from webapp.errors import ApplicationError
from webapp.policies.services import membership_add


def test_a_token_is_stored_only_as_the_sha256_of_its_secret(annotator):
    token, secret = api_token_create(user=annotator, name="script")
    token.refresh_from_db()
    assert secret.startswith("rl_") and len(secret) >= 40
    assert token.key_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    stored = [str(v) for v in ApiToken.objects.values_list(flat=False).get(pk=token.pk)]
    assert not any(secret in value for value in stored)
    assert secret.startswith(token.prefix)


def test_a_token_needs_a_name_without_nul_and_a_user_has_at_most_twenty_active(annotator):
    for bad in ("", "   ", "a\x00b", "x" * 101):
        with pytest.raises(ApplicationError):
            api_token_create(user=annotator, name=bad)
    tokens = [api_token_create(user=annotator, name=f"t{i}")[0] for i in range(20)]
    with pytest.raises(ApplicationError, match="revoke one"):
        api_token_create(user=annotator, name="one more")
    api_token_revoke(token=tokens[0])
    api_token_create(user=annotator, name="one more")


def test_no_token_an_unknown_token_or_a_malformed_header_is_a_401_in_the_error_shape(project, annotator):
    for client in (ApiClient(None), ApiClient("rl_not-a-real-token"), ApiClient("nonsense")):
        response = client.get("/projects")
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized" and response.json()["message"]
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_the_session_cookie_does_not_open_the_api(client, annotator, project):
    client.force_login(annotator)
    assert client.get("/api/v1/projects").status_code == 401


def test_a_revoked_token_is_refused_at_its_next_request(project, annotator, api_for):
    client = api_for(annotator)
    assert client.get("/projects").status_code == 200
    api_token_revoke(token=ApiToken.objects.get(user=annotator))
    assert client.get("/projects").status_code == 401


def test_a_token_of_a_deactivated_user_is_refused(project, annotator, api_for):
    client = api_for(annotator)
    annotator.is_active = False
    annotator.save()
    assert client.get("/projects").status_code == 401


def test_a_token_lists_only_its_users_projects_with_the_role_in_each(tiny_model_dir, make_user, api_for, models_dir):
    from tests.webapp.annotation_helpers import make_project

    mine = make_project(tiny_model_dir, slug="mine", mode="likert")
    run_by_me = make_project(tiny_model_dir, slug="boss-of", mode="thumbs")
    make_project(tiny_model_dir, slug="other", mode="likert")
    user = make_user("scoped", member=False)
    membership_add(project=mine, user=user, role="annotator")
    membership_add(project=run_by_me, user=user, role="staff")
    listed = {p["slug"]: p["role"] for p in api_for(user).get("/projects").json()}
    assert listed == {"mine": "annotator", "boss-of": "staff"}


def test_a_project_the_user_is_not_a_member_of_is_a_404_like_one_that_does_not_exist(project, make_user, api_for):
    outsider = api_for(make_user("outsider", member=False))
    for path in ("/projects/t", "/projects/t/queue/next", "/projects/t/runs", "/projects/nope"):
        call = outsider.post if path.endswith("next") else outsider.get
        response = call(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"


def test_staff_actions_answer_403_to_an_annotator_of_the_project(project, annotator, api_for):
    client = api_for(annotator)
    assert client.get("/projects/t").status_code == 200
    for method, path in [
        ("get", "/projects/t/versions"),
        ("post", "/projects/t/versions/0/serve"),
        ("get", "/projects/t/runs"),
        ("post", "/projects/t/runs"),
        ("get", "/projects/t/runs/1"),
        ("get", "/projects/t/runs/1/log"),
        ("post", "/projects/t/runs/1/cancel"),
        ("get", "/projects/t/ratings/export?format=kto"),
    ]:
        body = {"reason": "r"} if path.endswith("/serve") else None  # a well-formed body: the role decides
        response = client.post(path, body) if method == "post" else client.get(path)
        assert response.status_code == 403, (method, path, response.content)
        assert response.json() == {"code": "forbidden", "message": "Staff only.", "fields": []}
    upload = SimpleUploadedFile("p.jsonl", b'{"text": "an annotator cannot import"}\n')
    assert client.post("/projects/t/prompts/import", files={"file": upload}).status_code == 403
    assert not project.prompts.filter(text__startswith="an annotator").exists()


def test_a_membership_removed_closes_the_project_to_the_users_token_at_once(project, annotator, api_for):
    from webapp.policies.services import membership_remove

    client = api_for(annotator)
    assert client.get("/projects/t").status_code == 200
    membership_remove(project=project, user=annotator)
    assert client.get("/projects/t").status_code == 404


def test_requests_beyond_the_rate_are_429_with_retry_after_and_counted_per_token(project, annotator, api_for, settings):
    settings.REWARDLOOP_API_RATE = "3/m"
    first, second = api_for(annotator, "first"), api_for(annotator, "second")
    assert [first.get("/projects").status_code for _ in range(3)] == [200, 200, 200]
    throttled = first.get("/projects")
    assert throttled.status_code == 429 and throttled.json()["code"] == "throttled"
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert second.get("/projects").status_code == 200  # another token has its own count


def _form_nonce(client) -> str:
    """The one-time nonce of the tokens page's create form, as a browser loads it."""
    page = client.get(reverse("accounts:tokens"))
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    return page.context.get("nonce", "")


def test_the_tokens_page_creates_a_token_shows_it_once_and_revokes_it(client, annotator, project):
    client.force_login(annotator)
    form = {"name": "my script", "nonce": _form_nonce(client)}
    response = client.post(reverse("accounts:token_create"), form)
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]  # the secret, in this answer
    secret = response.context["new_secret"]
    assert secret in response.content.decode()
    assert secret not in client.get(reverse("accounts:tokens")).content.decode()  # shown once
    assert ApiClient(secret).get("/projects").status_code == 200
    token = ApiToken.objects.get(user=annotator)
    client.post(reverse("accounts:token_revoke", args=[token.pk]))
    assert ApiClient(secret).get("/projects").status_code == 401


def test_no_session_holds_a_new_tokens_secret_and_a_replayed_form_creates_nothing(client, annotator):
    # The secret waited in the session (POST/redirect/GET): signed, not encrypted, in django_session
    # and Redis, and there until the session expired when the redirect was never followed.
    client.force_login(annotator)
    form = {"name": "my script", "nonce": _form_nonce(client)}
    response = client.post(reverse("accounts:token_create"), form)  # not followed: a page never loaded
    token = ApiToken.objects.get(user=annotator)
    store = import_module(settings.SESSION_ENGINE).SessionStore
    kept = []
    for row in Session.objects.all():
        kept += [row.session_data, repr(row.get_decoded())]
        if hasattr(store, "cache_key_prefix"):  # cached_db: the cache's copy too
            kept.append(repr(caches[settings.SESSION_CACHE_ALIAS].get(store.cache_key_prefix + row.session_key)))
    assert kept and not any(token.prefix in text for text in kept)  # not the secret, not even its prefix
    assert response.status_code == 200 and response.context["new_secret"].startswith(token.prefix)

    replayed = client.post(reverse("accounts:token_create"), form)  # a reload posts the same form again
    page = replayed.content.decode()
    assert replayed.status_code == 200 and replayed.context["new_secret"] == ""
    assert 'id="token-already-created"' in page and "cannot be shown again" in page and token.prefix in page
    assert ApiToken.objects.filter(user=annotator).count() == 1

    for bad in ({"name": "other"}, {"name": "other", "nonce": "short"}):
        refused = client.post(reverse("accounts:token_create"), bad)
        assert refused.status_code == 400 and ApiToken.objects.filter(user=annotator).count() == 1
    again = client.post(reverse("accounts:token_create"), {"name": "other", "nonce": refused.context["nonce"]})
    assert again.status_code == 200 and ApiToken.objects.filter(user=annotator).count() == 2


def test_a_second_tab_does_not_make_the_first_tabs_form_stale(client, annotator):
    client.force_login(annotator)
    first_tab, second_tab = _form_nonce(client), _form_nonce(client)
    for name, nonce in (("first", first_tab), ("second", second_tab)):
        response = client.post(reverse("accounts:token_create"), {"name": name, "nonce": nonce})
        assert response.status_code == 200 and response.context["new_secret"]
    assert sorted(ApiToken.objects.filter(user=annotator).values_list("name", flat=True)) == ["first", "second"]
    replayed = client.post(reverse("accounts:token_create"), {"name": "first", "nonce": first_tab})
    assert replayed.context["created_before"].name == "first" and replayed.context["new_secret"] == ""


def test_a_repeated_form_nonce_is_refused_by_the_database_when_the_check_misses_the_first_post(annotator, monkeypatch):
    # The other post's row is not visible yet when this one checks (two requests in the same instant):
    # the unique index refuses the second insert, and the answer names the first post's token.
    token, _ = api_token_create(user=annotator, name="script", form_nonce="n" * 22)
    real = services.api_token_for_form_nonce
    calls = []

    def check_missing_the_first_post(**kwargs):
        calls.append(kwargs)
        return real(**kwargs) if len(calls) > 1 else None

    monkeypatch.setattr(services, "api_token_for_form_nonce", check_missing_the_first_post)
    with pytest.raises(services.ApiTokenAlreadyCreated) as refused:
        api_token_create(user=annotator, name="script", form_nonce="n" * 22)
    assert refused.value.token == token and len(calls) == 2
    assert ApiToken.objects.filter(user=annotator).count() == 1


def test_a_nonce_another_users_token_stores_creates_a_token_and_tells_nothing_about_it(client, annotator, make_user):
    # The nonce was unique across all users while the check looked only at the poster's tokens: the
    # second user's post was a 500, and 500-vs-200 told them that someone's token stores this nonce.
    nonce = "s" * 22
    theirs, _ = api_token_create(user=make_user("other"), name="theirs", form_nonce=nonce)
    client.force_login(annotator)
    response = client.post(reverse("accounts:token_create"), {"name": "mine", "nonce": nonce})
    assert response.status_code == 200 and response.context["new_secret"]
    assert response.context["created_before"] is None and theirs.prefix not in response.content.decode()
    mine = ApiToken.objects.get(user=annotator)
    assert mine.name == "mine" and mine.form_nonce == nonce
    replayed = client.post(reverse("accounts:token_create"), {"name": "mine", "nonce": nonce})
    assert replayed.context["created_before"] == mine and ApiToken.objects.filter(user=annotator).count() == 1


def test_an_insert_refused_with_no_earlier_token_of_the_user_is_an_application_error(annotator, make_user, monkeypatch):
    # Not this user's form posted twice (here: the same secret drawn twice): a 400 that creates nothing, not a 500.
    monkeypatch.setattr(services.secrets, "token_urlsafe", lambda nbytes: "same" * 11)
    api_token_create(user=make_user("other"), name="theirs", form_nonce="t" * 22)
    with pytest.raises(ApplicationError, match="could not be created") as refused:
        api_token_create(user=annotator, name="mine", form_nonce="u" * 22)
    assert not isinstance(refused.value, services.ApiTokenAlreadyCreated)
    assert not ApiToken.objects.filter(user=annotator).exists()


def test_a_replayed_form_is_already_created_even_at_the_active_token_limit(annotator):
    for i in range(19):
        api_token_create(user=annotator, name=f"t{i}")
    twentieth, _ = api_token_create(user=annotator, name="last", form_nonce="m" * 22)
    with pytest.raises(services.ApiTokenAlreadyCreated) as refused:
        api_token_create(user=annotator, name="last", form_nonce="m" * 22)
    assert refused.value.token == twentieth and "already created" in refused.value.message


@pytest.mark.django_db(transaction=True)
def test_a_double_click_creates_one_token_and_shows_its_secret_once(annotator):
    first = Client()
    first.force_login(annotator)
    second = Client()
    second.cookies = first.cookies  # the same browser: one session
    form = {"name": "clicked twice", "nonce": _form_nonce(first)}
    barrier = threading.Barrier(2, timeout=30)
    answers, errors = [], []

    def click(browser):
        try:
            barrier.wait()
            answers.append(browser.post(reverse("accounts:token_create"), form))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=click, args=(b,)) for b in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and [a.status_code for a in answers] == [200, 200]
    token = ApiToken.objects.get(user=annotator)
    pages = [a.content.decode() for a in answers]  # not .context: the test client's capture is not per thread
    shown = [re.search(r'id="new-token-secret">(rl_[^<]+)<', page) for page in pages]
    assert sum(m is not None for m in shown) == 1 and [m for m in shown if m][0][1].startswith(token.prefix)
    assert sum('id="token-already-created"' in page for page in pages) == 1


def test_the_tokens_page_cannot_revoke_someone_elses_token_and_needs_a_login(client, annotator, make_user):
    theirs, secret = api_token_create(user=make_user("other"), name="theirs")
    client.force_login(annotator)
    assert client.post(reverse("accounts:token_revoke", args=[theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    client.logout()
    assert client.get(reverse("accounts:tokens")).status_code == 302
    assert client.post(reverse("accounts:token_create"), {"name": "x"}).status_code == 302
    assert not ApiToken.objects.filter(name="x").exists()


def test_the_tokens_page_refuses_a_nameless_token_with_a_400(client, annotator):
    client.force_login(annotator)
    response = client.post(reverse("accounts:token_create"), {"name": "", "nonce": _form_nonce(client)})
    assert response.status_code == 400 and not ApiToken.objects.exists()
    assert "Give the token a name" in response.content.decode()


def test_the_api_token_command_creates_lists_and_revokes(project, annotator, capsys):
    call_command("api_token", "create", "ann", "--name", "cli")
    secret = capsys.readouterr().out.strip()
    assert ApiClient(secret).get("/projects").status_code == 200
    token = ApiToken.objects.get(user=annotator)
    call_command("api_token", "list", "ann")
    listing = capsys.readouterr().out
    assert token.prefix in listing and secret not in listing
    call_command("api_token", "revoke", str(token.pk))
    assert ApiClient(secret).get("/projects").status_code == 401


@pytest.mark.parametrize("action", [["create", "ghost", "--name", "cli"], ["list", "ghost"]])
def test_the_api_token_command_names_an_unknown_user_as_the_rest_of_the_app_does(db, action):
    with pytest.raises(CommandError) as refused:
        call_command("api_token", *action)
    assert str(refused.value) == "No user is called 'ghost'; create the account first (Admin → Users)."
    assert not ApiToken.objects.exists()
