"""OpenAI, or any OpenAI-compatible server (vLLM, Ollama, llama.cpp), through the official async SDK."""

from __future__ import annotations

import os

import openai
from openai.types.chat import ChatCompletion

from factory.errors import FactoryError, ModelCallError
from factory.models.base import Completion, GenParams, Message, Model

TIMEOUT_S = 120.0
FATAL_STATUS = {401, 403, 404}
MAX_RETRIES = 2  # the SDK's own retries (429, 5xx, connection errors, timeouts) are the one retry layer
TOP_LOGPROBS = 20


class OpenAIModel(Model):
    """`openai:MODEL`. Reads OPENAI_API_KEY; the SDK reads OPENAI_BASE_URL."""

    def __init__(self, spec: str, name: str, *, timeout: float = TIMEOUT_S) -> None:
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise FactoryError(
                f"{spec} needs the environment variable OPENAI_API_KEY. For a local OpenAI-compatible "
                "server (vLLM, Ollama, llama.cpp) any non-empty value works; point OPENAI_BASE_URL at it, "
                "e.g. http://localhost:8000/v1"
            )
        self.spec, self.name, self.timeout = spec, name, timeout
        self._key = key
        self._client: openai.AsyncOpenAI | None = None

    def _get_client(self) -> openai.AsyncOpenAI:
        # Built on first use, inside the running loop: the aiohttp session binds to it.
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=self._key,
                max_retries=MAX_RETRIES,
                timeout=self.timeout,
                http_client=openai.DefaultAioHttpClient(),
            )
        return self._client

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        try:
            response = await self._get_client().chat.completions.create(
                model=self.name, messages=messages, **_request_params(params)  # type: ignore[arg-type]
            )
        except openai.APIError as exc:
            raise ModelCallError(_redact(f"{self.spec}: {_describe(exc)}", self._key), fatal=_fatal(exc)) from exc
        if not response.choices:
            raise ModelCallError(f"{self.spec}: the server returned no choices")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "unknown",
            logprobs=_first_token_logprobs(response, params.logprob_tokens) if params.logprob_tokens else None,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _request_params(params: GenParams) -> dict[str, object]:
    kwargs: dict[str, object] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        kwargs["seed"] = params.seed
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if params.logprob_tokens:
        kwargs["logprobs"] = True
        kwargs["top_logprobs"] = TOP_LOGPROBS
    return kwargs


def _first_token_logprobs(response: ChatCompletion, wanted: tuple[str, ...]) -> dict[str, float]:
    """log P of each wanted token among the first generated token's candidates, matched without whitespace."""
    logprobs = response.choices[0].logprobs
    if logprobs is None or not logprobs.content:
        return {}
    found: dict[str, float] = {}
    for candidate in logprobs.content[0].top_logprobs:
        for token in wanted:
            if candidate.token.strip() == token.strip():
                found[token] = max(found.get(token, candidate.logprob), candidate.logprob)
    return found


def _fatal(exc: openai.APIError) -> bool:
    """A rejected key, a forbidden or unknown model: every later call would fail the same way."""
    return isinstance(exc, openai.APIStatusError) and exc.status_code in FATAL_STATUS


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body  # the SDK unwraps {"error": {...}}
        message = body.get("message") if isinstance(body, dict) else body
        return f"HTTP {exc.status_code}: {message or exc.message}"
    # The transport's own error ("Server disconnected", "Connect call failed") says more than the SDK's.
    return f"no response from {exc.request.url} after {MAX_RETRIES + 1} attempts: {exc.__cause__ or exc.message}"


def _redact(message: str, key: str) -> str:
    """Some servers echo the key back in errors; keep it out of logs. Keys under 8 chars are placeholders."""
    return message.replace(key, "<OPENAI_API_KEY>") if len(key) >= 8 else message
