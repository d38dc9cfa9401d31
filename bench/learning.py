"""Does the model learn from people? A learning benchmark with simulated annotators.

Drives the real loop in one process ("eager mode"): the same services the
Celery tasks call, in the order the app calls them, against a throwaway SQLite
database under a temporary ``REWARDLOOP_DATA_DIR``:

- the generation worker (one, as Celery's ``generation`` queue with ``-c 1``):
  ``completion_pool_refill``, asked for as the app asks (see *The queue* below), one
  batch of 8 at a time (with ``--completions-per-prompt 4``, two prompts' groups of 4);
- each annotator: ``lease_next`` then, after their delay, ``rating_create``;
- the scheduler: every ``--train-every`` new ratings, ``training_run_create``
  then ``training_run_execute`` (train, write the version atomically, complete
  the held-out prompts, promotion guard, promote).

Time is simulated (virtual seconds) and every draw is seeded (the annotators, the pool's
sampling, the app's queue draws, PGConfig's seed and with it the reward model's fresh
samples), so with the default ``--refill-clock fixed`` a run repeats exactly for a seed
and ``--threads``, whatever ran before it in the process
(``tests/webapp/test_learning_repeats.py``), and does not depend on how fast this machine
is; only the wall-clock figures do. ``--refill-clock cpu`` or ``wall`` take the generation
batches' durations from this machine instead (see below); then which annotator meets
which item depends on the machine's speed and a seed no longer repeats exactly.

The queue (``queue`` of each seed's summary): does an annotator ever wait for a card?
The pool is filled to ``pool_target`` before the annotators start (not measured, as in
``bench/queue_wait.py``). From then on refills happen as in the app: every annotator
request (a lease, a rating's next card) nudges the worker as
``annotation.services.pool_refill_nudge`` does (at most every ``REFILL_NUDGE_EVERY_S``,
when the pool is below ``Project.pool_low_water`` capped at the pool size, or the
annotator met an empty queue); serving a new version queues a refill at once (the
``version_served_committed`` receiver) and the queue keeps offering the older versions'
unrated items until that refill's first batch of the new version lands and retires them
(``annotation.services.completions_retire_older``): the training run samples nothing for
the pool. A refill samples the deficit it
found in batches of ``GENERATION_BATCH``; a batch lands (its items become rateable)
one batch duration after the previous one: ``--batch-seconds`` (default 4.0, the CPU
seconds a batch of 8 SmolLM2 completions of 96 tokens took at 1 torch thread, measured
2026-12-07) with ``--refill-clock fixed`` (the default); with ``cpu`` the previous batch's
measured cost, its process CPU seconds divided by the torch threads (what it takes on an
idle machine with those threads); with ``wall`` its wall seconds. Annotators rate at their own speed (``mean_delay_s``, exponential). An
annotator who meets an empty queue waits until the next batch lands (the time an item
became available; the browser would see it within its 3-second poll); ``--annotators`` and
``--delay-scale`` (every mean delay times this) make the team larger and faster. Reported per seed:
``waits``, ``total_wait_s``, ``max_wait_s`` (virtual seconds), those that began while a
newly served version had no item yet (``waits_after_serve``, ``wait_s_after_serve``),
the cards of older versions handed out in that window (``older_cards_after_serve``),
and the batch durations; per variant, summed (maxed) over seeds in ``queue``.
What the simulated annotators want is a *rater* (``--rater``, ``bench/raters.py``):
``callable(prompt, completion) -> Likert in [1, 5]``, bias- and noise-free; built in
``vader`` (the default: warm, upbeat replies), ``critical`` (its mirror, on which the
base model scores low) and ``concise`` (short finished replies, not about sentiment),
or any ``package.module:callable``. The annotators (``bench/simulated_annotators.py``)
add personal bias, noise, clipping and delays.

Each variant runs ``--seeds`` times (seeds ``--seed`` .. ``--seed + N - 1``; a seed
sets the annotators, their delays, the pool's sampling and PGConfig's seed), seed by
seed so that a cut-short run still compares every variant.

Held-out evaluation is the app's own (``webapp.training.evaluation``): every
version completes the project's first ``guard_eval_prompts`` held-out prompts
with one fixed seed, storing text, tokens, logprobs and base-model logprobs.
From those samples the benchmark computes, per version:

- ``mean_rating``: mean of the rater's bias- and noise-free score (1-5);
- ``kl_per_completion``: KL(version || base) per completion, in nats: the mean
  over completions of the summed per-token k3 estimate (``r - 1 - log r``,
  ``r = pi_base / pi``; Schulman 2020), never negative; the plain log-ratio
  sum is reported too (``kl_log_ratio_per_completion``);
- ``distinct2``: the app's distinct-2 (token bigrams, all completions pooled);
- ``mean_length``: mean completion length in tokens.

Variants (same prompts, seeds and annotators; each is its own project):

- ``naive``: REINFORCE as tutorials write it: baseline "none", no
  per-annotator normalisation, no importance correction, ``kl_coef`` 0;
- ``default``: pgcore's ``PGConfig()`` as is;
- ``no_annotator_norm``: default with ``annotator_norm=False``;
- ``no_offpolicy``: default with ``importance_correction=False``;
- ``critic``: default with ``baseline="critic"``, the learned value baseline of
  ``pgcore.critic`` (ridge value head over the base model's prompt features);
- ``rm``: the project trains on reward-model-scored fresh samples
  (``Project.reward_source = "reward_model"``);
- ``rm_active``: ``rm`` plus the active annotation queue (``Project.active_queue``).
- ``rm_trust``: ``rm_active`` with the fresh samples weighted by the reward model's
  cross-validated pairwise accuracy (``Project.rm_trust``; none while it is not above chance).

The ``rm`` variants need those project settings (the reward-model branch); without
them the benchmark stops before running anything and says so.

Summaries per variant (``variants.<name>``): ``final_gain``, ``final_kl``,
``final_distinct2_ratio`` as means over seeds with their sample SD (``*_sd``) and
per-seed values (``per_seed``); ``ratings_to_target`` and ``wall_minutes_to_target``,
the most any seed needed (None unless every seed reached the target); the curve is the
mean over seeds. Each seed's own summary is under ``runs.<name>.<seed>``. Points of
runs that fit a reward model carry its newest version's held-out metrics
(``rm_metrics``: ``held_out/*`` of ``webapp.rewards``' RewardModelVersion, and the ratings
it was fitted on), drawn against the ratings seen.

The promotion guard runs but, by default, with thresholds that never trigger,
so the curves measure pgcore rather than the guard; ``--guard`` keeps the
app's default thresholds (a held-back version is not served and the next run
trains from the served one again; a reward-model version waits in the shadow queue
for the simulated annotators' ratings and is decided before the next run, as the
training schedule's tick does).

Output: one JSON object on stdout; the same JSON (``learning.json``) and the
learning-curve plot (``learning.png``) in ``--out``. Both are rewritten after
every evaluated version, so an interrupted run leaves its partial results
(``"complete": false``).

Usage::

    .venv/bin/python bench/learning.py --tiny            # plumbing check, tiny random model, ~1-2 min
    .venv/bin/python bench/learning.py --quick           # SmolLM2, small sizes (see QUICK)
    .venv/bin/python bench/learning.py --quick --variants default,critic --seeds 1 --rater critical
    .venv/bin/python bench/learning.py --quick --variants default --tis-cap 0 --out R/tis-off
    .venv/bin/python bench/learning.py --base-only --rater concise   # the base model's score, nothing trained
    .venv/bin/python bench/learning.py                   # the full run (~3 h on 2 CPU cores; 90 min per pair of variants below)

    # The same, variants side by side, one process and one thread each (on 2 cores about
    # 1.7x the throughput of one 2-thread process), then one JSON and plot of both:
    .venv/bin/python bench/learning.py --variants default --threads 1 --out R/default &
    .venv/bin/python bench/learning.py --variants naive --threads 1 --out R/naive &
    wait; .venv/bin/python bench/learning.py --combine R/default R/naive --out R/both
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Threads that spin while waiting make a multi-threaded torch next to any other job several
# times slower (bench/README.md); passive waiting costs ~13% on an idle machine. Set before
# torch is imported, as the app's workers do.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.django_env import django_start  # noqa: E402
from bench.raters import BUILTIN as BUILTIN_RATERS  # noqa: E402
from bench.raters import RaterError, load_rater  # noqa: E402
from bench.simulated_annotators import compound, default_team  # noqa: E402
from pgcore.atomic import atomic_file, atomic_write  # noqa: E402

VARIANTS: dict[str, dict] = {
    "naive": {"baseline": "none", "annotator_norm": False, "importance_correction": False, "kl_coef": 0.0},
    "default": {},
    "no_annotator_norm": {"annotator_norm": False},
    "no_offpolicy": {"importance_correction": False},
    "critic": {"baseline": "critic"},
    "rm": {},
    "rm_active": {},
    "rm_trust": {},
}
# Project settings of a variant (beside its PGConfig); the reward-model branch's fields.
PROJECT_FIELDS: dict[str, dict] = {
    "rm": {"reward_source": "reward_model"},
    "rm_active": {"reward_source": "reward_model", "active_queue": True},
    "rm_trust": {"reward_source": "reward_model", "active_queue": True, "rm_trust": True},
}
# Run order: the two the goal compares first, so a cut-short run still answers it.
VARIANT_ORDER = ("default", "naive", "rm", "rm_active", "rm_trust", "critic", "no_annotator_norm", "no_offpolicy")
# What runs when --variants is not given: the five.
DEFAULT_VARIANTS = "default,naive,rm,rm_active,critic"

# The sizes.
FULL = {
    "ratings": 1024,  # ratings collected per variant
    "train_every": 64,  # a training run after every this many new ratings
    "heldout": 64,  # held-out prompts per evaluation
    "max_new_tokens": 96,  # completion length cap, training and evaluation
    "pool_target": 16,  # unrated completions the generation worker keeps ready
    "variants": DEFAULT_VARIANTS,
}
# --quick: a smoke check sized to finish within 15 minutes on this 2-core machine: 2
# training runs per variant (measured with two threads: 96 ratings every 32 took 22.6 min
# next to other jobs, 64 every 32 ~16 min on an idle machine, so 48 every 24).
QUICK = {
    "ratings": 48,
    "train_every": 24,
    "heldout": 16,
    "max_new_tokens": 32,
    "pool_target": 8,
    "variants": DEFAULT_VARIANTS,
}
# --tiny: the tiny random model; checks the plumbing in a minute or two.
TINY = {
    "ratings": 64,
    "train_every": 16,
    "heldout": 8,
    "max_new_tokens": 12,
    "pool_target": 8,
    "variants": DEFAULT_VARIANTS,
}

IDLE_RETRY_S = 3.0  # an annotator with nothing to rate looks again after this long (the waiting card's poll)
LEASE_MINUTES = 7 * 24 * 60  # leases never expire in virtual time (they are on the wall clock)
# The open guard also serves a reward-model version at once (no shadow queue wait for people's ratings).
OPEN_GUARD = {
    "guard_max_kl": 1000.0,  # the model's upper bound: no version is held back for its KL
    "guard_min_distinct2_ratio": 0.0,
    "guard_max_identical_fraction": 1.0,
    "shadow_share": 0.0,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=f"small sizes for a smoke check: {QUICK}")
    mode.add_argument("--tiny", action="store_true", help=f"tiny random model instead of SmolLM2: {TINY}")
    p.add_argument("--ratings", type=int, help=f"ratings per variant (default {FULL['ratings']})")
    p.add_argument("--train-every", type=int, help=f"new ratings per training run (default {FULL['train_every']})")
    p.add_argument("--heldout", type=int, help=f"held-out prompts per evaluation (default {FULL['heldout']})")
    p.add_argument("--max-new-tokens", type=int, help=f"completion length cap (default {FULL['max_new_tokens']})")
    p.add_argument("--pool-target", type=int, help=f"pool size kept by the generation worker (default {FULL['pool_target']})")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANT_ORDER)}")
    p.add_argument(
        "--completions-per-prompt",
        type=int,
        help="completions sampled per prompt, the leave-one-out group (default: the project's default)",
    )
    p.add_argument(
        "--pg",
        default="{}",
        help='JSON of PGConfig fields for every variant, under each variant\'s own switches (e.g. \'{"lr": 2e-4}\')',
    )
    p.add_argument(
        "--tis-cap",
        help="PGConfig.tis_cap for every variant: a number > 0, or 0 / none / off for no truncated "
        "importance sampling (default: PGConfig's own)",
    )
    p.add_argument(
        "--rater",
        default="vader",
        help=f"what the simulated annotators want: a built-in ({', '.join(BUILTIN_RATERS)}) or "
        "package.module:callable(prompt, completion) -> Likert in [1, 5] (default vader)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant, --seed, --seed + 1, ... (default 3)")
    p.add_argument(
        "--base-only",
        action="store_true",
        help="evaluate the base model only and print its held-out score under every built-in rater (and --rater)",
    )
    p.add_argument("--annotators", type=int, default=4, help="number of simulated annotators (default 4)")
    p.add_argument(
        "--delay-scale",
        type=float,
        default=1.0,
        help="multiply every simulated annotator's mean delay by this (> 0; 0.25: four times faster raters; default 1)",
    )
    p.add_argument("--target-gain", type=float, default=1.0, help="gain in mean held-out rating to reach (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seeds annotators, delays and pool sampling (default 0)")
    p.add_argument("--guard", action="store_true", help="keep the app's default promotion-guard thresholds")
    p.add_argument(
        "--low-water",
        type=int,
        help="Project.pool_low_water of every variant's project (default: the app's default)",
    )
    p.add_argument(
        "--refill-clock",
        choices=("fixed", "cpu", "wall"),
        default="fixed",
        help="a generation batch's duration in the simulated queue: --batch-seconds (fixed, the default: a seed "
        "repeats its run exactly), its CPU seconds / torch threads (cpu: an idle machine's) or its wall seconds on "
        "this machine (wall)",
    )
    p.add_argument(
        "--batch-seconds",
        type=float,
        default=4.0,
        help="with --refill-clock fixed: each generation batch's duration in virtual seconds (default 4.0: a batch "
        "of 8 SmolLM2 completions of 96 tokens at 1 torch thread, CPU seconds measured 2026-12-07)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (default: one per CPU core, waiting passively)",
    )
    p.add_argument(
        "--models-dir",
        default=os.environ.get("REWARDLOOP_MODELS_DIR", str(REPO / "var" / "models")),
        help="where the converted SmolLM2 folder lives or is created (default $REWARDLOOP_MODELS_DIR or var/models)",
    )
    p.add_argument("--prompts-sdist", default=str(REPO / "var" / "downloads" / "vaderSentiment-3.3.2.tar.gz"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "learning"), help="results folder")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data folder (database, weights)")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="DIR",
        help="merge the results folders (or learning JSON files) of runs of different variants (same settings) "
        "into --out; runs nothing. DIR:VARIANT takes one variant of DIR; DIR=NAME adds DIR's one variant as a "
        "probe named NAME (other --pg, maybe fewer ratings; not in the goal check)",
    )
    args = p.parse_args(argv)
    if args.combine:
        return args
    preset = TINY if args.tiny else QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if not args.delay_scale > 0 or not math.isfinite(args.delay_scale):
        p.error("--delay-scale must be a number > 0")
    try:
        args.pg = json.loads(args.pg)
        if args.tis_cap is not None:
            args.pg["tis_cap"] = parse_tis_cap(args.tis_cap)
        from pgcore.config import PGConfig

        PGConfig.from_dict(args.pg)
    except ValueError as exc:
        p.error(f"--pg/--tis-cap: {exc}")
    try:
        args.rater_fn = load_rater(args.rater)
    except RaterError as exc:
        p.error(str(exc))
    if args.ratings < args.train_every or args.ratings % args.train_every:
        p.error("--ratings must be a positive multiple of --train-every")
    return args


def parse_tis_cap(text: str) -> float:
    """``--tis-cap`` to ``PGConfig.tis_cap``: ``0``, ``none`` or ``off`` give 0.0 (off), a number > 0 itself.

    Raises:
        ValueError: anything else (a negative number, a word).
    """
    if text.strip().lower() in ("0", "0.0", "none", "off"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"tis_cap must be a number > 0, or 0 / none / off, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"tis_cap must be a number > 0, or 0 / none / off, got {text!r}")
    return value


def annotator_team(k: int, *, delay_scale: float = 1.0) -> list:
    """``k`` simulated annotators (``bench.simulated_annotators.default_team``), each one's mean delay
    (virtual seconds from lease to rating) multiplied by ``delay_scale`` (0.25: four times faster).

    Raises:
        ValueError: ``k < 1`` or ``delay_scale`` not > 0.
    """
    if not delay_scale > 0:
        raise ValueError(f"delay_scale must be > 0, got {delay_scale}")
    return [dataclasses.replace(a, mean_delay_s=a.mean_delay_s * delay_scale) for a in default_team(k)]


def variant_config(name: str, base: dict, seed: int | None = None) -> dict:
    """PGConfig overrides of variant ``name``: ``base`` (``--pg``) under the variant's own switches;
    with ``seed`` (and no seed in ``base``) PGConfig's seed too."""
    seeded = {} if seed is None or "seed" in base else {"seed": seed}
    return {**seeded, **base, **VARIANTS[name]}


