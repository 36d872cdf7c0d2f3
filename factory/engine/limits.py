"""The cluster's limits as one process (a Ray shard) sees them. The run's limits actor
(factory/executors/cluster.py) holds, for the whole cluster, each API endpoint's token buckets and
429 reaction (the one policy, factory/engine/ratelimit.py), its in-flight cap and the run's budget.
A shard leases from it in small batches, so the actor is on no single call's path:

- `LeasedLimiter`: request and token permits for the calls waiting (at most MAX_LEASE at once), the
  answers and 429s seen, token usage settled, and an in-flight share (`Slots`) that the actor
  re-divides as shards come and go: the last shards running get the whole endpoint.
- `LeasedBudget`: an allotment of the budget, a few calls' worst case at a time; the actor never
  allots past `--max-cost`, and a shard never spends past its allotment.
- `Lease`: one loop per shard that makes the round trips: at once when a call waits, at least every
  REFRESH_S otherwise (answers, 429s, progress), and that gives everything unused back at the end.

Nothing here imports Ray: `call` is the actor's `lease` method, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

from factory.engine.prices import Budget
from factory.engine.ratelimit import MAX_NAP_S, LimitInfo
from factory.errors import FactoryError

REFRESH_S = 0.5  # a shard reports answers, 429s, in-flight calls and progress at least this often
POLL_S = 0.05  # a shard whose calls wait for permits asks again at most this often
MAX_LEASE = 16  # permits asked for at once (for at most this many waiting calls)


class Broken:
    """What the waiters check: set when the lease loop failed (the actor gone), so they raise, not hang."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def check(self) -> None:
        if self.error is not None:
            raise FactoryError(f"the cluster's limits actor did not answer ({type(self.error).__name__}: "
                               f"{self.error}); continue the run with factory run --resume RUN_DIR") from None


class Slots:
    """An in-flight limit that can change while calls hold it (asyncio.Semaphore's cannot)."""

    def __init__(self, limit: int, wake: Callable[[], None] = lambda: None, broken: Broken | None = None) -> None:
        self.limit, self.used, self.waiting = limit, 0, 0
        self._free, self._wake, self._broken = asyncio.Event(), wake, broken or Broken()

    async def __aenter__(self) -> None:
        self.waiting += 1
        try:
            while self.used >= self.limit:
                self._broken.check()
                self._free.clear()
                self._wake()  # a shard with no slot free asks the cluster for its share
                await self._free.wait()
        finally:
            self.waiting -= 1
        self.used += 1

    async def __aexit__(self, *exc: object) -> None:
        self.used -= 1
        self._free.set()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._free.set()


class LeasedLimiter:
    """One endpoint's permits in this shard; the same methods as RateLimiter, for the Endpoint."""

    def __init__(self, wake: Callable[[], None], broken: Broken) -> None:
        self.slots = Slots(0, wake, broken)
        self.requests, self.tokens = 0, 0  # permits held
        self.waiting, self.tokens_each = 0, 0  # calls waiting for permits; the largest estimate among them
        self.ok = self.limited = self.settled = 0  # since the last report
        self.info: LimitInfo | None = None
        self.view: dict = {}
        self._wake, self._granted, self._broken = wake, asyncio.Event(), broken

    async def acquire(self, tokens: int) -> None:
        if self.view and self.view["rpm"] is None and self.view["tpm"] is None:
            return  # no limit known to the cluster (yet: headers or a 429 may set one)
        self.waiting += 1
        self.tokens_each = max(self.tokens_each, tokens)
        try:
            while self.requests < 1 or self.tokens < tokens:
                self._broken.check()
                self._granted.clear()
                self._wake()
                await self._granted.wait()
        finally:
            self.waiting -= 1
        self.requests -= 1
        self.tokens -= tokens

    def settle(self, estimated: int, actual: int) -> None:
        self.settled += actual - estimated

    def on_success(self, info: LimitInfo | None = None) -> None:
        self.ok += 1
        self.info = info or self.info

    def on_rate_limited(self, retry_after: float | None = None) -> None:
        self.limited += 1

    def snapshot(self) -> dict:
        return self.view | {"in_flight": self.slots.used, "slots": self.slots.limit}

    @property
    def pending(self) -> bool:
        return self.waiting > 0 or self.slots.waiting > 0

    def report(self, final: bool) -> dict:
        """What the actor hears: what this shard asks for, gives back and saw since the last report."""
        want = 0 if final else min(self.waiting, MAX_LEASE)
        unused = self.requests if final or not self.waiting else 0
        out = {"want": want, "tokens_each": self.tokens_each, "in_flight": 0 if final else self.slots.used,
               "ok": self.ok, "limited": self.limited,
               "settled": self.settled, "info": self.info, "give_back": (unused, self.tokens if unused else 0)}
        if unused:
            self.requests, self.tokens = 0, 0
        self.ok = self.limited = self.settled = 0
        self.info = None
        if not self.waiting:
            self.tokens_each = 0
        return out

    def apply(self, grant: dict) -> None:
        self.requests += grant["requests"]
        self.tokens += grant["tokens"]
        self.view = grant["view"]
        self.slots.resize(grant["slots"])
        self._granted.set()


