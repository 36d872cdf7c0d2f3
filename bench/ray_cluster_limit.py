"""The cluster-wide rate limit on Ray: N Ray workers against a test endpoint that answers 429 above
its limit (LIMIT requests per WINDOW s, a sliding window, as a provider's per-minute limit), with
the limit given to the run (`--rpm`), as a user who knows it would.

    python bench/ray_cluster_limit.py [--records 2400] [--limit 3000] [--window 60] [--workers 4]
                                      [--latency 0.2] [--concurrency 64]

Prints: the cluster's throughput (answered requests per second from the first request to the last)
as a share of the limit; 429s as a share of requests; seconds per record (between records finishing,
from the revision calls' times in calls.sqlite) over the run's middle 80% and over its last 10%,
and their ratio; the shards, the driver's wall time and peak RSS. The server runs in a thread of this
process (the driver only waits on Ray), so its request log has every arrival time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from throughput import config, write_prompts  # noqa: E402


def per_record(times: list[float], lo: float, hi: float) -> float:
    """Seconds per record between the records finishing at fractions lo and hi of the run."""
    a, b = int(lo * (len(times) - 1)), int(hi * (len(times) - 1))
    return (times[b] - times[a]) / max(1, b - a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2400)
    parser.add_argument("--limit", type=int, default=3000, help="requests the endpoint allows per window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the endpoint's sliding window")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    args.n = args.records
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from server import FakeAPIServer

    from factory.config import load_config
    from factory.engine.pipeline import Overrides, Pipeline
    from factory.executors.ray_run import run_ray

    rpm = args.limit * 60 / args.window
    with tempfile.TemporaryDirectory() as tmp, FakeAPIServer(latency=args.latency, jitter=args.latency / 4,
                                                             enforce_rpm=args.limit, window_s=args.window) as srv:
        os.environ.update(OPENAI_BASE_URL=srv.url + "/v1", OPENAI_API_KEY="sk-bench")
        work = Path(tmp)
        write_prompts(work / "prompts.jsonl", args.records)
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        pipe = Pipeline.prepare(load_config(config(work / "bench.yaml", args)),
                                Overrides(prompts=work / "prompts.jsonl", rpm=rpm))
        start = time.monotonic()
        outcome = run_ray(pipe, work / "run", Console(quiet=True), workers=args.workers)
        wall = time.monotonic() - start
        ray.shutdown()
        chat = [r["at"] for r in srv.requests if r["path"] == "/v1/chat/completions"]
        with sqlite3.connect(work / "run" / "calls.sqlite") as db:
            done = sorted(t for (t,) in db.execute("SELECT created FROM calls WHERE template='revision'"))
        manifest = json.loads((work / "run" / "manifest.json").read_text())
    ok, limited = srv.counts["ok"], srv.counts["429"]
    span = chat[-1] - chat[0]
    middle, tail = per_record(done, 0.1, 0.9), per_record(done, 0.9, 1.0)
    print(json.dumps({
        "status": outcome.status, "records": len(done), "workers": args.workers,
        "shards": manifest["executor"]["shards"], "limit_per_s": round(rpm / 60, 2),
        "answered": ok, "rate_limited_429": limited,
        "throughput_per_s": round(ok / span, 2), "throughput_share_of_limit": round(ok / span / (rpm / 60), 4),
        "share_429": round(limited / max(1, ok + limited), 4),
        "s_per_record_middle_80pct": round(middle, 5), "s_per_record_last_10pct": round(tail, 5),
        "last10_over_middle": round(tail / middle, 3),
        "driver_wall_s": round(wall, 1), "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: None  # the server's threads may see clients vanish at exit
    main()
