"""The inference engine's prefix cache: each loaded version keeps the chat prefix of its own weights.

The engine runs in-process here (no database): ``load`` hands it two versions of the tiny
model, the second with changed weights, as a promotion would.
"""

from __future__ import annotations

import pytest
import torch

from pgcore.policy import load_policy
from pgcore.rollout import eos_token_ids, render_prompt, sample_continuous
from webapp.serving.engine import Engine, SamplingParams

TEXTS = ["hello there", "a longer question about films", "ok"]


@pytest.fixture
def versions(tiny_model_dir):
    """Version 1: the tiny model; version 2: the same with its first layer's weights scaled."""
    first, second = load_policy(tiny_model_dir), load_policy(tiny_model_dir)
    with torch.no_grad():
        for p in second.model.model.layers[0].parameters():
            p.mul_(1.5)
    return {1: first, 2: second}


@pytest.fixture
def engine(versions):
    engine = Engine(load=lambda version_id: (versions[version_id], version_id), precision="fp32", window_s=0.05)
    yield engine
    engine.close()


def _greedy(engine, version_id, prompts):
    requests = [engine.submit(version_id, ids, SamplingParams(max_tokens=6, temperature=0.0)) for ids in prompts]
    out = []
    for request in requests:
        while (event := request.events.get(timeout=60))[0] != "end":
            assert event[0] != "error", event
        out.append(event[2]["token_ids"])
    return out


def _greedy_without_cache(policy, prompts):
    out = sample_continuous(policy.model, prompts, eos_ids=eos_token_ids(policy), pad_id=policy.tokenizer.pad_token_id,
                            max_new_tokens=6, generator=torch.Generator(), greedy=True, batch_size=len(prompts))
    return [ids for _, ids, _, _ in sorted(out)]


def test_a_version_switch_brings_the_new_versions_prefix_and_its_answers(engine, versions):
    prompts = [render_prompt(versions[1].tokenizer, t) for t in TEXTS]
    old, new = engine.loaded(1), engine.loaded(2)
    assert old.prefix is not new.prefix
    assert old.prefix.cached_for(old.model.model) and not old.prefix.cached_for(new.model.model)
    assert new.prefix.cached_for(new.model.model)  # computed at load, from the new weights
    assert not torch.equal(old.prefix.keys_values(old.model.model, old.model.lm_head, 0, "cpu", torch.float32)[0][0],
                           new.prefix.keys_values(new.model.model, new.model.lm_head, 0, "cpu", torch.float32)[0][0])

    assert _greedy(engine, 1, prompts) == _greedy_without_cache(versions[1], prompts)
    assert _greedy(engine, 2, prompts) == _greedy_without_cache(versions[2], prompts)
    assert _greedy(engine, 2, prompts) != _greedy(engine, 1, prompts)
    assert (old.prefix.hits, new.prefix.hits) == (6, 6) and (old.prefix.builds, new.prefix.builds) == (1, 1)


def test_the_prefix_cache_can_be_turned_off(versions):
    engine = Engine(load=lambda version_id: (versions[version_id], version_id), precision="fp32", prefix_cache=False)
    try:
        assert engine.loaded(1).prefix is None
        prompts = [render_prompt(versions[1].tokenizer, t) for t in TEXTS]
        assert _greedy(engine, 1, prompts) == _greedy_without_cache(versions[1], prompts)
    finally:
        engine.close()
