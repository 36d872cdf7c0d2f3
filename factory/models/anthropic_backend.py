"""Anthropic's Messages API through the official async SDK."""

from __future__ import annotations

import os
from typing import Any

import anthropic
from anthropic.types import Message as AnthropicMessage

from factory.errors import (
    FATAL_STATUS,
    RETRYABLE_STATUS,
    FactoryError,
    ModelCallError,
    retry_after_seconds,
)
from factory.models.base import Completion, GenParams, Message, Model
from factory.models.openai_backend import redact
from factory.ratelimit import LimitInfo, parse_anthropic_headers

TIMEOUT_S = 600.0  # the SDK's ceiling; the caller cuts hung requests much earlier, from observed latency
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
OVERLOADED = 529  # Anthropic's "overloaded": retryable, like a 5xx


class AnthropicModel(Model):
    """`anthropic:MODEL`. Reads ANTHROPIC_API_KEY; the SDK reads ANTHROPIC_BASE_URL.

    SDK 2.x speaks API version 2026-10-21, which rejects temperature, top_p and top_k (HTTP 400, even
    at their defaults), so those GenParams are not sent. The API gives no logprobs either. The SDK's
    own retries are off: the caller's retry layer is the only one.
    """

    provider = "anthropic"

    def __init__(self, spec: str, name: str) -> None:
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise FactoryError(f"{spec} needs the environment variable ANTHROPIC_API_KEY")
        self.spec, self.name = spec, name
        self._key = key
        self._client: anthropic.AsyncAnthropic | None = None

    def client(self) -> anthropic.AsyncAnthropic:
        """Built on first use, inside the running loop (the aiohttp session binds to it)."""
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._key, max_retries=0, timeout=TIMEOUT_S, http_client=anthropic.DefaultAioHttpClient()
            )
        return self._client

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        try:
            raw = await self.client().messages.with_raw_response.create(**anthropic_request(self.name, messages, params))
            response = await raw.parse()
        except anthropic.APIError as exc:
            raise self.error(exc) from exc
        return completion_from_anthropic(response, parse_anthropic_headers(raw.headers))

    def error(self, exc: anthropic.APIError) -> ModelCallError:
        """The SDK's exception as a ModelCallError: retryable or not, with Retry-After, key redacted."""
        message = redact(f"{self.spec}: {_describe(exc)}", self._key, "<ANTHROPIC_API_KEY>")
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            retryable = status in RETRYABLE_STATUS or status == OVERLOADED
            return ModelCallError(message, fatal=status in FATAL_STATUS, retryable=retryable,
                                  retry_after=retry_after_seconds(exc.response.headers), status=status)
        return ModelCallError(message, retryable=isinstance(exc, anthropic.APIConnectionError))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def anthropic_request(model: str, messages: list[Message], params: GenParams) -> dict[str, Any]:
    """The body of one Messages request (also the `params` of one Message Batches request)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [m for m in messages if m["role"] != "system"],
        "max_tokens": params.max_tokens,
    }
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if system:
        body["system"] = system
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    return body


def completion_from_anthropic(response: AnthropicMessage, limits: LimitInfo | None = None) -> Completion:
    stop_reason = response.stop_reason or "unknown"
    return Completion(
        text="".join(block.text for block in response.content if block.type == "text"),
        prompt_tokens=response.usage.input_tokens,
        completion_tokens=response.usage.output_tokens,
        finish_reason=FINISH_REASONS.get(stop_reason, stop_reason),
        limits=limits,
    )


def _describe(exc: anthropic.APIError) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.api_message or exc.message}"
    # The transport's own error ("Server disconnected", "Connect call failed") says more than the SDK's.
    return f"no response from {exc.request.url}: {exc.__cause__ or exc.message}"
