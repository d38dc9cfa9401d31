"""The inference process's batching engine: one model per project, continuous batching per version.

Imports torch; only the inference process (``manage.py serve_inference``) imports this module,
never a web process. Requests are sampled by pgcore's continuous batching
(:func:`pgcore.rollout.sample_continuous`): the first request of a run waits ``window_s`` (a
few milliseconds) for others sent at the same moment, then the run decodes one token per
step for up to ``max_batch`` rows, and a request arriving while it runs joins at the next
step (it is prefilled into a free slot, or waits for one) instead of waiting for the batch
to finish (Yu et al. 2022, "Orca"). Prefills go first, in order of arrival. A request the
inference process has let in (its body read, its token and rate checked) but is still
tokenizing is announced (:meth:`Engine.arrival`), and the next step waits for it (at most
``hold_s``, and only while the run has a free row), so requests sent
together share one prefill: one that missed a prefill by a few milliseconds would otherwise
wait for all of it and then for its own (the late first tokens of ``bench/serve.py``'s
timeline at 16 clients). Its ``draw`` hook applies each request's temperature,
top-p and seed; its ``on_step`` hook streams each token to its request and stops rows early
(a stop sequence, a client gone); each row ends at its request's own ``max_tokens``.

Version switch: a poller reads each project's served version from the database every
``poll_s`` seconds; a newly promoted version is loaded beside the old one. A run samples one
model version: it admits new requests for its own version only, and stops admitting once a
request for another version waits, so it drains (no request in flight is dropped or changes
version half-way) and the next run starts with the new version.

Prefix caching: every chat request begins with the chat template's tokens (SmolLM2's default
system prompt and the user header, 24 tokens). Each loaded version keeps their keys and
values, computed from its own weights when it is loaded (:class:`pgcore.prefix_cache.PrefixCache`),
and a run prefills only each request's own tokens after them; a newly promoted version brings
its own, so a switch never reuses the old weights' prefix.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pgcore.precision import select_device
from pgcore.prefix_cache import PrefixCache, chat_prefix_ids
from pgcore.rollout import draw_tokens, eos_token_ids, fast_path_supported, sample_continuous, sampling_dtype, sampling_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings (validated by the caller).

    Attributes:
        max_tokens: cap on each choice's completion tokens, >= 1.
        temperature: softmax temperature, >= 0; 0 is greedy (argmax).
        top_p: nucleus sampling mass in (0, 1] (Holtzman et al. 2020).
        n: choices per request (each its own row of the batch).
        seed: seeds this request's draws (choice ``i`` uses ``seed + i``); best effort, as
            the batch it shares can change the last bits of the logits.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None

    @property
    def plain(self) -> bool:
        """Temperature 1, no nucleus, no seed: pgcore's own draw, the exact behaviour distribution."""
        return self.temperature == 1.0 and self.top_p >= 1.0 and self.seed is None


@dataclass
class Loaded:
    """A model version ready to sample: its sampling copy, tokenizer, EOS ids and its prefix cache."""

    version_id: int
    version_number: int
    model: torch.nn.Module
    tokenizer: object
    eos_ids: set[int]
    context_limit: int
    prefix: PrefixCache | None = None  # the chat template's shared prefix under this version's weights


@dataclass
class Request:
    """One generation request: ``n`` rows of a batch sharing a prompt.

    The engine puts on ``events``: ``("start", Loaded)`` when its batch starts, ``("token",
    index, token_id)`` for each token of choice ``index``, ``("end", index, info)`` per choice
    (``info``: ``token_ids``, ``logprobs``, ``finished`` at EOS), and ``("error", message)``.
    The reader may add a choice's index to ``stop_choices`` (its stop sequence appeared) or
    set ``cancelled`` (the client left); the engine stops those rows at its next step.

    Its timeline (``time.monotonic()`` seconds, None until reached; :meth:`Engine.timeline`):
    ``received_at`` (set by the caller: when its HTTP request came in), ``submitted_at``,
    ``admitted_at`` (taken into a run), ``first_token_at`` (its first token drawn, any
    choice), ``ended_at`` (its last choice ended); ``submit_step`` and ``first_token_step``
    count the engine's steps (:attr:`Engine.steps_run`) then, so their difference is its time
    to first token in steps, which the machine's load does not stretch; ``received_cpu`` and
    ``first_token_cpu`` are the process's CPU time (``time.process_time()``, all threads) then.
    Once it ends, a summary of these (no prompt, no queue) joins the timeline (:meth:`Engine.timeline`).
    """

    key: str
    prompt_ids: list[int]
    params: SamplingParams
    events: queue.Queue = field(default_factory=queue.Queue)
    stop_choices: set[int] = field(default_factory=set)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)
    received_at: float | None = None
    admitted_at: float | None = None
    first_token_at: float | None = None
    ended_at: float | None = None
    submit_step: int = 0
    first_token_step: int | None = None
    received_cpu: float | None = None
    first_token_cpu: float | None = None
    open_choices: int = 0
    tag: str | None = None  # the caller's id for it (the web app's answer id), shown in the timeline


