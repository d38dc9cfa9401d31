"""Helpers shared by the reward-model tests: learnable rated completions on the tiny model."""

import pytest

from webapp.annotation.models import Completion, Rating

GOOD, BAD = 50, 200  # byte tokens of the tiny model; a completion made of one of them is "good" or "bad"


@pytest.fixture
def many_prompts(project):
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.services import prompts_create

    prompts_create(project=project, rows=[PromptRow(line=i + 1, text=f"Prompt number {i}") for i in range(30)])
    return list(project.prompts.filter(held_out=False).order_by("id"))


def _completion(project, prompt, token, n=6, version=None):
    return Completion.objects.create(
        project=project,
        prompt=prompt,
        model_version=version or project.served_version,
        text="x",
        prompt_token_ids=[5, 6, 7],
        token_ids=[token] * n,
        behaviour_logprobs=[-1.0] * n,
        finished=True,
    )


def _rate_learnable(project, prompts, annotator, *, per_prompt=2):
    """Completions of GOOD tokens rated 5, of BAD tokens rated 1, over every prompt."""
    made = []
    for i, prompt in enumerate(prompts):
        for j in range(per_prompt):
            good = (i + j) % 2 == 0
            c = _completion(project, prompt, GOOD if good else BAD, n=4 + (i % 3))
            Rating.objects.create(completion=c, annotator=annotator, score=5 if good else 1)
            made.append(c)
    return made
