"""The one model interface every stage talks to. A stage never knows which provider answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:
    from factory.engine.ratelimit import LimitInfo


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenParams:
    """Generation parameters. Every field shapes the request, so every field is part of the cache key."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Ask for the log-probabilities of these strings as the *first* generated token (judges use it).
    logprob_tokens: tuple[str, ...] = ()


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length", or the provider's own word
    # log P(token) at the first generated position, for each requested token the backend could score.
    logprobs: dict[str, float] | None = field(default=None)
    # Of prompt_tokens, those served from a prompt cache (a provider's, or the local prefix cache).
    cached_tokens: int = field(default=0, compare=False)
    # Of prompt_tokens, those written to a provider's prompt cache (Anthropic bills them at a premium).
    cache_write_tokens: int = field(default=0, compare=False)
    # The endpoint's limits as its response headers gave them (not cached: they describe that moment).
    limits: LimitInfo | None = field(default=None, compare=False)


class Model(ABC):
    """A chat model. Backends implement `complete`; concurrency and caching belong to the runner."""

    spec: str
    provider: str = "local"  # "openai", "anthropic": which price table column and batch API apply
    prefill: bool = True  # continues a final assistant turn; where False the caller leaves that turn out
    batched: bool = False  # a Batch API model: the caller skips in-flight limits, rate limits and timeouts
    _identity: str | None = None  # set by backends that know more than their spec

    @property
    def identity(self) -> str:
        """What the call cache keys on: the spec, plus what tells two models behind one spec apart
        (a local folder's weights digest, an HTTP server's base URL). See factory.models.identity."""
        return self._identity or self.spec

    @abstractmethod
    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        """Generate one reply. Raises factory.errors.ModelCallError (retryable or not); the caller retries."""

    async def aclose(self) -> None:  # noqa: B027 (optional: most backends hold nothing to release)
        """Release clients, threads or memory."""
