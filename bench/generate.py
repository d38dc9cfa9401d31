"""Generation throughput against the machine's limit: pgcore's sampler vs Hugging Face ``generate``.

On SmolLM2-135M-Instruct, in one process: the measured matmul peak (fp32, and bf16 where the
CPU multiplies bf16 natively), the compute limit it implies at 2N FLOP per generated token,
then for every setting (precision x LoRA adapter or not x batch size) tokens/s and time to
first token of

- ``pgcore``: ``pgcore.rollout.generate`` as the app calls it (fast path: LoRA merged into
  a copy of the weights, preallocated KV cache, finished rows leave the batch);
- ``pgcore_generic``: the same function with ``fast=False``: the model's own forward with a
  ``DynamicCache`` per step (pgcore's sampler before issue 17), on the policy's module (bf16:
  under autocast);
- ``hf``: ``model.generate`` of transformers (temperature 1, no top-k/top-p) on the same
  module and prompts as ``pgcore_generic``;
- ``pgcore_compiled`` (``--compile``): ``pgcore`` with the decoder step
  (``pgcore.rollout._forward_fast``) wrapped in ``torch.compile(dynamic=True)``; the first
  call (the compilation) is timed apart as ``compile_s``;
- ``pgcore_chunked`` and ``pgcore_continuous`` (``--stream-factor F``): ``F x batch``
  prompts, sampled ``batch`` at a time one chunk after another (each chunk waits for its
  longest completion) or with continuous batching (``generate(..., batch_size=batch)``:
  a finished row's slot goes to a waiting prompt).

Tokens/s counts generated tokens up to and including each row's first EOS (the work a
caller gets), over the wall time of one batch; time to first token is one batch with
``max_new_tokens=1``.

Two figures against the matmul peak, per setting. ``ratio_to_limit`` (the issue's): pgcore's
tokens/s over the limit at 2N FLOP per *generated* token (N parameters), so the prompts'
prefill counts as time but not as work; with short completions (24 new tokens at batch 64)
the prefill is a large part of the run and this figure cannot come near 1.
``ratio_to_peak_with_prefill``: the FLOPs of prefill plus decoding actually needed, over the
time, over the peak: 2N per token position computed, where the positions are every
generated token plus every prompt token pgcore runs (``prefill_positions``: a shared
prefix, :func:`pgcore.rollout.shared_prefix_length`, counted once per batch as pgcore runs
it; left padding not counted). Attention's own FLOPs (~4 x layers x hidden x context per
position, under 2% of 2N at these lengths) are left out of both. Use
``--new-tokens 96`` (the app's completion length) to see decoding with less prefill. The sampler/trainer mismatch of each pgcore setting compares the
behaviour logprobs the sampler stored with ``pgcore.logprobs.score_completions`` of the
same tokens under the trainer's setting (``PGConfig()``: bf16 autocast where native): the
mean per-token k3 estimate of KL(sampler || trainer) and the largest per-token ratio
``exp(|log pi_trainer - log mu_sampler|)``. The LoRA adapter is a fresh r16 adapter whose B
matrices are set to small random values, so that it changes the outputs.

Prints ONE JSON object on stdout; progress goes to stderr. Not a test. The machine is shared:
compare ratios within one run; the matmul peak is the best of a measurement at the start and
one at the end (the rows printed during the run use the first).

Usage: python bench/generate.py [--batches 1,8,32,64] [--new-tokens 64] [--precisions fp32,bf16]
       [--lora both|yes|no] [--engines pgcore,pgcore_generic,hf] [--threads N] [--model-dir DIR]
       [--compile] [--stream-factor F] [--lanes N|auto]

``--lanes N|auto``: pgcore's engines split each batch into N CPU lanes, one thread each
(``generate(..., lanes=N)``, ``pgcore.rollout.sample_split``); ``auto``: ``pgcore.rollout.split_lanes``;
1: one batch at ``--threads`` threads; default ``auto``, as the app samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pgcore.config import PGConfig  # noqa: E402
from pgcore.logprobs import score_completions  # noqa: E402
from pgcore.policy import convert_gguf_to_hf, load_policy, smollm2_gguf_path  # noqa: E402
from pgcore.rollout import (  # noqa: E402
    SHARED_PREFIX_MIN_SAVED,
    default_device,
    eos_token_ids,
    generate,
    left_pad,
    render_prompt,
    shared_prefix_length,
    split_lanes,
)
from pgcore.trainer import bf16_autocast_active, frozen_weights_in_bf16, native_bf16_matmul  # noqa: E402

DEFAULT_MODEL_DIR = Path(os.environ.get("PGCORE_SMOLLM2_DIR", "/tmp/smollm2-hf"))
TOPICS = (
    "the water cycle", "how a bicycle gear works", "why the sky is blue", "photosynthesis", "a haiku about rain",
    "the rules of chess", "how to boil an egg", "what a prime number is", "the French revolution",
    "how vaccines work", "a short story about a cat", "the difference between weather and climate",
    "how to write a good email", "what gravity is", "the history of tea", "how computers add numbers",
)
STYLES = ("Explain {} to a child.", "Write three sentences about {}.", "Give me a fun fact about {}.", "Describe {} briefly.")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def prompts(n: int) -> list[str]:
    """``n`` distinct short instructions (deterministic)."""
    out = [style.format(topic) for style in STYLES for topic in TOPICS]
    return [out[i % len(out)] + ("" if i < len(out) else f" ({i // len(out)})") for i in range(n)]


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 6) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for i in range(reps + 2):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_tokens(completions: list[list[int]], eos: set[int]) -> int:
    """Generated tokens up to and including each row's first EOS."""
    total = 0
    for row in completions:
        n = len(row)
        for t, tok in enumerate(row):
            if tok in eos:
                n = t + 1
                break
        total += n
    return total


