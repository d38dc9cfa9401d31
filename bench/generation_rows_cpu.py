"""CPU per card, and CPU to the first card, of ``pgcore.rollout.generate_stream`` at several batch sizes.

Each call samples ``--cards`` prompts with ``--rows`` rows decoding at once (``batch_size``), 1 torch
thread: with ``--cards`` larger than the rows it is what a pool refill of that many cards does (the
continuous stream gives a finished row's slot to the next prompt; one completion per prompt). The
batch sizes alternate (8/16 then 16/8, ...) with seeds 0, 1, ... after a warm-up. CPU seconds
(``time.process_time``), so the figures compare on a shared machine: ``cpu_s`` for all the cards,
``first_card_cpu_s`` until the first one ended (what an annotator facing an empty pool waits for,
in CPU), ``cards_per_cpu_s``. One JSON object per call on stdout.

Usage: ``OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/python bench/generation_rows_cpu.py
[--rows 8,16] [--cards 0] [--reps 2] [--models tiny,smollm2-135m-instruct]`` (``--cards 0``: as many
cards as rows, one batch each, the first measurement's setting).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pgcore.policy import load_policy  # noqa: E402
from pgcore.rollout import generate_stream  # noqa: E402
from pgcore.tiny import write_tiny_model  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rows", default="8,16", help="batch sizes to alternate, comma-separated")
parser.add_argument("--cards", type=int, default=0, help="prompts per call (0: as many as rows)")
parser.add_argument("--reps", type=int, default=2, help="alternations (each runs every batch size once)")
parser.add_argument("--models", default="tiny,smollm2-135m-instruct")
args = parser.parse_args()
sizes = [int(r) for r in args.rows.split(",")]

torch.set_num_threads(1)
new_tokens = {"tiny": 96, "smollm2-135m-instruct": 48}
for name in args.models.split(","):
    path = write_tiny_model(tempfile.mkdtemp() + "/tiny", seed=0) if name == "tiny" else REPO / "var/models" / name
    policy = load_policy(path)
    tokens = new_tokens.get(name, 48)
    prompts = [f"Review {i}: the film was" for i in range(max(sizes + [args.cards]))]
    list(generate_stream(policy, prompts[:2], max_new_tokens=4, seed=0, batch_size=2))  # warm-up
    for rep in range(args.reps):
        for rows in sizes if rep % 2 == 0 else sizes[::-1]:
            cards = args.cards or rows
            c0, w0 = time.process_time(), time.monotonic()
            got, first = [], None
            for _, r in generate_stream(policy, prompts[:cards], max_new_tokens=tokens, seed=rep, batch_size=rows):
                got.append(r)
                if first is None:
                    first = (time.process_time() - c0, time.monotonic() - w0)
            cpu = time.process_time() - c0
            n_tok = sum(len(r.completion_ids) for r in got)
            row = {"model": name, "rows": rows, "cards": cards, "max_new_tokens": tokens, "seed": rep,
                   "cpu_s": round(cpu, 3), "first_card_cpu_s": round(first[0], 3),
                   "cpu_s_per_card": round(cpu / cards, 4), "cards_per_cpu_s": round(cards / cpu, 3),
                   "tokens": n_tok, "cpu_ms_per_token": round(cpu * 1000 / n_tok, 3),
                   "wall_s": round(time.monotonic() - w0, 2), "first_card_wall_s": round(first[1], 2),
                   "load_1m": os.getloadavg()[0]}
            print(json.dumps(row), flush=True)
