"""A large run simulated on this machine: RECORDS prompts (default 10^6) through answer, critique and
revision (3 calls each) against the test server at low latency (its own process, nothing recorded),
on Ray with WORKERS workers (or the local executor), then the one export.

    python bench/scale_1e6.py [--records 1000000] [--executor ray] [--workers 2] [--latency 0.005]
                              [--concurrency 64]

Prints wall time and where it went (the driver's plan, the shards, the export), records and calls
per second, the driver's CPU seconds and peak RSS, and the bytes on disk per record by file. With
fewer records than 10^6, it also prints the hours a 10^6 run would take at the measured rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from throughput import config, start_server, write_prompts  # noqa: E402


def sizes(run_dir: Path) -> dict[str, int]:
    """Bytes on disk by top-level entry (a folder counts what it holds)."""
    out = {}
    for p in run_dir.iterdir():
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        out[p.name] = sum(f.stat().st_size for f in files)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    args.n, args.jitter, args.faults = args.records, args.latency / 2, 0.0
    server, url = start_server(args)
    os.environ.update(OPENAI_BASE_URL=url + "/v1", OPENAI_API_KEY="sk-bench", RAY_USAGE_STATS_ENABLED="0")
    from factory.config import load_config
    from factory.engine.pipeline import Overrides, Pipeline
    from factory.executors.dispatch import run

    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            work = Path(tmp)
            write_prompts(work / "prompts.jsonl", args.records)
            pipe = Pipeline.prepare(load_config(config(work / "bench.yaml", args)),
                                    Overrides(prompts=work / "prompts.jsonl"))
            out, quiet = work / "run", Console(quiet=True)
            start = time.monotonic()
            if args.executor == "ray":
                import ray

                from factory.executors.ray_run import run_ray

                ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
                started = time.monotonic()
                outcome = run_ray(pipe, out, quiet, workers=args.workers)
            else:
                started = start
                outcome = run(pipe, out, quiet)
            wall = time.monotonic() - started
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats = json.loads((out / "stats.json").read_text())
            manifest = json.loads((out / "manifest.json").read_text())
            disk = sizes(out)
    finally:
        server.terminate()
    records = stats["stages"]["critique_revise"]["out"]
    calls = sum(stats["stages"][s]["calls"] for s in ("answer", "critique_revise"))
    flow = max(stats["stages"][s]["seconds"] for s in ("answer", "critique_revise"))
    result = {
        "status": outcome.status, "executor": args.executor, "workers": args.workers if args.executor == "ray" else 1,
        "shards": manifest.get("executor", {}).get("shards"), "records": records, "calls": calls,
        "wall_s": round(wall, 1), "flow_s": round(flow, 1), "export_s": round(stats["stages"]["export"]["seconds"], 1),
        "ray_init_s": round(started - start, 1) if args.executor == "ray" else 0.0,
        "records_per_s": round(records / wall, 1), "calls_per_s": round(calls / wall, 1),
        "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "driver_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "disk_bytes_per_record": {k: round(v / max(1, records), 1) for k, v in sorted(disk.items())},
        "disk_bytes_per_record_total": round(sum(disk.values()) / max(1, records), 1),
    }
    if records < 1_000_000:
        result["extrapolated_1e6_hours"] = round(wall * 1_000_000 / records / 3600, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: None
    main()
