"""Evaluating versions on held-out prompts, and the promotion guard.

Every version completes the same held-out prompts (the project's first
``guard_eval_prompts`` held-out prompts by id) with the same seed. The
completions are stored as :class:`VersionSample` rows, so comparing two
versions later reads the database and never regenerates. From them:

- **KL to the base**: k3 estimate of KL(version || base), nats per token,
  averaged over all completion tokens (Schulman 2020, "Approximating KL
  divergence"). The base is the same weights with the LoRA adapter disabled,
  or the base folder for a full fine-tune. The held-out prompts are sampled in
  fp32, so the version's own logprobs are the sampler's behaviour logprobs
  (exact) and only the base's take a scoring pass; the base's own KL is 0
  without any pass. The base version is
  evaluated as soon as it is served (:mod:`.signals`), so a first training run
  finds its parent measured already.
- **distinct-2**: distinct token bigrams / all token bigrams over all the
  completions (Li et al. 2016); 0 when there is no bigram.
- **identical fraction**: the share of completions in the largest group of
  two or more completions with exactly the same text.

The guard holds a new version back (kept, not served) when its KL is above
the project's limit, its distinct-2 falls below a fraction of its parent's,
or more than the allowed share of its outputs are identical.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from django.db import transaction
from django.utils import timezone

from webapp.annotation.models import Prompt
from webapp.policies.models import ModelVersion, Project
from webapp.text import storable_text

from .models import VersionSample

log = logging.getLogger(__name__)

EVAL_SEED = 1234
EVAL_BATCH = 16
# fp32 everywhere: its behaviour logprobs are exact, so the version needs no scoring pass of its
# own. On the 2-core CPU (bf16 native, 1 thread, SmolLM2-135M, the demo's 16 held-out prompts)
# fp32 sampling cost 11.8 CPU s against 5.2 s in bf16 plus 8.1 s for the fp32 scoring pass that
# bf16 sampling needs (2026-12-07, both in one process); the evaluate step: bench/run_steps.py.
EVAL_PRECISION = "fp32"


def eval_prompts(*, project: Project) -> list[Prompt]:
    """The held-out prompts every version of ``project`` is measured on (oldest first)."""
    return list(Prompt.objects.filter(project=project, held_out=True).order_by("id")[: project.guard_eval_prompts])


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams over all sequences / all n-grams; 0.0 when there is none."""
    grams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def identical_fraction(texts: list[str]) -> float:
    """Size of the largest group of two or more equal texts / number of texts.

    0.0 when no two texts are equal (a lone text is not "identical" to anything).
    """
    if not texts:
        return 0.0
    largest = Counter(t.strip() for t in texts).most_common(1)[0][1]
    return largest / len(texts) if largest >= 2 else 0.0


def mean_k3_kl(logprobs: list[list[float]], ref_logprobs: list[list[float]]) -> float:
    """Token-mean k3 KL(pi || ref) for tokens sampled from pi; 0.0 when there is no token."""
    import torch

    from pgcore.losses import kl_k3

    flat = [x for row in logprobs for x in row]
    flat_ref = [x for row in ref_logprobs for x in row]
    if not flat:
        return 0.0
    lp = torch.tensor([flat], dtype=torch.float32)  # (1, N)
    ref = torch.tensor([flat_ref], dtype=torch.float32)  # (1, N)
    mask = torch.ones_like(lp, dtype=torch.bool)
    return float(kl_k3(lp, ref, mask).mean())


