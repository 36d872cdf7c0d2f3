"""Search backends for fact checking, chosen by a spec: `local` (BM25, offline), `tavily`, `brave`,
`wikipedia` or `searxng`. Every backend answers `search(query, k)` with typed passages to cite.

    backend = load_search("local")                  # the bundled Wikipedia summaries
    backend = load_search("local", collection="notes/")  # JSONL, Parquet, or a folder of .txt/.md
    passages = await backend.search("What is the capital of France?", 3)
    await backend.aclose()

`key()` names the backend and what it searches (the collection's digest, or the server's URL), so a
caller can cache results on (key, query, k) and an edited collection never serves stale results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from factory.errors import FactoryError

__all__ = ["SEARCH_SPECS", "Passage", "SearchBackend", "load_search"]

WEB_SPECS = ("tavily", "brave", "wikipedia", "searxng")

SEARCH_SPECS = """valid search specs:
  local       BM25 over a local collection (default: 10,033 Wikipedia summaries; runs offline)
  tavily      Tavily (TAVILY_API_KEY, TAVILY_BASE_URL)
  brave       Brave Search (BRAVE_API_KEY, BRAVE_BASE_URL)
  wikipedia   the Wikipedia API, no key (WIKIPEDIA_API_URL)
  searxng     your own SearXNG instance with JSON output enabled (SEARXNG_URL)"""


class Passage(BaseModel):
    """One hit: a passage short enough to judge a claim against, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    title: str
    text: str
    source: str  # a URL, or a file path (with its line or row) to cite
    score: float  # higher is better; comparable only within one backend's answer


class SearchBackend(ABC):
    name: str

    @abstractmethod
    def key(self) -> str:
        """A stable string naming the backend and what it searches; part of any cache key."""

    @abstractmethod
    async def search(self, query: str, k: int) -> list[Passage]:
        """At most k passages, best first. Web backends raise ModelCallError when a call fails."""

    async def aclose(self) -> None:
        """Release connections; the backend must not be used afterwards."""
        return  # nothing to release by default


def load_search(spec: str, *, cache_dir: Path | None = None, collection: str | Path | None = None) -> SearchBackend:
    """Build the backend a spec names. `local` loads (or builds once, then caches under `cache_dir`)
    its BM25 index; `collection` applies to `local` only."""
    if spec == "local":
        from factory.search.local import LocalSearch

        return LocalSearch.load(collection, cache_dir=cache_dir)
    if spec not in WEB_SPECS:
        raise FactoryError(f"unknown search spec {spec!r}\n{SEARCH_SPECS}")
    if collection is not None:
        raise FactoryError(f"search spec {spec!r} searches the web: a collection applies only to `local`")
    from factory.search import web

    return {"tavily": web.TavilySearch, "brave": web.BraveSearch,
            "wikipedia": web.WikipediaSearch, "searxng": web.SearxngSearch}[spec]()
