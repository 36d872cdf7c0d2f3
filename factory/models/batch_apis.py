"""The providers' Batch APIs as BatchModel (factory/models/batch.py) uses them: OpenAI's (a JSONL file,
then a batch on it) and Anthropic's Message Batches; the row ids; the SQLite schema of the queue."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from factory.models.anthropic_backend import (
    anthropic_request,
    completion_from_anthropic,
)
from factory.models.base import Completion, GenParams, Message
from factory.models.openai_backend import completion_from_openai, openai_request

log = logging.getLogger(__name__)

OPENAI_ENDPOINT = "/v1/chat/completions"
TOKEN_KEY = "factory_token"  # OpenAI batch metadata: our intent's token, to find the batch after a crash
CLOCK_SKEW_S = 300.0  # a batch found after a crash may carry a created_at this much before our intent
MAX_BACKOFF = 16  # poll errors stretch the poll interval up to this factor

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    token TEXT PRIMARY KEY,      -- ours, written before the provider's create() call
    spec TEXT NOT NULL,
    batch_id TEXT,               -- the provider's, written right after create() returns
    status TEXT NOT NULL,        -- intent | submitted | ended | rejected
    created REAL NOT NULL,       -- unix time of the intent
    rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    custom_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    body TEXT NOT NULL,          -- the request, to resubmit it
    batch_token TEXT,            -- the batch of its latest attempt
    attempt INTEGER NOT NULL,    -- submissions so far
    status TEXT NOT NULL,        -- submitted | pending (to resubmit) | succeeded | failed
    response TEXT,               -- the provider's response body, once succeeded
    error TEXT,                  -- the latest failure
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rows_by_batch ON rows (batch_token);
CREATE INDEX IF NOT EXISTS rows_by_status ON rows (spec, status);
"""