def prefill_positions(prompt_ids: list[list[int]], shared_once: bool) -> int:
    """Prompt token positions one batch's prefill computes, padding left out: every prompt's
    tokens, with the prefix they all share counted once when ``shared_once`` (pgcore's
    prefill, which runs it once when that saves at least ``SHARED_PREFIX_MIN_SAVED``)."""
    total = sum(len(p) for p in prompt_ids)
    shared = shared_prefix_length(prompt_ids) if shared_once else 0
    if (len(prompt_ids) - 1) * shared < SHARED_PREFIX_MIN_SAVED:
        shared = 0
    return total - (len(prompt_ids) - 1) * shared


def hf_generate(policy, texts: list[str], max_new_tokens: int, seed: int, bf16: bool) -> list[list[int]]:
    """Hugging Face ``generate`` on the policy's module: ancestral sampling at temperature 1."""
    tok = policy.tokenizer
    ids, mask = left_pad([render_prompt(tok, t) for t in texts], tok.pad_token_id)
    device = next(policy.model.parameters()).device
    torch.manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        out = policy.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(eos_token_ids(policy)),
        )
    return out[:, ids.shape[1] :].tolist()


@contextlib.contextmanager
def compiled_decoder():
    """``pgcore.rollout._forward_fast`` under ``torch.compile(dynamic=True)`` while inside."""
    from pgcore import rollout

    eager = rollout._forward_fast
    if not hasattr(compiled_decoder, "fn"):
        compiled_decoder.fn = torch.compile(eager, dynamic=True)
    rollout._forward_fast = compiled_decoder.fn
    try:
        yield
    finally:
        rollout._forward_fast = eager


LANES: int | None = None  # --lanes: generate()'s lanes for pgcore's fast-path engines (None: split_lanes)


def run_engine(engine, policy, texts, max_new_tokens, seed, precision, batch=None):
    """Completion token lists (and pgcore rollouts, else None) of one batch (``texts``), or of
    ``texts`` sampled ``batch`` at a time (chunked / continuous)."""
    bf16 = precision == "bf16"
    if engine == "pgcore_compiled":
        with compiled_decoder():
            return run_engine("pgcore", policy, texts, max_new_tokens, seed, precision)
    if engine == "pgcore_continuous":
        rollouts = generate(
            policy, texts, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch or len(texts), precision=precision,
            lanes=LANES,
        )
        return [r.completion_ids for r in rollouts], rollouts
    if engine == "pgcore_chunked":
        rollouts = []
        step = batch or len(texts)
        for start in range(0, len(texts), step):
            rollouts += generate(
                policy, texts[start : start + step], max_new_tokens=max_new_tokens, seed=seed + start,
                batch_size=step, precision=precision, lanes=LANES,
            )
        return [r.completion_ids for r in rollouts], rollouts
    if engine == "hf":
        return hf_generate(policy, texts, max_new_tokens, seed, bf16), None
    if engine == "pgcore_generic":
        device = next(policy.model.parameters()).device
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            rollouts = generate(
                policy, texts, max_new_tokens=max_new_tokens, seed=seed, batch_size=len(texts), fast=False,
                device=device,
            )
    else:
        rollouts = generate(
            policy, texts, max_new_tokens=max_new_tokens, seed=seed, batch_size=len(texts), precision=precision,
            lanes=LANES,
        )
    return [r.completion_ids for r in rollouts], rollouts


