"""A tiny, randomly initialised Llama causal LM with a byte-level tokenizer, built offline.

Same architecture family as SmolLM2 (``LlamaForCausalLM``, tied embeddings, grouped-query
attention), a few hundred thousand times smaller, so tests, the end-to-end test and a
fast demo mode run in seconds. Its outputs are random bytes, not language.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pgcore.policy import atomic_directory

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer():
    """A byte-level tokenizer: one token per byte (256) plus ``SPECIAL_TOKENS``.

    EOS is ``<|im_end|>``, BOS ``<|endoftext|>``; there is deliberately no pad token, so
    code paths for such tokenizers are exercised. Has a ChatML chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
    )


def write_tiny_model(out_dir: str | os.PathLike, *, seed: int = 0, **overrides) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` and its tokenizer as a Hugging Face folder.

    Hidden size 32, 2 layers, 4 heads (2 KV heads), vocabulary 259 (256 bytes + 3 special
    tokens), tied embeddings. The same ``seed`` gives byte-identical weights. Written
    atomically, like every pgcore model folder.

    Args:
        overrides: ``LlamaConfig`` fields that replace those above (e.g. ``hidden_size=512,
            num_hidden_layers=8`` for a benchmark's wider random model on the same tokenizer).

    Returns:
        ``Path(out_dir)``.

    Raises:
        TypeError: ``overrides`` names ``vocab_size`` or a special token id (they are the tokenizer's).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    fixed = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
             "eos_token_id": tokenizer.eos_token_id, "pad_token_id": None}
    if set(overrides) & set(fixed):
        raise TypeError(f"write_tiny_model: {sorted(set(overrides) & set(fixed))} come from the tokenizer")
    defaults = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True,
                "initializer_range": 0.3}
    config = LlamaConfig(**fixed, **{**defaults, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float()
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