def custom_id(provider: str, model: str, body: dict[str, Any]) -> str:
    """The row id of a request: sha256 over provider, model and the exact body (64 hex characters,
    valid for both providers). The same request always gets the same id, in any process."""
    payload = json.dumps([provider, model, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:64]


@dataclass
class Outcome:
    """One row's result: the provider's response body, or why there is none."""

    response: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Ended:
    """A finished batch: its rows' outcomes, and what happened to rows it has none for."""

    outcomes: dict[str, Outcome]
    error: str | None = None


class BatchAPI(Protocol):
    """One provider's Batch API, as BatchModel uses it."""

    max_requests: int
    max_bytes: int
    overhead: int  # bytes of a batch beyond its rows' sizes

    def request(self, messages: list[Message], params: GenParams) -> dict[str, Any]: ...
    def size(self, custom_id: str, body: dict[str, Any]) -> int: ...
    def completion(self, response: dict[str, Any], params: GenParams) -> Completion: ...
    async def create(self, token: str, rows: list[tuple[str, dict[str, Any]]]) -> str: ...
    async def check(self, batch_id: str) -> Ended | None: ...
    async def find(self, token: str, since: float, count: int, known: set[str]) -> str | None: ...


class OpenAIBatches:
    """OpenAI: upload a JSONL file, create a batch on it; results come in an output and an error file.
    Limits: 50,000 requests or 200 MB per input file."""

    max_requests, max_bytes, overhead = 50_000, 200_000_000, 0
    ended = frozenset({"completed", "failed", "expired", "cancelled"})

    def __init__(self, model: Any) -> None:
        self.model = model

    def request(self, messages: list[Message], params: GenParams) -> dict[str, Any]:
        return openai_request(self.model.name, messages, params)

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        row = {"custom_id": custom_id, "method": "POST", "url": OPENAI_ENDPOINT, "body": body}
        return json.dumps(row, ensure_ascii=False).encode() + b"\n"

    def size(self, custom_id: str, body: dict[str, Any]) -> int:
        return len(self.line(custom_id, body))

    def completion(self, response: dict[str, Any], params: GenParams) -> Completion:
        return completion_from_openai(response, params)

    async def create(self, token: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
        client = self.model.client()
        content = b"".join(self.line(cid, body) for cid, body in rows)
        file = await client.files.create(file=(f"factory-{token}.jsonl", content, "application/jsonl"), purpose="batch")
        batch = await client.batches.create(input_file_id=file.id, endpoint=OPENAI_ENDPOINT, completion_window="24h",
                                            metadata={TOKEN_KEY: token})
        return batch.id

    async def check(self, batch_id: str) -> Ended | None:
        client = self.model.client()
        batch = await client.batches.retrieve(batch_id)
        if batch.status not in self.ended:
            return None
        outcomes: dict[str, Outcome] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):  # successes, then errored and expired rows
            if file_id:
                content = (await client.files.content(file_id)).content
                for line in content.splitlines():
                    with contextlib.suppress(ValueError, AttributeError, TypeError):  # a bad line: no outcome
                        row = json.loads(line)
                        outcomes[row["custom_id"]] = _openai_outcome(row)
        if batch.status == "failed":
            reasons = [e.message or e.code or "" for e in (batch.errors.data or [])] if batch.errors else []
            return Ended(outcomes, f"batch {batch_id} failed: {'; '.join(filter(None, reasons)) or 'no reason given'}")
        if batch.status in ("cancelled", "expired"):
            return Ended(outcomes, f"batch {batch_id} {batch.status} before this request ran")
        return Ended(outcomes, f"batch {batch_id} returned no result for this request")

    async def find(self, token: str, since: float, count: int, known: set[str]) -> str | None:
        """The batch created for this token: OpenAI batches carry it in their metadata."""
        async for batch in self.model.client().batches.list(limit=100):  # newest first
            if batch.created_at < since - CLOCK_SKEW_S:
                return None
            if (batch.metadata or {}).get(TOKEN_KEY) == token:
                return batch.id
        return None


def _openai_outcome(row: dict[str, Any]) -> Outcome:
    """One line of an output or error file."""
    response = row.get("response") or {}
    body = response.get("body")
    if response.get("status_code") == 200 and isinstance(body, dict):
        return Outcome(response=body)
    if response.get("status_code"):
        error = (body or {}).get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else body
        return Outcome(error=f"HTTP {response['status_code']}: {message or 'no message'}")
    error = row.get("error") or {}
    return Outcome(error=f"{error.get('code') or 'error'}: {error.get('message') or 'no message'}")


class AnthropicBatches:
    """Anthropic: Message Batches, one request carrying every row; results stream as JSONL.
    Limits: 100,000 requests or 256 MB per batch."""

    max_requests, max_bytes, overhead = 100_000, 256_000_000, len('{"requests":[]}')

    def __init__(self, model: Any) -> None:
        self.model = model

    def request(self, messages: list[Message], params: GenParams) -> dict[str, Any]:
        return anthropic_request(self.model.name, messages, params)

    def size(self, custom_id: str, body: dict[str, Any]) -> int:
        return len(json.dumps({"custom_id": custom_id, "params": body}, ensure_ascii=False).encode()) + 1  # and a comma

    def completion(self, response: dict[str, Any], params: GenParams) -> Completion:
        return completion_from_anthropic(response)

    async def create(self, token: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
        requests = [{"custom_id": cid, "params": body} for cid, body in rows]
        return (await self.model.client().messages.batches.create(requests=requests)).id

    async def check(self, batch_id: str) -> Ended | None:
        batches = self.model.client().messages.batches
        batch = await batches.retrieve(batch_id)
        if batch.processing_status != "ended":
            return None
        outcomes: dict[str, Outcome] = {}
        async for item in await batches.results(batch_id):
            result = item.result
            if result.type == "succeeded":
                outcomes[item.custom_id] = Outcome(response=result.message.model_dump(mode="json"))
            elif result.type == "errored":
                error = result.error.error
                outcomes[item.custom_id] = Outcome(error=f"{error.type}: {error.message}")
            else:
                outcomes[item.custom_id] = Outcome(error=f"the request was {result.type} before it ran")
        return Ended(outcomes, f"batch {batch_id} returned no result for this request")

    async def find(self, token: str, since: float, count: int, known: set[str]) -> str | None:
        """Message Batches carry no metadata, so the match is a guess: the earliest batch we do not
        know yet, created after the intent (less CLOCK_SKEW_S), with the same number of requests."""
        found: str | None = None
        async for batch in self.model.client().messages.batches.list(limit=100):  # newest first
            if batch.created_at.timestamp() < since - CLOCK_SKEW_S:
                break
            total = sum(batch.request_counts.model_dump().values())
            if batch.id not in known and total == count:
                found = batch.id
        return found


PROVIDERS: dict[str, type[OpenAIBatches | AnthropicBatches]] = {
    "openai": OpenAIBatches,
    "anthropic": AnthropicBatches,
}


@dataclass
class PendingBatch:
    token: str
    custom_ids: list[str]
    created: float
    batch_id: str | None = None
    busy: bool = False  # a create() call for it is in flight
