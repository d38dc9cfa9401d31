"""How well does pgcore's reward model predict a rater from few labels? Prints one JSON object.

Data: movie-review snippets of the VADER research set (the ``vaderSentiment==3.3.2`` sdist
under ``var/downloads``, as ``bench/learning.py`` uses it). Each snippet of 12-60 words
is split the way the demo prompts are (``webapp.annotation.importers``): the first half
becomes the prompt ("Continue this movie review ...: <start>", in SmolLM2's chat
template) and the second half plays the completion. The rater is VADER's compound
sentiment of the completion text (``bench/simulated_annotators.compound``), in [-1, 1].
No feature looks at VADER's lexicon: only the frozen base model's hidden states and,
in one variant, generic text statistics (length, punctuation, capitals, digits).

Protocol: one fixed held-out set (``--test``, default 300 completions); training sets of
64, 256 and 800 labels drawn from the rest, ``--repeats`` draws each (default 3),
mean and per-draw values reported. Metrics on the held-out set: Pearson and Spearman
with the compound score and pairwise accuracy (share of held-out pairs with different
compound that the prediction orders the same way). ``fit/seconds`` at 1,000 ratings is
timed separately, features already cached (they are computed once per completion).

Variants:

- ``ridge_last_mean``: the baseline DESIGN.md quotes (ridge probe on the mean-pooled last
  layer; alpha by 5-fold cross-validation on the training set).
- ``rm_<head>_<features>``: pgcore's ensemble (``pgcore.reward_model.fit``), K=5 bootstrap
  members, heads ``linear`` or ``mlp``, features ``last_mean`` or ``multi`` (mean and
  last-token states of several layers, concatenated), optionally ``+text``.
- ``rm_ridge_multi_pca256`` / ``rm_ridge_multi``: the same ensemble with each bootstrap member
  fitted in closed form (weighted ridge, penalty by 5-fold CV; ``head="ridge"``).
- ``rm_mlp_multi_pairs``: the same labels budget spent on comparisons (Bradley-Terry):
  ``n`` random pairs among ``n`` completions, target 1/0 by which has the higher compound,
  0.5 when equal.

With ``--rater NAME`` (a built-in of ``bench/raters.py``: ``vader``, ``critical``,
``concise``, or ``package.module:callable``) the data are instead the policy's own
completions, as ``bench/learning.py`` rates them: the demo prompts
(``webapp.annotation.vader.demo_prompt_texts``, at most 400), ``--per-prompt``
completions each (default 2), sampled by the app's sampler (``pgcore.rollout.generate``)
from the base model with ``--max-new-tokens`` (default 32) and cached. The held-out set is
the completions of the first prompts (``--test`` completions, whole prompts); the model is
measured against the rater's noise-free score. The training labels are what the app's
reward model is fitted on (``--labels annotators``, the default): each training completion
is rated by one of the benchmark's simulated annotators (``default_team``, in turn: bias,
noise, whole points), the ratings mapped to [-1, 1] and normalised per annotator with
``pgcore.rewards.ratings_to_rewards`` (PGConfig's defaults); ``--labels clean`` uses the
rater's noise-free score instead. Sizes 32, 64, 128 and 256 labels. One more metric,
``within_prompt_accuracy``: over held-out prompts whose completions differ in score, the
share of those pairs the prediction orders the same way (what a per-prompt baseline uses).

Usage::

    REWARDLOOP_MODELS_DIR=/work/main/var/models .venv/bin/python bench/reward_model.py
    .venv/bin/python bench/reward_model.py --rater critical --variants rm_linear_multi_pca256,ridge_multi
    .venv/bin/python bench/reward_model.py --tiny     # plumbing check on the tiny random model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pgcore.reward_model import (  # noqa: E402
    Judgments,
    RewardModelConfig,
    completion_features,
    fit,
    pairwise_accuracy,
    pearson,
    spearman,
)
from webapp.annotation.vader import DEMO_INSTRUCTION, demo_prompt_texts, movie_review_snippets  # noqa: E402

SIZES = (64, 256, 800)
OWN_SIZES = (32, 64, 128, 256)  # --rater: the label counts bench/learning.py's reward model sees
BASELINE_QUOTED = {"64": 0.30, "256": 0.45, "800": 0.47}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sdist", default=str(REPO / "var" / "downloads" / "vaderSentiment-3.3.2.tar.gz"))
    p.add_argument("--models-dir", default=os.environ.get("REWARDLOOP_MODELS_DIR", str(REPO / "var" / "models")))
    p.add_argument("--tiny", action="store_true", help="tiny random model, small sizes: checks the plumbing only")
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", default="8,16,24,30", help="layers of the 'multi' features (hidden-state indices)")
    p.add_argument("--variants", default="all")
    p.add_argument(
        "--timing-variant", default="rm_mlp_multi_pca256", help="variant whose fit is timed at 1,000 ratings"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=str(REPO / "var" / "bench_cache"))
    p.add_argument("--rater", default=None, help="own completions rated by this rater (see the module docstring)")
    p.add_argument("--labels", choices=("annotators", "clean"), default="annotators", help="with --rater: training labels")
    p.add_argument("--per-prompt", type=int, default=2, help="with --rater: completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32, help="with --rater: completion length cap")
    p.add_argument("--seed", type=int, default=0, help="with --rater: sampling and annotators' seed")
    return p.parse_args(argv)


def load_snippets(sdist: Path) -> list[list[str]]:
    snippets = [words for _, words in movie_review_snippets(sdist)]
    random.Random(1234).shuffle(snippets)
    return snippets


def own_completions(policy, model_dir: Path, args, *, n_prompts: int) -> tuple[list[list[int]], list[dict]]:
    """The base model's own completions of the demo prompts, cached as JSON under ``--cache``.

    Returns ``(prompt_ids, rows)``: per completion the rendered prompt's token ids and
    ``{"prompt": text, "group": prompt index, "completion_ids": [...], "text": str, "finished": bool}``,
    grouped by prompt in prompt order.
    """
    from pgcore.rollout import generate, render_prompt

    texts = [text for _, text in demo_prompt_texts(args.sdist, count=n_prompts)]
    key_text = json.dumps([str(model_dir), texts, args.per_prompt, args.max_new_tokens, args.seed])
    cache = Path(args.cache) / f"own-completions-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.json"
    if cache.exists():
        rows = json.loads(cache.read_text())
    else:
        repeated = [t for t in texts for _ in range(args.per_prompt)]
        rollouts = generate(policy, repeated, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=16)
        rows = [
            {"prompt": t, "group": i // args.per_prompt, "completion_ids": r.completion_ids, "text": r.text,
             "finished": r.finished}
            for i, (t, r) in enumerate(zip(repeated, rollouts))
        ]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rows))
    rendered = {t: render_prompt(policy.tokenizer, t) for t in texts}
    return [rendered[r["prompt"]] for r in rows], rows


def annotator_labels(scores: list[float], *, seed: int) -> torch.Tensor:
    """Normalised training targets (reward units) of items whose rater scores are ``scores`` (1-5).

    Item ``i`` is rated by ``default_team()[i % 4]`` (``SimulatedAnnotator.rate_ideal``: round
    half up, bias, noise, clip); the Likert ratings are mapped to [-1, 1] and normalised per
    annotator by ``pgcore.rewards.ratings_to_rewards`` with PGConfig's defaults, as the app's
    reward-model fit does. ``(N,)`` float.
    """
    from bench.simulated_annotators import default_team
    from pgcore.config import PGConfig
    from pgcore.rewards import RatingRecord, likert_to_score, ratings_to_rewards

    team, rng, pg = default_team(), random.Random(seed), PGConfig()
    records = [
        RatingRecord(completion_index=i, annotator=i % len(team), score=likert_to_score(team[i % len(team)].rate_ideal(s, rng)))
        for i, s in enumerate(scores)
    ]
    return ratings_to_rewards(records, len(scores), annotator_norm=pg.annotator_norm, shrinkage=pg.annotator_shrinkage)


def within_group_accuracy(pred: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> float | None:
    """Share of pairs from the same ``group`` (prompt) with different ``target`` that ``pred``
    orders the same way (ties in ``pred`` count one half); ``None`` when there is no such pair.
    ``(N,)`` each."""
    same = (group[:, None] == group[None, :]) & torch.triu(torch.ones(len(group), len(group), dtype=torch.bool), 1)
    dt = target[:, None] - target[None, :]
    use = same & (dt != 0)
    if not use.any():
        return None
    dp = pred[:, None] - pred[None, :]
    agree = torch.where(dp == 0, 0.5, (torch.sign(dp) == torch.sign(dt)).double())
    return float(agree[use].mean())


def text_features(texts: list[str]) -> torch.Tensor:
    """Generic statistics of each text, ``(N, 8)``: nothing about sentiment words."""
    rows = []
    for t in texts:
        n = max(1, len(t))
        rows.append(
            [
                len(t) / 100,
                len(t.split()) / 20,
                t.count("!") / n * 100,
                t.count("?") / n * 100,
                t.count(",") / n * 100,
                t.count(".") / n * 100,
                sum(c.isupper() for c in t) / n * 10,
                sum(c.isdigit() for c in t) / n * 10,
            ]
        )
    return torch.tensor(rows, dtype=torch.float32)


def ridge_probe(x_train, y_train, x_test) -> torch.Tensor:
    """Ridge regression on standardised features; alpha by 5-fold CV from a log grid."""
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    xs, xt = (x_train - mean) / std, (x_test - mean) / std
    y_mean = y_train.mean()

    def solve(x, y, alpha):
        # Dual form: (X X^T + alpha I)^-1 y, cheap when N < F.
        gram = x @ x.T
        coef = torch.linalg.solve(gram + alpha * torch.eye(len(x), dtype=x.dtype), y - y.mean())
        return x.T @ coef, y.mean()

    alphas = [10.0**k for k in range(0, 6)]
    folds = torch.arange(len(xs)) % 5
    best, best_err = alphas[0], float("inf")
    for alpha in alphas:
        err = 0.0
        for f in range(5):
            tr, va = folds != f, folds == f
            if va.sum() == 0 or tr.sum() < 2:
                continue
            w, b = solve(xs[tr].double(), y_train[tr].double(), alpha)
            err += float(((xs[va].double() @ w + b - y_train[va].double()) ** 2).sum())
        if err < best_err:
            best, best_err = alpha, err
    w, _b = solve(xs.double(), y_train.double(), best)
    return (xt.double() @ w + float(y_mean)).float()


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from simulated_annotators import compound

    from pgcore.policy import load_policy
    from pgcore.rollout import render_prompt

    if args.tiny:
        from pgcore.tiny import write_tiny_model

        model_dir = write_tiny_model(Path(args.cache) / "tiny-model")
        sizes, n_test, layers = (16, 32), 40, [1, 2]
    else:
        model_dir = Path(args.models_dir) / "smollm2-135m-instruct"
        if not (model_dir / "config.json").exists():
            raise SystemExit(f"{model_dir} missing: run base_model_ensure (webapp.policies.services) once")
        sizes, n_test, layers = SIZES, args.test, [int(x) for x in args.layers.split(",")]
    if args.rater and not args.tiny:
        sizes = OWN_SIZES
    n_timing = 1000 if not args.tiny else 50
    policy = load_policy(model_dir)
    n_layers = policy.model.config.num_hidden_layers
    if args.rater:
        from bench.raters import load_rater

        rater = load_rater(args.rater)
        n_test = -(-n_test // args.per_prompt) * args.per_prompt  # whole prompts
        n_prompts = min(400, -(-(n_test + 3 * max(sizes) // 2) // args.per_prompt))
        prompts, rows = own_completions(policy, model_dir, args, n_prompts=n_prompts)
        completions = [r["text"] for r in rows]
        completion_ids = [r["completion_ids"] for r in rows]
        scores = [rater(r["prompt"], r["text"]) for r in rows]
        y_test_all = torch.tensor(scores)
        if args.labels == "annotators":
            y_train_all = annotator_labels(scores, seed=args.seed)
        else:
            y_train_all = (y_test_all - 3) / 2
        groups = torch.tensor([r["group"] for r in rows])
        source_key = hashlib.sha256(json.dumps(completion_ids).encode()).hexdigest()[:16]
        rater_text = (
            f"rater {args.rater} (1-5) of the base model's own completions, {args.per_prompt} per prompt, "
            f"at most {args.max_new_tokens} tokens; trained on {args.labels} labels"
        )
    else:
        n_total = n_test + max(sizes)
        snippets = load_snippets(Path(args.sdist))[: max(n_total, n_timing)]
        prompts, completions, targets = [], [], []
        for words in snippets:
            cut = max(6, len(words) // 2)
            prompts.append(render_prompt(policy.tokenizer, DEMO_INSTRUCTION.format(start=" ".join(words[:cut]))))
            text = " ".join(words[cut:])
            completions.append(text)
            targets.append(compound(text))
        completion_ids = [policy.tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in completions]
        y_train_all = y_test_all = torch.tensor(targets)
        groups = torch.arange(len(completions))
        source_key = "reviews"
        rater_text = "VADER compound of the completion text, in [-1, 1]"
    n_items = len(completions)
    if args.rater:
        n_total = n_items

    # Every layer's mean and last-token state, computed once and cached.
    all_layers = RewardModelConfig(
        layers=tuple(range(n_layers + 1)), pooling="mean_last", max_prompt_tokens=32, max_completion_tokens=64
    )
    key_text = json.dumps([str(model_dir), n_items, all_layers.feature_spec()] + ([source_key] if args.rater else []))
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache = Path(args.cache) / f"rm-features-{key}.pt"
    if cache.exists():
        feats, extract_s = torch.load(cache)
    else:
        t0 = time.perf_counter()
        pad = policy.tokenizer.pad_token_id or 0
        feats = completion_features(policy.model, prompts, completion_ids, all_layers, pad_id=pad, batch_size=16)
        extract_s = time.perf_counter() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save((feats, extract_s), cache)
    d = policy.model.config.hidden_size
    feats = feats.view(n_items, n_layers + 1, 2, d)  # (N, layer, [mean, last], D)
    feature_sets = {
        "last_mean": feats[:, n_layers, 0],
        "multi": feats[:, layers].reshape(n_items, -1),
    }
    feature_sets["multi+text"] = torch.cat([feature_sets["multi"], text_features(completions)], dim=1)

    test = torch.arange(n_test)
    pool = torch.arange(n_test, n_total)
    rm = dict(n_members=5, epochs=300)
    variants = {
        "ridge_last_mean": ("ridge", "last_mean", None),
        "ridge_multi": ("ridge", "multi", None),
        "rm_linear_last_mean": ("rm", "last_mean", RewardModelConfig(head="linear", **rm)),
        "rm_mlp_last_mean": ("rm", "last_mean", RewardModelConfig(head="mlp", **rm)),
        "rm_linear_multi": ("rm", "multi", RewardModelConfig(head="linear", **rm)),
        "rm_mlp_multi": ("rm", "multi", RewardModelConfig(head="mlp", **rm)),
        "rm_mlp_multi+text": ("rm", "multi+text", RewardModelConfig(head="mlp", **rm)),
        "rm_linear_multi_pca64": ("rm", "multi", RewardModelConfig(head="linear", pca_dim=64, **rm)),
        "rm_mlp_multi_pca64": ("rm", "multi", RewardModelConfig(head="mlp", pca_dim=64, **rm)),
        "rm_mlp_multi_pca256": ("rm", "multi", RewardModelConfig(head="mlp", pca_dim=256, **rm)),
        "rm_mlp_multi_pairs": ("pairs", "multi", RewardModelConfig(head="mlp", **rm)),
        "rm_linear_multi_pca256": ("rm", "multi", RewardModelConfig(head="linear", pca_dim=256, **rm)),
        "rm_ridge_multi_pca256": ("rm", "multi", RewardModelConfig(head="ridge", pca_dim=256, **rm)),
        "rm_ridge_multi": ("rm", "multi", RewardModelConfig(head="ridge", **rm)),
        "rm_mlp_multi_pca256_pairs": ("pairs", "multi", RewardModelConfig(head="mlp", pca_dim=256, **rm)),
        "rm_mlp_multi_pca256+text": ("rm", "multi+text", RewardModelConfig(head="mlp", pca_dim=256, **rm)),
        "rm_linear_multi_pca256+text": ("rm", "multi+text", RewardModelConfig(head="linear", pca_dim=256, **rm)),
        "rm_ridge_multi_pca64": ("rm", "multi", RewardModelConfig(head="ridge", pca_dim=64, **rm)),
    }
    all_variants = dict(variants)
    if args.variants != "all":
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}

    result = {
        "bench": "reward_model",
        "model": str(model_dir),
        "rater": rater_text,
        "sizes": list(sizes),
        "test_size": n_test,
        "repeats": args.repeats,
        "multi_layers": layers,
        "features": {k: int(v.shape[1]) for k, v in feature_sets.items()},
        "feature_extraction": {
            "completions": n_items,
            "seconds": round(extract_s, 1),
            "ms_per_completion": round(1000 * extract_s / n_items, 1),
            "note": "all layers at once, prompt tail 32 + completion 64 tokens, batch 16; cached per completion",
        },
        "baseline_quoted_pearson": BASELINE_QUOTED,
        "variants": {},
        "host": {"cpus": os.cpu_count(), "threads": args.threads, "load_avg_at_start": list(os.getloadavg())},
    }
    for name, (kind, feature_name, config) in variants.items():
        x = feature_sets[feature_name]
        per_size = {}
        for n in sizes:
            draws = []
            for r in range(args.repeats):
                g = torch.Generator().manual_seed(100 * r + n)
                train = pool[torch.randperm(len(pool), generator=g)[:n]]
                t0 = time.perf_counter()
                if kind == "ridge":
                    pred = ridge_probe(x[train], y_train_all[train], x[test])
                else:
                    cfg = RewardModelConfig(**{**config.to_dict(), "seed": r})
                    if kind == "rm":
                        judgments = Judgments(train, y_train_all[train])
                    else:
                        a = train
                        b = train[torch.randperm(n, generator=g)]
                        same = a == b
                        b[same] = train[(torch.nonzero(same).flatten() + 1) % n]
                        diff = y_train_all[a] - y_train_all[b]
                        pair_target = torch.where(diff == 0, 0.5, (diff > 0).float())
                        judgments = Judgments(pair_a=a, pair_b=b, pair_target=pair_target)
                    model, _metrics = fit(x, judgments, cfg)
                    pred, _std = model.score(x[test])
                draws.append(
                    {
                        "pearson": pearson(pred, y_test_all[test]),
                        "spearman": spearman(pred, y_test_all[test]),
                        "pairwise_accuracy": pairwise_accuracy(pred, y_test_all[test]),
                        "within_prompt_accuracy": within_group_accuracy(pred, y_test_all[test], groups[test]),
                        "fit_seconds": round(time.perf_counter() - t0, 2),
                    }
                )
            per_size[str(n)] = {
                k: round(sum(d[k] for d in draws) / len(draws), 3) if all(d[k] is not None for d in draws) else None
                for k in ("pearson", "spearman", "pairwise_accuracy", "within_prompt_accuracy", "fit_seconds")
            }
            per_size[str(n)]["pearson_draws"] = [None if d["pearson"] is None else round(d["pearson"], 3) for d in draws]
            print(f"{name} n={n}: {per_size[str(n)]}", file=sys.stderr, flush=True)
        result["variants"][name] = per_size

    # Fit time at 1,000 ratings (features cached, as in the app) for one variant.
    if args.timing_variant == "none":
        result["total_wall_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps(result, indent=1))
        return result
    _kind, feature_name, timing_config = all_variants[args.timing_variant]
    timing_rows = torch.arange(min(n_timing, n_items))
    t0 = time.perf_counter()
    fit(feature_sets[feature_name], Judgments(timing_rows, y_train_all[timing_rows]), timing_config)
    result["fit_at_1000"] = {
        "variant": args.timing_variant,
        "ratings": len(timing_rows),
        "features": int(feature_sets[feature_name].shape[1]),
        "seconds": round(time.perf_counter() - t0, 2),
        "config": timing_config.to_dict(),
    }
    result["total_wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
