"""Prompt inputs: JSONL `prompt` or `messages` rows, system prompts, the Human/Assistant layout, Parquet and
Hugging Face datasets with a column mapping, several sources mixed by weight; bad rows exit 2 naming the
file, the line or row, and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import factory

from factory.config import InputSource
from factory.errors import InputError
from factory.inputs import PromptFile, Prompts
from factory.records import Record, prompt_id

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "prompts" / "examples"


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def test_messages_rows_keep_the_system_prompt_and_earlier_turns(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [
        {"messages": chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Why?")), "k": 1},
        {"messages": chat(("user", "Why?"))},
        {"prompt": "Why?", "system": "Answer as a pirate."},
        {"prompt": "Why?"},
    ])
    recs = [rec for rec, _ in PromptFile(path)]
    first = recs[0]
    assert first.prompt == "Why?" and first.system == "Be brief." and first.metadata == {"k": 1}
    assert [(t.role, t.content) for t in first.history] == [("user", "Hi"), ("assistant", "Hello!")]
    assert first.conversation == chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Why?"))
    # a single-turn messages row is exactly a plain prompt (same id, no dialogue fields); the others differ
    assert recs[1] == recs[3] == Record.new("Why?", "file") and recs[3].id == prompt_id("Why?")
    assert recs[2].system == "Answer as a pirate." and len({r.id for r in recs}) == 3
    assert [dup for _, dup in PromptFile(path)] == [False, False, False, True]


def test_the_human_assistant_layout_is_parsed_into_turns() -> None:
    recs = [rec for rec, _ in PromptFile(EXAMPLES / "hh_dialogues.jsonl", spec=InputSource(
        path="x", text_column="chosen", kind="helpful"))]
    assert len(recs) == 4 and all(r.metadata["kind"] == "helpful" and r.history for r in recs)
    hike = recs[0]
    assert hike.prompt == "It might rain. What else do I need?"
    assert [t.role for t in hike.history] == ["user", "assistant"]
    assert hike.metadata["original_answer"] == "A waterproof jacket and a cover for your backpack."
    mortgage = recs[1]  # a colon inside a turn is text; an empty final "Assistant:" is the reply's cue
    assert mortgage.prompt.startswith("Note: I'm in the UK.") and "original_answer" not in mortgage.metadata
    assert "chosen" not in mortgage.metadata and mortgage.metadata["source_id"] == 1


@pytest.mark.parametrize(("row", "where"), [
    ({"messages": chat(("user", "Hi"), ("assistant", "Hello"))}, "field 'messages': the last turn is the assistant's"),
    ({"messages": chat(("user", "Hi"), ("tool", "x"), ("user", "Ok"))}, "field 'messages[1].role': unknown role 'tool'"),
    ({"messages": chat(("user", "Hi"), ("system", "x"), ("user", "Ok"))}, "field 'messages[1].role': a system turn"),
    ({"messages": chat(("user", ""))}, "field 'messages[0].content': empty"),
    ({"messages": "Hi"}, "field 'messages': must be a non-empty list"),
    ({"messages": chat(("system", "s"), ("user", "Hi")), "system": "t"}, "field 'system': a second system prompt"),
    ({"messages": chat(("user", "Hi")), "prompt": "Hi"}, "field 'prompt': given with 'messages'"),
    ({"prompt": "Hi", "system": 3}, "field 'system': must be a non-empty string"),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path: Path, row: dict, where: str) -> None:
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(InputError) as e:
        PromptFile(path)
    assert str(e.value).startswith(f"{path}:2: {where}")


def test_bad_layout_text_names_the_field(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [{"t": "Hello there\n\nHuman: hi"}, {"t": "no speakers"}])
    spec = InputSource(path=str(path), text_column="t")
    with pytest.raises(InputError, match=r":1: field 't': text before the first 'Human:' turn"):
        PromptFile(path, spec=spec)


def test_parquet_and_datasets_with_a_column_mapping(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = {"question": ["How do I fix a flat tyre?", "Tell me a joke about cats."], "persona": ["Be kind.", None],
            "lang": ["en", "en"]}
    table = tmp_path / "q.parquet"
    pq.write_table(pa.table(rows), table)
    spec = InputSource(path=str(table), prompt_column="question", system_column="persona", kind="helpful")
    recs = [rec for rec, _ in PromptFile(table, spec=spec)]
    assert [r.prompt for r in recs] == rows["question"] and recs[0].system == "Be kind." and recs[1].system is None
    assert recs[1].metadata == {"lang": "en", "kind": "helpful"}

    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_dict({"messages": [chat(("user", "Hi"), ("assistant", "Hey"), ("user", "Bye?"))]}),
                 "test": Dataset.from_dict({"messages": [chat(("user", "Only test"))]})}).save_to_disk(str(saved))
    assert [r.history[0].content for r, _ in PromptFile(saved)] == ["Hi"]  # the train split by default
    assert [r.prompt for r, _ in PromptFile(saved, spec=InputSource(path="x", split="test"))] == ["Only test"]

    folder = tmp_path / "hub"  # a folder load_dataset reads: data files
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"transcript": ["\n\nHuman: Hello\n\nAssistant: Hi!\n\nHuman: Bye"]}),
                   folder / "data" / "train-00000.parquet")
    rec = next(iter(PromptFile(folder, spec=InputSource(path="x", text_column="transcript"))))[0]
    assert rec.prompt == "Bye" and rec.history[1].content == "Hi!"


def test_bad_tables_name_the_file_row_and_field(tmp_path: Path) -> None:
    table = tmp_path / "q.parquet"
    pq.write_table(pa.table({"question": ["Fine?", None]}), table)
    with pytest.raises(InputError, match=r"q.parquet: row 1: field 'query': no such column \(the table has: question"):
        PromptFile(table, spec=InputSource(path="x", prompt_column="query"))
    with pytest.raises(InputError, match=r"q.parquet: row 2: field 'question': missing"):
        PromptFile(table, spec=InputSource(path="x", prompt_column="question"))
    with pytest.raises(InputError, match=r"row 1: field 'prompt': needs a 'prompt' or 'messages' column"):
        PromptFile(table)


@pytest.mark.parametrize(("rows", "flags", "where"), [
    ([{"messages": chat(("user", "Hi"), ("assistant", "Hello"))}], [], "p.jsonl:1: field 'messages'"),
    ([{"messages": chat(("robot", "Hi"))}], [], "p.jsonl:1: field 'messages[0].role': unknown role 'robot'"),
    ([{"prompt": "Hi"}], ["--prompt-column", "question"], "p.jsonl:1: field 'question': missing"),
])
def test_the_cli_exits_2_on_bad_inputs(tmp_path: Path, rows: list[dict], flags: list[str], where: str) -> None:
    r = factory("run", "--prompts", jsonl(tmp_path / "p.jsonl", rows), *flags, "--out", tmp_path / "run")
    assert r.returncode == 2 and where in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_the_cli_names_a_missing_parquet_column(tmp_path: Path) -> None:
    table = tmp_path / "q.parquet"
    pq.write_table(pa.table({"question": ["Fine?"]}), table)
    r = factory("run", "--prompts", table, "--prompt-column", "query", "--out", tmp_path / "run")
    assert r.returncode == 2 and "q.parquet: row 1: field 'query': no such column" in r.stderr


def test_sources_mix_by_weight_and_count_every_row(tmp_path: Path) -> None:
    a = jsonl(tmp_path / "a.jsonl", [{"prompt": f"alpha question {i}"} for i in range(10)])
    b = jsonl(tmp_path / "b.jsonl", [{"prompt": f"beta question {i}"} for i in range(3)]
              + [{"prompt": "alpha question 0"}])  # a duplicate across sources
    sources = [InputSource(path=str(a), kind="red_team", weight=3), InputSource(path=str(b), kind="helpful", weight=1)]
    mix = Prompts(sources, Path)
    assert mix.quotas == [9, 3] and mix.count == 14 and mix.duplicates == 1 and mix.records == 12
    out = list(mix)
    taken = [rec for rec, why in out if why is None]
    assert [r.metadata["kind"] for r in taken[:4]] == ["red_team", "red_team", "red_team", "helpful"]
    assert sorted(why for _, why in out if why) == ["duplicate_prompt", "not_in_mix"]
    assert {r.metadata["input"] for r in taken} == {"a.jsonl", "b.jsonl"}
    limited = Prompts(sources, Path, limit=4)  # --limit keeps the ratio
    assert limited.quotas == [3, 1] and limited.records == 4
    plain = Prompts([InputSource(path=str(a)), InputSource(path=str(b))], Path, limit=12)
    assert plain.count == 12 and plain.records == 12 and plain.quotas is None
    with pytest.raises(Exception, match="give every prompt source a weight"):
        Prompts([sources[0], InputSource(path=str(b))], Path)


def test_config_inputs_resolve_against_the_config_and_cli_flags_pair_with_each_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from test_cli import api_config

    from factory.commands.sources import sources
    from factory.config import load_config
    from factory.engine.pipeline import Overrides, Pipeline

    jsonl(tmp_path / "a.jsonl", [{"prompt": f"first source question {i}"} for i in range(6)])
    jsonl(tmp_path / "b.jsonl", [{"q": f"second source question {i}"} for i in range(6)])
    config = api_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["inputs"] = [{"path": "a.jsonl", "kind": "red_team", "weight": 2},
                     {"path": "b.jsonl", "prompt_column": "q", "kind": "helpful", "weight": 1}]
    config.write_text(yaml.safe_dump(cfg))
    pipe = Pipeline.prepare(load_config(config), Overrides())
    assert pipe.from_file is not None and pipe.from_file.quotas == [6, 3] and pipe.from_file.records == 9
    manifest = pipe.manifest(tmp_path / "run", batch=False)
    assert manifest["mix"][str(tmp_path / "b.jsonl")] == {"kind": "helpful", "weight": 1.0, "rows": 6, "taken": 3}

    cli = sources((tmp_path / "a.jsonl", tmp_path / "b.jsonl"), {"prompt_column": None, "split": None},
                  {"kind": ("red_team", "helpful"), "weight": (1.0, 1.0)})
    assert [(s.kind, s.weight) for s in cli] == [("red_team", 1.0), ("helpful", 1.0)]
    with pytest.raises(Exception, match="--kind is given 2 times for 3 --prompts"):
        sources((tmp_path / "a.jsonl",) * 3, {}, {"kind": ("a", "b"), "weight": ()})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    r = factory("run", config, "--model", "openai:m", "--prompts", tmp_path / "a.jsonl", "--prompts",
                tmp_path / "b.jsonl", "--dry-run")
    assert r.returncode == 2 and "field 'prompt': missing" in r.stderr  # --prompts replaces the config's sources
    r = factory("run", "--prompts", tmp_path / "a.jsonl", "--weight", "1", "--prompts", tmp_path / "b.jsonl",
                "--prompt-column", "q", "--dry-run")
    assert r.returncode == 2 and "a.jsonl:1: field 'q': missing" in r.stderr


def test_readers_of_single_prompts_refuse_a_conversation(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "One?"}, {"messages": chat(("user", "Hi"), ("assistant", "Hey"),
                                                                              ("user", "Two?"))}])
    with pytest.raises(InputError, match=r"p.jsonl:2: field 'messages': a conversation"):
        list(PromptFile(path).lines())
