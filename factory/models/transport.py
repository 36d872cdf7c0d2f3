"""The transport for online calls: JSON over one aiohttp session per backend.

At 64 requests in flight on 2 cores, the CPU a call costs decides throughput. The SDKs' typed
request path (request transforms, httpx-style models layered over aiohttp) cost about 1 ms of CPU
a call here; a plain aiohttp POST costs a fraction of that (bench/throughput.py --transport sdk
compares them). The SDK clients remain in use for the Batch APIs, where calls are few."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import aiohttp

from factory.errors import ModelCallError, http_error
from factory.redaction import clip, redact_key


class JSONClient:
    def __init__(self, spec: str, base_url: str, headers: dict[str, str], secret: str, placeholder: str):
        self.spec, self.base_url, self.headers = spec, base_url.rstrip("/"), headers
        self._secret, self._placeholder = secret, placeholder
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        """Built on first use, inside the running loop. No connection cap: the runner's in-flight
        limit is the cap. No session timeout: the runner cuts hung requests from observed latency."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None),
                json_serialize=lambda obj: json.dumps(obj, ensure_ascii=False),
                headers={"content-type": "application/json", "accept": "application/json", **self.headers},
            )
        return self._session

    async def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], Mapping[str, str]]:
        """(JSON body, headers) of a 2xx answer; otherwise a ModelCallError that says whether a retry may help."""
        url = self.base_url + path
        try:
            async with self._get_session().post(url, json=body) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise ModelCallError(self.redact(f"{self.spec}: no response from {url}: {e or type(e).__name__}"),
                                 retryable=True) from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if status >= 400:
            raise http_error(self.redact(f"{self.spec}: HTTP {status}: {_message(data, raw, status, self.redact)}"),
                             status, headers)
        if not isinstance(data, dict):
            raise ModelCallError(f"{self.spec}: the server sent a body that is not a JSON object", retryable=True)
        return data, headers

    def redact(self, message: str) -> str:
        return redact_key(message, self._secret, self._placeholder)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _message(data: object, raw: bytes, status: int, redact_key: Callable[[str], str]) -> str:
    """The provider's own error message: OpenAI's {"error": {"message"}}, Anthropic's {"error": {"message"}}.
    A body that is not JSON is redacted before it is cut (a cut inside a key would let half of it out)."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    text = clip(redact_key(raw.decode("utf-8", "replace").strip()))
    if text:
        return text
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


SDK_TIMEOUT_S = 600.0  # the SDKs' ceiling; the caller cuts hung requests much earlier, from observed latency


def sdk_client(sdk: Any, cls: str, key: str) -> Any:
    """An SDK's async client (for the Batch APIs): no retries of its own, since ours are the one retry
    layer, on the SDK's aiohttp transport (httpx was CPU-bound at 64 requests in flight)."""
    return getattr(sdk, cls)(api_key=key, max_retries=0, timeout=SDK_TIMEOUT_S, http_client=sdk.DefaultAioHttpClient())


def sdk_error(message: str, exc: Exception, sdk: Any) -> ModelCallError:
    """An exception of `sdk` (the openai or anthropic module: the Batch APIs use the SDKs) as a
    ModelCallError: an HTTP status decides whether to retry (with its Retry-After); a dropped connection
    or a timeout is retryable. `message` is already redacted."""
    if isinstance(exc, sdk.APIStatusError):
        return http_error(message, exc.status_code, exc.response.headers)
    return ModelCallError(message, retryable=isinstance(exc, sdk.APIConnectionError))


async def close_clients(http: JSONClient, sdk_client: Any | None) -> None:
    """Close a backend's aiohttp session and, if one was made, its SDK client. Returns None (no client)."""
    await http.aclose()
    if sdk_client is not None:
        await sdk_client.close()
    return None
