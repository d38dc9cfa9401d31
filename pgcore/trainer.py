"""One policy-gradient update from rated completions: ``update(policy, batch, config)``.

Read top to bottom: check the batch, turn rewards into advantages, score the batch once
under the reference policy, then a few epochs of shuffled minibatches, each an AdamW step
on the clipped importance-weighted loss plus ``kl_coef`` times the k3 KL to the
reference. Nothing non-finite is ever stepped on.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pgcore.advantages import batch_mean_baseline, leave_one_out, whiten
from pgcore.config import PGConfig
from pgcore.critic import Critic, prompt_features
from pgcore.logprobs import score_completions
from pgcore.losses import kl_k3, masked_mean, pg_loss
from pgcore.policy import Policy, reference_model
from pgcore.precision import autocast as _autocast
from pgcore.precision import bf16_autocast_active, frozen_weights_in_bf16, native_bf16_matmul  # noqa: F401 - re-exported


class TrainingCancelled(Exception):
    """Raised (typically by an ``on_step`` callback) to stop an update; weights are restored."""


class NonFiniteError(FloatingPointError):
    """A reward, logprob, loss or gradient was NaN or infinite; no step was taken with it."""


@dataclass
class TrainBatch:
    """Rated completions for one update; all lists have one entry per completion (``N``).

    Attributes:
        prompt_ids: token ids of each rendered prompt (non-empty).
        completion_ids: token ids as sampled (the final EOS included if there was one).
        behaviour_logprobs: per-token logprobs, nats, of the version that sampled them;
            same lengths as ``completion_ids``.
        rewards: scalar reward per completion (e.g. from ``ratings_to_rewards``).
        group_ids: prompt id per completion; leave-one-out works within a group.
        weights: optional weight >= 0 per completion, multiplying its advantage after the
            baseline (so its share of the policy gradient; the KL penalty is unweighted). None:
            all 1. Used for rating sources trusted less or more (production feedback against
            annotators) and for ratings of annotators who failed their gold checks.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    behaviour_logprobs: list[list[float]]
    rewards: list[float]
    group_ids: list[int]
    weights: list[float] | None = None

    def __len__(self) -> int:
        return len(self.rewards)


def batch_join(first: TrainBatch, second: TrainBatch, *, second_weight: float = 1.0) -> TrainBatch:
    """One batch: ``first``'s rows, then ``second``'s with their weights times ``second_weight``.

    Rows keep their own weights (None counts as 1; the result's ``weights`` is None only when
    every weight is 1). With ``second_weight == 0`` the result is ``first`` itself: a row of
    weight 0 would still count in the update's token means and its KL penalty, so dropping it
    is what makes the update exactly the one on ``first`` alone (the human-only fallback of a
    reward model trusted not at all, :func:`pgcore.reward_model.trust_weight`).

    Raises:
        ValueError: ``second_weight`` is negative or not finite.
    """
    if not (math.isfinite(float(second_weight)) and second_weight >= 0):
        raise ValueError(f"second_weight must be finite and >= 0, got {second_weight}")
    if second_weight == 0:
        return first
    weights = None
    if first.weights is not None or second.weights is not None or second_weight != 1:
        weights = [float(w) for w in (first.weights or [1.0] * len(first))] + [
            float(w) * float(second_weight) for w in (second.weights or [1.0] * len(second))
        ]
    return TrainBatch(
        prompt_ids=first.prompt_ids + second.prompt_ids,
        completion_ids=first.completion_ids + second.completion_ids,
        behaviour_logprobs=first.behaviour_logprobs + second.behaviour_logprobs,
        rewards=first.rewards + second.rewards,
        group_ids=first.group_ids + second.group_ids,
        weights=weights,
    )


