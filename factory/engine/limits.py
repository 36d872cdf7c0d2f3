"""One process's share of an API endpoint's rate limits, when several processes (Ray shards running at
the same time) call the same endpoint: an equal split, so the sum never passes the endpoint's limit."""

from __future__ import annotations

from dataclasses import replace

from factory.engine.ratelimit import LimitInfo, RateLimiter


def _part(value: int | None, share: float) -> int | None:
    return None if value is None else max(1, int(value * share))


class ShareOfLimits(RateLimiter):
    """`share` (0 < share <= 1) of the configured limits and of those the provider's headers state.
    A 429 still slows this process down (AIMD), as for a whole endpoint."""

    def __init__(self, rpm: float | None, tpm: float | None, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be within (0, 1], got {share}")
        super().__init__(None if rpm is None else rpm * share, None if tpm is None else tpm * share)
        self.share = share

    def on_success(self, info: LimitInfo | None = None) -> None:
        if info is not None:
            info = replace(info, requests_limit=_part(info.requests_limit, self.share),
                           tokens_limit=_part(info.tokens_limit, self.share),
                           requests_remaining=_part(info.requests_remaining, self.share),
                           tokens_remaining=_part(info.tokens_remaining, self.share))
        super().on_success(info)
