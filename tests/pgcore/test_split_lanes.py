"""The batch split across CPU lanes (pgcore.rollout.sample_split, generate(..., lanes=N)) against one lane.

Each lane is its own sample_continuous in its own thread at one intra-op thread, so a
split run must give every prompt what one batch gives it (greedy tokens, exact behaviour
logprobs), whatever lane the prompt lands in.
"""

import threading

import pytest
import torch
from torch.testing import assert_close

from pgcore.rollout import eos_token_ids, generate, generate_stream, render_prompt, sample_split, sampling_model, split_lanes
from test_continuous_batching import EOS, PROMPTS, eos_prone  # noqa: F401  (the fixture: +4 on the EOS logit)


def _split_kwargs(policy, **extra):
    return dict(eos_ids=eos_token_ids(policy), pad_id=EOS, max_new_tokens=6, **extra)


def test_split_greedy_tokens_and_logprobs_equal_one_lanes(eos_prone):
    prompts = PROMPTS * 3
    one = generate(eos_prone, prompts, max_new_tokens=12, greedy=True, precision="fp32", batch_size=4, lanes=1)
    two = generate(eos_prone, prompts, max_new_tokens=12, greedy=True, precision="fp32", batch_size=4, lanes=2)
    assert [r.completion_ids for r in two] == [r.completion_ids for r in one]
    assert [r.finished for r in two] == [r.finished for r in one]
    assert any(r.finished for r in two) and any(not r.finished for r in two)  # stop tokens and the cap both ended rows
    for a, b in zip(two, one):
        assert a.prompt_ids == b.prompt_ids
        assert_close(torch.tensor(a.behaviour_logprobs), torch.tensor(b.behaviour_logprobs), atol=1e-5, rtol=1e-5)
        if a.finished:
            assert a.completion_ids[-1] == EOS and EOS not in a.completion_ids[:-1]


def test_split_sampled_behaviour_logprobs_equal_the_trainers(eos_prone):
    from test_continuous_batching import _trainer_logprobs

    rollouts = generate(eos_prone, PROMPTS * 3, max_new_tokens=10, seed=5, precision="fp32", batch_size=4, lanes=2)
    for r, trainer in zip(rollouts, _trainer_logprobs(eos_prone, rollouts)):
        assert_close(torch.tensor(r.behaviour_logprobs), trainer, atol=1e-5, rtol=1e-5)


def test_a_seed_reproduces_a_split_run_and_another_seed_changes_it(frozen_policy):
    def run(seed):
        rows = generate(frozen_policy, PROMPTS * 2, max_new_tokens=8, seed=seed, precision="fp32", batch_size=4, lanes=2)
        return [r.completion_ids for r in rows]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_a_prompt_at_the_context_limit_and_an_empty_prompt_in_a_split_run(frozen_policy):
    from test_generation_paths import _hf_greedy, _prompt_of

    limit = frozen_policy.model.config.max_position_embeddings
    at_limit = _prompt_of(frozen_policy, limit - 1)
    prompts = [at_limit, "hi", "", at_limit, "mid length"]
    rows = generate(frozen_policy, prompts, max_new_tokens=6, greedy=True, precision="fp32", batch_size=4, lanes=2)
    assert [len(rows[i].completion_ids) for i in (0, 3)] == [1, 1] and not rows[0].finished
    assert [r.completion_ids for r in rows] == _hf_greedy(frozen_policy, prompts[:1], 1) + _hf_greedy(
        frozen_policy, prompts[1:3], 6
    ) + _hf_greedy(frozen_policy, prompts[3:4], 1) + _hf_greedy(frozen_policy, prompts[4:], 6)
    with pytest.raises(ValueError, match="context limit"):
        generate(frozen_policy, [_prompt_of(frozen_policy, limit)], max_new_tokens=2, lanes=2)
    model = sampling_model(frozen_policy, dtype=torch.float32)
    gens = [torch.Generator(), torch.Generator()]
    with pytest.raises(ValueError, match="has no tokens"):  # raised from its lane on the caller's thread
        list(sample_split(model, [[1, 2], []], lanes=2, batch_size=2, generators=gens, **_split_kwargs(frozen_policy)))


