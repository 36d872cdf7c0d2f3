"""A local Hugging Face causal LM (by default the embedded SmolLM2), with micro-batching.

Concurrent `complete()` calls queue up; one worker task takes up to `max_batch` of them and runs a
single batched decode in the model's own thread, so the event loop keeps accepting requests meanwhile.
Always the same thread: torch keeps an intra-op thread pool per calling thread, and two pools spinning
on 2 cores slowed decoding up to 8x.

Each row samples with its own seeded `torch.Generator`, so a request's text does not depend on what
else shares its batch (up to float rounding, which can differ between batch shapes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from factory.errors import FactoryError, ModelCallError
from factory.models.base import Completion, GenParams, Message, Model


@dataclass
class _Request:
    messages: list[Message]
    params: GenParams
    future: asyncio.Future[Completion]


@dataclass
class _Row:
    """One request's decoding state inside a batch."""

    prompt: list[int]
    params: GenParams
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""  # set once the row is done


class LocalModel(Model):
    def __init__(self, spec: str, model, tokenizer, *, max_batch: int = 32):
        self.spec, self.model, self.tokenizer, self.max_batch = spec, model, tokenizer, max_batch
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        extra = [im_end] if im_end != tokenizer.unk_token_id else []
        self.stop_ids = {t for t in [tokenizer.eos_token_id, *eos, *extra] if t is not None}
        self.batches_run = 0  # batched decodes run on the model (tests read these)
        self.rows_run = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Request] = []
        self._wakeup: asyncio.Event
        self._worker: asyncio.Task[None] | None = None

    @classmethod
    def from_spec(cls, spec: str, name: str, *, max_batch: int = 32) -> LocalModel:
        """`smollm2` is the embedded model; anything else is a path to a Hugging Face folder."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if name == "smollm2":
            from factory.models.smollm2 import ensure_smollm2

            path = ensure_smollm2()
        else:
            path = Path(name).expanduser()
            if not (path / "config.json").is_file():
                raise FactoryError(f"{spec}: {path} is not a Hugging Face model folder (no config.json there)")
        cuda = torch.cuda.is_available()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32)
        model.to("cuda" if cuda else "cpu").eval()
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            raise FactoryError(f"{spec}: the tokenizer in {path} has no chat template")
        return cls(spec, model, tokenizer, max_batch=max_batch)

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (each asyncio.run makes one)
            self._loop, self._pending, self._wakeup = loop, [], asyncio.Event()
            self._worker = loop.create_task(self._serve())
        request = _Request(messages, params, loop.create_future())
        self._pending.append(request)
        self._wakeup.set()
        return await request.future

    async def aclose(self) -> None:
        if self._worker:
            self._worker.cancel()
        for request in self._pending:
            request.future.cancel()
        self._loop, self._pending, self._worker = None, [], None
        self.executor.shutdown(wait=False)

    async def _serve(self) -> None:
        """Run batches for as long as requests keep arriving."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                # The batch stays in `_pending` while it runs, so that `aclose` can cancel it.
                taken = self._pending[: self.max_batch]
                batch = [r for r in taken if not r.future.done()]
                requests = [(r.messages, r.params) for r in batch]
                try:
                    results = await loop.run_in_executor(self.executor, self.generate, requests)
                except Exception as e:
                    error = ModelCallError(f"{self.spec}: local generation failed: {e!r}")
                    results = [error] * len(batch)
                del self._pending[: len(taken)]
                for r, result in zip(batch, results):
                    if r.future.done():
                        continue
                    if isinstance(result, Exception):
                        r.future.set_exception(result)
                    else:
                        r.future.set_result(result)

    @torch.inference_mode()
    def generate(self, requests: list[tuple[list[Message], GenParams]]) -> list[Completion]:
        """Decode a batch of requests together (left padding, KV cache); blocking."""
        if not requests:
            return []
        self.batches_run += 1
        self.rows_run += len(requests)
        rows = [self._row(messages, params) for messages, params in requests]
        width = max(len(r.prompt) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        logprobs = [self._logprobs(row, logits[i]) for i, row in enumerate(rows)]
        for row in rows:
            if row.params.max_tokens <= 0:
                row.finish_reason = "length"
        while True:
            next_ids = self._sample(rows, logits)
            for row, token in zip(rows, next_ids.tolist()):
                if not row.finish_reason:
                    self._advance(row, token)
            if all(r.finish_reason for r in rows):
                break
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=next_ids[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            logits = out.logits[:, -1].float()
        return [
            Completion(
                text=self._text(row).strip(),
                prompt_tokens=len(row.prompt),
                completion_tokens=len(row.tokens),
                finish_reason=row.finish_reason,
                logprobs=lp,
            )
            for row, lp in zip(rows, logprobs)
        ]

    def _row(self, messages: list[Message], params: GenParams) -> _Row:
        prefill = messages[-1]["role"] == "assistant"  # a final assistant turn is continued, not closed
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=not prefill, continue_final_message=prefill, tokenize=False
        )
        prompt = self.tokenizer(text, add_special_tokens=False).input_ids
        seed = params.seed if params.seed is not None else _derive_seed(messages, params)
        generator = torch.Generator(self.device).manual_seed(seed % 2**64)
        return _Row(prompt, params, generator)

    def _logprobs(self, row: _Row, logits: torch.Tensor) -> dict[str, float] | None:
        """log P(each requested string) at the first generated position, for the strings that are one
        token (a longer one, such as "10" where digits split, is left out as an API's top-k would)."""
        if not row.params.logprob_tokens:
            return None
        logprobs = torch.log_softmax(logits, dim=-1)
        result = {}
        for s in row.params.logprob_tokens:
            ids = self.tokenizer.encode(s, add_special_tokens=False)
            if len(ids) == 1:
                result[s] = logprobs[ids[0]].item()
        return result

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """One next token per row: greedy at temperature 0, else top-p sampling with the row's generator."""
        next_ids = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            p = row.params
            if row.finish_reason or p.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p  # keep the smallest set reaching top_p
                drop[0] = False
                probs = probs.scatter(0, order[drop], 0.0)
            next_ids[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return next_ids

    def _advance(self, row: _Row, token: int) -> None:
        """Append a token to a row and decide whether the row is done."""
        if token in self.stop_ids:
            row.finish_reason = "stop"
            return
        row.tokens.append(token)
        if row.params.stop and _stop_at(self._decode(row), row.params.stop) is not None:
            row.finish_reason = "stop"
        elif len(row.tokens) >= row.params.max_tokens:
            row.finish_reason = "length"

    def _decode(self, row: _Row) -> str:
        return self.tokenizer.decode(row.tokens, skip_special_tokens=True)

    def _text(self, row: _Row) -> str:
        """The row's text, cut before the first stop string."""
        text = self._decode(row)
        return text[: _stop_at(text, row.params.stop)]


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _derive_seed(messages: list[Message], params: GenParams) -> int:
    """A stable seed from the request itself, for calls that give none."""
    blob = json.dumps([messages, asdict(params)], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big")
