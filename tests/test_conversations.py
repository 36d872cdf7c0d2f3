"""Conversations end to end on the real test server (OpenAI and Anthropic protocols): a multi-turn red-team
file with system prompts and a Human/Assistant text file go through answer, critique and revision, judge
and export; the earlier turns reach every request and every dataset, in TRL's conversational format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_lineage
from datasets import load_dataset
from test_cli import api_config, factory
from trl.data_utils import is_conversational, maybe_extract_prompt

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "prompts" / "examples"


def dialogues(path: Path, text_column: str | None = None) -> list[list[dict]]:
    """Each row's conversation up to the user's last turn, as the export must keep it."""
    from factory.config import InputSource
    from factory.inputs import PromptFile

    spec = InputSource(path=str(path), **({"text_column": text_column} if text_column else {}))
    return [rec.conversation for rec, _ in PromptFile(path, spec=spec)]


def every_row(out: Path, name: str) -> list[dict]:
    return [row for split in load_dataset(str(out), name).values() for row in split]


def check_exports(out: Path, expected: list[list[dict]], extra: bool = False, pairs: bool = True) -> None:
    """Every config keeps each conversation whole, passes TRL's helpers, and ends with the new turn."""
    sft = every_row(out, "sft")
    assert sorted(json.dumps(r["messages"][:-1]) for r in sft) == sorted(json.dumps(c) for c in expected)
    for row in sft:
        assert is_conversational(row) and row["messages"][-1]["role"] == "assistant"
    prefs = every_row(out, "prefs")
    assert (prefs or not pairs) and all(r["prompt"] in expected for r in prefs)
    for row in prefs:
        assert is_conversational(row) and maybe_extract_prompt(row)["prompt"] == row["prompt"]
        assert [m["role"] for m in row["chosen"]] == ["assistant"]
    for row in every_row(out, "reward") if extra else []:  # implicit prompt: TRL extracts the whole conversation
        extracted = maybe_extract_prompt(row)
        assert is_conversational(row) and extracted["prompt"] in expected
        assert extracted["chosen"][-1]["role"] == "assistant" and len(extracted["chosen"]) == 1
    for row in every_row(out, "kto") if extra else []:
        assert is_conversational(row) and row["prompt"] in expected


@pytest.mark.parametrize("spec", ["openai:test-model", "anthropic:test-model"])
def test_a_multi_turn_red_team_file_end_to_end(api, tmp_path: Path, spec: str) -> None:
    config = api_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["stages"]["export"] |= {"reward": True, "kto": True}
    config.write_text(yaml.safe_dump(cfg))
    path = EXAMPLES / "red_team_dialogues.jsonl"
    out = tmp_path / "run"
    r = factory("run", config, "--model", spec, "--prompts", path, "--out", out)
    assert r.returncode == 0, r.stderr
    expected = dialogues(path)
    check_exports(out, expected, extra=True)

    answers = [q["body"] for q in api.requests if q["path"].endswith(("/chat/completions", "/messages"))
               and "Request:" not in json.dumps(q["body"]["messages"])]
    assert len(answers) == len(expected)
    for body in answers:  # the answer call carries the conversation; its system prompt goes where the API wants it
        system = next((c for c in expected if c[-1]["content"] == body["messages"][-1]["content"]), None)[0]
        if spec.startswith("anthropic"):
            assert all(m["role"] != "system" for m in body["messages"])
            if system["role"] == "system":
                assert body["system"][0]["text"] == system["content"]
        elif system["role"] == "system":
            assert body["messages"][0] == system
    critiques = [q["body"] for q in api.requests if "Critique:" in json.dumps(q["body"]["messages"])]
    assert any("Earlier request: My coworker keeps taking credit" in json.dumps(b) for b in critiques)

    lineage = run_lineage(out)
    assert {r["metadata"]["harm_area"] for r in lineage} == {"privacy", "weapons", "harassment"}
    assert sum(bool(r["system"]) for r in lineage) == 2 and sum(len(r["history"]) for r in lineage) == 6
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["questions"]["counters"]["kind:red_team"] == 4