def with_prefill(row: dict, peak_gflops: float, n_params: int) -> None:
    """Add ``ratio_to_peak_with_prefill`` to ``row`` (pgcore's): 2N FLOP per prompt position
    prefilled and per token generated, over the seconds of the run, over the peak."""
    run = row["pgcore"]
    if "prefill_positions" not in run:
        return
    flops = 2 * n_params * (run["prefill_positions"] + run["tokens"])
    row["ratio_to_peak_with_prefill"] = round(flops / run["seconds"] / (peak_gflops * 1e9), 3)


def mismatch(policy, rollouts) -> dict:
    """k3 KL(sampler || trainer) per token and the largest per-token ratio, vs ``PGConfig()``'s trainer."""
    config = PGConfig()
    prompt_ids = [r.prompt_ids for r in rollouts]
    completion_ids = [r.completion_ids for r in rollouts]
    bf16 = bf16_autocast_active(config)
    out = {}
    for name, use_bf16 in (("trainer", bf16), ("trainer_fp32", False)):
        if name == "trainer_fp32" and not bf16:
            continue
        weights = frozen_weights_in_bf16(policy) if use_bf16 else contextlib.nullcontext()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        trainer_lp = []
        with torch.no_grad(), weights, autocast:
            for start in range(0, len(rollouts), 8):
                sl = slice(start, start + 8)
                lp, _, mask = score_completions(
                    policy.model, prompt_ids[sl], completion_ids[sl], policy.tokenizer.pad_token_id, with_entropy=False
                )
                trainer_lp.extend(row[m] for row, m in zip(lp, mask))
        sampler = torch.cat([torch.tensor(r.behaviour_logprobs) for r in rollouts])
        trainer = torch.cat(trainer_lp).float()
        d = (trainer - sampler).clamp(-20, 20)
        out[name] = {
            "kl_k3_mean": float((torch.expm1(d) - d).mean()),
            "max_ratio": float(torch.exp(d.abs()).max()),
            "tokens": int(d.numel()),
        }
    return out


