"""Masked per-token logprobs and entropy of completions under a causal LM.

Layout used for training batches (:func:`pack_sequences`): each row is
``[pad ... pad | prompt | completion | pad ... pad]`` with prompts left-padded to a common
width and completions right-padded, so every completion starts in the same column and the
model's logits are only computed for the completion columns (``logits_to_keep``).
Padding contributes exactly nothing: it is masked out of attention and its logprob and
entropy are exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    """Token tensors for a batch of (prompt, completion) pairs; all ``(B, T)``.

    Attributes:
        input_ids: long, prompt and completion tokens; padding holds ``pad_id``.
        attention_mask: long, 1 on real tokens (prompt and completion), 0 on padding.
        completion_mask: bool, True on completion tokens (the first EOS included), False on
            the prompt and on all padding.
        behaviour_logprobs: float32, behaviour logprob of each completion token, 0 elsewhere;
            zeros when none were given.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor


def pack_sequences(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
    behaviour_logprobs: list[list[float]] | None = None,
) -> PackedBatch:
    """Lay out ``B`` prompt/completion pairs as ``[left-padded prompt | right-padded completion]``.

    ``T = max prompt length + max completion length``. The completion may end with EOS
    (kept inside ``completion_mask``); ``pad_id`` may equal the EOS id, since masks come from
    lengths, never from token values.

    Raises:
        ValueError: list lengths differ, a prompt is empty, or a behaviour row's length
            differs from its completion's.
    """
    B = len(prompt_ids)
    if len(completion_ids) != B or (behaviour_logprobs is not None and len(behaviour_logprobs) != B):
        raise ValueError("prompt_ids, completion_ids and behaviour_logprobs must have the same length")
    P = max((len(p) for p in prompt_ids), default=0)
    C = max((len(c) for c in completion_ids), default=0)
    input_ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + C), dtype=torch.long)
    completion_mask = torch.zeros((B, P + C), dtype=torch.bool)
    behaviour = torch.zeros((B, P + C), dtype=torch.float32)
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; a completion needs at least one context token")
        n = len(completion)
        input_ids[i, P - len(prompt) : P] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[i, P - len(prompt) : P + n] = 1
        if n:
            input_ids[i, P : P + n] = torch.tensor(completion, dtype=torch.long)
            completion_mask[i, P : P + n] = True
        if behaviour_logprobs is not None:
            if len(behaviour_logprobs[i]) != n:
                raise ValueError(
                    f"sequence {i}: {len(behaviour_logprobs[i])} behaviour logprobs for {n} completion tokens"
                )
            if n:
                behaviour[i, P : P + n] = torch.tensor(behaviour_logprobs[i], dtype=torch.float32)
    return PackedBatch(input_ids, attention_mask, completion_mask, behaviour)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens: ``(B, T)``, 0 on left padding.

    A left-padded row then gets the same rotary positions as it would alone.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class _TokenLogprobs(torch.autograd.Function):
    """``log_softmax(logits)[target]`` with a fused backward.

    Autograd's own chain (gather -> log_softmax -> cast) allocates and fills a zero
    tensor the size of the logits, then runs the log-softmax backward over it; here the
    gradient ``g * (onehot(target) - softmax)`` is built in one pass and returned in the
    logits' dtype. Also returns the fp32 log-probabilities (not differentiable) so
    entropy can be read off without another pass.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor):
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (..., V) fp32
        token_logprobs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
        ctx.save_for_backward(log_probs, targets)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(log_probs)
        return token_logprobs, log_probs

    @staticmethod
    def backward(ctx, grad_token_logprobs: torch.Tensor, _grad_log_probs):
        log_probs, targets = ctx.saved_tensors
        g = grad_token_logprobs.unsqueeze(-1)  # (..., 1)
        grad = torch.exp(log_probs).mul_(-g)  # -g * softmax
        grad.scatter_add_(-1, targets.unsqueeze(-1), g)
        return grad.to(ctx.logits_dtype), None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprob of each target under ``logits``: ``(..., V), (...) -> (...)`` in nats, fp32.

    Also returns the full fp32 log-probabilities ``(..., V)``, detached. Differentiable in
    ``logits``; equals ``torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])``.
    """
    return _TokenLogprobs.apply(logits, targets)