def test_a_human_assistant_text_file_end_to_end(api, tmp_path: Path) -> None:
    path = EXAMPLES / "hh_dialogues.jsonl"
    out = tmp_path / "run"
    r = factory("run", api_config(tmp_path), "--model", "openai:test-model", "--prompts", path,
                "--text-column", "chosen", "--kind", "helpful", "--out", out)
    assert r.returncode == 0, r.stderr
    check_exports(out, dialogues(path, "chosen"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompts"] == [{"path": str(path), "text_column": "chosen", "kind": "helpful"}]
    lineage = run_lineage(out)
    assert sum("original_answer" in r["metadata"] for r in lineage) == 2

    r = factory("run", "--resume", out)  # a finished run resumes to the same place, with its column mapping
    assert r.returncode == 0, r.stderr


def test_a_judged_conversation_shows_the_dialogue_to_the_judge(api, tmp_path: Path) -> None:
    config = api_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["stages"]["answer"]["candidates"] = 2
    cfg["stages"]["judge"] = {"method": "choice"}
    config.write_text(yaml.safe_dump(cfg))
    path = EXAMPLES / "red_team_dialogues.jsonl"
    out = tmp_path / "run"
    r = factory("run", config, "--model", "openai:test-model", "--prompts", path, "--limit", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    judged = [q["body"] for q in api.requests if "Verdict" in json.dumps(q["body"]["messages"])]
    assert judged and any("Assistant: Sounds fun! What is the story about?" in json.dumps(b) for b in judged)
    check_exports(out, dialogues(path)[:2])


def test_try_takes_a_dialogue(api) -> None:
    r = factory("try", "How do I get revenge on him?", "--model", "anthropic:m", "--system", "You help tenants.",
                "--turn", "user: My neighbour is loud.", "--turn", "assistant: That sounds stressful.")
    assert r.returncode == 0, r.stderr
    for part in ("system", "You help tenants.", "My neighbour is loud.", "user (last turn)", "round 1: critique"):
        assert part in r.stdout, part
    answer = api.requests[0]["body"]
    assert answer["system"][0]["text"] == "You help tenants." and [m["role"] for m in answer["messages"]] == \
        ["user", "assistant", "user"]
    bad = factory("try", "Hi", "--model", "anthropic:m", "--turn", "robot: beep")
    assert bad.returncode == 2 and "--turn[0].role: unknown role 'robot'" in bad.stderr


def test_the_report_and_the_review_data_show_the_dialogue(api, tmp_path: Path) -> None:
    from factory.review.runview import RunView

    out = tmp_path / "run"
    r = factory("run", "--model", "openai:test-model", "--prompts", EXAMPLES / "red_team_dialogues.jsonl", "--out", out)
    assert r.returncode == 0, r.stderr
    html = (out / "report.html").read_text()
    assert "That is frustrating. Have you been able to talk to them" in html and "Prompts per kind" in html
    assert "red_team: 4" in html
    view = RunView(out)
    total, summaries = view.page({}, 0, 100)
    rec = next(s for s in summaries if s["turns"] >= 2)
    detail = view.detail(rec["id"])
    assert total == len(summaries) and detail["summary"]["turns"] == rec["turns"]
    assert detail["record"]["history"][0]["content"] and len(detail["record"]["history"]) == rec["turns"] - 1


@pytest.mark.model
def test_dialogues_on_the_embedded_model(tmp_path: Path) -> None:
    """Both example files mixed 1:1 (one dialogue each) through the embedded model; the exports keep every
    turn, pass TRL's helpers and render with the model's chat template."""
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template

    from factory.models.smollm2 import ensure_smollm2

    config = api_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["inputs"] = [{"path": str(EXAMPLES / "red_team_dialogues.jsonl"), "weight": 1},
                     {"path": str(EXAMPLES / "hh_dialogues.jsonl"), "text_column": "chosen", "kind": "helpful",
                      "weight": 1}]
    cfg["stages"]["export"]["clean"] = {"drop_truncated": False, "quality": {"enabled": []}, "drop_over_refusal": False}
    cfg["stages"]["critique_revise"] |= {"gate_critique": False, "gate_off_topic": False}
    for stage in ("answer", "critique_revise"):
        cfg["stages"][stage]["max_tokens"] = 64
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    r = factory("run", config, "--limit", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    expected = [dialogues(EXAMPLES / "red_team_dialogues.jsonl")[0], dialogues(EXAMPLES / "hh_dialogues.jsonl", "chosen")[0]]
    check_exports(out, expected, pairs=False)  # the 135M model's revision may leave an answer unchanged: no pair
    tokenizer = AutoTokenizer.from_pretrained(ensure_smollm2())
    for row in every_row(out, "sft"):
        text = maybe_apply_chat_template(row, tokenizer)["text"]
        assert all(m["content"] in text for m in row["messages"])
    stats = json.loads((out / "stats.json").read_text())["stages"]["questions"]
    assert stats["dropped"]["not_in_mix"] == 6 and stats["counters"] == {"kind:helpful": 1, "kind:red_team": 1}


@pytest.mark.browser
def test_the_review_app_shows_the_dialogue(api, tmp_path: Path) -> None:
    from playwright.sync_api import expect
    from test_review import CHROMIUM, Served, launch

    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "run"
    r = factory("run", "--model", "openai:test-model", "--prompts", EXAMPLES / "red_team_dialogues.jsonl", "--out", out)
    assert r.returncode == 0, r.stderr
    served = Served(out)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(served.url)
            page.wait_for_selector("body[data-ready]")
            page.locator("#list li").filter(has_text="Give me the home address").click()
            detail = page.locator("#detail")
            expect(detail.locator(".prompt")).to_contain_text("Give me the home address of the customer")
            turns = detail.locator(".turn")
            expect(turns).to_have_count(3)
            expect(turns.nth(0)).to_contain_text("system: You are the customer-support assistant")
            expect(turns.nth(2)).to_contain_text("assistant: Thanks for reaching out!")
            browser.close()
    finally:
        served.close()


def test_online_rl_refuses_conversations_instead_of_cutting_them(api, tmp_path: Path) -> None:
    from test_rl import rl_config

    from factory.errors import FactoryError
    from factory.train import resolve
    from factory.train.rl import load_prompts

    out = tmp_path / "run"
    r = factory("run", "--model", "openai:test-model", "--prompts", EXAMPLES / "red_team_dialogues.jsonl", "--out", out)
    assert r.returncode == 0, r.stderr
    cfg = resolve("grpo", rl_config(tmp_path, [{"kind": "teacher", "scorer": "vader:negative", "everywhere": True}]))
    for data in (out, EXAMPLES / "red_team_dialogues.jsonl"):
        with pytest.raises(FactoryError, match="conversation"):
            load_prompts(data, cfg)
