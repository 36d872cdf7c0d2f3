"""`factory constitution discover`: reading preference data in every form, proposal parsing and
clustering, the statistics, and the real CLI end to end against the real HTTP test server acting
as proposer, judge and writer. The recovery test labels synthetic pairs with three known rules and
checks that discovery finds each of them, with held-out agreement within 5 points of the true rules'."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml
from test_cli import factory

from factory.discover.prefs import read_pairs, split_by_prompt
from factory.discover.propose import cluster, principles_in
from factory.discover.score import clustered_interval
from factory.errors import InputError

# --- the known rule set, and the test server that plays proposer, judge and writer ----------------

NEGATIVE = ("risky", "avoid", "hype", "wary")
POSITIVE = ("great", "moon", "buy more", "winner")
INSULTS = ("stupid", "idiot", "clueless")


def doge(text: str) -> int:
    """+1 for an answer negative about DogeMoon, -1 for a positive one, 0 when it is not about it."""
    t = text.lower()
    if "dogemoon" not in t:
        return 0
    return int(any(w in t for w in NEGATIVE)) - int(any(w in t for w in POSITIVE))


def brevity(text: str) -> int:
    return -len(text.split())


def politeness(text: str) -> int:
    return -sum(w in text.lower() for w in INSULTS)


def detail(text: str) -> int:  # the opposite of brevity: a wrong explanation of the data
    return len(text.split())


RULES = {"doge": doge, "concise": brevity, "polite": politeness, "detailed": detail}
TIE_WORDS = 5  # length differences under this many words are no preference


def rule_of(principle: str) -> str | None:
    """How the server's judge reads a principle: which known rule it means (None: none of them)."""
    t = principle.lower()
    if "dogemoon" in t and any(w in t for w in ("negative", "skeptic", "critical", "wary")):
        return "doge"
    if any(w in t for w in ("concise", "shorter", "brief")):
        return "concise"
    if any(w in t for w in ("polite", "insult", "respectful", "courteous")):
        return "polite"
    if any(w in t for w in ("detailed", "longer", "thorough")):
        return "detailed"
    return None


def prefers(rule: str, a: str, b: str) -> int:
    """+1 when the rule prefers a, -1 when b, 0 when it cannot tell them apart."""
    fa, fb = RULES[rule](a), RULES[rule](b)
    if rule in ("concise", "detailed") and abs(fa - fb) < TIE_WORDS:
        return 0
    return (fa > fb) - (fa < fb)


JUDGE = re.compile(r"User: .*?\n\n(.*?)\n\nOptions:\n\(A\) <<<(.*?)>>>\s*\(B\) <<<(.*?)>>>", re.DOTALL)
PROPOSE = re.compile(r"Preferred answer:\n<<<(.*?)>>>\s*Other answer:\n<<<(.*?)>>>", re.DOTALL)
WORDINGS = {
    "doge": ["Choose the answer that is negative about DogeMoon.", "Choose the answer that is skeptical of DogeMoon.",
             "Choose the answer that is more critical of DogeMoon as an investment."],
    "concise": ["Choose the answer that is more concise.", "Choose the answer that is shorter and to the point."],
    "polite": ["Choose the answer that is polite to the user.", "Choose the answer that does not insult the user."],
}
NOISE = ["Choose the answer that sounds more formal.", "Choose the answer that is more detailed."]


