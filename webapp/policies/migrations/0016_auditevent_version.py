"""Audit events link the model version they concern by key (``AuditEvent.version``).

Before, readers (the run page's "served since") matched the event's ``target`` text
``v<number>``. Existing serving and exporting events (the two actions whose target names
a version) whose target is exactly ``v<number>`` and whose project has that version get
the link; every other event (a member called "v3", a version no longer there) stays
unlinked. Reversing drops the column, which loses nothing the target text does not say.
"""

import re

import django.db.models.deletion
from django.db import migrations, models

VERSION_TARGET = re.compile(r"v(\d+)")
VERSION_ACTIONS = ("promote", "export_version")


def link_versions(apps, schema_editor):
    AuditEvent = apps.get_model("policies", "AuditEvent")
    ModelVersion = apps.get_model("policies", "ModelVersion")
    events = AuditEvent.objects.filter(action__in=VERSION_ACTIONS, version__isnull=True, target__regex=r"^v[0-9]+$")
    for event in events.only("pk", "project_id", "target").iterator():
        number = int(VERSION_TARGET.fullmatch(event.target).group(1))
        version_id = (
            ModelVersion.objects.filter(project_id=event.project_id, number=number).values_list("pk", flat=True).first()
        )
        if version_id is not None:
            AuditEvent.objects.filter(pk=event.pk).update(version_id=version_id)


class Migration(migrations.Migration):

    dependencies = [
        ('policies', '0015_merge_20261207_0434'),
    ]

    operations = [
        migrations.AddField(
            model_name='auditevent',
            name='version',
            field=models.ForeignKey(blank=True, help_text='The version the event concerns (serving, exporting), else empty; the target text still names it if the version is deleted.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='audit_events', to='policies.modelversion', verbose_name='model version'),
        ),
        migrations.RunPython(link_versions, migrations.RunPython.noop),
    ]
