"""Local generation under pipeline load, beside a full static batch, in one run.

    python bench/pipeline_throughput.py [--records 64] [--new-tokens 128] [--concurrency N] [--library]

1. Reference: 32 concurrent `complete()` calls of --new-tokens tokens each (bench/local_generation.py
   at batch 32), through the local backend.
2. Pipeline: `factory run` on the default pipeline sized to --records records (half seed prompts,
   half generated), in this process, on the same loaded model. Per stage, tokens/s is the
   completion tokens of its calls over the time any of its calls was in flight (from calls.sqlite),
   so a stage that idles while another works is not charged for it.
3. With --library: transformers' own continuous batching (`generate_batch`, attention
   "paged|sdpa") on the reference workload, and on the critique and revision requests the
   pipeline run made (same prompts, same max_tokens, sampling at the same temperature; it has no
   stop strings, so it may write more tokens per request).

Prints one table: tokens/s per workload and each as a share of the reference (measured before
and after the run, the share of their mean); then where the
model's thread spent its time in the reference and in the run (prefill and its prompt tokens; decode
steps, mean rows per step and the mean length each step attended over), which is what sets the
difference: a decode step's cost grows with its rows times that length, and prefill makes no
completion tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_generation import prompts, through_batcher  # noqa: E402

from factory.config import load_config  # noqa: E402
from factory.engine.calllog import CallLog  # noqa: E402
from factory.engine.pipeline import Overrides, Pipeline  # noqa: E402
from factory.executors.local import run_local  # noqa: E402
from factory.models import load_model  # noqa: E402
from factory.models.local import LocalModel  # noqa: E402


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def stage_rates(run_dir: Path) -> dict[str, tuple[int, int, float]]:
    """stage -> (calls, completion tokens, busy seconds)."""
    db = sqlite3.connect(run_dir / "calls.sqlite")
    out = {}
    for stage in ("questions", "answer", "critique_revise"):
        rows = db.execute("SELECT created - latency, created, completion_tokens FROM calls WHERE stage=?",
                          (stage,)).fetchall()
        if rows:
            out[stage] = (len(rows), sum(r[2] for r in rows), busy_seconds([(r[0], r[1]) for r in rows]))
    return out


COUNTERS = ("prefill_seconds", "prefill_tokens", "prefill_slots", "decode_seconds", "steps_run", "decode_rows", "decode_positions")


def snapshot(model: LocalModel) -> dict[str, float]:
    return {k: getattr(model, k) for k in COUNTERS}


def time_split(name: str, model: LocalModel, before: dict[str, float], wall: float) -> str:
    d = {k: getattr(model, k) - before[k] for k in COUNTERS}
    steps = max(d["steps_run"], 1)
    return (f"{name}: {wall:.0f} s; prefill {d['prefill_seconds']:.0f} s ({d['prefill_seconds'] / wall:.0%}, "
            f"{d['prefill_tokens']} prompt tokens, {d['prefill_slots']} computed with padding); decode {d['decode_seconds']:.0f} s ({d['decode_seconds'] / wall:.0%}, "
            f"{d['steps_run']} steps, {d['decode_seconds'] / steps:.3f} s each, mean {d['decode_rows'] / steps:.1f} rows "
            f"attending over {d['decode_positions'] / max(d['decode_rows'], 1):.0f} positions)")


def library(model: LocalModel, inputs: list[list[int]], max_tokens: int) -> tuple[int, float]:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=True, temperature=0.7, top_p=1.0,
                              eos_token_id=sorted(model.stop_ids), pad_token_id=model.tokenizer.pad_token_id)
    model.model.set_attn_implementation("paged|sdpa")
    try:
        start = time.perf_counter()
        out = model.executor.submit(model.model.generate_batch, inputs, generation_config=config).result()
        seconds = time.perf_counter() - start
    finally:
        model.model.set_attn_implementation("sdpa")
    return sum(len(o.generated_tokens) for o in out.values()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, help="calls in flight in the run (default: the pipeline's)")
    parser.add_argument("--library", action="store_true", help="also transformers' continuous batching")
    args = parser.parse_args()

    model = load_model("local:smollm2")
    assert isinstance(model, LocalModel)
    print(f"{torch.get_num_threads()} torch threads; the machine's other load is not controlled", flush=True)
    asyncio.run(through_batcher(model, prompts(2), 8))  # warm-up
    before = snapshot(model)
    seconds, counts = asyncio.run(through_batcher(model, prompts(32), args.new_tokens))
    splits = [time_split("reference", model, before, seconds)]
    reference = sum(counts) / seconds
    table = [(f"reference: 32 rows x {args.new_tokens} tokens (ours)", sum(counts), seconds)]
    print(f"reference {reference:.1f} tokens/s", flush=True)

    lib_ref = None
    if args.library:
        tok = model.tokenizer
        ids = [tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
               .input_ids for m in prompts(32)]
        n, s = library(model, ids, args.new_tokens)
        lib_ref = (f"reference: 32 rows x {args.new_tokens} tokens (transformers generate_batch)", n, s)

    cfg = load_config(None)
    q = cfg.stages.questions
    q.max_seeds, q.generate = args.records // 2, args.records - args.records // 2
    pipe = Pipeline.prepare(cfg, Overrides(concurrency=args.concurrency))
    pipe.models["local:smollm2"] = model
    out = Path(tempfile.mkdtemp(prefix="pipeline-bench-")) / "run"
    requests = []
    if args.library:  # replayed after the run, when the backend's executor is shut down: keep a thread
        from concurrent.futures import ThreadPoolExecutor

        keep = ThreadPoolExecutor(max_workers=1)
    before, start = snapshot(model), time.perf_counter()
    run_local(pipe, out, Console(stderr=True, quiet=True))
    wall = time.perf_counter() - start
    splits.append(time_split("pipeline run", model, before, wall))
    stats = json.loads((out / "stats.json").read_text())
    for stage, (calls, tokens, busy) in stage_rates(out).items():
        cached = stats["stages"][stage].get("cached_prompt_tokens", 0)
        prompt = stats["stages"][stage]["prompt_tokens"]
        table.append((f"pipeline {stage}: {calls} calls, {cached}/{prompt} prompt tokens from the prefix cache",
                      tokens, busy))
    total = sum(tokens for _, tokens, _ in table[1:])
    table.append(("pipeline run: every call, over the run's wall time", total, wall))
    if args.library:
        log = CallLog(out / "calls.sqlite")
        requests.extend(log.requests("critique_revise"))
        log.close()
        tok = model.tokenizer
        ids = [tok(tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False).input_ids for r in requests]
        model.executor = keep
        n, s = library(model, ids, max(r["params"]["max_tokens"] for r in requests))
        table.append(("critique_revise requests replayed at once (transformers generate_batch)", n, s))
        table.insert(1, lib_ref)
    # The reference again (on a backend of its own: the run closed this one): this machine's speed
    # drifts (up to 2x within an hour on a shared host), so shares are of the two references' mean.
    again = LocalModel(model.spec, model.model, model.tokenizer)
    seconds, counts = asyncio.run(through_batcher(again, prompts(32), args.new_tokens))
    table.insert(1, ("reference again, after the run", sum(counts), seconds))
    reference = (reference + sum(counts) / seconds) / 2
    print(f"\npipeline: {args.records} records in {wall:.0f} s ({out})")
    print(f"{'workload':<92} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'of ref':>7}")
    for name, tokens, secs in table:
        rate = tokens / secs if secs else 0.0
        print(f"{name:<92} {tokens:>7} {secs:>8.1f} {rate:>7.1f} {rate / reference:>7.0%}")
    print("\nthe model's thread:")
    for line in splits:
        print(f"  {line}")


if __name__ == "__main__":
    main()
