"""Per-endpoint rate limiting: token buckets for requests and tokens per minute, with limits
taken from config or the providers' response headers, and AIMD adaptation to 429s.

Adaptation policy (AIMD, once a second): the allowed rate is cap x factor. Every ADJUST_S the
factor is multiplied by (1 - the fraction of that second's answers that were 429s), cut at most to
MAX_CUT, and grows by GROWTH per second, up to 1. So a burst of 429s from requests already in flight
halves the rate at most once; a steady trickle of stray 429s (2% of answers) barely moves it; a
real overload (most answers 429) brings it down within seconds; and after it the endpoint is back
at full rate within 1/GROWTH seconds. With no known cap (no config, no headers), the first 429
sets one at the rate that got through; such a derived cap also grows with the factor and is
forgotten once it is far above what the endpoint achieves. Nothing ever pauses for a fixed time.
Retry-After is honoured by the retry of the request that got it, not here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

BURST_S = 1.0  # bucket capacity, in seconds of the current rate
ADJUST_S = 1.0  # the factor is adjusted once per this many seconds, from their answers
MAX_CUT = 0.5  # one adjustment at most halves the rate
GROWTH = 0.05  # the factor regains this much per second (half to full in 10 s)
FLOOR = 0.02  # the factor never goes below this fraction of the cap
FORGET = 4.0  # a derived cap this many times above the achieved rate is dropped
FALLBACK_RPM = 60.0  # cap after a 429 when no limit is known and nothing got through
MAX_NAP_S = 1.0  # waiters re-check at least this often, so rate changes take effect
_EPS = 1e-9


@dataclass(frozen=True)
class LimitInfo:
    """What a provider's response headers say about the endpoint's limits (per minute)."""

    requests_limit: int | None = None
    tokens_limit: int | None = None
    requests_remaining: int | None = None
    tokens_remaining: int | None = None


def _number(value: object) -> int | None:
    """A non-negative integer header value, or None for anything else."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number >= 0 else None


def _parse(headers: Mapping[str, str], names: dict[str, tuple[str, ...]]) -> LimitInfo | None:
    lower = {str(k).lower(): v for k, v in headers.items()}
    fields: dict[str, int | None] = {}
    for field, candidates in names.items():
        found = (_number(lower[name]) for name in candidates if name in lower)
        fields[field] = next((n for n in found if n is not None), None)
    return LimitInfo(**fields) if any(v is not None for v in fields.values()) else None


def parse_openai_headers(headers: Mapping[str, str]) -> LimitInfo | None:
    """Limits from OpenAI's x-ratelimit-* headers; None when there are none."""
    return _parse(headers, {
        "requests_limit": ("x-ratelimit-limit-requests",),
        "tokens_limit": ("x-ratelimit-limit-tokens",),
        "requests_remaining": ("x-ratelimit-remaining-requests",),
        "tokens_remaining": ("x-ratelimit-remaining-tokens",),
    })


def parse_anthropic_headers(headers: Mapping[str, str]) -> LimitInfo | None:
    """Limits from Anthropic's anthropic-ratelimit-* headers; None when there are none."""
    p = "anthropic-ratelimit-"
    return _parse(headers, {
        "requests_limit": (p + "requests-limit",),
        "tokens_limit": (p + "tokens-limit", p + "input-tokens-limit"),
        "requests_remaining": (p + "requests-remaining",),
        "tokens_remaining": (p + "tokens-remaining", p + "input-tokens-remaining"),
    })


def _capacity(per_min: float) -> float:
    return max(1.0, per_min / 60 * BURST_S)


