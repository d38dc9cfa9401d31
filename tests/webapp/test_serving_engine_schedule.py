"""The inference engine's scheduling: when a request's first token comes, counted in engine steps.

The engine runs in-process on the tiny model (no database, no HTTP): requests are submitted as
the inference process's handlers submit them, and :meth:`Engine.timeline` tells which step
gave each its first token. Steps, not seconds, so a loaded machine does not change the answers.
"""

from __future__ import annotations

import time

import pytest
import torch

from pgcore.policy import load_policy
from pgcore.rollout import eos_token_ids, render_prompt, sample_continuous
from webapp.serving.engine import Engine, SamplingParams

TEXTS = [f"request number {i} about films" for i in range(16)]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(tiny_model_dir)


def _engine(policy, **kwargs) -> Engine:
    engine = Engine(load=lambda version_id: (policy, version_id), precision="fp32", **kwargs)
    engine.loaded(1)
    return engine


def _first_event(request, kind="token"):
    while (event := request.events.get(timeout=60))[0] != kind:
        assert event[0] != "error", event
    return event


def _finish(request):
    return _first_event(request, "end")[2]["token_ids"]


def _alone(policy, ids, max_tokens):
    """Greedy tokens of one prompt sampled on its own (no engine, no prefix cache)."""
    out = sample_continuous(policy.model, [ids], eos_ids=eos_token_ids(policy), pad_id=policy.tokenizer.pad_token_id,
                            max_new_tokens=max_tokens, generator=torch.Generator(), greedy=True, batch_size=1)
    return next(iter(out))[1]


def _admission_wait(engine, ids, params) -> float:
    """Seconds a request for version 1 waited from its submission to its admission into a run."""
    request = engine.submit(1, ids, params)
    _finish(request)
    return request.admitted_at - request.submitted_at


def _steps(timeline, kind):
    return [s["rows"] for s in timeline["steps"] if s["kind"] == kind]


def test_a_request_arriving_while_15_stream_gets_its_first_token_at_the_next_step_with_its_own_tokens(policy):
    engine = _engine(policy, hold_s=0.0)
    try:
        long = SamplingParams(max_tokens=600, temperature=0.0)
        running = [engine.submit(1, render_prompt(policy.tokenizer, t), long) for t in TEXTS[:15]]
        for request in running:
            _first_event(request)  # all 15 stream
        steps_before = engine.steps_run
        ids = render_prompt(policy.tokenizer, TEXTS[15])
        late = engine.submit(1, ids, SamplingParams(max_tokens=8, temperature=0.0))
        tokens = _finish(late)
        for request in running:
            request.cancelled.set()
            _finish(request)
        timeline = engine.timeline()
        late_row = next(r for r in timeline["requests"] if r["prompt_tokens"] == len(ids) and r["max_tokens"] == 8)
        # the step running when it came in, then its own prefill: never behind the 15 rows' decoding
        assert late_row["steps_to_first_token"] <= 2
        assert all(r["end"] > late_row["first_token"] for r in timeline["requests"] if r["max_tokens"] == 600)
        assert engine.steps_run - steps_before < 600  # the long rows were still running (cancelled above)
        assert tokens == _alone(policy, ids, 8)
    finally:
        engine.close()


def _burst(policy, hold_s):
    """15 requests at once, and a 16th submitted 0.3 s later that was announced (being received) with them."""
    engine = _engine(policy, window_s=0.005, hold_s=hold_s)
    try:
        params = SamplingParams(max_tokens=6, temperature=0.0)
        prompts = [render_prompt(policy.tokenizer, t) for t in TEXTS]
        with engine.arrival() as arrival:
            requests = [engine.submit(1, ids, params) for ids in prompts[:15]]
            time.sleep(0.3)  # the 16th is still being checked and tokenized
            requests.append(engine.submit(1, prompts[15], params, arrival=arrival))
        tokens = [_finish(r) for r in requests]
        return tokens, engine.timeline()
    finally:
        engine.close()


