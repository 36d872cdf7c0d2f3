"""Outages, measured: a run against the local test server, whose endpoint goes away mid-run (it stops
listening and drops open connections) and comes back.

  1. A clean run, for reference.
  2. An outage of --outage-s seconds (default 120) under the default limit (outage.max_down_s 900):
     the run should pause, then finish with 0 records in failed.jsonl and the clean run's datasets.
  3. An outage of --long-outage-s seconds under a limit of --long-limit-s (by default 40 s against
     30 s: the issue's 20-minute outage against the 15-minute default, scaled down by 30): a clean
     resumable stop (exit 4), then, once the endpoint is back, a resume to the clean run's datasets.

    python bench/outage.py --prompts 300 --outage-s 120
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import server_script  # noqa: E402  (the tests' scripted model, served over HTTP)
from fuzz_inputs import run_cli  # noqa: E402
from server import FakeAPIServer  # noqa: E402


def rows(run_dir: Path) -> list[str] | None:
    from datasets import load_dataset

    if not (run_dir / "README.md").is_file():
        return None  # no datasets
    out = []
    for name in ("sft", "prefs"):
        for split in load_dataset(str(run_dir), name).values():
            out += [json.dumps(r, sort_keys=True) for r in split]
    return sorted(out)


def failed(run_dir: Path) -> int:
    path = run_dir / "failed.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per request at the test server")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--outage-s", type=float, default=120.0)
    ap.add_argument("--long-outage-s", type=float, default=40.0)
    ap.add_argument("--long-limit-s", type=float, default=30.0)
    args = ap.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp, FakeAPIServer(server_script, args.latency, record=False) as srv:
        tmp_path = Path(tmp)
        os.environ.update(OPENAI_BASE_URL=srv.url + "/v1", OPENAI_API_KEY="sk-outage-bench-key",
                          FACTORY_CACHE_DIR=str(tmp_path / "cache"))
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: how do I care for plant number {i}?"}) + "\n"
                                   for i in range(args.prompts)))

        def config(max_down_s: float) -> Path:
            path = tmp_path / f"config-{max_down_s:g}.yaml"
            path.write_text(f"name: outage\nconstitution: {ROOT / 'constitutions' / 'harmless.yaml'}\n"
                            f"prompts_dir: {ROOT / 'prompts'}\noutage: {{max_down_s: {max_down_s}}}\nwatchdog_s: 20\n")
            return path

        def run(name: str, max_down_s: float) -> tuple[int, float, Path]:
            out = tmp_path / name
            start = time.perf_counter()
            code, err, _ = run_cli("run", config(max_down_s), "--model", "openai:bench", "--prompts", prompts,
                                   "--concurrency", args.concurrency, "--out", out)
            print(f"{name}: exit {code} in {time.perf_counter() - start:.1f} s\n{err[-3000:]}", file=sys.stderr)
            return code, time.perf_counter() - start, out

        code, secs, clean = run("clean", 900)
        calls = sum(srv.counts.values())
        report["clean"] = {"exit": code, "seconds": round(secs, 1), "requests": calls}

        srv.counts.clear()
        thread = srv.outage_after(calls // 3, args.outage_s)
        code, secs, out = run("short", 900)
        thread.join()
        report[f"outage_{args.outage_s:g}s_limit_900s"] = {
            "exit": code, "seconds": round(secs, 1), "failed_records": failed(out), "same_datasets": rows(out) == rows(clean)}

        srv.counts.clear()
        thread = srv.outage_after(calls // 3, args.long_outage_s)
        code, secs, out = run("long", args.long_limit_s)
        stop = {"exit": code, "seconds": round(secs, 1), "failed_records": failed(out),
                "status": json.loads((out / "manifest.json").read_text())["status"]}
        thread.join()
        start = time.perf_counter()
        code, err, _ = run_cli("run", "--resume", out)
        report[f"outage_{args.long_outage_s:g}s_limit_{args.long_limit_s:g}s"] = {
            "stop": stop, "resume": {"exit": code, "seconds": round(time.perf_counter() - start, 1),
                                     "failed_records": failed(out), "same_datasets": rows(out) == rows(clean)}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
