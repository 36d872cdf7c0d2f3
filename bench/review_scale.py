"""The review app, the export and the report on a large run: RSS and time.

    python bench/review_scale.py [--n 100000] [--keep DIR] [--export]

1. A real seed run of 20 records (answer, critique, revision) against the test server (bench/storage.py's
   prose responder), for a genuine manifest, config and record shape.
2. A synthetic run of N records written straight into the run-directory format: the seed's records
   repeated with fresh ids, prompts and texts (slices of the offline corpus, so dedup has real work),
   compressed into state.sqlite as a run would store them.
3. In a fresh process: the index build (`factory review`'s first start on the run): seconds and peak RSS.
4. In another fresh process, on the built index: the app started, then what the page asks first
   (GET /api/run and GET /api/records, 500 summaries) and one record in full: seconds and peak RSS.
5. With --export, each in a fresh process: `factory export` (dedup, splits, Parquet) and
   `factory report` on the run: seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def seed_run(work: Path) -> Path:
    """20 records made by the factory against the test server."""
    from rich.console import Console
    from storage import config, write_prompts

    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "storage.py"), "--serve", "--words", "150"],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    try:
        os.environ.update(OPENAI_BASE_URL=url + "/v1", OPENAI_API_KEY="sk-bench")
        from factory.config import load_config
        from factory.engine.pipeline import Overrides, Pipeline
        from factory.executors.dispatch import run

        write_prompts(work / "prompts.jsonl", 20)
        args = argparse.Namespace(n=20, words=150, concurrency=16)
        pipe = Pipeline.prepare(load_config(config(work / "bench.yaml", args)), Overrides(prompts=work / "prompts.jsonl"))
        run(pipe, work / "seed", Console(quiet=True))
    finally:
        proc.terminate()
        proc.wait()
    return work / "seed"


def synthetic(seed: Path, out: Path, n: int) -> None:
    """N records in `out`'s state.sqlite, made from the seed's, with the seed's manifest and config."""
    from storage import prose

    from factory.engine.rundir import RunDir
    from factory.engine.state import RunState

    out.mkdir(parents=True)
    for name in ("manifest.json", "stats.json", "failed.jsonl"):
        shutil.copy(seed / name, out / name)
    seeds = [json.loads(line) for line in RunDir.open(seed).lineage_json(kept=True)]
    words = prose()
    state = RunState(out)
    state.db.execute("BEGIN")
    for i in range(n):
        rec = json.loads(json.dumps(seeds[i % len(seeds)]))
        rec["id"] = f"{i:016x}"
        rec["prompt"] = f"Synthetic question {i}: what should I know about topic {i * 7919 % 1000003}?"
        rng = random.Random(i)
        for cand in rec["candidates"]:
            cand["answer"] = pieces(words, rng, 150)
            for rnd in cand["rounds"]:
                rnd["critique"], rnd["revision"] = pieces(words, rng, 75), pieces(words, rng, 150)
        state.db.execute("INSERT INTO records VALUES (?,?,?,?,?)",
                         (rec["id"], "done", "done", "", state.packer.pack("record", json.dumps(rec))))
        if i % 10_000 == 9_999:
            state.db.execute("COMMIT")
            state.db.execute("BEGIN")
    state.db.execute("COMMIT")
    state.close()


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike getrusage's ru_maxrss, not inherited from the parent
    across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pieces(words: list[str], rng: random.Random, n: int) -> str:
    """n words in three pieces from unrelated places of the corpus: a new text, not a near copy of another."""
    return " ".join(" ".join(words[(k := rng.randrange(len(words) - n)):k + n // 3]) for _ in range(3))


def build_index(run_dir: str) -> None:
    """Child process: the index built from scratch."""
    from factory.review.runview import RunView

    start = time.perf_counter()
    RunView(Path(run_dir)).close()
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "peak_rss_mb": peak_rss_mb()}))