def validate_batch(batch: TrainBatch, vocab_size: int | None = None) -> None:
    """Check a batch before any compute.

    Raises:
        ValueError: empty batch, mismatched lengths, an empty prompt or completion, a token
            id outside the vocabulary, a positive behaviour logprob, or a negative or
            non-finite weight.
        NonFiniteError: a reward or behaviour logprob is NaN or infinite (the message
            names the completion).
    """
    N = len(batch.rewards)
    if N == 0:
        raise ValueError("the batch is empty")
    lengths = {
        "prompt_ids": len(batch.prompt_ids),
        "completion_ids": len(batch.completion_ids),
        "behaviour_logprobs": len(batch.behaviour_logprobs),
        "rewards": N,
        "group_ids": len(batch.group_ids),
    }
    if batch.weights is not None:
        lengths["weights"] = len(batch.weights)
        bad_weights = [w for w in batch.weights if not (math.isfinite(float(w)) and float(w) >= 0)]
        if bad_weights:
            raise ValueError(f"weights must be finite and >= 0, got {bad_weights[0]}")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"batch fields have different lengths: {lengths}")
    for i, reward in enumerate(batch.rewards):
        if not math.isfinite(float(reward)):
            raise NonFiniteError(f"reward of completion {i} is {reward}; rewards must be finite (no step was taken)")
    for i, (prompt, completion, behaviour) in enumerate(
        zip(batch.prompt_ids, batch.completion_ids, batch.behaviour_logprobs)
    ):
        if not prompt or not completion:
            raise ValueError(f"completion {i} has an empty {'prompt' if not prompt else 'completion'}")
        if len(behaviour) != len(completion):
            raise ValueError(f"completion {i}: {len(behaviour)} behaviour logprobs for {len(completion)} tokens")
        bad = [t for t, lp in enumerate(behaviour) if not math.isfinite(float(lp))]
        if bad:
            raise NonFiniteError(f"behaviour logprob of completion {i}, token {bad[0]} is {behaviour[bad[0]]}")
        if max(behaviour) > 1e-4:
            raise ValueError(f"completion {i} has a positive behaviour logprob {max(behaviour)}; expected log-probabilities")
        if vocab_size is not None:
            ids = prompt + completion
            if min(ids) < 0 or max(ids) >= vocab_size:
                raise ValueError(f"completion {i} holds a token id outside [0, {vocab_size})")


def compute_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, config: PGConfig, values: torch.Tensor | None = None
) -> torch.Tensor:
    """``(N,)`` rewards to ``(N,)`` advantages by ``config.baseline``, then optional whitening.

    ``values``: ``(N,)`` the critic's values of each completion's prompt; required (and
    only used) with ``baseline="critic"``, where ``advantages = rewards - values``; ``None``
    there means the critic has seen no data yet and the leave-one-out baseline stands in.

    Raises:
        ValueError: ``baseline="critic"`` without ``values`` of shape ``(N,)``.
    """
    if config.baseline == "loo":
        advantages = leave_one_out(rewards, group_ids)
    elif config.baseline == "mean":
        advantages = batch_mean_baseline(rewards)
    elif config.baseline == "critic" and values is None:
        advantages = leave_one_out(rewards, group_ids)
    elif config.baseline == "critic":
        if values.shape != rewards.shape:
            raise ValueError(f"baseline 'critic' needs values of shape {tuple(rewards.shape)}, got {tuple(values.shape)}")
        advantages = rewards - values
    else:
        advantages = rewards.clone()
    return whiten(advantages) if config.whiten_advantages else advantages


