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

Usage::

    REWARDLOOP_MODELS_DIR=/work/main/var/models .venv/bin/python bench/reward_model.py
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
from webapp.annotation.vader import movie_review_snippets  # noqa: E402

DEMO_INSTRUCTION = "Continue this movie review in two or three sentences:\n\n{start}"  # as webapp.annotation.importers
SIZES = (64, 256, 800)
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
    return p.parse_args(argv)


def load_snippets(sdist: Path) -> list[list[str]]:
    snippets = [words for _, words in movie_review_snippets(sdist)]
    random.Random(1234).shuffle(snippets)
    return snippets


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
    n_total = n_test + max(sizes)
    n_timing = 1000 if not args.tiny else 50
    policy = load_policy(model_dir)
    n_layers = policy.model.config.num_hidden_layers
    snippets = load_snippets(Path(args.sdist))[: max(n_total, n_timing)]
    prompts, completions, targets = [], [], []
    for words in snippets:
        cut = max(6, len(words) // 2)
        prompts.append(render_prompt(policy.tokenizer, DEMO_INSTRUCTION.format(start=" ".join(words[:cut]))))
        text = " ".join(words[cut:])
        completions.append(text)
        targets.append(compound(text))
    completion_ids = [policy.tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in completions]
    y = torch.tensor(targets)

    # Every layer's mean and last-token state, computed once and cached.
    all_layers = RewardModelConfig(
        layers=tuple(range(n_layers + 1)), pooling="mean_last", max_prompt_tokens=32, max_completion_tokens=64
    )
    key_text = json.dumps([str(model_dir), len(snippets), all_layers.feature_spec()])
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
    feats = feats.view(len(snippets), n_layers + 1, 2, d)  # (N, layer, [mean, last], D)
    feature_sets = {
        "last_mean": feats[:, n_layers, 0],
        "multi": feats[:, layers].reshape(len(snippets), -1),
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
    }
    all_variants = dict(variants)
    if args.variants != "all":
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}

    result = {
        "bench": "reward_model",
        "model": str(model_dir),
        "rater": "VADER compound of the completion text, in [-1, 1]",
        "sizes": list(sizes),
        "test_size": n_test,
        "repeats": args.repeats,
        "multi_layers": layers,
        "features": {k: int(v.shape[1]) for k, v in feature_sets.items()},
        "feature_extraction": {
            "completions": len(snippets),
            "seconds": round(extract_s, 1),
            "ms_per_completion": round(1000 * extract_s / len(snippets), 1),
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
                    pred = ridge_probe(x[train], y[train], x[test])
                else:
                    cfg = RewardModelConfig(**{**config.to_dict(), "seed": r})
                    if kind == "rm":
                        judgments = Judgments(train, y[train])
                    else:
                        a = train
                        b = train[torch.randperm(n, generator=g)]
                        same = a == b
                        b[same] = train[(torch.nonzero(same).flatten() + 1) % n]
                        diff = y[a] - y[b]
                        pair_target = torch.where(diff == 0, 0.5, (diff > 0).float())
                        judgments = Judgments(pair_a=a, pair_b=b, pair_target=pair_target)
                    model, _metrics = fit(x, judgments, cfg)
                    pred, _std = model.score(x[test])
                draws.append(
                    {
                        "pearson": pearson(pred, y[test]),
                        "spearman": spearman(pred, y[test]),
                        "pairwise_accuracy": pairwise_accuracy(pred, y[test]),
                        "fit_seconds": round(time.perf_counter() - t0, 2),
                    }
                )
            per_size[str(n)] = {
                k: round(sum(d[k] for d in draws) / len(draws), 3)
                for k in ("pearson", "spearman", "pairwise_accuracy", "fit_seconds")
            }
            per_size[str(n)]["pearson_draws"] = [round(d["pearson"], 3) for d in draws]
            print(f"{name} n={n}: {per_size[str(n)]}", file=sys.stderr, flush=True)
        result["variants"][name] = per_size

    # Fit time at 1,000 ratings (features cached, as in the app) for one variant.
    if args.timing_variant == "none":
        result["total_wall_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps(result, indent=1))
        return result
    _kind, feature_name, timing_config = all_variants[args.timing_variant]
    timing_rows = torch.arange(min(n_timing, len(snippets)))
    t0 = time.perf_counter()
    fit(feature_sets[feature_name], Judgments(timing_rows, y[timing_rows]), timing_config)
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
