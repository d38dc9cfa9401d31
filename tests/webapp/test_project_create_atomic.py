"""Creating a project is one transaction: a failure after the project row is written stores nothing."""

import pytest

from webapp.policies import services
from webapp.policies.models import ModelVersion, Project

pytestmark = pytest.mark.django_db


def test_a_project_whose_base_version_cannot_be_stored_is_not_stored(models_dir, tiny_model_dir, monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("the database refused the base version")

    monkeypatch.setattr(ModelVersion.objects, "create", fail)  # the step after the project row is saved
    with pytest.raises(RuntimeError, match="refused"):
        services.project_create(slug="half", title="Half made", base_model_path=tiny_model_dir)

    assert not Project.objects.filter(slug="half").exists()  # no project without its served v0
