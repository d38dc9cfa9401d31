"""bench/learning.py: a seed repeats its run exactly, and another seed does not (issue 16).

The bench's own loop (pool refills, leases, ratings, training runs, evaluations) on the tiny
model, in the ``rm_active`` variant, which goes through every seeded path: the pool's sampling,
the annotators, the active queue's draws, the reward-model fit and its fresh samples, the
policy update. The second run of a seed has other database ids (the first run's rows stay),
so nothing may depend on them.
"""

import pytest

from bench.learning import Loop, parse_args
from bench.simulated_annotators import default_team
from webapp.annotation.importers import PromptRow
from webapp.policies.models import Project

ARGS = [
    "--tiny", "--variants", "rm_active", "--ratings", "16", "--train-every", "8", "--heldout", "2",
    "--max-new-tokens", "6", "--pool-target", "8", "--annotators", "3",
]
ROWS = [PromptRow(line=i + 1, text=f"Continue this review: film number {i} was") for i in range(10)] + [
    PromptRow(line=11 + i, text=f"Held-out review {i} opened with", held_out=True) for i in range(2)
]


@pytest.fixture
def run_seed(transactional_db, models_dir, tiny_model_dir, settings, django_user_model):
    """``run_seed(seed)``: the curve of one bench run (base point first), less its wall-clock figures."""
    settings.REWARDLOOP_RM_MIN_JUDGMENTS = 4  # a reward model from the first training run on
    settings.REWARDLOOP_RM_FRESH_PROMPTS = 2
    args = parse_args(ARGS)
    team = default_team(args.annotators)
    users = [django_user_model.objects.create_user(username=a.name, password="simulated-annotator") for a in team]
    runs = 0

    def run(seed: int) -> list[dict]:
        nonlocal runs
        loop = Loop(name="rm_active", seed=seed, args=args, base_model_path=tiny_model_dir, rows=ROWS, users=users, team=team)
        curve = [loop.evaluate_base()]
        loop.run(curve.append)
        runs += 1
        Project.objects.filter(pk=loop.project.pk).update(slug=f"done-{runs}")  # the next run's project may take its slug
        for point in curve:
            point.pop("wall_s")
            point["train_metrics"].pop("train/seconds", None)
        return curve

    return run


def test_a_seed_repeats_its_run_exactly_and_another_seed_does_not(run_seed):
    first = run_seed(0)
    other = run_seed(1)
    again = run_seed(0)

    assert [p["ratings"] for p in first] == [0, 8, 16]
    assert first[-1]["rm_metrics"], "no reward model was fitted: the test would not cover its paths"
    assert again == first
    assert [p["train_metrics"] for p in other] != [p["train_metrics"] for p in first]
