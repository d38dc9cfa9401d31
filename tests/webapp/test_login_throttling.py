"""Login throttling (django-axes): per username and per IP address, refused before any password is hashed."""

from datetime import timedelta

import pytest
from django.urls import reverse

LOGIN = "/accounts/login/"


@pytest.fixture
def throttled(settings):
    settings.AXES_FAILURE_LIMIT = 3  # the default is 10; a small limit keeps the tests fast
    return settings


@pytest.fixture
def hashes(monkeypatch):
    """Counts password hashing and checking done by Django's auth (a spy: the real functions still run)."""
    from django.contrib.auth import base_user

    calls = []
    real_check, real_make = base_user.check_password, base_user.make_password
    monkeypatch.setattr(base_user, "check_password", lambda *a, **k: calls.append("check") or real_check(*a, **k))
    monkeypatch.setattr(base_user, "make_password", lambda *a, **k: calls.append("make") or real_make(*a, **k))
    return calls


def login(client, username, password, ip):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_one_username_is_locked_after_the_limit_even_from_many_addresses(client, throttled, annotator, hashes):
    answers = [login(client, "ann", "wrong-password", f"10.0.0.{i}").status_code for i in range(1, 4)]
    assert answers == [200, 200, 429]  # the form again, then locked at the limit
    hashes.clear()
    throttled.AXES_COOLOFF_TIME = timedelta(minutes=15, seconds=0.5)
    response = login(client, "ann", "pw-12345678", "10.0.0.9")  # the right password, from a fresh address
    assert response.status_code == 429 and "Too many failed logins" in response.content.decode()
    assert response["Retry-After"] == "901"  # the cool-off, in whole seconds rounded up
    assert hashes == []  # refused before the password was hashed
    assert "_auth_user_id" not in client.session


def test_one_address_is_locked_after_the_limit_even_for_many_usernames(client, throttled, annotator, hashes):
    answers = [login(client, f"guess{i}", "wrong-password", "10.0.1.1").status_code for i in range(3)]
    assert answers == [200, 200, 429]
    hashes.clear()
    assert login(client, "ann", "pw-12345678", "10.0.1.1").status_code == 429
    assert hashes == []
    # Another person from another address is not affected.
    assert login(client, "ann", "pw-12345678", "10.0.1.2").status_code == 302


def test_a_successful_login_clears_the_failures_so_a_typo_now_and_then_never_locks_anyone_out(
    client, throttled, annotator
):
    for _ in range(4):  # more typos in all than the limit of 3
        assert login(client, "ann", "typo", "10.0.2.1").status_code == 200
        assert login(client, "ann", "pw-12345678", "10.0.2.1").status_code == 302
        client.post(reverse("logout"))


def test_a_run_of_wrong_passwords_reaches_the_hasher_only_up_to_the_default_limit(client, annotator, hashes):
    """With the default limit (10): the 11th and later attempts never reach the password hasher."""
    statuses = [login(client, "ann", f"guess-{i}", "10.0.3.1").status_code for i in range(40)]
    assert statuses.count(200) == 9 and statuses.count(429) == 31
    assert len(hashes) == 10


def test_without_a_cool_off_the_lockout_names_no_time_to_retry(client, throttled, annotator):
    throttled.AXES_COOLOFF_TIME = None  # locked until an admin resets it
    answers = [login(client, "ann", "wrong-password", "10.0.4.1") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "Retry-After" not in answers[-1] and "Try again later" in answers[-1].content.decode()
