"""Serve asks for a confirmation and a reason; the reason is kept in the audit log."""

import pytest

from webapp.policies.models import AuditEvent

from arena_helpers import add_version


@pytest.mark.parametrize(
    "form",
    [{}, {"reason": "looks better"}, {"confirm": "1"}, {"confirm": "1", "reason": "   "}, {"confirm": "yes", "reason": "x"}],
)
def test_serve_without_confirmation_and_a_reason_changes_nothing(project, staff_client, form):
    add_version(project, 1)
    answer = staff_client.post(f"/staff/p/{project.slug}/versions/1/promote/", form, follow=True).content.decode()
    project.refresh_from_db()
    assert project.served_version.number == 0
    assert not AuditEvent.objects.filter(action="promote").exists()
    assert "Nothing changed: to serve v1" in answer


def test_a_confirmed_serve_keeps_its_reason_in_the_audit_log(project, staff_client, staff_user):
    add_version(project, 1)
    page = staff_client.get(f"/staff/p/{project.slug}/versions/").content.decode()
    assert 'data-promote="1"' in page and 'name="reason"' in page and 'name="confirm" value="1"' in page
    staff_client.post(
        f"/staff/p/{project.slug}/versions/1/promote/", {"confirm": "1", "reason": "  v1 <stays> on task  "}
    )
    project.refresh_from_db()
    assert project.served_version.number == 1
    event = AuditEvent.objects.get(action="promote")
    assert event.actor == staff_user and event.target == "v1"
    assert event.detail == {"previous": 0, "reason": "v1 <stays> on task"}
    audit = staff_client.get(f"/staff/p/{project.slug}/versions/audit/").content.decode()
    assert "reason: v1 &lt;stays&gt; on task" in audit


def test_a_reason_longer_than_500_characters_is_refused_and_nothing_changes(project, staff_client):
    add_version(project, 1)
    answer = staff_client.post(
        f"/staff/p/{project.slug}/versions/1/promote/", {"confirm": "1", "reason": "x" * 501}, follow=True
    ).content.decode()
    project.refresh_from_db()
    assert project.served_version.number == 0 and "under 500 characters" in answer


def test_serving_the_version_already_served_changes_nothing_and_says_so(project, staff_client):
    # A versions page left open in a second tab still offers "Serve this version…" for the version
    # another tab just served: that confirm recorded a second promotion (previous: the same version)
    # and answered "is now served".
    add_version(project, 1)
    answer = staff_client.post(
        f"/staff/p/{project.slug}/versions/0/promote/", {"confirm": "1", "reason": "stale tab"}, follow=True
    ).content.decode()
    project.refresh_from_db()
    assert project.served_version.number == 0
    assert not AuditEvent.objects.filter(action="promote").exists()
    assert "v0 is already served: nothing changed" in answer and "is now served" not in answer