def check_project_fields(variants: list[str]) -> None:
    """Stop with a clear message when a variant needs project settings this checkout lacks.

    Raises:
        SystemExit: e.g. ``rm`` without ``Project.reward_source`` (the reward-model branch).
    """
    from webapp.policies.models import Project

    have = {f.name for f in Project._meta.get_fields()}
    for name in variants:
        missing = sorted(set(PROJECT_FIELDS.get(name, {})) - have)
        if missing:
            raise SystemExit(
                f"variant {name!r} needs the project setting(s) {', '.join(missing)} (Project.reward_source / "
                f"active_queue of the reward-model work), which this checkout does not have; run without it "
                f"(e.g. --variants default,naive,critic) or on a branch that has them"
            )


def django_setup(data_dir: Path) -> None:
    """Point the app at a throwaway data folder and database (:func:`bench.django_env.django_start`),
    trained versions in ``data_dir / "models"``, then migrate.

    Tasks the services enqueue on commit (pool refills) go to an in-memory broker nobody
    consumes: this process plays the workers itself.
    """
    django_start(
        data_dir,
        models_dir=data_dir / "models",
        broker="memory://",
        REWARDLOOP_LOG_LEVEL=os.environ.get("REWARDLOOP_LOG_LEVEL", "WARNING"),
    )


