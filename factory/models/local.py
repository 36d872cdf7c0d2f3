"""A local Hugging Face causal LM (by default the embedded SmolLM2), with continuous batching and a
shared-prefix KV cache.

Concurrent `complete()` calls queue up. One driver, always on the model's own thread, keeps a batch
of up to `max_batch` rows decoding one token per step: a row that finishes leaves at once (its
future resolves) and a waiting request joins at the next step, its prompt prefilled in a forward of
its own (joiners of like uncached length together) into a free slot of the KV cache (`kvcache.SlotCache`). Prompt
blocks that an earlier call already computed (the system text and few-shot examples that critique
and revision calls share) are copied from `kvcache.PrefixCache` instead of computed again. Always
the same thread: torch keeps an intra-op thread pool per calling thread, and two pools spinning on
2 cores slowed decoding up to 8x.

Each row samples with its own seeded `torch.Generator`, so a request's text does not depend on what
else shares its batch or when it joined (up to float rounding, which can differ between shapes).

Why not transformers' own continuous batching (`generate_batch`, `init_continuous_batching`,
attention "paged|sdpa")? On the 2-core CPU it made 75 tokens/s on 32 rows of 128 tokens against
139 for a static batch of the same rows (FIELD_NOTES), and it has no per-request seeded sampling,
no stop strings and no first-token log-probabilities, which the stages need. This driver keeps a static batch's step (one dense forward of the
running rows over a contiguous KV view) and adds what a static batch lacks. Measured on the
shared 2-core machine (other jobs running), 16 rows of 24 sampled tokens ran at 25 tokens/s
here against 9.6 through the former static micro-batcher in the same process.
`bench/pipeline_throughput.py --library` puts the library beside this driver on the same load
(a full batch, and a pipeline run's critique and revision requests replayed).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from factory.errors import FactoryError, ModelCallError
from factory.liblog import transformers_imported
from factory.models.base import Completion, GenParams, Message, Model
from factory.models.identity import folder_identity
from factory.models.kvcache import PrefixCache, SlotCache, prefill_groups

PREFILL_TOKENS = 4096  # prompt tokens prefilled in one forward at most (more joiners wait a step)
# A forward's fixed cost (the weights read once, 30 layers of calls) in prompt tokens' worth of compute:
# SmolLM2-135M on the 2-core CPU, fp32, takes about 85 ms for one token and 1.7 ms a token more.
FORWARD_TOKENS = 48
PREFIX_CACHE_BYTES = 1 << 30


@dataclass
class _Request:
    messages: list[Message]
    params: GenParams
    future: asyncio.Future[Completion]


@dataclass
class _Row:
    """One request's decoding state while it holds a slot."""

    request: _Request
    prompt: list[int]
    params: GenParams
    generator: torch.Generator
    cached: int = 0  # prompt tokens copied from the prefix cache
    length: int = 0  # positions of this row in its KV slot
    tokens: list[int] = field(default_factory=list)
    logprobs: dict[str, float] | None = None
    finish_reason: str = ""  # set once the row is done