class Arrival:
    """A request the caller has let in (token and rate checked) and is still tokenizing (:meth:`Engine.arrival`).

    While it is open, the engine's next prefill waits for it (at most ``hold_s`` after ``at``),
    so it joins that prefill instead of waiting for it to end and then for one of its own; once
    its model version is known (:meth:`for_version`), only a prefill for that version waits.
    Closed by :meth:`Engine.submit` (``arrival=``) or on leaving its ``with`` block (a refusal, e.g. an unknown model).
    """

    def __init__(self, engine: Engine):
        self.engine, self.at, self.at_cpu, self.open = engine, time.monotonic(), time.process_time(), True
        self.key: str | None = None  # its model version (as Request.key), None until known

    def for_version(self, version_id: int) -> None:
        """Its request is for ``version_id``: a run of another version no longer waits for it."""
        with self.engine._cv:
            self.key = str(version_id)
            self.engine._cv.notify_all()

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc) -> None:
        self.engine._arrived(self)


class Engine:
    """Collects requests, batches them per model version, samples, streams.

    Args:
        load: ``load(version_id) -> (Policy, version number)`` (outside any lock).
        window_s: how long the first request of a batch waits for others, seconds.
        max_batch: rows per forward batch.
        precision, device: as :func:`pgcore.rollout.generate`.
        prefix_cache: keep the keys and values of the chat template's shared prefix per
            version (:mod:`pgcore.prefix_cache`), so a chat request's prefill runs over its
            own tokens only.
        timeline_len: steps and ended requests kept for :meth:`timeline` (the latest of each,
            a ring buffer: the oldest goes as a new one comes), >= 1.
        hold_s: the longest a prefill waits for a request still being received (an open
            :meth:`arrival`), counted from that request's arrival, seconds; 0: never waits.
            A running batch with no free row never waits.
    """

    def __init__(self, *, load: Callable, window_s: float = 0.005, max_batch: int = 32,
                 precision: str = "auto", device: str | None = None, max_loaded: int = 3, prefix_cache: bool = True,
                 timeline_len: int = 4096, hold_s: float = 0.25):
        if timeline_len < 1:
            raise ValueError(f"timeline_len must be >= 1, not {timeline_len}")
        self.load = load
        self.prefix_cache = prefix_cache
        self.window_s, self.max_batch, self.max_loaded, self.hold_s = window_s, max_batch, max_loaded, hold_s
        self._arrivals: set[Arrival] = set()  # open ones (guarded by _cv)
        self.device = select_device(device)
        self.dtype = sampling_dtype(precision, self.device)
        self._loaded: dict[int, Loaded] = {}  # version id -> Loaded
        self._load_lock = threading.Lock()  # guards the dict
        self._loading = threading.Lock()  # one load at a time: two requests never load one version twice
        self._pending: list[Request] = []
        self._cv = threading.Condition()
        self._stopping = False
        self.batches_run = 0
        self.rows_run = 0
        self.tokens_run = 0  # tokens sampled, every row of every batch
        self.steps_run = 0  # forwards (a prefill or a decoding step), every run
        self._steps: deque = deque(maxlen=timeline_len)  # (start, end, kind, rows) of the latest steps
        self._requests: deque = deque(maxlen=timeline_len)  # summaries of the latest requests ended (dicts)
        self._thread = threading.Thread(target=self._loop, name="inference-engine", daemon=True)
        self._thread.start()

    # --- models ---------------------------------------------------------------------------

    def loaded(self, version_id: int) -> Loaded:
        """The version's sampling copy, loading it on first use (at most ``max_loaded`` kept)."""
        with self._load_lock:
            if version_id in self._loaded:
                return self._loaded[version_id]
        with self._loading:
            with self._load_lock:
                if version_id in self._loaded:  # loaded while this thread waited
                    return self._loaded[version_id]
            return self._load(version_id)

    def _load(self, version_id: int) -> Loaded:
        policy, number = self.load(version_id)
        model = sampling_model(policy, dtype=self.dtype, device=self.device)
        if not fast_path_supported(model):
            raise ValueError("the inference process samples Llama-family models only (pgcore's fast path)")
        limit = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        item = Loaded(version_id, number, model, policy.tokenizer, eos_token_ids(policy), limit)
        if self.prefix_cache:
            item.prefix = PrefixCache(chat_prefix_ids(policy.tokenizer))
            if item.prefix.prefix_ids:  # computed now, so the first requests do not wait for it
                item.prefix.keys_values(model.model, model.lm_head, policy.tokenizer.pad_token_id, self.device, self.dtype)
        with self._load_lock:
            self._loaded[version_id] = item
            while len(self._loaded) > self.max_loaded:
                self._loaded.pop(next(iter(self._loaded)))  # the oldest; a running batch keeps its own ref
        return item

    # --- requests -------------------------------------------------------------------------

    def arrival(self) -> Arrival:
        """Announce a request that is being received (its caller let in, its prompt being tokenized);
        use as ``with engine.arrival() as a: ... engine.submit(..., arrival=a)``.

        The engine's next prefill waits for open arrivals, each at most ``hold_s`` after it was
        announced, so requests sent together share one prefill step; a request that missed a
        prefill by a few milliseconds would otherwise wait for all of it and then for its own.
        """
        arrival = Arrival(self)
        with self._cv:
            self._arrivals.add(arrival)
        return arrival

    def _arrived(self, arrival: Arrival) -> None:
        with self._cv:
            if arrival.open:
                arrival.open = False
                self._arrivals.discard(arrival)
                self._cv.notify_all()

    def _hold(self, key: str) -> None:
        """Wait while an open arrival that may be for version ``key`` (its version ``key`` or not
        known yet) is younger than ``hold_s`` (it is about to be submitted), ``hold_s`` at most
        in all (arrivals that keep coming never stall a run for longer)."""
        cap = time.monotonic() + self.hold_s
        with self._cv:
            while not self._stopping:
                now = time.monotonic()
                until = min(cap, max((a.at + self.hold_s for a in self._arrivals if a.key in (None, key)), default=now))
                if until <= now:
                    return
                self._cv.wait(until - now)

    def submit(self, version_id: int, prompt_ids: list[int], params: SamplingParams, *,
               arrival: Arrival | None = None, tag: str | None = None) -> Request:
        """Queue a request for a model version (loaded with :meth:`loaded` first); returns at once.

        ``arrival``: its :meth:`arrival`, closed here; its time is the request's ``received_at``.
        ``tag``: the caller's id for it, shown as ``id`` in :meth:`timeline`.
        """
        request = Request(key=str(version_id), prompt_ids=prompt_ids, params=params,
                          received_at=None if arrival is None else arrival.at, submit_step=self.steps_run,
                          received_cpu=None if arrival is None else arrival.at_cpu, tag=tag)
        with self._cv:
            self._pending.append(request)
            if arrival is not None:
                self._arrived(arrival)  # re-enters _cv (a Condition's default lock is an RLock)
            self._cv.notify_all()
        return request

    def timeline(self, since: float = 0.0) -> dict:
        """The latest steps and requests (at most ``timeline_len`` each) that ended after ``since``.

        Returns ``{"steps": [{"start", "end", "kind", "rows"}], "requests": [{"id", "received",
        "submitted", "admitted", "first_token", "end", "steps_to_first_token",
        "cpu_to_first_token", "prompt_tokens", "max_tokens", "n"}]}``: times are ``time.monotonic()`` seconds
        (one clock for every process of the machine on Linux); ``kind`` is ``"prefill"``
        (``rows`` prompts prefilled) or ``"decode"`` (``rows`` slots decoded). Requests in
        order of admission, ended ones only (a run that failed leaves its requests out);
        ``id``: the caller's ``tag`` (:meth:`submit`), else None. ``cpu_to_first_token``: CPU
        seconds this process spent (every thread: the engine's, the other requests' handlers)
        from the request's arrival to its first token, a time to first token the machine's
        load stretches much less than the wall time (None without an arrival).
        """
        steps = [{"start": s, "end": e, "kind": k, "rows": r} for s, e, k, r in list(self._steps) if e >= since]
        requests = sorted((r for r in list(self._requests) if r["end"] >= since), key=lambda r: r["admitted"])
        return {"steps": steps, "requests": requests}

    def _ended(self, request: Request, at: float) -> None:
        """``request`` ended at ``at``: its summary joins the timeline (the oldest leaves when full)."""
        request.ended_at = at
        r = request
        self._requests.append({
            "id": r.tag, "received": r.received_at, "submitted": r.submitted_at, "admitted": r.admitted_at,
            "first_token": r.first_token_at, "end": r.ended_at,
            "steps_to_first_token": None if r.first_token_step is None else r.first_token_step - r.submit_step,
            "cpu_to_first_token": None if None in (r.received_cpu, r.first_token_cpu)
            else r.first_token_cpu - r.received_cpu,
            "prompt_tokens": len(r.prompt_ids), "max_tokens": r.params.max_tokens, "n": r.params.n,
        })

    def _step_done(self, kind: str, rows: int, start: float, end: float) -> None:
        self.steps_run += 1
        self._steps.append((start, end, kind, rows))

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def _take_batch(self) -> list[Request]:
        with self._cv:
            while not self._pending and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return []
            first = self._pending[0]
        delay = first.submitted_at + self.window_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # let the requests sent at the same moment share the first prefill
        self._hold(first.key)
        return self._admit(first.key)

    def _admit(self, key: str, hold: bool = False) -> list[Request]:
        """Pending requests for version ``key``, in order, up to the first for another version;
        ``hold``: first wait for the requests being received (:meth:`_hold`)."""
        if hold:
            self._hold(key)
        with self._cv:
            if self._stopping:
                return []
            taken = 0
            while taken < len(self._pending) and self._pending[taken].key == key:
                taken += 1
            batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    def _loop(self) -> None:
        while self._run_next():
            pass

    def _run_next(self) -> bool:
        """Wait for a batch and sample it with the requests that join it; False once stopping.
        (Its own frame: the engine keeps no ended request while it waits for the next.)"""
        batch = self._take_batch()
        if not batch:
            return False
        joined = list(batch)
        try:
            self._run(batch, joined)
        except Exception as exc:  # a bad run fails its requests, never the process
            log.exception("inference batch failed")
            for request in joined:
                request.events.put(("error", f"generation failed: {exc}"))
        return True

    @torch.no_grad()
    def _run(self, batch: list[Request], joined: list[Request]) -> None:
        """Samples ``batch`` and every request for its version that arrives while it runs.

        ``joined`` collects the requests admitted (so a failure reaches each of them).
        """
        key = batch[0].key
        item = self.loaded(int(key))
        rows: list[tuple[Request, int]] = []  # prompt index in the run -> (request, choice index)
        shared = torch.Generator(device=self.device)
        shared.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        draw = _RowDraw(self.device, shared)
        first = [batch]
        ended = [0]  # rows yielded back (their slots are free again)

        def incoming():
            # Wait for requests being received only if one could be prefilled at this step: a row is free.
            requests = first.pop() if first else self._admit(key, hold=len(rows) - ended[0] < self.max_batch)
            if requests is not batch:
                joined.extend(requests)
            new = []
            now = time.monotonic()
            for request in requests:
                request.admitted_at = now
                if len(request.prompt_ids) >= item.context_limit:
                    self._ended(request, now)
                    request.events.put(("error", f"the prompt has {len(request.prompt_ids)} tokens; "
                                                 f"this model's context is {item.context_limit}"))
                    continue
                request.events.put(("start", item))
                request.open_choices = request.params.n
                for index in range(request.params.n):
                    rows.append((request, index))
                    draw.add(request.params, index)
                    new.append((request.prompt_ids, request.params.max_tokens))
            self.rows_run += len(new)
            return new

        def on_step(row_ids, tokens, emitted):
            stop = []
            self.tokens_run += len(tokens)
            for r, token, was_emitted in zip(row_ids.tolist(), tokens.tolist(), emitted.tolist()):
                request, index = rows[r]
                if request.first_token_at is None:
                    request.first_token_at, request.first_token_step = time.monotonic(), self.steps_run + 1
                    request.first_token_cpu = time.process_time()
                if was_emitted:
                    request.events.put(("token", index, token))
                stop.append(request.cancelled.is_set() or index in request.stop_choices)
            return torch.tensor(stop, dtype=torch.bool)

        self.batches_run += 1
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        for r, ids, lps, done in sample_continuous(
            item.model, [], eos_ids=item.eos_ids, pad_id=item.tokenizer.pad_token_id, max_new_tokens=1,
            generator=generator, batch_size=self.max_batch, refill_fraction=1.0 / self.max_batch,
            draw=draw, on_step=on_step, incoming=incoming, prefix=item.prefix, on_forward=self._step_done,
        ):
            ended[0] += 1
            request, index = rows[r]
            request.open_choices -= 1
            if request.open_choices == 0:
                self._ended(request, time.monotonic())
            request.events.put(("end", index, {"token_ids": ids, "logprobs": lps, "finished": bool(done)}))


