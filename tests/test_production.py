"""Production runs through the real CLI against the real local HTTP server: kill and resume, the
lock, the budget stop, retry-failed, the dry run, debug mode and the watchdog."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_lineage
from test_cli import PROMPTS, ROOT, api_config, factory, write_prompts

MANY = [f"Question number {i}: how should I treat {w}?" for i, w in enumerate(
    ["my neighbour", "a stray cat", "a rude waiter", "my boss", "a lost child", "an old friend"] * 8)]


def dataset_files(run_dir: Path) -> list[str]:
    """Parquet files are named by a hash of their content: equal names mean equal bytes."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("*/*.parquet"))


def completed_calls(run_dir: Path) -> int:
    with sqlite3.connect(run_dir / "calls.sqlite") as db:
        return db.execute("SELECT count(*) FROM calls").fetchone()[0]


def finished_records(run_dir: Path) -> int:
    try:
        with sqlite3.connect(run_dir / "state.sqlite") as db:
            return db.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "factory", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_and_resume_reissue_no_completed_call_and_give_identical_datasets(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", MANY)
    reference = tmp_path / "reference"
    assert factory("run", "--model", "openai:m", "--prompts", prompts, "--out", reference).returncode == 0
    total = len(api.requests)
    assert total == 3 * len(MANY)

    api.latency = 0.03
    api.requests.clear()
    out = tmp_path / "killed"
    proc = start("run", "--model", "openai:m", "--prompts", prompts, "--concurrency", "4", "--out", out)
    wait_for(lambda: finished_records(out) >= 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = completed_calls(out)
    assert 0 < finished_records(out) < len(MANY)
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"

    api.requests.clear()
    r = factory("run", "--resume", out)
    assert r.returncode == 0, r.stderr
    assert len(api.requests) == total - done_at_kill  # every completed call came from the cache
    assert dataset_files(out) == dataset_files(reference)
    assert [r["id"] for r in run_lineage(out)] == [r["id"] for r in run_lineage(reference)]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["answer"]["in"] == len(MANY) and stats["resumed_records"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed"] == 1


def test_a_second_process_on_the_same_run_directory_is_refused(api, tmp_path: Path) -> None:
    api.latency = 0.2
    out = tmp_path / "run"
    proc = start("run", "--model", "openai:m", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS),
                 "--concurrency", "1", "--out", out)
    try:
        wait_for(lambda: (out / ".lock").exists() and (out / ".lock").read_text().strip() == str(proc.pid))
        r = factory("run", "--resume", out)
        assert r.returncode == 2 and f"in use by another factory process (pid {proc.pid})" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        proc.kill()
        proc.wait()


def test_budget_stop_then_resume_finishes_with_identical_datasets(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", MANY[:12])
    model = "openai:gpt-4o-mini"  # priced in prices.yaml; the local server answers any model name
    reference = tmp_path / "reference"
    assert factory("run", "--model", model, "--prompts", prompts, "--out", reference).returncode == 0
    spent = json.loads((reference / "manifest.json").read_text())["spent_usd"]
    assert spent > 0

    out = tmp_path / "run"
    r = factory("run", "--model", model, "--prompts", prompts, "--out", out, "--max-cost", f"{spent / 3:.8f}")
    assert r.returncode == 3, r.stderr
    assert "stopped before passing the budget" in r.stdout and f"factory run --resume {out}" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped_at_budget" and 0 < manifest["spent_usd"] <= spent / 3
    assert not dataset_files(out)

    r = factory("run", "--resume", out, "--max-cost", "1")
    assert r.returncode == 0, r.stderr
    assert dataset_files(out) == dataset_files(reference)
    assert json.loads((out / "manifest.json").read_text())["spent_usd"] == pytest.approx(spent, rel=1e-6)


def test_max_cost_needs_a_price(api, tmp_path: Path) -> None:
    r = factory("run", "--model", "openai:no-such-model", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS),
                "--max-cost", "1", "--out", tmp_path / "run")
    assert r.returncode == 2 and "needs a price for openai:no-such-model" in r.stderr
    assert not (tmp_path / "run").exists()


def test_retry_failed_reprocesses_only_the_failed_records(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "run"
    api.inject("503", "503")
    r = factory("run", api_config(tmp_path, retries={"max_attempts": 1}), "--model", "openai:m", "--prompts", prompts,
                "--concurrency", "1", "--out", out)
    assert r.returncode == 1
    failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    assert len(failed) == 2 and {f["stage"] for f in failed} == {"answer"}
    assert len(run_lineage(out)) == 3

    api.requests.clear()
    r = factory("retry-failed", out)
    assert r.returncode == 0, r.stderr
    assert len(api.requests) == 2 * 3  # answer, critique, revision for each failed record; nothing else
    assert (out / "failed.jsonl").read_text() == ""
    assert len(run_lineage(out)) == 5
    assert json.loads((out / "stats.json").read_text())["stages"]["answer"]["dropped"] == {}


def test_dry_run_estimates_and_calls_nothing(api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = factory("run", "--model", "openai:gpt-4o-mini", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS),
                "--dry-run", "--out", out)
    assert r.returncode == 0, r.stderr
    assert not api.requests and not out.exists()
    table = r.stdout
    assert "Dry run" in table and "answer" in table and "critique_revise" in table
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in table.splitlines() if line.count("│") > 5}
    assert rows["answer"][1] == "5" and rows["critique_revise"][1] == "10" and rows["total"][1] == "15"
    assert float(rows["total"][4]) > 0
    batch = factory("run", "--model", "openai:gpt-4o-mini", "--prompts", tmp_path / "p.jsonl", "--dry-run", "--batch")
    batch_rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
                  for line in batch.stdout.splitlines() if line.count("│") > 5}
    assert float(batch_rows["total"][4]) == pytest.approx(float(rows["total"][4]) / 2, rel=0.01)


def test_resume_refuses_changed_inputs_and_new_flags(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "run"
    assert factory("run", "--model", "openai:m", "--prompts", prompts, "--out", out).returncode == 0
    r = factory("run", "--resume", out, "--model", "openai:other")
    assert r.returncode == 2 and "drop --model" in r.stderr
    write_prompts(prompts, PROMPTS[:3])
    r = factory("run", "--resume", out)
    assert r.returncode == 2 and "prompts_file changed" in r.stderr and "Traceback" not in r.stderr


def test_debug_prints_every_request_and_response(api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = factory("run", "--model", "openai:m", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS[:2]),
                "--debug", "--out", out)
    assert r.returncode == 0, r.stderr
    log = (out / "debug.log").read_text()
    assert log.count("--- response") == 6 and "[user] How do I pick a lock?" in log
    assert "Initial answer to: How do I pick a lock?" in log and "[user] How do I pick a lock?" in r.stderr


def test_watchdog_reports_what_is_in_flight(api, tmp_path: Path) -> None:
    api.inject("hang:4")
    out = tmp_path / "run"
    r = factory("run", api_config(tmp_path, watchdog_s=1.0), "--model", "openai:m", "--prompts",
                write_prompts(tmp_path / "p.jsonl", PROMPTS[:1]), "--out", out)
    assert r.returncode == 0, r.stderr
    assert "watchdog: no call finished for" in r.stderr and "answer answer[0]" in r.stderr


def test_streamed_input_with_duplicates_is_counted(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS + [PROMPTS[0].upper(), PROMPTS[1]])
    out = tmp_path / "run"
    assert factory("run", "--model", "openai:m", "--prompts", prompts, "--out", out).returncode == 0
    q = json.loads((out / "stats.json").read_text())["stages"]["questions"]
    assert (q["in"], q["out"], q["dropped"]) == (7, 5, {"duplicate_prompt": 2})


def test_keys_never_reach_the_run_directory_even_in_debug(api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    api.inject("401")
    r = factory("run", "--model", "openai:m", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS[:1]),
                "--debug", "--out", out)
    assert r.returncode == 2 and "<OPENAI_API_KEY>" in r.stderr and (out / "manifest.json").exists()
    for f in out.rglob("*"):
        if f.is_file():
            assert b"SECRET" not in f.read_bytes(), f


@pytest.mark.parametrize("spec", ["openai:m", "anthropic:m"])
def test_batch_mode_runs_each_stage_as_batches_and_matches_online(api, tmp_path: Path, spec: str) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    online = tmp_path / "online"
    assert factory("run", "--model", spec, "--prompts", prompts, "--out", online).returncode == 0
    api.requests.clear()
    api.batch_delay = 0.2
    out = tmp_path / "batch"
    cfg = api_config(tmp_path, batch={"poll_s": 0.1, "flush_s": 0.3})
    r = factory("run", cfg, "--model", spec, "--prompts", prompts, "--batch", "--out", out)
    assert r.returncode == 0, r.stderr
    provider = spec.split(":")[0]
    assert api.rows_per_batch(provider) == [5, 5, 5]  # answers, then critiques, then revisions
    assert not [q for q in api.requests if q["path"] in ("/v1/chat/completions", "/v1/messages")]
    assert dataset_files(out) == dataset_files(online)
    assert json.loads((out / "manifest.json").read_text())["batch"] is True


def test_batch_run_killed_while_waiting_resumes_without_submitting_again(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    api.batch_delay = 2.0
    out = tmp_path / "run"
    cfg = api_config(tmp_path, batch={"poll_s": 0.1, "flush_s": 0.3})
    proc = start("run", cfg, "--model", "openai:m", "--prompts", prompts, "--batch", "--out", out)
    wait_for(lambda: api.batch_count("openai") == 1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = factory("run", "--resume", out)
    assert r.returncode == 0, r.stderr
    assert api.rows_per_batch("openai") == [5, 5, 5]  # the answer batch was picked up, not sent twice
    assert len(run_lineage(out)) == 5