# --- metrics from the app's stored held-out samples ----------------------------------


def version_metrics(version, rater) -> dict:
    """The benchmark's held-out figures for ``version``, from its stored evaluation samples, scored by ``rater``."""
    from webapp.training.evaluation import eval_prompts
    from webapp.training.models import VersionSample

    prompt_ids = [p.pk for p in eval_prompts(project=version.project)]
    samples = sorted(
        VersionSample.objects.filter(version=version, prompt_id__in=prompt_ids).select_related("prompt"), key=lambda s: s.prompt_id
    )
    if not samples:
        raise RuntimeError(f"{version} has no held-out samples; is guard_eval_prompts > 0?")
    ratings = [rater(s.prompt.text, s.text) for s in samples]
    by_rater = {name: statistics.fmean(fn(s.prompt.text, s.text) for s in samples) for name, fn in BUILTIN_RATERS.items()}
    compounds = [compound(s.text) for s in samples]
    spread = statistics.stdev(ratings) if len(ratings) > 1 else 0.0
    # Per completion, summed over its tokens: k3 = r - 1 - log r with r = pi_base / pi
    # (unbiased for tokens sampled from pi, never negative; Schulman 2020) and the plain
    # log-ratio (unbiased, noisier, can be negative).
    kl_k3 = [sum(math.expm1(ref - lp) - (ref - lp) for lp, ref in zip(s.logprobs, s.ref_logprobs)) for s in samples]
    kl_log_ratio = [sum(lp - ref for lp, ref in zip(s.logprobs, s.ref_logprobs)) for s in samples]
    return {
        "version": version.number,
        "mean_rating": sum(ratings) / len(ratings),
        "mean_rating_se": spread / math.sqrt(len(ratings)),  # standard error over held-out prompts
        "mean_compound": sum(compounds) / len(compounds),
        "mean_by_builtin_rater": by_rater,  # every built-in rater's mean on the same samples
        "ratings_heldout": ratings,  # per held-out prompt, in prompt order
        "kl_per_completion": sum(kl_k3) / len(kl_k3),
        "kl_log_ratio_per_completion": sum(kl_log_ratio) / len(kl_log_ratio),
        "kl_k3_per_token": version.kl_to_base,
        "distinct2": version.distinct2,
        "identical_fraction": version.identical_fraction,
        "mean_length": sum(len(s.token_ids) for s in samples) / len(samples),
        "finished_fraction": sum(s.finished for s in samples) / len(samples),
        "n_heldout": len(samples),
        "texts_sample": [s.text for s in samples[:3]],
    }


