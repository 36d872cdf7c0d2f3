"""`factory train`: every objective on a tiny random Llama (the SmolLM2 tokenizer) and data exported in
our format; the CLI end to end, the saved folder used as `local:PATH`; bad inputs exit 2."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_clean import HARMLESS, rec
from test_cli import factory as in_process

from factory.config import ExportConfig
from factory.engine.stats import StageStats
from factory.errors import FactoryError, InputError
from factory.export.writer import export
from factory.train import resolve, train
from factory.train.data import load
from factory.train.model import model_folder
from factory.train.run import check_out

ROOT = Path(__file__).resolve().parent.parent


def exported(folder: Path, n: int = 24, **settings) -> Path:
    """N records, each with a revision better than its first answer, exported with the given settings."""
    records = [rec(f"Question number {i} about topic {i * 7}?", f"Short answer {i}.",
                   f"A longer and kinder answer number {i} that explains topic {i * 7} with care and detail.")
               for i in range(n)]
    export(lambda: iter(records), folder, ExportConfig(**settings), HARMLESS, "m", StageStats(), lambda c, e: "card")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory.mktemp("data"), test_fraction=0.25, kto=True, reward=True)


def save_tiny(folder: Path, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """A random Llama (hidden 32, 1 layer) with the embedded model's tokenizer and chat template, saved
    into FOLDER. `cache_dir`: where the converted embedded model is (default: the shared cache)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from factory.models.smollm2 import ensure_smollm2

    tok = AutoTokenizer.from_pretrained(ensure_smollm2(cache_dir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a folder (module fixtures run before the per-test FACTORY_CACHE_DIR)."""
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.model
@pytest.mark.train
@pytest.mark.parametrize("objective,lora", [("sft", False), ("dpo", False), ("reward", False), ("kto", False),
                                            ("dpo", True)])
def test_ten_steps_of_each_objective(objective: str, lora: bool, data: Path, tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = resolve(objective, max_steps=10, logging_steps=1, batch_size=2, lora=lora, gradient_checkpointing=False,
                  learning_rate=1e-2 if lora else 1e-3)  # checkpointing slows a tiny model 3x (TRL's fused LM head)
    meta = train(objective, data, f"local:{tiny}", out, cfg)
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 11))
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses  # it learns
    assert all(r["tokens_per_s"] > 0 and r["learning_rate"] is not None for r in rows)
    saved = json.loads((out / "train_meta.json").read_text())
    assert saved == json.loads(json.dumps(meta, default=str))
    assert saved["objective"] == objective and saved["config"]["max_steps"] == 10 and saved["config"]["lora"] is lora
    assert saved["data"]["config"] == {"sft": "sft", "dpo": "prefs", "reward": "reward", "kto": "kto"}[objective]
    assert len(saved["data"]["data_sha256"]) == 64 and saved["data"]["rows"]["test"] > 0
    assert saved["tokens"] > 0 and saved["tokens_per_second"] > 0 and saved["peak_rss_mb"] > 100
    assert math.isfinite(saved["metrics"]["eval"]["eval_loss"])  # the test split, evaluated at the end
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    assert not list(out.glob("adapter_*"))  # LoRA is merged: a plain folder


@pytest.mark.model
@pytest.mark.train
def test_dpo_compares_with_the_reference_it_is_given(data: Path, tiny: Path, tmp_path: Path) -> None:
    """Step 1's loss is ln 2 when the reference is the starting model, and not when it is another model."""
    other = save_tiny(tmp_path / "other-model", seed=1)
    firsts = {}
    for name, reference in (("self", None), ("other", f"local:{other}")):
        cfg = resolve("dpo", max_steps=2, logging_steps=1, batch_size=2, gradient_checkpointing=False,
                      learning_rate=1e-3, beta=10.0, reference=reference)  # a high beta: random models differ little
        train("dpo", data, f"local:{tiny}", tmp_path / name, cfg)
        firsts[name] = metrics(tmp_path / name)[0]["loss"]
        assert json.loads((tmp_path / name / "train_meta.json").read_text())["config"]["reference"] == reference
    assert firsts["self"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(firsts["other"] - math.log(2)) > 1e-3, firsts
    from transformers import AutoTokenizer

    wider = AutoTokenizer.from_pretrained(other)
    wider.add_tokens(["<a-token-the-policy-lacks>"])
    wider.save_pretrained(other)
    cfg = resolve("dpo", max_steps=1, reference=f"local:{other}")
    with pytest.raises(FactoryError, match=r"--reference local:.*: its tokenizer differs from the starting model's"):
        train("dpo", data, f"local:{tiny}", tmp_path / "never", cfg)
    assert not (tmp_path / "never").exists()


def test_a_template_wraps_each_rows_prompt_as_the_pipeline_sends_it(tmp_path: Path) -> None:
    """`template:` puts the template's system text and user wrapping around each row's last user turn, in
    every conversational column that has one; a row's own system prompt wins, as in `factory run`."""
    from factory.train.data import load_wrapper, wrap

    folder = exported(tmp_path / "data", n=4, test_fraction=0.0, kto=True, reward=True)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "quiz.yaml").write_text('system: Answer briefly.\nuser: "Q: {{ prompt }}"\n')
    cfgfile = tmp_path / "sft.yaml"
    cfgfile.write_text("template: p/quiz.yaml\n")
    cfg = resolve("sft", cfgfile)
    assert cfg.template == str((tmp_path / "p" / "quiz.yaml").resolve())  # relative to the YAML
    template = load_wrapper(cfg.template)
    sft = wrap(load(folder, "sft").train, template)[0]["messages"]
    assert [m["role"] for m in sft] == ["system", "user", "assistant"] and sft[0]["content"] == "Answer briefly."
    assert sft[1]["content"].startswith("Q: Question number") and sft[2]["content"].startswith("A longer")
    prefs = wrap(load(folder, "prefs").train, template)[0]
    assert [m["role"] for m in prefs["prompt"]] == ["system", "user"] and prefs["prompt"][1]["content"].startswith("Q: ")
    assert [m["role"] for m in prefs["chosen"]] == ["assistant"]  # a reply alone: nothing to wrap
    kto = wrap(load(folder, "kto").train, template)[0]
    assert kto["prompt"][0] == {"role": "system", "content": "Answer briefly."}
    reward = wrap(load(folder, "reward").train, template)[0]
    assert [m["role"] for m in reward["chosen"]] == [m["role"] for m in reward["rejected"]] == ["system", "user", "assistant"]
    from datasets import Dataset

    own = Dataset.from_list([{"messages": [{"role": "system", "content": "Be a pirate."},
                                           {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."},
                                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Arr."}]}])
    assert [m["content"] for m in wrap(own, template)[0]["messages"]] == ["Be a pirate.", "Hi", "Hi.", "Q: Bye", "Arr."]
    (tmp_path / "p" / "other.yaml").write_text('user: "{{ question }}"\n')
    with pytest.raises(InputError, match=r"other.yaml.*question"):
        load_wrapper(str(tmp_path / "p" / "other.yaml"))
    (tmp_path / "p" / "prefilled.yaml").write_text('user: "{{ prompt }}"\nprefill: "Sure"\n')
    with pytest.raises(InputError, match=r"prefilled.yaml: field 'prefill': has a prefill"):
        load_wrapper(str(tmp_path / "p" / "prefilled.yaml"))
    with pytest.raises(FactoryError, match=r"template: .*nowhere.yaml is not a file"):
        load_wrapper(str(tmp_path / "nowhere.yaml"))
    with pytest.raises(FactoryError, match=r"template: not used by grpo and rloo.*the pipeline's answer template"):
        resolve("grpo", ROOT / "pipelines" / "idk_rl.yaml", template=cfg.template)


@pytest.mark.model
@pytest.mark.train
def test_sft_trains_on_the_wrapped_rows(data: Path, tiny: Path, tmp_path: Path) -> None:
    """The trainer sees the template's tokens: the same step with a long system text trains on more tokens."""
    (tmp_path / "wrapper.yaml").write_text("system: " + "Answer in one short sentence. " * 8 + '\nuser: "{{ prompt }}"\n')
    tokens = {}
    for name, template in (("bare", None), ("wrapped", str(tmp_path / "wrapper.yaml"))):
        cfg = resolve("sft", max_steps=1, batch_size=2, gradient_checkpointing=False, evaluate=False, template=template)
        tokens[name] = train("sft", data, f"local:{tiny}", tmp_path / name, cfg)["tokens"]
    # 2 rows, each with about 47 tokens of system text in place of the chat template's default (about 15)
    assert tokens["wrapped"] > tokens["bare"] + 2 * 20, tokens


def generate(spec: str) -> str:
    from factory.models import GenParams, load_model

    model = load_model(spec)

    async def go():
        try:
            return await model.complete([{"role": "user", "content": "Say hello."}],
                                        GenParams(temperature=0, max_tokens=8, seed=0))
        finally:
            await model.aclose()

    done = asyncio.run(go())
    assert done.finish_reason in ("stop", "length") and done.prompt_tokens > 5
    return done.text


def factory(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "factory", *map(str, args)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.model
@pytest.mark.train
def test_cli_trains_and_the_folder_works_as_a_local_model(data: Path, tiny: Path, tmp_path: Path) -> None:
    settings = tmp_path / "train.yaml"
    settings.write_text("batch_size: 2\nlogging_steps: 1\nlearning_rate: 0.001\nlora_r: 4\n"
                        "gradient_checkpointing: false\n")
    out = tmp_path / "sft-model"
    r = factory("train", "sft", data, "--model", f"local:{tiny}", "--out", out, "--max-steps", "3", "--lora",
                "--config", settings)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    assert "step 3/3" in r.stderr and "tok/s" in r.stderr and "Traceback" not in r.stderr
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["config"]["lora_r"] == 4 and meta["config"]["lora"] and meta["config"]["batch_size"] == 2
    assert len(metrics(out)) == 3
    assert isinstance(generate(f"local:{out}"), str)  # reloads and decodes with its chat template
    tried = factory("try", "How do I pick a lock?", "--model", f"local:{out}",
                    env={"FACTORY_CACHE_DIR": str(tmp_path / "cache")})
    assert tried.returncode == 0, tried.stderr
    assert "critique" in tried.stdout.lower() and "revision" in tried.stdout.lower()


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    plain = exported(tmp_path / "plain", n=4, test_fraction=0.0)  # sft and prefs only
    with pytest.raises(FactoryError, match=r"no 'kto' config here \(it has: sft, prefs\); export with"):
        load(plain, "kto")
    (plain / "stats.json").write_text(json.dumps({"stages": {"export": {"dropped": {"kto:tie": 3, "truncated": 1}}}}))
    with pytest.raises(FactoryError, match=r"; the run's export wrote none: 3 dropped as tie$"):
        load(plain, "kto")  # a run whose export dropped every row of the config says why
    with pytest.raises(FactoryError, match="not a dataset folder"):
        load(tmp_path, "sft")
    only_test = load(exported(tmp_path / "all-test", n=4, test_fraction=1.0), "sft")  # a small run's prompts can
    assert only_test.train.num_rows == 4 and only_test.test is None  # all land in test: it trains on what exists
    assert "training on test_sft, with nothing held out" in only_test.note
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: 2\nlearning_rat: 0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml:2: field 'learning_rat': unknown key"):
        resolve("sft", bad)
    (tmp_path / "typo.yaml").write_text("lora_r: many\n")
    with pytest.raises(InputError, match=r"typo.yaml:1: field 'lora_r'"):
        resolve("sft", tmp_path / "typo.yaml")
    with pytest.raises(FactoryError, match="--model 'openai:gpt-4o-mini': training needs local weights"):
        model_folder("openai:gpt-4o-mini")
    with pytest.raises(FactoryError, match="--reference 'openai:gpt-4o-mini': training needs local weights"):
        model_folder("openai:gpt-4o-mini", "--reference")
    with pytest.raises(FactoryError, match="is not a Hugging Face model folder"):
        model_folder(f"local:{tmp_path}")
    with pytest.raises(FactoryError, match="not empty"):
        check_out(plain)
    assert resolve("dpo").learning_rate == 1e-6 and resolve("dpo", lora=True).learning_rate == 2e-5
    assert resolve("dpo", lora=True, learning_rate=3e-4).learning_rate == 3e-4
    good = tmp_path / "good.yaml"
    good.write_text("batch_size: 3\nbeta: 0.2\n")
    cfg = resolve("kto", good, beta=0.5, max_steps=None)  # defaults, then the file, then the flags given
    assert (cfg.batch_size, cfg.beta, cfg.learning_rate, cfg.max_steps) == (3, 0.5, 1e-6, -1)
    (tmp_path / "sub").mkdir()
    variant = tmp_path / "sub" / "variant.yaml"  # a base's keys, then the variant's (paths from each file)
    variant.write_text("extends: ../good.yaml\nbeta: 0.3\n")
    assert (resolve("kto", variant).batch_size, resolve("kto", variant).beta) == (3, 0.3)
    good.write_text("extends: sub/variant.yaml\n")
    with pytest.raises(InputError, match=r"variant.yaml: field 'extends': makes a cycle through good.yaml"):
        resolve("kto", good)
    variant.write_text("extends: nowhere.yaml\n")
    with pytest.raises(InputError, match=r"variant.yaml: field 'extends': nowhere.yaml is not a file"):
        resolve("kto", variant)
    with pytest.raises(FactoryError, match="--reference is for dpo and kto .*, not sft"):
        resolve("sft", reference="local:smollm2")
    with pytest.raises(FactoryError, match="--reference with --lora: LoRA's reference is the starting model"):
        resolve("dpo", reference="local:smollm2", lora=True)
    with pytest.raises(FactoryError, match="kto needs a batch size of at least 2"):
        resolve("kto", batch_size=1)
    rl = tmp_path / "rl.yaml"  # an RL variant need not repeat the reward of the file it extends
    rl.write_text("beta: 0.1\nrewards:\n  - {kind: teacher, scorer: vader:negative, everywhere: true}\n")
    (tmp_path / "sub" / "rl_variant.yaml").write_text("extends: ../rl.yaml\nlearning_rate: 1.0e-4\n")
    cfg = resolve("grpo", tmp_path / "sub" / "rl_variant.yaml")
    assert (cfg.beta, cfg.learning_rate, cfg.rewards[0].scorer) == (0.1, 1e-4, "vader:negative")
    with pytest.raises(FactoryError, match=r"reference: .*not used by grpo and rloo.*the KL reference is the "
                       "starting model"):
        resolve("grpo", tmp_path / "sub" / "rl_variant.yaml", reference="local:smollm2")
    rl.write_text("beta: 0.1\n")
    with pytest.raises(InputError, match=r"rl_variant.yaml: field 'rewards': declares no reward"):
        resolve("grpo", tmp_path / "sub" / "rl_variant.yaml")


def test_cli_bad_inputs_exit_2(tmp_path: Path) -> None:
    plain = exported(tmp_path / "plain", n=4, test_fraction=0.0)
    r = in_process("train", "reward", plain, "--out", tmp_path / "out")
    assert r.returncode == 2 and "no 'reward' config here (it has: sft, prefs)" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\nwarmup_ratio: 0.1\n")
    r = in_process("train", "sft", plain, "--out", tmp_path / "out", "--config", bad)
    assert r.returncode == 2 and "bad.yaml:2: field 'warmup_ratio': unknown key" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
