"""Audit events that concern a model version (serving it, exporting it) link that version by key,
and the run page's "served since" reads the key, never the event's ``target`` text."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from arena_helpers import add_version
from django.apps import apps
from django.utils import timezone

from webapp.policies import selectors as policy_selectors
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, ModelVersion

link_migration = importlib.import_module("webapp.policies.migrations.0016_auditevent_version")


def _serve(version, user):
    version.refresh_from_db()
    return policy_services.version_promote(version=version, user=user, override_guard=True, refill_pool=False)


def test_serving_a_version_links_its_audit_event_to_that_version(project, staff_user):
    v1 = add_version(project, 1)
    _serve(v1, staff_user)
    _serve(project.versions.get(number=0), staff_user)
    events = AuditEvent.objects.filter(action="promote").order_by("id")
    assert [(e.target, e.version_id) for e in events] == [("v1", v1.pk), ("v0", project.served_version_id)]


def test_exporting_a_version_links_its_audit_event_to_that_version(project, staff_user, tmp_path):
    v0 = project.served_version
    policy_services.version_export_hf(version=v0, out_dir=tmp_path / "out", user=staff_user)
    assert AuditEvent.objects.get(action="export_version").version == v0


def test_an_event_cannot_link_a_version_of_another_project(project, project_factory, tiny_model_dir):
    other = project_factory("other", tiny_model_dir)
    with pytest.raises(ValueError, match="not a version of project"):
        policy_services.audit_record(
            project=project, actor=None, action="promote", target="v0", version=other.served_version
        )


def test_a_new_version_reusing_a_deleted_versions_number_is_not_reported_served_by_the_old_event(project, staff_user):
    """The target text "v1" of the old event names the new v1 too; the key does not."""
    since = timezone.now() - timedelta(minutes=1)
    old_v1 = add_version(project, 1)
    _serve(old_v1, staff_user)
    _serve(project.versions.get(number=0), staff_user)
    old_v1.delete()  # the audit line stays, unlinked
    old_event = AuditEvent.objects.get(action="promote", target="v1")
    assert old_event.version is None

    new_v1 = add_version(project, 1)
    assert policy_selectors.version_served_since(version=new_v1, since=since) is None
    _serve(new_v1, staff_user)
    served = policy_selectors.version_served_since(version=new_v1, since=since)
    assert served is not None and served.pk != old_event.pk and served.actor == staff_user


def test_the_served_since_check_ignores_a_same_named_version_of_another_project(project, project_factory, tiny_model_dir, staff_user):
    other = project_factory("other", tiny_model_dir)
    since = timezone.now() - timedelta(minutes=1)
    mine, theirs = add_version(project, 1), add_version(other, 1)
    _serve(theirs, staff_user)
    assert policy_selectors.version_served_since(version=mine, since=since) is None
    assert policy_selectors.version_served_since(version=theirs, since=since).project == other


def test_the_migration_links_existing_serving_and_export_events_by_project_and_number(project, project_factory, tiny_model_dir, make_user):
    other = project_factory("other", tiny_model_dir)
    mine, theirs = add_version(project, 1), add_version(other, 1)
    make = lambda p, action, target: AuditEvent.objects.create(project=p, action=action, target=target)  # noqa: E731
    promote_mine, promote_theirs = make(project, "promote", "v1"), make(other, "promote", "v1")
    export_mine = make(project, "export_version", "v0")
    member_v1 = make(project, "member_add", "v1")  # a user called "v1": not a version
    gone = make(project, "promote", "v7")  # no such version (any more)
    odd = make(project, "export_version", "v1 (old)")

    link_migration.link_versions(apps, None)

    linked = dict(AuditEvent.objects.values_list("pk", "version_id"))
    assert linked[promote_mine.pk] == mine.pk and linked[promote_theirs.pk] == theirs.pk
    assert linked[export_mine.pk] == ModelVersion.objects.get(project=project, number=0).pk
    assert linked[member_v1.pk] is None and linked[gone.pk] is None and linked[odd.pk] is None
