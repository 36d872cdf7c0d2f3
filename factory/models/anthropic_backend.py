"""Anthropic's Messages API through the official async SDK."""

from __future__ import annotations

import os

import anthropic

from factory.errors import FactoryError, ModelCallError
from factory.models.base import Completion, GenParams, Message, Model

TIMEOUT_S = 120.0
FATAL_STATUS = {401, 403, 404}
MAX_RETRIES = 2  # the SDK's own retries (429, 5xx, connection errors, timeouts) are the one retry layer
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicModel(Model):
    """`anthropic:MODEL`. Reads ANTHROPIC_API_KEY; the SDK reads ANTHROPIC_BASE_URL.

    SDK 2.x speaks API version 2026-10-21, which rejects temperature, top_p and top_k (HTTP 400, even
    at their defaults), so those GenParams are not sent. The API gives no logprobs either.
    """

    def __init__(self, spec: str, name: str, *, timeout: float = TIMEOUT_S) -> None:
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise FactoryError(f"{spec} needs the environment variable ANTHROPIC_API_KEY")
        self.spec, self.name, self.timeout = spec, name, timeout
        self._key = key
        self._client: anthropic.AsyncAnthropic | None = None

    def _get_client(self) -> anthropic.AsyncAnthropic:
        # Built on first use, inside the running loop: the aiohttp session binds to it.
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._key,
                max_retries=MAX_RETRIES,
                timeout=self.timeout,
                http_client=anthropic.DefaultAioHttpClient(),
            )
        return self._client

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        kwargs: dict[str, object] = {}
        if system:
            kwargs["system"] = system
        if params.stop:
            kwargs["stop_sequences"] = list(params.stop)
        try:
            response = await self._get_client().messages.create(
                model=self.name,
                messages=[m for m in messages if m["role"] != "system"],  # type: ignore[misc]
                max_tokens=params.max_tokens,
                **kwargs,  # type: ignore[arg-type]
            )
        except anthropic.APIError as exc:
            raise ModelCallError(_redact(f"{self.spec}: {_describe(exc)}", self._key), fatal=_fatal(exc)) from exc
        stop_reason = response.stop_reason or "unknown"
        return Completion(
            text="".join(block.text for block in response.content if block.type == "text"),
            prompt_tokens=response.usage.input_tokens,
            completion_tokens=response.usage.output_tokens,
            finish_reason=FINISH_REASONS.get(stop_reason, stop_reason),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _fatal(exc: anthropic.APIError) -> bool:
    """A rejected key, a forbidden or unknown model: every later call would fail the same way."""
    return isinstance(exc, anthropic.APIStatusError) and exc.status_code in FATAL_STATUS


def _describe(exc: anthropic.APIError) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.api_message or exc.message}"
    # The transport's own error ("Server disconnected", "Connect call failed") says more than the SDK's.
    return f"no response from {exc.request.url} after {MAX_RETRIES + 1} attempts: {exc.__cause__ or exc.message}"


def _redact(message: str, key: str) -> str:
    """Some servers echo the key back in errors; keep it out of logs. Keys under 8 chars are placeholders."""
    return message.replace(key, "<ANTHROPIC_API_KEY>") if len(key) >= 8 else message