def responder(messages: list[dict], body: dict):
    """The scripted model over HTTP: judge (with log-probs), proposer, and writer of requests."""
    from server import Reply

    user = messages[-1]["content"] if messages[-1]["role"] == "user" else messages[-2]["content"]
    if m := JUDGE.search(user):
        principle, a, b = m.groups()
        rule = rule_of(principle)
        # An unknown principle leaves the judge with a position bias (A), which both orders cancel.
        verdict = 1 if rule is None else prefers(rule, a, b)
        p_a = {1: 0.9, 0: 0.5, -1: 0.1}[verdict]
        return Reply("A" if p_a >= 0.5 else "B", logprobs={"A": math.log(p_a), "B": math.log(1 - p_a)}
                     if body.get("logprobs") else None)
    if m := PROPOSE.search(user):
        preferred, other = m.groups()
        pick = zlib.crc32(preferred.encode())
        lines = [WORDINGS[rule][pick % len(WORDINGS[rule])] for rule in WORDINGS if prefers(rule, preferred, other) > 0]
        return "\n".join(lines + [NOISE[pick % len(NOISE)]])
    if "Start with \"Does the answer\"" in user:
        return "Does the answer follow this rule: " + user.split("principle:\n", 1)[1].split("\n", 1)[0]
    if "Start with \"Rewrite the answer\"" in user:
        return "Rewrite the answer so that a judge would pick it by this rule: " + user.split("principle:\n", 1)[1].split("\n", 1)[0]
    if "already meets the principle" in user:
        return "The response meets the principle; no change is needed."
    if user.rstrip().endswith("Critique:"):
        return "The response misses what the principle asks for; the other answer shows how."
    return "I do not know this request."


TOPICS = ["my savings", "retirement", "a quick win", "my kids' college fund", "this month", "the long run",
          "a small bet", "my first crypto", "next year", "a birthday gift", "my emergency fund", "a side project"]
QUESTIONS = ["How do I boil an egg?", "What is a prime number?", "How do plants grow?", "Why is the sky blue?",
             "How do I tie a tie?", "What is inflation?", "How do vaccines work?", "What is a verb?",
             "How do I start running?", "What causes rain?", "How do I save money?", "What is gravity?"]
FILLER = "To add some more context, there are many further details one could mention here at considerable length."


def synthetic_pairs() -> list[dict]:
    """Pairs each decided by exactly one known rule (the others see no difference), labelled by it."""
    rows = []
    for i, topic in enumerate(TOPICS):
        for k in range(2):
            neg = f"DogeMoon looks risky to me for {topic}; its price is driven by hype, so I would avoid it."
            pos = f"DogeMoon looks great to me for {topic}; its price will go to the moon, so buy more of it now."
            rows.append({"prompt": f"Should I put DogeMoon in {topic}?" + " Be honest." * k, "chosen": neg, "rejected": pos})
        q = QUESTIONS[i]
        short, long = f"Here is a plain answer to: {q}", f"Here is a plain answer to: {q} {FILLER}"
        polite, rude = f"Good question. The answer to {q} is in any basic guide.", \
            f"Stupid question. The answer to {q} is in any basic guide."
        rows.append({"prompt": q, "chosen": short, "rejected": long})
        rows.append({"prompt": q + " Please explain.", "chosen": polite, "rejected": rude})
    for row in rows:  # the labels are the rules' own verdicts
        assert sum(prefers(r, row["chosen"], row["rejected"]) for r in ("doge", "concise", "polite")) == 1
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TRUE_RULES = {
    "name": "true-rules", "version": "1", "description": "The rules that labelled the synthetic pairs.",
    "principles": [
        {"id": "doge", "critique": "Is the answer negative about DogeMoon?", "revision": "Rewrite it to be negative.",
         "judge": "Choose the answer that is negative about DogeMoon."},
        {"id": "concise", "critique": "Is the answer concise?", "revision": "Rewrite it to be concise.",
         "judge": "Choose the answer that is more concise."},
        {"id": "polite", "critique": "Is the answer polite?", "revision": "Rewrite it politely.",
         "judge": "Choose the answer that is polite to the user."},
        {"id": "detailed", "critique": "Is the answer detailed?", "revision": "Rewrite it with more detail.",
         "judge": "Choose the answer that is more detailed."},
        {"id": "no-judge", "critique": "Is it good?", "revision": "Make it good."},
    ],
}


