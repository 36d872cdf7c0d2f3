"""Question-generation modes through the real CLI and the test server: red_team (harm areas, red-team seeds
only), helpful (helpful seeds only), topics (no seeds), evol (rewrites of a seed); every record keeps its
mode as its `kind`; near-duplicate prompts are dropped with MinHash and counted; the report shows both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import last_user, run_lineage, server_script
from test_cli import api_config, factory

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "prompts" / "seeds"


def seed_prompts(name: str) -> set[str]:
    return {json.loads(line)["prompt"] for line in (SEEDS / f"{name}.jsonl").read_text().splitlines()}


def mode_of(user: str) -> str | None:
    if "Harm area:" in user:
        return "red_team"
    if "Topic or persona:" in user:
        return "topics"
    if user.startswith("Message:"):
        return "evol"
    if "can and should help with" in user:
        return "helpful"
    return None


def generator(messages: list[dict], body: dict):
    """Three prompts per generation call; the third is the first plus one word: a near-duplicate that
    no exact check catches."""
    user = last_user(messages)
    mode, case = mode_of(user), body.get("seed")
    if mode is None:
        return server_script(messages, body)
    subject = {"red_team": lambda: re.search(r"Harm area: (.+)", user).group(1),
               "topics": lambda: re.search(r"Topic or persona: (.+)", user).group(1),
               "evol": lambda: "the message " + user.split("\n", 1)[0][9:40],
               "helpful": lambda: "planning a garden"}[mode]()
    first = f"How would you explain {subject} to a curious friend in case {case} of my story?"
    return "\n".join([first, f"Can you write a short plan about {subject} for case {case} please?", first[:-1] + " today?"])


@pytest.fixture
def gen_api(api):
    """The suite's test server, answering generation calls with `generator`."""
    api.responder = generator
    return api


def config_with(tmp_path: Path, questions: dict) -> Path:
    config = api_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    # the test server writes every prompt asked for: size waves for a full yield, not the embedded model's
    cfg["stages"]["questions"] |= {"include_seeds": False, "generate": 0, "questions_per_call": 3,
                                   "examples_per_call": 3, "expected_keep": 1.0, **questions}
    cfg["stages"]["critique_revise"] = None
    config.write_text(yaml.safe_dump(cfg))
    return config


def generated(out: Path) -> list[dict]:
    return run_lineage(out)


def generation_calls(srv, mode: str) -> list[str]:
    return [last_user(q["body"]["messages"]) for q in srv.requests
            if q["path"].endswith("/chat/completions") and mode_of(last_user(q["body"]["messages"])) == mode]


def test_red_team_mode_draws_only_red_team_seeds_per_harm_area(gen_api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = config_with(tmp_path, {"modes": {"red_team": {"generate": 4, "harm_areas": ["privacy", "fraud"]}}})
    r = factory("run", config, "--model", "openai:m", "--out", out)
    assert r.returncode == 0, r.stderr
    recs = generated(out)
    assert len(recs) == 4 and {r["metadata"]["kind"] for r in recs} == {"red_team"}
    assert {r["metadata"]["harm_area"] for r in recs} == {"privacy", "fraud"}
    red = seed_prompts("red_team")
    for user in generation_calls(gen_api, "red_team"):
        shown = [line[2:] for line in user.splitlines() if line.startswith("- ")]
        assert len(shown) == 3 and set(shown) <= red
    stats = json.loads((out / "stats.json").read_text())["stages"]["questions"]
    assert stats["dropped"]["near_duplicate_generated"] == 2 and stats["counters"]["kind:red_team"] == 4
    html = (out / "report.html").read_text()
    assert "near_duplicate_generated: 2" in html and "red_team: 4" in html
    assert "questions_red_team" in json.loads((out / "manifest.json").read_text())["templates"]


def test_helpful_mode_draws_only_helpful_seeds(gen_api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = factory("run", config_with(tmp_path, {"modes": {"helpful": {"generate": 2}}}), "--model", "openai:m",
                "--out", out)
    assert r.returncode == 0, r.stderr
    recs = generated(out)
    assert len(recs) == 2 and {r["metadata"]["kind"] for r in recs} == {"helpful"}
    helpful = seed_prompts("helpful")
    calls = generation_calls(gen_api, "helpful")
    assert calls and all({line[2:] for line in u.splitlines() if line.startswith("- ")} <= helpful for u in calls)
    assert all(set(r["metadata"]["generated_from"]) for r in recs)


def test_topics_mode_needs_no_seeds(gen_api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = config_with(tmp_path, {"seeds": [], "modes": {"topics": {
        "generate": 4, "topics_file": str(ROOT / "prompts" / "examples" / "topics.txt")}}})
    r = factory("run", config, "--model", "openai:m", "--out", out)
    assert r.returncode == 0, r.stderr
    recs = generated(out)
    assert len(recs) == 4 and {r["metadata"]["kind"] for r in recs} == {"topics"}
    assert {r["metadata"]["topic"] for r in recs} == {"home gardening on a small balcony", "a nurse working night shifts"}
    assert not any("#" in u for u in generation_calls(gen_api, "topics"))  # the file's comment is no topic


def test_evol_mode_rewrites_seed_prompts(gen_api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = config_with(tmp_path, {"modes": {"evol": {"generate": 3, "how": ["harder", "constraints"],
                                                       "from_kinds": ["helpful"]}}})
    r = factory("run", config, "--model", "openai:m", "--out", out)
    assert r.returncode == 0, r.stderr
    recs = generated(out)
    assert len(recs) == 3 and {r["metadata"]["kind"] for r in recs} == {"evol"}
    seeds = {json.loads(line)["prompt"]: json.loads(line) for line in (SEEDS / "helpful.jsonl").read_text().splitlines()}
    calls = generation_calls(gen_api, "evol")
    assert all(u.split("\n", 1)[0][len("Message: "):] in seeds for u in calls)
    assert any("more reasoning or more steps" in u for u in calls) and any("adding a constraint" in u for u in calls)
    assert all(r["metadata"]["evolved_from"] and r["metadata"]["how"] in ("harder", "constraints") for r in recs)


def test_a_mode_without_its_seeds_exits_2(tmp_path: Path) -> None:
    config = config_with(tmp_path, {"seeds": [str(SEEDS / "helpful.jsonl")], "modes": {"red_team": {"generate": 2}}})
    r = factory("run", config, "--model", "openai:m", "--out", tmp_path / "run")
    assert r.returncode == 2 and "generation mode red_team needs seed prompts of kind red_team" in r.stderr
    config = config_with(tmp_path, {"modes": {"topics": {"generate": 2}}})
    r = factory("run", config, "--model", "openai:m", "--out", tmp_path / "run")
    assert r.returncode == 2 and "needs `topics` or a `topics_file`" in r.stderr


def test_modes_and_few_shot_share_the_limit_and_estimate(tmp_path: Path) -> None:
    config = config_with(tmp_path, {"generate": 3, "modes": {"helpful": {"generate": 3}, "topics": {
        "generate": 3, "topics": ["chess openings"]}}})
    r = factory("run", config, "--model", "openai:m", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert re.search(r"questions\s+│\s+openai:m\s+│\s+9\s", r.stdout)  # 3 modes: 1 call each needed, at most 3x