def reward_model_metrics(project) -> dict:
    """The project's newest reward-model version's held-out metrics (``held_out/*`` and, with
    ``Project.rm_trust``, the cross-validated ``cv/*`` numbers),
    its number and the ratings it was fitted on (``n_ratings``); {} when none was fitted."""
    try:
        from webapp.rewards.models import RewardModelVersion
    except ImportError:  # a checkout without the rewards app
        return {}
    version = RewardModelVersion.objects.filter(project=project).order_by("-number").first()
    if version is None:
        return {}
    numbers = {
        k: float(v) for k, v in (version.metrics or {}).items()
        if k.startswith(("held_out/", "cv/")) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return {"rm_version": version.number, "n_ratings": version.n_ratings, **numbers}


# --- one variant ---------------------------------------------------------------------


class QueueModel:
    """The simulated queue's generation-worker state and the annotators' waits (virtual seconds).

    Args:
        clock: ``"fixed"``: every batch lasts ``batch_seconds`` (a seed repeats its run); ``"cpu"``: a batch
            lasts its process CPU seconds / ``threads``; ``"wall"``: its wall seconds.
        threads: torch threads the batch ran with (>= 1).
        batch_seconds: the fixed clock's batch duration, virtual seconds (> 0).

    Raises:
        ValueError: an unknown ``clock``, or ``batch_seconds`` <= 0 with the fixed clock.
    """

    def __init__(self, *, clock: str = "fixed", threads: int = 1, batch_seconds: float = 4.0):
        if clock not in ("fixed", "cpu", "wall"):
            raise ValueError(f"clock must be 'fixed', 'cpu' or 'wall', got {clock!r}")
        if clock == "fixed" and batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
        self.clock = clock
        self.threads = max(1, threads)
        self.fixed_s = batch_seconds
        self.batch_s = batch_seconds if clock == "fixed" else 0.0  # the last measured batch's duration: the next batch's
        self.batches_s: list[float] = []
        self.batches_wall_s: list[float] = []
        self.stream: tuple[int, int] | None = None  # (stream id, batches left) while the worker samples
        self.stream_seq = 0
        self.refill_queued = False
        self.last_nudge = -1e9
        self.waiting_since: dict[int, float] = {}  # annotator -> when they met the empty queue
        self.poll_at: dict[int, float] = {}  # annotator -> when their waiting card asks next
        self.waits: list[tuple[float, bool]] = []  # (seconds, began while a new version had no item)
        self.new_version_empty = False
        self._after_serve: dict[int, bool] = {}
        self.older_cards_after_serve = 0  # cards of older versions given while a new version had no item

    def batch_measured(self, *, cpu_s: float, wall_s: float) -> None:
        """A batch's cost on this machine; the next batch lasts this long."""
        self.batch_s = {"fixed": self.fixed_s, "cpu": cpu_s / self.threads, "wall": wall_s}[self.clock]
        self.batches_s.append(self.batch_s)
        self.batches_wall_s.append(wall_s)

    def version_served(self) -> None:
        self.new_version_empty = True

    def batch_landed(self) -> None:
        self.new_version_empty = False

    def card_given(self, *, older: bool) -> None:
        """An annotator got a card; ``older``: of a version other than the served one."""
        if older and self.new_version_empty:
            self.older_cards_after_serve += 1

    def wait_begins(self, who: int, t: float) -> None:
        self.waiting_since[who] = t
        self._after_serve[who] = self.new_version_empty

    def wait_ends(self, who: int, t: float) -> None:
        if who in self.waiting_since:
            self.waits.append((t - self.waiting_since.pop(who), self._after_serve.pop(who)))

    def close(self, t: float) -> None:
        """End of the run: a wait still open counts up to ``t``."""
        for who in list(self.waiting_since):
            self.wait_ends(who, t)

    def summary(self, *, pool_target: int, low_water: int, mean_delays_s: list[float]) -> dict:
        """The seed's ``queue`` figures: settings, waits (count, total and longest, in virtual seconds;
        those after a serve apart) and the measured batch durations."""
        seconds = [w for w, _ in self.waits]
        after = [w for w, a in self.waits if a]
        return {
            "pool_target": pool_target,
            "low_water": min(low_water, pool_target),
            "annotator_mean_delay_s": mean_delays_s,
            "refill_clock": self.clock,
            "refill_batches": len(self.batches_s),
            "refill_batch_s_mean": round(_mean(self.batches_s), 2) if self.batches_s else None,
            "refill_batch_s_max": round(max(self.batches_s), 2) if self.batches_s else None,
            "refill_batch_wall_s_mean": round(_mean(self.batches_wall_s), 2) if self.batches_wall_s else None,
            "waits": len(seconds),
            "total_wait_s": round(sum(seconds), 1),
            "max_wait_s": round(max(seconds, default=0.0), 1),
            "waits_after_serve": len(after),
            "wait_s_after_serve": round(sum(after), 1),
            "older_cards_after_serve": self.older_cards_after_serve,
        }


def queue_aggregate(per_seed: list[dict]) -> dict:
    """A variant's ``queue`` over its seeds: waits and seconds summed, the longest wait and batch maxed."""
    summed = ("waits", "total_wait_s", "waits_after_serve", "wait_s_after_serve", "older_cards_after_serve")
    out = {k: sum(q.get(k, 0) for q in per_seed) for k in summed}
    out["total_wait_s"] = round(out["total_wait_s"], 1)
    out["wait_s_after_serve"] = round(out["wait_s_after_serve"], 1)
    out["max_wait_s"] = max(q["max_wait_s"] for q in per_seed)
    batch_max = [q["refill_batch_s_max"] for q in per_seed if q["refill_batch_s_max"] is not None]
    out["refill_batch_s_max"] = max(batch_max) if batch_max else None
    out["per_seed"] = {k: [q[k] for q in per_seed] for k in ("waits", "total_wait_s", "max_wait_s", "refill_batch_s_mean")}
    return out


class Loop:
    """One variant's project, annotators and event queue (virtual time)."""

    def __init__(self, *, name: str, seed: int, args, base_model_path: Path, rows, users, team):
        from webapp.annotation.services import prompts_create
        from webapp.policies.services import project_create

        guard = {} if args.guard else OPEN_GUARD
        self.name = name
        self.seed = seed
        self.rater = args.rater_fn
        self.args = args
        self.users = users
        self.team = team
        self.project = project_create(
            slug=f"learn-{name.replace('_', '-')}-s{seed}",
            title=f"Learning benchmark: {name}, seed {seed}",
            base_model_path=base_model_path,
            ratings_per_item=1,
            pool_target=args.pool_target,
            min_new_ratings=args.train_every,
            max_new_tokens=args.max_new_tokens,
            guard_eval_prompts=args.heldout,
            pg_config=variant_config(name, args.pg, seed),
            **PROJECT_FIELDS.get(name, {}),
            **guard,
            **({} if args.completions_per_prompt is None else {"completions_per_prompt": args.completions_per_prompt}),
            **({} if args.low_water is None else {"pool_low_water": args.low_water}),
        )
        prompts_create(project=self.project, rows=rows)
        self.rng = random.Random(seed)
        self.events: list[tuple[float, int, str, int]] = []
        self.seq = 0
        self.gen_tick = 0
        self.ratings = 0
        self.in_flight: dict[int, int] = {}  # annotator index -> leased completion id
        self.queue = QueueModel(clock=args.refill_clock, threads=args.threads, batch_seconds=args.batch_seconds)
        # generation_s: pool refills; training_s: pgcore updates; evaluation_s: the base's
        # evaluation; run_other_s: the rest of each run (batch, save, evaluate, promote),
        # split per step in step_<name>_s.
        self.timing = {"generation_s": 0.0, "training_s": 0.0, "evaluation_s": 0.0, "run_other_s": 0.0}
        self.clock = 0.0
        self.started = time.perf_counter()

    def sampling_counts(self) -> dict:
        """How much was sampled for annotators, how much of it got rated, and the training steps taken."""
        from webapp.annotation.models import Completion
        from webapp.training.models import TrainingRun

        completions = Completion.objects.filter(project=self.project)
        runs = TrainingRun.objects.filter(project=self.project, status=TrainingRun.Status.SUCCEEDED)
        return {
            "completions_sampled": completions.count(),
            "completions_rated": completions.filter(ratings__isnull=False).distinct().count(),
            "tokens_sampled": sum(len(ids) for ids in completions.values_list("token_ids", flat=True)),
            "train_steps": int(sum(r.metrics.get("train/steps", 0) for r in runs)),
        }

    def queue_summary(self) -> dict:
        """:meth:`QueueModel.summary` of this run (waits so far; one still open is not counted yet)."""
        return self.queue.summary(
            pool_target=self.project.pool_target,
            low_water=self.project.pool_low_water,
            mean_delays_s=[a.mean_delay_s for a in self.team],
        )

    def push(self, t: float, kind: str, who: int = -1) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, who))

    def evaluate_base(self) -> dict:
        from webapp.training.evaluation import version_evaluate

        t = time.perf_counter()
        version = version_evaluate(version=self.project.served_version)
        self.timing["evaluation_s"] += time.perf_counter() - t
        point = version_metrics(version, self.rater)
        point.update({"ratings": 0, "promoted": True, "stale_fraction": None, "train_metrics": {}, "wall_s": 0.0})
        return point

    def run(self, on_point) -> None:
        """Collect ``args.ratings`` ratings, training every ``args.train_every``; ``on_point(point)`` per version."""
        from webapp.annotation import services as annotation_services

        # The app's queue draws (the active queue's uniform share and item, the shadow share) repeat for a seed.
        annotation_services.queue_rng.seed(self.seed)
        annotation_services.queue_item_rng.seed(self.seed)
        self._initial_fill()
        for k in range(len(self.team)):
            self.push(self.rng.uniform(0, IDLE_RETRY_S), "lease", k)
        while self.ratings < self.args.ratings:
            self.clock, _, kind, k = heapq.heappop(self.events)
            if kind == "batch":
                self._batch(stream=k)
            elif kind == "lease":
                self._lease(k)
            elif kind == "poll":  # the waiting card asks again
                if self.queue.poll_at.get(k) == self.clock:
                    self._lease(k)
            elif kind == "rate":
                self._rate(k)
                if self.ratings % self.args.train_every == 0:
                    if self.ratings >= self.args.ratings:
                        self.queue.close(self.clock)
                    on_point(self._train())

    # The generation worker: one refill stream at a time, batch by batch (see the module's docstring).

    def _sample_batch(self) -> int:
        """One ``completion_pool_refill`` of at most ``GENERATION_BATCH``, its cost recorded; how many it stored."""
        from webapp.annotation.services import GENERATION_BATCH, completion_pool_refill

        wall, cpu = time.perf_counter(), time.process_time()
        created = completion_pool_refill(project=self.project, max_new=GENERATION_BATCH, seed=self.seed * 1_000_003 + self.gen_tick)
        self.gen_tick += 1
        if created:
            wall_s = time.perf_counter() - wall
            self.timing["generation_s"] += wall_s
            self.queue.batch_measured(cpu_s=time.process_time() - cpu, wall_s=wall_s)
        return created

    def _initial_fill(self) -> None:
        from webapp.annotation.selectors import pool_size

        while pool_size(project=self.project) < self.project.pool_target and self._sample_batch():
            pass

    def _refill_start(self) -> None:
        """The worker takes a refill task: sample the deficit it finds, a batch at a time."""
        from webapp.annotation.services import GENERATION_BATCH
        from webapp.annotation.selectors import pool_free

        self.project.refresh_from_db(fields=["served_version"])
        deficit = self.project.pool_target - pool_free(project=self.project)
        if deficit <= 0:
            self.queue.stream = None
            return
        self.queue.stream = (self.queue.stream_seq + 1, math.ceil(deficit / GENERATION_BATCH))
        self.queue.stream_seq += 1
        self.push(self.clock + self.queue.batch_s, "batch", self.queue.stream_seq)

    def _batch(self, *, stream: int) -> None:
        if self.queue.stream is None or self.queue.stream[0] != stream:
            return  # a stream the worker dropped (its version is no longer served)
        self._sample_batch()
        self.queue.batch_landed()
        for k in list(self.queue.waiting_since):  # the waiting cards see the new items
            self.push(self.clock, "lease", k)
        left = self.queue.stream[1] - 1
        if left > 0:
            self.queue.stream = (stream, left)
            self.push(self.clock + self.queue.batch_s, "batch", stream)
        elif self.queue.refill_queued:  # the next refill task in the worker's queue
            self.queue.refill_queued = False
            self._refill_start()
        else:
            self.queue.stream = None

    def _refill_send(self) -> None:
        """``pool_refill_send``: the worker starts the task now, or after the one it is running."""
        if self.queue.stream is None:
            self._refill_start()
        else:
            self.queue.refill_queued = True

    def _nudge(self, *, queue_empty: bool) -> None:
        """``annotation.services.pool_refill_nudge``, in virtual time."""
        from webapp.annotation.selectors import pool_needs_refill
        from webapp.annotation.services import REFILL_NUDGE_EVERY_S

        if self.clock - self.queue.last_nudge < REFILL_NUDGE_EVERY_S:
            return
        self.queue.last_nudge = self.clock
        if queue_empty or pool_needs_refill(project=self.project):
            self._refill_send()

    def _lease(self, k: int) -> None:
        from webapp.annotation.services import lease_next

        if k in self.in_flight:
            return  # a wake-up for someone who already got a card
        lease = lease_next(project=self.project, annotator=self.users[k], lease_minutes=LEASE_MINUTES)
        self._nudge(queue_empty=lease is None)
        if lease is None:
            if k not in self.queue.waiting_since:
                self.queue.wait_begins(k, self.clock)
            if self.queue.poll_at.get(k, -1.0) <= self.clock:
                self.queue.poll_at[k] = self.clock + IDLE_RETRY_S
                self.push(self.queue.poll_at[k], "poll", k)
            return
        self.queue.wait_ends(k, self.clock)
        self.queue.card_given(older=lease.completion.model_version_id != self.project.served_version_id)
        self.in_flight[k] = lease.completion_id
        self.push(self.clock + self.team[k].delay(self.rng), "rate", k)

    def _rate(self, k: int) -> None:
        from webapp.annotation.models import Completion
        from webapp.annotation.services import rating_create

        completion = Completion.objects.select_related("project", "prompt").get(pk=self.in_flight.pop(k))
        score = self.team[k].rate_ideal(self.rater(completion.prompt.text, completion.text), self.rng)
        rating_create(annotator=self.users[k], completion=completion, score=score)
        self.ratings += 1
        self.push(self.clock, "lease", k)

    def _served(self) -> None:
        """A new version is served: a refill is queued at once (the worker drops a stream of the old
        version); the older items stay in the queue until its first batch lands (the app's refill
        retires them then)."""
        self.queue.stream = None
        self.queue.refill_queued = False
        self.queue.version_served()
        self._refill_start()

    def _train(self) -> dict:
        from webapp.training.models import TrainingRun
        from webapp.training.services import training_run_create, training_run_execute

        t = time.perf_counter()
        if self.args.guard:  # the training schedule's tick: decide on a shadow candidate people rated enough
            from webapp.training.overoptimisation import shadow_candidates_recheck

            shadow_candidates_recheck()
        run = training_run_create(project=self.project, trigger=TrainingRun.Trigger.SCHEDULE)
        run = training_run_execute(run_id=run.pk)
        wall = time.perf_counter() - t
        if run is None or run.status != TrainingRun.Status.SUCCEEDED:
            raise RuntimeError(f"{self.name}: training run failed: {run and run.error}\n{run and run.log[-2000:]}")
        ratings = list(run.ratings.select_related("completion"))
        stale = [r for r in ratings if r.completion.model_version_id != run.parent_version_id]
        version = run.result_version
        point = version_metrics(version, self.rater)
        train_s = float(run.metrics.get("train/seconds", 0.0))
        self.timing["training_s"] += train_s
        # Wall seconds per pipeline step (batch: with rm variants the reward-model fit and
        # the fresh, scored samples; update; save; evaluate; promote), from the step rows.
        steps = {
            st.name: (st.finished_at - st.started_at).total_seconds()
            for st in run.steps.all()
            if st.started_at and st.finished_at
        }
        for step_name, seconds in steps.items():
            key = f"step_{step_name}_s"
            self.timing[key] = self.timing.get(key, 0.0) + seconds
        self.timing["run_other_s"] += wall - train_s
        self.project.refresh_from_db()
        if run.promoted:
            self._served()
        point.update(
            {
                "ratings": self.ratings,
                "promoted": bool(run.promoted),
                "held_back_reason": run.held_back_reason,
                "ratings_in_run": len(ratings),
                "stale_fraction": len(stale) / len(ratings),
                "virtual_time_s": round(self.clock, 1),
                "wall_s": round(time.perf_counter() - self.started, 1),
                "rm_metrics": reward_model_metrics(self.project),
                "train_metrics": {
                    k: run.metrics[k]
                    for k in (
                        "objective/kl", "objective/mean_reward", "losses/pg_loss", "policy/clipfrac", "policy/ratio_mean",
                        "train/seconds", "critic/explained_variance", "critic/mse",
                    )
                    if k in run.metrics
                },
            }
        )
        return point


