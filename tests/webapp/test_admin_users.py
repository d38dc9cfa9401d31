"""Users in the Django admin: deactivating one keeps the rule that a project keeps an active staff member."""

import pytest
from django.urls import reverse

from webapp.policies.models import Membership


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
