"""The call log: every model call in SQLite (WAL), with its request, response, usage, latency and
cost, every failed attempt with its error, and every search with its passages. It is also the
cache: a call or search whose key is already there is served from it and costs nothing. A shared
cache folder (`cache_dir`) holds one more log that every run reads and writes, so new runs reuse
old calls. Requests and responses are stored compressed (factory/engine/blobs.py: zstd, with one
dictionary per template version, so a template's few-shot prefix is stored once); rows of older
runs, uncompressed, still read."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields as dataclass_fields
from pathlib import Path

from factory.engine.blobs import Packer, copy_dicts
from factory.models import Completion, GenParams, Message

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    template_hash TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    latency REAL NOT NULL,
    cost REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS searches (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    query TEXT NOT NULL,
    k INTEGER NOT NULL,
    results TEXT NOT NULL,
    latency REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reused (
    key TEXT PRIMARY KEY,
    cost REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS errors (
    key TEXT NOT NULL,
    stage TEXT NOT NULL,
    model TEXT NOT NULL,
    error TEXT NOT NULL,
    latency REAL NOT NULL,
    cost REAL NOT NULL,
    created REAL NOT NULL
);
"""
COLUMNS = "key, stage, model, template, template_hash, request, response, prompt_tokens, completion_tokens, " \
          "finish_reason, latency, cost, created"


def request_json(messages: list[Message], params: GenParams) -> str:
    """The request as logged: the rendered messages and every parameter."""
    fields = {f.name: getattr(params, f.name) for f in dataclass_fields(params)}
    return json.dumps({"messages": messages, "params": fields}, sort_keys=True, ensure_ascii=False)


