"""Batched sampling of completions that records the exact behaviour logprobs.

Sampling is plain ancestral sampling at temperature 1 with no top-k, top-p or repetition
penalty, so the stored logprob of each token is exactly ``log mu(y_t | prompt, y_<t)`` of
the distribution it was drawn from (see DESIGN.md, "Behaviour logprobs must match what was
sampled"). Prompts are left-padded so every row's next token is in the last column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgcore.policy import Policy


@dataclass
class Rollout:
    """One sampled completion.

    Attributes:
        prompt_ids: token ids of the rendered prompt, no padding.
        completion_ids: sampled token ids; ends with the EOS token when ``finished``.
        behaviour_logprobs: ``log mu(completion_ids[t] | ...)`` in nats, one per completion
            token, of the exact distribution sampled from.
        text: the completion decoded with special tokens skipped.
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
def sample_batch(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    *,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    generator: torch.Generator,
) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """Sample one batch with a KV cache; return completion ids, behaviour logprobs, finished.

    Position ids count only real tokens (``cumsum(attention_mask) - 1``), so a left-padded
    row sees the same positions as it would alone.
    """
    from transformers import DynamicCache

    input_ids, attention_mask = left_pad(prompt_ids, pad_id)  # (B, P)
    B = input_ids.shape[0]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    cache = DynamicCache()
    finished = torch.zeros(B, dtype=torch.bool)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
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
        next_tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)  # (B,)
        tokens.append(torch.where(finished, pad_id, next_tokens))
        logprobs.append(logp.gather(1, next_tokens[:, None]).squeeze(1))
        finished = finished | torch.isin(next_tokens, eos)
        if bool(finished.all()):
            break
        input_ids = next_tokens[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones((B, 1), dtype=attention_mask.dtype)], dim=1)
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


def generate(
    policy: Policy,
    prompts: list[str],
    *,
    max_new_tokens: int = 96,
    seed: int | None = None,
    batch_size: int = 8,
) -> list[Rollout]:
    """Sample one completion per prompt, ``batch_size`` prompts at a time.

    Args:
        policy: the behaviour policy (any mode; it is run in eval mode, fp32, no grad).
        prompts: user texts, rendered with :func:`render_prompt`.
        max_new_tokens: cap on completion length in tokens, >= 1.
        seed: seeds the sampler (same seed, prompts and weights give the same rollouts);
            ``None`` draws from torch's global generator.
        batch_size: prompts per forward batch, >= 1.

    Returns:
        One :class:`Rollout` per prompt, in order. Behaviour logprobs are those of the
        temperature-1 distribution actually sampled.

    Raises:
        ValueError: ``max_new_tokens`` or ``batch_size`` < 1, or an empty prompt rendering.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    tokenizer = policy.tokenizer
    model = policy.model
    generator = torch.Generator()
    if seed is None:
        generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    else:
        generator.manual_seed(seed)
    eos_ids = eos_token_ids(policy)
    prompt_ids = [render_prompt(tokenizer, p) for p in prompts]
    for text, ids in zip(prompts, prompt_ids):
        if not ids:
            raise ValueError(f"prompt {text!r} renders to no tokens")
    was_training = model.training
    model.eval()
    rollouts: list[Rollout] = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start : start + batch_size]
            completions, behaviour, done = sample_batch(
                model,
                chunk,
                eos_ids=eos_ids,
                pad_id=tokenizer.pad_token_id,
                max_new_tokens=max_new_tokens,
                generator=generator,
            )
            for ids, completion, logprobs, finished in zip(chunk, completions, behaviour, done):
                text = tokenizer.decode(completion, skip_special_tokens=True)
                rollouts.append(Rollout(ids, completion, logprobs, text, finished))
    finally:
        model.train(was_training)
    return rollouts
