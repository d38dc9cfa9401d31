"""Migration ``policies`` 0020: a rubric stored before ``rubric_check`` refused control characters
(a line break or tab in a criterion's description or name) is made one line, so the project's
unrelated settings can be changed again (``Project.clean`` checks the rubric on each change)."""

import importlib

import pytest
from django.apps import apps

from tests.webapp.annotation_helpers import make_project
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import Project

migration = importlib.import_module("webapp.policies.migrations.0020_rubric_one_line_text")

STORED = [  # as a project saved before the description rule (and the name rule) holds it
    {"name": "helpful", "weight": 3.0, "description": "Answers the question.\nNo padding."},
    {"name": "fluent\tstyle", "weight": 1.0, "description": "Reads\r\n\twell"},
    {"name": "safe", "weight": 1.0, "description": ""},
]


@pytest.fixture
def old_rubric_project(db, tiny_model_dir, models_dir):
    project = make_project(tiny_model_dir, slug="rbo", mode="rubric", rubric=[{"name": "helpful", "weight": 3}])
    Project.objects.filter(pk=project.pk).update(rubric=STORED)  # stored without the current checks
    project.refresh_from_db()
    return project


def test_a_settings_change_is_refused_for_the_old_rubric_and_accepted_once_migrated(old_rubric_project):
    with pytest.raises(ApplicationError, match="control character"):
        policy_services.project_setup_update(project=old_rubric_project, title="renamed")

    migration.rubrics_one_line(apps, None)

    project = Project.objects.get(pk=old_rubric_project.pk)
    assert project.rubric == [
        {"name": "helpful", "weight": 3.0, "description": "Answers the question. No padding."},
        {"name": "fluent style", "weight": 1.0, "description": "Reads well"},
        {"name": "safe", "weight": 1.0, "description": ""},
    ]
    policy_services.project_setup_update(project=project, title="renamed")
    assert Project.objects.get(pk=project.pk).title == "renamed"


def test_a_name_made_one_line_that_meets_another_criterions_name_gets_a_number_and_the_other_keeps_its_own():
    rubric = [{"name": "a\nb", "weight": 1.0}, {"name": "a b", "weight": 2.0}, {"name": "\n", "weight": 1.0}]
    assert migration.one_line_rubric(rubric) == [
        {"name": "a b 2", "weight": 1.0}, {"name": "a b", "weight": 2.0}, {"name": "criterion 3", "weight": 1.0}
    ]
    assert migration.one_line_rubric("not a list") == "not a list"