def test_a_request_still_being_received_joins_the_prefill_of_those_sent_with_it(policy):
    held_tokens, held = _burst(policy, hold_s=30.0)
    assert _steps(held, "prefill") == [16]  # one prefill for all 16
    assert [r["steps_to_first_token"] for r in held["requests"]] == [1] * 16
    assert held["requests"][15]["received"] < held["requests"][0]["submitted"]

    plain_tokens, plain = _burst(policy, hold_s=0.0)  # the engine before: it prefills the 15 without waiting
    assert _steps(plain, "prefill")[0] == 15
    assert held_tokens == plain_tokens  # the same greedy tokens either way
    assert plain_tokens[15] == _alone(policy, render_prompt(policy.tokenizer, TEXTS[15]), 6)


def test_an_open_arrival_holds_a_step_at_most_hold_s_and_a_closed_one_not_at_all(policy):
    engine = _engine(policy, window_s=0.0, hold_s=0.5)
    params = SamplingParams(max_tokens=2, temperature=0.0)
    ids = render_prompt(policy.tokenizer, TEXTS[0])
    try:
        stuck = engine.arrival()  # e.g. a handler still reading a slow body
        assert 0.5 - 0.02 <= _admission_wait(engine, ids, params) < 10  # held, and only for hold_s
        with stuck:  # its handler answers (a refusal): closed
            pass
        engine.hold_s = 30.0
        with engine.arrival():  # another refusal
            pass
        later = engine.submit(1, ids, params)
        assert _finish(later) == _finish(engine.submit(1, ids, params))
        assert later.admitted_at - later.submitted_at < 10  # nothing open: no wait (30 s if it waited)
    finally:
        engine.close()


def test_a_full_batch_never_holds_a_step_for_an_open_arrival(policy):
    engine = _engine(policy, window_s=0.0, hold_s=30.0, max_batch=2)
    long = SamplingParams(max_tokens=600, temperature=0.0)
    try:
        running = [engine.submit(1, render_prompt(policy.tokenizer, t), long) for t in TEXTS[:2]]
        for request in running:
            _first_event(request)  # both rows stream: no row is free
        with engine.arrival():  # a request being received, which no step could prefill
            before, deadline = engine.steps_run, time.monotonic() + 10
            while engine.steps_run < before + 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.steps_run >= before + 20  # the steps went on (each would wait 30 s for it)
        for request in running:
            request.cancelled.set()
            _finish(request)
    finally:
        engine.close()


def test_an_open_arrival_for_another_version_never_holds_a_step_and_one_for_its_version_does(policy):
    engine = _engine(policy, window_s=0.0, hold_s=30.0)
    engine.loaded(2)  # a second project's served version
    params = SamplingParams(max_tokens=2, temperature=0.0)
    ids = render_prompt(policy.tokenizer, TEXTS[0])
    try:
        with engine.arrival() as other:  # a request for version 2, still being tokenized
            other.for_version(2)
            assert _admission_wait(engine, ids, params) < 10  # not held (30 s if it were)
        engine.hold_s = 0.5
        with engine.arrival() as same:
            same.for_version(1)
            assert 0.5 - 0.02 <= _admission_wait(engine, ids, params) < 10  # held for it
    finally:
        engine.close()


def test_the_timeline_keeps_the_latest_ended_requests_and_steps_and_lets_the_requests_go(policy):
    import gc
    import weakref

    engine = _engine(policy, window_s=0.0, hold_s=0.0, timeline_len=3)
    params = SamplingParams(max_tokens=2, temperature=0.0)
    try:
        refs = []
        for i in range(5):  # one after the other: five runs
            request = engine.submit(1, render_prompt(policy.tokenizer, TEXTS[i]), params, tag=f"r{i}")
            _finish(request)
            while request.ended_at is None:
                time.sleep(0.01)
            refs.append(weakref.ref(request))
            del request
        timeline = engine.timeline()
        assert [r["id"] for r in timeline["requests"]] == ["r2", "r3", "r4"]
        assert len(timeline["steps"]) == 3 and engine.steps_run >= 5
        # the timeline keeps a summary, not the request (its prompt, its queue): once the engine
        # waits for the next request, no ended request is kept
        deadline = time.monotonic() + 10
        while any(ref() is not None for ref in refs) and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert [ref() is None for ref in refs] == [True] * 5
    finally:
        engine.close()
