"""The Ray executor on a real local Ray instance (2 CPUs, so 2 workers) against the real local HTTP
server: the same datasets and records as the local executor, a worker killed mid-run, resume after
an interrupted run, and the same calls, none paid twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_lineage
from rich.console import Console
from test_cli import ROOT, write_prompts
from test_production import MANY, dataset_files, wait_for

from factory.cli import cli
from factory.config import load_config
from factory.engine.pipeline import Overrides, Pipeline
from factory.errors import FactoryError
from factory.executors.dispatch import resume, run

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
QUIET = Console(quiet=True)


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def pipeline(prompts: Path, **overrides) -> Pipeline:
    return Pipeline.prepare(load_config(None), Overrides(prompts=prompts, model="openai:m", **overrides))


def run_ray(prompts: Path, out: Path, **kwargs):
    from factory.executors.ray_run import run_ray as go

    return go(pipeline(prompts, concurrency=kwargs.pop("concurrency", 8)), out, QUIET, workers=2, **kwargs)


def bodies(srv) -> list[str]:
    return [json.dumps(r["body"], sort_keys=True) for r in srv.requests if r["path"] == "/v1/chat/completions"]


def records(run_dir: Path) -> set[str]:
    """The run's records without what differs between two runs of the same calls (timings)."""
    out = set()
    for rec in run_lineage(run_dir):
        for call in rec["calls"]:
            call.pop("seconds")
        out.add(json.dumps(rec, sort_keys=True))
    return out


def logged_keys(*logs: Path) -> set[str]:
    keys: set[str] = set()
    for path in logs:
        with sqlite3.connect(path) as db:
            keys |= {k for (k,) in db.execute("SELECT key FROM calls")}
    return keys


def finished_in_shards(run_dir: Path, shards: str = "*") -> int:
    total = 0
    for path in run_dir.glob(f"shards/{shards}/state.sqlite"):
        try:
            with sqlite3.connect(path) as db:
                total += db.execute("SELECT count(*) FROM records").fetchone()[0]
        except sqlite3.OperationalError:
            pass
    return total


def test_ray_run_equals_the_local_run(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", MANY + MANY[:3])  # duplicates are counted once, globally
    local = run(pipeline(prompts), tmp_path / "local", QUIET)
    local_calls = bodies(api)
    api.requests.clear()
    outcome = run_ray(prompts, tmp_path / "ray", shards=3)
    assert outcome.status == local.status == "complete" and outcome.counts == local.counts
    assert sorted(bodies(api)) == sorted(local_calls) and len(local_calls) == 3 * len(MANY)
    assert dataset_files(tmp_path / "ray") == dataset_files(tmp_path / "local")  # named by content hash
    assert records(tmp_path / "ray") == records(tmp_path / "local")
    assert logged_keys(tmp_path / "ray" / "calls.sqlite") == logged_keys(tmp_path / "local" / "calls.sqlite")
    layout = {p.name for p in (tmp_path / "local").iterdir()}
    assert {p.name for p in (tmp_path / "ray").iterdir()} == layout and "shards" not in layout
    ray_stats, local_stats = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("ray", "local"))
    for stage in ("questions", "answer", "critique_revise"):
        for key in ("in", "out", "dropped", "calls"):
            assert ray_stats["stages"][stage][key] == local_stats["stages"][stage][key], (stage, key)
    assert ray_stats["run_totals"] == local_stats["run_totals"]
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["executor"] == {"kind": "ray", "address": None, "workers": 2, "shards": 3}


def test_prompts_generated_from_seeds_are_generated_once_by_the_driver(api, tmp_path: Path) -> None:
    seeded = Pipeline.prepare(load_config(None), Overrides(model="openai:m"))  # seed prompts plus 8 generated
    local = run(seeded, tmp_path / "local", QUIET)
    local_calls = bodies(api)
    api.requests.clear()
    from factory.executors.ray_run import run_ray as go

    outcome = go(Pipeline.prepare(load_config(None), Overrides(model="openai:m")), tmp_path / "ray", QUIET, workers=2)
    assert outcome.status == local.status == "complete"
    assert sorted(bodies(api)) == sorted(local_calls)  # each generation call once, not once per shard
    assert dataset_files(tmp_path / "ray") == dataset_files(tmp_path / "local")
    q = [json.loads((tmp_path / d / "stats.json").read_text())["stages"]["questions"] for d in ("ray", "local")]
    assert q[0]["counters"]["generated"] == q[1]["counters"]["generated"] == 8