class LocalModel(Model):
    def __init__(self, spec: str, model, tokenizer, *, max_batch: int = 32, prefix_cache_bytes: int = PREFIX_CACHE_BYTES):
        self.spec, self.model, self.tokenizer, self.max_batch = spec, model, tokenizer, max_batch
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        extra = [im_end] if im_end != tokenizer.unk_token_id else []
        self.stop_ids = {t for t in [tokenizer.eos_token_id, *eos, *extra] if t is not None}
        self.batches_run = 0  # prefill forwards (each admits one or more rows); tests read these
        self.rows_run = 0
        self.steps_run = 0  # decode steps
        # Where the model's thread spent its time (bench/pipeline_throughput.py prints these): prefill
        # forwards and the prompt tokens they computed; decode steps, the rows they carried and the
        # positions they attended over (rows x the longest row's length, since a step is one dense batch).
        self.prefill_seconds = self.decode_seconds = 0.0
        self.prefill_tokens = self.prefill_slots = self.decode_rows = self.decode_positions = 0
        self.prefix = PrefixCache(prefix_cache_bytes)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")
        self._cache: SlotCache | None = None
        self._rows: list[_Row] = []
        self._queue: collections.deque[_Request] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event
        self._worker: asyncio.Task[None] | None = None
        self._closing = threading.Event()

    @classmethod
    def from_spec(cls, spec: str, name: str, *, max_batch: int = 32) -> LocalModel:
        """`smollm2` is the embedded model; anything else is a path to a Hugging Face folder."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers_imported()
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
        local = cls(spec, model, tokenizer, max_batch=max_batch)
        local._identity = folder_identity(spec, path)
        return local

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (each asyncio.run makes one)
            self._loop, self._wakeup = loop, asyncio.Event()
            self._queue.clear()
            self._closing.clear()
            self._worker = loop.create_task(self._serve())
        request = _Request(messages, params, loop.create_future())
        self._queue.append(request)
        self._wakeup.set()
        return await request.future

    async def aclose(self) -> None:
        self._closing.set()
        if self._worker:
            self._worker.cancel()
        for request in [*self._queue, *(r.request for r in self._rows)]:
            request.future.cancel()
        self._loop, self._worker = None, None
        self._queue.clear()
        self.executor.shutdown(wait=False)

    async def _serve(self) -> None:
        """Drive the batch on the model's thread for as long as requests keep arriving."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await loop.run_in_executor(self.executor, self._drive)

    # --- on the model's thread -----------------------------------------------------------------------

    def _drive(self) -> None:
        """Admit waiting requests and decode, until no row runs and none waits."""
        while not self._closing.is_set() and (self._queue or self._rows):
            try:
                self._admit()
                if self._rows:
                    self._step()
            except Exception as e:  # a failed forward fails every row in it; the cache starts afresh
                error = ModelCallError(f"{self.spec}: local generation failed: {e!r}")
                for row in self._rows:
                    self._settle(row.request, error)
                self._rows, self._cache = [], None

    def _settle(self, request: _Request, result: Completion | Exception) -> None:
        def settle() -> None:
            if request.future.done():  # cancelled meanwhile (a timeout, or aclose)
                return
            if isinstance(result, Exception):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed meanwhile: nobody waits for this result
                pass

    def _slots(self) -> SlotCache:
        if self._cache is None:
            cfg = self.model.config.get_text_config()
            heads = cfg.num_attention_heads
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            self._cache = SlotCache(cfg.num_hidden_layers, getattr(cfg, "num_key_value_heads", None) or heads,
                                    head_dim, self.max_batch, self.model.dtype, self.device)
        return self._cache

    def _admit(self) -> None:
        """Prefill waiting requests into free slots. Joiners that share a prompt block nobody has
        computed yet (a wave of critique calls with the same system text and examples) would each
        compute it: the first goes alone, so the others find its blocks in the prefix cache."""
        joining = self._take()
        while joining:
            head = [k for k in self.prefix.keys(joining[0].prompt[:-1]) if k not in self.prefix]
            if head and self.prefix.max_bytes > 0 and any(head[0] in self.prefix.keys(r.prompt[:-1]) for r in joining[1:]):
                self._prefill(joining[:1])
                joining = joining[1:]
            else:
                needs = [len(r.prompt) - self.prefix.cached_length(r.prompt) for r in joining]
                for group in prefill_groups(needs, FORWARD_TOKENS):
                    self._prefill([joining[i] for i in group])
                joining = []

    def _take(self) -> list[_Row]:
        """Waiting requests for the free slots, up to PREFILL_TOKENS of prompt."""
        joining: list[_Row] = []
        budget = PREFILL_TOKENS
        while self._queue and len(self._rows) + len(joining) < self.max_batch:
            request = self._queue[0]
            if request.future.done():  # cancelled while it waited
                self._queue.popleft()
                continue
            row = self._row(request)
            need = len(row.prompt) - row.cached
            if joining and need > budget:
                break
            self._queue.popleft()
            budget -= need
            joining.append(row)
        return joining

    @torch.inference_mode()
    def _prefill(self, joining: list[_Row]) -> None:
        """One forward over the joiners' uncached prompt tokens (left-padded), into their new slots."""
        start, cache, first = time.perf_counter(), self._slots(), len(self._rows)
        for i, row in enumerate(joining):
            row.cached, blocks = self.prefix.lookup(row.prompt)
            if blocks is not None:
                cache.write(first + i, 0, blocks)
        width = max(len(r.prompt) - r.cached for r in joining)
        pad = self.tokenizer.pad_token_id
        ids, positions, writes, masks = [], [], [], []
        kv_len = max(len(r.prompt) for r in joining)
        for r in joining:
            n, end = len(r.prompt) - r.cached, len(r.prompt)
            off = width - n  # left padding: the last query of every row is its prompt's last token
            ids.append([pad] * off + r.prompt[r.cached :])
            # padding queries write past the row's end (overwritten before they are ever attended to)
            writes.append([end + j for j in range(off)] + list(range(r.cached, end)))
            positions.append([0] * off + list(range(r.cached, end)))
            kv = torch.arange(kv_len, device=self.device)
            q = torch.tensor([0] * off + list(range(r.cached, end)), device=self.device)
            mask = kv[None, :] <= q[:, None]
            mask[:off] = False
            mask[:off, 0] = True  # padding queries see position 0 only (their outputs are unused)
            masks.append(mask)
        cache.prepare(first, torch.tensor(writes, device=self.device), kv_len)
        out = self.model(input_ids=torch.tensor(ids, device=self.device), attention_mask=torch.stack(masks)[:, None],
                         position_ids=torch.tensor(positions, device=self.device), cache=cache, use_cache=True,
                         logits_to_keep=1)
        self.batches_run += 1
        self.rows_run += len(joining)
        self.prefill_tokens += sum(len(r.prompt) - r.cached for r in joining)
        self.prefill_slots += width * len(joining)  # computed, padding included
        logits = out.logits[:, -1].float()
        for i, row in enumerate(joining):
            row.length = len(row.prompt)
            row.logprobs = self._logprobs(row, logits[i])
            self.prefix.store(row.prompt, cache, first + i)
        self._rows.extend(joining)
        self._choose(joining, logits)
        self.prefill_seconds += time.perf_counter() - start

    @torch.inference_mode()
    def _step(self) -> None:
        """One decode step of every running row (each row's last sampled token goes in)."""
        start, rows, cache = time.perf_counter(), self._rows, self._slots()
        lengths = torch.tensor([r.length for r in rows], device=self.device)
        kv_len = int(lengths.max()) + 1
        cache.prepare(0, lengths[:, None], kv_len)
        mask = torch.arange(kv_len, device=self.device)[None, :] <= lengths[:, None]
        out = self.model(input_ids=torch.tensor([[r.tokens[-1]] for r in rows], device=self.device),
                         attention_mask=mask[:, None, None, :], position_ids=lengths[:, None], cache=cache,
                         use_cache=True)
        self.steps_run += 1
        self.decode_rows += len(rows)
        self.decode_positions += len(rows) * kv_len
        for r in rows:
            r.length += 1
        self._choose(rows, out.logits[:, -1].float())
        self.decode_seconds += time.perf_counter() - start

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample each row's next token; finished rows leave (their slots are refilled from the end)."""
        for row, token in zip(rows, self._sample(rows, logits).tolist()):
            if row.params.max_tokens <= 0:
                row.finish_reason = "length"
            else:
                self._advance(row, token)
        done = [i for i, r in enumerate(self._rows) if r.finish_reason or r.request.future.done()]
        for i in reversed(done):
            row = self._rows[i]
            if row.finish_reason:
                self._settle(row.request, self._completion(row))
            last = self._rows.pop()
            if i < len(self._rows):
                self._rows[i] = last
                self._slots().move(len(self._rows), i, last.length)

    def _completion(self, row: _Row) -> Completion:
        return Completion(text=self._text(row).strip(), prompt_tokens=len(row.prompt),
                          completion_tokens=len(row.tokens), finish_reason=row.finish_reason,
                          logprobs=row.logprobs, cached_tokens=row.cached)

    def _row(self, request: _Request) -> _Row:
        messages, params = request.messages, request.params
        prefill = messages[-1]["role"] == "assistant"  # a final assistant turn is continued, not closed
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=not prefill, continue_final_message=prefill, tokenize=False
        )
        prompt = self.tokenizer(text, add_special_tokens=False).input_ids
        seed = params.seed if params.seed is not None else _derive_seed(messages, params)
        generator = torch.Generator(self.device).manual_seed(seed % 2**64)
        return _Row(request, prompt, params, generator)

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
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p  # keep the smallest set reaching top_p
                drop[0] = False
                probs = probs.scatter(0, order[drop], 0.0)
            # Inverse-CDF sampling: one uniform draw from the row's generator and a binary search.
            # torch.multinomial draws an exponential per vocabulary entry (49k for SmolLM2): 11% of a
            # decode step at batch 32, measured with torch.profiler.
            cdf = probs.cumsum(-1)
            u = torch.rand(1, generator=row.generator, device=self.device) * cdf[-1]
            next_ids[i] = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)[0]
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