def _masked_scores(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, with_entropy: bool):
    """``(B, n, V)`` logits predicting ``(B, n)`` targets -> logprobs (differentiable) and
    entropy (detached, or zeros), both ``(B, n)`` in nats and exactly 0 where ``mask`` is False."""
    targets_logprobs, log_probs = token_logprobs(logits, targets)  # (B, n), (B, n, V)
    logprobs = torch.where(mask, targets_logprobs, 0.0)
    entropy = torch.zeros_like(logprobs)
    if with_entropy:
        with torch.no_grad():
            entropy = torch.where(mask, -torch.einsum("bnv,bnv->bn", log_probs.exp(), log_probs), 0.0).clamp(min=0.0)
    return logprobs, entropy


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token logprobs and entropies of the masked tokens under ``model``.

    Args:
        model: a Hugging Face causal LM (or peft wrapper) whose forward accepts
            ``logits_to_keep``.
        input_ids: ``(B, T)`` long token ids (on any device: the three inputs are moved
            to the model's device, and the outputs are there).
        attention_mask: ``(B, T)``, 1 on real tokens, 0 on padding.
        completion_mask: ``(B, T)`` bool, True where ``input_ids[b, t]`` is scored; column 0
            can never be scored (it has no context).
        with_entropy: False skips the entropy (it costs a pass over the vocabulary) and
            returns zeros in its place.

    Returns:
        ``logprobs (B, T)``: ``log pi(input_ids[b, t] | input_ids[b, :t])`` in nats where
        ``completion_mask``, exactly 0 elsewhere; differentiable with respect to the model.
        ``entropy (B, T)``: entropy in nats of the predictive distribution at those
        positions, exactly 0 elsewhere; a diagnostic, detached from the graph.
        Logits are computed in the model's dtype (bf16 under autocast); the log-softmax is
        taken in fp32. Only the columns from the first scored one on are sent through the
        output layer.

    Raises:
        ValueError: shapes differ, or ``completion_mask`` marks column 0.
    """
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids, attention_mask and completion_mask must share one (B, T) shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}"
        )
    completion_mask = completion_mask.bool()
    B, T = input_ids.shape
    scored_columns = completion_mask.any(dim=0).nonzero()  # read where the mask was built (no GPU sync)
    device = _model_device(model)  # inputs follow the model (a no-op on the CPU)
    input_ids, attention_mask, completion_mask = input_ids.to(device), attention_mask.to(device), completion_mask.to(device)
    zeros = torch.zeros((B, T), dtype=torch.float32, device=device)
    if scored_columns.numel() == 0:
        return zeros, zeros.clone()
    t0 = int(scored_columns[0])  # first scored column; logits are needed from t0 - 1 on
    if t0 == 0:
        raise ValueError("completion_mask marks column 0, which has no context to predict it from")
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=T - t0 + 1,
    )
    logits = out.logits[:, :-1, :]  # (B, T - t0, V): predicts input_ids[:, t0:]
    mask = completion_mask[:, t0:]  # (B, T - t0)
    logprobs, entropy = _masked_scores(logits, input_ids[:, t0:], mask, with_entropy)  # (B, T - t0) each
    return torch.cat([zeros[:, :t0], logprobs], dim=1), torch.cat([zeros[:, :t0], entropy], dim=1)


def score_completions(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
    *,
    with_entropy: bool = True,
    share_prompts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logprobs and entropies of ``B`` completions, in completion columns only.

    When several completions follow the same prompt (the usual case: leave-one-out needs
    two or more samples per prompt) each distinct prompt is run through the model once and
    its key/value cache is shared by its completions, which then attend to it as to a
    prefix; the forward and backward of the repeated prompt tokens are saved (with 4
    completions of 64 tokens per 32-token prompt, a quarter of the tokens). This is the
    prefix caching of incremental decoding (e.g. Pope et al. 2022, "Efficiently Scaling
    Transformer Inference"), kept differentiable. Gradients reach the prompt positions'
    keys and values exactly as in one forward over ``[prompt | completion]``, so results
    equal :func:`sequence_logprobs` on :func:`pack_sequences` up to float rounding. When
    no prompt repeats (or ``share_prompts=False``) that single packed forward is used.

    Args:
        model: a Hugging Face causal LM (or peft wrapper) accepting ``past_key_values``,
            ``position_ids`` and ``logits_to_keep``.
        prompt_ids: ``B`` non-empty token-id lists; equal lists are shared.
        completion_ids: ``B`` token-id lists (the first EOS included if sampled).
        pad_id: id written into padding (may equal EOS: masks come from lengths).
        with_entropy: False skips the entropy (returned as zeros).
        share_prompts: False always uses the single packed forward.

    Returns:
        ``logprobs (B, C)`` in nats, differentiable, exactly 0 off the mask;
        ``entropy (B, C)`` in nats, detached, 0 off the mask; ``mask (B, C)`` bool, True
        on each completion's tokens; ``C`` is the longest completion. Column ``j`` is
        completion token ``j`` (right padding). All three lie on the model's device.

    Raises:
        ValueError: the lists differ in length or a prompt is empty.
    """
    B = len(prompt_ids)
    if len(completion_ids) != B:
        raise ValueError(f"{B} prompts for {len(completion_ids)} completions")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("a prompt is empty; a completion needs at least one context token")
    C = max((len(c) for c in completion_ids), default=0)
    distinct: dict[tuple[int, ...], int] = {}
    index = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]
    if not share_prompts or len(distinct) == B or C == 0:
        packed = pack_sequences(prompt_ids, completion_ids, pad_id)
        logprobs, entropy = sequence_logprobs(
            model, packed.input_ids, packed.attention_mask, packed.completion_mask, with_entropy=with_entropy
        )
        P = packed.input_ids.shape[1] - C
        return logprobs[:, P:], entropy[:, P:], packed.completion_mask[:, P:].to(logprobs.device)
    return _shared_prompt_logprobs(model, list(distinct), index, completion_ids, pad_id, C, with_entropy)