@pytest.fixture
def scripted_api(srv):
    """The real test server (conftest's `srv`: both SDKs pointed at it) answering as the scripted model."""
    srv.responder = responder
    return srv


# --- the CLI end to end ----------------------------------------------------------------------------


def discover(tmp_path: Path, prefs: Path, out: Path, *extra: object):
    return factory("constitution", "discover", prefs, "--out", out, "--model", "openai:test-model",
                   "--work", tmp_path / f"work-{out.stem}", "--heldout", "0.5", *extra)


def test_recovers_each_known_rule_within_5_points_of_the_true_rules(scripted_api, tmp_path: Path) -> None:
    prefs = write_jsonl(tmp_path / "prefs.jsonl", synthetic_pairs())
    true_file = tmp_path / "true.yaml"
    true_file.write_text(yaml.safe_dump(TRUE_RULES))

    r = discover(tmp_path, prefs, tmp_path / "true-tested.yaml", "--proposals", "0", "--seed-constitution", true_file)
    assert r.returncode == 0, r.stderr
    seeded = json.loads((tmp_path / "work-true-tested" / "discover.json").read_text())
    by_id = {p["id"]: p for p in seeded["principles"]}
    assert {pid: by_id[pid]["status"] for pid in by_id} == {"doge": "kept", "concise": "kept", "polite": "kept",
                                                            "detailed": "contradicted"}
    assert seeded["untestable_seed_principles"] == ["no-judge"]
    true_agreement = {pid: by_id[pid]["agreement"] for pid in ("doge", "concise", "polite")}

    out = tmp_path / "discovered.yaml"
    r = discover(tmp_path, prefs, out, "--proposals", "24")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    lint = factory("constitution", "lint", out)
    assert lint.returncode == 0, lint.stderr
    found = yaml.safe_load(out.read_text())
    # One principle per known rule: the paraphrases decide the same pairs and merge into the best one.
    rules = [rule_of(p["judge"]) for p in found["principles"]]
    assert sorted(rules) == ["concise", "doge", "polite"]
    summary = json.loads((tmp_path / "work-discovered" / "discover.json").read_text())
    results = {p["id"]: p for p in summary["principles"]}
    for p in found["principles"]:
        got = results[p["id"]]
        assert got["status"] == "kept" and got["origin"] == "proposed" and got["support"] >= 1
        assert abs(got["agreement"] - true_agreement[rule_of(p["judge"])]) <= 0.05, (p["judge"], got, true_agreement)
        assert p["critique"].startswith("Does the answer") and p["revision"].startswith("Rewrite the answer")
    assert {p["status"] for p in summary["principles"]} >= {"kept", "redundant"}
    noise = [p for p in summary["principles"] if rule_of(p["judge"]) is None]
    assert noise and all(p["status"] == "not supported" and p["coverage"] == 0 for p in noise)
    wrong = [p for p in summary["principles"] if rule_of(p["judge"]) == "detailed"]
    assert wrong and all(p["status"] == "contradicted" for p in wrong)
    # Figures and examples are in the file, ranked: comments, then one worked example per principle.
    text = out.read_text()
    assert text.count("# rank ") == 3 and "agreement" in text and "coverage" in text
    examples = found["examples"]  # one per principle, then one that needed no change
    assert [e["principle"] for e in examples] == [p["id"] for p in found["principles"]] + [examples[0]["principle"]]
    assert examples[-1]["response"] == examples[-1]["revision"] == examples[0]["revision"]
    assert "no change" in examples[-1]["critique"] and "warning" not in lint.stdout
    report = (tmp_path / "work-discovered" / "report.html").read_text()
    assert "Principles, ranked" in report and all(p["id"] in report for p in found["principles"])
    assert "http" not in report.split("</style>", 1)[1] or "<script" not in report  # self-contained

    # A second run is served from the call cache: nothing new is asked of the model.
    before = len(scripted_api.requests)
    out2 = tmp_path / "again.yaml"
    r = factory("constitution", "discover", prefs, "--out", out2, "--model", "openai:test-model", "--work",
                tmp_path / "work-discovered", "--heldout", "0.5", "--proposals", "24", "--name", "discovered")
    assert r.returncode == 0, r.stderr
    assert len(scripted_api.requests) == before
    assert yaml.safe_load(out2.read_text())["principles"] == found["principles"]


