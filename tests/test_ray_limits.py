"""The cluster's limits on a real local Ray instance (2 CPUs, 2 workers) against the real local HTTP
server: one rate limit and one in-flight cap for the whole cluster under an endpoint that answers 429
above its limit, a --max-cost the cluster never passes (exit 3) and that a resume continues, and
leases that give unused permits back to the actor."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from rich.console import Console
from test_cli import write_prompts
from test_production import MANY, dataset_files

from factory.cli import run_cli
from factory.config import load_config
from factory.engine.calllog import spent_in
from factory.engine.limits import Lease
from factory.engine.pipeline import Overrides, Pipeline
from factory.executors.cluster import ClusterLimits
from factory.executors.dispatch import resume, run

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
QUIET = Console(quiet=True)
MODEL = "openai:gpt-4o-mini"  # priced, for the budget


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def run_ray(prompts: Path, out: Path, **overrides):
    from factory.executors.ray_run import run_ray as go

    pipe = Pipeline.prepare(load_config(None), Overrides(prompts=prompts, model=MODEL, **overrides))
    return go(pipe, out, QUIET, workers=2, shards=4)


def chat(srv) -> list[dict]:
    return [r for r in srv.requests if r["path"] == "/v1/chat/completions"]


def test_one_rate_limit_and_one_in_flight_cap_for_the_whole_cluster(api, tmp_path: Path) -> None:
    """4 shards on 2 workers against an endpoint allowing 60 requests per 3 s (1200 a minute): the
    cluster, told the limit, keeps to it as one client, with few 429s and at most 4 calls in flight."""
    prompts = write_prompts(tmp_path / "p.jsonl", [f"{q} (variant {i})" for i in range(2) for q in MANY])
    api.enforce_rpm, api.window_s, api.latency = 60, 3.0, 0.05
    outcome = run_ray(prompts, tmp_path / "run", rpm=1200, concurrency=4)
    assert outcome.status == "complete"
    sent = chat(api)
    ok, limited = api.counts["ok"], api.counts["429"]
    assert ok == 3 * len(MANY) * 2 and len(sent) == ok + limited
    rate = ok / (sent[-1]["at"] - sent[0]["at"])
    print(f"{ok} answered, {limited} 429s, {rate:.1f} requests/s (limit 20/s), peak in flight {api.peak_in_flight}")
    assert limited <= 0.1 * len(sent)  # with a share each (no shared limiter) about half would be 429s
    # the rate is printed, not asserted (it depends on the machine's load): bench/ray_cluster_limit.py measures it
    assert api.peak_in_flight <= 4
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert sum(s["rate_limited"] for s in stats["stages"].values()) == limited


def spent(run_dir: Path) -> float:
    return spent_in([run_dir / "calls.sqlite", *run_dir.glob("shards/*/calls.sqlite")])


def test_max_cost_holds_for_the_cluster_and_a_resume_continues(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", MANY)
    reference = run(Pipeline.prepare(load_config(None), Overrides(prompts=prompts, model=MODEL)), tmp_path / "ref", QUIET)
    full = json.loads((tmp_path / "ref" / "manifest.json").read_text())["spent_usd"]
    cap = round(full / 3, 6)
    api.requests.clear()
    out = tmp_path / "run"
    code = run_cli(["run", "--executor", "ray", "--workers", "2", "--shards", "4", "--model", MODEL, "--prompts",
                    str(prompts), "--max-cost", str(cap), "--out", str(out)])
    assert code == 3
    assert json.loads((out / "manifest.json").read_text())["status"] == "stopped_at_budget"
    first = spent(out)
    print(f"full run {full:.6f} USD, cap {cap:.6f}, spent {first:.6f}")
    assert 0 < first <= cap  # never past it (calls in flight hold a worst case each, so it stops short)
    sent_before = len(chat(api))

    api.requests.clear()
    outcome = resume(out, QUIET, Overrides(max_cost=10 * full))
    assert outcome.status == "complete"
    assert dataset_files(out) == dataset_files(reference.run_dir)
    assert sent_before + len(chat(api)) == 3 * len(MANY)  # every call paid for once
    assert spent(out) == pytest.approx(full, abs=1e-6)  # the manifest rounds to 6 places


def test_a_lease_gives_unused_permits_back_to_the_actor() -> None:
    spec = "openai:m"
    actor = ray.remote(ClusterLimits).options(num_cpus=0).remote(
        {spec: {"rpm": 600, "tpm": None, "concurrency": 8}}, None)

    async def go() -> None:
        a = Lease(lambda report: actor.lease.remote(report), 0, [spec], None, lambda: 7)
        a.start()
        lim = a.limiters[spec]
        calls = [asyncio.create_task(lim.acquire(10)) for _ in range(6)]
        await asyncio.sleep(0)
        calls[5].cancel()  # asked for, then not needed
        await asyncio.gather(*calls[:5])
        async with lim.slots:
            assert lim.slots.limit == 8  # the only shard: every slot
        assert ray.get(actor.progress.remote()) == {0: 7}
        await a.close()

    asyncio.run(go())
    totals = ray.get(actor.totals.remote())["endpoints"][spec]
    assert totals["granted"] - totals["returned"] == 5 and totals["held"] == 0
