"""One model endpoint as the runner sees it: an in-flight limit shared by every stage, a rate
limiter, timeouts from observed latency, the one retry layer, and cost against the budget."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable

from factory.config import OutageConfig, RetriesConfig, TimeoutsConfig
from factory.engine import retry
from factory.engine.limits import LeasedLimiter
from factory.engine.outage import Outage
from factory.engine.prices import Budget, PriceTable, estimate_tokens, token_bound
from factory.engine.ratelimit import RateLimiter
from factory.engine.stats import StageStats
from factory.errors import CallTimeout, ModelCallError
from factory.models import Completion, GenParams, Message, Model
from factory.models.spec import ModelSpec

MIN_SAMPLES = 20  # latencies observed before the timeout adapts


class Timeouts:
    """Per template: `multiplier` x the p95 of recent latencies, within [min, max]; `initial` until
    enough calls were seen. A hung request is cut at a few times what a slow one takes, not a minute."""

    def __init__(self, cfg: TimeoutsConfig):
        self.cfg = cfg
        self._seen: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=256))
        self._current: dict[str, float] = {}
        self._count: Counter[str] = Counter()

    def observe(self, template: str, seconds: float) -> None:
        seen = self._seen[template]
        seen.append(seconds)
        self._count[template] += 1
        if len(seen) >= MIN_SAMPLES and self._count[template] % 8 == 0:  # re-sorting 256 floats every 8 calls
            p95 = sorted(seen)[int(0.95 * (len(seen) - 1))]
            self._current[template] = min(self.cfg.max, max(self.cfg.min, self.cfg.multiplier * p95))

    def __call__(self, template: str) -> float:
        return self._current.get(template, self.cfg.initial)


class Endpoint:
    def __init__(self, model: Model, concurrency: int, limiter: RateLimiter | LeasedLimiter, retries: RetriesConfig,
                 timeouts: TimeoutsConfig, prices: PriceTable, budget: Budget, outage: OutageConfig | None = None):
        self.model, self.limiter, self.retries, self.prices, self.budget = model, limiter, retries, prices, budget
        self.name = ModelSpec.parse(model.spec, known=False).name
        # In-process models have no network to hang on, and a cut call would only waste the work.
        self.timeouts = Timeouts(timeouts) if model.provider != "local" else None
        # Only a network endpoint can go away; a batch is the Batch API's to wait for.
        remote = model.provider != "local" and not model.batched
        self.outage = Outage(model.spec, outage or OutageConfig()) if remote else None
        self.counts: Counter[str] = Counter()  # attempts, retries, rate_limited, timeouts
        # In-flight slots: this process's own, or its share of the cluster's (a Ray shard's lease)
        self._slots = limiter.slots if isinstance(limiter, LeasedLimiter) else asyncio.Semaphore(concurrency)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached: int = 0, written: int = 0) -> float:
        usd = self.prices.cost(self.model.provider, self.name, prompt_tokens, completion_tokens, self.model.batched,
                               cached, written)
        return usd or 0.0

    async def call(self, messages: list[Message], params: GenParams, template: str, st: StageStats,
                   on_error: Callable[[ModelCallError, float, float], None]) -> tuple[Completion, float]:
        """(completion, cost in USD). Retries what is retryable; `on_error(error, seconds, cost)` sees
        every failed attempt. Raises the last ModelCallError, or BudgetExceeded before any spending."""

        # The first attempt runs outside tenacity: most calls succeed at once, and building a retry
        # loop per call cost a tenth of a millisecond of CPU. Retries are tenacity's alone.
        try:
            return await self._attempt_when_up(messages, params, template, st, on_error)
        except ModelCallError as e:
            if not e.retryable or self.retries.max_attempts == 1:
                raise
            first = e

        def retried(_: object = None) -> None:
            self.counts["retries"] += 1
            st.retries += 1

        retried()
        await asyncio.sleep(retry.delay(1, first, self.retries.max_wait))
        async for attempt in retry.retrying(self.retries.max_attempts - 1, self.retries.max_wait, retried, done=1):
            with attempt:
                return await self._attempt_when_up(messages, params, template, st, on_error)
        raise AssertionError("unreachable: tenacity reraises")

    async def _attempt_when_up(self, messages: list[Message], params: GenParams, template: str, st: StageStats,
                               on_error: Callable[[ModelCallError, float, float], None]) -> tuple[Completion, float]:
        """`_attempt`, held back while the endpoint is down (factory.engine.outage)."""
        if self.outage is None:
            return await self._attempt(messages, params, template, st, on_error)

        def waiting(n: int) -> None:  # for the progress line
            st.waiting += n
            st.outage = self.outage

        return await self.outage.call(lambda: self._attempt(messages, params, template, st, on_error), waiting)

    async def _attempt(self, messages: list[Message], params: GenParams, template: str, st: StageStats,
                       on_error: Callable[[ModelCallError, float, float], None]) -> tuple[Completion, float]:
        if self.model.batched:  # the Batch API queues it; no in-flight slot, rate limit or timeout
            return await self._paid(messages, params, template, st, on_error)
        async with self._slots:  # the budget holds a worst case for calls in flight only, not for waiting ones
            return await self._paid(messages, params, template, st, on_error)

    async def _paid(self, messages: list[Message], params: GenParams, template: str, st: StageStats,
                    on_error: Callable[[ModelCallError, float, float], None]) -> tuple[Completion, float]:
        prompt_est = estimate_tokens(sum(len(m["content"]) for m in messages))  # for the rate limiter
        worst = self.cost(token_bound(messages), params.max_tokens)  # for the budget: a bound, never passed
        await self.budget.room_for(worst)  # a Ray shard's budget may ask the cluster for more
        self.budget.reserve(worst)  # raises BudgetExceeded: nothing is sent
        self.counts["attempts"] += 1
        spent, start = 0.0, time.monotonic()
        try:
            if self.model.batched:
                result = await self.model.complete(messages, params)
            else:
                result = await self._online(messages, params, template, st, prompt_est)
            spent = self.cost(result.prompt_tokens, result.completion_tokens, result.cached_tokens,
                              result.cache_write_tokens)
            return result, spent
        except ModelCallError as e:
            if isinstance(e, CallTimeout):
                spent = self.cost(prompt_est, 0)  # a cut request may still have been billed for its input
            on_error(e, time.monotonic() - start, spent)
            raise
        finally:
            self.budget.settle(worst, spent)

    async def _online(self, messages: list[Message], params: GenParams, template: str, st: StageStats,
                      prompt_est: int) -> Completion:
        tokens = prompt_est + params.max_tokens
        await self.limiter.acquire(tokens)
        st.in_flight += 1
        start = time.monotonic()
        timeout = self.timeouts(template) if self.timeouts else None
        try:
            async with asyncio.timeout(timeout):  # unlike wait_for, no extra task per call
                result = await self.model.complete(messages, params)
        except TimeoutError:
            self.counts["timeouts"] += 1
            raise CallTimeout(f"{self.model.spec}: no response after {timeout:.1f} s (the timeout follows "
                                 "observed latency; see `timeouts` in the pipeline config)", retryable=True) from None
        except ModelCallError as e:
            if e.status == 429:
                self.counts["rate_limited"] += 1
                st.rate_limited += 1
                self.limiter.on_rate_limited(e.retry_after)
            raise
        finally:
            st.in_flight -= 1
        if self.timeouts:
            self.timeouts.observe(template, time.monotonic() - start)
        self.limiter.settle(tokens, result.prompt_tokens + result.completion_tokens)
        self.limiter.on_success(result.limits)
        return result