@torch.no_grad()
def critic_features(policy: Policy, batch: TrainBatch, config: PGConfig) -> torch.Tensor:
    """``(N, H)`` features of each completion's prompt for the critic (:func:`pgcore.critic.prompt_features`).

    Taken from the reference policy (the base weights), which training never changes, so a
    critic fitted in earlier updates reads the same features now. Each distinct prompt is
    run once. Returned on the CPU, where the critic's ridge lives, whatever the model's device.
    """
    distinct: dict[tuple[int, ...], int] = {}
    for prompt in batch.prompt_ids:
        distinct.setdefault(tuple(prompt), len(distinct))
    with reference_model(policy) as ref:
        features = prompt_features(ref, [list(p) for p in distinct], policy.tokenizer.pad_token_id, config.minibatch_size)
    return features[[distinct[tuple(p)] for p in batch.prompt_ids]].cpu()  # the critic is a CPU ridge


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_finite(name: str, value: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{name} is non-finite ({float(value.detach().float().flatten()[0])}) at {where}; no step was taken")


def minibatch_order(prompt_ids: list[list[int]], generator: torch.Generator | None = None) -> list[int]:
    """Order in which completions are cut into minibatches: grouped by prompt.

    Completions of the same prompt are kept next to each other so a minibatch holds whole
    groups and :func:`pgcore.logprobs.score_completions` runs each prompt once. With a
    ``generator`` the groups are shuffled and so are the members of each group (the order
    of a group-wise shuffle, as GRPO/RLOO trainers sample prompts then their completions);
    without one, groups keep the order of their first completion.

    Returns:
        A permutation of ``range(len(prompt_ids))``.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompt_ids):
        groups.setdefault(tuple(prompt), []).append(i)
    members = list(groups.values())
    if generator is None:
        return [i for group in members for i in group]
    order: list[int] = []
    for g in torch.randperm(len(members), generator=generator).tolist():
        group = members[g]
        order.extend(group[j] for j in torch.randperm(len(group), generator=generator).tolist())
    return order


def _right_padded(rows: list, width: int, device: torch.device) -> torch.Tensor:
    """``b`` 1-D float rows (lists or tensors) of length <= ``width`` -> ``(b, width)`` on ``device``, zeros after each row."""
    out = torch.zeros((len(rows), width), dtype=torch.float32, device=device)
    for i, row in enumerate(rows):
        row = torch.as_tensor(row, dtype=torch.float32, device=device)
        out[i, : row.numel()] = row
    return out


def _score_minibatch(model, batch: TrainBatch, idx: list[int], pad_id: int, config: PGConfig, *, with_entropy: bool):
    """:func:`score_completions` of completions ``idx`` under ``config``'s autocast: ``(b, C)`` each."""
    with _autocast(config, _device(model)):
        return score_completions(
            model,
            [batch.prompt_ids[i] for i in idx],
            [batch.completion_ids[i] for i in idx],
            pad_id,
            with_entropy=with_entropy,
            share_prompts=config.share_prompts,
        )


@torch.no_grad()
def reference_logprobs(
    policy: Policy, batch: TrainBatch, config: PGConfig, *, skip: frozenset[int] = frozenset()
) -> list[torch.Tensor | None]:
    """Logprobs of each completion under the reference policy, one ``(len_i,)`` tensor each.

    One no-grad pass in minibatches of whole prompt groups (see :func:`minibatch_order`),
    in eval mode, under the same autocast as training so that the KL at the start of
    training is ~0 rather than a precision artefact. Completions whose index is in ``skip``
    are not scored (None in their place).
    """
    with reference_model(policy) as ref:
        return _batch_logprobs(ref, policy, batch, config, skip)


@torch.no_grad()
def proximal_logprobs(
    policy: Policy, batch: TrainBatch, config: PGConfig, *, skip: frozenset[int] = frozenset()
) -> list[torch.Tensor | None]:
    """Logprobs of each completion under the policy as it is now (the trainer's ``pi_old``).

    Same pass as :func:`reference_logprobs` with the policy itself; the truncated
    importance weights ``min(pi_old / mu, config.tis_cap)`` compare these with the
    sampler's stored behaviour logprobs.
    """
    return _batch_logprobs(policy.model, policy, batch, config, skip)


def lora_adapter_is_zero(policy: Policy) -> bool:
    """True when ``policy`` is a LoRA policy whose every ``lora_B`` matrix is exactly zero.

    Such an adapter (peft's initialisation, Hu et al. 2021) adds ``B @ A @ x = 0`` to every
    projection, so the policy computes exactly its reference policy.
    """
    if not policy.is_lora:
        return False
    lora_b = [p for name, p in policy.model.named_parameters() if "lora_B" in name]
    return bool(lora_b) and all(not bool(p.detach().any()) for p in lora_b)


def deterministic_in_training(model: torch.nn.Module) -> bool:
    """True when ``model`` computes the same function in training mode as in eval mode: no dropout
    module with ``p > 0`` (LoRA's ``lora_dropout`` among them) and no attention dropout in its config."""
    config = getattr(model, "config", None)
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return False
    return not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _batch_logprobs(model, policy: Policy, batch: TrainBatch, config: PGConfig, skip=frozenset()) -> list:
    pad_id = policy.tokenizer.pad_token_id
    out: list[torch.Tensor | None] = [None] * len(batch)
    order = [i for i in minibatch_order(batch.prompt_ids) if i not in skip]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), config.minibatch_size):
            idx = order[start : start + config.minibatch_size]
            logprobs, _, mask = _score_minibatch(model, batch, idx, pad_id, config, with_entropy=False)
            for i, row, row_mask in zip(idx, logprobs, mask):
                out[i] = row[row_mask]
    finally:
        model.train(was_training)
    return out


