import json
from pathlib import Path

import pytest

from factory.config import JudgeConfig
from factory.constitution import Constitution, import_llm_swarm, load_constitution
from factory.errors import InputError

SHIPPED = ["harmless", "honest", "opinion"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_constitutions_are_valid(repo: Path, name: str) -> None:
    c = load_constitution(repo / "constitutions" / f"{name}.yaml")
    assert c.name == name and c.warnings() == []
    assert any(not ex.needs_change for ex in c.examples)
    assert all(ex.principle in {p.id for p in c.principles} for ex in c.examples if ex.principle)


def test_harmless_has_about_sixteen_principles_with_judges(repo: Path) -> None:
    c = load_constitution(repo / "constitutions" / "harmless.yaml")
    assert 14 <= len(c.principles) <= 18
    assert all(p.judge for p in c.principles)


GOOD = """\
name: tiny
version: "1"
description: A tiny constitution.
principles:
  - id: kind
    critique: Is it kind?
    revision: Make it kind.
  - id: safe
    critique: Is it safe?
    revision: Make it safe.
examples:
  - prompt: Hi
    response: Hello!
    principle: kind
    critique: It is kind already.
    revision: Hello!
"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def error_of(tmp_path: Path, text: str | bytes) -> InputError:
    with pytest.raises(InputError) as e:
        load_constitution(write(tmp_path, text))
    return e.value


def test_good_file_loads_and_hash_ignores_layout(tmp_path: Path) -> None:
    a = load_constitution(write(tmp_path, GOOD))
    b = load_constitution(write(tmp_path, "# a comment\n" + GOOD.replace("Is it kind?", "'Is it kind?'")))
    c = load_constitution(write(tmp_path, GOOD.replace("Is it kind?", "Is it kind enough?")))
    assert a.digest == b.digest != c.digest
    assert a.principle("safe").digest() == c.principle("safe").digest()
    assert a.principle("kind").digest() != c.principle("kind").digest()


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.replace("  - id: safe", "  - id: [safe"))
    assert "malformed YAML" in str(e) and e.line is not None and e.line >= 7


def test_wrong_type_names_line_and_field(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.replace("    revision: Make it safe.", "    revision: [1, 2]"))
    assert e.field == "principles.1.revision" and e.line == 10
    assert str(e).startswith(f"{tmp_path / 'c.yaml'}:10: field 'principles.1.revision'")


def test_unknown_key_names_line_and_field(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.replace("    revision: Make it safe.\n", "    revision: Make it safe.\n    wieght: 2\n"))
    assert e.field == "principles.1.wieght" and e.line == 11 and "unknown key" in str(e)


def test_empty_principle_list(tmp_path: Path) -> None:
    text = GOOD.split("principles:")[0] + "principles: []\n"
    e = error_of(tmp_path, text)
    assert e.field == "principles" and e.line == 4


def test_duplicate_principle_ids(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.replace("id: safe", "id: kind"))
    assert "duplicate principle id 'kind'" in str(e)


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.replace("version: \"1\"\n", "version: \"1\"\nversion: \"2\"\n"))
    assert e.field == "version" and e.line == 3 and "duplicate key" in str(e)


def test_example_with_unknown_principle(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.replace("principle: kind", "principle: polite"))
    assert "unknown principle 'polite'" in str(e)


def test_non_utf8_byte_names_the_line(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.encode().replace(b"Make it safe.", b"Make it s\xffe."))
    assert e.line == 10 and "UTF-8" in str(e)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_constitution(tmp_path / "nope.yaml")


def test_import_llm_swarm(repo: Path) -> None:
    data = import_llm_swarm(repo / "tests" / "data" / "llm_swarm_sample.json", "sample")
    c = Constitution.model_validate(data)
    assert [p.id for p in c.principles] == ["p01", "p02", "p03"]
    assert c.examples[0].principle == "p01"
    assert c.examples[1].principle is None and c.examples[1].critique_request


def test_import_rejects_broken_json(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"constitutions": [\n  {"critic": "a",\n}')
    with pytest.raises(InputError) as e:
        import_llm_swarm(p, "x")
    assert e.value.line == 3


def test_import_multiturn_examples_with_derived_judge_texts(repo: Path, tmp_path: Path) -> None:
    """llm-swarm's published files mix 6-turn examples with longer ones (its Grok file has an 8-turn
    example): the earlier turns go into the prompt, and every principle gets a judge text."""
    data = import_llm_swarm(repo / "tests" / "data" / "llm_swarm_multiturn.json", "Grok.Constitution")
    c = Constitution.model_validate(data)
    assert c.name == "grok-constitution" and len(c.examples) == 3
    assert [ex.principle for ex in c.examples[:2]] == ["p02", "p01"]
    long = c.examples[2]
    assert long.prompt.startswith("Human: Tell me something interesting about tides.\n\nAssistant: Tides")
    assert long.prompt.endswith("Human: Why are there two high tides a day?") and "1066" in long.response
    assert long.critique_request and "1066" in long.critique
    assert all(p.judge and p.critique in p.judge for p in c.principles)
    assert "derived" in c.description
    from factory.stages.judge import JudgeStage

    JudgeStage(JudgeConfig(), c, None, "m", 0)  # a pipeline with a judge accepts it


@pytest.mark.parametrize("bad", [
    {"constitutions": [{"critic": "", "revision": "r"}]},
    {"constitutions": [{"critic": 3, "revision": "r"}]},
    {"constitutions": [{"critic": "c", "revision": "r"}], "system_chat": [[{"role": "user", "content": "x"}] * 5]},
    {"constitutions": [{"critic": "c", "revision": "r"}], "system_chat": [[{"role": "user", "content": "x"}] * 6]},
    {"constitutions": [{"critic": "c", "revision": "r"}], "system_chat": [[{"role": "user"}] * 6]},
    {"constitutions": [{"critic": "c", "revision": "r"}], "system_chat": "hello"},
])
def test_import_rejects_bad_input_with_a_located_error(tmp_path: Path, bad: dict) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(InputError) as e:
        import_llm_swarm(p, "x")
    assert e.value.field
