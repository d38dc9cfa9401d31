"""The inference process's batching engine: one model per project, one forward pass per step for
every request that arrived together.

Imports torch; only the inference process (``manage.py serve_inference``) imports this module,
never a web process. Requests arriving within ``window_s`` of each other (a few milliseconds)
for the same model version are sampled as one left-padded batch by pgcore's sampler
(:func:`pgcore.rollout.sample_batch_fast`), whose ``draw`` hook applies each request's
temperature, top-p and seed and whose ``on_step`` hook streams each token to its request and
stops rows early (a stop sequence, a request's own ``max_tokens``, a client gone).

Version switch: a poller reads each project's served version from the database every
``poll_s`` seconds; a newly promoted version is loaded beside the old one and swapped in
between batches. A batch already running keeps the model it started with, so no request in
flight is dropped or changes version half-way; requests queued after the swap get the new one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pgcore.rollout import draw_tokens, eos_token_ids, fast_path_supported, sample_batch_fast, sampling_dtype, sampling_model

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
    """A model version ready to sample: its sampling copy, tokenizer and EOS ids."""

    version_id: int
    version_number: int
    model: torch.nn.Module
    tokenizer: object
    eos_ids: set[int]
    context_limit: int


@dataclass
class Request:
    """One generation request: ``n`` rows of a batch sharing a prompt.

    The engine puts on ``events``: ``("start", Loaded)`` when its batch starts, ``("token",
    index, token_id)`` for each token of choice ``index``, ``("end", index, info)`` per choice
    (``info``: ``token_ids``, ``logprobs``, ``finished`` at EOS), and ``("error", message)``.
    The reader may add a choice's index to ``stop_choices`` (its stop sequence appeared) or
    set ``cancelled`` (the client left); the engine stops those rows at its next step.
    """

    key: str
    prompt_ids: list[int]
    params: SamplingParams
    events: queue.Queue = field(default_factory=queue.Queue)
    stop_choices: set[int] = field(default_factory=set)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)


class Engine:
    """Collects requests, batches them per model version, samples, streams.

    Args:
        load: ``load(version_id) -> (Policy, version number)`` (outside any lock).
        window_s: how long the first request of a batch waits for others, seconds.
        max_batch: rows per forward batch.
        precision, device: as :func:`pgcore.rollout.generate`.
    """

    def __init__(self, *, load: Callable, window_s: float = 0.005, max_batch: int = 32,
                 precision: str = "auto", device: str | None = None, max_loaded: int = 3):
        self.load = load
        self.window_s, self.max_batch, self.max_loaded = window_s, max_batch, max_loaded
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = sampling_dtype(precision, self.device)
        self._loaded: dict[int, Loaded] = {}  # version id -> Loaded
        self._load_lock = threading.Lock()  # guards the dict
        self._loading = threading.Lock()  # one load at a time: two requests never load one version twice
        self._pending: list[Request] = []
        self._cv = threading.Condition()
        self._stopping = False
        self.batches_run = 0
        self.rows_run = 0
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
        with self._load_lock:
            self._loaded[version_id] = item
            while len(self._loaded) > self.max_loaded:
                self._loaded.pop(next(iter(self._loaded)))  # the oldest; a running batch keeps its own ref
        return item

    # --- requests -------------------------------------------------------------------------

    def submit(self, version_id: int, prompt_ids: list[int], params: SamplingParams) -> Request:
        """Queue a request for a model version (loaded with :meth:`loaded` first); returns at once."""
        request = Request(key=str(version_id), prompt_ids=prompt_ids, params=params)
        with self._cv:
            self._pending.append(request)
            self._cv.notify()
        return request

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
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
            time.sleep(delay)  # let the requests sent at the same moment join this batch
        with self._cv:
            batch, rows, rest = [], 0, []
            for request in self._pending:
                if request.key == first.key and (rows + request.params.n <= self.max_batch or not batch):
                    batch.append(request)
                    rows += request.params.n
                else:
                    rest.append(request)
            self._pending = rest
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                self._run(batch)
            except Exception as exc:  # a bad batch fails its requests, never the process
                log.exception("inference batch failed")
                for request in batch:
                    request.events.put(("error", f"generation failed: {exc}"))

    @torch.no_grad()
    def _run(self, batch: list[Request]) -> None:
        item = self.loaded(int(batch[0].key))
        live = []
        for request in batch:
            if len(request.prompt_ids) >= item.context_limit:
                request.events.put(("error", f"the prompt has {len(request.prompt_ids)} tokens; "
                                             f"this model's context is {item.context_limit}"))
            else:
                live.append(request)
        rows = [(request, i) for request in live for i in range(request.params.n)]
        if not rows:
            return
        for request in live:
            request.events.put(("start", item))
        caps = torch.tensor([r.params.max_tokens for r, _ in rows])
        counts = torch.zeros(len(rows), dtype=torch.long)
        plain = all(r.params.plain for r, _ in rows)
        draw = None if plain else _row_draw([r.params for r, _ in rows], [i for _, i in rows], self.device)

        def on_step(row_ids, tokens, emitted):
            row_list, token_list, emitted_list = row_ids.tolist(), tokens.tolist(), emitted.tolist()
            stop = []
            for r, token, was_emitted in zip(row_list, token_list, emitted_list):
                request, index = rows[r]
                if was_emitted:
                    counts[r] += 1
                    request.events.put(("token", index, token))
                stop.append(bool(counts[r] >= caps[r]) or request.cancelled.is_set() or index in request.stop_choices)
            return torch.tensor(stop, dtype=torch.bool)

        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        completions, logprobs, finished = sample_batch_fast(
            item.model, [r.prompt_ids for r, _ in rows], eos_ids=item.eos_ids,
            pad_id=item.tokenizer.pad_token_id, max_new_tokens=int(caps.max()), generator=generator,
            draw=draw, on_step=on_step,
        )
        self.batches_run += 1
        self.rows_run += len(rows)
        for (request, index), ids, lps, done in zip(rows, completions, logprobs, finished):
            request.events.put(("end", index, {"token_ids": ids, "logprobs": lps, "finished": bool(done)}))


def _row_draw(params: list[SamplingParams], choice_index: list[int], device):
    """A ``draw`` hook for :func:`pgcore.rollout.sample_batch_fast` with per-row temperature, top-p, seed.

    Each row's distribution is ``softmax(logits / T)`` restricted to its top-p nucleus and
    renormalised; the recorded logprob is that of the token under this processed distribution
    (0 for greedy rows), so a production completion's behaviour logprobs are those it was
    sampled with (DESIGN.md, "Behaviour logprobs must match what was sampled").
    """
    temperature = torch.tensor([p.temperature for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    greedy = temperature == 0
    shared = torch.Generator(device=device)
    shared.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    seeded = {}
    for r, (p, i) in enumerate(zip(params, choice_index)):
        if p.seed is not None:
            g = torch.Generator(device=device)
            g.manual_seed(int(p.seed) + i)
            seeded[r] = g

    def draw(logp, rows):  # logp (b, V) fp32 log-softmax at temperature 1; rows (b,)
        t, p, g = temperature[rows], top_p[rows], greedy[rows]
        scaled = torch.log_softmax(logp / t.clamp(min=1e-4)[:, None], dim=-1)  # (b, V)
        if bool((p < 1).any()):
            sorted_lp, order = scaled.sort(dim=-1, descending=True)
            probs = sorted_lp.exp()
            outside = (probs.cumsum(-1) - probs) >= p[:, None]  # the top token always stays in
            sorted_lp = sorted_lp.masked_fill(outside, float("-inf"))
            scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, sorted_lp)
            scaled = torch.log_softmax(scaled, dim=-1)
        tokens = draw_tokens(scaled, shared, False)  # (b,)
        for position, r in enumerate(rows.tolist()):
            if r in seeded:
                tokens[position] = draw_tokens(scaled[position : position + 1], seeded[r], False)[0]
        tokens = torch.where(g, logp.argmax(dim=-1), tokens)
        token_logp = scaled.gather(1, tokens[:, None]).squeeze(1).masked_fill(g, 0.0)
        return tokens, token_logp

    return draw
