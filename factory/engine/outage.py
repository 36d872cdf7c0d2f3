"""An endpoint that stops answering pauses; it does not fail records.

When `after_failures` attempts in a row, across every call to one endpoint, get no answer at all
(connection refused, a DNS failure, a dropped connection, a timeout), the endpoint is down. From then
on no call sends anything and no attempt counts against a call's retries: every call waits, and one
of them at a time is let through as a probe, after a backoff that doubles from 1 s up to
`max_probe_s`. The first answer of any kind (a 200, or a 400 or 500: a server that answers is up)
brings the endpoint back and releases every waiting call. If the endpoint stays down past
`max_down_s`, the waiting calls raise EndpointDown: the run stops, resumable, with nothing marked
failed. Record-level failures (a 400, a refusal, an unparseable answer) are untouched by all this."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from factory.config import OutageConfig
from factory.errors import ModelCallError
from factory.failures import Resumable

T = TypeVar("T")


class EndpointDown(Resumable):
    """An endpoint gave no answer for longer than `outage.max_down_s`: a clean, resumable stop."""

    status = "stopped_endpoint_down"


def no_answer(exc: BaseException) -> bool:
    """No response at all (as opposed to an error response): what an outage looks like."""
    return isinstance(exc, ModelCallError) and exc.retryable and exc.status is None


class Outage:
    def __init__(self, spec: str, cfg: OutageConfig):
        self.spec, self.cfg = spec, cfg
        self.down_since: float | None = None  # time.time() of the first failure of the streak that took it down
        self.waiting = 0  # calls held back right now
        self.probes = 0  # probes sent in this outage
        self.outages = 0  # outages so far
        self._streak: list[float] = []
        self._up = asyncio.Event()
        self._up.set()
        self._probing = False

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def describe(self) -> str:
        """For the progress line and the watchdog: 'openai:m down since 14:02:11 (95 s), 40 calls waiting'."""
        if self.down_since is None:
            return ""
        since = datetime.fromtimestamp(self.down_since).strftime("%H:%M:%S")
        return (f"{self.spec} down since {since} ({time.time() - self.down_since:.0f} s, stops at "
                f"{self.cfg.max_down_s:.0f} s), {self.waiting} call(s) waiting, {self.probes} probe(s)")

    async def call(self, attempt: Callable[[], Awaitable[T]], waiting: Callable[[int], None] | None = None) -> T:
        """`attempt()`, held back while the endpoint is down. An attempt that gets no answer while it
        is down spends nothing: the call waits for its next turn. `waiting(+1/-1)` brackets each wait."""
        while True:
            probe = False
            if self.down:
                if waiting is not None:
                    waiting(1)
                try:
                    probe = await self.turn()
                finally:
                    if waiting is not None:
                        waiting(-1)
            try:
                result = await attempt()
            except ModelCallError as e:
                if not no_answer(e):
                    self.answered(probe)
                elif self.failed(probe):
                    continue
                raise
            except BaseException:
                self.release(probe)
                raise
            self.answered(probe)
            return result

    async def turn(self) -> bool:
        """Wait until a call may be sent. True: this call is the probe (report its outcome with
        `answered` or `failed`, or `release` it). Raises EndpointDown past the limit."""
        if self.down_since is None:
            return False
        self.waiting += 1
        try:
            while self.down_since is not None:
                left = self.down_since + self.cfg.max_down_s - time.time()
                if left <= 0:
                    raise EndpointDown(
                        f"{self.spec} has given no answer since "
                        f"{datetime.fromtimestamp(self.down_since).strftime('%Y-%m-%d %H:%M:%S')} "
                        f"({self.cfg.max_down_s:.0f} s, outage.max_down_s): the run stopped; no record was marked "
                        "failed for it. When the endpoint answers again, continue with: factory run --resume RUN_DIR")
                if not self._probing:
                    self._probing = True
                    delay = min(self.cfg.max_probe_s, 2.0 ** min(self.probes, 30)) * random.uniform(0.5, 1.0)
                    try:
                        await asyncio.sleep(min(delay, left))
                    except BaseException:
                        self._probing = False
                        raise
                    if self.down_since is None:  # it came back while this call slept
                        self._probing = False
                        return False
                    self.probes += 1
                    return True
                try:
                    await asyncio.wait_for(self._up.wait(), timeout=left)
                except TimeoutError:
                    pass
            return False
        finally:
            self.waiting -= 1

    def answered(self, probe: bool) -> None:
        """The endpoint answered (any status): it is up."""
        self._streak.clear()
        if probe:
            self._probing = False
        if self.down_since is not None:
            self.down_since, self.probes = None, 0
            self._up.set()

    def failed(self, probe: bool) -> bool:
        """An attempt got no answer. True when the endpoint is (now) down: the call should wait, not
        spend a retry."""
        if probe:
            self._probing = False
        if self.down_since is not None:
            return True
        self._streak.append(time.time())
        if len(self._streak) >= self.cfg.after_failures:
            self.down_since, self.probes = self._streak[0], 0
            self.outages += 1
            self._up.clear()
            return True
        return False

    def release(self, probe: bool) -> None:
        """A probe that ended without an outcome (cancelled, or an error that says nothing)."""
        if probe:
            self._probing = False
