"""Writes for reward models: fit a version on a project's ratings, score completions with it.

A fit reads every rating of the project's training prompts, turns them into judgments
with the mapping and per-annotator normalisation training uses (``pgcore.rewards``),
holds out a fixed share of prompts to measure the model, fits again on everything, stores
the artefact atomically and writes the ensemble's mean and spread onto the completions
(``Completion.rm_score`` / ``rm_uncertainty``). Nothing is written unless the whole fit
succeeds; too few judgments is an :class:`ApplicationError` and no fit.

Features of the frozen base model are computed once per completion and cached under the
models folder, keyed by the backbone's checksum and the feature settings; the backbone itself
stays loaded in the process between calls (:func:`webapp.policies.runtime.frozen_policy`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction

from webapp.annotation import judgments as annotation_judgments
from webapp.annotation.models import Completion, Prompt
from webapp.annotation.weights import rating_weights
from webapp.errors import ApplicationError
from webapp.policies import artifacts
from webapp.policies.models import Project
from webapp.policies.runtime import base_dir

from . import selectors
from .models import RewardModelVersion

log = logging.getLogger(__name__)

# Below this many judgments a fit is refused: the held-out share would say nothing.
MIN_JUDGMENTS = 32
# Share of prompts (by a hash of the prompt's text, so it is fixed, and the same in every project and
# database holding that prompt) whose judgments measure the model.
HELD_OUT_SHARE = 0.2
# Pooled layers as fractions of the backbone's depth (SmolLM2-135M, 30 layers: 8, 16, 24, 30).
LAYER_FRACTIONS = (0.27, 0.53, 0.8, 1.0)
# The best head measured (bench/reward_model.py, README "Reward models"): mean and last-token states
# of those layers, standardised, projected on 256 principal components, K=5 linear heads. (A ridge
# probe on the same features did better still; the ensemble is here for its uncertainty.)
DEFAULT_CONFIG = {
    "pooling": "mean_last",
    "pca_dim": 256,
    "head": "linear",
    "max_prompt_tokens": 32,
    "max_completion_tokens": 128,
}


def min_judgments() -> int:
    return int(getattr(settings, "REWARDLOOP_RM_MIN_JUDGMENTS", MIN_JUDGMENTS))


def reward_model_config_for(*, project: Project, overrides: dict | None = None):
    """The :class:`pgcore.reward_model.RewardModelConfig` for the project's backbone.

    Layers default to ``LAYER_FRACTIONS`` of the backbone's depth, the rest to
    ``DEFAULT_CONFIG``; ``overrides`` replace any field. Raises ApplicationError for an
    unknown field or a value out of range.
    """
    from pgcore.reward_model import RewardModelConfig

    config_path = Path(project.base_model_path) / "config.json"
    try:
        config_path = base_dir(project) / "config.json"
        depth = int(json.loads(config_path.read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError) as exc:
        raise ApplicationError(f"Cannot read the backbone's depth from {config_path}: {exc}") from exc
    layers = sorted({max(1, round(depth * f)) for f in LAYER_FRACTIONS})
    try:
        return RewardModelConfig.from_dict({"layers": layers, **DEFAULT_CONFIG, **(overrides or {})})
    except (TypeError, ValueError) as exc:
        raise ApplicationError(str(exc)) from exc


def _held_out(prompt_text: str) -> bool:
    digest = hashlib.sha256(f"rm-split:{prompt_text}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELD_OUT_SHARE


def _ids_sha256(ids: list[int]) -> str:
    return hashlib.sha256(",".join(str(i) for i in sorted(ids)).encode()).hexdigest()


# ---------------------------------------------------------------- judgments


def judgments_build(*, project: Project, rows: list) -> dict:
    """Judgments over the rated completions, split into fit and held-out parts.

    Likert and thumbs ratings become regression targets: each rating is scored by
    ``pgcore.rewards.judgment_to_score`` and normalised per annotator by
    ``ratings_to_rewards`` (the project's ``annotator_norm`` and ``annotator_shrinkage``;
    a person's production feedback is normalised apart from their annotation, as training
    does), then averaged per completion. Each pairwise decision becomes one comparison whose
    Bradley–Terry target comes from the same scores (``pair_target_from_scores``); each
    ranking becomes the k(k-1)/2 comparisons it implies
    (:func:`webapp.annotation.judgments.ranking_implied_pairs`), the better-ranked one winning.

    Weights follow policy updates' rule (:mod:`webapp.annotation.weights`): each rating counts
    with its rater's gold weight in its completion's normalised mean, and a judgment's weight
    (``Judgments.rating_weight`` / ``pair_weight``, which the fit's loss multiplies in) is the
    mean source weight of its ratings (``production_feedback_weight`` for production feedback,
    1 for an annotator's) times the largest gold weight among its raters (``gold_low_weight``
    for an annotator below the project's gold accuracy, else 1). At production weight 0 :func:`selectors.rating_rows`
    leaves production ratings out altogether (not even their completions' features shape the
    fit, and they do not count towards the judgments a fit needs), so the fit is the one
    without them.

    Returns:
        ``{"completion_ids": [...], "all": Judgments, "fit": Judgments, "held_out": Judgments,
        "n_judgments": int, "rating_ids": [...]}``, indices into ``completion_ids``; ``rating_ids``
        are the ratings used (sorted).
    """
    import torch

    from pgcore.config import PGConfig
    from pgcore.reward_model import Judgments, pair_target_from_scores
    from pgcore.rewards import RatingRecord, judgment_to_score, ratings_to_rewards

    try:
        pg = PGConfig.from_dict(project.pg_config or {})
    except (TypeError, ValueError) as exc:
        raise ApplicationError(str(exc)) from exc
    production = "production"
    weights = rating_weights(project=project)

    def weight_of(row) -> float:  # a comparison's or a ranking's one rater
        return weights.judgment([(row.annotator_id, row.source)])

    completion_ids = sorted({r.completion_id for r in rows})
    index = {cid: i for i, cid in enumerate(completion_ids)}
    prompt_of = {r.completion_id: r.prompt_id for r in rows}
    held_out = {
        pk for pk, text in Prompt.objects.filter(pk__in=set(prompt_of.values())).values_list("pk", "text") if _held_out(text)
    }

    rated = [r for r in rows if r.comparison_id is None and r.ranking_id is None]
    rated_ids = sorted({r.completion_id for r in rated})
    rated_index = {cid: i for i, cid in enumerate(rated_ids)}
    records = [
        RatingRecord(
            completion_index=rated_index[r.completion_id],
            annotator=f"{r.annotator_id}:production" if r.source == production else r.annotator_id,
            score=judgment_to_score(score=r.score, thumbs_up=r.thumbs_up, choice=None, is_a=True),
            weight=weights.in_mean(r.annotator_id),
        )
        for r in rated
    ]
    raters: list[list[tuple[int, str]]] = [[] for _ in rated_ids]
    for r in rated:
        raters[rated_index[r.completion_id]].append((r.annotator_id, r.source))
    rated_weights = [weights.judgment(who) for who in raters]
    targets = ratings_to_rewards(
        records, len(rated_ids), annotator_norm=pg.annotator_norm, shrinkage=pg.annotator_shrinkage
    ).tolist()

    comparisons: dict[int, dict] = {}
    for r in rows:
        if r.comparison_id is not None:
            side = comparisons.setdefault(
                r.comparison_id, {"choice": r.choice, "anchor": r.anchor_id, "weight": weight_of(r)}
            )
            side["a" if r.completion_id == r.anchor_id else "b"] = r.completion_id
    pairs = [c for c in comparisons.values() if "a" in c and "b" in c]
    places: dict[int, list] = {}
    for r in rows:
        if r.ranking_id is not None:
            places.setdefault(r.ranking_id, []).append(r)
    for ranked in places.values():
        order = [r.completion_id for r in sorted(ranked, key=lambda r: r.rank)]
        weight = weight_of(ranked[0])
        pairs += [{"choice": "a", "a": w, "b": l, "weight": weight}
                  for w, l in annotation_judgments.ranking_implied_pairs(order)]

    def part(keep) -> Judgments:
        reg = [(index[cid], y, w) for cid, y, w in zip(rated_ids, targets, rated_weights) if keep(prompt_of[cid])]
        prs = [
            (index[c["a"]], index[c["b"]], pair_target_from_scores(*_pair_scores(c["choice"], judgment_to_score)),
             c["weight"])
            for c in pairs
            if keep(prompt_of[c["a"]])
        ]
        return Judgments(
            torch.tensor([i for i, _, _ in reg], dtype=torch.long),
            torch.tensor([y for _, y, _ in reg], dtype=torch.float32),
            torch.tensor([a for a, _, _, _ in prs], dtype=torch.long),
            torch.tensor([b for _, b, _, _ in prs], dtype=torch.long),
            torch.tensor([t for _, _, t, _ in prs], dtype=torch.float32),
            rating_weight=torch.tensor([w for _, _, w in reg], dtype=torch.float32),
            pair_weight=torch.tensor([w for _, _, _, w in prs], dtype=torch.float32),
        )

    return {
        "completion_ids": completion_ids,
        "all": part(lambda prompt_id: True),
        "fit": part(lambda prompt_id: prompt_id not in held_out),
        "held_out": part(lambda prompt_id: prompt_id in held_out),
        "n_judgments": len(rated_ids) + len(pairs),
        "rating_ids": sorted(r.rating_id for r in rows),
    }


def _pair_scores(choice: str, judgment_to_score) -> tuple[float, float]:
    return (
        judgment_to_score(score=None, thumbs_up=None, choice=choice, is_a=True),
        judgment_to_score(score=None, thumbs_up=None, choice=choice, is_a=False),
    )


# ---------------------------------------------------------------- features


def _backbone_key(base_path: Path) -> str:
    from pgcore.policy import CHECKSUM_FILE

    try:
        return json.loads((base_path / CHECKSUM_FILE).read_text())["sha256"][:16]
    except (OSError, ValueError, KeyError):
        return hashlib.sha256(str(base_path.resolve()).encode()).hexdigest()[:16]


def features_ensure(*, project: Project, completions: list[Completion], config):
    """``(N, F)`` features of ``completions`` (in order), computing only those not cached yet.

    The cache (``<models>/<project>/reward-models/features-<backbone>-<spec>.pt``, a dict
    completion id -> ``(F,)`` tensor) is replaced atomically after new rows are added.
    """
    import torch

    from pgcore.atomic import atomic_file

    base_path = base_dir(project)
    spec = hashlib.sha256(json.dumps(config.feature_spec(), sort_keys=True).encode()).hexdigest()[:12]
    cache_path = _rm_dir(project) / f"features-{_backbone_key(base_path)}-{spec}.pt"
    cache: dict[int, torch.Tensor] = {}
    if cache_path.exists():
        try:
            cache = torch.load(cache_path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
            log.warning("reward-model feature cache %s unreadable; recomputing", cache_path)
            cache = {}
    missing = [c for c in completions if c.pk not in cache]
    if missing:
        feats = features_compute(
            project=project,
            prompt_ids=[list(c.prompt_token_ids) for c in missing],
            completion_ids=[list(c.token_ids) for c in missing],
            config=config,
        )
        cache.update({c.pk: f.clone() for c, f in zip(missing, feats)})
        with atomic_file(cache_path) as f:
            torch.save(cache, f)
    return torch.stack([cache[c.pk] for c in completions])


def features_compute(
    *,
    project: Project,
    completion_ids: list[list[int]],
    config,
    prompt_ids: list[list[int]] | None = None,
    prompt_texts: list[str] | None = None,
):
    """``(N, F)`` features of token sequences that are not stored completions (fresh or held-out
    samples), uncached. Prompts come as token ids, or as texts rendered the way the sampler
    renders them (``pgcore.rollout.render_prompt``).

    The project's frozen base model (the reward model's backbone) is the process's cached
    one (:func:`webapp.policies.runtime.frozen_policy`): loaded on the first call, and again
    only when the base folder's files change, on the device a policy is loaded on
    (:func:`pgcore.precision.select_device`: CUDA when present, ``REWARDLOOP_DEVICE`` forces
    one); the features come back on the CPU.

    Raises:
        ValueError: ``REWARDLOOP_DEVICE`` names a device this machine lacks.
    """
    from pgcore.reward_model import completion_features
    from pgcore.rollout import render_prompt

    from webapp.policies.runtime import frozen_policy

    policy = frozen_policy(base_dir(project))
    if prompt_ids is None:
        prompt_ids = [render_prompt(policy.tokenizer, text) for text in prompt_texts or []]
    return completion_features(
        policy.model, prompt_ids, completion_ids, config, pad_id=policy.tokenizer.pad_token_id or 0
    ).cpu()


def _rm_name(project: Project) -> str:
    return f"{project.slug}/reward-models"


def _rm_dir(project: Project) -> Path:
    """This machine's reward-model folder: in the local ``models`` storage, or the cache beside a bucket."""
    return artifacts.local_path(_rm_name(project)) or artifacts.cache_dir() / "models" / _rm_name(project)


# ---------------------------------------------------------------- the fit


def _held_out_metrics(model, features, judgments, prompt_ids: list[int]) -> dict:
    """Pearson/Spearman/pairwise accuracy on held-out ratings, their within-prompt accuracy
    (pairs of rated completions of one prompt, :func:`pgcore.reward_model.within_prompt_accuracy`;
    ``prompt_ids`` per feature row), accuracy on held-out comparisons, and a five-bin
    calibration table (mean predicted vs mean rated, by predicted quintile)."""
    import torch

    from pgcore.reward_model import pairwise_accuracy, pearson, spearman, within_prompt_accuracy

    mean, std = model.score(features)
    out: dict = {"held_out/n_ratings": judgments.n_ratings, "held_out/n_pairs": judgments.n_pairs}
    if judgments.n_ratings:
        pred, target = mean[judgments.rating_index], judgments.rating_target
        out["held_out/pearson"] = pearson(pred, target)
        out["held_out/spearman"] = spearman(pred, target)
        out["held_out/pairwise_accuracy"] = pairwise_accuracy(pred, target)
        groups = torch.tensor(prompt_ids)[judgments.rating_index]
        out["held_out/within_prompt_accuracy"], out["held_out/within_prompt_pairs"] = within_prompt_accuracy(
            pred, target, groups, judgments.rating_weight
        )
        out["held_out/rmse"] = float(((pred - target) ** 2).mean().sqrt())
        out["held_out/mean_uncertainty"] = float(std[judgments.rating_index].mean())
        order = torch.argsort(pred)
        out["held_out/calibration"] = [
            {"predicted": float(pred[b].mean()), "rated": float(target[b].mean()), "n": int(b.numel())}
            for b in torch.tensor_split(order, min(5, len(order)))
            if b.numel()
        ]
    decided = judgments.pair_target != 0.5
    if decided.any():
        diff = mean[judgments.pair_a[decided]] - mean[judgments.pair_b[decided]]
        right = (diff > 0) == (judgments.pair_target[decided] > 0.5)
        out["held_out/comparison_accuracy"] = float(right.float().mean())
    return out


def _cross_validated_metrics(features, judgments, prompt_ids: list[int], config) -> dict:
    """``cv/*``: :func:`pgcore.reward_model.cross_validated_accuracy` over every judgment, folds by
    prompt (what ``Project.rm_trust`` weighs the fresh samples by)."""
    import torch

    from pgcore.reward_model import cross_validated_accuracy

    return cross_validated_accuracy(features, judgments, torch.tensor(prompt_ids), config, seed=config.seed)


def reward_model_fit(*, project: Project, config_overrides: dict | None = None) -> RewardModelVersion:
    """Fit a new reward-model version on all of the project's ratings and score its completions.

    1. Judgments from every rating of training prompts (:func:`judgments_build`).
    2. Held-out metrics: the ensemble is fitted without the held-out prompts' judgments
       (``HELD_OUT_SHARE`` of prompts, chosen by a hash of the prompt's text) and measured on
       them (``held_out/*``: Pearson, Spearman and pairwise accuracy against the
       normalised ratings, accuracy on decided comparisons, a calibration table). With
       ``Project.rm_trust`` also ``cv/*``: the pairwise accuracy cross-validated over every
       judgment and its bootstrap lower bound (:func:`_cross_validated_metrics`).
    3. The stored model is fitted on every judgment (same config, same seed), written
       atomically with its checksum, and registered as the next version.
    4. Every completion with features (the rated ones) and every completion of the served
       version gets ``rm_score`` (ensemble mean, reward units) and ``rm_uncertainty``
       (ensemble standard deviation).

    Raises:
        ApplicationError: fewer than ``REWARDLOOP_RM_MIN_JUDGMENTS`` judgments (nothing is
            fitted; human-only training is unaffected), or a bad config.
    """
    from pgcore.reward_model import fit, save_reward_model

    rows = selectors.rating_rows(project=project)
    config = reward_model_config_for(project=project, overrides=config_overrides)
    data = judgments_build(project=project, rows=rows)
    needed = min_judgments()
    if data["n_judgments"] < needed:
        raise ApplicationError(
            f"Too few ratings to fit a reward model: {data['n_judgments']} judgments, at least {needed} are needed. "
            "Training goes on from human ratings alone."
        )
    rated = Completion.objects.in_bulk(data["completion_ids"])
    judged = [rated[cid] for cid in data["completion_ids"]]
    features = features_ensure(project=project, completions=judged, config=config)

    metrics: dict = {}
    prompt_ids = [rated[cid].prompt_id for cid in data["completion_ids"]]
    if len(data["fit"]) and len(data["held_out"]):
        probe, _ = fit(features, data["fit"], config)
        metrics.update(_held_out_metrics(probe, features, data["held_out"], prompt_ids))
    else:
        metrics["held_out/note"] = "no held-out share (all judgments fell on one side of the split)"
    if project.rm_trust:
        metrics.update(_cross_validated_metrics(features, data["all"], prompt_ids, config))
    model, fit_metrics = fit(features, data["all"], config)
    metrics.update(fit_metrics)

    rating_ids = data["rating_ids"]
    rm_name = f"{_rm_name(project)}/rm-{uuid.uuid4().hex[:12]}"
    out_dir = _rm_dir(project) / rm_name.rsplit("/", 1)[1]
    sha256 = save_reward_model(
        model, out_dir, metadata={"project": project.slug, "rating_ids_sha256": _ids_sha256(rating_ids)}
    )
    # Local storage: out_dir is rm_name's folder and gets its manifest; a remote one: uploaded, manifest
    # last. Either way the name is recorded, which each machine resolves in its own models folder or cache.
    artifacts.folder_publish(source=out_dir, name=rm_name)
    artefact_ref = rm_name

    to_score = list(
        Completion.objects.filter(project=project, model_version_id=project.served_version_id).exclude(
            pk__in=data["completion_ids"]
        )
    )
    extra = features_ensure(project=project, completions=to_score, config=config) if to_score else None
    scored = judged + to_score
    import torch

    mean, std = model.score(torch.cat([features, extra]) if extra is not None else features)
    for completion, m, s in zip(scored, mean.tolist(), std.tolist()):
        completion.rm_score, completion.rm_uncertainty = m, s

    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)
        last = RewardModelVersion.objects.filter(project=project).order_by("-number").first()
        version = RewardModelVersion.objects.create(
            project=project,
            number=(last.number + 1) if last else 1,
            n_ratings=len(rating_ids),
            n_judgments=data["n_judgments"],
            rating_ids=rating_ids,
            rating_ids_sha256=_ids_sha256(rating_ids),
            config=config.to_dict(),
            metrics=metrics,
            backbone_path=str(project.base_model_path),
            artefact_path=artefact_ref,
            sha256=sha256,
        )
        Completion.objects.bulk_update(scored, ["rm_score", "rm_uncertainty"], batch_size=500)
    log.info("project %s: reward model RM%s fitted on %s judgments", project.slug, version.number, data["n_judgments"])
    return version


