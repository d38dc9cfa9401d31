"""Rubric criteria stored with a control character in their name or description become one line.

``rubric_check`` now refuses a control character (Unicode category Cc: line break, tab, NUL and the
like) in a criterion's description, as it has refused one in its name since this session, and
``Project.clean`` runs it on every full_clean of a project with a rubric: a project stored before
with ``"\\n"`` or ``"\\t"`` there would be refused on any settings change (a 400 about its rubric).
Here each run of control characters becomes one space (a name is then stripped, as ``rubric_check``
strips it; a name that would then equal another criterion's gets " 2", " 3"… so names stay unique).
Ratings keep the criteria they were given under, as when staff rename a criterion. Not reversed:
which spaces were line breaks is not kept.
"""

import re

from django.db import migrations

CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # Unicode category Cc, all of it


def one_line_rubric(rubric):
    """``rubric`` (the stored list of criteria) with control characters in names and descriptions
    replaced as this migration says; anything that is not a list of dicts is returned as it is."""
    if not isinstance(rubric, list) or not all(isinstance(c, dict) for c in rubric):
        return rubric
    out = [dict(c) for c in rubric]
    changed = []  # criteria whose name had a control character, renamed after the others kept theirs
    for i, criterion in enumerate(out, 1):
        if isinstance(criterion.get("description"), str):
            criterion["description"] = CONTROL_RUN.sub(" ", criterion["description"])
        name = criterion.get("name")
        if isinstance(name, str) and CONTROL_RUN.search(name):
            changed.append((criterion, CONTROL_RUN.sub(" ", name).strip() or f"criterion {i}"))
    taken = {str(c.get("name", "")).strip() for c in out if not any(c is renamed for renamed, _ in changed)}
    for criterion, base in changed:
        name, n = base, 2
        while name in taken:
            name, n = f"{base} {n}", n + 1
        criterion["name"] = name
        taken.add(name)
    return out


def rubrics_one_line(apps, schema_editor):
    """Rewrite each project's rubric that holds a control character (see the module docstring)."""
    Project = apps.get_model("policies", "Project")
    for project in Project.objects.only("pk", "rubric").iterator():
        fixed = one_line_rubric(project.rubric)
        if fixed != project.rubric:
            Project.objects.filter(pk=project.pk).update(rubric=fixed)


class Migration(migrations.Migration):

    dependencies = [
        ("policies", "0019_project_settings_upper_bounds"),
    ]

    operations = [
        migrations.RunPython(rubrics_one_line, migrations.RunPython.noop, elidable=True),
    ]
