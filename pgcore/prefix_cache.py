"""Prefix caching: the keys and values of a prompt prefix that many prompts share, computed once.

Every chat request to a served model is rendered with the same chat template, so every
prompt begins with the same tokens (SmolLM2-Instruct's: its default system prompt and the
user turn's header, 31 of the ~45 tokens of a short review prompt). A token's keys and
values depend only on the tokens before it and on the weights, so those of the shared
prefix are computed once per model and copied into each prompt's cache rows, and the
prefill runs over each prompt's own tokens only. This is the idea of vLLM's automatic
prefix caching (Kwon et al. 2023, "Efficient Memory Management for Large Language Model
Serving with PagedAttention"), for one fixed prefix rather than SGLang's radix tree of
every prefix seen (Zheng et al. 2024, "SGLang").

:meth:`PrefixCache.prefill` has the contract of pgcore's own prefill, so
:func:`pgcore.rollout.sample_continuous` takes it as its ``prefix`` argument.
"""

from __future__ import annotations

import weakref

import torch

from pgcore import rollout


def chat_prefix_ids(tokenizer) -> list[int]:
    """Token ids that every single-user-turn prompt of :func:`pgcore.rollout.render_prompt` begins with.

    The longest common token prefix of two prompts whose texts differ from their first
    character on, so a token that a text could merge with the template's last characters is
    left out. A prompt that still tokenizes differently at that boundary simply does not use
    the cache (:meth:`PrefixCache.matches` compares tokens). ``[]`` when the tokenizer has no
    chat template (prompts are then the bare text).
    """
    if not getattr(tokenizer, "chat_template", None):
        return []
    a, b = (rollout.render_prompt(tokenizer, text) for text in ("A", "z 0"))
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


class PrefixCache:
    """The keys and values of ``prefix_ids`` under one model, computed on first use and reused.

    The cache belongs to the model it was computed with: it is recomputed when
    :meth:`prefill` gets another model (a newly promoted version's) or when a weight of the
    same model changed in place since (an optimiser step, a load), tracked by the tensors'
    version counters, so a cached prefix never outlives the weights it came from.

    Args:
        prefix_ids: the shared prefix, e.g. :func:`chat_prefix_ids`; empty disables the cache
            (every prompt is prefilled in full).

    Attributes:
        builds: how many times the prefix's keys and values were computed.
        hits: prompts prefilled from the cached prefix (their own tokens only).
    """

    def __init__(self, prefix_ids: list[int]):
        self.prefix_ids = list(prefix_ids)
        self.builds = 0
        self.hits = 0
        self._model: weakref.ref | None = None
        self._key: tuple | None = None
        self._kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def matches(self, ids: list[int]) -> bool:
        """Whether ``ids`` starts with the prefix and has at least one token after it."""
        n = len(self.prefix_ids)
        return 0 < n < len(ids) and ids[:n] == self.prefix_ids

    def cached_for(self, inner: torch.nn.Module) -> bool:
        """Whether the prefix's keys and values are held for ``inner`` (a decoder) as its weights are now."""
        return self._kv is not None and self._model is not None and self._model() is inner and self._key == _weights_key(inner)

    def keys_values(self, inner, lm_head, pad_id: int, device, dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer keys and values of the prefix, each ``(1, kvH, L, D)`` in ``dtype``; computed if not held.

        ``inner``/``lm_head`` are a :func:`pgcore.rollout.fast_path_supported` model's
        ``model.model`` and ``model.lm_head``.
        """
        if not self.cached_for(inner):
            self._kv = None  # the old model's tensors go before the new ones are made
            _, keys, values, _ = rollout._prefill(inner, lm_head, [self.prefix_ids], pad_id, device, dtype)
            self._model, self._key, self._kv = weakref.ref(inner), _weights_key(inner), (keys, values)
            self.builds += 1
        return self._kv

    @torch.no_grad()
    def prefill(self, inner, lm_head, prompt_ids: list[list[int]], pad_id: int, device, dtype):
        """:func:`pgcore.rollout._prefill` with the prefix's keys and values taken from the cache.

        Prompts that :meth:`matches` are laid out as ``[prefix (L columns) | their own tokens,
        left-padded among themselves]`` and only their own tokens run through the decoder,
        at positions ``L, L + 1, ...``; the other prompts are prefilled in full as before.
        Both groups are left-padded to one width and put back in the order of ``prompt_ids``.
        Same logits, keys and values as a full prefill up to rounding (the matmuls have
        other shapes), so the same greedy tokens and logprobs within fp tolerance.

        Returns:
            ``(logits (k, V) fp32, keys, values, valid (k, P) bool)`` with per-layer caches
            ``(k, kvH, P, D)``, as :func:`pgcore.rollout._prefill`.
        """
        cached = [i for i, ids in enumerate(prompt_ids) if self.matches(ids)]
        if not cached:
            return rollout._prefill(inner, lm_head, prompt_ids, pad_id, device, dtype)
        groups = [(cached, self._prefill_after_prefix(inner, lm_head, [prompt_ids[i] for i in cached], pad_id, device, dtype))]
        full = sorted(set(range(len(prompt_ids))) - set(cached))
        if full:
            groups.append((full, rollout._prefill(inner, lm_head, [prompt_ids[i] for i in full], pad_id, device, dtype)))
        self.hits += len(cached)
        if len(groups) == 1:
            return groups[0][1]
        return _merge(groups, len(prompt_ids))

    def _prefill_after_prefix(self, inner, lm_head, prompt_ids, pad_id, device, dtype):
        """Prompts that all :meth:`matches`: pgcore's prefill, given the cached prefix's keys and values."""
        prefix_kv = self.keys_values(inner, lm_head, pad_id, device, dtype)  # each (1, kvH, L, D)
        return rollout._prefill(inner, lm_head, prompt_ids, pad_id, device, dtype, prefix_kv=prefix_kv)


def _weights_key(inner: torch.nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in inner.parameters())


def _merge(groups, k: int):
    """Left-pad each group's prefill to the widest and put its rows back at their indices in the batch."""
    P = max(result[3].shape[1] for _, result in groups)
    logits = keys = values = valid = None
    for rows, (g_logits, g_keys, g_values, g_valid) in groups:
        extra = P - g_valid.shape[1]
        if logits is None:
            logits = g_logits.new_empty((k, g_logits.shape[1]))
            keys = [c.new_zeros((k, c.shape[1], P, c.shape[3])) for c in g_keys]
            values = [c.new_zeros((k, c.shape[1], P, c.shape[3])) for c in g_values]
            valid = g_valid.new_zeros((k, P))
        sel = torch.tensor(rows, dtype=torch.long, device=g_valid.device)
        logits[sel] = g_logits
        valid[sel, extra:] = g_valid
        for cache, fresh in ((keys, g_keys), (values, g_values)):
            for layer_cache, layer_fresh in zip(cache, fresh):
                layer_cache[sel, :, extra:] = layer_fresh
    return logits, keys, values, valid