def _min(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


class RateLimiter:
    """Token buckets for requests and tokens per minute, for one endpoint, with AIMD adaptation."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        self._rpm, self._tpm = rpm, tpm  # configured explicitly
        self._header_rpm: float | None = None
        self._header_tpm: float | None = None
        self._derived_rpm: float | None = None  # from the observed rate, after a 429
        self._clock, self._sleep = clock, sleep
        self._lock = asyncio.Lock()
        self._factor = 1.0
        self._rate_limited = 0
        self._window_start = self._updated = clock()
        self._ok = self._limited = 0  # answers in the current adjustment window
        self._req: float | None = None  # bucket levels; None while that limit is unknown
        self._tok: float | None = None

    @property
    def _rpm_cap(self) -> float | None:
        return _min(self._rpm, self._header_rpm) or self._derived_rpm

    @property
    def _tpm_cap(self) -> float | None:
        return _min(self._tpm, self._header_tpm)

    @property
    def effective_rpm(self) -> float | None:
        """Requests per minute allowed now (cap x factor); None means unlimited."""
        cap = self._rpm_cap
        return None if cap is None else cap * self._factor

    @property
    def effective_tpm(self) -> float | None:
        """Tokens per minute allowed now (cap x factor); None means unlimited."""
        cap = self._tpm_cap
        return None if cap is None else cap * self._factor

    def snapshot(self) -> dict[str, float | int | None]:
        return {"rpm": self.effective_rpm, "tpm": self.effective_tpm,
                "factor": self._factor, "rate_limited": self._rate_limited}

    def _sync(self) -> None:
        """Refill both buckets up to now at the current rates and clamp them to capacity."""
        now = self._clock()
        elapsed, self._updated = max(0.0, now - self._updated), now

        def refill(level: float | None, per_min: float | None) -> float | None:
            if per_min is None:
                return None
            cap = _capacity(per_min)
            return cap if level is None else min(cap, level + per_min / 60 * elapsed)

        self._req = refill(self._req, self.effective_rpm)
        self._tok = refill(self._tok, self.effective_tpm)

    def take(self, want: int, tokens_each: int) -> tuple[int, float]:
        """Take as many of `want` requests (each with `tokens_each` tokens) as the buckets hold now:
        (how many were taken, 0.0); or (0, the seconds until one fits). Never waits: the in-process
        `acquire` and the cluster's actor (factory/executors/cluster.py) both wait around this."""
        self._sync()
        n, wait = want, 0.0
        for level, per_min, need in ((self._req, self.effective_rpm, 1),
                                     (self._tok, self.effective_tpm, tokens_each)):
            if level is None or per_min is None or need <= 0:
                continue
            need_now = min(need, _capacity(per_min))  # oversize: wait for a full bucket
            if level < need_now - _EPS:
                wait = max(wait, (need_now - level) * 60 / per_min)
            n = min(n, max(1, int((level + _EPS) // need)))
        if wait > 0:
            return 0, wait
        self._req = None if self._req is None else self._req - n
        self._tok = None if self._tok is None else self._tok - n * tokens_each
        return n, 0.0

    def refund(self, requests: int, tokens: int) -> None:
        """Put back permits taken but not used (a shard's unused lease), up to the buckets' capacity."""
        self._sync()
        self._req = None if self._req is None else self._req + requests
        self._tok = None if self._tok is None else self._tok + tokens
        self._sync()

    async def acquire(self, tokens: int) -> None:
        """Wait (FIFO) until one request and `tokens` tokens are available, then take them."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if self.effective_rpm is None and self.effective_tpm is None:
            return
        async with self._lock:
            while (wait := self.take(1, tokens)[1]) > 0:
                await self._sleep(min(wait, MAX_NAP_S))

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the real usage is known (refund or charge)."""
        self._sync()
        if self._tok is not None:
            self._tok -= actual - estimated
            self._sync()  # clamp a refund to capacity

    def on_success(self, info: LimitInfo | None = None) -> None:
        """Record an answer and adopt the limits its headers state."""
        self.record(1, 0, info)

    def on_rate_limited(self, retry_after: float | None = None) -> None:
        """Record a 429; the rate comes down at the next adjustment. Never sleeps."""
        self.record(0, 1)

    def record(self, ok: int, limited: int, info: LimitInfo | None = None) -> None:
        """`ok` answers and `limited` 429s (one call's, or a shard's since its last lease)."""
        if info is not None:
            if info.requests_limit:
                self._header_rpm = float(info.requests_limit)
            if info.tokens_limit:
                self._header_tpm = float(info.tokens_limit)
        self._rate_limited += limited
        self._ok += ok
        self._limited += limited
        self._adjust()

    def _adjust(self) -> None:
        now = self._clock()
        seconds = now - self._window_start
        if seconds < ADJUST_S - _EPS:
            return
        self._sync()
        got_through = self._ok * 60 / seconds  # requests per minute answered in this window
        if self._limited:
            if self._rpm_cap is None:  # no known limit: start from the rate that got through
                self._derived_rpm, self._factor = max(FALLBACK_RPM, got_through), 1.0
            self._factor *= max(MAX_CUT, 1 - self._limited / (self._ok + self._limited))
        self._factor += GROWTH * seconds
        derived = self._derived_rpm is not None and _min(self._rpm, self._header_rpm) is None
        if derived and self._factor > 1:
            self._derived_rpm, self._factor = self._derived_rpm * self._factor, 1.0
            if not self._limited and self._derived_rpm > FORGET * max(got_through, FALLBACK_RPM):
                self._derived_rpm = None  # far above what the endpoint achieves: no longer a limit
        cap = self._rpm_cap
        self._factor = max(min(1.0, max(FLOOR, 1.0 / cap)) if cap else FLOOR, min(1.0, self._factor))
        self._window_start, self._ok, self._limited = now, 0, 0
        self._sync()
