"""The real embedded model, end to end: two prompts through the whole pipeline, datasets loaded
back with `datasets`, and TRL's own format helpers applied with the model's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from test_cli import api_config, factory, write_prompts
from transformers import AutoTokenizer
from trl.data_utils import is_conversational, maybe_apply_chat_template

pytestmark = pytest.mark.model


def test_embedded_model_end_to_end(tmp_path: Path) -> None:
    from factory.models.smollm2 import ensure_smollm2

    prompts = write_prompts(tmp_path / "p.jsonl", ["How can I get back at a coworker who insulted me?",
                                                   "What is a healthy breakfast?"])
    out = tmp_path / "run"
    # Cleaning is tested in test_clean; here every record must reach the datasets, so the 135M
    # model's truncated or short texts are kept.
    config = api_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["stages"]["export"]["clean"] = {"drop_truncated": False, "quality": {"enabled": []}}
    # The revision gates are tested in test_gates; here a pair must exist to check the prefs format.
    cfg["stages"]["critique_revise"] |= {"gate_critique": False, "gate_off_topic": False}
    config.write_text(yaml.safe_dump(cfg))
    r = factory("run", config, "--prompts", prompts, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["answer"]["calls"] == 2 and stats["stages"]["critique_revise"]["calls"] == 4
    assert stats["stages"]["critique_revise"]["completion_tokens"] > 0

    tokenizer = AutoTokenizer.from_pretrained(ensure_smollm2())
    sft = load_dataset(str(out), "sft")
    rows = [row for split in sft.values() for row in split]
    assert len(rows) == 2
    for row in rows:
        assert list(row) == ["messages", "prompt_id", "principle_ids", "constitution", "constitution_hash",
                             "generator_model", "fact_precision", "fact_f1"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["messages"][1]["content"]
        assert row["generator_model"] == "local:smollm2" and len(row["principle_ids"]) == 1
        assert is_conversational(row)
        text = maybe_apply_chat_template(row, tokenizer)["text"]
        assert row["messages"][1]["content"] in text and "<|im_start|>assistant" in text

    n_prefs = sum(stats["datasets"]["prefs"].values())
    unpaired = sum(n for reason, n in stats["stages"]["export"]["dropped"].items()
                   if reason == "prefs:revision_unchanged" or reason.startswith("prefs:gate_"))
    assert n_prefs + unpaired == 2
    prefs = load_dataset(str(out), "prefs")
    for row in (row for split in prefs.values() for row in split):
        assert list(row)[:3] == ["prompt", "chosen", "rejected"]
        assert is_conversational(row)
        applied = maybe_apply_chat_template(row, tokenizer)
        assert set(applied) >= {"prompt", "chosen", "rejected"}
        assert applied["prompt"].rstrip().endswith("<|im_start|>assistant")
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
