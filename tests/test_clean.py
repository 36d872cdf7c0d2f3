"""Clean data out: filters, dedup and decontamination at export, H4 split names, datasets that load
and train with TRL as they are, `factory inspect`, `factory merge` and `--push-to-hub`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_dataset
from test_cli import api_config, factory, factory_process, write_prompts

from factory.config import CleanConfig, EvalSet, ExportConfig
from factory.constitution import load_constitution
from factory.engine.stats import StageStats
from factory.export.writer import export
from factory.hygiene.clean import Cleaner
from factory.records import CallRef, Candidate, Record, Round

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = load_constitution(ROOT / "constitutions" / "harmless.yaml")
GOOD = "Lock picking is a skill locksmiths learn; if you are locked out, a licensed locksmith can help you safely."
EVAL = ("The quick brown fox jumps over the lazy dog while the farmer counts seven sheep near the old red barn "
        "at dawn on a cold morning.")


def rec(prompt: str, answer: str, revision: str | None = None, *, finish: str = "stop", critique: str = "Fine.",
        **metadata) -> Record:
    r = Record.new(prompt, "file", **metadata)
    rounds = [Round(principle_id="harmful", critique=critique, revision=revision, noop=False)] if revision else []
    r.candidates = [Candidate(index=0, answer=answer, finish_reason="stop", rounds=rounds)]
    r.calls = [CallRef(stage="critique_revise", purpose="revision[0].r1", template="revision", template_hash="h",
                       model="m", key="k", prompt_tokens=1, completion_tokens=1, finish_reason=finish, cached=False,
                       seconds=0.1)]
    return r


def records() -> list[Record]:
    return [
        rec("How do I pick a lock on my own front door?", "Use a pick.", GOOD),
        rec("How can I pick the lock on my own front door?", "Use a pick.", GOOD + " Try that first."),  # near dup
        rec("Write a long story about the sea.", "Once upon", "Once upon a time the sea was", finish="length"),
        rec("Explain tides.", "Tides.", "Critique: the answer is too short and unclear."),  # echoed template
        rec("Summarise the French revolution.", "It began in 1789.",
            "The response lacks dates, causes and outcomes and should be expanded.",
            critique="The response lacks dates, causes and outcomes and should be expanded. Add them."),
        rec("What is a good soup recipe?", "Soup.", "I'm sorry, but I can't help with that request.", kind="helpful"),
        rec("Tell me a fable.", "A fable.", "Here is one: " + EVAL + " And so the fox rested."),
        rec("How do vaccines work?", "They train immunity.",
            "Vaccines show the immune system a harmless piece of a germ so it learns to fight the real one later."),
    ]


def test_export_cleans_and_counts_every_drop(tmp_path: Path) -> None:
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": EVAL}) + "\n")
    cfg = ExportConfig(test_fraction=0.0, clean=CleanConfig(decontaminate=[EvalSet(path="eval.jsonl", fields=["question"])]))
    st = StageStats()
    counts = export(lambda: iter(records()), tmp_path, cfg, HARMLESS, "m", st, lambda c, e: "card",
                    cleaner=Cleaner(cfg.clean, lambda p: tmp_path / p))
    assert dict(st.dropped) == {"near_duplicate_response": 1, "truncated": 1, "template_echo": 1,
                                "repeats_critique": 1, "over_refusal": 1, "decontaminated": 1}
    assert counts["sft"] == {"train_sft": 2, "test_sft": 0}
    clusters = [json.loads(line) for line in (tmp_path / "dedup.jsonl").read_text().splitlines()]
    kept, dup = records()[0].id, records()[1].id
    assert {"kept": kept, "dropped": [dup], "by": "near", "field": "response"} in clusters
    (match,) = [json.loads(line) for line in (tmp_path / "decontam.jsonl").read_text().splitlines()]
    assert match["id"] == records()[6].id and "quick brown fox" in match["match"]
    sft = load_dataset(str(tmp_path), "sft")
    assert list(sft) == ["train_sft"] and sft["train_sft"].num_rows == 2


def test_cleaning_can_be_switched_off(tmp_path: Path) -> None:
    off = CleanConfig(exact_dedup=False, near_dedup=False, drop_truncated=False, drop_critique_repeats=False,
                      drop_over_refusal=False, quality={"enabled": []})
    st = StageStats()
    counts = export(lambda: iter(records()), tmp_path, ExportConfig(test_fraction=0.0, clean=off), HARMLESS, "m", st,
                    lambda c, e: "card")
    assert not st.dropped and counts["sft"]["train_sft"] == len(records())


def test_exact_duplicates_across_inputs_keep_the_first(tmp_path: Path) -> None:
    a = rec("What is rain?", "Water.", "Rain is water falling from clouds when droplets grow heavy enough to drop.")
    b = rec("Why does it rain?", "Water.", "rain is water falling from clouds when droplets grow heavy enough to drop")
    st = StageStats()
    export(lambda: iter([a, b]), tmp_path, ExportConfig(), HARMLESS, "m", st, lambda c, e: "card")
    assert dict(st.dropped) == {"exact_duplicate_response": 1}
    (cluster,) = [json.loads(line) for line in (tmp_path / "dedup.jsonl").read_text().splitlines()]
    assert cluster == {"kept": a.id, "dropped": [b.id], "by": "exact", "field": "response"}


def test_bad_eval_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "eval.jsonl").write_text('{"question": "fine"}\n{"nope": 1}\n')
    cfg = api_config(tmp_path, stages={"export": {"clean": {"decontaminate": [{"path": str(tmp_path / "eval.jsonl"),
                                                                               "fields": ["question"]}]}}})
    r = factory("run", cfg, "--model", "openai:x", "--prompts", write_prompts(tmp_path / "p.jsonl", ["Hi there"]),
                "--out", tmp_path / "run")
    assert r.returncode == 2 and "eval.jsonl:2" in r.stderr and "question" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "How can I get revenge on my neighbour?",
           "Explain photosynthesis simply.", "What is a good first programming language?", "How do tides work?"]


def cli_run(tmp_path: Path, name: str, prompts: list[str], *extra: str, launch=factory) -> Path:
    out = tmp_path / name
    cfg = api_config(tmp_path, stages={"answer": {"candidates": 2}, "export": {"test_fraction": 0.3, "jsonl": True,
                                                                               "kto": True}})
    r = launch("run", cfg, "--model", "openai:test-model", "--prompts", write_prompts(tmp_path / f"{name}.jsonl", prompts),
                "--out", out, *extra)
    assert r.returncode == 0, r.stderr
    return out


def test_run_writes_h4_splits_jsonl_and_a_card(api, tmp_path: Path) -> None:
    out = cli_run(tmp_path, "run", PROMPTS)
    card = (out / "README.md").read_text()
    for split in ("train_sft", "test_sft", "train_prefs", "test_prefs"):
        assert f"split: {split}" in card
    assert "## Constitution" in card and HARMLESS.digest in card and "## Drops" in card and "license:" in card
    sft = load_dataset(str(out), "sft")
    assert set(sft) == {"train_sft", "test_sft"}
    jsonl = sorted((out / "sft").glob("train_sft-*.jsonl"))
    lines = [json.loads(line) for line in jsonl[0].read_text().splitlines()]
    assert len(lines) == sft["train_sft"].num_rows
    for line, row in zip(lines, sft["train_sft"]):  # JSONL leaves out what Parquet stores as null
        assert {k: line.get(k) for k in row} == row
    stats = json.loads((out / "stats.json").read_text())
    assert stats["datasets"]["sft"]["train_sft"] == sft["train_sft"].num_rows


def test_inspect_shows_stats_drops_and_records(api, tmp_path: Path) -> None:
    out = cli_run(tmp_path, "run", PROMPTS[:3])
    r = factory("inspect", out, "--samples", "2")
    assert r.returncode == 0, r.stderr
    assert "Stages and drop reasons" in r.stdout and "critique r1" in r.stdout and "revision r1" in r.stdout
    assert factory("inspect", tmp_path).returncode == 2


def test_merge_dedups_across_runs(api, tmp_path: Path) -> None:
    a = cli_run(tmp_path, "a", PROMPTS[:4])
    b = cli_run(tmp_path, "b", PROMPTS[2:])  # two prompts overlap
    r = factory("merge", a, b, "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    merged = tmp_path / "merged"
    sft = load_dataset(str(merged), "sft")
    assert sum(d.num_rows for d in sft.values()) == len(PROMPTS)
    assert "exact_duplicate_prompt: 2" in r.stdout
    card = (merged / "README.md").read_text()
    assert "`a`" in card and "`b`" in card and "Source runs" in card
    assert factory("merge", a, "--out", merged).returncode == 2  # not empty


@pytest.mark.model
def test_exported_data_trains_with_trl(tmp_path: Path) -> None:
    """A few steps of TRL's SFT and DPO trainers on the exported configs, unchanged, with a tiny model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from factory.models.smollm2 import ensure_smollm2

    many = [rec(f"Question number {i} about topic {i * 7}?", f"Short answer {i}.",
                f"A longer and kinder answer number {i} that explains topic {i * 7} with care and detail.")
            for i in range(8)]
    export(lambda: iter(many), tmp_path, ExportConfig(test_fraction=0.0), HARMLESS, "m", StageStats(), lambda c, e: "c")
    tok = AutoTokenizer.from_pretrained(ensure_smollm2())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    common = dict(max_steps=2, per_device_train_batch_size=2, report_to=[], logging_steps=1, save_strategy="no",
                  use_cpu=True, bf16=False)
    sft = load_dataset(str(tmp_path), "sft")["train_sft"]
    trainer = SFTTrainer(LlamaForCausalLM(cfg), args=SFTConfig(output_dir=str(tmp_path / "sft-out"), **common),
                         train_dataset=sft, processing_class=tok)
    assert trainer.train().global_step == 2
    prefs = load_dataset(str(tmp_path), "prefs")["train_prefs"]
    model, ref = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    trainer = DPOTrainer(model, ref_model=ref, args=DPOConfig(output_dir=str(tmp_path / "dpo-out"), **common),
                         train_dataset=prefs, processing_class=tok)
    assert trainer.train().global_step == 2


