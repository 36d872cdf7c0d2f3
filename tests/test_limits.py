"""Inputs bounded in time and size: YAML through the C safe loader in one linear pass, limits on
file size, prompt and principle length, and characters no prompt may hold; each refusal names the
file and line (the CLI turns it into exit 2: tests/test_fuzz.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fuzz_inputs import CONSTITUTION, billion_laughs

from factory.constitution import load_constitution
from factory.errors import InputError
from factory.inputs import PromptFile
from factory.yamlfile import LOADER


def refused(tmp_path: Path, text: str, name: str = "c.yaml") -> InputError:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_constitution(path) if name.endswith(".yaml") else PromptFile(path)
    return info.value


def test_the_c_safe_loader_is_used_when_installed() -> None:
    assert LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


@pytest.mark.parametrize(("text", "says", "line"), [
    (billion_laughs(), "expands to more than 1000000 nodes", 7),
    ("a: &a [*a]\n", "recursive alias", 1),
    ("a: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(1001)), "more than 1000 alias uses", 1),
    ("name: harmless\nversion: !!python/object/apply:os.system ['true']\n", "could not determine a constructor", 2),
    ("name: harmless\nversion: 1\nx: !!timestamp 2024-13-45\n", "month must be in 1..12", 3),
    ("name: harmless\nversion: 1\nx: !!bool maybe\n", "a value its tag cannot hold", 3),
    ('name: harmless\ndescription: "a\\x00b"\n', "control character U+0000", 2),
    ("a:\n  b: 1\n  b: 2\n", "duplicate key", 3),
    ("? [a, b]\n: 1\nname: x\n", "unhashable", 1),
])
def test_yaml_tricks_are_refused_with_their_line(tmp_path: Path, text: str, says: str, line: int) -> None:
    e = refused(tmp_path, text)
    assert says in str(e) and e.line == line, str(e)


def test_a_yaml_alias_bomb_is_refused_in_one_pass(tmp_path: Path) -> None:
    """A 12-level bomb (9^12 nodes once expanded) costs what its text costs: the walk visits each node once."""
    import time

    start = time.process_time()
    refused(tmp_path, billion_laughs(12))
    assert time.process_time() - start < 1.0  # was minutes: the old duplicate-key walk expanded every alias


def test_limits_are_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = CONSTITUTION.replace("Point out any way the answer is harmful", "Point out " + "very " * 5000 + "harm")
    assert "FACTORY_MAX_PRINCIPLE_CHARS" in str(refused(tmp_path, big))
    monkeypatch.setenv("FACTORY_MAX_PRINCIPLE_CHARS", "100000")
    path = tmp_path / "big.yaml"
    path.write_text(big)
    assert load_constitution(path).principles
    monkeypatch.setenv("FACTORY_MAX_FILE_MB", "0.01")
    assert "larger than 0.01 MB" in str(refused(tmp_path, big))
    monkeypatch.setenv("FACTORY_MAX_PROMPT_CHARS", "10")
    e = refused(tmp_path, json.dumps({"prompt": "x" * 11}) + "\n", "p.jsonl")
    assert e.line == 1 and e.field == "prompt" and "FACTORY_MAX_PROMPT_CHARS" in str(e)


@pytest.mark.parametrize(("line", "field"), [({"prompt": "a\x00b"}, "prompt"), ({"prompt": "\ud800"}, "prompt"),
                                             ({"prompt": "ok", "meta": {"k": ["\x1b[31m"]}}, "meta")])
def test_bad_characters_in_prompts_name_the_line_and_field(tmp_path: Path, line: dict, field: str) -> None:
    e = refused(tmp_path, '{"prompt": "fine\\ttabs\\nand newlines"}\n' + json.dumps(line) + "\n", "p.jsonl")
    assert (e.line, e.field) == (2, field) and "remove it" in str(e)
