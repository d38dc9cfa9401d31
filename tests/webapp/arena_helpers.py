"""Versions with held-out answers for arena and compare tests, without a model."""

from webapp.policies.models import ModelVersion
from webapp.training.models import VersionSample


def add_version(project, number, *, prompts=None, text=None):
    """A registered version (no weights needed) with held-out completions of ``prompts``."""
    version = ModelVersion.objects.create(
        project=project, number=number, parent=project.served_version, kind="lora", weights_path=f"/nowhere/v{number}"
    )
    for prompt in prompts if prompts is not None else project.prompts.filter(held_out=True):
        sample_for(version, prompt, text or f"answer of version {number}")
    return version


def sample_for(version, prompt, text):
    return VersionSample.objects.create(
        version=version, prompt=prompt, text=text, token_ids=[1, 2], logprobs=[-1.0, -1.0], ref_logprobs=[-1.0, -1.0],
        finished=True,
    )
