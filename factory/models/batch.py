"""Batch API backend: a model's calls go through its provider's Batch API, at half the price.

Every request becomes one row with a deterministic custom_id. Rows wait in a queue until there are
enough for a batch (or no request arrives for `flush_s`); a poller checks unfinished batches every
`poll_s` and hands each row's result to whoever waits for it. Everything is written to SQLite
before it is acted on, so a restarted process picks up its batches instead of paying twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import openai

from factory.errors import FactoryError, ModelCallError
from factory.models.base import Completion, GenParams, Message, Model
from factory.models.batch_apis import MAX_BACKOFF, PROVIDERS, SCHEMA, BatchAPI, Ended, Outcome, PendingBatch, custom_id

__all__ = ["BatchModel"]

log = logging.getLogger(__name__)
T = TypeVar("T")

class BatchModel(Model):
    """Runs another backend's calls through its provider's Batch API (50% cheaper, results within 24 h).

    `complete()` waits until the row's batch has ended. State lives in SQLite at `store`; a new
    BatchModel on the same store keeps polling the batches an earlier process submitted, and serves
    results it already has without calling the API. Errored or expired rows are resubmitted up to
    `max_resubmits` times. `aclose()` leaves the provider's batches running.

    A process that dies inside create() leaves an intent with no batch id; the next one looks for the
    batch among the provider's (see `find` of each provider) and creates it only when none matches.
    """

    batched = True

    def __init__(self, inner: Model, store: Path, *, poll_s: float = 30.0, flush_s: float = 2.0,
                 max_requests: int | None = None, max_bytes: int | None = None, max_resubmits: int = 3) -> None:
        api_class = PROVIDERS.get(inner.provider)
        if api_class is None:
            raise FactoryError(f"--batch needs an openai: or anthropic: model; {inner.spec} has no batch API")
        self.inner, self.spec, self.provider, self.prefill = inner, inner.spec, inner.provider, inner.prefill
        self._identity = inner.identity
        self.api: BatchAPI = api_class(inner)
        self.poll_s, self.flush_s, self.max_resubmits = poll_s, flush_s, max_resubmits
        self.max_requests = min(max_requests or self.api.max_requests, self.api.max_requests)
        self.max_bytes = min(max_bytes or self.api.max_bytes, self.api.max_bytes)
        self.store = Path(store)
        self._conn: sqlite3.Connection | None = None
        self._pending: dict[str, tuple[dict[str, Any], int]] = {}  # custom_id -> (body, size), oldest first
        self._pending_bytes = 0
        self._attempts: dict[str, int] = {}  # submissions so far, of rows not yet done
        self._open: dict[str, PendingBatch] = {}  # token -> unfinished batch
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._failed: dict[str, ModelCallError] = {}  # rows that failed for good in this process
        self._done = 0
        self._errors = 0
        self._last_arrival = 0.0
        self._arrived: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._load()
        with contextlib.suppress(RuntimeError):  # inside a running loop: start polling what was loaded
            asyncio.get_running_loop()
            self._start()

    # --- public --------------------------------------------------------------------------------

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        body = self.api.request(messages, params)
        response = await self._result(custom_id(self.provider, self.inner.name, body), body)  # type: ignore[attr-defined]
        return self.api.completion(response, params)

    def snapshot(self) -> dict[str, int]:
        """Rows waiting to be submitted, rows and batches at the provider, rows done, poll errors."""
        return {
            "pending": len(self._pending),
            "submitted": sum(len(b.custom_ids) for b in self._open.values()),
            "batches": len(self._open),
            "done": self._done,
            "errors": self._errors,
        }

    async def aclose(self) -> None:
        """Stop polling and flushing and close the client. Batches keep running at the provider; a
        BatchModel on the same store picks up their results."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(t for t in tasks if t.get_loop() is loop), return_exceptions=True)
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        await self.inner.aclose()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- state ---------------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.store, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # an intent must survive a crash
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(SCHEMA)
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _load(self) -> None:
        """Unfinished batches, rows waiting for resubmission, and the count of rows done."""
        db = self.db
        for token, batch_id, created in db.execute(
            "SELECT token, batch_id, created FROM batches WHERE spec = ? AND status IN ('intent', 'submitted') "
            "ORDER BY created", (self.spec,)
        ).fetchall():
            rows = db.execute("SELECT custom_id, attempt FROM rows WHERE batch_token = ? AND status = 'submitted'",
                              (token,)).fetchall()
            self._attempts.update(rows)
            self._open[token] = PendingBatch(token, [cid for cid, _ in rows], created, batch_id)
        for cid, body, attempt in db.execute(
            "SELECT custom_id, body, attempt FROM rows WHERE spec = ? AND status = 'pending' ORDER BY updated", (self.spec,)
        ):
            self._enqueue(cid, json.loads(body), attempt)
        self._done = db.execute("SELECT COUNT(*) FROM rows WHERE spec = ? AND status IN ('succeeded', 'failed')",
                                (self.spec,)).fetchone()[0]

    def _enqueue(self, cid: str, body: dict[str, Any], attempt: int, size: int | None = None) -> None:
        size = self.api.size(cid, body) if size is None else size
        self._pending[cid] = (body, size)
        self._pending_bytes += size
        self._attempts[cid] = attempt
        self._last_arrival = time.monotonic()
        if self._arrived is not None:
            self._arrived.set()

    async def _result(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        """The response body for one row: stored, or awaited from the batch that has it."""
        self._start()
        if cid in self._failed:
            raise self._failed[cid]
        future = self._futures.get(cid)
        if future is None:
            row = self.db.execute("SELECT status, response, batch_token FROM rows WHERE custom_id = ?", (cid,)).fetchone()
            if row is not None and row[0] == "succeeded":
                return json.loads(row[1])
            future = asyncio.get_running_loop().create_future()
            self._futures[cid] = future
            submitted = row is not None and row[0] == "submitted" and row[2] in self._open
            if cid not in self._pending and not submitted:  # new, or failed in an earlier process: try afresh
                size = self.api.size(cid, body)
                if size + self.api.overhead > self.max_bytes:
                    del self._futures[cid]
                    raise ModelCallError(f"{self.spec}: the request is {size} bytes, more than a whole batch may "
                                         f"hold ({self.max_bytes} bytes); shorten the prompt or run without --batch")
                self._enqueue(cid, body, 0, size)
        return await asyncio.shield(future)

    def _resolve(self, cid: str, response: dict[str, Any] | None = None, error: ModelCallError | None = None) -> None:
        future = self._futures.pop(cid, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(response or {})

    # --- tasks ---------------------------------------------------------------------------------

    def _start(self) -> None:
        """Run the flusher and the poller in the current loop (again, after aclose or in a new loop)."""
        loop = asyncio.get_running_loop()
        if self._tasks and all(not t.done() and t.get_loop() is loop for t in self._tasks):
            return
        for task in self._tasks:
            task.cancel()
        self._futures = {cid: f for cid, f in self._futures.items() if f.get_loop() is loop}
        self._arrived = asyncio.Event()
        if self._pending:
            self._arrived.set()
        self._tasks = [loop.create_task(self._flush_loop()), loop.create_task(self._poll_loop())]

    async def _flush_loop(self) -> None:
        """Submit a batch as soon as one is full, or once no request has arrived for flush_s."""
        assert self._arrived is not None
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            full = len(self._pending) >= self.max_requests or self._pending_bytes + self.api.overhead > self.max_bytes
            idle = time.monotonic() - self._last_arrival
            if not full and idle < self.flush_s:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), self.flush_s - idle)
                continue
            try:
                await self._submit(self._chunk())
            except Exception:  # a bug must not stop the flusher; the poller recovers the batch
                self._errors += 1
                log.exception("%s: unexpected error while submitting a batch", self.spec)

    def _chunk(self) -> list[str]:
        """The oldest pending rows that fit in one batch."""
        ids: list[str] = []
        size = self.api.overhead
        for cid, (_, row) in self._pending.items():
            if len(ids) >= self.max_requests or (ids and size + row > self.max_bytes):
                break
            ids.append(cid)
            size += row
        return ids

    async def _submit(self, ids: list[str]) -> None:
        """Record the intent (a token and its rows), then create the batch and record its id."""
        taken = [(cid, self._pending.pop(cid)) for cid in ids]
        self._pending_bytes -= sum(size for _, (_, size) in taken)
        rows = [(cid, body) for cid, (body, _) in taken]
        batch = PendingBatch(uuid.uuid4().hex, ids, time.time())
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO batches (token, spec, batch_id, status, created, rows) VALUES (?, ?, NULL, "
                           "'intent', ?, ?)", (batch.token, self.spec, batch.created, len(ids)))
                for cid, body in rows:
                    self._attempts[cid] = self._attempts.get(cid, 0) + 1
                    db.execute(
                        "INSERT INTO rows (custom_id, spec, body, batch_token, attempt, status, updated) "
                        "VALUES (?, ?, ?, ?, ?, 'submitted', ?) ON CONFLICT (custom_id) DO UPDATE SET "
                        "batch_token = excluded.batch_token, attempt = excluded.attempt, status = 'submitted', "
                        "updated = excluded.updated",
                        (cid, self.spec, json.dumps(body), batch.token, self._attempts[cid], batch.created),
                    )
        except sqlite3.Error as exc:
            for cid in ids:
                self._resolve(cid, error=ModelCallError(f"{self.spec}: could not record the batch in {self.store}: {exc}"))
            return
        self._open[batch.token] = batch
        with contextlib.suppress(ModelCallError):  # logged and counted; the poller tries again
            await self._create(batch, rows)

    async def _create(self, batch: PendingBatch, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Create the batch at the provider. A transient error raises (the poller retries it later);
        a rejection fails its rows for good."""
        batch.busy = True
        try:
            batch.batch_id = await self._call(self.api.create(batch.token, rows), f"creating a batch of {len(rows)}")
        except ModelCallError as exc:
            if exc.retryable:
                raise
            self._reject(batch, exc)
            return
        finally:
            batch.busy = False
        with self._transaction() as db:
            db.execute("UPDATE batches SET batch_id = ?, status = 'submitted' WHERE token = ?", (batch.batch_id, batch.token))

    def _reject(self, batch: PendingBatch, exc: ModelCallError) -> None:
        """The provider refused the batch (bad request, bad key): its rows fail."""
        with self._transaction() as db:
            db.execute("UPDATE batches SET status = 'rejected' WHERE token = ?", (batch.token,))
            for cid in batch.custom_ids:
                db.execute("UPDATE rows SET status = 'failed', error = ?, updated = ? WHERE custom_id = ?",
                           (str(exc), time.time(), cid))
        del self._open[batch.token]
        for cid in batch.custom_ids:
            error = ModelCallError(str(exc), fatal=exc.fatal, retryable=False, status=exc.status)
            self._failed[cid] = error
            self._attempts.pop(cid, None)
            self._done += 1
            self._resolve(cid, error=error)

    async def _poll_loop(self) -> None:
        """Check every unfinished batch, then wait poll_s (longer after errors, up to MAX_BACKOFF times)."""
        failures = 0
        while True:
            ok = await self._poll_once()
            failures = 0 if ok else failures + 1
            await asyncio.sleep(self.poll_s * min(2**failures, MAX_BACKOFF))

    async def _poll_once(self) -> bool:
        ok = True
        for batch in sorted(self._open.values(), key=lambda b: b.created):
            if batch.busy or batch.token not in self._open:
                continue
            try:
                if batch.batch_id is None:
                    await self._recover(batch)
                    continue
                ended = await self._call(self.api.check(batch.batch_id), f"checking batch {batch.batch_id}")
                if ended is not None:
                    self._settle(batch, ended)
            except ModelCallError as exc:
                ok = False
                if exc.status == 404 and batch.batch_id is not None:  # the provider no longer knows it
                    self._settle(batch, Ended({}, f"batch {batch.batch_id} is gone: {exc}"))
                elif exc.fatal:  # a rejected key: fail the waiters; the batch stays open for a later run
                    for cid in batch.custom_ids:
                        self._resolve(cid, error=exc)
                continue
            except Exception:  # a bug must not stop the poller: every waiter would hang
                ok = False
                self._errors += 1
                log.exception("%s: unexpected error while polling batch %s", self.spec, batch.batch_id)
        return ok

    async def _recover(self, batch: PendingBatch) -> None:
        """An intent with no batch id: the process died in create(), or create() failed. Find the batch
        the provider may have made for it; create it only if there is none."""
        known = {bid for (bid,) in self.db.execute("SELECT batch_id FROM batches WHERE batch_id IS NOT NULL")}
        found = await self._call(self.api.find(batch.token, batch.created, len(batch.custom_ids), known),
                                 "listing batches")
        if found is not None:
            batch.batch_id = found
            with self._transaction() as db:
                db.execute("UPDATE batches SET batch_id = ?, status = 'submitted' WHERE token = ?", (found, batch.token))
            log.info("%s: found batch %s for intent %s", self.spec, found, batch.token)
            return
        bodies = dict(self.db.execute("SELECT custom_id, body FROM rows WHERE batch_token = ?", (batch.token,)))
        await self._create(batch, [(cid, json.loads(bodies[cid])) for cid in batch.custom_ids])

    def _settle(self, batch: PendingBatch, ended: Ended) -> None:
        """Store every row's outcome, resolve its waiters, and queue failed rows for another attempt."""
        now = time.time()
        done: list[tuple[str, dict[str, Any] | None, ModelCallError | None]] = []
        retry: list[str] = []
        with self._transaction() as db:
            for cid in batch.custom_ids:
                outcome = ended.outcomes.get(cid) or Outcome(error=ended.error)
                if outcome.response is not None:
                    db.execute("UPDATE rows SET status = 'succeeded', response = ?, error = NULL, updated = ? "
                               "WHERE custom_id = ?", (json.dumps(outcome.response), now, cid))
                    done.append((cid, outcome.response, None))
                    continue
                attempt = self._attempts.get(cid, 1)
                if attempt <= self.max_resubmits:
                    db.execute("UPDATE rows SET status = 'pending', error = ?, updated = ? WHERE custom_id = ?",
                               (outcome.error, now, cid))
                    retry.append(cid)
                    continue
                db.execute("UPDATE rows SET status = 'failed', error = ?, updated = ? WHERE custom_id = ?",
                           (outcome.error, now, cid))
                message = f"{self.spec}: the batch request failed {attempt} times; the last error: {outcome.error}"
                done.append((cid, None, ModelCallError(message, retryable=False)))
            db.execute("UPDATE batches SET status = 'ended' WHERE token = ?", (batch.token,))
        del self._open[batch.token]
        for cid, response, error in done:
            self._attempts.pop(cid, None)
            self._done += 1
            if error is not None:
                self._failed[cid] = error
            self._resolve(cid, response, error)
        if retry:
            bodies = dict(self.db.execute("SELECT custom_id, body FROM rows WHERE batch_token = ? AND status = 'pending'",
                                          (batch.token,)))
            for cid in retry:
                self._enqueue(cid, json.loads(bodies[cid]), self._attempts.get(cid, 1))
            log.info("%s: resubmitting %d rows of batch %s", self.spec, len(retry), batch.batch_id)

    async def _call(self, call: Awaitable[T], what: str) -> T:
        """An SDK call, its errors as ModelCallError; transient ones are logged and counted."""
        try:
            return await call
        except (openai.APIError, anthropic.APIError) as exc:
            error = self.inner.error(exc)  # type: ignore[attr-defined]
        except (openai.OpenAIError, anthropic.AnthropicError, ValueError) as exc:
            error = ModelCallError(f"{self.spec}: {exc}", retryable=True)
        self._errors += 1
        log.warning("%s: %s failed%s: %s", self.spec, what, " (trying again later)" if error.retryable else "", error)
        raise error