def test_a_worker_killed_mid_run_is_retried_and_no_call_is_paid_twice(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", MANY)
    api.latency = 0.02
    out, result = tmp_path / "run", {}
    driver = threading.Thread(target=lambda: result.update(outcome=run_ray(prompts, out, shards=2, concurrency=4)))
    driver.start()
    shard = out / "shards" / "0000"

    wait_for(lambda: finished_in_shards(out, "0000") >= 4 and (shard / ".lock").exists())
    pid = int((shard / ".lock").read_text())
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)  # the Ray worker running shard 0
    driver.join(timeout=120)
    outcome = result["outcome"]
    assert outcome.status == "complete"
    sent = bodies(api)
    assert len(set(sent)) == 3 * len(MANY)
    # Only requests in flight at the kill (never logged) may go again: at most the shard's in-flight
    # share (concurrency 4 split between the 2 shards running).
    assert len(sent) - len(set(sent)) <= 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["resumed_records"] >= 4 and stats["stages"]["answer"]["out"] == len(MANY)
    assert len(run_lineage(out)) == len(MANY)


def test_resume_after_an_interrupted_ray_run_reissues_no_completed_call(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", MANY)
    reference = run(pipeline(prompts), tmp_path / "reference", QUIET)
    api.requests.clear()
    api.latency = 0.01
    out = tmp_path / "run"

    def reject_the_key_mid_way() -> None:  # a rejected key stops the whole run
        wait_for(lambda: finished_in_shards(out) >= 8)
        api.inject("401")

    fault = threading.Thread(target=reject_the_key_mid_way)
    fault.start()
    with pytest.raises(FactoryError, match="the run stopped"):
        run_ray(prompts, out, shards=4, concurrency=2)
    fault.join()
    assert json.loads((out / "manifest.json").read_text())["status"] == "aborted"
    logs = [out / "calls.sqlite", *(out / "shards").glob("*/calls.sqlite")]
    completed = logged_keys(*logs)
    assert 0 < len(completed) < 3 * len(MANY)

    api.requests.clear()
    outcome = resume(out, QUIET, Overrides())
    assert outcome.status == "complete"
    assert len(bodies(api)) == 3 * len(MANY) - len(completed)  # every completed call came from a log
    assert dataset_files(out) == dataset_files(reference.run_dir)
    assert json.loads((out / "manifest.json").read_text())["resumed"] == 1
    assert not (out / "shards").exists()


def test_cli_runs_on_ray_and_refuses_what_it_cannot_split(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", MANY[:6])
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--executor", "ray", "--workers", "2", "--model", "openai:m", "--prompts",
                                 str(prompts), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == str(out)
    assert json.loads((out / "manifest.json").read_text())["executor"]["kind"] == "ray"
    for flags, message in ((["--batch"], "--batch needs no cluster"), (["--debug"], "--debug runs one record at a time"),
                           (["--max-cost", "1", "--model", "openai:no-such-price"], "needs a price for openai:no-such-price")):
        r = subprocess.run([sys.executable, "-m", "factory", "run", "--executor", "ray", "--model", "openai:gpt-4o-mini",
                            "--prompts", str(prompts), "--out", str(tmp_path / "no"), *flags],
                           capture_output=True, text=True, cwd=ROOT, check=False)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "no").exists()


def test_ray_is_imported_only_when_chosen() -> None:
    code = "import sys, factory.cli, factory.executors.dispatch, factory.engine.pipeline; assert 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0
    r = subprocess.run([sys.executable, "-m", "factory", "run", "--ray-address", "x:1"], capture_output=True,
                       text=True, cwd=ROOT, check=False)
    assert r.returncode == 2 and "go with --executor ray" in r.stderr
