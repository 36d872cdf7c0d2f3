"""The cluster budget on Ray: RUNS runs with `--max-cost` drawn at random between 5% and 95% of what
the whole run costs, each on WORKERS Ray workers and SHARDS shards against the test server (OpenAI
protocol, gpt-4o-mini prices), then one resume with no cap to check the run completes.

    python bench/ray_budget.py [--runs 20] [--prompts 200] [--workers 2] [--shards 6] [--seed 0]

Spent is summed from every call log the run holds (its own and each shard's), so a cap passed
anywhere in the cluster would show. Prints each run's cap, spent and spent/cap, and the maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from throughput import write_prompts  # noqa: E402

MODEL = "openai:gpt-4o-mini"


def spent(run_dir: Path) -> float:
    from factory.engine.calllog import spent_in

    return spent_in([run_dir / "calls.sqlite", *run_dir.glob("shards/*/calls.sqlite")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from server import FakeAPIServer

    from factory.config import load_config
    from factory.engine.pipeline import Overrides, Pipeline
    from factory.executors.dispatch import resume, run
    from factory.executors.ray_run import run_ray

    rng, quiet, rows = random.Random(args.seed), Console(quiet=True), []
    with tempfile.TemporaryDirectory() as tmp, FakeAPIServer(latency=0.02, jitter=0.01, record=False) as srv:
        os.environ.update(OPENAI_BASE_URL=srv.url + "/v1", OPENAI_API_KEY="sk-bench")
        work = Path(tmp)
        prompts = work / "prompts.jsonl"
        write_prompts(prompts, args.prompts)

        def pipe(cap: float | None) -> Pipeline:
            return Pipeline.prepare(load_config(None), Overrides(prompts=prompts, model=MODEL, concurrency=16,
                                                                 max_cost=cap))

        full_run = run(pipe(None), work / "full", quiet)
        full = spent(full_run.run_dir)
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        for i in range(args.runs):
            cap = full * rng.uniform(0.05, 0.95)
            out = work / f"run{i}"
            outcome = run_ray(pipe(cap), out, quiet, workers=args.workers, shards=args.shards)
            used = spent(out)
            rows.append({"run": i, "cap_usd": round(cap, 6), "spent_usd": round(used, 6),
                         "spent_over_cap": round(used / cap, 4), "status": outcome.status})
            print(json.dumps(rows[-1]), flush=True)
        last = resume(work / f"run{args.runs - 1}", quiet, Overrides(max_cost=10 * full))
        ray.shutdown()
    worst = max(r["spent_over_cap"] for r in rows)
    print(json.dumps({"runs": len(rows), "full_run_usd": round(full, 6), "max_spent_over_cap": worst,
                      "mean_spent_over_cap": round(sum(r["spent_over_cap"] for r in rows) / len(rows), 4),
                      "cap_passed": sum(r["spent_over_cap"] > 1 for r in rows),
                      "stopped_at_budget": sum(r["status"] == "stopped_at_budget" for r in rows),
                      "last_run_resumed_without_cap": last.status}, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: None  # the server's threads may see clients vanish at exit
    main()
