"""Web search backends over plain aiohttp: Tavily, Brave Search, the Wikipedia API and SearXNG.

Every base URL comes from an env var (tests point them at a local server). A failed call raises
ModelCallError through `http_error`, so the caller's one retry layer retries 408/409/429/5xx and
honours Retry-After; keys are redacted from every message. tavily-python is not used: it turns a
429 into an exception without the status or Retry-After, and pulls in tiktoken."""

from __future__ import annotations

import html
import json
import os
import re
from typing import Any

import aiohttp

from factory import __version__
from factory.errors import FactoryError, ModelCallError, http_error
from factory.redaction import clip, redact_key
from factory.search import Passage, SearchBackend

TIMEOUT_S = 30.0  # a search that takes longer is retried
MAX_K = 20  # the most results one call of Tavily, Brave or the Wikipedia extracts returns
USER_AGENT = f"constitution-factory/{__version__} (fact checking; aiohttp)"  # Wikimedia asks for one


class _WebSearch(SearchBackend):
    """One aiohttp session per backend, opened on the first search inside the running loop."""

    base_url: str
    _secret: str = ""  # the API key, kept out of every message
    _secret_var: str = ""  # the env var it came from

    def __init__(self, base_url: str, headers: dict[str, str]):
        self.base_url, self._headers = base_url.rstrip("/"), headers
        self._session: aiohttp.ClientSession | None = None

    def key(self) -> str:
        return f"{self.name}:{self.base_url}"

    async def _call(self, method: str, url: str, *, params: dict[str, Any] | None = None,
                    body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON object of a 2xx answer; otherwise a ModelCallError saying whether a retry may help."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"accept": "application/json", "user-agent": USER_AGENT, **self._headers},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        try:
            async with self._session.request(method, url, params=params, json=body) as response:
                raw, status, headers = await response.read(), response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise ModelCallError(self._redact(f"{self.name}: no response from {url}: {str(e) or type(e).__name__}"),
                                 retryable=True) from None
        text = raw.decode("utf-8", "replace")
        if status >= 400:
            raise http_error(self._redact(f"{self.name}: HTTP {status} from {url}: {clip(self._redact(text.strip()))}"
                                          f"{self._hint(status)}"), status, headers)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ModelCallError(f"{self.name}: {url} sent a body that is not a JSON object", retryable=True)
        return data

    def _hint(self, status: int) -> str:
        if status in (401, 403) and self._secret_var:
            return f" (check {self._secret_var})"
        return ""

    def _redact(self, message: str) -> str:
        return redact_key(message, self._secret, f"${self._secret_var}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _env_key(var: str, where: str) -> str:
    key = os.environ.get(var, "").strip()
    if not key:
        raise FactoryError(f"{var} is not set: the search backend needs an API key ({where}). "
                           f"Set it, or use `local` or `wikipedia`, which need none.")
    return key


def _with_url(results: object) -> list[dict[str, Any]]:
    """The results that can be cited (a malformed or URL-less entry is skipped)."""
    return [r for r in results if isinstance(r, dict) and r.get("url")] if isinstance(results, list) else []


def _plain(markup: str) -> str:
    """Snippet text without the <strong> highlights and HTML entities some APIs return."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup)).strip()


class TavilySearch(_WebSearch):
    """POST {TAVILY_BASE_URL}/search, `Authorization: Bearer <key>`; results carry their own score."""

    name = "tavily"

    def __init__(self) -> None:
        self._secret, self._secret_var = _env_key("TAVILY_API_KEY", "https://tavily.com"), "TAVILY_API_KEY"
        super().__init__(os.environ.get("TAVILY_BASE_URL") or "https://api.tavily.com",
                         {"authorization": f"Bearer {self._secret}"})

    async def search(self, query: str, k: int) -> list[Passage]:
        if k <= 0:
            return []
        body = {"query": query, "max_results": min(k, MAX_K), "search_depth": "basic"}
        data = await self._call("POST", f"{self.base_url}/search", body=body)
        return [Passage(title=r.get("title") or r["url"], text=r.get("content") or "", source=r["url"],
                        score=float(r.get("score") or 0.0)) for r in _with_url(data.get("results"))[:k]]


class BraveSearch(_WebSearch):
    """GET {BRAVE_BASE_URL}/web/search?q=&count=, header `X-Subscription-Token`; ranked, unscored."""

    name = "brave"

    def __init__(self) -> None:
        self._secret, self._secret_var = _env_key("BRAVE_API_KEY", "https://brave.com/search/api/"), "BRAVE_API_KEY"
        super().__init__(os.environ.get("BRAVE_BASE_URL") or "https://api.search.brave.com/res/v1",
                         {"x-subscription-token": self._secret})

    async def search(self, query: str, k: int) -> list[Passage]:
        if k <= 0:
            return []
        data = await self._call("GET", f"{self.base_url}/web/search", params={"q": query, "count": min(k, MAX_K)})
        results = _with_url((data.get("web") or {}).get("results"))[:k]
        return [Passage(title=_plain(r.get("title") or r["url"]), text=_brave_text(r), source=r["url"],
                        score=1.0 / (rank + 1)) for rank, r in enumerate(results)]


def _brave_text(result: dict[str, Any]) -> str:
    """The description, then the extra snippets (present on plans that include them)."""
    snippets = [result.get("description") or "", *(result.get("extra_snippets") or [])]
    return " ".join(text for text in map(_plain, snippets) if text)


class WikipediaSearch(_WebSearch):
    """The MediaWiki API, no key: one call does the full-text search (generator=search) and returns
    each hit's plain-text lead section (prop=extracts, exintro) and its URL (prop=info, inprop=url)."""

    name = "wikipedia"

    def __init__(self) -> None:
        super().__init__(os.environ.get("WIKIPEDIA_API_URL") or "https://en.wikipedia.org/w/api.php", {})

    async def search(self, query: str, k: int) -> list[Passage]:
        if k <= 0:
            return []
        params = {"action": "query", "format": "json", "formatversion": "2", "generator": "search",
                  "gsrsearch": query, "gsrlimit": min(k, MAX_K), "gsrnamespace": 0, "prop": "extracts|info",
                  "exintro": 1, "explaintext": 1, "exlimit": "max", "inprop": "url"}
        data = await self._call("GET", self.base_url, params=params)
        if "error" in data:
            error = data["error"]
            raise ModelCallError(f"wikipedia: the API refused the query: {error.get('info') or error}")
        pages = [p for p in (data.get("query") or {}).get("pages", []) if isinstance(p, dict) and p.get("title")]
        pages = sorted(pages, key=lambda p: p.get("index", 0))[:k]  # `index`: the search rank
        return [Passage(title=p["title"], text=(p.get("extract") or "").strip(), score=1.0 / (rank + 1),
                        source=p.get("fullurl") or "https://en.wikipedia.org/wiki/" + p["title"].replace(" ", "_"))
                for rank, p in enumerate(pages)]


class SearxngSearch(_WebSearch):
    """GET {SEARXNG_URL}/search?q=&format=json on your own instance (its settings.yml must list json
    under search.formats, or it answers 403). Returns a fixed page of results, cut to k."""

    name = "searxng"

    def __init__(self) -> None:
        url = os.environ.get("SEARXNG_URL", "").strip()
        if not url:
            raise FactoryError("SEARXNG_URL is not set: point it at your SearXNG instance, e.g. "
                               "http://localhost:8080, with `json` in search.formats of its settings.yml.")
        super().__init__(url, {})

    def _hint(self, status: int) -> str:
        return " (enable JSON output: add `json` to search.formats in settings.yml)" if status == 403 else ""

    async def search(self, query: str, k: int) -> list[Passage]:
        if k <= 0:
            return []
        data = await self._call("GET", f"{self.base_url}/search", params={"q": query, "format": "json"})
        return [Passage(title=r.get("title") or r["url"], text=_plain(r.get("content") or ""), source=r["url"],
                        score=float(r.get("score") or 0.0)) for r in _with_url(data.get("results"))[:k]]