# --- summary, plot, output -------------------------------------------------------------


def summarise(curve: list[dict], base: dict, target_gain: float) -> dict:
    """One seed's run: ``ratings_to_target`` and ``wall_minutes_to_target`` (None if never reached),
    final gain / KL / distinct-2 ratio, and the curve."""
    hit = next((p for p in curve if p["mean_rating"] - base["mean_rating"] >= target_gain - 1e-9), None)
    last = curve[-1]
    return {
        "ratings_to_target": None if hit is None else hit["ratings"],
        "wall_minutes_to_target": None if hit is None or hit.get("wall_s") is None else round(hit["wall_s"] / 60, 2),
        "final_gain": last["mean_rating"] - base["mean_rating"],
        "final_kl": last["kl_per_completion"],
        "final_distinct2_ratio": (last["distinct2"] / base["distinct2"]) if base["distinct2"] else None,
        "final_mean_length": last["mean_length"],
        "ratings_used": last["ratings"],
        "mean_stale_fraction": _mean([p["stale_fraction"] for p in curve if p.get("stale_fraction") is not None]),
        "curve": curve,
    }


def _mean(values):
    return sum(values) / len(values) if values else None


def _sd(values):
    """Sample standard deviation; None for fewer than two values."""
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


PER_SEED_KEYS = (
    "final_gain", "final_kl", "final_distinct2_ratio", "ratings_to_target", "wall_minutes_to_target", "ratings_used"
)


