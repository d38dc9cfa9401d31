"""Users in the Django admin: deactivating or deleting them keeps the rule that a project keeps an active staff member."""

import pytest
from django.db import connection
from django.db.models import QuerySet
from django.contrib.admin import helpers
from django.urls import reverse

from webapp.policies import selectors as policy_selectors
from webapp.policies.models import Membership, Project


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    return client


@pytest.fixture
def staff_lock_events(monkeypatch, django_user_model):
    """What the admin does about the last-staff rule, in order, each with whether it ran inside a transaction:
    ``("lock", …)`` for a lock on project rows, ``("check", …)`` for the check
    (``policies.selectors.projects_only_staffed_by``), ``("delete", …)`` for a deletion of users."""
    events, real_lock, real_check = [], QuerySet.select_for_update, policy_selectors.projects_only_staffed_by
    real_delete = QuerySet.delete

    def lock(queryset, *args, **kwargs):
        if queryset.model is Project:
            events.append(("lock", connection.in_atomic_block))
        return real_lock(queryset, *args, **kwargs)

    def check(**kwargs):
        events.append(("check", connection.in_atomic_block))
        return real_check(**kwargs)

    def delete(queryset):
        if queryset.model is django_user_model:
            events.append(("delete", connection.in_atomic_block))
        return real_delete(queryset)

    monkeypatch.setattr(QuerySet, "select_for_update", lock)
    monkeypatch.setattr(policy_selectors, "projects_only_staffed_by", check)
    monkeypatch.setattr(QuerySet, "delete", delete)
    return events


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
    superuser_client, project, make_user, staff_lock_events
):
    # The other staff member demoting themselves at the same time locks the project's row first
    # (policies.services._staff_kept_check): the admin takes the same lock before its check, in the
    # transaction that saves, so one of the two waits for the other and then sees its change.
    lead, other = make_user("lead", member=False), make_user("other", member=False)
    for user in (lead, other):
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)

    assert _save_user(superuser_client, lead, is_active=False).status_code == 302
    assert staff_lock_events == [("lock", True), ("check", True)]
    lead.refresh_from_db()
    assert not lead.is_active


def _delete_user(client, user):
    """Confirm the admin's "Delete" of ``user`` (the delete view's POST)."""
    return client.post(reverse("admin:auth_user_delete", args=[user.pk]), {"post": "yes"})


def _delete_users(client, *users):
    """Confirm the changelist's bulk "Delete selected users" action on ``users``."""
    return client.post(reverse("admin:auth_user_changelist"), {
        "action": "delete_selected", "post": "yes", helpers.ACTION_CHECKBOX_NAME: [user.pk for user in users],
    })


def test_the_admin_refuses_to_delete_a_projects_last_active_staff_member(superuser_client, project, make_user, django_user_model):
    lead = make_user("lead", member=False)
    Membership.objects.create(project=project, user=lead, role=Membership.Role.STAFF)

    asked = superuser_client.get(reverse("admin:auth_user_delete", args=[lead.pk]))
    refused = _delete_user(superuser_client, lead)

    reason = f"lead is the last active staff member of {project.slug} and cannot be deleted"
    for page in (asked, refused):
        assert page.status_code == 200 and "Cannot delete user" in page.content.decode()
        assert reason in page.content.decode()
    assert django_user_model.objects.filter(pk=lead.pk).exists()


def test_the_admin_deletes_staff_when_another_active_staff_member_remains_and_inactive_staff_always(
    superuser_client, project, make_user, django_user_model
):
    lead, other = make_user("lead", member=False), make_user("other", member=False)
    for user in (lead, other):
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)

    assert _delete_user(superuser_client, lead).status_code == 302
    assert not django_user_model.objects.filter(pk=lead.pk).exists()
    assert _delete_user(superuser_client, other).status_code == 200  # now the last active one
    django_user_model.objects.filter(pk=other.pk).update(is_active=False)  # manages nothing any more
    assert _delete_user(superuser_client, other).status_code == 302
    assert not django_user_model.objects.filter(pk=other.pk).exists()


def test_the_admins_bulk_delete_refuses_a_selection_holding_all_of_a_projects_active_staff(
    superuser_client, project, make_user, django_user_model
):
    lead, other, annotator = (make_user(name, member=False) for name in ("lead", "other", "ann"))
    for user in (lead, other):
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)

    refused = _delete_users(superuser_client, lead, other, annotator)  # each alone would leave the other

    assert refused.status_code == 200 and "Cannot delete users" in refused.content.decode()
    assert f"lead and other are the last active staff members of {project.slug} and cannot be deleted" in refused.content.decode()
    assert django_user_model.objects.filter(pk__in=[lead.pk, other.pk, annotator.pk]).count() == 3

    assert _delete_users(superuser_client, lead, annotator).status_code == 302
    assert list(django_user_model.objects.filter(pk__in=[lead.pk, other.pk, annotator.pk])) == [other]


@pytest.mark.django_db(transaction=True)  # so that in_atomic_block is the action's own transaction, not the test's
def test_the_admins_bulk_delete_locks_the_staff_projects_and_checks_in_the_transaction_that_deletes(
    superuser_client, project, make_user, staff_lock_events, django_user_model
):
    lead, other = make_user("lead", member=False), make_user("other", member=False)
    for user in (lead, other):
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)

    assert _delete_users(superuser_client, lead).status_code == 302
    assert staff_lock_events == [("lock", True), ("check", True), ("delete", True)]
    assert list(django_user_model.objects.filter(pk__in=[lead.pk, other.pk])) == [other]
