"""Batched sampling of completions that records the exact behaviour logprobs.

Sampling is plain ancestral sampling at temperature 1 with no top-k, top-p or repetition
penalty, so the stored logprob of each token is exactly ``log mu(y_t | prompt, y_<t)`` of
the distribution it was drawn from (see DESIGN.md, "Behaviour logprobs must match what was
sampled"). Prompts are left-padded so every row's next token is in the last column.
"""

from __future__ import annotations

import copy
import functools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pgcore.policy import Policy

if TYPE_CHECKING:
    from pgcore.prefix_cache import PrefixCache


@dataclass
class Rollout:
    """One sampled completion.

    Attributes:
        prompt_ids: token ids of the rendered prompt, no padding.
        completion_ids: sampled token ids; ends with the EOS token when ``finished``.
        behaviour_logprobs: ``log mu(completion_ids[t] | ...)`` in nats, one per completion
            token, of the exact distribution sampled from.
        text: the completion decoded with special tokens skipped; a NUL character (U+0000,
            which e.g. PostgreSQL text cannot hold) is replaced by U+FFFD.
        finished: the completion ended with EOS (else it hit ``max_new_tokens``).
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]
    text: str
    finished: bool


def render_prompt(tokenizer, prompt_text: str) -> list[int]:
    """Token ids of ``prompt_text`` as a single user turn.

    Uses the tokenizer's chat template (with the generation prompt appended) when it has
    one, else a plain encode with the tokenizer's special tokens.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt_text}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt_text)["input_ids"])