def completions_score(*, project: Project, completion_ids: list[int], version: RewardModelVersion | None = None) -> int:
    """Write ``version``'s (default: the latest) mean and spread onto the given completions.

    Features come from :func:`features_ensure` (cached). Completions of another project
    are ignored. Returns how many were scored; 0 when the project has no reward model.

    Raises:
        ApplicationError: the artefact is missing or corrupt.
    """
    version = version or selectors.reward_model_latest(project=project)
    if version is None:
        return 0
    completions = list(Completion.objects.filter(project=project, pk__in=completion_ids).order_by("pk"))
    if not completions:
        return 0
    model = reward_model_load(version=version)
    from pgcore.reward_model import RewardModelConfig

    features = features_ensure(project=project, completions=completions, config=RewardModelConfig.from_dict(version.config))
    mean, std = model.score(features)
    for completion, m, s in zip(completions, mean.tolist(), std.tolist()):
        completion.rm_score, completion.rm_uncertainty = m, s
    Completion.objects.bulk_update(completions, ["rm_score", "rm_uncertainty"], batch_size=500)
    return len(completions)


def reward_model_load(*, version: RewardModelVersion):
    """The stored ensemble of ``version`` (:class:`pgcore.reward_model.RewardModel`).

    Raises:
        ApplicationError: the artefact is missing or corrupt (checksum mismatch).
    """
    from pgcore.policy import ChecksumError
    from pgcore.reward_model import load_reward_model

    try:
        folder = artifacts.models_folder(version.artefact_path, published=True)
        model, _metadata = load_reward_model(folder, expected_sha256=version.sha256)
    except (ChecksumError, FileNotFoundError) as exc:
        raise ApplicationError(f"Reward model RM{version.number} cannot be loaded: {exc}") from exc
    return model
