"""The one retry policy, for model calls (factory/engine/endpoint.py) and searches (caller.py): tenacity,
retrying what is `retryable` (408, 409, 429, 5xx, timeouts, dropped connections), with exponential
backoff and full jitter under `max_wait`, a server's Retry-After as a floor."""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from factory.errors import ModelCallError

FIRST_BACKOFF_S = 0.5


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, ModelCallError) and exc.retryable


def exception_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def delay(attempt: int, exc: BaseException | None, max_wait: float) -> float:
    """Seconds to wait before attempt + 1."""
    backoff = random.uniform(0, min(max_wait, FIRST_BACKOFF_S * 2 ** (attempt - 1)))
    retry_after = getattr(exc, "retry_after", None)
    return max(backoff, retry_after) if retry_after is not None else backoff


def retrying(attempts: int, max_wait: float, before_sleep: Callable[[RetryCallState], None], *,
             done: int = 0) -> AsyncRetrying:
    """`attempts` more attempts, `done` having been made already (they count in the backoff)."""
    return AsyncRetrying(stop=stop_after_attempt(attempts), retry=retry_if_exception(retryable), reraise=True,
                         wait=lambda state: delay(state.attempt_number + done, exception_of(state), max_wait),
                         before_sleep=before_sleep)
