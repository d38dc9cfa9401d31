"""Reads for the training pages."""

from django.db.models import Count, Exists, OuterRef, QuerySet

from webapp.annotation import selectors as annotation_selectors
from webapp.policies import selectors as policy_selectors
from webapp.policies.models import ModelVersion, Project

from .models import ACTIVE_STATUSES, TrainingRun, TrainingStep, VersionSample
from .textdiff import word_diff


def runs_for_project(*, project: Project, limit: int = 50) -> QuerySet[TrainingRun]:
    """The project's runs, newest first, each with ``n_ratings`` and ``served_later``: whether its
    version, held back when the run ended, was served since (the run page's
    :func:`webapp.policies.selectors.version_served_since`, as one subquery per list)."""
    served_later = policy_selectors.promotions_since(version=OuterRef("result_version_id"), since=OuterRef("finished_at"))
    return (
        TrainingRun.objects.filter(project=project)
        .select_related("parent_version", "result_version", "requested_by")
        .annotate(n_ratings=Count("ratings"), served_later=Exists(served_later))[:limit]
    )


def training_overview(*, project: Project) -> dict:
    """The runs page's summary line. The pool as the refill sees it: ``pool_free`` (open items of the
    served version nobody holds, what the refill keeps at ``pool_target``), ``pool_leased`` (open
    items whose every rating slot is taken by a live lease or a rating) and ``pool_size`` (all open
    items, free + leased), in :func:`webapp.annotation.selectors.pool_size`'s units."""
    pool_size = annotation_selectors.pool_size(project=project)
    pool_free = annotation_selectors.pool_free(project=project)
    return {
        "new_ratings": annotation_selectors.new_ratings(project=project).count(),
        "min_new_ratings": project.min_new_ratings,
        "active": TrainingRun.objects.filter(project=project, status__in=ACTIVE_STATUSES).exists(),
        "pool_size": pool_size,
        "pool_free": pool_free,
        "pool_leased": pool_size - pool_free,
    }


def run_steps(*, run: TrainingRun) -> list[TrainingStep]:
    """The run's pipeline steps in order (empty for runs older than the steps)."""
    return list(TrainingStep.objects.filter(run=run).order_by("position"))


LOG_TAIL_LINES = 20


def log_tail(*, run: TrainingRun, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the run's log."""
    return "\n".join(run.log.rstrip("\n").splitlines()[-lines:])


# Why two versions cannot be compared: one version twice (the compare page and the REST API).
SAME_VERSION = "v{n} against itself has nothing to compare; choose two different versions."


def samples_complete(*, version: ModelVersion) -> bool:
    """Whether ``version`` has completed every evaluation prompt of its project."""
    from .evaluation import eval_prompts

    wanted = {p.pk for p in eval_prompts(project=version.project)}
    have = set(VersionSample.objects.filter(version=version, prompt_id__in=wanted).values_list("prompt_id", flat=True))
    return wanted <= have


def comparison(*, a: ModelVersion, b: ModelVersion) -> dict:
    """Rows ``{"prompt", "a", "b"}`` (samples or None) over the evaluation prompts, and whether both are complete.

    A row with both samples also has ``diff_a`` and ``diff_b`` (each text as
    :class:`.textdiff.Segment` runs, words only on that side marked) and ``similarity``
    (share of words in common, 0–1).
    """
    from .evaluation import eval_prompts

    prompts = eval_prompts(project=a.project)
    samples = {
        (s.version_id, s.prompt_id): s
        for s in VersionSample.objects.filter(version__in=[a, b], prompt__in=prompts)
    }
    rows = [{"prompt": p, "a": samples.get((a.pk, p.pk)), "b": samples.get((b.pk, p.pk))} for p in prompts]
    for row in rows:
        if row["a"] and row["b"]:
            row["diff_a"], row["diff_b"], row["similarity"] = word_diff(row["a"].text, row["b"].text)
    return {
        "rows": rows,
        "complete": all(r["a"] and r["b"] for r in rows),
        "n_prompts": len(prompts),
    }


def run_curves_slot(run) -> str:
    """The plot slot of the run's curves (see :mod:`webapp.policies.plotfiles`)."""
    return f"run-{run.pk}-curves"


def run_rm_vs_human_slot(run) -> str:
    """The plot slot of a reward-model run's score-vs-people scatter."""
    return f"run-{run.pk}-rm"


def run_rm_vs_human_spec(run: TrainingRun) -> tuple[str, dict]:
    """Reward-model score against people's rating per rated completion (kind ``scatter``); for a
    run that trained with a reward model (``run.reward_model`` set)."""
    from .overoptimisation import rm_vs_human_points

    return "scatter", {
        "series": rm_vs_human_points(run=run),
        "title": f"Run #{run.pk}: reward model RM{run.reward_model.number} vs people",
        "xlabel": "reward-model score (reward units)",
        "ylabel": "people's rating (Likert 1–5, thumbs 1/0)",
    }


def run_curves_spec(run: TrainingRun) -> tuple[str, dict]:
    """The run's loss and KL per optimiser step (kind ``curves``, dotted lines at new epochs)."""
    curve = run.curve or []
    return "curves", {
        "steps": [p["step"] for p in curve],
        "series": {
            "policy-gradient loss": [p["losses/pg_loss"] for p in curve],
            "KL to base (nats/token)": [p["objective/kl"] for p in curve],
        },
        "title": f"Run #{run.pk}",
        "epoch_starts": [p["step"] for prev, p in zip(curve, curve[1:]) if p["epoch"] != prev["epoch"]],
    }