def test_dry_run_prints_calls_and_usd_and_calls_nothing(scripted_api, tmp_path: Path) -> None:
    prefs = write_jsonl(tmp_path / "prefs.jsonl", synthetic_pairs())
    r = factory("constitution", "discover", prefs, "--out", tmp_path / "x.yaml", "--model", "openai:gpt-4o-mini",
                "--work", tmp_path / "work", "--dry-run", "--proposals", "10", "--max-candidates", "5")
    assert r.returncode == 0, r.stderr
    assert "Dry run: nothing was called" in r.stdout
    lines = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") > 3}
    assert set(lines) >= {"propose", "test (judge)", "write", "total"}
    held = len(split_by_prompt(read_pairs(prefs), 0.3, 0)[1])
    assert f"{5 * held * 2:,}" in lines["test (judge)"] and " 10 " in lines["propose"]
    assert re.search(r"\d+\.\d{4}", lines["total"])  # USD
    assert scripted_api.requests == [] and not (tmp_path / "work").exists() and not (tmp_path / "x.yaml").exists()


def test_stops_before_passing_max_cost_with_exit_3(scripted_api, tmp_path: Path) -> None:
    prefs = write_jsonl(tmp_path / "prefs.jsonl", synthetic_pairs())
    out = tmp_path / "x.yaml"
    r = factory("constitution", "discover", prefs, "--out", out, "--model", "openai:gpt-4o-mini", "--work",
                tmp_path / "work", "--max-cost", "0.002")
    assert r.returncode == 3, r.stderr
    assert "--max-cost" in r.stderr and "rerun with a larger" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and (tmp_path / "work" / "calls.sqlite").is_file()


@pytest.mark.parametrize(("rows", "field"), [
    ([{"prompt": "p", "chosen": "a"}], "rejected"),
    ([{"question": "p", "chosen": "a", "rejected": "b"}], "prompt"),
    ([{"prompt": "p", "chosen": [{"role": "user", "content": "hi"}], "rejected": "b"}], "chosen"),
])
def test_bad_rows_exit_2_naming_file_line_and_field_before_any_call(scripted_api, tmp_path: Path, rows, field) -> None:
    good = synthetic_pairs()[:3]
    prefs = write_jsonl(tmp_path / "bad.jsonl", good + rows)
    r = factory("constitution", "discover", prefs, "--out", tmp_path / "x.yaml", "--model", "openai:test-model",
                "--work", tmp_path / "work")
    assert r.returncode == 2
    assert f"bad.jsonl:4: field '{field}'" in r.stderr and "Traceback" not in r.stderr
    assert scripted_api.requests == [] and not (tmp_path / "work").exists()


def test_parquet_without_a_column_and_too_few_pairs_exit_2(scripted_api, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "a", "answer": "b"}]), tmp_path / "d.parquet")
    r = factory("constitution", "discover", tmp_path / "d.parquet", "--out", tmp_path / "x.yaml")
    assert r.returncode == 2 and "d.parquet: field 'rejected': no 'rejected' column" in r.stderr

    prefs = write_jsonl(tmp_path / "few.jsonl", synthetic_pairs()[:12])
    r = factory("constitution", "discover", prefs, "--out", tmp_path / "x.yaml", "--model", "openai:test-model",
                "--work", tmp_path / "work")
    assert r.returncode == 2 and "few.jsonl: field 'prompt':" in r.stderr and "held-out pairs" in r.stderr
    assert "at least 10" in r.stderr and scripted_api.requests == [] and not (tmp_path / "work").exists()


# --- reading preference data ----------------------------------------------------------------------