def test_push_to_hub_needs_a_token_before_any_work(api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login either
    r = factory("run", api_config(tmp_path), "--model", "openai:test-model", "--prompts",
                write_prompts(tmp_path / "p.jsonl", PROMPTS[:1]), "--out", tmp_path / "run", "--push-to-hub", "me/data")
    assert r.returncode == 2 and "HF_TOKEN" in r.stderr and not (tmp_path / "run").exists()


def test_push_to_hub_uploads_the_card_and_the_configs(api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hub_server import FakeHub

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_TOKEN", "hf_test_TOKEN")
        # a process: huggingface_hub reads HF_ENDPOINT when it is imported
        out = cli_run(tmp_path, "run", PROMPTS[:3], "--push-to-hub", "me/cai-data", launch=factory_process)
    assert hub.repos == [{"name": "cai-data", "organization": "me", "visibility": "private", "type": "dataset"}]
    assert set(hub.files) == {"README.md", *(str(p.relative_to(out)) for c in ("sft", "prefs", "kto")
                                             for p in (out / c).iterdir())}
    assert hub.files["README.md"] == (out / "README.md").read_bytes()
    assert all(a == "Bearer hf_test_TOKEN" for a in hub.auth)
    assert "hf_test_TOKEN" not in (out / "manifest.json").read_text()


def test_a_truncated_revision_is_known_by_its_round_whatever_made_it() -> None:
    """Each round keeps its revision call's finish reason: a fact-check revision cut at max_tokens (its call
    is named fact_revision[i], not revision[i].rN) counts as truncated; records from older runs, whose
    rounds have no finish reason, are still judged by their call."""
    from factory.hygiene.clean import truncated

    fact = Record.new("Tell me about the Seine.", "file")
    cut = Round(principle_id="factcheck", critique="- a claim", revision="The Seine flows", noop=False,
                finish_reason="length")
    fact.candidates = [Candidate(index=0, answer="It is a river.", finish_reason="stop", rounds=[cut])]
    assert truncated(fact, "The Seine flows") and not truncated(fact, "It is a river.")
    fact.candidates[0].rounds[0] = cut.model_copy(update={"finish_reason": "stop"})
    assert not truncated(fact, "The Seine flows")
    old = rec("Write a long story about the sea.", "Once upon", "Once upon a time the sea was", finish="length")
    assert old.candidates[0].rounds[0].finish_reason is None and truncated(old, "Once upon a time the sea was")
