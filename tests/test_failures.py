"""No traceback from any input or environment: the top-level handler's messages, exit codes and
manifests, with the real CLI entry point (in process) against the real local HTTP server."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from test_cli import PROMPTS, write_prompts

from factory import cli
from factory.engine.state import RunState


def factory_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """`factory ARGS` through its real entry point (main), in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["factory", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def sft_rows(run_dir: Path) -> list:
    from datasets import load_dataset

    return sorted(json.dumps(r, sort_keys=True) for split in load_dataset(str(run_dir), "sft").values() for r in split)


def test_disk_full_stops_resumably_and_resumes_to_the_same_datasets(api, tmp_path: Path, monkeypatch, capsys) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    code, _, err = factory_main(monkeypatch, capsys, "run", "--model", "openai:m", "--prompts", prompts,
                                "--out", tmp_path / "clean")
    assert code == 0, err

    finish, done = RunState.finish, []

    def full_after_two(self, *a, **k):
        if len(done) >= 2:
            raise sqlite3.OperationalError("database or disk is full")
        done.append(1)
        return finish(self, *a, **k)

    monkeypatch.setattr(RunState, "finish", full_after_two)
    out = tmp_path / "run"
    code, _, err = factory_main(monkeypatch, capsys, "run", "--model", "openai:m", "--prompts", prompts,
                                "--concurrency", "1", "--out", out)
    assert code == 4 and "disk is full" in err and "--resume" in err and "Traceback" not in err, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped_disk_full"
    assert "OperationalError" in (out / "debug.log").read_text()  # the traceback went to the debug log only

    monkeypatch.setattr(RunState, "finish", finish)  # space freed
    code, _, err = factory_main(monkeypatch, capsys, "run", "--resume", out)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert sft_rows(out) == sft_rows(tmp_path / "clean")


def test_an_unexpected_error_is_a_message_and_a_logged_traceback(api, tmp_path: Path, monkeypatch, capsys) -> None:
    def bug(self, *a, **k):
        raise RuntimeError("a bug with sk-test-SECRET123 in it")

    monkeypatch.setattr(RunState, "finish", bug)
    out = tmp_path / "run"
    code, _, err = factory_main(monkeypatch, capsys, "run", "--model", "openai:m", "--prompts",
                                write_prompts(tmp_path / "p.jsonl", PROMPTS), "--out", out)
    assert code == 70 and "internal error: RuntimeError" in err and "Traceback" not in err, err
    assert "SECRET" not in err and str(out / "debug.log") in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "SECRET" not in json.dumps(manifest)
    log = (out / "debug.log").read_text()
    assert "Traceback" in log and "SECRET" not in log


def test_interrupt_leaves_the_run_resumable(api, tmp_path: Path, monkeypatch, capsys) -> None:
    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunState, "finish", interrupt)
    out = tmp_path / "run"
    code, _, err = factory_main(monkeypatch, capsys, "run", "--model", "openai:m", "--prompts",
                                write_prompts(tmp_path / "p.jsonl", PROMPTS), "--out", out)
    assert code == 130 and "Traceback" not in err
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"


def test_an_unwritable_out_is_exit_2(api, tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = factory_main(monkeypatch, capsys, "run", "--model", "openai:m", "--prompts",
                                write_prompts(tmp_path / "p.jsonl", PROMPTS), "--out", blocker / "run")
    assert code == 2 and "Traceback" not in err and "error:" in err, err


@pytest.mark.parametrize("prompt", ["\ud800", "a\x00b"])
def test_bad_characters_in_a_prompt_are_exit_2(api, tmp_path: Path, monkeypatch, capsys, prompt: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n' + json.dumps({"prompt": prompt}) + "\n")
    out = tmp_path / "run"
    code, _, err = factory_main(monkeypatch, capsys, "run", "--model", "openai:m", "--prompts", path, "--out", out)
    assert code == 2 and f"{path}:2" in err and "field 'prompt'" in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_lone_surrogate_given_to_try_is_exit_2(api, monkeypatch, capsys) -> None:
    code, _, err = factory_main(monkeypatch, capsys, "try", "bad \udcff byte", "--model", "openai:m")
    assert code == 2 and "Traceback" not in err, err
