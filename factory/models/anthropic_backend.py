"""Anthropic's Messages API through the official async SDK."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from factory.engine.ratelimit import LimitInfo, parse_anthropic_headers
from factory.errors import FactoryError, ModelCallError
from factory.models.base import Completion, GenParams, Message, Model
from factory.models.identity import http_identity
from factory.models.transport import JSONClient, close_clients, sdk_client, sdk_error
from factory.redaction import checked_base_url, redact_key

if TYPE_CHECKING:  # the SDK is imported only for the Batch API: it costs memory and start-up time
    import anthropic

API_VERSION = "2026-10-21"  # what the anthropic SDK 2.11 sends (a test checks they agree)
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicModel(Model):
    """`anthropic:MODEL`. Reads ANTHROPIC_API_KEY; the SDK reads ANTHROPIC_BASE_URL.

    SDK 2.x speaks API version 2026-10-21, which rejects temperature, top_p and top_k (HTTP 400, even
    at their defaults), so those GenParams are not sent. The API gives no logprobs either. The SDK's
    own retries are off: the caller's retry layer is the only one. Online calls go through
    factory.models.transport, with the SDK's API version; the SDK client serves Message Batches.
    """

    provider = "anthropic"

    def __init__(self, spec: str, name: str) -> None:
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise FactoryError(f"{spec} needs the environment variable ANTHROPIC_API_KEY")
        self.spec, self.name = spec, name
        self._key = key
        self._client: anthropic.AsyncAnthropic | None = None
        base_url = checked_base_url("ANTHROPIC_BASE_URL", os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com")
        headers = {"x-api-key": key, "anthropic-version": API_VERSION}
        self._http = JSONClient(spec, base_url, headers, key, "<ANTHROPIC_API_KEY>")
        self._identity = http_identity(spec, base_url)

    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK client, for Message Batches. Built on first use, inside the running loop."""
        self._client = self._client or sdk_client(importlib.import_module("anthropic"), "AsyncAnthropic", self._key)
        return self._client

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        body, headers = await self._http.post("/v1/messages", anthropic_request(self.name, messages, params))
        return completion_from_anthropic(body, parse_anthropic_headers(headers))

    def error(self, exc: anthropic.APIError) -> ModelCallError:
        """The SDK's exception as a ModelCallError: retryable or not, with Retry-After, key redacted."""
        import anthropic

        return sdk_error(redact_key(f"{self.spec}: {_describe(exc)}", self._key, "<ANTHROPIC_API_KEY>"), exc, anthropic)

    async def aclose(self) -> None:
        self._client = await close_clients(self._http, self._client)


def anthropic_request(model: str, messages: list[Message], params: GenParams) -> dict[str, Any]:
    """The body of one Messages request (also the `params` of one Message Batches request)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [m for m in messages if m["role"] != "system"],
        "max_tokens": params.max_tokens,
    }
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if system:
        # The system text is what every call of a template shares, so it is the cached prefix (a
        # prefix under the model's minimum, 1024 to 4096 tokens, is silently not cached).
        body["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    return body


def completion_from_anthropic(body: dict[str, Any], limits: LimitInfo | None = None) -> Completion:
    """A Messages JSON body (an online response, or one batch result's message) as a Completion."""
    stop_reason = body.get("stop_reason") or "unknown"
    usage = body.get("usage") or {}
    read, written = usage.get("cache_read_input_tokens") or 0, usage.get("cache_creation_input_tokens") or 0
    return Completion(
        text="".join(block.get("text", "") for block in body.get("content") or [] if block.get("type") == "text"),
        prompt_tokens=(usage.get("input_tokens") or 0) + read + written,  # input_tokens counts only the uncached rest
        cached_tokens=read,
        cache_write_tokens=written,
        completion_tokens=usage.get("output_tokens") or 0,
        finish_reason=FINISH_REASONS.get(stop_reason, stop_reason),
        limits=limits,
    )


def _describe(exc: anthropic.APIError) -> str:
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.api_message or exc.message}"
    # The transport's own error ("Server disconnected", "Connect call failed") says more than the SDK's.
    return f"no response from {exc.request.url}: {exc.__cause__ or exc.message}"
