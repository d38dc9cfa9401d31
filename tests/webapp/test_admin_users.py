"""Users in the Django admin: deactivating one keeps the rule that a project keeps an active staff member."""

import pytest
from django.db import connection
from django.db.models import QuerySet
from django.urls import reverse

from webapp.policies import selectors as policy_selectors
from webapp.policies.models import Membership, Project


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    return client


def _save_user(client, user, **changes):
    """Post the admin's change form of ``user`` as it stands, with ``changes`` (``is_active=False``: unticked)."""
    data = {
        "username": user.username, "first_name": "", "last_name": "", "email": "",
        "is_active": "on", "is_staff": "on" if user.is_staff else "", "is_superuser": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"), "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "last_login_0": "", "last_login_1": "",
    }
    data.update({k: ("on" if v else "") for k, v in changes.items()})
    return client.post(reverse("admin:auth_user_change", args=[user.pk]), {k: v for k, v in data.items() if v != ""})


def test_the_admin_refuses_to_deactivate_a_projects_last_active_staff_member(superuser_client, project, make_user):
    lead = make_user("lead", member=False)
    Membership.objects.create(project=project, user=lead, role=Membership.Role.STAFF)

    refused = _save_user(superuser_client, lead, is_active=False)

    assert refused.status_code == 200  # the form again, with the reason
    assert f"lead is the last active staff member of {project.slug} and cannot be deactivated" in refused.content.decode()
    lead.refresh_from_db()
    assert lead.is_active


def test_the_admin_deactivates_staff_when_another_active_staff_member_remains(superuser_client, project, make_user):
    lead, other = make_user("lead", member=False), make_user("other", member=False)
    for user in (lead, other):
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)

    saved = _save_user(superuser_client, lead, is_active=False)

    assert saved.status_code == 302, saved.content.decode()[:2000]
    lead.refresh_from_db()
    assert not lead.is_active
    assert _save_user(superuser_client, other, is_active=False).status_code == 200  # now the last active one
    other.refresh_from_db()
    assert other.is_active


@pytest.mark.django_db(transaction=True)  # so that in_atomic_block is the admin's own transaction, not the test's
def test_the_admin_locks_the_users_staff_projects_and_checks_in_the_transaction_that_saves(
    superuser_client, project, make_user, monkeypatch
):
    # The other staff member demoting themselves at the same time locks the project's row first
    # (policies.services._staff_kept_check): the admin takes the same lock before its check, in the
    # transaction that saves, so one of the two waits for the other and then sees its change.
    lead, other = make_user("lead", member=False), make_user("other", member=False)
    for user in (lead, other):
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)
    events, real_lock, real_check = [], QuerySet.select_for_update, policy_selectors.projects_only_staffed_by

    def lock(queryset, *args, **kwargs):
        if queryset.model is Project:
            events.append(("lock", connection.in_atomic_block))
        return real_lock(queryset, *args, **kwargs)

    def check(**kwargs):
        events.append(("check", connection.in_atomic_block))
        return real_check(**kwargs)

    monkeypatch.setattr(QuerySet, "select_for_update", lock)
    monkeypatch.setattr(policy_selectors, "projects_only_staffed_by", check)

    assert _save_user(superuser_client, lead, is_active=False).status_code == 302
    assert events == [("lock", True), ("check", True)]
    lead.refresh_from_db()
    assert not lead.is_active