def call_key(model: str, request: str, template: str, template_hash: str, context: dict | None = None,
             sample: int = 0) -> str:
    """A hash of everything that shapes the request: the model's identity (`model`: its spec with the
    weights digest or the server's base URL, see factory.models.identity), the rendered messages and
    parameters (`request`, from request_json), the template and its hash, what of the constitution
    the call used (`context`, e.g. the principle's hash) and the sample index. Editing one
    principle changes only the keys of the calls that used it."""
    extra = json.dumps([model, template, template_hash, context or {}, sample], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(f"{extra}\n{request}".encode()).hexdigest()


def request_group(template: str, template_hash: str) -> str:
    """Requests share a compression dictionary per template version (its few-shot prefix, stored once)."""
    return f"request:{template}:{template_hash}"


def response_group(template: str) -> str:
    return f"response:{template}"


def search_key(backend: str, query: str, k: int) -> str:
    """A search is the backend (with what it searches: a collection digest or a URL), the query and k."""
    return hashlib.sha256(json.dumps([backend, query, k], ensure_ascii=False).encode()).hexdigest()


class CallLog:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # a killed process loses nothing committed
        self.db.executescript(SCHEMA)
        self.packer = Packer(self.db)

    def get(self, key: str) -> Completion | None:
        row = self.db.execute(
            "SELECT response, prompt_tokens, completion_tokens, finish_reason FROM calls WHERE key=?", (key,)
        ).fetchone()
        if row is None:
            return None
        resp = json.loads(self.packer.unpack(row[0]))
        return Completion(resp["text"], row[1], row[2], row[3], resp.get("logprobs"), resp.get("cached_tokens", 0))

    def copy_from(self, other: CallLog, key: str) -> None:
        """Bring one call over from the shared cache, so this run's log is complete on its own. This
        run paid nothing for it: it is logged at cost 0, and what it cost once goes to `reused`."""
        row = other.db.execute(f"SELECT {COLUMNS} FROM calls WHERE key=?", (key,)).fetchone()
        if row is not None:
            columns = COLUMNS.split(", ")
            request, response, cost = (columns.index(c) for c in ("request", "response", "cost"))
            row = list(row)  # its text, packed with this log's dictionaries
            for i, group in ((request, request_group(row[3], row[4])), (response, response_group(row[3]))):
                row[i] = self.packer.pack(group, other.packer.unpack(row[i]))
            self.db.execute(f"INSERT OR IGNORE INTO calls ({COLUMNS}) VALUES ({','.join('?' * 13)})",
                            (*row[:cost], 0.0, *row[cost + 1:]))
            self.db.execute("INSERT OR IGNORE INTO reused VALUES (?,?,?)", (key, row[cost], time.time()))

    def put(self, key: str, stage: str, model: str, template: str, template_hash: str, request: str,
            result: Completion, latency: float, cost: float) -> None:
        response = {"text": result.text, "logprobs": result.logprobs}
        if result.cached_tokens:
            response["cached_tokens"] = result.cached_tokens
        response = self.packer.pack(response_group(template), json.dumps(response, ensure_ascii=False))
        request = self.packer.pack(request_group(template, template_hash), request)
        self.db.execute(
            f"INSERT OR REPLACE INTO calls ({COLUMNS}) VALUES ({','.join('?' * 13)})",
            (key, stage, model, template, template_hash, request, response, result.prompt_tokens,
             result.completion_tokens, result.finish_reason, latency, cost, time.time()),
        )

    def requests(self, stage: str) -> Iterator[dict]:
        """The logged requests of one stage ({"messages", "params"}), in the order they finished."""
        for (request,) in self.db.execute("SELECT request FROM calls WHERE stage=? ORDER BY created", (stage,)):
            yield json.loads(self.packer.unpack(request))

    def get_search(self, key: str) -> list[dict] | None:
        """The passages (as dicts) of a logged search, or None."""
        row = self.db.execute("SELECT results FROM searches WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_search(self, key: str, backend: str, query: str, k: int, results: list[dict], latency: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO searches VALUES (?,?,?,?,?,?,?)",
                        (key, backend, query, k, json.dumps(results, ensure_ascii=False), latency, time.time()))

    def put_error(self, key: str, stage: str, model: str, error: str, latency: float, cost: float) -> None:
        self.db.execute("INSERT INTO errors VALUES (?,?,?,?,?,?,?)",
                        (key, stage, model, error, latency, cost, time.time()))

    def saved(self) -> float:
        """USD the calls served from the shared cache cost when they were made (not by this run)."""
        return self.db.execute("SELECT COALESCE(SUM(cost), 0) FROM reused").fetchone()[0]

    def merge_from(self, path: Path) -> None:
        """Add another call log's calls, searches and failed attempts (a Ray shard's), in one transaction.
        Merging the same log twice changes nothing."""
        attach_copy(self.db, path, [
            "INSERT OR IGNORE INTO main.calls SELECT * FROM other.calls",
            "INSERT OR IGNORE INTO main.searches SELECT * FROM other.searches",
            ("INSERT INTO main.errors SELECT * FROM other.errors AS s WHERE NOT EXISTS "
             "(SELECT 1 FROM main.errors AS e WHERE e.key = s.key AND e.created = s.created)"),
        ])

    def spent(self) -> float:
        """USD this run paid: every call it made, failed attempts included; reused calls cost 0."""
        calls = self.db.execute("SELECT COALESCE(SUM(cost), 0) FROM calls").fetchone()[0]
        errors = self.db.execute("SELECT COALESCE(SUM(cost), 0) FROM errors").fetchone()[0]
        return calls + errors

    def totals(self) -> dict[str, dict]:
        """Per stage: distinct calls, tokens and cost over the whole run (every invocation of it)."""
        out: dict[str, dict] = {}
        for stage, n, pt, ct, cost in self.db.execute(
            "SELECT stage, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) FROM calls GROUP BY stage"
        ):
            out[stage] = {"calls": n, "prompt_tokens": pt, "completion_tokens": ct, "cost_usd": cost}
        for stage, n, cost in self.db.execute("SELECT stage, COUNT(*), SUM(cost) FROM errors GROUP BY stage"):
            entry = out.setdefault(stage, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
            entry["failed_attempts"] = n
            entry["cost_usd"] += cost
        for entry in out.values():
            entry["cost_usd"] = round(entry["cost_usd"], 6)
        return out

    def close(self) -> None:
        self.db.close()


def attach_copy(db: sqlite3.Connection, path: Path, statements: list) -> None:
    """Run `statements` (SQL, or (SQL, parameters)) with the database at `path` attached as `other`, in
    one transaction, after copying its compression dictionaries (so its packed rows copy as they are)."""
    db.execute("ATTACH DATABASE ? AS other", (str(path),))
    try:
        db.execute("BEGIN")
        try:
            copy_dicts(db)
            for statement in statements:
                db.execute(*statement) if isinstance(statement, tuple) else db.execute(statement)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.execute("DETACH DATABASE other")


def spent_in(paths: Iterable[Path]) -> float:
    """USD paid by the calls in these call logs (a Ray run's own and its shards'); missing ones count 0."""
    total = 0.0
    for path in paths:
        if Path(path).is_file():
            log = CallLog(path)
            total += log.spent()
            log.close()
    return total
