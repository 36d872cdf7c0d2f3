"""The real CLI, end to end, against the real local HTTP server (OpenAI and Anthropic protocols)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_lineage
from datasets import load_dataset
from trl.data_utils import is_conversational

ROOT = Path(__file__).resolve().parent.parent


def factory(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The CLI in this process (click's CliRunner isolates stdin, stdout and stderr): what `factory ARGS`
    prints, and the exit code `main` would exit with. Tests of process behaviour (a kill, a resume after
    it, `python -m factory`) start a real process instead (`factory_process`)."""
    from click.testing import CliRunner

    from factory.cli import run_cli

    here = Path.cwd()
    os.chdir(cwd)
    try:
        with CliRunner().isolation() as (out, err, _):
            code = run_cli([str(a) for a in args])
            sys.stdout.flush()
            sys.stderr.flush()
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["factory", *map(str, args)], code, out.getvalue().decode(),
                                       err.getvalue().decode())


def factory_process(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m factory ARGS` as a process."""
    return subprocess.run([sys.executable, "-m", "factory", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "topic": i}) + "\n" for i, p in enumerate(prompts)))
    return path


def api_config(tmp_path: Path, **settings) -> Path:
    """The default pipeline with absolute paths, plus `settings` (e.g. retries, timeouts, prices)."""
    cfg = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    q = cfg["stages"]["questions"]
    q["seeds"] = [str((ROOT / "pipelines" / s).resolve()) for s in q["seeds"]]
    cfg.update(settings)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "How can I get revenge on my neighbour?",
           "Explain photosynthesis simply.", "What is a good first programming language?"]


@pytest.mark.parametrize("spec", ["openai:test-model", "anthropic:test-model"])
def test_run_end_to_end_over_http(api, tmp_path: Path, spec: str) -> None:
    out = tmp_path / "run"
    r = factory("run", "--model", spec, "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS), "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    assert "load_dataset" in r.stdout

    sft, prefs = load_dataset(str(out), "sft"), load_dataset(str(out), "prefs")
    assert set(sft) <= {"train_sft", "test_sft"} and set(prefs) <= {"train_prefs", "test_prefs"}
    assert sum(len(s) for s in sft.values()) == 5 and sum(len(s) for s in prefs.values()) == 5
    split = next(iter(sft.values()))
    assert split.column_names == ["messages", "prompt_id", "principle_ids", "constitution",
                                  "constitution_hash", "generator_model", "fact_precision", "fact_f1"]
    assert set(split["fact_f1"]) == {None}  # nothing was fact-checked
    assert next(iter(prefs.values())).column_names[:3] == ["prompt", "chosen", "rejected"]
    row = next(iter(prefs.values()))[0]
    assert is_conversational(row) and is_conversational(split[0])
    assert row["generator_model"] == spec and row["constitution"] == "harmless@1.0.0"
    assert row["chosen"][0]["content"].startswith("A careful, kind answer to")

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["models"] == [spec]
    assert len(manifest["constitution"]["sha256"]) == 64 and set(manifest["templates"]) >= {"critique", "revision"}
    assert manifest["packages"]["datasets"] and "torch" in manifest["packages"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["answer"]["calls"] == 5 and stats["stages"]["critique_revise"]["calls"] == 10
    assert stats["stages"]["answer"]["prompt_tokens"] > 0
    lineage = run_lineage(out)
    assert len(lineage) == 5 and {r["metadata"]["topic"] for r in lineage} == set(range(5))
    assert all(len(r["calls"]) == 3 and r["candidates"][0]["rounds"][0]["critique"] for r in lineage)
    c = manifest["constitution"]
    assert all(r["constitution"] == {"name": c["label"], "digest": c["sha256"]} for r in lineage)
    with sqlite3.connect(out / "calls.sqlite") as db:
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 15
        assert db.execute("SELECT count(*) FROM errors").fetchone()[0] == 0
    # secrets never reach the run directory
    for f in out.rglob("*"):
        if f.is_file():
            assert b"SECRET" not in f.read_bytes(), f
    assert "README.md" in {p.name for p in out.iterdir()}


def test_run_generates_questions_from_seeds(api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = factory("run", "--model", "openai:test-model", "--out", out, "--seed", "3")
    assert r.returncode == 0, r.stderr
    lineage = run_lineage(out)
    sources = [r["source"] for r in lineage]
    assert sources.count("seed") == 8 and sources.count("generated") == 8
    stats = json.loads((out / "stats.json").read_text())["stages"]["questions"]
    assert stats["out"] == 16 and stats["calls"] >= 2


def test_failed_calls_land_in_failed_jsonl(api, tmp_path: Path) -> None:
    api.inject("500")  # the first call fails, and has no second attempt
    out = tmp_path / "run"
    r = factory("run", api_config(tmp_path, retries={"max_attempts": 1}), "--model", "openai:m", "--prompts",
                write_prompts(tmp_path / "p.jsonl", PROMPTS), "--concurrency", "1", "--out", out)
    assert r.returncode == 1, r.stderr
    assert "1 failure(s)" in r.stdout and "factory retry-failed" in r.stdout and "Traceback" not in r.stderr
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert len(failed) == 1 and failed[0]["stage"] == "answer" and "500" in failed[0]["reason"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["failed_records"] == 1 and stats["stages"]["answer"]["dropped"] == {"failed": 1}
    assert sum(len(s) for s in load_dataset(str(out), "sft").values()) == 4


def test_out_must_be_new(api, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep me")
    r = factory("run", "--model", "openai:m", "--out", tmp_path / "run")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (tmp_path / "run" / "x").read_text() == "keep me"


def test_try_prints_every_step_and_caches(api) -> None:
    r = factory("try", "How do I pick a lock?", "--model", "openai:m", "--rounds", "2")
    assert r.returncode == 0, r.stderr
    for part in ("prompt", "answer [0]", "round 1: critique", "round 2: revision", "diff", "{+", "[-"):
        assert part in r.stdout, part
    assert "5 calls (0 from cache)" in r.stdout
    again = factory("try", "How do I pick a lock?", "--model", "openai:m", "--rounds", "2")
    assert "5 calls (5 from cache)" in again.stdout


def test_lint_and_import(tmp_path: Path) -> None:
    r = factory("constitution", "lint", "constitutions/harmless.yaml", "constitutions/honest.yaml",
                "constitutions/opinion.yaml")
    assert r.returncode == 0 and r.stdout.count(": ok (") == 3
    dest = tmp_path / "imported.yaml"
    r = factory("constitution", "import", "tests/data/llm_swarm_sample.json", "--out", dest)
    assert r.returncode == 0, r.stderr
    assert factory("constitution", "lint", dest).returncode == 0


@pytest.mark.parametrize("out", ["Anthropic.CAI.yaml", "no/such/folder/x.yaml"])
def test_import_names_from_out_and_bad_out_exit_2(tmp_path: Path, out: str) -> None:
    dest = tmp_path / out
    r = factory("constitution", "import", "tests/data/llm_swarm_multiturn.json", "--out", dest)
    if dest.parent.is_dir():
        assert r.returncode == 0, r.stderr
        assert factory("constitution", "lint", dest).returncode == 0 and "anthropic-cai" in dest.read_text()
    else:
        assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr
    bad_name = factory("constitution", "import", "tests/data/llm_swarm_sample.json", "--out", tmp_path / "y.yaml",
                       "--name", "Bad Name")
    assert bad_name.returncode == 2 and "bad-name" in bad_name.stderr and not (tmp_path / "y.yaml").exists()


@pytest.mark.parametrize("args", [[], ["run"], ["try"], ["retry-failed"], ["constitution"], ["constitution", "lint"],
                                  ["constitution", "import"]])
def test_help_everywhere(args: list[str]) -> None:
    r = factory(*args, "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout and len(r.stdout) > 200


def test_rejected_key_stops_the_run(api, tmp_path: Path) -> None:
    api.inject(*["401"] * 20)
    out = tmp_path / "run"
    r = factory("run", "--model", "openai:m", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS), "--out", out)
    assert r.returncode == 2 and "HTTP 401" in r.stderr and "the run stopped" in r.stderr
    assert "Traceback" not in r.stderr and "SECRET" not in r.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "aborted"


def test_the_module_runs_as_a_process_and_exits_with_main_s_codes(tmp_path: Path) -> None:
    """`python -m factory`: a real process, bad input exits 2 with one line and no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprinciples: []\n")
    r = factory_process("constitution", "lint", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(bad) in r.stderr
    assert factory_process("--version").returncode == 0
