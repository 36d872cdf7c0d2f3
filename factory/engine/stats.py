"""Per-stage counts: records in and out, drops by reason, calls, tokens, seconds."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    records_in: int = 0
    records_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    cost: float = 0.0  # USD, this invocation's calls, failed and parse-rejected ones included
    saved: float = 0.0  # USD the calls served from a cache (this run's log or the shared one) would cost
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, read from a prompt cache (provider's or local prefix cache)
    call_seconds: float = 0.0
    in_flight: int = 0
    waiting: int = 0  # calls held back because their endpoint is down
    outage: Any = None  # that endpoint's factory.engine.outage.Outage, for the progress line
    counters: Counter[str] = field(default_factory=Counter)
    started: float | None = None
    ended: float | None = None

    def __getstate__(self) -> dict:
        """Pickled (a Ray shard's stats on their way to the driver) without the live Outage: it holds
        the shard's event loop, which cannot be pickled, and is only there for the progress line."""
        return self.__dict__ | {"outage": None}

    def touch(self) -> None:
        now = time.monotonic()
        self.started = self.started or now
        self.ended = now

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def to_dict(self) -> dict:
        return {
            "in": self.records_in,
            "out": self.records_out,
            "dropped": dict(sorted(self.dropped.items())),
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "failed_calls": self.failed_calls,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "cost_usd": round(self.cost, 6),
            "saved_usd": round(self.saved, 6),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "call_seconds": round(self.call_seconds, 3),
            "seconds": round((self.ended or 0) - (self.started or 0), 3),
            **({"counters": dict(sorted(self.counters.items()))} if self.counters else {}),
        }


class Stats:
    def __init__(self, stages: list[str]):
        self.stages: dict[str, StageStats] = {name: StageStats() for name in stages}
        self.started = time.monotonic()

    def __getitem__(self, stage: str) -> StageStats:
        return self.stages.setdefault(stage, StageStats())

    def to_dict(self) -> dict:
        return {
            "seconds": round(time.monotonic() - self.started, 3),
            "stages": {name: s.to_dict() for name, s in self.stages.items()},
        }
