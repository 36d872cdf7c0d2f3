"""OpenAI, or any OpenAI-compatible server (vLLM, Ollama, llama.cpp), through the official async SDK."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from factory.engine.ratelimit import LimitInfo, parse_openai_headers
from factory.errors import FactoryError, ModelCallError
from factory.models.base import Completion, GenParams, Message, Model
from factory.models.identity import http_identity
from factory.models.shapes import shapes
from factory.models.transport import JSONClient, close_clients, sdk_client, sdk_error
from factory.redaction import checked_base_url, redact_key

if TYPE_CHECKING:  # the SDK is imported only for the Batch API: it costs memory and start-up time
    import openai

TOP_LOGPROBS = 20


class OpenAIModel(Model):
    """`openai:MODEL`. Reads OPENAI_API_KEY; the SDK reads OPENAI_BASE_URL.

    The SDK's own retries are off: the caller's retry layer is the only one, so attempts never multiply.
    Online calls go through factory.models.transport (plain aiohttp: the SDK's typed path costs too much
    CPU at high concurrency); the SDK client serves the Batch API. OPENAI_ORG_ID and
    OPENAI_PROJECT_ID are sent as the SDK would.
    """

    provider = "openai"
    prefill = False  # the Chat Completions API answers after a final assistant turn; it does not continue it

    def __init__(self, spec: str, name: str) -> None:
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise FactoryError(
                f"{spec} needs the environment variable OPENAI_API_KEY. For a local OpenAI-compatible "
                "server (vLLM, Ollama, llama.cpp) any non-empty value works; point OPENAI_BASE_URL at it, "
                "e.g. http://localhost:8000/v1"
            )
        self.spec, self.name = spec, name
        self._key = key
        self._client: openai.AsyncOpenAI | None = None
        headers = {"authorization": f"Bearer {key}"}
        for variable, header in (("OPENAI_ORG_ID", "openai-organization"), ("OPENAI_PROJECT_ID", "openai-project")):
            if os.environ.get(variable):
                headers[header] = os.environ[variable]
        base_url = checked_base_url("OPENAI_BASE_URL", os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1")
        self._http = JSONClient(spec, base_url, headers, key, "<OPENAI_API_KEY>")
        self._identity = http_identity(spec, base_url)

    def client(self) -> openai.AsyncOpenAI:
        """The SDK client, for the Batch API. Built on first use, inside the running loop."""
        self._client = self._client or sdk_client(importlib.import_module("openai"), "AsyncOpenAI", self._key)
        return self._client

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        body, headers = await self._http.post("/chat/completions", openai_request(self.name, messages, params))
        return completion_from_openai(body, params, parse_openai_headers(headers))

    def error(self, exc: openai.APIError) -> ModelCallError:
        """The SDK's exception as a ModelCallError: retryable or not, with Retry-After, key redacted."""
        import openai

        return sdk_error(redact_key(f"{self.spec}: {_describe(exc)}", self._key, "<OPENAI_API_KEY>"), exc, openai)

    async def aclose(self) -> None:
        self._client = await close_clients(self._http, self._client)


def openai_request(model: str, messages: list[Message], params: GenParams) -> dict[str, Any]:
    """The body of one chat completion request (also one line of a Batch API input file), shaped
    for the model as openai_models.yaml says."""
    shape = shapes().openai_shape(model)
    body: dict[str, Any] = {"model": model, "messages": messages}
    if shape.sampling:
        body |= {"temperature": params.temperature, "top_p": params.top_p}
    body["max_completion_tokens" if shape.max_completion_tokens else "max_tokens"] = params.max_tokens
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop and shape.stop:
        body["stop"] = list(params.stop)
    if params.logprob_tokens and shape.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = TOP_LOGPROBS
    return body


def completion_from_openai(body: dict[str, Any], params: GenParams, limits: LimitInfo | None = None) -> Completion:
    """A chat.completion JSON body (an online response, or one row of a batch's output) as a Completion."""
    choices = body.get("choices") or []
    if not choices:
        raise ModelCallError("the server returned no choices", retryable=True)
    choice = choices[0]
    usage = body.get("usage") or {}
    return Completion(
        text=(choice.get("message") or {}).get("content") or "",
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        finish_reason=choice.get("finish_reason") or "unknown",
        logprobs=_first_token_logprobs(choice, params.logprob_tokens) if params.logprob_tokens else None,
        cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,  # part of prompt_tokens
        limits=limits,
    )


def _first_token_logprobs(choice: dict[str, Any], wanted: tuple[str, ...]) -> dict[str, float]:
    """log P of each wanted token among the first generated token's candidates, matched without whitespace."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return {}
    found: dict[str, float] = {}
    for candidate in content[0].get("top_logprobs") or []:
        for token in wanted:
            if candidate["token"].strip() == token.strip():
                found[token] = max(found.get(token, candidate["logprob"]), candidate["logprob"])
    return found


def _describe(exc: openai.APIError) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body  # the SDK unwraps {"error": {...}}
        message = body.get("message") if isinstance(body, dict) else body
        return f"HTTP {exc.status_code}: {message or exc.message}"
    # The transport's own error ("Server disconnected", "Connect call failed") says more than the SDK's.
    return f"no response from {exc.request.url}: {exc.__cause__ or exc.message}"