def _mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The seeds' curves averaged at each number of ratings that every seed evaluated.

    ``mean_rating`` is the mean over held-out prompts of each prompt's rating averaged over
    the seeds (so ``mean_rating_se`` is the standard error over prompts of those averages);
    KL, distinct-2, length, stale fraction and wall time are means over the seeds.
    """
    by_seed = [{p["ratings"]: p for p in curve} for curve in curves]
    common = sorted(set.intersection(*(set(d) for d in by_seed)))
    out = []
    for r in common:
        points = [d[r] for d in by_seed]
        point = {"ratings": r, "n_seeds": len(points)}
        heldout = [p.get("ratings_heldout") for p in points]
        if all(heldout):
            per_prompt = [sum(col) / len(col) for col in zip(*heldout, strict=True)]
            point["ratings_heldout"] = per_prompt
            point["mean_rating"] = sum(per_prompt) / len(per_prompt)
            point["mean_rating_se"] = (statistics.stdev(per_prompt) / math.sqrt(len(per_prompt))) if len(per_prompt) > 1 else 0.0
        else:
            point["mean_rating"] = _mean([p["mean_rating"] for p in points])
            point["mean_rating_se"] = _mean([p.get("mean_rating_se", 0.0) for p in points])
        for key in ("kl_per_completion", "distinct2", "mean_length", "stale_fraction", "wall_s"):
            values = [p.get(key) for p in points]
            point[key] = _mean(values) if all(v is not None for v in values) else None
        point["mean_rating_by_seed"] = [p["mean_rating"] for p in points]
        point["kl_by_seed"] = [p["kl_per_completion"] for p in points]
        rm = [p.get("rm_metrics") or {} for p in points]
        keys = set.intersection(*(set(m) for m in rm)) if rm else set()
        point["rm_metrics"] = {k: _mean([m[k] for m in rm]) for k in sorted(keys)}
        out.append(point)
    return out


def aggregate(per_seed: dict[str, dict]) -> dict:
    """A variant's summary over seeds from each seed's :func:`summarise` (keyed by seed).

    ``final_gain``, ``final_kl``, ``final_distinct2_ratio``: means over seeds, their sample
    SDs as ``*_sd`` (None with one seed). ``ratings_to_target`` and
    ``wall_minutes_to_target``: the most any seed needed, None unless every seed reached
    the target (``seeds_reaching_target`` counts those that did). ``per_seed``: every
    per-seed value, in seed order. ``curve``: :func:`_mean_curve`.
    """
    seeds = sorted(per_seed, key=int)
    runs = [per_seed[s] for s in seeds]
    out: dict = {"seeds": [int(s) for s in seeds]}
    for key in ("final_gain", "final_kl", "final_distinct2_ratio"):
        values = [r[key] for r in runs]
        out[key] = _mean(values) if all(v is not None for v in values) else None
        out[f"{key}_sd"] = _sd(values)
    for key in ("ratings_to_target", "wall_minutes_to_target"):
        values = [r.get(key) for r in runs]
        out[key] = max(values) if all(v is not None for v in values) else None
    out["seeds_reaching_target"] = sum(r["ratings_to_target"] is not None for r in runs)
    out["final_mean_length"] = _mean([r["final_mean_length"] for r in runs])
    out["ratings_used"] = min(r["ratings_used"] for r in runs)
    out["mean_stale_fraction"] = _mean([r["mean_stale_fraction"] for r in runs if r["mean_stale_fraction"] is not None])
    out["per_seed"] = {key: [r.get(key) for r in runs] for key in PER_SEED_KEYS}
    out["curve"] = _mean_curve([r["curve"] for r in runs])
    if all("queue" in r for r in runs):
        out["queue"] = queue_aggregate([r["queue"] for r in runs])
    return out


def _paired(a: list[float], b: list[float]) -> dict:
    """Mean of ``a - b`` and its paired standard error (SD of the differences / sqrt(n))."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"diff": mean, "paired_se": sd / n**0.5}


def _per_prompt_mean(ratings_at: dict, points: list[int]) -> list[float]:
    """Each held-out prompt's rating averaged over the evaluations at ``points`` ratings."""
    return [sum(column) / len(points) for column in zip(*(ratings_at[r] for r in points), strict=True)]


def paired_vs_default(variants: dict, late_from: int) -> dict:
    """Each variant minus ``default`` on the same held-out prompts, paired per prompt.

    Every variant completes the same held-out prompts with the same seed, so per prompt
    the two bias- and noise-free ratings form a pair. ``points``: at each number of
    ratings both variants were evaluated, the mean difference (rating points) and its
    paired standard error. ``late``: the same for each prompt's rating averaged over the
    points from ``late_from`` ratings on (damps the noise of single evaluations; None
    when neither has such points). Empty without ``default``.
    """
    default = variants.get("default")
    if default is None:
        return {}
    ref = {p["ratings"]: p["ratings_heldout"] for p in default["curve"][1:] if p.get("ratings_heldout")}
    out = {}
    for name, variant in variants.items():
        if name == "default":
            continue
        mine = {p["ratings"]: p["ratings_heldout"] for p in variant["curve"][1:] if p.get("ratings_heldout")}
        both = sorted(set(ref) & set(mine))
        late = [r for r in both if r >= late_from]
        late_cmp = None
        if late:
            late_cmp = {
                "from_ratings": late_from,
                "n_points": len(late),
                **_paired(_per_prompt_mean(mine, late), _per_prompt_mean(ref, late)),
            }
        out[name] = {"points": [{"ratings": r, **_paired(mine[r], ref[r])} for r in both], "late": late_cmp}
    return out


def goal_check(variants: dict, args) -> dict:
    """The issue's goal, checked on what was run (None where a variant is missing)."""
    default, naive = variants.get("default"), variants.get("naive")
    if default is None:
        return {"met": None, "why": "the default variant was not run"}
    full_length = default["ratings_used"] >= args.ratings
    reached = default["ratings_to_target"]
    if naive is None:
        half = None
    elif naive["ratings_to_target"] is None:
        half = reached is not None if naive["ratings_used"] >= args.ratings else None
    else:
        half = reached is not None and reached <= naive["ratings_to_target"] / 2
    checks = {
        "default_reaches_target": reached is not None,
        "default_at_most_half_of_naive": half,
        "final_kl_below_5_nats": default["final_kl"] < 5.0,
        "distinct2_at_least_80pct_of_base": (default["final_distinct2_ratio"] or 0) >= 0.8,
        "ran_full_length": full_length,
    }
    met = all(v is True for k, v in checks.items() if k != "ran_full_length")
    return {"met": met, **checks, "rm_active_vs_default": rm_goal_check(variants)}


