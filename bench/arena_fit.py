"""How long the arena's Bradley–Terry fit takes, and how well it recovers known strengths.

Simulates ``--votes`` blind votes among ``--versions`` versions with known strengths
(evenly spaced over ``--spread`` logits; ties with probability ``--tie``), fits them with
:func:`webapp.arena.selectors.bradley_terry_fit` (scipy MAP + Laplace, the leaderboard's fit,
run in the web request) and reports, per vote count: the fit's wall time (median of ``--repeats``),
the Spearman correlation of fitted and true strengths, and how many of the true strengths
lie inside their 95% intervals (after centring both). Needs no database.

Output: one JSON object.

    .venv/bin/python bench/arena_fit.py --versions 9 --votes 100 1000 5000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=9)
    parser.add_argument("--votes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--spread", type=float, default=2.0, help="logits between the weakest and the strongest")
    parser.add_argument("--tie", type=float, default=0.2, help="share of votes that are ties or both bad")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import django

    django.setup()
    from scipy.stats import spearmanr

    from webapp.arena.selectors import Z95, _comparisons, bradley_terry_fit

    rng = random.Random(args.seed)
    items = list(range(args.versions))
    true = {i: args.spread * (i / (args.versions - 1) - 0.5) for i in items}
    results = []
    for n_votes in args.votes:
        votes = []
        for _ in range(n_votes):
            a, b = rng.sample(items, 2)
            if rng.random() < args.tie:
                votes.append((a, b, "tie"))
            else:
                p = 1 / (1 + math.exp(true[b] - true[a]))
                votes.append((a, b, "a" if rng.random() < p else "b"))
        comparisons = _comparisons(votes)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            mean, cov = bradley_terry_fit(comparisons=comparisons, items=items)
            times.append(time.perf_counter() - start)
        inside = sum(abs(mean[i] - true[i]) <= Z95 * math.sqrt(cov[(i, i)]) for i in items)
        results.append({
            "votes": n_votes,
            "fit_ms_median": round(1000 * statistics.median(times), 2),
            "spearman": round(float(spearmanr([mean[i] for i in items], [true[i] for i in items]).statistic), 3),
            "true_inside_95": f"{inside}/{len(items)}",
            "mean_halfwidth_elo": round(statistics.mean(Z95 * 400 / math.log(10) * math.sqrt(cov[(i, i)]) for i in items), 1),
        })
    print(json.dumps({"versions": args.versions, "spread_logits": args.spread, "tie_share": args.tie,
                      "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "results": results}))


if __name__ == "__main__":
    main()