def update(
    policy: Policy,
    batch: TrainBatch,
    config: PGConfig,
    *,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """Run ``config.epochs`` passes of shuffled minibatch AdamW steps on ``policy``.

    Loss per minibatch (token means over completion tokens):
    ``pg_loss(rho-clipped, advantages) + kl_coef * mean k3(pi_theta || pi_ref)``; see
    :mod:`pgcore.losses` (PPO, Schulman et al. 2017; k3, Schulman 2020; RLOO baseline,
    Ahmadian et al. 2024). The reference logprobs are computed once per update, in a no-grad
    pass that leaves out the first minibatch of the first epoch when the policy is its
    reference (a fresh LoRA adapter) and has no dropout: that minibatch's first forward
    gives them (likewise the proximal logprobs below, whenever there is no dropout).
    Minibatches hold whole prompt groups (:func:`minibatch_order`) and each distinct prompt
    is run once per forward, its key/value cache shared by its completions
    (``config.share_prompts``, :func:`pgcore.logprobs.score_completions`). The update runs
    on the device the policy's weights lie on (load it with ``device=`` from
    :func:`pgcore.precision.select_device`); the critic stays on the CPU. bf16 autocast
    (``config.bf16_autocast``) is used only where the device multiplies bf16 natively
    (:func:`bf16_autocast_active`); under it a LoRA policy's frozen weights are cast to
    bf16 once per update rather than in every forward (:func:`frozen_weights_in_bf16`).
    With ``config.tis_cap > 0`` the ratio is taken against the policy's own logprobs at the
    start of the update (one more no-grad pass, :func:`proximal_logprobs`) and each token is
    weighted by ``min(pi_old / mu, tis_cap)``, ``mu`` the stored behaviour logprobs
    (truncated importance sampling, Yao et al. 2025): a sampler whose logprobs differ from
    the trainer's (bf16, merged LoRA) or stale samples then still give the trainer's
    policy gradient. With ``config.baseline == "critic"`` the advantages are
    ``reward - V(prompt)`` from ``policy.critic`` as fitted on earlier updates; a policy
    without a critic (or with one that has seen nothing) uses the leave-one-out baseline
    for this update, since ``V = 0`` would be no baseline at all. After the last step this batch is folded
    into the critic (:class:`pgcore.critic.Critic`) and ``policy.critic`` is set, so
    :func:`pgcore.policy.save_policy_atomic` stores it with the weights.

    Args:
        policy: loaded with ``trainable=True`` (LoRA or full fine-tuning).
        batch: rated completions; ``N >= 1``.
        config: hyper-parameters; ``minibatch_size`` sequences per step.
        on_step: called after each optimiser step with a dict holding ``epoch``, ``step``,
            ``total_steps`` and that step's ``losses/pg_loss``, ``losses/total``,
            ``objective/kl``, ``policy/approx_kl``, ``policy/clipfrac``,
            ``policy/ratio_mean``, ``train/grad_norm`` (with ``tis_cap > 0`` also
            ``policy/tis_weight_mean`` and ``policy/tis_truncated``), and in the last epoch
            ``policy/entropy`` (measured only then: it costs a pass over the
            vocabulary). It may raise (e.g. :class:`TrainingCancelled`) to stop; the
            exception propagates.

    Returns:
        Floats, token-weighted means over the last epoch: ``losses/pg_loss``,
        ``losses/total``, ``objective/kl`` (k3 KL to the reference, nats per token),
        ``objective/mean_reward`` (mean of ``batch.rewards``), ``policy/approx_kl``,
        ``policy/clipfrac``, ``policy/entropy`` (nats), ``policy/ratio_mean``,
        ``train/grad_norm`` (before clipping), ``train/steps``, ``train/bf16_autocast``
        (1.0 if the update ran under bf16 autocast, else 0.0), ``train/seconds`` and a
        time split ``train/seconds_reference``, ``train/seconds_proximal``, ``train/seconds_forward``,
        ``train/seconds_backward``, ``train/seconds_optimizer``, ``train/seconds_critic``; with
        the critic also ``critic/value_mean``, ``critic/mse`` and
        ``critic/explained_variance`` (of this batch's rewards by the critic's values before
        it was fitted), ``critic/n_seen`` (discounted ratings fitted) and
        ``critic/leave_one_out_instead`` (1.0 when the critic had no data yet).

    Raises:
        ValueError: an invalid batch, or a policy without trainable parameters.
        NonFiniteError: a reward or behaviour logprob is non-finite (before any compute),
            or a loss or gradient is non-finite (before that step).
        TrainingCancelled: or whatever ``on_step`` raises.
        On any exception the trainable weights are restored to their values at entry, so
        the policy is left exactly as it was given.
    """
    started = time.perf_counter()
    params = policy.trainable_parameters
    if not params:
        raise ValueError("the policy has no trainable parameters; load it with load_policy(..., trainable=True)")
    validate_batch(batch, vocab_size=policy.model.get_input_embeddings().num_embeddings)
    N = len(batch)
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)  # (N,)
    values = features = None
    t = time.perf_counter()
    if config.baseline == "critic":
        features = critic_features(policy, batch, config)  # (N, H)
        critic = policy.critic if policy.critic is not None else Critic(features.shape[1])
        values = critic.values(features)  # (N,), fitted on earlier updates only
    seconds_critic = time.perf_counter() - t
    untrained_critic = features is not None and critic.n_seen == 0  # V = 0 would be no baseline at all
    advantages = compute_advantages(
        rewards, torch.tensor(batch.group_ids), config, None if untrained_critic else values
    )  # (N,)
    if batch.weights is not None:
        advantages = advantages * torch.tensor(batch.weights, dtype=advantages.dtype)  # (N,)
    _check_finite("advantages", advantages, "the start of the update")
    pad_id = policy.tokenizer.pad_token_id

    snapshot = [p.detach().clone() for p in params]
    model = policy.model
    device = _device(model)  # the update runs where the policy lies (pgcore.precision.select_device)
    advantages = advantages.to(device)
    was_training = model.training
    timings = dict.fromkeys(("reference", "proximal", "forward", "backward", "optimizer"), 0.0)
    bf16 = bf16_autocast_active(config, device)
    bf16_weights = frozen_weights_in_bf16(policy) if bf16 else contextlib.nullcontext()
    bf16_weights.__enter__()
    try:
        generator = torch.Generator().manual_seed(config.seed)
        first_order = minibatch_order(batch.prompt_ids, generator)  # epoch 0's order, drawn as the loop would
        # The first optimiser step's forward runs the policy as it is at the start, so its logprobs
        # are the proximal ones of that minibatch (and the reference ones too while the policy is its
        # reference, a fresh LoRA adapter): the no-grad passes skip it and the loop fills them in.
        # Only where training mode computes what eval mode does (no dropout).
        reuse = frozenset(first_order[: config.minibatch_size]) if deterministic_in_training(model) else frozenset()
        is_reference = lora_adapter_is_zero(policy)
        t = time.perf_counter()
        ref_logprobs = reference_logprobs(policy, batch, config, skip=reuse if is_reference else frozenset())
        timings["reference"] = time.perf_counter() - t
        proximal = None
        if config.tis_cap > 0:
            t = time.perf_counter()
            # A fresh LoRA adapter (B = 0) adds exactly zero: the policy is its reference, and
            # the reference pass just made is the proximal pass too (a first run from the base).
            proximal = ref_logprobs if is_reference else proximal_logprobs(policy, batch, config, skip=reuse)
            timings["proximal"] = time.perf_counter() - t

        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        steps_per_epoch = math.ceil(N / config.minibatch_size)
        total_steps = config.epochs * steps_per_epoch
        step = 0
        model.train()
        for epoch in range(config.epochs):
            sums: dict[str, float] = {}
            tokens_seen = 0
            order = first_order if epoch == 0 else minibatch_order(batch.prompt_ids, generator)
            for start in range(0, N, config.minibatch_size):
                idx = order[start : start + config.minibatch_size]
                t = time.perf_counter()
                last_epoch = epoch == config.epochs - 1  # entropy is a diagnostic: measure it once
                logprobs, entropy, mask = _score_minibatch(  # each (b, C)
                    model, batch, idx, pad_id, config, with_entropy=last_epoch
                )
                if step == 0 and reuse:  # the policy as it was at the start: fill what the passes skipped
                    for i, row, row_mask in zip(idx, logprobs.detach(), mask):
                        if ref_logprobs[i] is None:
                            ref_logprobs[i] = row[row_mask]
                        if proximal is not None and proximal[i] is None:
                            proximal[i] = row[row_mask]
                width = mask.shape[1]
                behaviour = _right_padded([batch.behaviour_logprobs[i] for i in idx], width, device)  # (b, C)
                ref = _right_padded([ref_logprobs[i] for i in idx], width, device)  # (b, C)
                loss_pg, stats = pg_loss(
                    logprobs,
                    behaviour,
                    advantages[idx],
                    mask,
                    config.clip_eps,
                    config.importance_correction,
                    proximal_logprobs=None if proximal is None else _right_padded([proximal[i] for i in idx], width, device),
                    tis_cap=config.tis_cap or None,
                )
                kl = masked_mean(kl_k3(logprobs, ref, mask), mask)
                loss = loss_pg + config.kl_coef * kl
                where = f"epoch {epoch}, step {step} (completions {idx})"
                _check_finite("loss", loss, where)
                timings["forward"] += time.perf_counter() - t

                t = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                timings["backward"] += time.perf_counter() - t
                t = time.perf_counter()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                _check_finite("gradient norm", grad_norm, where)
                optimizer.step()
                timings["optimizer"] += time.perf_counter() - t
                step += 1

                n_tokens = int(mask.sum())
                info = {
                    "losses/pg_loss": float(loss_pg.detach()),
                    "losses/total": float(loss.detach()),
                    "objective/kl": float(kl.detach()),
                    "policy/approx_kl": float(stats["approx_kl"]),
                    "policy/clipfrac": float(stats["clipfrac"]),
                    "policy/ratio_mean": float(stats["ratio_mean"]),
                    "train/grad_norm": float(grad_norm),
                }
                if proximal is not None:
                    info["policy/tis_weight_mean"] = float(stats["tis_weight_mean"])
                    info["policy/tis_truncated"] = float(stats["tis_truncated"])
                if last_epoch:
                    info["policy/entropy"] = float(masked_mean(entropy, mask))
                for key, value in info.items():
                    sums[key] = sums.get(key, 0.0) + value * n_tokens
                tokens_seen += n_tokens
                if on_step is not None:
                    on_step({"epoch": epoch, "step": step, "total_steps": total_steps, **info})
    except BaseException:
        with torch.no_grad():
            for p, saved in zip(params, snapshot):
                p.copy_(saved)
        raise
    finally:
        bf16_weights.__exit__(None, None, None)
        model.train(was_training)

    metrics = {key: value / max(tokens_seen, 1) for key, value in sums.items()}
    if features is not None:
        t = time.perf_counter()
        residual = rewards - values
        metrics["critic/value_mean"] = float(values.mean())
        metrics["critic/leave_one_out_instead"] = float(untrained_critic)
        metrics["critic/mse"] = float(residual.pow(2).mean())  # before this batch was fitted
        var = float(rewards.var(unbiased=False)) if N > 1 else 0.0
        metrics["critic/explained_variance"] = 1.0 - float(residual.var(unbiased=False)) / var if var > 0 else 0.0
        critic.fit(features, rewards, ridge=config.critic_ridge, decay=config.critic_decay)
        policy.critic = critic
        metrics["critic/n_seen"] = critic.n_seen
        seconds_critic += time.perf_counter() - t
    metrics["objective/mean_reward"] = float(rewards.mean())
    metrics["train/steps"] = float(step)
    metrics["train/bf16_autocast"] = float(bf16)
    metrics["train/seconds"] = time.perf_counter() - started
    metrics.update({f"train/seconds_{k}": v for k, v in timings.items()})
    metrics["train/seconds_critic"] = seconds_critic
    return metrics