def _shared_prompt_logprobs(model, prompts, index, completion_ids, pad_id, C, with_entropy):
    U, B = len(prompts), len(completion_ids)
    P = max(len(p) for p in prompts)
    prompt_input = torch.full((U, P), pad_id, dtype=torch.long)
    prompt_attention = torch.zeros((U, P), dtype=torch.long)
    for u, prompt in enumerate(prompts):  # left padding: every prompt ends in column P - 1
        prompt_input[u, P - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        prompt_attention[u, P - len(prompt) :] = 1
    completion_input = torch.full((B, C), pad_id, dtype=torch.long)
    mask = torch.zeros((B, C), dtype=torch.bool)
    for i, completion in enumerate(completion_ids):
        if completion:
            completion_input[i, : len(completion)] = torch.tensor(completion, dtype=torch.long)
            mask[i, : len(completion)] = True
    rows = torch.tensor(index, dtype=torch.long)  # (B,) prompt row of each completion
    device = _model_device(model)  # built on the CPU, moved once (a no-op there)
    prompt_input, prompt_attention = prompt_input.to(device), prompt_attention.to(device)
    completion_input, mask, rows = completion_input.to(device), mask.to(device), rows.to(device)

    prefix = model(
        input_ids=prompt_input,
        attention_mask=prompt_attention,
        position_ids=position_ids_from_mask(prompt_attention),
        use_cache=True,
        logits_to_keep=1,
    )
    logits = prefix.logits[rows]  # (B, 1, V): predicts completion token 0
    if C > 1:
        cache = prefix.past_key_values
        cache.reorder_cache(rows)  # (U, ...) -> (B, ...); autograd sums the copies' gradients
        # The last completion token predicts nothing we score, so it is not fed.
        attention = torch.cat([prompt_attention[rows], mask[:, :-1].long()], dim=1)  # (B, P + C - 1)
        positions = prompt_attention.sum(dim=1)[rows, None] + torch.arange(C - 1, device=device)  # (B, C - 1)
        out = model(
            input_ids=completion_input[:, :-1],
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=C - 1,
        )
        logits = torch.cat([logits, out.logits], dim=1)  # (B, C, V)
    logprobs, entropy = _masked_scores(logits, completion_input, mask, with_entropy)  # (B, C) each
    return logprobs, entropy, mask