def rm_goal_check(variants: dict) -> dict:
    """Issue 16's goal on what was run: ``rm_active`` reaches the target with at most half the
    ratings ``default`` needs, at KL < 5 nats and distinct-2 >= 0.8 of base in every seed, in no
    more wall time than ``default`` (None where it cannot be told yet)."""
    default, active = variants.get("default"), variants.get("rm_active")
    if default is None or active is None:
        return {"met": None, "why": "needs the default and rm_active variants"}
    per = active.get("per_seed") or {
        "ratings_to_target": [active["ratings_to_target"]],
        "final_kl": [active["final_kl"]],
        "final_distinct2_ratio": [active["final_distinct2_ratio"]],
    }
    mine, theirs = active["ratings_to_target"], default["ratings_to_target"]
    if mine is None:
        half = False
    elif theirs is None:
        half = True if default["ratings_used"] >= active["ratings_used"] and default["ratings_used"] >= 2 * mine else None
    else:
        half = mine <= theirs / 2
    wall_mine, wall_theirs = active.get("wall_minutes_to_target"), default.get("wall_minutes_to_target")
    checks = {
        "rm_active_reaches_target_every_seed": all(r is not None for r in per["ratings_to_target"]),
        "rm_active_at_most_half_of_default": half,
        "final_kl_below_5_nats_every_seed": all(k is not None and k < 5.0 for k in per["final_kl"]),
        "distinct2_at_least_80pct_every_seed": all((d or 0) >= 0.8 for d in per["final_distinct2_ratio"]),
        "wall_no_more_than_default": None if wall_mine is None or wall_theirs is None else wall_mine <= wall_theirs,
    }
    return {"met": all(v is True for v in checks.values()), **checks}


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(3, 2, figsize=(13, 13))
    axes = grid.ravel()
    base = result["base"]
    rm_drawn = False
    for i, (name, variant) in enumerate(result["variants"].items()):
        color = f"C{i % 10}"
        xs = [p["ratings"] for p in variant["curve"]]
        ratings = [p["mean_rating"] for p in variant["curve"]]
        kls = [p["kl_per_completion"] for p in variant["curve"]]
        axes[0].errorbar(
            xs, ratings, yerr=[p.get("mean_rating_se", 0.0) for p in variant["curve"]], marker="o", capsize=3,
            color=color, label=name,
        )
        axes[1].plot(xs, kls, marker="o", color=color, label=name)
        axes[2].plot(xs, [p["distinct2"] / base["distinct2"] for p in variant["curve"]], marker="o", color=color, label=name)
        axes[3].plot(kls, ratings, marker="o", ms=4, color=color, label=f"{name} (mean of seeds)")
        # The frontier per seed: every evaluated version of every seed, faint.
        for run in (result.get("runs", {}).get(name) or {}).values():
            axes[3].scatter(
                [p["kl_per_completion"] for p in run["curve"]], [p["mean_rating"] for p in run["curve"]],
                s=10, color=color, alpha=0.35,
            )
        walls = [p.get("wall_s") for p in variant["curve"]]
        if all(w is not None for w in walls):
            axes[4].plot([w / 60 for w in walls], ratings, marker="o", color=color, label=name)
        for key, style in (("held_out/spearman", "-"), ("held_out/pairwise_accuracy", "--")):
            pts = [
                (p["rm_metrics"].get("n_ratings", p["ratings"]), p["rm_metrics"][key])
                for p in variant["curve"] if key in (p.get("rm_metrics") or {})
            ]
            if pts:
                rm_drawn = True
                axes[5].plot(*zip(*pts), ls=style, marker="o", color=color, label=f"{name}: {key.split('/')[1]}")
    target = base["mean_rating"] + result["config"]["target_gain"]
    target_label = f"target (+{result['config']['target_gain']:g})"
    axes[0].axhline(base["mean_rating"], color="grey", lw=0.8, ls=":", label="base")
    axes[0].axhline(target, color="black", lw=0.8, ls="--", label=target_label)
    axes[0].set(xlabel="ratings used", ylabel="mean held-out rating (1-5, bias/noise-free)", title="Learning curve (bars: ±1 SE)")
    axes[0].set_ylim(1, 5.1)
    axes[1].axhline(5.0, color="black", lw=0.8, ls="--", label="goal limit (5 nats)")
    axes[1].set(xlabel="ratings used", ylabel="KL to base (nats per completion)", title="KL to the base model")
    axes[2].axhline(0.8, color="black", lw=0.8, ls="--", label="goal floor (80%)")
    axes[2].set(xlabel="ratings used", ylabel="distinct-2 / base's", title="Diversity")
    # Gain bought per nat of drift: the goal is the box above the target and left of 5 nats.
    axes[3].axhline(target, color="black", lw=0.8, ls="--", label=target_label)
    axes[3].axvline(5.0, color="black", lw=0.8, ls=":", label="KL limit (5 nats)")
    axes[3].fill_between([0, 5.0], target, 5.1, color="green", alpha=0.08, label="goal region")
    axes[3].set(
        xlabel="KL to base (nats per completion; log scale above 1)",
        ylabel="mean held-out rating",
        title="Rating against KL (each point one version, in order)",
    )
    axes[3].set_ylim(min(3.0, base["mean_rating"] - 0.3), 5.1)
    axes[3].set_xscale("symlog", linthresh=1.0)
    axes[3].set_xlim(left=0)
    axes[4].axhline(target, color="black", lw=0.8, ls="--", label=target_label)
    axes[4].set(xlabel="wall minutes (this machine, this load)", ylabel="mean held-out rating", title="Learning against wall time")
    axes[5].set(
        xlabel="ratings the reward model was fitted on", ylabel="held-out metric", title="Reward model, held-out ratings"
        + ("" if rm_drawn else " (none fitted here)"),
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(
        f"{cfg['model']}: rater {cfg.get('rater', 'vader')}, {cfg['ratings']} ratings, training every {cfg['train_every']}, "
        f"{cfg['heldout']} held-out prompts, {cfg['max_new_tokens']} tokens, seeds {cfg.get('seeds', [cfg.get('seed', 0)])}"
        + ("" if result["complete"] else "  (PARTIAL)"),
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def write_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "learning.json", json.dumps(result, indent=2) + "\n")
    if result.get("base") and result["variants"]:
        write_plot(result, out_dir / "learning.png")


def _run_settings(result: dict, *, probe: bool = False) -> dict:
    """A run's settings, less what may differ between runs that can be combined
    (a probe's run may also have stopped at fewer ratings)."""
    skip = ("variants", "project_settings", "torch_threads") + (("ratings",) if probe else ())
    settings = {k: v for k, v in result["config"].items() if k not in skip}
    settings.setdefault("completions_per_prompt", 1)  # runs from before the setting sampled one per prompt
    return settings


def combine(dirs: list[str], out_dir: Path) -> dict:
    """One result from the ``learning.json`` of runs of different variants with the same settings.

    ``dirs`` are results folders or their JSON files (an earlier combination's too, such as
    ``docs/learning/learning-full.json``); ``DIR:VARIANT`` takes only
    that variant from the folder. ``DIR=NAME`` (or ``DIR:VARIANT=NAME``) adds the folder's
    one variant as a *probe* named ``NAME`` (say ``R/kl=default_kl0.02`` for the default
    run with a changed ``--pg``): it is drawn and reported like the others (its PGConfig is
    in ``config.variants``, its origin in ``probes``) but is not part of the goal check or
    of ``complete``, and its run may have asked for fewer ratings. The combination is
    ``complete`` when every variant but the probes used all the ratings asked for.

    Raises:
        ValueError: a variant appears twice or is not in its folder, a probe's folder holds
            more than one variant, or the runs' settings (other than the variants, their
            project settings, thread count and, for probes, the number of ratings) or
            base-model evaluations differ.
    """
    specs = []
    for spec in dirs:
        where, _, rename = spec.partition("=")
        folder, _, only = where.partition(":")
        specs.append((folder, only or None, rename or None))
    results = [json.loads((Path(d) if Path(d).is_file() else Path(d) / "learning.json").read_text()) for d, _, _ in specs]
    for (d, only, _), r in zip(specs, results):
        if only is not None:
            if only not in r["variants"]:
                raise ValueError(f"{d}: no variant {only!r} there (it has {', '.join(r['variants'])})")
            r["variants"] = {only: r["variants"][only]}
    first = results[0]
    merged = {
        **first, "variants": {}, "runs": {}, "timing": {}, "probes": {},
        "config": {**first["config"], "variants": {}, "project_settings": {}},
    }
    for (d, _, rename), r in zip(specs, results):
        probe = rename is not None
        if _run_settings(r, probe=probe) != _run_settings(first, probe=probe) or r["base"]["mean_rating"] != first["base"]["mean_rating"]:
            raise ValueError(f"{d}: its settings or base evaluation differ from {specs[0][0]}'s; cannot combine")
        if probe and len(r["variants"]) != 1:
            raise ValueError(f"{d}: a probe's folder must hold one variant, it holds {len(r['variants'])}")
        for name, variant in r["variants"].items():
            key = rename or name
            if key in merged["variants"]:
                raise ValueError(f"{d}: variant {key!r} appears in two runs")
            merged["variants"][key] = variant
            if name in r.get("runs", {}):
                merged["runs"][key] = r["runs"][name]
            merged["config"]["variants"][key] = r["config"]["variants"][name]
            if name in r["config"].get("project_settings", {}):  # a variant's project fields (rm, rm_active)
                merged["config"]["project_settings"][key] = r["config"]["project_settings"][name]
            merged["timing"][key] = r["timing"].get(name)
            if probe:
                merged["probes"][key] = {"from": d, "variant": name, "ratings": r["config"]["ratings"], "complete": r["complete"]}
    order = [v for v in VARIANT_ORDER if v in merged["variants"]] + list(merged["probes"])
    merged["variants"] = {v: merged["variants"][v] for v in order}
    merged["complete"] = all(
        v["ratings_used"] >= first["config"]["ratings"] for k, v in merged["variants"].items() if k not in merged["probes"]
    )
    merged["combined_from"] = list(dirs)
    merged["timing"]["total_wall_s"] = max(r["timing"].get("total_wall_s", 0.0) for r in results)
    merged["goal"] = goal_check(
        {k: v for k, v in merged["variants"].items() if k not in merged["probes"]},
        argparse.Namespace(ratings=first["config"]["ratings"]),
    )
    merged["paired_vs_default"] = paired_vs_default(merged["variants"], first["config"]["ratings"] // 2)
    write_outputs(merged, out_dir)
    return merged


def base_only(args, *, base_model_path, rows, users, team, model_name) -> dict:
    """``--base-only``: the base model's held-out score under every built-in rater (and ``--rater``)."""
    from webapp.training.evaluation import eval_prompts
    from webapp.training.models import VersionSample

    loop = Loop(name="default", seed=args.seed, args=args, base_model_path=base_model_path, rows=rows, users=users, team=team)
    point = loop.evaluate_base()
    version = loop.project.served_version
    prompt_ids = [p.pk for p in eval_prompts(project=loop.project)]
    samples = list(VersionSample.objects.filter(version=version, prompt_id__in=prompt_ids).select_related("prompt"))
    raters = {name: load_rater(name) for name in BUILTIN_RATERS} | {args.rater: args.rater_fn}
    scores = {}
    for name, rater in raters.items():
        values = [rater(s.prompt.text, s.text) for s in samples]
        scores[name] = {
            "mean": statistics.fmean(values),
            "se": statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0,
            "headroom_for_plus_1": statistics.fmean(values) + 1.0 <= 5.0,
        }
    return {
        "benchmark": "learning-base",
        "model": model_name,
        "heldout": len(samples),
        "max_new_tokens": args.max_new_tokens,
        "mean_length": point["mean_length"],
        "finished_fraction": point["finished_fraction"],
        "raters": scores,
        "texts_sample": point["texts_sample"],
        "wall_s": round(time.perf_counter() - loop.started, 1),
        "load_avg": list(os.getloadavg()),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.combine:
        result = combine(args.combine, Path(args.out))
        print(json.dumps(result))
        return result
    # A plain kill still removes the temporary data folder (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    out_dir = Path(args.out)
    data_dir = Path(tempfile.mkdtemp(prefix="rewardloop-learning-"))
    models_dir = Path(args.models_dir).resolve()
    try:
        django_setup(data_dir)
        import torch
        import transformers

        from django.contrib.auth import get_user_model

        from webapp.annotation.importers import demo_prompts_from_vader_sdist

        torch.set_num_threads(args.threads)
        transformers.utils.logging.disable_progress_bar()
        if args.tiny:
            from pgcore.tiny import write_tiny_model

            base_model_path = Path(write_tiny_model(data_dir / "tiny-model", seed=0))
            model_name = "tiny random model"
        else:
            from webapp.policies.services import base_model_ensure

            base_model_path = base_model_ensure(models_dir=models_dir)
            model_name = "SmolLM2-135M-Instruct"
        rows = demo_prompts_from_vader_sdist(args.prompts_sdist)
        team = annotator_team(args.annotators, delay_scale=args.delay_scale)
        User = get_user_model()
        users = [User.objects.create_user(username=a.name, password="simulated-annotator") for a in team]

        from pgcore.config import PGConfig
        from webapp.policies.models import Project

        if args.base_only:
            result = base_only(args, base_model_path=base_model_path, rows=rows, users=users, team=team, model_name=model_name)
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(out_dir / "learning-base.json", json.dumps(result, indent=2) + "\n")
            print(json.dumps(result))
            return result
        check_project_fields(args.variants)
        seeds = list(range(args.seed, args.seed + args.seeds))
        result = {
            "benchmark": "learning",
            "complete": False,
            "config": {
                "model": model_name,
                "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
                **{k: getattr(args, k) for k in ("ratings", "train_every", "heldout", "max_new_tokens", "pool_target", "target_gain", "seed", "guard")},
                "seeds": seeds,
                "rater": args.rater,
                # PGConfig per variant; its seed is each run's seed (shown here for the first).
                "variants": {v: PGConfig.from_dict(variant_config(v, args.pg, seeds[0])).to_dict() for v in args.variants},
                "project_settings": {v: PROJECT_FIELDS[v] for v in args.variants if v in PROJECT_FIELDS},
                "completions_per_prompt": args.completions_per_prompt
                or Project._meta.get_field("completions_per_prompt").default,
                "annotators": [dataclasses.asdict(a) for a in team],
                "delay_scale": args.delay_scale,
                "rating_scale": f"ideal = rater {args.rater}(prompt, completion) in [1, 5]; "
                "annotator = clip(round_half_up(ideal) + bias + noise, 1, 5)",
                "prompts": f"{len(rows)} demo prompts (vaderSentiment movie-review openings), {sum(r.held_out for r in rows)} held out",
                "low_water": args.low_water if args.low_water is not None else Project._meta.get_field("pool_low_water").default,
                "refill_clock": args.refill_clock,
                "batch_seconds": args.batch_seconds if args.refill_clock == "fixed" else None,
                "torch_threads": torch.get_num_threads(),
            },
            "host": {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg()), "python": platform.python_version()},
            "base": None,
            "variants": {},
            "runs": {},
            "timing": {},
        }

        def refresh() -> None:
            result["variants"] = {
                v: aggregate(result["runs"][v]) for v in args.variants if v in result["runs"]
            }
            result["timing"]["total_wall_s"] = round(time.perf_counter() - started, 1)
            result["goal"] = goal_check(result["variants"], args)
            result["paired_vs_default"] = paired_vs_default(result["variants"], args.ratings // 2)
            result["host"]["load_avg_now"] = list(os.getloadavg())

        for seed in seeds:
            for name in args.variants:
                t_variant = time.perf_counter()
                loop = Loop(name=name, seed=seed, args=args, base_model_path=base_model_path, rows=rows, users=users, team=team)
                base_point = loop.evaluate_base()
                if result["base"] is None:
                    result["base"] = {
                        k: base_point[k]
                        for k in (
                            "mean_rating", "mean_rating_se", "mean_compound", "mean_by_builtin_rater", "kl_per_completion",
                            "distinct2", "mean_length", "finished_fraction", "n_heldout", "texts_sample",
                        )
                    }
                curve = [base_point]

                def on_point(point, name=name, seed=seed, curve=curve, loop=loop, t_variant=t_variant):
                    curve.append(point)
                    run = summarise(curve, result["base"], args.target_gain)
                    run["sampling"] = loop.sampling_counts()
                    run["queue"] = loop.queue_summary()
                    result["runs"].setdefault(name, {})[str(seed)] = run
                    timing = result["timing"].setdefault(name, {})
                    timing[str(seed)] = {k: round(v, 1) for k, v in loop.timing.items()} | {
                        "wall_s": round(time.perf_counter() - t_variant, 1)
                    }
                    refresh()
                    write_outputs(result, out_dir)
                    print(
                        f"[learning] {name} seed {seed}: {point['ratings']} ratings, v{point['version']}: rating {point['mean_rating']:.3f}, "
                        f"KL {point['kl_per_completion']:.2f} nats, distinct-2 {point['distinct2']:.3f}, "
                        f"stale {point['stale_fraction']:.0%}, {time.perf_counter() - started:.0f}s",
                        file=sys.stderr,
                        flush=True,
                    )

                loop.run(on_point)
        result["complete"] = True
        refresh()
        write_outputs(result, out_dir)
    finally:
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"[learning] data kept in {data_dir}", file=sys.stderr)
    # The curves repeat sample texts; keep stdout to one readable JSON object all the same.
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
