"""Storage proportional to the text: requests, responses and records compressed in real SQLite (zstd,
a dictionary per template version), records kept once (state.sqlite), old uncompressed run
directories still read and resume, and compressed runs resume and retry their failed records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import run_lineage
from datasets import load_dataset
from test_cli import PROMPTS, api_config, factory, write_prompts

from factory.engine import blobs
from factory.engine.calllog import CallLog, request_json
from factory.engine.state import RunState
from factory.models import Completion, GenParams

FEW_SHOT = "".join(f"Example {i}: a request, a response that needed care, and its critique. " * 4 for i in range(20))


def put_calls(log: CallLog, n: int, start: int = 0) -> dict[str, str]:
    """n calls of one template whose requests share a long few-shot prefix; {key: response text}."""
    out = {}
    for i in range(start, start + n):
        messages = [{"role": "user", "content": FEW_SHOT + f"Now critique this response to question {i}."}]
        text = f"Critique {i}: the response to question {i} could be kinder. " * 3
        key = f"k{i:04d}"
        log.put(key, "critique_revise", "openai:m", "critique", "h1", request_json(messages, GenParams(seed=i)),
                Completion(text, 10, 20, "stop"), 0.1, 0.001)
        out[key] = text
    return out


def test_calls_are_packed_with_a_dictionary_per_template_and_copy_between_logs(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.sqlite")
    texts = put_calls(log, 3 * blobs.SAMPLES)
    stored = log.db.execute("SELECT SUM(LENGTH(request)), COUNT(*) FROM calls").fetchone()
    raw = sum(len(r["messages"][0]["content"]) for r in log.requests("critique_revise"))
    assert stored[1] == len(texts) and stored[0] < raw / 8  # the few-shot prefix is in the dictionary
    assert {g for (g,) in log.db.execute("SELECT grp FROM dicts")} == {"request:critique:h1", "response:critique"}
    assert all(log.get(k).text == t for k, t in texts.items())
    log.close()

    again = CallLog(tmp_path / "calls.sqlite")  # a resumed run takes up the dictionaries it made before
    texts |= put_calls(again, blobs.SAMPLES, start=len(texts))
    assert again.db.execute("SELECT COUNT(*) FROM dicts").fetchone()[0] == 2
    assert all(again.get(k).text == t for k, t in texts.items())

    merged = CallLog(tmp_path / "merged.sqlite")  # a Ray shard's log merged into the run's
    merged.merge_from(tmp_path / "calls.sqlite")
    merged.merge_from(tmp_path / "calls.sqlite")
    assert all(merged.get(k).text == t for k, t in texts.items())
    copied = CallLog(tmp_path / "copied.sqlite")  # one call brought over from a shared cache
    copied.copy_from(again, "k0007")
    assert copied.get("k0007").text == texts["k0007"] and copied.get("k0008") is None
    assert next(copied.requests("critique_revise"))["params"]["seed"] == 7


def unpack_everything(run_dir: Path) -> None:
    """Turn a run directory into what an older version wrote: calls and records uncompressed TEXT, no
    dictionaries, and the done and dropped records in records.jsonl as well."""
    lines = [json.dumps(rec) for rec in run_lineage(run_dir)]
    log = CallLog(run_dir / "calls.sqlite")
    for key, request, response in log.db.execute("SELECT key, request, response FROM calls").fetchall():
        log.db.execute("UPDATE calls SET request=?, response=? WHERE key=?",
                       (log.packer.unpack(request), log.packer.unpack(response), key))
    log.db.execute("DROP TABLE dicts")
    log.close()
    state = RunState(run_dir)
    for record_id, data in state.db.execute("SELECT id, data FROM records").fetchall():
        state.db.execute("UPDATE records SET data=? WHERE id=?", (state.packer.unpack(data), record_id))
    state.db.execute("DROP TABLE dicts")
    state.close()
    (run_dir / "records.jsonl").write_text("".join(line + "\n" for line in lines))


def failing_run(api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Five prompts, two of which fail at the answer (503, no retry); dictionaries after 2 values."""
    monkeypatch.setattr(blobs, "SAMPLES", 2)
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "run"
    api.inject("503", "503")
    r = factory("run", api_config(tmp_path, retries={"max_attempts": 1}), "--model", "openai:m", "--prompts", prompts,
                "--concurrency", "1", "--out", out)
    assert r.returncode == 1, r.stderr
    return out


def check_retry_and_export(api, out: Path, stored: set[type]) -> None:
    """retry-failed redoes the two failed records only; the datasets then hold all five prompts.
    `stored`: the types of the state's record rows after it (bytes: compressed; str: an older run's)."""
    api.requests.clear()
    r = factory("retry-failed", out)
    assert r.returncode == 0, r.stderr
    assert len(api.requests) == 2 * 3
    assert (out / "failed.jsonl").read_text() == "" and not (out / "records.jsonl").exists()
    lineage = run_lineage(out)
    assert sorted(rec["prompt"] for rec in lineage) == sorted(PROMPTS)
    assert all(len(rec["calls"]) == 3 for rec in lineage)  # every call of every record, in its lineage
    sft = load_dataset(str(out), "sft")
    assert sorted(row["messages"][0]["content"] for split in sft.values() for row in split) == sorted(PROMPTS)
    with sqlite3.connect(out / "state.sqlite") as db:
        assert {type(d) for (d,) in db.execute("SELECT data FROM records")} == stored


def test_a_compressed_run_resumes_and_retries_its_failed_records(api, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = failing_run(api, tmp_path, monkeypatch)
    with sqlite3.connect(out / "calls.sqlite") as db:
        kinds = {(type(q), type(r)) for q, r in db.execute("SELECT request, response FROM calls")}
        assert kinds == {(bytes, bytes)} and db.execute("SELECT COUNT(*) FROM dicts").fetchone()[0] >= 3
    assert not (out / "records.jsonl").exists() and len(run_lineage(out)) == 3
    failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    assert len(failed) == 2 and all(f["record"]["prompt"] in PROMPTS for f in failed)
    r = factory("inspect", out, "--jsonl")
    assert [json.loads(line) for line in r.stdout.splitlines()] == run_lineage(out)
    check_retry_and_export(api, out, {bytes})


def test_an_old_uncompressed_run_still_reads_exports_and_retries(api, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = failing_run(api, tmp_path, monkeypatch)
    before = run_lineage(out)
    log = CallLog(out / "calls.sqlite")
    calls = {k: log.get(k) for (k,) in log.db.execute("SELECT key FROM calls")}
    log.close()
    unpack_everything(out)

    assert run_lineage(out) == before
    log = CallLog(out / "calls.sqlite")
    assert {k: log.get(k) for k in calls} == calls
    log.close()
    r = factory("inspect", out, "--samples", "3")
    assert r.returncode == 0 and all(rec["prompt"] in r.stdout for rec in before), r.stderr
    assert factory("report", out).returncode == 0
    r = factory("inspect", out, "--jsonl")
    assert r.returncode == 0 and [json.loads(line) for line in r.stdout.splitlines()] == before
    r = factory("export", out)
    assert r.returncode == 0, r.stderr
    assert load_dataset(str(out), "sft")["train_sft"].num_rows + load_dataset(str(out), "sft")["test_sft"].num_rows == 3
    check_retry_and_export(api, out, {bytes, str})  # the new records compressed beside the old ones