def _token_logprobs(model, pad_id: int, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
    """Per-token logprobs of each completion under ``model`` (no grad), one list per completion."""
    import torch

    from pgcore.logprobs import pack_sequences, sequence_logprobs

    out: list[list[float]] = []
    for start in range(0, len(prompt_ids), EVAL_BATCH):
        packed = pack_sequences(prompt_ids[start : start + EVAL_BATCH], completion_ids[start : start + EVAL_BATCH], pad_id)
        with torch.no_grad():
            logprobs, _ = sequence_logprobs(  # (B, T); the entropy is not needed here (a pass over the vocabulary)
                model, packed.input_ids, packed.attention_mask, packed.completion_mask, with_entropy=False
            )
        for row, mask in zip(logprobs.cpu(), packed.completion_mask):
            out.append(row[mask].tolist())
    return out


def _reference_logprobs(policy, version: ModelVersion, prompt_ids, completion_ids) -> list[list[float]]:
    """Logprobs of the completions under the project's base model (never called for the base itself)."""
    from pgcore.policy import reference_model

    pad_id = policy.tokenizer.pad_token_id
    if policy.is_lora:
        with reference_model(policy) as ref:
            return _token_logprobs(ref, pad_id, prompt_ids, completion_ids)
    if version.kind == ModelVersion.Kind.BASE:
        return _token_logprobs(policy.model, pad_id, prompt_ids, completion_ids)
    from webapp.policies.runtime import base_dir, frozen_policy

    # The process-wide frozen base (the reward model's backbone too): loaded once, not per batch.
    base = frozen_policy(base_dir(version.project))
    return _token_logprobs(base.model, pad_id, prompt_ids, completion_ids)


def samples_missing(*, version: ModelVersion) -> list[Prompt]:
    """The evaluation prompts ``version`` has not completed yet (oldest first)."""
    done = set(VersionSample.objects.filter(version=version).values_list("prompt_id", flat=True))
    return [p for p in eval_prompts(project=version.project) if p.pk not in done]


def version_samples_ensure(*, version: ModelVersion, policy=None, on_progress=None) -> int:
    """Write ``version``'s completions of the evaluation prompts it has not completed yet.

    Works through them :data:`EVAL_BATCH` prompts at a time, each batch sampled with
    :data:`EVAL_SEED` and stored before the next starts, so a crash part-way keeps what
    was done. ``on_progress(n)`` (if given) hears how many of the missing prompts are done:
    within a batch as each of its completions ends (sampled; the batch's scoring passes and
    its rows are still to come), and its last one only once the batch is stored, so
    ``n == len(missing)`` means every sample is written. Idempotent: prompts already completed by this version are
    skipped, and a racing duplicate is ignored by the (version, prompt) unique constraint.
    ``policy`` may be the already-loaded policy of ``version`` (a training run passes its
    freshly trained one); otherwise it is loaded here. Returns how many samples were written.
    """
    todo = samples_missing(version=version)
    if not todo:
        return 0
    if policy is None:
        from webapp.policies.runtime import policy_load

        policy = policy_load(version, trainable=False)
    for start in range(0, len(todo), EVAL_BATCH):
        batch = todo[start : start + EVAL_BATCH]
        for done, stored in _samples_write(version=version, policy=policy, todo=batch):
            if on_progress is not None and (stored or done < len(batch)):  # the last counts once stored
                on_progress(start + done)
    return len(todo)


def _samples_write(*, version: ModelVersion, policy, todo: list[Prompt]) -> Iterator[tuple[int, bool]]:
    """Complete ``todo`` (at most one batch) with ``policy`` and store the samples with their logprobs.

    A generator: yields ``(done, False)`` with ``done`` = 1, 2, ... as each completion ends
    (before the scoring pass and the store), then ``(len(todo), True)`` once every sample
    is stored; the work happens only as it is iterated. The rollouts are
    :func:`pgcore.rollout.generate`'s (the same stream, same arguments), only read as they end.
    """
    from pgcore.rollout import generate_stream

    # Same seed for every version: differences come from the weights, not the dice.
    rollouts = [None] * len(todo)
    for k, (i, rollout) in enumerate(generate_stream(
        policy,
        [p.text for p in todo],
        max_new_tokens=version.project.max_new_tokens,
        seed=EVAL_SEED,
        batch_size=EVAL_BATCH,
        precision=EVAL_PRECISION,
    ), 1):
        rollouts[i] = rollout
        yield k, False
    prompt_ids = [r.prompt_ids for r in rollouts]
    completion_ids = [r.completion_ids for r in rollouts]
    # An fp32 sampler's behaviour logprobs are the exact ones (bench/generate.py measures its
    # mismatch with the trainer's scoring at a mean per-token KL of ~1e-11; a bf16 sampler's is
    # ~3e-3, larger than a first version's KL to the base): no second pass is needed to know them.
    own_logprobs = [list(r.behaviour_logprobs) for r in rollouts]
    if version.kind == ModelVersion.Kind.BASE:
        ref_logprobs = own_logprobs  # the base is its own reference: KL 0 by definition, no pass
    else:
        ref_logprobs = _reference_logprobs(policy, version, prompt_ids, completion_ids)
    VersionSample.objects.bulk_create(
        [
            VersionSample(
                version=version,
                prompt=prompt,
                text=storable_text(r.text),  # PostgreSQL text holds no NUL; token_ids stay exact
                token_ids=r.completion_ids,
                logprobs=own,
                ref_logprobs=ref,
                finished=r.finished,
            )
            for prompt, r, own, ref in zip(todo, rollouts, own_logprobs, ref_logprobs)
        ],
        ignore_conflicts=True,
    )
    yield len(todo), True


def version_evaluate(*, version: ModelVersion, policy=None, on_progress=None) -> ModelVersion:
    """Complete the evaluation prompts (if needed) and store KL to the base, distinct-2 and identical share.

    ``on_progress``: as in :func:`version_samples_ensure`.
    """
    version_samples_ensure(version=version, policy=policy, on_progress=on_progress)
    prompt_ids = [p.pk for p in eval_prompts(project=version.project)]
    samples = list(VersionSample.objects.filter(version=version, prompt_id__in=prompt_ids))
    if not samples:
        return version
    version.kl_to_base = mean_k3_kl([s.logprobs for s in samples], [s.ref_logprobs for s in samples])
    version.distinct2 = distinct_n([s.token_ids for s in samples], 2)
    version.identical_fraction = identical_fraction([s.text for s in samples])
    version.evaluated_at = timezone.now()
    version.save(update_fields=["kl_to_base", "distinct2", "identical_fraction", "evaluated_at"])
    return version


def guard_reasons(*, version: ModelVersion, parent: ModelVersion | None) -> list[str]:
    """Why ``version`` must not be served automatically (empty: it may be served).

    Reads the stored evaluation of ``version`` and ``parent`` and the
    project's thresholds. A version with no evaluation (no held-out prompts)
    passes: there is nothing to judge it on.
    """
    project = version.project
    reasons = []
    if version.kl_to_base is not None and version.kl_to_base > project.guard_max_kl:
        reasons.append(
            f"KL to the base is {version.kl_to_base:.4f} nats per token, above the limit of {project.guard_max_kl:g}."
        )
    if (
        version.distinct2 is not None
        and parent is not None
        and parent.distinct2
        and version.distinct2 < project.guard_min_distinct2_ratio * parent.distinct2
    ):
        reasons.append(
            f"distinct-2 fell to {version.distinct2:.3f}, below {project.guard_min_distinct2_ratio:.0%} "
            f"of its parent v{parent.number}'s {parent.distinct2:.3f}."
        )
    if version.identical_fraction is not None and version.identical_fraction > project.guard_max_identical_fraction:
        n = VersionSample.objects.filter(version=version).count()
        reasons.append(
            f"{version.identical_fraction:.0%} of its {n} held-out outputs are the same text "
            f"(at most {project.guard_max_identical_fraction:.0%} allowed)."
        )
    return reasons


@transaction.atomic
def version_hold_back(*, version: ModelVersion, reasons: list[str]) -> ModelVersion:
    """Record that ``version`` must not be served, and why (the guard's reasons, a cancel, a lost worker).

    A held-back version is never left served: if it is served anyway (however
    that happened), its parent is served again, and the audit log says why.
    """
    from webapp.policies import services as policy_services

    version.held_back_reason = " ".join(reasons)
    version.save(update_fields=["held_back_reason"])
    policy_services.version_unserve_held_back(version=version)
    return version