def lora_policy(model_dir: Path):
    policy = load_policy(model_dir, config=PGConfig(), trainable=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    policy.model.eval()
    return policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--lora", choices=("both", "yes", "no"), default="both")
    p.add_argument("--engines", default="pgcore,pgcore_generic,hf")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="add the pgcore_compiled engine (torch.compile)")
    p.add_argument("--stream-factor", type=int, default=0, help="F > 0: add pgcore_chunked and pgcore_continuous on F x batch prompts")
    p.add_argument("--lanes", default="auto", help="CPU lanes of pgcore's sampler, or auto (default, as the app)")
    args = p.parse_args()
    global LANES
    LANES = None if args.lanes == "auto" else int(args.lanes)
    torch.set_num_threads(args.threads)
    device = default_device()
    started = time.perf_counter()
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else native_bf16_matmul()
    precisions = [x for x in args.precisions.split(",") if x == "fp32" or native]
    batches = [int(x) for x in args.batches.split(",")]
    engines = args.engines.split(",")
    if args.compile:
        engines.append("pgcore_compiled")
    if args.stream_factor > 0:
        engines += ["pgcore_chunked", "pgcore_continuous"]
    model_dir = convert_gguf_to_hf(smollm2_gguf_path(), args.model_dir)

    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": args.threads,
        "native_bf16": native,
        "new_tokens": args.new_tokens,
        "lanes": args.lanes,
        "load_avg_start": os.getloadavg()[0],
    }
    peaks = {"fp32": matmul_peak_gflops(torch.float32, device)}
    if "bf16" in precisions:
        peaks["bf16"] = matmul_peak_gflops(torch.bfloat16, device)
    base = load_policy(model_dir)
    n_params = sum(p.numel() for p in base.model.parameters())
    result["n_params"] = n_params
    result["matmul_peak_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
    result["limit_tok_s"] = {k: round(v * 1e9 / (2 * n_params), 1) for k, v in peaks.items()}
    log(json.dumps(result))

    policies = {}
    if args.lora in ("both", "no"):
        policies["no_lora"] = base
    if args.lora in ("both", "yes"):
        policies["lora"] = lora_policy(model_dir)
    eos = eos_token_ids(base)
    texts_all = prompts(max(batches) * max(1, args.stream_factor))
    settings = []
    for lora_name, policy in policies.items():
        if device.type == "cuda":
            policy.model.to(device)
        for precision in precisions:
            # warm-up: builds the merged copy, first-call allocations (and, compiled, the first compilation)
            compile_s = None
            for engine in engines:
                t = time.perf_counter()
                run_engine(engine, policy, texts_all[:2], 2, args.seed, precision)
                if engine == "pgcore_compiled":
                    compile_s = round(time.perf_counter() - t, 1)
            for batch in batches:
                row = {"lora": lora_name == "lora", "precision": precision, "batch": batch}
                row["lanes"] = min(LANES, batch) if LANES is not None else split_lanes(device, batch)
                for engine in engines:
                    streamed = engine in ("pgcore_chunked", "pgcore_continuous")
                    texts = texts_all[: batch * args.stream_factor] if streamed else texts_all[:batch]
                    ttft = None
                    if not streamed:
                        sync(device)
                        t = time.perf_counter()
                        run_engine(engine, policy, texts, 1, args.seed, precision)
                        sync(device)
                        ttft = time.perf_counter() - t
                    t = time.perf_counter()
                    completions, rollouts = run_engine(engine, policy, texts, args.new_tokens, args.seed, precision, batch)
                    sync(device)
                    seconds = time.perf_counter() - t
                    tokens = count_tokens(completions, eos)
                    row[engine] = {"tok_s": round(tokens / seconds, 1), "tokens": tokens, "seconds": round(seconds, 3)}
                    if not streamed:
                        rendered = [render_prompt(policy.tokenizer, t) for t in texts]
                        row[engine]["prefill_positions"] = prefill_positions(rendered, engine.startswith("pgcore"))
                    if ttft is not None:
                        row[engine]["ttft_s"] = round(ttft, 3)
                    if streamed:
                        row[engine]["prompts"] = len(texts)
                    if engine == "pgcore_compiled":
                        row[engine]["compile_s"] = compile_s
                    if rollouts is not None and engine in ("pgcore", "pgcore_continuous") and device.type == "cpu":
                        row[engine]["mismatch"] = mismatch(policy, rollouts)
                limit = result["limit_tok_s"][precision]
                if "pgcore" in row:
                    row["ratio_to_limit"] = round(row["pgcore"]["tok_s"] / limit, 3)
                    for ref in ("hf", "pgcore_generic", "pgcore_compiled"):
                        if ref in row:
                            row[f"ratio_to_{ref}"] = round(row["pgcore"]["tok_s"] / row[ref]["tok_s"], 2)
                if "pgcore" in row:
                    with_prefill(row, peaks[precision], n_params)
                if "pgcore_continuous" in row:
                    row["continuous_to_chunked"] = round(
                        row["pgcore_continuous"]["tok_s"] / row["pgcore_chunked"]["tok_s"], 2
                    )
                log(json.dumps(row))
                settings.append(row)
    # Other jobs share the machine: the peak is measured again at the end and the best kept.
    peaks["fp32"] = max(peaks["fp32"], matmul_peak_gflops(torch.float32, device))
    if "bf16" in peaks:
        peaks["bf16"] = max(peaks["bf16"], matmul_peak_gflops(torch.bfloat16, device))
    result["matmul_peak_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
    result["limit_tok_s"] = {k: round(v * 1e9 / (2 * n_params), 1) for k, v in peaks.items()}
    for row in settings:
        if "pgcore" in row:
            row["ratio_to_limit"] = round(row["pgcore"]["tok_s"] / result["limit_tok_s"][row["precision"]], 3)
            with_prefill(row, peaks[row["precision"]], n_params)
    result["settings"] = settings
    scored = [s for s in settings if "ratio_to_limit" in s]
    if scored:
        best = max(scored, key=lambda s: s["ratio_to_limit"])
        result["best"] = {
            k: best[k]
            for k in ("lora", "precision", "batch", "ratio_to_limit", "ratio_to_peak_with_prefill", "ratio_to_hf", "ratio_to_pgcore_generic")
            if k in best
        }
        result["best"]["tok_s"] = best["pgcore"]["tok_s"]
        result["ratio_to_limit"] = best["ratio_to_limit"]
        result["ratio_to_peak_with_prefill"] = max(s.get("ratio_to_peak_with_prefill", 0.0) for s in scored)
        result["ratio_to_hf"] = best.get("ratio_to_hf")
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["load_avg_end"] = os.getloadavg()[0]
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
