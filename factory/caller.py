"""How stages reach models. The runner owns this: per-endpoint concurrency, the call log and
cache, lineage and stats. Stages only say which template, which variables and which parameters."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import replace

from factory.calllog import CallLog, call_key
from factory.errors import ModelCallError
from factory.models import Completion, GenParams, Model
from factory.prompts import Template
from factory.records import CallRef
from factory.stats import Stats


class Caller:
    def __init__(self, models: dict[str, Model], concurrency: int, log: CallLog, stats: Stats):
        self.models = models
        self.log = log
        self.stats = stats
        self._limits = {spec: asyncio.Semaphore(concurrency) for spec in models}

    async def chat(
        self, stage: str, purpose: str, template: Template, variables: dict, model: str, params: GenParams
    ) -> tuple[Completion, CallRef]:
        """Render, call (or serve from the cache), log. Raises ModelCallError when the call fails."""
        messages = template.render(**variables)
        if template.stop:
            params = replace(params, stop=tuple(dict.fromkeys(params.stop + template.stop)))
        key = call_key(model, messages, params, template.name, template.digest)
        st = self.stats[stage]
        st.touch()
        result, cached, latency = self.log.get(key), True, 0.0
        if result is None:
            cached = False
            async with self._limits[model]:
                st.in_flight += 1
                start = time.monotonic()
                try:
                    result = await self.models[model].complete(messages, params)
                except ModelCallError as e:
                    st.failed_calls += 1
                    self.log.put(key, model, template, messages, params, None, time.monotonic() - start, str(e))
                    raise
                finally:
                    st.in_flight -= 1
            latency = time.monotonic() - start
            self.log.put(key, model, template, messages, params, result, latency)
        st.calls += 1
        st.cached_calls += cached
        st.prompt_tokens += result.prompt_tokens
        st.completion_tokens += result.completion_tokens
        st.call_seconds += latency
        st.touch()
        ref = CallRef(
            stage=stage, purpose=purpose, template=template.name, template_hash=template.digest, model=model,
            key=key, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason, cached=cached, seconds=round(latency, 4),
        )
        return result, ref


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one decision, independent of the order in which records are processed."""
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def rng(seed: int, *parts: object) -> random.Random:
    return random.Random(derive_seed(seed, *parts))