def test_fewer_prompts_or_rows_than_lanes(frozen_policy):
    one = generate(frozen_policy, ["hi"], max_new_tokens=6, greedy=True, precision="fp32", batch_size=1, lanes=1)
    for batch_size, lanes in ((1, 2), (4, 3), (4, 4)):
        rows = generate(frozen_policy, ["hi"], max_new_tokens=6, greedy=True, precision="fp32", batch_size=batch_size, lanes=lanes)
        assert [r.completion_ids for r in rows] == [r.completion_ids for r in one]
    assert generate(frozen_policy, [], max_new_tokens=4, lanes=2) == []
    model = sampling_model(frozen_policy, dtype=torch.float32)
    with pytest.raises(ValueError, match="lanes"):
        list(sample_split(model, [[1, 2]], lanes=3, batch_size=2, generators=[torch.Generator()] * 3,
                          **_split_kwargs(frozen_policy)))
    with pytest.raises(ValueError, match="lanes"):
        generate(frozen_policy, ["hi"], max_new_tokens=2, lanes=0)


def test_lanes_run_at_one_thread_in_their_own_threads_and_leave_the_callers_setting(frozen_policy):
    model = sampling_model(frozen_policy, dtype=torch.float32)
    seen = set()
    hook = model.lm_head.register_forward_hook(
        lambda *_: seen.add((threading.current_thread().name, torch.get_num_threads()))
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ids = [render_prompt(frozen_policy.tokenizer, t) for t in PROMPTS]
        out = list(sample_split(model, ids, lanes=2, batch_size=4, generators=[torch.Generator(), torch.Generator()],
                                **_split_kwargs(frozen_policy)))
        assert torch.get_num_threads() == 2
        assert seen == {("pgcore-lane-0", 1), ("pgcore-lane-1", 1)}
        assert sorted(i for i, *_ in out) == list(range(len(PROMPTS)))
        fresh = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert fresh == [2]  # threads started later get the process default back
    finally:
        hook.remove()
        torch.set_num_threads(threads)


def test_closing_a_split_stream_stops_and_joins_its_lanes(frozen_policy):
    model = sampling_model(frozen_policy, dtype=torch.float32)  # the copy generate_stream() samples with (cached)
    forwards = []
    hook = model.lm_head.register_forward_hook(lambda *_: forwards.append(1))

    def stream():
        return generate_stream(frozen_policy, PROMPTS * 4, max_new_tokens=12, seed=0, precision="fp32", batch_size=4, lanes=2)

    try:
        assert len(list(stream())) == len(PROMPTS) * 4
        full = len(forwards)
        forwards.clear()
        frozen_policy.model.train()
        closed = stream()
        next(closed)
        closed.close()
        assert not [t for t in threading.enumerate() if t.name.startswith("pgcore-lane-")]
        after_close = len(forwards)
    finally:
        hook.remove()
    assert frozen_policy.model.training
    # the lanes stopped after their current step: a run to the end takes 7 rounds of 12 steps a lane
    assert after_close < full / 2, (after_close, full)


def test_a_split_stream_takes_prompts_that_arrive_on_the_callers_thread(eos_prone):
    first, later = PROMPTS[:3], ["late one", "another late prompt", "x" * 20]
    calls = []

    def incoming():
        calls.append(threading.current_thread())
        return later if len(calls) == 2 else []

    seen = dict(generate_stream(
        eos_prone, first, max_new_tokens=12, precision="fp32", batch_size=4, greedy=True, incoming=incoming, lanes=2
    ))
    alone = generate(eos_prone, first + later, max_new_tokens=12, precision="fp32", batch_size=1, greedy=True, lanes=1)
    assert sorted(seen) == list(range(6))
    assert [seen[i].completion_ids for i in range(6)] == [r.completion_ids for r in alone]
    assert set(calls) == {threading.current_thread()}


def test_split_lanes_uses_the_threads_on_a_cpu_only_where_each_lane_gets_enough_rows():
    from pgcore import rollout

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cpu = torch.device("cpu")
        assert split_lanes(cpu, 2 * rollout.SPLIT_MIN_ROWS) == 2
        assert split_lanes(cpu, 2 * rollout.SPLIT_MIN_ROWS - 1) == 1
        assert split_lanes(torch.device("cuda"), 64) == 1
        torch.set_num_threads(1)
        assert split_lanes(cpu, 64) == 1
    finally:
        torch.set_num_threads(threads)


def test_by_default_a_batch_under_two_lanes_of_rows_is_sampled_on_the_callers_thread(frozen_policy):
    from pgcore import rollout

    model = sampling_model(frozen_policy, dtype=torch.float32)  # the copy generate() samples with (cached)
    seen = set()
    hook = model.lm_head.register_forward_hook(lambda *_: seen.add(threading.current_thread().name))
    try:
        generate(frozen_policy, PROMPTS * 8, max_new_tokens=2, seed=0, precision="fp32",
                 batch_size=2 * rollout.SPLIT_MIN_ROWS - 1)
    finally:
        hook.remove()
    assert seen == {threading.current_thread().name}


def test_an_incoming_prompt_keeps_its_own_cap_in_a_lane_with_a_larger_one(frozen_policy):
    model = sampling_model(frozen_policy, dtype=torch.float32)
    ids = [render_prompt(frozen_policy.tokenizer, t) for t in ("hi", "mid length", "ok", "a b c d e f g")]
    caps = [2, 9, 9, 3]  # lanes take prompts 0, 2 and 1, 3: each lane gets a small and a large cap at once
    calls = []

    def incoming():
        calls.append(1)
        return list(zip(ids, caps)) if len(calls) == 1 else []

    out = {
        i: completion
        for i, completion, _, _ in sample_split(
            model, [], lanes=2, batch_size=4, incoming=incoming, generators=[torch.Generator(), torch.Generator()],
            greedy=True, **_split_kwargs(frozen_policy),
        )
    }
    full = generate(frozen_policy, ["hi", "mid length", "ok", "a b c d e f g"], max_new_tokens=9, greedy=True,
                    precision="fp32", batch_size=4, lanes=1)
    assert [len(full[i].completion_ids) for i in (0, 3)] == [9, 9]  # the large cap gives them more tokens
    assert [out[i] for i in range(4)] == [r.completion_ids[:cap] for r, cap in zip(full, caps)]


def test_a_lane_that_fails_to_start_stops_the_lanes_started_and_restores_the_threads(frozen_policy, monkeypatch):
    model = sampling_model(frozen_policy, dtype=torch.float32)
    ids = [render_prompt(frozen_policy.tokenizer, t) for t in PROMPTS]
    start = threading.Thread.start

    def start_all_but_lane_1(self):
        if self.name == "pgcore-lane-1":
            raise RuntimeError("can't start new thread")
        start(self)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(threading.Thread, "start", start_all_but_lane_1)
        stream = sample_split(model, ids, lanes=3, batch_size=6, generators=[torch.Generator() for _ in range(3)],
                              **_split_kwargs(frozen_policy))
        with pytest.raises(RuntimeError, match="can't start new thread"):
            next(stream)
        monkeypatch.undo()
        lane_0 = [t for t in threading.enumerate() if t.name.startswith("pgcore-lane-")]
        for t in lane_0:
            t.join(timeout=5)
        assert not [t for t in lane_0 if t.is_alive()]  # not left waiting at the barrier
        fresh = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert torch.get_num_threads() == 2 and fresh == [2]
    finally:
        torch.set_num_threads(threads)