def first_page(run_dir: str) -> None:
    """Child process: the app started on a built index, then the page's first requests."""
    import asyncio
    import threading

    from factory.review.server import build_app, start

    loop = asyncio.new_event_loop()
    ready: dict = {}
    began = time.perf_counter()

    def main() -> None:
        asyncio.set_event_loop(loop)
        ready["runner"], ready["url"] = loop.run_until_complete(start(build_app(Path(run_dir)), 0))
        loop.run_forever()

    threading.Thread(target=main, daemon=True).start()
    while "url" not in ready:
        time.sleep(0.001)
    started = time.perf_counter() - began

    def get(path: str) -> dict:
        with urllib.request.urlopen(ready["url"] + path, timeout=60) as r:
            return json.loads(r.read())

    t0 = time.perf_counter()
    info = get("api/run")
    page = get("api/records")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    get(f"api/records/{page['records'][0]['id']}")
    detail = time.perf_counter() - t0
    t0 = time.perf_counter()
    deep = get(f"api/records?offset={max(0, info['records'] - 500)}&q=question")
    filtered = time.perf_counter() - t0
    print(json.dumps({"records": info["records"], "app_start_s": started, "first_page_s": first, "record_s": detail,
                      "last_page_filtered_s": filtered, "last_page_rows": len(deep["records"]),
                      "peak_rss_mb": peak_rss_mb()}))


def replicate(index: Path, times: int) -> None:
    """The index's rows repeated `times` times in all, under new ids (which sort after the real ones,
    so the first page and its records are real); the filter counts are left as built."""
    import sqlite3

    t0 = time.perf_counter()
    db = sqlite3.connect(index)
    columns = [row[1] for row in db.execute("PRAGMA table_info(entries)")]
    rest = ", ".join(columns[1:])
    for k in range(1, times):
        db.execute(f"INSERT OR IGNORE INTO entries SELECT 'r{k:03d}' || id, {rest} FROM entries WHERE id NOT LIKE 'r%'")
        db.execute(f"INSERT OR IGNORE INTO principles SELECT principle, 'r{k:03d}' || id FROM principles WHERE id NOT LIKE 'r%'")
        db.commit()
    n = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    db.close()
    print(f"index replicated to {n:,} rows in {time.perf_counter() - t0:.0f} s "
          f"({index.stat().st_size / 2**20:,.0f} MiB)", flush=True)


def export_run(run_dir: str) -> None:
    """Child process: the run's datasets written again (what `factory export` does)."""
    from factory.review.reexport import reexport

    start = time.perf_counter()
    counts, _ = reexport(Path(run_dir))
    print(json.dumps({"seconds": time.perf_counter() - start, "sft_rows": sum(counts["sft"].values()),
                      "peak_rss_mb": peak_rss_mb()}))


def report_run(run_dir: str) -> None:
    """Child process: report.html written again."""
    from factory.report import write_report

    start = time.perf_counter()
    write_report(Path(run_dir))
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def child(function: str, run_dir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", function, str(run_dir)], capture_output=True,
                         text=True, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="make (or reuse) the synthetic run here")
    parser.add_argument("--replicate", type=int, default=1, help="then serve an index of N x this many rows: the "
                        "built index's rows repeated under new ids (for 10^6 rows without a 10^6 build)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the kept run's index as it is")
    parser.add_argument("--export", action="store_true", help="also time `factory export` and `factory report`")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        {"build": build_index, "page": first_page, "export": export_run, "report": report_run}[args.child[0]](
            args.child[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "big"
        if not (run_dir / "state.sqlite").is_file():
            t0 = time.perf_counter()
            synthetic(seed_run(Path(tmp)), run_dir, args.n)
            print(f"synthetic run of {args.n:,} records written in {time.perf_counter() - t0:.0f} s "
                  f"(state.sqlite {(run_dir / 'state.sqlite').stat().st_size / 2**20:,.0f} MiB)", flush=True)
        if not args.skip_build:
            (run_dir / "review-index.sqlite").unlink(missing_ok=True)
            built = child("build", run_dir)
            print(f"index build: {built['seconds']:.1f} s, peak RSS {built['peak_rss_mb']:.0f} MB "
                  f"(index {(run_dir / 'review-index.sqlite').stat().st_size / 2**20:,.0f} MiB)", flush=True)
        if args.replicate > 1:
            replicate(run_dir / "review-index.sqlite", args.replicate)
        served = child("page", run_dir)
        print(f"app on the built index ({served['records']:,} records): started in {served['app_start_s']:.2f} s; "
              f"first page (run info + 500 summaries) {served['first_page_s']:.3f} s; one record in full "
              f"{served['record_s']:.3f} s; last page with a text filter {served['last_page_filtered_s']:.2f} s; "
              f"peak RSS {served['peak_rss_mb']:.0f} MB", flush=True)
        if args.export:
            done = child("export", run_dir)
            print(f"export: {done['seconds']:.1f} s ({done['sft_rows']:,} sft rows), peak RSS {done['peak_rss_mb']:.0f} MB",
                  flush=True)
            done = child("report", run_dir)
            print(f"report: {done['seconds']:.1f} s, peak RSS {done['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