class LeasedBudget(Budget):
    """This shard's allotment of the cluster's budget: `limit` is what the actor allotted so far,
    `spent` what this invocation spent of it. `room_for` asks for more when a call's worst case
    does not fit; a refusal leaves it short, and `reserve` raises BudgetExceeded."""

    def __init__(self, cap: float | None, wake: Callable[[], None], broken: Broken) -> None:
        super().__init__(None if cap is None else 0.0)
        self.cap, self.need, self.want = cap, 0.0, 0.0
        self.started = self.done = 0  # lease rounds begun and finished
        self.refused = False  # the actor's last answer to an ask: the cap is reached
        self._wake, self._round, self._broken = wake, asyncio.Event(), broken

    async def room_for(self, worst_case: float) -> None:
        """Ask until it fits or the actor refuses (other calls may take a grant first: ask again)."""
        while self.limit is not None and self.spent + self.reserved + worst_case > self.limit and not self.refused:
            self.need, self.want = max(self.need, worst_case), self.want + worst_case
            after = self.started + 1  # a round that starts from now on carries this ask
            while self.done < after:
                self._broken.check()
                self._round.clear()
                self._wake()
                await self._round.wait()

    def refusal(self) -> str:
        return (f"the next call could take the cluster's spending past --max-cost {self.cap:.2f} USD "
                f"(this shard's share: spent {self.spent:.4f}, in flight up to {self.reserved:.4f})")

    def report(self, final: bool) -> dict:
        self.started += 1
        unused = 0.0 if self.limit is None else self.limit - self.spent - self.reserved
        give_back = max(0.0, unused) if final else 0.0
        out = {"need": self.need, "want": self.want, "give_back": give_back}
        if self.limit is not None:
            self.limit -= give_back
        self.need = self.want = 0.0
        return out

    def apply(self, grant: dict) -> None:
        if self.limit is not None:
            self.limit += grant["granted"]
        if grant["asked"]:
            self.refused = grant["granted"] == 0
        self.done += 1
        self._round.set()


class Lease:
    """A shard's side of the cluster's limits: its limiters and budget, and the loop that keeps
    them supplied. `done()` counts the shard's finished records, for the driver's progress bar."""

    def __init__(self, call: Callable[[dict], Awaitable[dict]], shard: int, specs: list[str], cap: float | None,
                 done: Callable[[], int]) -> None:
        self.id = uuid.uuid4().hex  # one invocation; a retried shard is a new lease
        self.shard, self._call, self._done = shard, call, done
        self._wake, self.broken = asyncio.Event(), Broken()
        self.limiters = {spec: LeasedLimiter(self._wake.set, self.broken) for spec in specs}
        self.budget = LeasedBudget(cap, self._wake.set, self.broken)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        try:
            await self._rounds()
        except Exception as e:  # noqa: BLE001 - every waiter raises it, none hangs
            self.broken.error = e
            for lim in self.limiters.values():
                lim.apply({"requests": 0, "tokens": 0, "view": lim.view, "slots": lim.slots.limit})
            self.budget.apply({"granted": 0.0, "asked": False})

    async def _rounds(self) -> None:
        while True:
            self._wake.clear()
            grant = await self._round(final=False)
            waits = [g["wait"] for spec, g in grant["endpoints"].items() if self.limiters[spec].pending]
            if waits:  # calls still wait: ask again once permits could be there, and not before POLL_S
                await asyncio.sleep(min(MAX_NAP_S, max(POLL_S, *waits)))
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), REFRESH_S)

    async def _round(self, final: bool) -> dict:
        report = {"lease": self.id, "shard": self.shard, "final": final, "done": self._done(), "budget": self.budget.report(final),
                  "endpoints": {spec: lim.report(final) for spec, lim in self.limiters.items()}}
        grant = await self._call(report)
        for spec, g in grant["endpoints"].items():
            self.limiters[spec].apply(g)
        self.budget.apply(grant["budget"])
        return grant

    async def close(self) -> None:
        """Stop the loop and give every unused permit, slot and allotment back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.broken.error is None:
            await self._round(final=True)
