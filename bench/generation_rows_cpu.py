"""CPU per card and per token of one ``pgcore.rollout.generate_stream`` call at 8 and at 16 rows.

``rows`` prompts decode as one batch (``batch_size = rows``), 1 torch thread, on the tiny random
model (96 new tokens at most) and on SmolLM2-135M-Instruct from ``var/models`` (48), alternating
8/16 then 16/8 with seeds 0 and 1 after a warm-up. CPU seconds (``time.process_time``), so the
figure compares on a shared machine. One JSON object per call on stdout.

Usage: ``OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python bench/generation_rows_cpu.py``
"""

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

torch.set_num_threads(1)
tiny = write_tiny_model(tempfile.mkdtemp() + "/tiny", seed=0)
out = []
for name, path, tokens in (("tiny", tiny, 96), ("smollm2-135m-instruct", REPO / "var/models/smollm2-135m-instruct", 48)):
    policy = load_policy(path)
    prompts = [f"Review {i}: the film was" for i in range(16)]
    list(generate_stream(policy, prompts[:2], max_new_tokens=4, seed=0, batch_size=2))  # warm-up
    for rep in range(2):
        for rows in (8, 16) if rep == 0 else (16, 8):
            c0, w0 = time.process_time(), time.monotonic()
            got = [r for _, r in generate_stream(policy, prompts[:rows], max_new_tokens=tokens, seed=rep, batch_size=rows)]
            cpu = time.process_time() - c0
            n_tok = sum(len(r.completion_ids) for r in got)
            out.append({"model": name, "rows": rows, "max_new_tokens": tokens, "cpu_s": round(cpu, 3),
                        "cpu_s_per_card": round(cpu / rows, 4), "tokens": n_tok, "cpu_ms_per_token": round(cpu * 1000 / n_tok, 3),
                        "wall_s": round(time.monotonic() - w0, 2), "load_1m": os.getloadavg()[0]})
            print(json.dumps(out[-1]), flush=True)
