"""Every bad input: exit code 2, one message naming the file, line and field, no traceback, and no
run directory created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import ROOT, factory

CONSTITUTION = (ROOT / "constitutions" / "harmless.yaml").read_text()


def config(tmp_path: Path, text: str | None = None, **changes) -> Path:
    cfg = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
    cfg.update(constitution=str(ROOT / "constitutions" / "harmless.yaml"), prompts_dir=str(ROOT / "prompts"))
    cfg["stages"]["questions"]["seeds"] = [str(ROOT / "prompts" / "seeds" / "helpful.jsonl")]
    cfg.update(changes)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(cfg, sort_keys=False))
    return path


def fails(tmp_path: Path, *args, expect: str, max_lines: int = 1) -> str:
    out = tmp_path / "run"
    r = factory("run", *args, "--out", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and expect in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= max_lines, r.stderr  # one clear message
    assert not out.exists()
    return r.stderr


def test_malformed_config_yaml(tmp_path):
    path = config(tmp_path, "name: x\nconstitution: [unclosed\nseed: 1\n")
    fails(tmp_path, path, expect=f"{path}:3: malformed YAML")


def test_wrong_type_in_config(tmp_path):
    path = config(tmp_path, concurrency="many")
    msg = fails(tmp_path, path, expect=f"{path}:")
    assert "field 'concurrency'" in msg and "integer" in msg


def test_unknown_key_in_config(tmp_path):
    path = config(tmp_path)
    path.write_text(path.read_text().replace("  answer:\n", "  answer:\n    candiates: 2\n"))
    line = path.read_text().splitlines().index("    candiates: 2") + 1
    fails(tmp_path, path, expect=f"{path}:{line}: field 'stages.answer.candiates': unknown key")


@pytest.mark.parametrize("edit,expect", [
    (lambda t: t.split("principles:")[0] + "principles: []\n", "field 'principles'"),
    (lambda t: t.replace("id: crime-assistance", "id: harmful-content", 1), "duplicate principle id"),
])
def test_bad_constitution(tmp_path, edit, expect):
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(CONSTITUTION))
    msg = fails(tmp_path, config(tmp_path, constitution=str(bad)), expect=f"{bad}:")
    assert expect in msg


def test_missing_template_variable(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for f in (ROOT / "prompts").glob("*.yaml"):
        (prompts / f.name).write_text(f.read_text())
    (prompts / "answer.yaml").write_text("system: Be helpful.\nuser: |\n  Please answer:\n  {{ promt }}\n")
    fails(tmp_path, config(tmp_path, prompts_dir=str(prompts)),
          expect=f"{prompts / 'answer.yaml'}:4: field 'user': uses undefined variable 'promt'")


def test_prompts_file_with_broken_json_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "ok"}) + "\n" + '{"prompt": "broken\n')
    fails(tmp_path, "--prompts", p, expect=f"{p}:2: broken JSON")


def test_prompts_file_with_non_utf8_byte(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    fails(tmp_path, "--prompts", p, expect=f"{p}:2: not valid UTF-8")


def test_prompts_file_line_without_prompt(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine"}\n{"question": "where is it?"}\n')
    fails(tmp_path, "--prompts", p, expect=f"{p}:2: field 'prompt': missing")


def test_unknown_model_spec(tmp_path):
    msg = fails(tmp_path, "--model", "gpt-4o", expect="unknown model spec 'gpt-4o'", max_lines=6)
    assert "openai:MODEL" in msg


def test_missing_api_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fails(tmp_path, "--model", "openai:gpt-4o-mini", expect="OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    fails(tmp_path, "--model", "anthropic:claude-haiku-4-5", expect="ANTHROPIC_API_KEY")


def test_missing_config_file(tmp_path):
    fails(tmp_path, tmp_path / "nope.yaml", expect="nope.yaml: file not found")


def test_a_config_extends_another_in_its_folder(tmp_path):
    """Mappings merge key by key, lists and values are replaced, null clears; relative paths resolve
    against the one folder."""
    from factory.config import load_config

    base = config(tmp_path)
    base.write_text(base.read_text().replace(str(ROOT / "prompts" / "seeds" / "helpful.jsonl"), "seeds.jsonl"))
    (tmp_path / "seeds.jsonl").write_text('{"prompt": "Name a colour."}\n')
    child = tmp_path / "child.yaml"
    child.write_text("extends: pipeline.yaml\nconcurrency: 3\nstages:\n  answer:\n    candidates: 3\n"
                     "  critique_revise: null\n")
    cfg, parent = load_config(child), load_config(base)
    assert (cfg.concurrency, cfg.stages.answer.candidates, cfg.stages.critique_revise) == (3, 3, None)
    assert parent.stages.critique_revise is not None and parent.concurrency != 3
    assert cfg.stages.answer.temperature == parent.stages.answer.temperature  # the rest of `answer` kept
    assert cfg.path(cfg.stages.questions.seeds[0]) == tmp_path / "seeds.jsonl"
    grand = tmp_path / "grand.yaml"
    grand.write_text("extends: child.yaml\nstages:\n  questions:\n    seeds: [a.jsonl, b.jsonl]\n")
    cfg = load_config(grand)
    assert cfg.stages.questions.seeds == ["a.jsonl", "b.jsonl"] and cfg.concurrency == 3


def test_a_bad_extends_names_the_file_that_has_the_error(tmp_path):
    base = config(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text("extends: pipeline.yaml\nstages:\n  answer:\n    candiates: 3\n")
    fails(tmp_path, child, expect=f"{child}:4: field 'stages.answer.candiates': unknown key")
    child.write_text("extends: pipeline.yaml\nconcurrency: 4\n")
    base.write_text(base.read_text().replace("seed: 0\n", "seed: zero\n"))
    line = base.read_text().splitlines().index("seed: zero") + 1
    fails(tmp_path, child, expect=f"{base}:{line}: field 'seed'")  # the base's own line, not the child's
    for target, expect in [("../pipeline.yaml", "must name a YAML file in this file's folder"),
                           ("nope.yaml", f"nope.yaml: no such file in {tmp_path}"),
                           ("child.yaml", "makes a cycle through child.yaml")]:
        child.write_text(f"extends: {target}\nconcurrency: 4\n")
        fails(tmp_path, child, expect=f"{child}:1: field 'extends': {expect}")


def test_bad_limit(tmp_path):
    fails(tmp_path, "--limit", "0", expect="--limit must be at least 1")


def test_lint_reports_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONSTITUTION.replace("version:", "verison:", 1))
    r = factory("constitution", "lint", bad)
    assert r.returncode == 2 and f"{bad}:4: field 'verison': unknown key (did you mean 'version'?)" in r.stderr and "Traceback" not in r.stderr