class _RowDraw:
    """A ``draw`` hook for :func:`pgcore.rollout.sample_continuous` with per-row temperature, top-p, seed.

    Rows are added as requests join the run (:meth:`add`, in prompt-index order). Each row's
    distribution is ``softmax(logits / T)`` restricted to its top-p nucleus and renormalised;
    the recorded logprob is that of the token under this processed distribution (0 for greedy
    rows), so a production completion's behaviour logprobs are those it was sampled with
    (DESIGN.md, "Behaviour logprobs must match what was sampled"). Plain rows (temperature 1,
    no nucleus, no seed) draw from the model's own log-softmax, as pgcore's default draw does.
    """

    def __init__(self, device, shared: torch.Generator):
        self.device, self.shared = device, shared
        self.temperature: list[float] = []
        self.top_p: list[float] = []
        self.plain: list[bool] = []
        self.seeded: dict[int, torch.Generator] = {}

    def add(self, params: SamplingParams, choice_index: int) -> None:
        r = len(self.temperature)
        self.temperature.append(params.temperature)
        self.top_p.append(params.top_p)
        self.plain.append(params.plain)
        if params.seed is not None:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(params.seed) + choice_index)
            self.seeded[r] = g

    def __call__(self, logp, rows):  # logp (b, V) fp32 log-softmax at temperature 1; rows (b,)
        row_list = rows.tolist()
        if all(self.plain[r] for r in row_list):
            tokens = draw_tokens(logp, self.shared, False)
            return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
        t = torch.tensor([self.temperature[r] for r in row_list], device=logp.device)
        p = torch.tensor([self.top_p[r] for r in row_list], device=logp.device)
        plain = torch.tensor([self.plain[r] for r in row_list], device=logp.device)
        g = t == 0
        scaled = torch.log_softmax(logp / t.clamp(min=1e-4)[:, None], dim=-1)  # (b, V)
        if bool((p < 1).any()):
            sorted_lp, order = scaled.sort(dim=-1, descending=True)
            probs = sorted_lp.exp()
            outside = (probs.cumsum(-1) - probs) >= p[:, None]  # the top token always stays in
            sorted_lp = sorted_lp.masked_fill(outside, float("-inf"))
            scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, sorted_lp)
            scaled = torch.log_softmax(scaled, dim=-1)
        scaled = torch.where(plain[:, None], logp, scaled)
        tokens = draw_tokens(scaled, self.shared, False)  # (b,)
        for position, r in enumerate(row_list):
            if r in self.seeded:
                tokens[position] = draw_tokens(scaled[position : position + 1], self.seeded[r], False)[0]
        tokens = torch.where(g, logp.argmax(dim=-1), tokens)
        token_logp = scaled.gather(1, tokens[:, None]).squeeze(1).masked_fill(g, 0.0)
        return tokens, token_logp
