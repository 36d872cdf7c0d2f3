"""How stages reach models. The runner owns this: the endpoints (in-flight limits, rate limits,
retries, cost), the call log and cache, lineage and stats. Stages only say which template, which
variables and which parameters, and how to parse the output when it must parse."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from tenacity import RetryCallState

from factory.config import OutageConfig
from factory.engine import retry
from factory.engine.calllog import CallLog, call_key, request_json, search_key
from factory.engine.endpoint import Endpoint
from factory.engine.outage import Outage
from factory.engine.stats import StageStats, Stats
from factory.errors import ModelCallError, ParseError, ParseFailure
from factory.models import Completion, GenParams, Message
from factory.prompts import Template
from factory.records import CallRef
from factory.search import Passage, SearchBackend

T = TypeVar("T")


class Caller:
    def __init__(self, endpoints: dict[str, Endpoint], log: CallLog, stats: Stats, *, shared: CallLog | None = None,
                 parse_attempts: int = 3, search_attempts: int = 6, max_wait: float = 60.0,
                 outage: OutageConfig | None = None,
                 debug: Callable[[str, list[Message], GenParams, Completion], None] | None = None):
        self.endpoints, self.log, self.stats, self.shared = endpoints, log, stats, shared
        self.parse_attempts, self.search_attempts, self.debug = parse_attempts, search_attempts, debug
        self.max_wait = max_wait  # searches retry as model calls do (factory/engine/retry.py)
        self.active: dict[int, tuple[str, str, float]] = {}  # call -> (stage, purpose, started): for the watchdog
        self.last_done = time.monotonic()
        self._ids = itertools.count()
        self._pending: dict[str, asyncio.Event] = {}  # key -> set when that call ends (answered or failed)
        self.outage_cfg = outage or OutageConfig()
        self.search_outages: dict[str, Outage] = {}  # a web search backend that stops answering pauses too

    async def chat(self, stage: str, purpose: str, template: Template, variables: dict, model: str,
                   params: GenParams, *, context: dict | None = None, sample: int = 0,
                   dialogue: list[Message] | None = None) -> tuple[Completion, CallRef]:
        """Render, call (or serve from the cache), log. `dialogue`: earlier turns of a conversation sent
        before the template's user turn (Template.render). Raises ModelCallError when the call fails
        after its retries, BudgetExceeded when it would pass --max-cost."""
        messages = template.render(dialogue, **variables)
        if template.prefill and not self.endpoints[model].model.prefill:
            messages = messages[:-1]  # this backend cannot continue a started reply
        if template.stop:
            params = replace(params, stop=tuple(dict.fromkeys(params.stop + template.stop)))
        if sample:  # a fresh sample of the same request: another seed, another cache entry
            params = replace(params, seed=derive_seed(params.seed or 0, "sample", sample))
        request = request_json(messages, params)
        key = call_key(self.endpoints[model].model.identity, request, template.name, template.digest, context, sample)
        st = self.stats[stage]
        st.touch()
        while (result := self._cached(key)) is None and key in self._pending:
            await self._pending[key].wait()  # the same request is in flight: it is paid for once
        cached, latency, cost = True, 0.0, 0.0
        if result is None:
            cached, self._pending[key] = False, asyncio.Event()

            def on_error(e: ModelCallError, seconds: float, usd: float) -> None:
                st.failed_calls += 1
                st.cost += usd
                self.log.put_error(key, stage, model, str(e), seconds, usd)

            call_id = next(self._ids)
            self.active[call_id] = (stage, purpose, time.monotonic())
            start = time.monotonic()
            try:
                result, cost = await self.endpoints[model].call(messages, params, template.name, st, on_error)
                latency = time.monotonic() - start
                self.log.put(key, stage, model, template.name, template.digest, request, result, latency, cost)
                if self.shared is not None:
                    self.shared.put(key, stage, model, template.name, template.digest, request, result, latency, cost)
            finally:
                del self.active[call_id]
                self._pending.pop(key).set()
            if self.debug is not None:
                self.debug(f"{stage} {purpose}", messages, params, result)
        self.last_done = time.monotonic()
        st.calls += 1
        st.cached_calls += cached
        st.prompt_tokens += result.prompt_tokens
        st.completion_tokens += result.completion_tokens
        st.cached_prompt_tokens += result.cached_tokens
        st.call_seconds += latency
        st.cost += cost
        if cached:
            st.saved += self.endpoints[model].cost(result.prompt_tokens, result.completion_tokens)
        st.touch()
        ref = CallRef(
            stage=stage, purpose=purpose, template=template.name, template_hash=template.digest, model=model,
            key=key, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason, cached=cached, seconds=round(latency, 4),
        )
        return result, ref

    async def chat_parsed(self, stage: str, purpose: str, template: Template, variables: dict, model: str,
                          params: GenParams, parse: Callable[[str], T], *, context: dict | None = None,
                          dialogue: list[Message] | None = None) -> tuple[T, Completion, CallRef]:
        """`chat`, then `parse(text)`. An output that raises ParseError is sampled afresh, up to
        `parse_attempts` times in all; then ParseFailure. Every sample is logged and cached."""
        st = self.stats[stage]
        for sample in range(self.parse_attempts):
            out, ref = await self.chat(stage, purpose, template, variables, model, params, context=context,
                                       sample=sample, dialogue=dialogue)
            try:
                return parse(out.text), out, ref
            except ParseError as e:
                st.counters["parse_retry" if sample + 1 < self.parse_attempts else "parse_failure"] += 1
                reason = str(e)
        raise ParseFailure(f"{model}: {template.name} output did not parse after {self.parse_attempts} samples: {reason}")

    async def search(self, stage: str, backend: SearchBackend, query: str, k: int) -> list[Passage]:
        """At most k passages for `query`: from the call log (or the shared cache) when the same
        backend, collection, query and k were searched before; else from the backend, retrying
        what is retryable. Counted as `searches` and `cached_searches` in the stage's counters."""
        st, name = self.stats[stage], backend.key()
        st.touch()
        key = search_key(name, query, k)
        found = self.log.get_search(key)
        if found is None and self.shared is not None and (found := self.shared.get_search(key)) is not None:
            self.log.put_search(key, name, query, k, found, 0.0)
        st.counters["searches"] += 1
        if found is not None:
            st.counters["cached_searches"] += 1
            return [Passage(**p) for p in found]
        call_id = next(self._ids)
        self.active[call_id] = (stage, f"search {query[:60]!r}", time.monotonic())
        start = time.monotonic()
        try:
            passages = await self._search(stage, backend, query, k, st)
        finally:
            del self.active[call_id]
        latency, found = time.monotonic() - start, [p.model_dump() for p in passages]
        for log in (self.log, self.shared):
            if log is not None:
                log.put_search(key, name, query, k, found, latency)
        self.last_done = time.monotonic()
        st.touch()
        return passages

    async def _search(self, stage: str, backend: SearchBackend, query: str, k: int, st: StageStats) -> list[Passage]:
        def before_sleep(state: RetryCallState) -> None:
            st.retries += 1

        async for attempt in retry.retrying(self.search_attempts, self.max_wait, before_sleep):
            with attempt:
                start = time.monotonic()
                outage = self.search_outages.setdefault(backend.key(), Outage(backend.key(), self.outage_cfg))
                try:
                    return await outage.call(lambda: backend.search(query, k))
                except ModelCallError as e:
                    st.failed_calls += 1
                    self.log.put_error(search_key(backend.key(), query, k), stage, backend.key(), str(e),
                                       time.monotonic() - start, 0.0)
                    raise
        raise AssertionError("unreachable: tenacity reraises")

    def _cached(self, key: str) -> Completion | None:
        result = self.log.get(key)
        if result is None and self.shared is not None:
            result = self.shared.get(key)
            if result is not None:
                self.log.copy_from(self.shared, key)
        return result


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one decision, independent of the order in which records are processed."""
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def rng(seed: int, *parts: object) -> random.Random:
    return random.Random(derive_seed(seed, *parts))