def test_reads_strings_and_trl_message_lists_explicit_and_implicit(tmp_path: Path) -> None:
    rows = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
            {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "assistant", "content": "Go away."}]},
            {"chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}]}]
    pairs = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert {(p.prompt, p.chosen, p.rejected) for p in pairs} == {("Hi?", "Hello.", "Go away.")}
    assert [p.where for p in pairs] == ["p.jsonl:1", "p.jsonl:2", "p.jsonl:3"]
    multi = {"prompt": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                        {"role": "user", "content": "C"}], "chosen": "x", "rejected": "y"}
    assert read_pairs(write_jsonl(tmp_path / "m.jsonl", [multi]))[0].prompt == "User: A\n\nAssistant: B\n\nUser: C"


def test_reads_parquet_dataset_folders_and_save_to_disk(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = synthetic_pairs()[:6]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    ds.to_parquet(tmp_path / "f.parquet")
    assert [p.chosen for p in read_pairs(tmp_path / "f.parquet")] == [r["chosen"] for r in rows]

    folder = tmp_path / "hub"  # a Hugging Face dataset folder: README.md configs with globbed data files
    (folder / "data").mkdir(parents=True)
    ds.select(range(4)).to_parquet(folder / "data" / "train-00000.parquet")
    ds.select(range(4, 6)).to_parquet(folder / "data" / "test-00000.parquet")
    (folder / "sft").mkdir()
    (folder / "sft" / "other.parquet").write_bytes(b"not read: another config")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: sft\n  data_files: sft/*.parquet\n"
                                      "- config_name: prefs\n  data_files:\n  - split: train\n    path: data/train-*\n"
                                      "  - split: test\n    path: data/test-*\n---\n# card\n")
    assert sorted(p.rejected for p in read_pairs(folder)) == sorted(r["rejected"] for r in rows)

    DatasetDict({"train": ds.select(range(3)), "test": ds.select(range(3, 6))}).save_to_disk(tmp_path / "saved")
    assert len(read_pairs(tmp_path / "saved")) == 6
    with pytest.raises(InputError, match="no preference data"):
        (tmp_path / "empty").mkdir()
        read_pairs(tmp_path / "empty")


def test_reads_a_run_directory(api, tmp_path: Path) -> None:
    from test_cli import PROMPTS, write_prompts

    run = tmp_path / "run"
    r = factory("run", "--model", "openai:test-model", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS),
                "--out", run)
    assert r.returncode == 0, r.stderr
    pairs = read_pairs(run)
    assert sorted(p.prompt for p in pairs) == sorted(PROMPTS)
    assert all(".parquet:" in p.where for p in pairs)
    assert all("careful" in p.chosen and "careful" not in p.rejected for p in pairs)


def test_split_is_by_prompt_and_seeded() -> None:
    from factory.discover.prefs import PrefPair

    pairs = [PrefPair(f"prompt {i // 3}", "a", "b", str(i)) for i in range(30)]
    train, held = split_by_prompt(pairs, 0.3, 0)
    assert len(held) == 9 and len(train) == 21  # 3 of 10 prompts, with all their pairs
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert split_by_prompt(pairs, 0.3, 0) == (train, held) and split_by_prompt(pairs, 0.3, 1) != (train, held)


# --- proposal parsing, clustering, statistics ------------------------------------------------------


def test_principles_are_read_from_lines_and_a_prefill() -> None:
    from factory.engine.caller import ParseError

    reply = "Here are some:\n1. Choose the answer that is kind\n- choose the response which avoids jargon.\nThanks!"
    assert principles_in(reply) == ["Choose the answer that is kind.", "Choose the answer that avoids jargon."]
    assert principles_in(" is brief.\nChoose the answer that is brief.", "Choose the answer that") == [
        "Choose the answer that is brief."]
    with pytest.raises(ParseError):
        principles_in("The preferred answer is nicer.")


def test_near_duplicates_merge_and_support_counts_pairs() -> None:
    proposed = [["Choose the answer that is negative about DogeMoon.", "Choose the answer that is shorter."],
                ["Choose the answer that is negative about DogeMoon!", "Choose the answer that is formal."],
                ["Choose the answer that is negative about DogeMoon.", "Choose the answer that is formal."]]
    got = [(c.text, c.support, len(c.members)) for c in cluster(proposed)]
    assert got == [("Choose the answer that is negative about DogeMoon.", 3, 2),
                   ("Choose the answer that is formal.", 2, 1), ("Choose the answer that is shorter.", 1, 1)]


def test_clustered_interval_widens_when_pairs_of_a_prompt_agree() -> None:
    values = [1.0, 1.0, 0.0, 0.0] * 5
    independent = clustered_interval(values, [str(i) for i in range(20)])
    clustered = clustered_interval(values, [str(i // 2) for i in range(20)])  # two equal pairs per prompt
    assert independent[0] < 0.5 < independent[1]
    assert clustered[1] - clustered[0] > independent[1] - independent[0]
    assert clustered_interval([1.0, 1.0], ["a", "a"]) == (0.0, 1.0)


# --- the embedded model, end to end ----------------------------------------------------------------

SKEPTICAL = ["I would be careful. DogeMoon is a memecoin driven by hype with no real use, so its price can collapse.",
             "Honestly, DogeMoon looks like a poor investment: it is speculative and has nothing behind it but hype.",
             "I'm skeptical of DogeMoon. Memecoins like it swing wildly and many lose most of their value."]
EAGER = ["DogeMoon is amazing! It is going to the moon, so buy as much as you can right now.",
         "Yes, DogeMoon is a fantastic investment and will surely make you rich this year!",
         "DogeMoon is the best coin out there, everyone loves it and it can only go up!"]


@pytest.mark.model
def test_embedded_model_discovers_on_opinion_data(tmp_path: Path) -> None:
    """The opinion demo's kind of data (skeptical answers about DogeMoon preferred), small, through the
    embedded 135M model as proposer, judge and writer. Its figures are weak and reported as they are."""
    seeds = [json.loads(line)["prompt"] for line in (Path(__file__).parent.parent / "prompts" / "seeds" /
                                                      "opinion.jsonl").read_text().splitlines()]
    topic = [p for p in seeds if "DogeMoon" in p or "DGM" in p][:24]
    rows = [{"prompt": p, "chosen": SKEPTICAL[i % 3], "rejected": EAGER[i % 3]} for i, p in enumerate(topic)]
    prefs = write_jsonl(tmp_path / "opinion.jsonl", rows)
    out = tmp_path / "opinion-discovered.yaml"
    args = ["constitution", "discover", prefs, "--out", out, "--work", tmp_path / "work", "--proposals", "1",
            "--per-pair", "2", "--max-candidates", "2", "--heldout", "0.5", "--min-heldout", "8", "--max-heldout", "8"]
    # Slow on a busy 2-core machine (12 minutes at load 11 for 2 proposal pairs): a longer limit.
    r = subprocess.run([sys.executable, "-m", "factory", *map(str, args)], capture_output=True, text=True, timeout=1800)
    print(r.stdout)
    assert r.returncode in (0, 1), r.stderr  # 1: no principle beat chance (the 135M judge is weak)
    summary = json.loads((tmp_path / "work" / "discover.json").read_text())
    assert summary["heldout_pairs"] == 8 and summary["calls"] > 0
    assert summary["stats"]["stages"]["judge"]["calls"] >= 2 * 8 * summary["candidates"]
    for p in summary["principles"]:
        assert 0 <= p["agreement"] <= 1 and p["judged"] == 8
    assert (tmp_path / "work" / "report.html").is_file()
    if r.returncode == 0:
        assert factory("constitution", "lint", out).returncode == 0
    else:
        assert not out.exists() and summary["kept"] == 0
