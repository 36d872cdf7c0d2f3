"""The call log: every model call in SQLite (WAL). It is also the cache: a call whose key is
already there with a response is served from it and costs nothing."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path

from factory.models import Completion, GenParams, Message
from factory.prompts import Template

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    template_hash TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason TEXT,
    latency REAL,
    error TEXT,
    created REAL NOT NULL
);
"""


def call_key(model: str, messages: list[Message], params: GenParams, template: str, template_hash: str) -> str:
    """A hash of everything that shapes the request. Principle text is inside the messages, so
    editing one principle changes only the keys of the calls that used it."""
    blob = json.dumps(
        {"model": model, "messages": messages, "params": asdict(params), "template": template, "hash": template_hash},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class CallLog:
    def __init__(self, path: Path | str):
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def get(self, key: str) -> Completion | None:
        row = self.db.execute(
            "SELECT response, prompt_tokens, completion_tokens, finish_reason FROM calls WHERE key=? AND error IS NULL",
            (key,),
        ).fetchone()
        if row is None:
            return None
        resp = json.loads(row[0])
        return Completion(resp["text"], row[1], row[2], row[3], resp.get("logprobs"))

    def put(self, key: str, model: str, template: Template, messages: list[Message], params: GenParams,
            result: Completion | None, latency: float, error: str | None = None) -> None:
        request = json.dumps({"messages": messages, "params": asdict(params)}, ensure_ascii=False)
        response = json.dumps({"text": result.text, "logprobs": result.logprobs}, ensure_ascii=False) if result else None
        self.db.execute(
            "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (key, model, template.name, template.digest, request, response,
             result.prompt_tokens if result else None, result.completion_tokens if result else None,
             result.finish_reason if result else None, latency, error, time.time()),
        )

    def close(self) -> None:
        self.db.close()