def eos_token_ids(policy: Policy) -> set[int]:
    """Token ids that end a completion: the tokenizer's EOS and the model's generation EOS."""
    ids = set()
    if policy.tokenizer.eos_token_id is not None:
        ids.add(int(policy.tokenizer.eos_token_id))
    generation_config = getattr(policy.model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    if not ids:
        raise ValueError("the policy has no EOS token id; cannot tell where a completion ends")
    return ids


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids (B, T)`` and ``attention_mask (B, T)``."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            input_ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, width - len(s) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def sample_batch_generic(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    *,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    generator: torch.Generator,
    greedy: bool = False,
) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """Sample one batch through the model's own forward and a ``DynamicCache``.

    The path for any Hugging Face causal LM (and the reference the fast path is tested
    against). Position ids count only real tokens (``cumsum(attention_mask) - 1``), so a
    left-padded row sees the same positions as it would alone. ``greedy`` takes the argmax
    instead of sampling (tests); logprobs are still those of the temperature-1 distribution.
    Returns completion ids, behaviour logprobs and finished flags, one per prompt.
    """
    from transformers import DynamicCache

    device = _model_device(model)
    input_ids, attention_mask = left_pad(prompt_ids, pad_id)  # (B, P)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    B = input_ids.shape[0]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    cache = DynamicCache()
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    tokens, logprobs = [], []  # each (B,) per step
    for _ in range(max_new_tokens):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
        next_tokens = _draw(logp, generator, greedy)  # (B,)
        tokens.append(torch.where(finished, pad_id, next_tokens))
        logprobs.append(logp.gather(1, next_tokens[:, None]).squeeze(1))
        finished = finished | torch.isin(next_tokens, eos)
        if bool(finished.all()):
            break
        input_ids = next_tokens[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        position_ids = position_ids[:, -1:] + 1

    tokens_bt = torch.stack(tokens, dim=1).tolist()  # (B, steps)
    logprobs_bt = torch.stack(logprobs, dim=1).tolist()
    completions, behaviour, done = [], [], []
    for row_tokens, row_logprobs in zip(tokens_bt, logprobs_bt):
        n = len(row_tokens)
        for t, tok in enumerate(row_tokens):
            if tok in eos_ids:
                n = t + 1  # the first EOS belongs to the completion
                break
        completions.append(row_tokens[:n])
        behaviour.append(row_logprobs[:n])
        done.append(n > 0 and row_tokens[n - 1] in eos_ids)
    return completions, behaviour, done


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _draw(logp: torch.Tensor, generator: torch.Generator, greedy: bool, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of ``logp (b, V)``: a draw from ``exp(logp)`` or the argmax; ``(b,)`` long.

    Inverse-CDF sampling: one uniform per row against the cumulative probabilities
    (:func:`_inverse_cdf`, which never forms the running sum over the whole vocabulary).
    Same distribution as ``torch.multinomial``, whose CPU kernel draws an exponential per
    vocabulary entry (~10% of a decoding step at batch 8 on SmolLM2, profiled).
    ``scratch``: an fp32 ``(b, V)`` buffer the probabilities are written into instead of a
    fresh tensor (same values, so the same draw).
    """
    if greedy:
        return logp.argmax(dim=-1)
    p = logp.exp() if scratch is None else torch.exp(logp, out=scratch)  # (b, V)
    u = torch.rand((logp.shape[0], 1), generator=generator, device=logp.device) * p.sum(dim=-1, keepdim=True)
    return _inverse_cdf(p, u)


CDF_BLOCK = 256  # vocabulary entries per block of the two-level inverse-CDF search


def _inverse_cdf(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first index of each row of ``p (b, V)`` (probabilities up to a positive factor, >= 0)
    whose running sum exceeds ``u (b, 1)`` (``0 <= u < p.sum(-1)``); ``(b,)`` long.

    What ``searchsorted(p.cumsum(-1), u, right=True)`` gives, without the running sum over
    the whole vocabulary (sequential, the slowest pass over a ``(b, V)`` row on a CPU):
    the sums of blocks of ``CDF_BLOCK`` entries, their running sum to find the block, then
    the running sum inside that block only. Never an index of probability 0.
    """
    b, V = p.shape
    pad = -V % CDF_BLOCK
    blocks = torch.nn.functional.pad(p, (0, pad)).view(b, -1, CDF_BLOCK) if pad else p.view(b, -1, CDF_BLOCK)
    block_cdf = blocks.sum(-1).cumsum(-1)  # (b, V / CDF_BLOCK)
    block = torch.searchsorted(block_cdf, u, right=True).clamp(max=block_cdf.shape[1] - 1)  # (b, 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(u))
    inside = blocks.gather(1, block[:, :, None].expand(-1, -1, CDF_BLOCK)).squeeze(1).cumsum(-1)  # (b, CDF_BLOCK)
    # Rounding may put u - before at or past the block's own total: keep it below, so the
    # index found is one whose probability moved the running sum (never a zero).
    rest = torch.minimum(u - before, torch.nextafter(inside[:, -1:], torch.zeros_like(u)))
    return (block * CDF_BLOCK + torch.searchsorted(inside, rest, right=True)).squeeze(1)


draw_tokens = _draw  # the public name, for ``draw`` hooks of :func:`sample_continuous` that reuse it


# ---------------------------------------------------------------- the fast path (Llama family)


def fast_path_supported(model: torch.nn.Module) -> bool:
    """Whether :func:`sample_continuous` can run ``model``: a plain (not peft) Llama-family causal LM.

    That is ``LlamaForCausalLM`` and its look-alikes (SmolLM2, the tiny test model): decoder
    layers with ``q/k/v/o_proj``, RMS norms, a gated MLP and rotary embeddings, no sliding
    window, no per-head norms.
    """
    config = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if getattr(config, "model_type", None) not in FAST_MODEL_TYPES or inner is None:
        return False
    if not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    attn = inner.layers[0].self_attn
    return all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")) and not hasattr(
        attn, "q_norm"
    )


FAST_MODEL_TYPES = ("llama",)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _decode_attention(q, k, v, mask, scale, masked_out=None):
    """Attention of one new token per row: ``q (b, nH, 1, D)``, ``k, v (b, kvH, T, D)``,
    ``mask (b, 1, 1, T)`` bool -> ``(b, 1, nH * D)``. ``masked_out``: ``~mask`` viewed as
    ``(b, 1, 1, T)``, when the caller has it (computed once per step, not once per layer).

    The query heads that share a key/value head are stacked as rows of one matmul, so
    nothing is expanded; the softmax is taken in fp32 like the eager kernel's. Faster at
    one query than the CPU flash kernel (profiled: ~15% of a step at batch 8). bf16 on a
    CPU multiplies the keys as they lie in the cache (``k @ q^T``, ``(T, D) x (D, g)`` per
    row and head): the bf16 batched matmul copies strided operands slowly, and this form
    needs no copy (1.0 -> 0.9 ms a layer at batch 64, T = 110, 2 threads, CPU time,
    alternated, against copying the slices to contiguous tensors first; the same results
    bit for bit on SmolLM2). fp32 keeps ``q @ k^T`` on the strided slices: the key-major
    form was ~15% faster there too but rounds differently (~3e-7), which changed a few
    sampled tokens for a seed, so it is not used.
    """
    b, n_heads, _, d = q.shape
    n_kv = k.shape[1]
    qg = q.reshape(b, n_kv, n_heads // n_kv, d)  # (b, kvH, g, D)
    if k.dtype == torch.bfloat16 and k.device.type == "cpu":
        scores = torch.matmul(k, qg.transpose(-1, -2)).transpose(-1, -2)  # (b, kvH, g, T)
    else:
        scores = torch.matmul(qg, k.transpose(-1, -2))  # (b, kvH, g, T)
    scores = scores.float() * scale
    scores = scores.masked_fill(~mask.view(b, 1, 1, -1) if masked_out is None else masked_out, float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(weights, v).reshape(b, 1, n_heads * d)  # (b, kvH, g, D) -> (b, 1, nH * D)


@functools.cache
def _onednn_bf16() -> bool:
    """oneDNN is built in and this CPU multiplies bf16 natively (:func:`pgcore.precision.native_bf16_matmul`)."""
    from pgcore.precision import native_bf16_matmul

    return torch.backends.mkldnn.is_available() and native_bf16_matmul()


def _packs(weight: torch.Tensor) -> bool:
    """Whether :func:`_linear` multiplies by a pre-packed copy of ``weight``: bf16 on a CPU with
    native bf16 matmuls and oneDNN (elsewhere the plain matmul, whose rounding was not compared)."""
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and _onednn_bf16()


def _linear(owner, name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight)`` (no bias; ``x (..., H)``, ``weight (N, H)`` ->
    ``(..., N)``), for a bf16 weight on a CPU through oneDNN with the weight packed once into
    its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``), kept on ``owner`` under
    ``name`` and packed again when the weight's storage or version counter changes.

    At the sampler's few rows the plain bf16 matmul is slower than the packed one (CPU time, 1
    thread, one matmul of SmolLM2's shapes: the packed one takes 0.6-0.85x at 8-64 rows; a whole decoding step 0.78-0.94x, ``bench/decode_step_ab.py``). The same values
    bit for bit. Packing all of SmolLM2-135M's bf16 sampling copy took 0.1 s of CPU and 66 MiB
    more resident memory. Any other weight: the plain matmul.
    """
    if not _packs(weight):
        return torch.nn.functional.linear(x, weight)
    packed = owner.__dict__.get("_pgcore_packed")
    if packed is None:
        packed = owner.__dict__["_pgcore_packed"] = {}
    key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    hit = packed.get(name)
    if hit is None or hit[0] != key:
        hit = packed[name] = (key, torch.ops.mkldnn._reorder_linear_weight(weight))
    return torch.ops.mkldnn._linear_pointwise(x, hit[1], None, "none", [], "")


def _project(module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a projection of a decoder layer: :func:`_linear` on its weight when it
    is a plain bias-free ``torch.nn.Linear``, else its own forward (hooks, a bias, a subclass)."""
    if _packs(module.weight) and module.bias is None and _plain_linear(module):
        return _linear(module, "weight", x, module.weight)
    return module(x)


def _fused_weight(owner, name: str, linears: tuple[str, ...]) -> torch.Tensor | None:
    """``owner``'s fused weight (:func:`fuse_projections`) while the weight of each of its
    modules named ``linears`` (in order) is still the view of its rows, else None: a later
    ``.to()`` or ``load_state_dict(assign=True)`` gave one a tensor of its own, so the fused
    one is stale and the separate modules must be used."""
    fused = getattr(owner, name, None)
    if fused is None:
        return None
    ptr, row = fused.data_ptr(), fused.stride(0) * fused.element_size()
    start = 0
    for linear in linears:
        m = getattr(owner, linear)
        if m.weight.data_ptr() != ptr + start * row:
            return None
        start += m.weight.shape[0]
    return fused if start == fused.shape[0] else None


def _forward_fast(inner, lm_head, ids, positions, mask, keys, values, cols, out=None):
    """Run ``ids (b, s)`` at ``positions (b, s)`` through the decoder and return the fp32
    logits of the last column, ``(b, V)``: written into ``out`` (an fp32 ``(b, V)`` buffer,
    :func:`_lm_head_into`) when given, else a fresh tensor.

    Keys and values go into the cache rows ``0 : b``: a prefill (``cols`` an int, ``s``
    tokens per row) writes columns ``cols : cols + s`` of every row; a decoding step
    (``cols`` a ``(b,)`` long tensor, ``s == 1``) writes each row's own column ``cols[r]``.
    ``mask (b, 1, s, T)`` bool, True = attend, covers cache columns ``0 : T``.
    """
    b, s = ids.shape
    T = mask.shape[-1]
    h = inner.embed_tokens(ids)  # (b, s, H)
    cos, sin = inner.rotary_emb(h, positions)  # (b, s, D)
    cos, sin = cos[:, None], sin[:, None]  # (b, 1, s, D)
    per_row = isinstance(cols, torch.Tensor)
    rows = torch.arange(b, device=ids.device) if per_row else None
    n_kv, d = _kv_shape(inner)
    n_q = inner.layers[0].self_attn.q_proj.out_features // d
    flat = None  # a decoding step's cache rows (b * kvH,) in the (B * kvH * W, D) view of a layer's cache
    if per_row and all(c.is_contiguous() for c in (*keys, *values)):
        width = keys[0].shape[2]
        flat = ((rows[:, None] * n_kv + torch.arange(n_kv, device=ids.device)[None]) * width + cols[:, None]).reshape(-1)
    masked_out = ~mask.view(b, 1, 1, T) if s == 1 else None  # the columns a decoding query does not see, once per step
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        qkv_weight = _fused_weight(attn, "_pgcore_qkv", ("q_proj", "k_proj", "v_proj"))
        if qkv_weight is not None:  # one matmul, one rotary for q and k together (fuse_projections)
            qkv = _linear(attn, "qkv", x, qkv_weight).view(b, s, -1, d).transpose(1, 2)  # (b, nH + 2 kvH, s, D)
            qk = qkv[:, : n_q + n_kv]
            qk = qk * cos + _rotate_half(qk) * sin
            q, k, v = qk[:, :n_q], qk[:, n_q:], qkv[:, n_q + n_kv :]
        else:
            q = attn.q_proj(x).view(b, s, -1, d).transpose(1, 2)  # (b, nH, s, D)
            k = attn.k_proj(x).view(b, s, -1, d).transpose(1, 2)  # (b, kvH, s, D)
            v = attn.v_proj(x).view(b, s, -1, d).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        if flat is not None:
            keys[i].view(-1, d).index_copy_(0, flat, k[:, :, 0].reshape(-1, d))  # (b * kvH, D) into each row's column
            values[i].view(-1, d).index_copy_(0, flat, v[:, :, 0].reshape(-1, d))
        elif per_row:
            keys[i][rows, :, cols] = k[:, :, 0]  # (b, kvH, D) into each row's column
            values[i][rows, :, cols] = v[:, :, 0]
        else:
            keys[i][:b, :, cols : cols + s] = k
            values[i][:b, :, cols : cols + s] = v
        if s == 1:
            o = _decode_attention(
                q, keys[i][:b, :, :T], values[i][:b, :, :T], mask, attn.scaling, masked_out=masked_out
            )  # (b, 1, nH * D)
        else:
            o = torch.nn.functional.scaled_dot_product_attention(
                q, keys[i][:b, :, :T], values[i][:b, :, :T], attn_mask=mask, scale=attn.scaling, enable_gqa=True
            ).transpose(1, 2).reshape(b, s, -1)  # (b, s, nH * D)
        h = h + _project(attn.o_proj, o)
        mlp = layer.mlp
        gate_up_weight = _fused_weight(mlp, "_pgcore_gate_up", ("gate_proj", "up_proj"))
        if gate_up_weight is not None:  # LlamaMLP's down(act(gate(x)) * up(x)) with gate and up in one matmul
            gate, up = _linear(mlp, "gate_up", layer.post_attention_layernorm(h), gate_up_weight).chunk(2, dim=-1)
            h = h + _project(mlp.down_proj, mlp.act_fn(gate) * up)
        else:
            h = h + mlp(layer.post_attention_layernorm(h))
    last = inner.norm(h[:, -1:, :])  # (b, 1, H)
    if out is None:
        return lm_head(last)[:, 0, :].float()
    return _lm_head_into(lm_head, last[:, 0, :], out)


LM_HEAD_CHUNK = {torch.float32: 4096}  # vocabulary rows per matmul of the lm_head, by weight dtype (else all)


def _plain_linear(module) -> bool:
    """``module`` is a ``torch.nn.Linear`` whose forward nothing hooks (so a matmul with its
    weight is what calling it gives)."""
    from torch.nn.modules import module as module_mod

    hooks = (module._forward_hooks, module._forward_pre_hooks, module_mod._global_forward_hooks, module_mod._global_forward_pre_hooks)
    return type(module) is torch.nn.Linear and not any(hooks)


@torch.no_grad()
def _lm_head_into(lm_head, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``lm_head(x)`` for ``x (b, H)`` written into the fp32 buffer ``out (b, V)``, which is returned.

    The same values as ``lm_head(x).float()`` (each logit is the same dot product; bit for
    bit on SmolLM2 at batch 64, 1 and 2 threads, fp32 and bf16; the BLAS may round a narrow
    chunk differently), without a fresh ``(b, V)`` tensor per step: a fresh one of that size
    may be mapped anew by the allocator and page-faulted each step on a CPU (bf16, batch 64,
    SmolLM2, 2 threads, one step in isolation: ~6,000-9,000 faults, the lm_head plus sampling
    26 -> 13 ms of CPU; fewer faults inside the whole loop). An fp32 weight is multiplied
    ``LM_HEAD_CHUNK`` vocabulary rows at a time, so each chunk's output stays in cache
    (49152 x 576 at batch 64, 2 threads: 62 -> 52 ms CPU); a bf16 weight in one matmul into
    a bf16 staging buffer kept on the module (``b x V``), then cast into ``out``; on a CPU with
    oneDNN the bf16 weight is pre-packed instead (:func:`_linear`, into a fresh ``b x V``, and no
    staging buffer is kept; the lm_head's share of a step 0.91x at batch 8, 0.98-1.0x at 32-64,
    alternated).
    """
    weight = lm_head.weight  # (V, H)
    if not _plain_linear(lm_head) or lm_head.bias is not None or x.dtype != weight.dtype:
        return out.copy_(lm_head(x))  # hooks, a bias, a subclass: the module's own forward
    V = weight.shape[0]
    chunk = LM_HEAD_CHUNK.get(weight.dtype, V)
    if weight.dtype == out.dtype:
        for c0 in range(0, V, chunk):
            torch.mm(x, weight[c0 : c0 + chunk].t(), out=out[:, c0 : c0 + chunk])
        return out
    if _packs(weight) and chunk >= V:  # bf16 on a CPU: the pre-packed weight (_linear), no staging buffer
        return out.copy_(_linear(lm_head, "lm_head", x, weight))
    staging = getattr(lm_head, "_pgcore_staging", None)
    if (
        staging is None
        or staging.dtype != weight.dtype
        or staging.device != weight.device
        or staging.shape[0] < x.shape[0]
        or staging.shape[1] < min(chunk, V)
    ):
        staging = torch.empty((x.shape[0], min(chunk, V)), dtype=weight.dtype, device=weight.device)
        lm_head._pgcore_staging = staging
    for c0 in range(0, V, chunk):
        n = min(chunk, V - c0)
        part = staging[: x.shape[0], :n]
        torch.mm(x, weight[c0 : c0 + n].t(), out=part)
        out[:, c0 : c0 + n].copy_(part)
    return out


def _kv_shape(inner) -> tuple[int, int]:
    attn = inner.layers[0].self_attn
    return attn.k_proj.out_features // attn.head_dim, attn.head_dim


def shared_prefix_length(prompt_ids: list[list[int]]) -> int:
    """Tokens every prompt of ``prompt_ids`` starts with, leaving each at least one of its own.

    Prompts rendered with one chat template share its head (SmolLM2's system turn is 25 of
    its ~40 prompt tokens). 0 for fewer than two prompts.
    """
    if len(prompt_ids) < 2:
        return 0
    first, n = prompt_ids[0], min(len(p) for p in prompt_ids) - 1
    for p in prompt_ids[1:]:
        n = next((t for t in range(n) if p[t] != first[t]), n)
    return max(n, 0)


SHARED_PREFIX_MIN_SAVED = 16  # prefill positions a shared prefix must save to be run once apart
PREFILL_BUCKET_COST = 32  # prefill positions one more forward of a length bucket is worth (see length_buckets)


def length_buckets(lengths: list[int], cost: int | None = None) -> list[list[int]]:
    """Split rows of token counts ``lengths`` into groups prefilled one forward each, padding
    every row of a group to its longest: the grouping with the fewest ``padded positions +
    cost x groups`` (``cost`` default ``PREFILL_BUCKET_COST``, the fixed price of one more
    forward in token positions: per-layer Python and dispatch, smaller matmuls).

    Exact, by dynamic programming over the rows sorted by length (an optimal grouping takes
    contiguous runs of that order). Returns lists of row indices, each sorted, groups in
    increasing length; ``[]`` for no rows. E.g. SmolLM2 chat prompts after their shared
    head at batch 64: 20% of the one-group prefill's positions are padding.
    """
    cost = PREFILL_BUCKET_COST if cost is None else cost
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: rows order[:j] grouped
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]
        for i in range(j):
            c = best[i] + (j - i) * width + cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(order[cut[j] : j]))
        j = cut[j]
    return groups[::-1]


def _prefill(inner, lm_head, prompt_ids: list[list[int]], pad_id: int, device, dtype, prefix_kv=None):
    """Run ``prompt_ids`` (k rows) through the decoder into fresh caches of width P.

    The tokens all prompts start with (:func:`shared_prefix_length`, C of them) are run
    once, as one row, and their keys/values copied into every row's columns ``0 : C``;
    the rest of each prompt is right-aligned after them in columns ``C : P`` (the columns
    before it, if any, are zeros no query attends to), and runs causally over the prefix
    and itself. The rests are run in groups of similar length (:func:`length_buckets`),
    each left-padded only to its own longest (a padding query sees itself, no NaN).
    Position ids count real tokens only, so every row sees what it would alone. With no
    prefix worth sharing (it would save fewer than ``SHARED_PREFIX_MIN_SAVED``
    positions), C = 0. Saves ``(k - 1) * C`` of the prefill's ``k * P`` token positions
    (e.g. 32 SmolLM2 chat prompts: 1,312 -> 537), and most of the padding.

    ``prefix_kv``: ``(keys, values)``, per-layer ``(1, kvH, C, D)``, of C tokens every prompt
    starts with, computed before (:class:`pgcore.prefix_cache.PrefixCache` across calls):
    copied into columns ``0 : C`` instead of being found and run here.

    Returns ``(logits (k, V) fp32, keys, values, valid)``: per-layer caches ``(k, kvH, P,
    D)`` and ``valid (k, P)`` bool, True where a column holds a prompt token.
    """
    if prefix_kv is not None:
        shared = prefix_kv[0][0].shape[2]
    else:
        shared = shared_prefix_length(prompt_ids)
        if (len(prompt_ids) - 1) * shared < SHARED_PREFIX_MIN_SAVED:
            shared = 0
    rests = [p[shared:] for p in prompt_ids]
    k, S = len(rests), max(len(r) for r in rests)
    P = shared + S
    n_kv, d = _kv_shape(inner)
    keys = [torch.empty((k, n_kv, P, d), dtype=dtype, device=device) for _ in inner.layers]
    values = [torch.empty((k, n_kv, P, d), dtype=dtype, device=device) for _ in inner.layers]
    if prefix_kv is not None:
        for cache, held in zip((keys, values), prefix_kv):
            for layer_cache, layer_held in zip(cache, held):
                layer_cache[:, :, :shared] = layer_held  # (1, kvH, C, D) into every row
    elif shared:
        prefix_keys = [layer_keys[:1, :, :shared] for layer_keys in keys]  # views: row 0 gets the prefix
        prefix_values = [layer_values[:1, :, :shared] for layer_values in values]
        causal = torch.ones((1, 1, shared, shared), dtype=torch.bool, device=device).tril()
        ids = torch.tensor([prompt_ids[0][:shared]], dtype=torch.long, device=device)  # (1, C)
        _forward_fast(inner, lm_head, ids, torch.arange(shared, device=device)[None], causal, prefix_keys, prefix_values, 0)
        for cache in (keys, values):
            for layer_cache in cache:
                layer_cache[1:, :, :shared] = layer_cache[:1, :, :shared]
    valid = torch.zeros((k, P), dtype=torch.bool, device=device)
    valid[:, :shared] = True
    logits = None
    groups = length_buckets([len(r) for r in rests])
    for rows in groups:
        input_ids, attention_mask = left_pad([rests[r] for r in rows], pad_id)  # (g, Sg)
        g, Sg = input_ids.shape
        if len(groups) == 1:  # the whole batch: run straight into the caches
            g_keys, g_values = keys, values
        else:  # a group's own caches: the prefix, then its rests
            g_keys = [layer_cache[:g, :, : shared + Sg].clone() for layer_cache in keys]  # rows 0 : g hold the prefix
            g_values = [layer_cache[:g, :, : shared + Sg].clone() for layer_cache in values]
        rest_valid = attention_mask.bool().to(device)  # (g, Sg)
        causal = torch.ones((Sg, Sg), dtype=torch.bool, device=device).tril()
        own = (causal[None] & rest_valid[:, None, :]) | torch.eye(Sg, dtype=torch.bool, device=device)[None]  # (g, Sg, Sg)
        mask = torch.cat([torch.ones((g, Sg, shared), dtype=torch.bool, device=device), own], dim=2)  # (g, Sg, C + Sg)
        positions = (shared + attention_mask.cumsum(-1) - 1).clamp(min=0).to(device)  # (g, Sg)
        g_logits = _forward_fast(inner, lm_head, input_ids.to(device), positions, mask[:, None], g_keys, g_values, shared)
        idx = torch.tensor(rows, dtype=torch.long, device=device)
        valid[idx, P - Sg :] = rest_valid
        if len(groups) == 1:
            logits = g_logits
            break
        if logits is None:
            logits = torch.empty((k, g_logits.shape[1]), dtype=g_logits.dtype, device=device)
        logits[idx] = g_logits
        for cache, fresh in ((keys, g_keys), (values, g_values)):
            for layer_cache, layer_fresh in zip(cache, fresh):
                layer_cache[idx, :, shared : P - Sg] = 0
                layer_cache[idx, :, P - Sg :] = layer_fresh[:, :, shared:]
    return logits, keys, values, valid


@torch.no_grad()
def sample_continuous(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    *,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    generator: torch.Generator,
    greedy: bool = False,
    batch_size: int = 32,
    refill_fraction: float = 0.125,
    compact_fraction: float = 0.25,
    draw: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    on_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
    incoming: Callable[[], list[tuple[list[int], int]]] | None = None,
    prefix: "PrefixCache | None" = None,
    on_forward: Callable[[str, int, float, float], None] | None = None,
) -> Iterator[tuple[int, list[int], list[float], bool]]:
    """Continuous batching: sample every prompt with at most ``batch_size`` rows decoding at once.

    A Llama-family model (:func:`fast_path_supported`) decodes one token per step for up to
    ``batch_size`` rows with a key/value cache preallocated once (``batch_size`` rows of
    ``longest prompt + max_new_tokens`` columns), and the step's logits, logprobs and
    probabilities in three fp32 ``batch_size x vocabulary`` buffers (38 MB at batch 64 on
    SmolLM2) written in place each step. When a row's completion ends (its first
    EOS, ``max_new_tokens``, or the model's ``max_position_embeddings``) it is yielded at
    once, and its slot is given to a waiting prompt: waiting prompts are prefilled together
    (in length buckets, :func:`length_buckets`) once ``refill_fraction`` of the slots are free, and start
    decoding beside the running rows, each row at its own cache column and position (Yu et
    al. 2022, "Orca", iteration-level scheduling). With no prompt waiting, the running rows
    move to the front of the cache once ``compact_fraction`` of them have ended, so later
    steps cost less. Same distribution and behaviour logprobs as
    :func:`sample_batch_generic` (temperature 1, no processing); which uniform draw a row
    gets depends on the batch it shares, so a seed reproduces a run of the same prompts,
    ``batch_size`` and fractions.

    Args:
        model: a plain model passing :func:`fast_path_supported`, in eval mode, any dtype
            and device; logits are turned into fp32 logprobs.
        prompt_ids: token id lists, each non-empty and shorter than the context limit.
        eos_ids, pad_id, max_new_tokens, generator, greedy: as :func:`sample_batch_generic`.
        batch_size: rows decoding at once, >= 1.
        refill_fraction: share of slots that must be free before waiting prompts are
            prefilled into them, in (0, 1] (small: fewer idle rows; large: fewer prefills).
        compact_fraction: with nothing waiting, share of running rows that must have ended
            before the cache is compacted, in (0, 1].
        draw: replaces temperature-1 ancestral sampling (serving's temperature, top-p and
            per-request seeds): ``draw(logp (k, V) fp32 log-softmax, rows (k,) indices into
            prompt_ids) -> (tokens (k,) long, logprobs (k,) fp32)``, called for running rows
            only, where ``logprobs`` are those of the distribution it actually sampled from;
            they are what is recorded.
        on_step: called after each draw with ``(rows (k,), tokens (k,), emitted (k,) bool)``
            for the rows that drew (indices into prompt_ids; ``emitted`` is all True: each
            drawn token belongs to its completion, streaming reads it here). It may return a
            ``(k,)`` bool tensor of rows to end now, unfinished unless the token was an EOS
            (a stop sequence, a per-request length cap, a client gone), or None.
        incoming: prompts that arrive while sampling runs (an inference server's new
            requests): polled before every decoding step, it returns ``[(prompt ids, max new
            tokens), ...]`` (possibly empty). Each new prompt gets the next index after those
            already given (``len(prompt_ids)`` first), waits behind the prompts already
            waiting and is prefilled into a free slot like them; the key/value cache grows
            when it needs more columns. A new prompt's completion is the same as if it had
            been sampled from the start (greedy tokens, the distribution, its logprobs).
            With ``incoming``, ``prompt_ids`` may be empty and ``batch_size`` slots are
            allocated; the generator returns once nothing runs or waits after a poll, so
            a caller serving requests starts a new call when the next one arrives.
        prefix: a :class:`pgcore.prefix_cache.PrefixCache` whose cached keys and values
            replace the prefill of the prompts that begin with its prefix (an inference
            server's chat template); same completions and logprobs up to rounding.
        on_forward: called after each step with ``(kind, rows, start, end)``: ``kind``
            ``"prefill"`` (waiting prompts run into free slots, their first tokens drawn) or
            ``"decode"`` (one token for each running row), ``rows`` the prompts prefilled or
            the slots decoded, ``start``/``end`` ``time.monotonic()`` seconds around the
            forward and the draw (an inference server's timeline, not a profiler).

    Yields:
        ``(index into prompt_ids, completion ids, behaviour logprobs, finished)`` as each
        completion ends, so in order of ending, not of ``prompt_ids``.

    Raises:
        ValueError: a bad ``max_new_tokens``/``batch_size``/fraction, an empty prompt, or a
            prompt with as many tokens as the context limit (an incoming one included, raised
            at the poll that returned it), or an incoming ``max new tokens`` below 1.
    """
    if max_new_tokens < 1 or batch_size < 1 or not 0 < refill_fraction <= 1 or not 0 < compact_fraction <= 1:
        raise ValueError(
            "max_new_tokens and batch_size must be >= 1 and the fractions in (0, 1]; got "
            f"{max_new_tokens}, {batch_size}, {refill_fraction}, {compact_fraction}"
        )
    inner, lm_head = model.model, model.lm_head
    device = _model_device(model)
    dtype = inner.embed_tokens.weight.dtype
    limit = int(getattr(model.config, "max_position_embeddings", 1 << 30))

    def check(i, p, cap):
        if not p:
            raise ValueError(f"prompt {i} has no tokens; a completion needs at least one token to follow")
        if len(p) >= limit:
            raise ValueError(f"prompt {i} has {len(p)} tokens; the context limit is {limit}")
        if cap < 1:
            raise ValueError(f"prompt {i} asks for {cap} new tokens; at least 1")

    prompts = list(prompt_ids)  # grows with incoming prompts; owner[slot] indexes it
    caps = [max_new_tokens] * len(prompts)  # tokens each prompt may take
    for i, p in enumerate(prompts):
        check(i, p, max_new_tokens)
    waiting = list(range(len(prompts)))
    waiting.reverse()  # pop() takes the next prompt in order

    def poll() -> None:
        for p, cap in incoming() or ():
            check(len(prompts), p, int(cap))
            waiting.insert(0, len(prompts))
            prompts.append(list(p))
            caps.append(int(cap))

    if incoming is not None:
        poll()
    if not prompts:
        return
    M = max(caps)
    B = batch_size if incoming is not None else min(batch_size, len(prompts))
    W = max(len(p) for p in prompts) + M  # columns: a group's padded prompt, then its completions
    n_kv, d = _kv_shape(inner)
    keys = [torch.zeros((B, n_kv, W, d), dtype=dtype, device=device) for _ in inner.layers]
    values = [torch.zeros((B, n_kv, W, d), dtype=dtype, device=device) for _ in inner.layers]
    valid = torch.zeros((B, W), dtype=torch.bool, device=device)  # cache columns a row attends to
    cols = torch.zeros(B, dtype=torch.long, device=device)  # column each row writes next
    pos = torch.zeros(B, dtype=torch.long, device=device)  # position of the token each row feeds next
    feed = torch.zeros(B, dtype=torch.long, device=device)  # token each row feeds next
    n_gen = torch.zeros(B, dtype=torch.long, device=device)  # tokens sampled per row
    stop_at = torch.zeros(B, dtype=torch.long, device=device)  # tokens a row may take
    alive = torch.zeros(B, dtype=torch.bool, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    owner = [-1] * B  # prompt index each slot holds
    out_tokens = torch.full((B, M), pad_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((B, M), dtype=torch.float32, device=device)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    # The decoding step's logits, logprobs and probabilities: written in place each step
    # rather than allocated (see _lm_head_into), 3 x batch x vocabulary fp32.
    V = lm_head.weight.shape[0]
    logits_buf, logp_buf, p_buf = (torch.empty((B, V), dtype=torch.float32, device=device) for _ in range(3))
    b = 0  # rows 0 : b run each decoding step (some may have ended and wait to be replaced)
    end = 0  # upper bound on the columns any running row uses

    def sample(logp, rows):
        """Draw for slots ``rows``: ``(tokens (k,), their recorded logprobs (k,))``."""
        if draw is None:
            nxt = _draw(logp, generator, greedy, scratch=p_buf[: logp.shape[0]])  # (k,)
            return nxt, logp.gather(1, nxt[:, None]).squeeze(1)
        nxt = torch.full((rows.numel(),), pad_id, dtype=torch.long, device=device)
        nxt_logp = torch.zeros(rows.numel(), dtype=torch.float32, device=device)
        live = alive[rows].nonzero().squeeze(1)  # hooks see running rows only (seeded draws stay exact)
        if live.numel():
            owners = torch.tensor([owner[int(s_)] for s_ in rows[live].tolist()], dtype=torch.long, device=device)
            t, lp = draw(logp[live], owners)
            nxt[live], nxt_logp[live] = t.to(device), lp.to(device=device, dtype=torch.float32)
        return nxt, nxt_logp

    def take(nxt, nxt_logp, rows):
        """Record the tokens ``nxt`` drawn for ``rows``; returns which of them ended."""
        out_tokens[rows, n_gen[rows].clamp(max=M - 1)] = nxt
        out_logprobs[rows, n_gen[rows].clamp(max=M - 1)] = nxt_logp
        n_gen[rows] += alive[rows].long()
        is_eos = torch.isin(nxt, eos) & alive[rows]
        finished[rows] |= is_eos
        ended = alive[rows] & (is_eos | (n_gen[rows] >= stop_at[rows]))
        if on_step is not None:
            live = alive[rows].nonzero().squeeze(1)
            if live.numel():
                owners = torch.tensor([owner[int(s_)] for s_ in rows[live].tolist()], dtype=torch.long, device=device)
                stop = on_step(owners, nxt[live], torch.ones(live.numel(), dtype=torch.bool, device=device))
                if stop is not None:
                    ended[live] |= stop.to(device=device, dtype=torch.bool)
        alive[rows] &= ~ended
        return ended

    def emit(rows_ended: list[int]):
        if not rows_ended:
            return
        idx = torch.tensor(rows_ended, dtype=torch.long, device=device)
        toks, lps, counts, done = out_tokens[idx].tolist(), out_logprobs[idx].tolist(), n_gen[idx].tolist(), finished[idx].tolist()
        for slot, t, lp, n, f in zip(rows_ended, toks, lps, counts, done):
            yield owner[slot], t[:n], lp[:n], f
            owner[slot] = -1

    while True:
        if incoming is not None:
            poll()
        free = [slot for slot in range(B) if owner[slot] < 0]
        if waiting and free and (len(free) >= refill_fraction * B or b == 0 or not bool(alive[:b].any())):
            started = time.monotonic()
            slots = free[: len(waiting)]
            group = [waiting.pop() for _ in slots]
            prefill = _prefill if prefix is None else prefix.prefill
            logits, g_keys, g_values, g_valid = prefill(inner, lm_head, [prompts[i] for i in group], pad_id, device, dtype)
            P = g_valid.shape[1]
            group_cap = max(caps[i] for i in group)
            if P + group_cap > W:  # an incoming prompt or cap wider than the cache: grow it
                extra = P + group_cap - W
                for cache in (keys, values):
                    for li, layer_cache in enumerate(cache):
                        cache[li] = torch.cat([layer_cache, layer_cache.new_zeros((B, n_kv, extra, d))], dim=2)
                valid = torch.cat([valid, valid.new_zeros((B, extra))], dim=1)
                W += extra
            if group_cap > M:
                extra = group_cap - M
                out_tokens = torch.cat([out_tokens, out_tokens.new_full((B, extra), pad_id)], dim=1)
                out_logprobs = torch.cat([out_logprobs, out_logprobs.new_zeros((B, extra))], dim=1)
                M = group_cap
            sel = torch.tensor(slots, dtype=torch.long, device=device)
            for cache, fresh in ((keys, g_keys), (values, g_values)):
                for layer_cache, layer_fresh in zip(cache, fresh):
                    layer_cache[sel, :, :P] = layer_fresh
            valid[sel] = False
            valid[sel, :P] = g_valid
            lengths = torch.tensor([len(prompts[i]) for i in group], dtype=torch.long, device=device)
            cols[sel] = P
            pos[sel] = lengths
            n_gen[sel] = 0
            stop_at[sel] = torch.minimum(limit - lengths, torch.tensor([caps[i] for i in group], device=device))
            alive[sel] = True
            finished[sel] = False
            for slot, i in zip(slots, group):
                owner[slot] = i
            logp = torch.log_softmax(logits, dim=-1, out=logp_buf[: len(slots)])  # (k, V)
            nxt, nxt_logp = sample(logp, sel)  # (k,)
            feed[sel] = nxt
            ended = take(nxt, nxt_logp, sel)
            if on_forward is not None:
                on_forward("prefill", len(slots), started, time.monotonic())
            yield from emit([s_ for s_, e in zip(slots, ended.tolist()) if e])
            b = max(b, max(slots) + 1)
            end = max(end, P + 1)
            continue
        running = alive[:b]
        n_alive = int(running.sum())
        if n_alive == 0:
            if not waiting:
                return
            continue
        if not waiting and b - n_alive >= compact_fraction * b:
            keep = running.nonzero().squeeze(1)
            for cache in (keys, values):
                for layer_cache in cache:
                    layer_cache[:n_alive, :, :end] = layer_cache[keep, :, :end]  # running rows to the front
            for state in (valid, cols, pos, feed, n_gen, stop_at, alive, finished, out_tokens, out_logprobs):
                state[:n_alive] = state[keep].clone()
            kept = keep.tolist()
            owner[:b] = [owner[s_] for s_ in kept] + [-1] * (b - n_alive)
            alive[n_alive:b] = False
            b = n_alive
        # One decoding step for rows 0 : b; ended rows still run (on a column they do not advance).
        started = time.monotonic()
        rows = torch.arange(b, device=device)
        valid[rows, cols[:b]] = True
        logits = _forward_fast(
            inner, lm_head, feed[:b, None], pos[:b, None], valid[:b, None, None, :end], keys, values, cols[:b],
            out=logits_buf[:b],
        )
        logp = torch.log_softmax(logits, dim=-1, out=logp_buf[:b])  # (b, V)
        was_alive = alive[:b].clone()
        nxt, nxt_logp = sample(logp, rows)  # (b,)
        ended = take(nxt, nxt_logp, rows)
        step = was_alive.long()
        cols[:b] += step
        pos[:b] += step
        feed[:b] = torch.where(was_alive, nxt, feed[:b])
        end = min(W, end + 1)
        if on_forward is not None:
            on_forward("decode", b, started, time.monotonic())
        yield from emit(ended.nonzero().squeeze(1).tolist())


SPLIT_MIN_ROWS = 32  # rows each lane of a split batch decodes at least (measured: bench/README.md, split lanes)
SPLIT_POLL_S = 0.05  # seconds the caller's thread waits for a lane's completion before polling ``incoming`` again


def split_lanes(device: torch.device, rows: int) -> int:
    """Lanes :func:`generate_stream` splits ``rows`` decoding rows into (:func:`sample_split`):
    ``torch.get_num_threads()`` on a CPU, fewer where a lane would get under
    ``SPLIT_MIN_ROWS`` rows; 1 (no split) on any other device or with one thread.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return 1
    return max(1, min(threads, rows // SPLIT_MIN_ROWS))


class _LaneStopped(Exception):
    """Raised inside a lane of :func:`sample_split` to end its ``sample_continuous`` early."""


def sample_split(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    *,
    lanes: int,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    generators: list[torch.Generator],
    greedy: bool = False,
    batch_size: int = 32,
    incoming: Callable[[], list[tuple[list[int], int]]] | None = None,
) -> Iterator[tuple[int, list[int], list[float], bool]]:
    """:func:`sample_continuous` with the batch split across ``lanes`` CPU threads, each lane
    running its own ``sample_continuous`` (its own key/value cache, waiting prompts and
    ``generators[k]``) at one intra-op thread.

    On a CPU with T cores, T lanes of ``batch_size / T`` rows at 1 thread each keep every
    core on its own matmuls, where one batch at T threads splits each small decoding matmul
    across the cores and waits for the slowest at every op (and far longer when another
    process holds a core). PyTorch releases the GIL inside its kernels, so the lanes' Python
    (a few ms a step) is what they share. ``torch.set_num_threads(1)`` in a lane sets that
    lane's OpenMP count and also ATen's process-wide count, which a thread copies at its first
    torch call and keeps; the caller sets the latter back once every lane has its own 1 (or a
    lane failed to start). So a thread of the process that makes its first torch call in that
    window (the lanes' start) runs at one intra-op thread from then on, and the main thread's
    ``torch.get_num_threads()`` read 1 in it; another thread that had used torch keeps its
    count, and the lanes keep 1 after the caller's reset (torch 2.13, libgomp: checked with
    ``tests/pgcore/test_split_lanes.py``, lanes and later threads; a first call in the window
    by hand). Lane k holds ``batch_size // lanes`` rows (one more
    for the first ``batch_size % lanes``) and starts with prompts ``k, k + lanes, ...``; a
    prompt from ``incoming`` goes to the lane with the fewest unfinished prompts per row and
    keeps its own max new tokens there (a lane takes its prompts through its own ``incoming``).

    ``incoming`` is called on the caller's thread (it may use the caller's database
    connection): at the start, after each completion is yielded, and every ``SPLIT_POLL_S``
    while waiting; the generator returns once nothing runs or waits after a call. Closing
    the generator stops the lanes after their current step and joins them; an exception in
    a lane is raised here.

    Each completion is exactly what its lane's ``sample_continuous`` gives (greedy tokens,
    behaviour logprobs of the distribution sampled); a seed reproduces a run of the same
    prompts, ``batch_size``, ``lanes`` and generator states (without ``incoming``, whose
    prompts land in lanes as completions happen to end).

    Args:
        lanes: threads, >= 1 and <= ``batch_size``.
        generators: one per lane, each used by its lane only.
        prompt_ids, eos_ids, pad_id, max_new_tokens, greedy, batch_size, incoming: as
            :func:`sample_continuous`.

    Yields:
        ``(index into prompt_ids, completion ids, behaviour logprobs, finished)`` as each
        completion ends; indices of ``incoming`` prompts continue after ``prompt_ids``.

    Raises:
        ValueError: ``lanes`` out of range or not one generator per lane, and as
            :func:`sample_continuous` (a bad prompt is raised from its lane).
    """
    if not 1 <= lanes <= batch_size or len(generators) != lanes:
        raise ValueError(f"need 1 <= lanes <= batch_size and one generator per lane; got {lanes}, {batch_size}, {len(generators)}")
    sizes = [batch_size // lanes + (k < batch_size % lanes) for k in range(lanes)]
    lock = threading.Condition()
    inbox: list[list[tuple[int, list[int], int]]] = [[] for _ in range(lanes)]  # (index, ids, cap) not yet taken
    unfinished = [0] * lanes  # prompts given to each lane and not yet yielded
    flags = {"closed": incoming is None, "stop": False}
    results: queue.SimpleQueue = queue.SimpleQueue()  # (lane, item): a completion, an exception, or None (lane done)
    count = 0
    for i, ids in enumerate(prompt_ids):
        inbox[i % lanes].append((i, ids, max_new_tokens))
        unfinished[i % lanes] += 1
        count += 1
    threads = torch.get_num_threads()
    ready = threading.Barrier(lanes + 1)

    def lane(k: int) -> None:
        try:
            try:
                torch.get_num_threads()  # this thread's OpenMP settings start from the process default first
                torch.set_num_threads(1)
            finally:
                ready.wait()
            index: list[int] = []  # the running sample_continuous' prompt index -> index here

            def check_stop(*_) -> None:
                if flags["stop"]:
                    raise _LaneStopped

            def take() -> list[tuple[list[int], int]]:
                check_stop()
                with lock:
                    got, inbox[k] = inbox[k], []
                index.extend(i for i, _, _ in got)
                return [(ids, cap) for _, ids, cap in got]

            while True:
                with lock:
                    while not inbox[k] and not flags["closed"] and not flags["stop"]:
                        lock.wait()
                    if flags["stop"] or not inbox[k]:
                        return
                index.clear()
                # No prompts of its own: the inbox's come in through take() at the first poll,
                # each with its own cap (max_new_tokens only bounds-checks the empty list).
                for j, completion, logprobs, finished in sample_continuous(
                    model,
                    [],
                    eos_ids=eos_ids,
                    pad_id=pad_id,
                    max_new_tokens=max_new_tokens,
                    generator=generators[k],
                    greedy=greedy,
                    batch_size=sizes[k],
                    incoming=take,
                    on_forward=check_stop,
                ):
                    results.put((k, (index[j], completion, logprobs, finished)))
        except _LaneStopped:
            pass
        except BaseException as e:  # raised on the caller's thread
            results.put((k, e))
        finally:
            results.put((k, None))

    workers: list[threading.Thread] = []  # the lanes started
    running = lanes
    try:
        try:
            for k in range(lanes):
                w = threading.Thread(target=lane, args=(k,), name=f"pgcore-lane-{k}", daemon=True)
                w.start()
                workers.append(w)
            ready.wait()
        finally:  # also where a lane failed to start: the lanes started have set it to 1
            torch.set_num_threads(threads)  # the default for threads started later
        while running:
            if not flags["closed"]:
                added = incoming()
                with lock:
                    for ids, cap in added:
                        k = min(range(lanes), key=lambda k: (unfinished[k] / sizes[k], k))
                        inbox[k].append((count, list(ids), int(cap)))
                        unfinished[k] += 1
                        count += 1
                    if not added and not any(unfinished):
                        flags["closed"] = True
                    lock.notify_all()
            try:
                k, item = results.get(timeout=None if flags["closed"] else SPLIT_POLL_S)
            except queue.Empty:
                continue
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                unfinished[k] -= 1
                yield item
    finally:
        ready.abort()  # a lane not yet past the barrier (a later lane failed to start) stops there
        with lock:
            flags["stop"] = True
            lock.notify_all()
        for w in workers:
            w.join()


PRECISIONS = ("auto", "fp32", "bf16")

_sampling_copies: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.nn.Module]]" = weakref.WeakKeyDictionary()


def default_device() -> torch.device:
    """The device sampling runs on by default: :func:`pgcore.precision.select_device` (``$REWARDLOOP_DEVICE``
    when set, else the first CUDA GPU when there is one, else the CPU).

    Raises:
        ValueError: ``$REWARDLOOP_DEVICE`` names CUDA where PyTorch sees no GPU, or no device.
    """
    from pgcore.precision import select_device

    return select_device()


def sampling_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The weight dtype of the sampling copy for ``precision`` on ``device``.

    ``"auto"`` is bf16 where bf16 matrix multiplies are native (a CUDA GPU that supports
    bf16; on a CPU :func:`pgcore.trainer.native_bf16_matmul`), else fp32.

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            from pgcore.trainer import native_bf16_matmul

            native = native_bf16_matmul()
        precision = "bf16" if native else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def sampling_model(policy: Policy, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None):
    """The plain module that samples for ``policy``: LoRA merged into the weights, in ``dtype``.

    A LoRA policy's adapter is merged into a copy of the weights (``merge_and_unload`` on a
    deep copy), so a decoding step is one matmul per layer rather than three; a plain
    fp32 policy on its own device is used as it is; anything else is copied and cast (and a
    Llama-family copy's projections fused, :func:`fuse_projections`). The
    copy is cached per model and rebuilt only when a parameter was changed in place since
    (an optimiser step, a load), tracked by the tensors' version counters. The copy costs
    the model's size in ``dtype`` (~540 MB fp32, ~270 MB bf16 for SmolLM2-135M).
    """
    model = policy.model
    device = device or _model_device(model)
    if not policy.is_lora and dtype == next(model.parameters()).dtype and device == _model_device(model):
        return model
    key = (dtype, str(device), tuple(p._version for p in model.parameters()), tuple(p.data_ptr() for p in model.parameters()))
    cached = _sampling_copies.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    _sampling_copies.pop(model, None)
    with torch.no_grad():
        copy_ = copy.deepcopy(model)
        if policy.is_lora:
            copy_ = copy_.merge_and_unload()
        copy_ = copy_.to(device=device, dtype=dtype).requires_grad_(False).eval()
        if fast_path_supported(copy_):
            fuse_projections(copy_)
    _sampling_copies[model] = (key, copy_)
    return copy_


def fuse_projections(model: torch.nn.Module) -> None:
    """Let :func:`_forward_fast` run each layer's q/k/v projections as one matmul and its MLP's
    gate/up projections as another, on a model only the sampler uses (a sampling copy).

    Per layer, where the projections are plain bias-free ``torch.nn.Linear`` modules (and the
    MLP is ``LlamaMLP``, ``down(act(gate(x)) * up(x))``): their weights are concatenated into
    one tensor, ``((nH + 2 kvH) D, H)`` kept as ``self_attn._pgcore_qkv`` and ``(2 I, H)`` as
    ``mlp._pgcore_gate_up``, and each module's weight becomes a view of its rows, so the
    model takes no more memory and its own forward is unchanged. The rotary embedding is then
    applied to q and k in one pass. Each output is the same dot product as before: the same
    logits bit for bit on SmolLM2 (fp32 and bf16, batch 1-64, 1 and 2 threads; checked by
    ``tests/pgcore/test_fused_projections.py`` on the tiny model). A module whose weight is
    later replaced (``.to()``, ``load_state_dict(assign=True)``) is no longer a view, and
    :func:`_forward_fast` then runs that layer's separate projections. Do not call it on a
    model that is trained or saved: its weights then share storage.
    """
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            groups = [(attn, "_pgcore_qkv", (attn.q_proj, attn.k_proj, attn.v_proj))]
            if type(mlp).__name__ == "LlamaMLP":
                groups.append((mlp, "_pgcore_gate_up", (mlp.gate_proj, mlp.up_proj)))
            for owner, name, linears in groups:
                if not all(_plain_linear(m) and m.bias is None for m in linears):
                    continue
                fused = torch.cat([m.weight for m in linears])
                start = 0
                for m in linears:
                    n = m.weight.shape[0]
                    m.weight.data = fused[start : start + n]
                    start += n
                setattr(owner, name, fused)


def generate(
    policy: Policy,
    prompts: list[str],
    *,
    max_new_tokens: int = 96,
    seed: int | None = None,
    batch_size: int = 8,
    precision: str = "auto",
    device: str | torch.device | None = None,
    fast: bool = True,
    greedy: bool = False,
    lanes: int | None = None,
) -> list[Rollout]:
    """Sample one completion per prompt, at most ``batch_size`` prompts decoding at once.

    The one sampler of the app (pool refill, the guard's evaluation, the benchmarks): all
    of :func:`generate_stream`'s completions, returned in the order of ``prompts``. Same
    arguments, returns one :class:`Rollout` per prompt, raises the same errors.
    """
    rollouts: list[Rollout | None] = [None] * len(prompts)
    for i, r in generate_stream(
        policy,
        prompts,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        precision=precision,
        device=device,
        fast=fast,
        greedy=greedy,
        lanes=lanes,
    ):
        rollouts[i] = r
    return rollouts


def generate_stream(
    policy: Policy,
    prompts: list[str],
    *,
    max_new_tokens: int = 96,
    seed: int | None = None,
    batch_size: int = 8,
    precision: str = "auto",
    device: str | torch.device | None = None,
    fast: bool = True,
    greedy: bool = False,
    incoming: Callable[[], list[str]] | None = None,
    lanes: int | None = None,
) -> Iterator[tuple[int, Rollout]]:
    """Sample one completion per prompt and yield each as soon as it ends.

    Llama-family models (:func:`fast_path_supported`) run :func:`sample_continuous` on
    :func:`sampling_model` (LoRA merged, ``precision``): ``batch_size`` rows decode at once
    and a finished row's slot goes to the next waiting prompt, so ``prompts`` may be many
    more than ``batch_size``. Other models, and ``fast=False``, run
    :func:`sample_batch_generic` on the policy's own module in its own dtype, ``batch_size``
    prompts at a time. The policy is in eval mode while the generator runs and goes back to
    its mode when the generator ends or is closed.

    Args:
        policy: the behaviour policy (any mode; sampling runs in eval mode, no grad).
        prompts: user texts, rendered with :func:`render_prompt`.
        max_new_tokens: cap on completion length in tokens, >= 1. A completion also stops
            (unfinished) where prompt plus completion reach the model's context limit.
        seed: seeds the sampler (same seed, prompts, ``batch_size``, ``lanes``, weights, device
            and precision give the same rollouts; with lanes, only without ``incoming``);
            ``None`` draws from torch's global generator. With the split, a seed's rollouts
            depend on the lanes (each lane draws from its own generator for its own prompts),
            and ``lanes=None`` derives them from ``torch.get_num_threads()``
            (:func:`split_lanes`): the same seed may give other rollouts at another thread
            count (another machine, ``OMP_NUM_THREADS``, ``torch.set_num_threads``).
        batch_size: rows decoding at once, >= 1.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`sampling_dtype`). bf16
            logprobs differ from the trainer's; the trainer corrects for that with
            truncated importance sampling (``PGConfig.tis_cap``).
        device: where to sample; default :func:`default_device`.
        fast: False forces the generic path (the reference; benchmarks).
        greedy: take the most likely token instead of sampling (tests); behaviour
            logprobs are still those of the temperature-1 distribution.
        incoming: more prompts while sampling runs (the pool refill claims the next prompts
            as rows free up, so the batch stays full): called before each decoding step on
            the fast path (before each chunk on the generic one), it returns user texts,
            possibly none. They get the next indices after those already given, in order,
            with ``max_new_tokens`` each; the stream ends once nothing runs or waits after
            a call. Keep it cheap when it has nothing to add. With lanes it is called on the
            caller's thread after each completion and every ``SPLIT_POLL_S`` (:func:`sample_split`).
        lanes: the fast path on a CPU splits the ``batch_size`` rows into this many lanes, one
            thread each (:func:`sample_split`), at most ``batch_size``; 1: one batch at torch's
            threads; default ``None``: :func:`split_lanes` (as many lanes as torch's threads
            where each gets ``SPLIT_MIN_ROWS`` rows). Near idle on the 2-core machine, batch 64,
            two lanes gave 1.3-1.6x the tokens/s of one batch in one A/B and 0.92-1.09x in
            one ``bench/generate.py`` pair; at batch 128 0.88-1.04x; under load (12-17) they
            were slower at every batch (bench/README.md, "generate.py"). Which lane a prompt lands in (and so which draw it gets) depends on
            ``lanes``; greedy tokens and the logprobs' exactness do not.

    Yields:
        ``(index into prompts, Rollout)`` as each completion ends (fast path: in order of
        ending; generic path: in order). Behaviour logprobs are those of the temperature-1
        distribution actually sampled (in ``precision``).

    Raises:
        ValueError: ``max_new_tokens``, ``batch_size`` or ``lanes`` < 1, an unknown ``precision``, a
            prompt rendering to no tokens or to as many tokens as the context limit (all
            checked before anything is sampled; an incoming prompt's at the call that
            returned it).
    """
    if max_new_tokens < 1 or batch_size < 1 or (lanes is not None and lanes < 1):
        raise ValueError(f"max_new_tokens, batch_size and lanes must be >= 1, got {max_new_tokens}, {batch_size}, {lanes}")
    tokenizer = policy.tokenizer
    device = torch.device(device) if device is not None else default_device()
    dtype = sampling_dtype(precision, device)
    eos_ids = eos_token_ids(policy)
    limit = getattr(getattr(policy.model, "config", None), "max_position_embeddings", None)

    def rendered(texts: list[str]) -> list[list[int]]:
        ids_of = [render_prompt(tokenizer, p) for p in texts]
        for text, ids in zip(texts, ids_of):
            if not ids:
                raise ValueError(f"prompt {text!r} renders to no tokens")
            if limit is not None and len(ids) >= limit:
                raise ValueError(f"prompt {text[:40]!r}... renders to {len(ids)} tokens; the context limit is {limit}")
        return ids_of

    prompt_ids = rendered(prompts)
    more = None
    if incoming is not None:

        def more() -> list[list[int]]:
            added = rendered(list(incoming()))
            prompt_ids.extend(added)  # so rollout() finds each new index's prompt
            return added

    return _generate_stream(policy, prompt_ids, eos_ids, dtype, device, max_new_tokens, seed, batch_size, fast, greedy, more, lanes)


def _generate_stream(policy, prompt_ids, eos_ids, dtype, device, max_new_tokens, seed, batch_size, fast, greedy, more=None, lanes=None):
    tokenizer = policy.tokenizer

    def rollout(i: int, completion: list[int], logprobs: list[float], finished: bool) -> tuple[int, Rollout]:
        text = tokenizer.decode(completion, skip_special_tokens=True).replace("\x00", "\ufffd")
        return i, Rollout(prompt_ids[i], completion, logprobs, text, finished)

    was_training = policy.model.training
    policy.model.eval()
    try:
        if fast:
            model = sampling_model(policy, dtype=dtype, device=device)
            fast = fast_path_supported(model)
        if not fast:
            model = policy.model if device == _model_device(policy.model) else None
            if model is None:
                raise ValueError(f"the generic path samples on the policy's own device, not {device}")
        generator = torch.Generator(device=_model_device(model))
        generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed)
        common = dict(eos_ids=eos_ids, pad_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens, generator=generator, greedy=greedy)
        if fast:
            arriving = None
            if more is not None:

                def arriving() -> list[tuple[list[int], int]]:
                    return [(ids, max_new_tokens) for ids in more()]

            if lanes is None:
                lanes = split_lanes(_model_device(model), batch_size if more is not None else min(batch_size, len(prompt_ids)))
            lanes = max(1, min(lanes, batch_size))
            if lanes > 1:  # each lane's generator seeded by a draw from the one the seed gave
                seeds = torch.randint(0, 2**62, (lanes,), generator=generator).tolist()
                common.pop("generator")
                stream = sample_split(
                    model, list(prompt_ids), lanes=lanes, batch_size=batch_size, incoming=arriving,
                    generators=[torch.Generator(device=_model_device(model)).manual_seed(s) for s in seeds], **common,
                )
            else:  # a copy: sample_continuous counts new indices from the prompts it was given
                stream = sample_continuous(model, list(prompt_ids), batch_size=batch_size, incoming=arriving, **common)
            try:
                for i, completion, logprobs, finished in stream:
                    yield rollout(i, completion, logprobs, finished)
            finally:
                stream.close()  # a split stream's lanes stop and are joined before the policy's mode is restored
            return
        start = 0
        while True:
            if more is not None and len(prompt_ids) - start < batch_size:
                more()
            chunk = prompt_ids[start : start + batch_size]
            if not chunk:
                return
            completions, behaviour, done = sample_batch_generic(model, chunk, **common)
            for j, (completion, logprobs, finished) in enumerate(zip(completions, behaviour, done)):
                yield rollout(start + j, completion, logprobs, finished)
            start += len(chunk)
    finally:
        policy.model.train(was_training)
