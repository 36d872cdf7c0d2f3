"""Engine throughput against the local test server: N prompts through answer, one critique and one
revision (3 calls per record) at latency L (+- jitter), concurrency C and fault rate F.

    python bench/throughput.py [--n 2000] [--latency 0.2] [--jitter 0.05] [--concurrency 64] [--faults 0.1]
    python bench/throughput.py --n 100000 --latency 0 --jitter 0       # memory stays flat with N
    python bench/throughput.py --kill-at 0.5                           # SIGKILL at 50%, then --resume
    python bench/throughput.py --transport sdk-default                 # the OpenAI SDK's client, to compare
    python bench/throughput.py --executor ray --workers 2              # the local executor, then Ray, same load

The server runs in its own process, so the CPU figures are the factory's alone. Prints wall time
(from the first record to the last one committed, and the whole run including start-up and export),
the ideal N*3*L/C, their ratio, CPU seconds per 1000 calls, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, str(ROOT / "tests" / "server.py"), "--port", "0", "--latency", str(args.latency),
           "--jitter", str(args.jitter), "--fault-rate", str(args.faults), "--seed", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Benchmark question {i}: what should I know about topic {i * 7919 % 100003}?"}) + "\n")


def config(path: Path, args: argparse.Namespace) -> Path:
    cfg = {
        "constitution": str(ROOT / "constitutions" / "harmless.yaml"),
        "prompts_dir": str(ROOT / "prompts"),
        "model": f"openai:bench-{args.n}",
        "concurrency": args.concurrency,
        "watchdog_s": 600,
        "stages": {"answer": {"max_tokens": 64}, "critique_revise": {"rounds": 1, "max_tokens": 64}},
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def use_sdk(transport: str) -> None:
    """For comparison: online calls through the OpenAI SDK's typed `chat.completions.create`, on its
    aiohttp transport (`sdk-aiohttp`) or its default one (`sdk-default`)."""
    import openai

    from factory.models import openai_backend
    from factory.models.openai_backend import (
        completion_from_openai,
        openai_request,
        parse_openai_headers,
    )

    def client(self):
        if self._client is None:
            http = openai.DefaultAioHttpClient() if transport == "sdk-aiohttp" else None
            self._client = openai.AsyncOpenAI(api_key=self._key, max_retries=0, timeout=600, http_client=http)
        return self._client

    async def complete(self, messages, params):
        try:
            raw = await self.client().chat.completions.with_raw_response.create(
                **openai_request(self.name, messages, params))
        except openai.APIError as exc:
            raise self.error(exc) from exc
        return completion_from_openai(raw.parse().model_dump(), params, parse_openai_headers(raw.headers))

    openai_backend.OpenAIModel.client = client
    openai_backend.OpenAIModel.complete = complete


def in_process(args: argparse.Namespace, workdir: Path, url: str, executor: str = "local") -> dict:
    """One run driven from this process: CPU and RSS are measured on the factory alone (with Ray, on
    the driver alone: the shards run in Ray's worker processes)."""
    os.environ.update(OPENAI_BASE_URL=url + "/v1", OPENAI_API_KEY="sk-bench")
    if args.transport != "aiohttp":
        use_sdk(args.transport)
    from factory.config import load_config
    from factory.engine.pipeline import Overrides, Pipeline
    from factory.executors.dispatch import run

    prompts = workdir / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts, args.n)
    pipe = Pipeline.prepare(load_config(config(workdir / "bench.yaml", args)), Overrides(prompts=prompts))
    out, console = workdir / f"run-{executor}", Console(quiet=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    if executor == "ray":
        from factory.executors.ray_run import run_ray

        outcome = run_ray(pipe, out, console, workers=args.workers)
    else:
        outcome = run(pipe, out, console)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats = json.loads((out / "stats.json").read_text())
    flow = max(s["seconds"] for name, s in stats["stages"].items() if name in ("answer", "critique_revise"))
    calls = stats["stages"]["answer"]["calls"] + stats["stages"]["critique_revise"]["calls"]
    return {
        "status": outcome.status,
        "records_done": stats["stages"]["critique_revise"]["out"],
        "failed_records": stats["failed_records"],
        "calls": calls,
        "retries": sum(s["retries"] for s in stats["stages"].values()),
        "rate_limited": sum(s["rate_limited"] for s in stats["stages"].values()),
        "flow_s": flow,
        "wall_s": wall,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_rss_mb": after.ru_maxrss / 1024,
    }


def kill_and_resume(args: argparse.Namespace, workdir: Path) -> dict:
    """The factory as a subprocess, killed with SIGKILL once `kill_at` of the records are finished,
    then resumed. The server runs in this process so it can compare the requests of both halves."""
    from server import FakeAPIServer

    with FakeAPIServer(latency=args.latency, jitter=args.jitter) as srv:
        env = os.environ | {"OPENAI_BASE_URL": srv.url + "/v1", "OPENAI_API_KEY": "sk-bench"}
        prompts = workdir / "prompts.jsonl"
        write_prompts(prompts, args.n)
        cfg, out = config(workdir / "bench.yaml", args), workdir / "run"
        cmd = [sys.executable, "-m", "factory", "run", str(cfg), "--prompts", str(prompts), "--out", str(out)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = int(args.kill_at * args.n)
        while True:
            time.sleep(0.02)
            try:
                with sqlite3.connect(out / "state.sqlite") as db:
                    if db.execute("SELECT count(*) FROM records").fetchone()[0] >= target:
                        break
            except sqlite3.OperationalError:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(out / "calls.sqlite") as db:
            completed = db.execute("SELECT count(*) FROM calls").fetchone()[0]
        before = [json.dumps(r["body"], sort_keys=True) for r in srv.requests]
        srv.requests.clear()
        subprocess.run([sys.executable, "-m", "factory", "run", "--resume", str(out)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after = [json.dumps(r["body"], sort_keys=True) for r in srv.requests]
    reissued = len(set(before) & set(after))
    return {"calls_before_kill": len(before), "completed_before_kill": completed,
            "in_flight_at_kill": len(before) - completed, "calls_after_resume": len(after), "reissued": reissued,
            "status": json.loads((out / "manifest.json").read_text())["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--jitter", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--faults", type=float, default=0.0, help="fault rate: 429s, 5xx, drops and 5 s hangs")
    parser.add_argument("--kill-at", type=float, help="SIGKILL at this fraction of records, then resume")
    parser.add_argument("--transport", choices=["aiohttp", "sdk-aiohttp", "sdk-default"], default="aiohttp",
                        help="aiohttp: the factory's own; sdk-*: the OpenAI SDK's typed client, to compare")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="ray: run the local executor, then the Ray executor on the same load, and compare")
    parser.add_argument("--workers", type=int, default=2, help="with --executor ray: Ray workers (CPUs) and shards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.kill_at is not None:
            print(json.dumps(kill_and_resume(args, Path(tmp)), indent=2))
            return
        server, url = start_server(args)
        try:
            result = summary(args, in_process(args, Path(tmp), url))
            if args.executor == "ray":
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                import ray

                ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
                on_ray = summary(args, in_process(args, Path(tmp), url, "ray"))
                ray.shutdown()
                result = {"local": result, f"ray_{args.workers}_workers": on_ray,
                          "ray/local wall": round(on_ray["wall_s"] / result["wall_s"], 3),
                          "ray/local flow": round(on_ray["flow_s"] / result["flow_s"], 3)}
        finally:
            server.terminate()
    print(json.dumps(result, indent=2))


def summary(args: argparse.Namespace, result: dict) -> dict:
    ideal = args.n * 3 * args.latency / args.concurrency
    result |= {"ideal_s": round(ideal, 3), "flow/ideal": round(result["flow_s"] / ideal, 3) if ideal else None,
               "wall/ideal": round(result["wall_s"] / ideal, 3) if ideal else None,
               "cpu_s_per_1000_calls": round(1000 * result["cpu_s"] / max(1, result["calls"]), 3)}
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


if __name__ == "__main__":
    threading.excepthook = lambda a: None  # the server's threads may see clients vanish at exit
    main()
