"""A Ray run's shared limits, in one actor for the whole cluster (the driver creates it with
`ray.remote(ClusterLimits)` in ray_run.py; this module does not import Ray). For each API endpoint it
holds the one rate policy (factory/engine/ratelimit.py: token buckets for requests and tokens per
minute, limits adopted from the provider's headers, the AIMD reaction to 429s) and the in-flight cap;
for the run, the budget; for the driver's progress bar, each shard's finished records.

Shards lease from it in small batches (factory/engine/limits.py): one round trip carries every
endpoint's permits for the calls waiting, the answers and 429s seen, token usage settled, the
budget asked for and what the shard gives back. In-flight slots are re-divided on every round
among the shards running: each is allotted an equal share (`concurrency` split by the running
leases), and a shard whose share shrank holds its calls in flight until they finish, so the sum
never passes the cap; when shards finish, the last ones get the whole endpoint. The budget is
allotted a few calls' worst case at a time and never past `--max-cost`: the sum of allotments plus
what was spent before this invocation stays within it, and a shard never spends past its allotment.

One actor rather than one per endpoint: a shard's round trip serves all of its endpoints and the
budget at once, and the cluster runs one more process rather than one per endpoint."""

from __future__ import annotations

import time

from factory.engine.ratelimit import RateLimiter

STALE_S = 10.0  # a lease not heard from this long (its worker died) gives its slots back


class EndpointShare:
    """One endpoint, shared by every shard: its rate policy and its in-flight cap."""

    def __init__(self, rpm: float | None, tpm: float | None, concurrency: int) -> None:
        self.policy = RateLimiter(rpm, tpm)
        self.concurrency = concurrency
        self.held: dict[str, int] = {}  # lease -> slots counted against the cap: max(in flight, allotted)
        self.granted = 0  # request permits handed out
        self.returned = 0  # request permits given back unused

    def lease(self, lease: str, running: list[str], r: dict) -> dict:
        p = self.policy
        if r["settled"]:
            p.settle(0, r["settled"])
        back_requests, back_tokens = r["give_back"]
        if back_requests or back_tokens:
            p.refund(back_requests, back_tokens)
            self.returned += back_requests
        if r["ok"] or r["limited"] or r["info"] is not None:
            p.record(r["ok"], r["limited"], r["info"])
        n, wait = p.take(r["want"], r["tokens_each"]) if r["want"] else (0, 0.0)
        self.granted += n
        slots = 0
        if lease in running:
            share, extra = divmod(self.concurrency, len(running))
            target = share + (running.index(lease) < extra)
            others = sum(held for other, held in self.held.items() if other != lease)
            slots = max(0, min(target, self.concurrency - others))
            self.held[lease] = max(r["in_flight"], slots)
        else:
            self.held.pop(lease, None)
        return {"requests": n, "tokens": n * r["tokens_each"], "wait": wait, "slots": slots,
                "view": p.snapshot() | {"shards": len(running)}}

    def forget(self, lease: str) -> None:
        self.held.pop(lease, None)


class ClusterLimits:
    """The actor's state. `endpoints`: spec -> {"rpm", "tpm", "concurrency"} for every API endpoint
    the shards call. `cap`: --max-cost (None: no budget); `spent`: what the run's call logs hold
    already (the driver's, and the shards' of an earlier invocation)."""

    def __init__(self, endpoints: dict[str, dict], cap: float | None, spent: float = 0.0,
                 clock=time.monotonic) -> None:
        self.endpoints = {spec: EndpointShare(e["rpm"], e["tpm"], e["concurrency"]) for spec, e in endpoints.items()}
        self.cap, self.spent = cap, spent
        self.allotted: dict[str, float] = {}  # lease -> budget allotted, net of what it gave back
        self.refused = 0  # budget asks refused: the cap is reached
        self.done: dict[int, int] = {}  # shard -> records finished, as last reported
        self.running: list[str] = []  # leases in the order they started
        self.seen: dict[str, float] = {}
        self._clock = clock

    def lease(self, r: dict) -> dict:
        """One shard's round: see factory/engine/limits.py (Lease) for both sides of it."""
        lease, now = r["lease"], self._clock()
        self._expire(now)
        if r["final"]:
            self.running = [x for x in self.running if x != lease]
            self.seen.pop(lease, None)
        else:
            self.seen[lease] = now
            if lease not in self.running:
                self.running.append(lease)
        self.done[r["shard"]] = r["done"]
        ends = {spec: self.endpoints[spec].lease(lease, self.running, e) for spec, e in r["endpoints"].items()}
        return {"endpoints": ends, "budget": self._budget(lease, r["budget"])}

    def _budget(self, lease: str, b: dict) -> dict:
        self.allotted[lease] = self.allotted.get(lease, 0.0) - b["give_back"]
        if self.cap is None or b["need"] <= 0:
            return {"granted": 0.0, "asked": False}
        remaining = self.cap - self.spent - sum(self.allotted.values())
        if remaining < b["need"]:
            self.refused += 1
            return {"granted": 0.0, "asked": True}
        grant = min(max(b["want"], b["need"]), remaining)
        self.allotted[lease] += grant
        return {"granted": grant, "asked": True}

    def _expire(self, now: float) -> None:
        for lease, seen in list(self.seen.items()):
            if now - seen > STALE_S:  # its allotment stays counted: it may have spent it
                del self.seen[lease]
                self.running.remove(lease)
                for e in self.endpoints.values():
                    e.forget(lease)

    def progress(self) -> dict[int, int]:
        return dict(self.done)

    def totals(self) -> dict:
        """For benches and tests: the budget committed and each endpoint's permits and policy."""
        return {"allotted": sum(self.allotted.values()), "spent_before": self.spent, "refused": self.refused,
                "running": len(self.running),
                "endpoints": {spec: {"granted": e.granted, "returned": e.returned, "held": sum(e.held.values()),
                                     **e.policy.snapshot()} for spec, e in self.endpoints.items()}}
