"""A real local HTTP server that speaks enough of the OpenAI and Anthropic APIs for the official SDKs.

    with FakeAPIServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")    # OpenAI: POST /v1/chat/completions
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)         # Anthropic: POST /v1/messages
        srv.inject("503", "drop")                                 # the next two requests fail

Batch APIs: OpenAI Files (/v1/files) and Batches (/v1/batches), Anthropic Message Batches
(/v1/messages/batches). A batch ends `batch_delay` seconds after its creation, computed lazily when a
client looks; its rows are answered by the same responder as the online endpoints, in reverse order.
`fail_batch_rows` makes chosen rows fail; `created_batches` and `uploads` say what clients sent.

As its own process, for benchmarks (prints its URL as the first line, serves until killed):

    python tests/server.py --port 0 --latency 0.2 --jitter 0.05 --fault-rate 0.1 --seed 0
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import math
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["BatchRecord", "FakeAPIServer", "Reply", "Responder", "default_responder", "main"]


@dataclass
class Reply:
    text: str
    finish_reason: str = "stop"  # OpenAI's words; /v1/messages maps stop -> end_turn, length -> max_tokens
    logprobs: dict[str, float] | None = None  # first-token candidates and their logprobs


Responder = Callable[[list[dict], dict], "str | Reply"]
RowMatch = Callable[[str, dict], bool]  # (custom_id, request body) -> fail this row?
Answer = tuple[int, dict[str, str], "dict | bytes"]  # status, extra headers, JSON body or raw bytes

RANDOM_FAULTS = ("429", "500", "503", "drop", "hang:5")  # what `fault_rate` draws from, equally likely
OPENAI_BATCH_MAX_REQUESTS = 50_000
OPENAI_BATCH_MAX_BYTES = 200 * 1024 * 1024
ANTHROPIC_BATCH_MAX_REQUESTS = 100_000
ANTHROPIC_BATCH_MAX_BYTES = 256 * 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # Anthropic's rule for a Message Batches custom_id
BATCH_FAULTS = ("errored", "expired", "failed")
DAY_S = 24 * 3600


def default_responder(messages: list[dict], body: dict) -> str:
    """A deterministic reply derived from the last user message."""
    last = next((_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    return f"Reply to: {last[:60]}"


@dataclass
class BatchRecord:
    """One batch a client created: which provider, its id, and the custom_ids of its rows in order."""

    provider: str  # "openai" or "anthropic"
    id: str
    custom_ids: list[str]
    metadata: dict[str, str] | None = None


@dataclass
class _RowFault:
    match: RowMatch
    kind: str
    times: int | None  # attempts of each matching custom_id that fail; None: every attempt
    hits: Counter[str] = field(default_factory=Counter)


class FakeAPIServer:
    """ThreadingHTTPServer on 127.0.0.1 (any free port), served from a daemon thread.

    latency, jitter: each chat/messages request waits uniform [latency - jitter, latency + jitter] s.
    fault_rate: each chat/messages request independently gets a fault drawn from RANDOM_FAULTS
        (429 carries Retry-After: 1) with this probability; `seed` seeds the draws.
    batch_delay: seconds from a batch's creation until it has ended.
    rate_limit_headers: answer chat/messages with the providers' rate-limit headers for `rpm`/`tpm`,
        counted over a sliding `window_s` (60 s, like the real per-minute limits; tests may shrink it).
    enforce_rpm: answer 429 (with Retry-After) once this many requests arrived within `window_s`.
    record: keep every request in `requests`, with its arrival time `at` (turn off for long benchmarks).
    tokens: how usage counts a text's tokens (default: its whitespace-separated words; a test of dense
        text can count one per character, as real tokenizers roughly do for CJK).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        latency: float = 0.0,
        *,
        jitter: float = 0.0,
        fault_rate: float = 0.0,
        seed: int | None = None,
        batch_delay: float = 0.0,
        rate_limit_headers: bool = False,
        rpm: int = 10_000,
        tpm: int = 2_000_000,
        enforce_rpm: int | None = None,
        window_s: float = 60.0,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        tokens: Callable[[str], int] | None = None,
        prompt_cache: bool = False,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {fault_rate}")
        self.responder = responder or default_responder
        self.latency, self.jitter, self.fault_rate = latency, jitter, fault_rate
        self.batch_delay = batch_delay
        self.rate_limit_headers, self.rpm, self.tpm = rate_limit_headers, rpm, tpm
        self.enforce_rpm, self.window_s = enforce_rpm, window_s
        self.host, self.port, self.record = host, port, record
        self.tokens = tokens or _words
        # A provider's prompt cache, simplified: the system text is the cached prefix. OpenAI caches it
        # by itself; Anthropic only where the request marks it with cache_control.
        self.prompt_cache, self._prefixes = prompt_cache, set()
        self.url = ""
        self.requests: list[dict] = []  # {"method", "path", "query", "headers" (lower-cased keys), "body"}
        self.counts: Counter[str] = Counter()  # chat/messages outcomes: "200", "429", "drop", ...
        self.in_flight = self.peak_in_flight = 0  # chat/messages requests being answered now; the most at once
        self.uploads: list[dict] = []  # {"id", "purpose", "filename", "bytes"} per file upload
        self.created_batches: list[BatchRecord] = []
        self._faults: deque[str] = deque()
        self._rng = random.Random(seed)
        self._window: deque[tuple[float, int]] = deque()  # (arrival, tokens) of accepted chat requests
        self._lock = threading.Lock()
        self._batch_lock = threading.RLock()
        self._files: dict[str, dict] = {}  # id -> file object plus "_content"
        self._openai_batches: dict[str, dict] = {}
        self._anthropic_batches: dict[str, dict] = {}
        self._row_faults: list[_RowFault] = []
        self._raw_bodies: deque[str] = deque()
        self.down = False
        self._httpd: _HTTPServer | None = None

    # --- test controls ---------------------------------------------------------------------------

    def inject(self, *faults: str) -> None:
        """Queue faults for the next requests (any route), one each, in order: a status code such as
        "500", "503" or "429" (sent with Retry-After: 0), "drop" (close the socket, no response),
        "hang:SECONDS"."""
        for fault in faults:
            if not (fault == "drop" or fault.startswith("hang:") or (fault.isdigit() and int(fault) >= 400)):
                raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._faults.extend(faults)

    def inject_body(self, status: int, body: str) -> None:
        """Queue an error answer with this raw (not JSON) body; "{key}" in it becomes the key the request
        carried, as servers that echo it do."""
        with self._lock:
            self._raw_bodies.append(body)
            self._faults.append(f"raw:{status}")

    def fail_batch_rows(self, match: str | RowMatch, kind: str = "errored", times: int | None = 1) -> None:
        """Make batch rows fail when their batch ends: `match` is a custom_id or a predicate
        (custom_id, request body) -> bool. `kind`: "errored" (OpenAI: a 500 in the error file;
        Anthropic: an errored result), "expired" (OpenAI: the batch expires, the row goes to the error
        file as batch_expired; Anthropic: an expired result) or "failed" (OpenAI only: the whole batch
        fails validation). Only the first `times` attempts of each custom_id fail (None: all)."""
        if kind not in BATCH_FAULTS:
            raise ValueError(f"unknown batch fault {kind!r}; use one of {', '.join(BATCH_FAULTS)}")
        predicate = match if callable(match) else (lambda custom_id, body, wanted=match: custom_id == wanted)
        with self._batch_lock:
            self._row_faults.append(_RowFault(predicate, kind, times))

    def batch_count(self, provider: str | None = None) -> int:
        """Batches created (by one provider, or in all)."""
        return len(self.rows_per_batch(provider))

    def rows_per_batch(self, provider: str | None = None) -> list[int]:
        """The row count of each created batch, in creation order."""
        with self._batch_lock:
            return [len(b.custom_ids) for b in self.created_batches if provider in (None, b.provider)]

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def go_down(self) -> None:
        """An outage: stop listening (new connections are refused) and drop every request that
        arrives on a connection already open, until `come_back`."""
        self.down = True
        self.stop()

    def outage_after(self, requests: int, seconds: float) -> threading.Thread:
        """In the background: once `requests` chat requests were counted, go down for `seconds`, then
        come back. Join the thread to wait until it is back."""
        def run() -> None:
            while sum(self.counts.values()) < requests:
                time.sleep(0.01)
            self.go_down()
            time.sleep(seconds)
            self.come_back()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def come_back(self) -> None:
        """Listen again on the same port and answer as before."""
        self.port = int(self.url.rsplit(":", 1)[1])
        self.down = False
        self.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- routing ---------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer | None:
        """Answer one request as (status, extra headers, JSON or bytes), or None to drop the connection."""
        if self.down:
            return None
        parts = urlsplit(target)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        chat = method == "POST" and path in ("/v1/chat/completions", "/v1/messages")
        try:
            body = self._parse_body(headers, raw)
        except ValueError as exc:
            return _error(path, 400, f"could not parse the request body: {exc}")
        with self._lock:
            if self.record:
                self.requests.append({"method": method, "path": path, "query": query, "headers": headers, "body": body,
                                      "at": time.monotonic()})
            fault = self._faults.popleft() if self._faults else ""
            if not fault and chat and self.fault_rate and self._rng.random() < self.fault_rate:
                fault = self._rng.choice(RANDOM_FAULTS)
                fault = "429:1" if fault == "429" else fault
            delay = max(0.0, self._rng.uniform(self.latency - self.jitter, self.latency + self.jitter)) if chat else 0.0
            if chat:
                self.counts[fault.partition(":")[0] or "ok"] += 1
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if fault == "drop":
            return self._leave(chat, None)
        time.sleep(delay + (float(fault.removeprefix("hang:")) if fault.startswith("hang:") else 0.0))
        return self._leave(chat, self._answer(method, path, query, headers, body, fault, chat))

    def _leave(self, chat: bool, answer: Answer | None) -> Answer | None:
        if chat:
            with self._lock:
                self.in_flight -= 1
        return answer

    def _answer(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: dict, fault: str,
                chat: bool) -> Answer | None:
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key and path.startswith("/v1/"):
            return _error(path, 401, "missing API key")
        if fault.startswith("raw:"):
            with self._lock:
                text = self._raw_bodies.popleft().replace("{key}", key)
            return int(fault[4:]), {}, text.encode()
        if fault[:3].isdigit():
            status, _, retry_after = fault.partition(":")
            # Like some real servers, a 401 echoes the key it was given; backends must not pass it on.
            message = f"Incorrect API key provided: {key}" if status == "401" else f"{HTTPStatus(int(status)).phrase} (injected)"
            answer = _error(path, int(status), message, {"Retry-After": retry_after or "0"} if status == "429" else {})
            return self._with_limits(path, answer) if chat else answer
        if chat:
            return self._online(path, headers, body)
        return self._route(method, path, query, headers, body)

    def _parse_body(self, headers: dict[str, str], raw: bytes) -> dict:
        content_type = headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            return _multipart(content_type, raw)
        value = json.loads(raw) if raw.strip() else {}
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object")
        return value

    def _route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: dict) -> Answer:
        segments = path.strip("/").split("/")
        routes: dict[tuple[str, ...], Callable[..., Answer]] = {
            ("POST", "v1", "files"): lambda: self._upload(body),
            ("GET", "v1", "files", "*"): lambda: self._file(segments[2]),
            ("GET", "v1", "files", "*", "content"): lambda: self._file_content(segments[2]),
            ("POST", "v1", "batches"): lambda: self._create_openai_batch(headers, body),
            ("GET", "v1", "batches"): lambda: self._list(self._openai_batches, self._openai_view, query, "after"),
            ("GET", "v1", "batches", "*"): lambda: self._openai_batch(segments[2]),
            ("POST", "v1", "batches", "*", "cancel"): lambda: self._openai_batch(segments[2], cancel=True),
            ("POST", "v1", "messages", "batches"): lambda: self._create_anthropic_batch(headers, body),
            ("GET", "v1", "messages", "batches"): lambda: self._list(
                self._anthropic_batches, self._anthropic_view, query, "after_id"),
            ("GET", "v1", "messages", "batches", "*"): lambda: self._anthropic_batch(segments[3]),
            ("POST", "v1", "messages", "batches", "*", "cancel"): lambda: self._anthropic_batch(segments[3], cancel=True),
            ("GET", "v1", "messages", "batches", "*", "results"): lambda: self._anthropic_results(segments[3]),
        }
        for pattern, route in routes.items():
            if pattern[0] == method and len(pattern) == len(segments) + 1 and all(
                p in ("*", s) for p, s in zip(pattern[1:], segments, strict=True)
            ):
                return route()
        return _error(path, 404, f"no route for {method} {path}")

    # --- online chat -----------------------------------------------------------------------------

    def _online(self, path: str, headers: dict[str, str], body: dict) -> Answer:
        """POST /v1/chat/completions or /v1/messages, with rate limiting and rate-limit headers."""
        tokens = _prompt_tokens(path, body, self.tokens) + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0][0] <= now - self.window_s:
                self._window.popleft()
            limited = self.enforce_rpm is not None and len(self._window) >= self.enforce_rpm
            if limited:
                wait = self._window[0][0] + self.window_s - now
                self.counts.update({"429": 1, "ok": -1})
            else:
                self._window.append((now, tokens))
        if limited:
            answer = _error(path, 429, f"Rate limit reached: {self.enforce_rpm} requests per {self.window_s:g} s",
                            {"Retry-After": str(max(1, math.ceil(wait)))})
            return self._with_limits(path, answer)
        return self._with_limits(path, self._chat(path, headers, body))

    def _with_limits(self, path: str, answer: Answer) -> Answer:
        if not self.rate_limit_headers:
            return answer
        with self._lock:
            requests_left = max(0, self.rpm - len(self._window))
            tokens_left = max(0, self.tpm - sum(t for _, t in self._window))
            reset_s = self._window[0][0] + self.window_s - time.monotonic() if self._window else 0.0
        status, headers, body = answer
        if path == "/v1/messages":
            reset = _rfc3339(time.time() + max(0.0, reset_s))
            p = "anthropic-ratelimit-"
            limits = {p + "requests-limit": self.rpm, p + "requests-remaining": requests_left, p + "requests-reset": reset,
                      p + "tokens-limit": self.tpm, p + "tokens-remaining": tokens_left, p + "tokens-reset": reset}
        else:
            reset = f"{max(0.0, reset_s):.3f}s"
            limits = {"x-ratelimit-limit-requests": self.rpm, "x-ratelimit-remaining-requests": requests_left,
                      "x-ratelimit-reset-requests": reset, "x-ratelimit-limit-tokens": self.tpm,
                      "x-ratelimit-remaining-tokens": tokens_left, "x-ratelimit-reset-tokens": reset}
        return status, {**headers, **{k: str(v) for k, v in limits.items()}}, body

    def _chat(self, path: str, headers: dict[str, str], body: dict) -> Answer:
        """One chat completion or message, as the online endpoint and every batch row answer it."""
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(path, 400, "model and messages are required")
        if (bad := _bad_roles(path, body["messages"])) is not None:
            return _error(path, 400, bad)
        if path == "/v1/messages":
            sampling = [p for p in ("temperature", "top_p", "top_k") if p in body]
            if sampling and headers.get("anthropic-version", "") >= "2026-10-21":
                return _error(path, 400, f"{sampling[0]}: Extra inputs are not permitted")
            messages = ([{"role": "system", "content": _text(body["system"])}] if "system" in body else []) + body["messages"]
        else:
            messages = body["messages"]
            if (refused := _reasoning_refusal(body)) is not None:
                return _error(path, 400, refused)
        cached = self._cached_prefix(path, body, messages)

        reply = self.responder(messages, body)
        reply = Reply(reply) if isinstance(reply, str) else reply
        words, limit = reply.text.split(), body.get("max_tokens") or body.get("max_completion_tokens")
        if limit and len(words) > limit:
            reply = Reply(" ".join(words[:limit]), "length", reply.logprobs)
        build = _anthropic_message if path == "/v1/messages" else _openai_completion
        return 200, {}, build(body, reply, _prompt_tokens(path, body, self.tokens), cached)

    def _cached_prefix(self, path: str, body: dict, messages: list[dict]) -> tuple[int, int]:
        """(tokens read from the prompt cache, tokens written to it) for this request."""
        if not self.prompt_cache or not messages or messages[0]["role"] != "system":
            return 0, 0
        if path == "/v1/messages" and not any(isinstance(b, dict) and b.get("cache_control")
                                              for b in (body["system"] if isinstance(body["system"], list) else [])):
            return 0, 0
        prefix = _text(messages[0]["content"])
        with self._lock:
            hit = prefix in self._prefixes
            self._prefixes.add(prefix)
        n = self.tokens(prefix)
        return (n, 0) if hit else (0, n if path == "/v1/messages" else 0)

    # --- OpenAI Files ----------------------------------------------------------------------------

    def _upload(self, form: dict) -> Answer:
        content, purpose = form.get("file"), form.get("purpose")
        if not isinstance(content, bytes) or not purpose:
            return _error("/v1/files", 400, "a multipart form with the fields 'purpose' and 'file' is required")
        file = self._store_file(content, form.get("filename") or "upload.jsonl", str(purpose))
        with self._batch_lock:
            self.uploads.append({k: file[k] for k in ("id", "purpose", "filename", "bytes")})
        return 200, {}, _public(file)

    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict:
        file = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed", "expires_at": None, "status_details": None, "_content": content}
        with self._batch_lock:
            self._files[file["id"]] = file
        return file

    def _file(self, file_id: str) -> Answer:
        with self._batch_lock:
            file = self._files.get(file_id)
        return (200, {}, _public(file)) if file else _error("/v1/files", 404, f"No such File object: {file_id}")

    def _file_content(self, file_id: str) -> Answer:
        with self._batch_lock:
            file = self._files.get(file_id)
        return (200, {}, file["_content"]) if file else _error("/v1/files", 404, f"No such File object: {file_id}")

    # --- OpenAI Batches --------------------------------------------------------------------------

    def _create_openai_batch(self, headers: dict[str, str], body: dict) -> Answer:
        path = "/v1/batches"
        missing = [k for k in ("input_file_id", "endpoint", "completion_window") if not body.get(k)]
        if missing:
            return _error(path, 400, f"Missing required parameter: '{missing[0]}'")
        with self._batch_lock:
            file = self._files.get(body["input_file_id"])
        if file is None:
            return _error(path, 400, f"Invalid 'input_file_id': {body['input_file_id']}: no such file")
        rows, errors = _openai_input(file["_content"], body["endpoint"])
        now = time.time()
        batch = {
            "id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": body["endpoint"],
            "errors": None, "input_file_id": file["id"], "completion_window": body["completion_window"],
            "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": int(now),
            "in_progress_at": None, "expires_at": int(now) + DAY_S, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(rows), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"), "model": rows[0]["body"].get("model") if rows else None,
            "_rows": rows, "_errors": errors, "_t0": time.monotonic(), "_headers": headers,
        }
        with self._batch_lock:
            self._openai_batches[batch["id"]] = batch
            self.created_batches.append(BatchRecord("openai", batch["id"], [r["custom_id"] for r in rows],
                                                    body.get("metadata")))
        return 200, {}, _public(batch)

    def _openai_batch(self, batch_id: str, cancel: bool = False) -> Answer:
        with self._batch_lock:
            batch = self._openai_batches.get(batch_id)
            if batch is None:
                return _error("/v1/batches", 404, f"No batch found with id '{batch_id}'.")
            if cancel and batch["status"] in ("validating", "in_progress"):
                self._advance_openai(batch)
                if batch["status"] == "in_progress":
                    batch.update(status="cancelling", cancelling_at=int(time.time()))
                    return 200, {}, _public(batch)
            return 200, {}, self._openai_view(batch)

    def _openai_view(self, batch: dict) -> dict:
        self._advance_openai(batch)
        return _public(batch)

    def _advance_openai(self, batch: dict) -> None:
        """Move a batch on to where it would be by now; rows are answered once, when it ends."""
        with self._batch_lock:
            now = time.time()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                return
            if batch["status"] == "cancelling":
                batch.update(status="cancelled", cancelled_at=int(now))
                self._openai_files(batch, [], [_openai_row_error(r, "batch_cancelled", "The batch was cancelled.")
                                               for r in batch["_rows"]])
                return
            if batch["_errors"] or self._batch_fails(batch["_rows"]):
                errors = batch["_errors"] or [{"code": "injected_failure", "message": "The batch failed (injected).",
                                               "param": None, "line": None}]
                batch.update(status="failed", failed_at=int(now), errors={"object": "list", "data": errors})
                return
            batch.update(status="in_progress", in_progress_at=batch["in_progress_at"] or int(now))
            if time.monotonic() - batch["_t0"] < self.batch_delay:
                return
            output, failed, expired = [], [], False
            for row in reversed(batch["_rows"]):  # not input order: clients must match by custom_id
                kind = self._row_fault(row["custom_id"], row["body"])
                if kind == "expired":
                    expired = True
                    failed.append(_openai_row_error(
                        row, "batch_expired", "This request could not be executed before the completion window expired."))
                    continue
                if kind == "errored":
                    answer = _error("/v1/chat/completions", 500, "The server had an error processing your request (injected).")
                else:
                    answer = self._chat(row["url"], batch["_headers"], row["body"])
                status, _, body = answer
                line = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": row["custom_id"],
                        "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body}, "error": None}
                (output if status == 200 else failed).append(line)
            self._openai_files(batch, output, failed)
            stamp = {"expired_at": int(now)} if expired else {"finalizing_at": int(now), "completed_at": int(now)}
            batch.update(status="expired" if expired else "completed", **stamp)

    def _openai_files(self, batch: dict, output: list[dict], failed: list[dict]) -> None:
        for key, lines in (("output_file_id", output), ("error_file_id", failed)):
            if lines:
                content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
                batch[key] = self._store_file(content, f"{batch['id']}_{key[:-8]}.jsonl", "batch_output")["id"]
        batch["request_counts"] = {"total": len(batch["_rows"]), "completed": len(output), "failed": len(failed)}

    # --- Anthropic Message Batches ---------------------------------------------------------------

    def _create_anthropic_batch(self, headers: dict[str, str], body: dict) -> Answer:
        path = "/v1/messages/batches"
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return _error(path, 400, "requests: Field required and must be a non-empty list")
        if len(requests) > ANTHROPIC_BATCH_MAX_REQUESTS:
            return _error(path, 400, f"requests: at most {ANTHROPIC_BATCH_MAX_REQUESTS} requests per batch")
        seen: set[str] = set()
        for i, request in enumerate(requests):
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return _error(path, 400, f"requests.{i}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'")
            if custom_id in seen:
                return _error(path, 400, f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}")
            if not isinstance(request.get("params"), dict):
                return _error(path, 400, f"requests.{i}.params: Field required")
            seen.add(custom_id)
        now = time.time()
        batch = {
            "id": f"msgbatch_{uuid.uuid4().hex[:24]}", "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None, "created_at": _rfc3339(now), "expires_at": _rfc3339(now + DAY_S),
            "archived_at": None, "cancel_initiated_at": None, "results_url": None,
            "_requests": requests, "_results": None, "_t0": time.monotonic(), "_headers": headers,
        }
        with self._batch_lock:
            self._anthropic_batches[batch["id"]] = batch
            self.created_batches.append(BatchRecord("anthropic", batch["id"], [r["custom_id"] for r in requests]))
        return 200, {}, _public(batch)

    def _anthropic_batch(self, batch_id: str, cancel: bool = False) -> Answer:
        with self._batch_lock:
            batch = self._anthropic_batches.get(batch_id)
            if batch is None:
                return _error("/v1/messages/batches", 404, f"No message batch found with id '{batch_id}'.")
            self._advance_anthropic(batch)
            if cancel and batch["processing_status"] == "in_progress":
                batch.update(processing_status="canceling", cancel_initiated_at=_rfc3339(time.time()))
            return 200, {}, _public(batch)

    def _anthropic_view(self, batch: dict) -> dict:
        self._advance_anthropic(batch)
        return _public(batch)

    def _anthropic_results(self, batch_id: str) -> Answer:
        path = "/v1/messages/batches"
        with self._batch_lock:
            batch = self._anthropic_batches.get(batch_id)
            if batch is None:
                return _error(path, 404, f"No message batch found with id '{batch_id}'.")
            self._advance_anthropic(batch)
            if batch["_results"] is None:
                return _error(path, 404, f"Message batch {batch_id} has not ended; its results are not available yet.")
            return 200, {}, b"".join(json.dumps(line).encode() + b"\n" for line in batch["_results"])

    def _advance_anthropic(self, batch: dict) -> None:
        with self._batch_lock:
            if batch["processing_status"] == "ended":
                return
            canceled = batch["processing_status"] == "canceling"
            if not canceled and time.monotonic() - batch["_t0"] < self.batch_delay:
                return
            results, counts = [], Counter[str]()
            for request in reversed(batch["_requests"]):  # not input order: clients must match by custom_id
                result = {"type": "canceled"} if canceled else self._anthropic_result(batch, request)
                counts[result["type"]] += 1
                results.append({"custom_id": request["custom_id"], "result": result})
            batch.update(
                processing_status="ended", ended_at=_rfc3339(time.time()), _results=results,
                results_url=f"{self.url}/v1/messages/batches/{batch['id']}/results",
                request_counts={"processing": 0, **{k: counts[k] for k in ("succeeded", "errored", "canceled", "expired")}},
            )

    def _anthropic_result(self, batch: dict, request: dict) -> dict:
        kind = self._row_fault(request["custom_id"], request["params"])
        if kind == "expired":
            return {"type": "expired"}
        if kind == "errored":
            status, body = 500, {"type": "error", "error": {"type": "api_error", "message": "Internal server error (injected)."}}
        else:
            status, _, body = self._chat("/v1/messages", batch["_headers"], request["params"])
        if status != 200:
            return {"type": "errored", "error": {**body, "request_id": f"req_{uuid.uuid4().hex[:24]}"}}
        return {"type": "succeeded", "message": body}

    # --- shared batch helpers --------------------------------------------------------------------

    def _row_fault(self, custom_id: str, body: dict) -> str | None:
        """The injected fault for this attempt of a row ("errored" or "expired"), or None."""
        for fault in self._row_faults:
            more = fault.times is None or fault.hits[custom_id] < fault.times
            if fault.kind != "failed" and more and fault.match(custom_id, body):
                fault.hits[custom_id] += 1
                return fault.kind
        return None

    def _batch_fails(self, rows: list[dict]) -> bool:
        """Whether an injected "failed" fault takes down this whole batch (each match counts an attempt)."""
        fails = False
        for fault in self._row_faults:
            if fault.kind == "failed":
                for row in rows:
                    cid = row["custom_id"]
                    if fault.match(cid, row["body"]) and (fault.times is None or fault.hits[cid] < fault.times):
                        fault.hits[cid] += 1
                        fails = True
        return fails

    def _list(self, batches: dict[str, dict], view: Callable[[dict], dict], query: dict[str, str], cursor: str) -> Answer:
        """A page of batches, newest first, after the cursor's id."""
        with self._batch_lock:
            ordered = list(reversed(batches.values()))
            ids = [b["id"] for b in ordered]
            start = ids.index(query[cursor]) + 1 if query.get(cursor) in ids else 0
            limit = max(1, int(query.get("limit") or 20))
            page = [view(b) for b in ordered[start : start + limit]]
        return 200, {}, {"object": "list", "data": page, "has_more": start + limit < len(ordered),
                         "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


def _openai_input(content: bytes, endpoint: str) -> tuple[list[dict], list[dict]]:
    """The rows of a batch input file, and the validation errors that fail the batch (as the API checks)."""
    rows: list[dict] = []
    errors: list[dict] = []
    seen: set[str] = set()
    if len(content) > OPENAI_BATCH_MAX_BYTES:
        errors.append({"code": "too_large", "message": "The input file is larger than 200 MB.", "param": None, "line": None})
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            errors.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                           "param": None, "line": number})
            continue
        custom_id = row.get("custom_id") if isinstance(row, dict) else None
        if not isinstance(custom_id, str) or custom_id in seen or row.get("url") != endpoint or row.get("method") != "POST":
            errors.append({"code": "invalid_request", "message": "Each line needs a unique custom_id, method POST and "
                           f"url {endpoint}.", "param": None, "line": number})
            continue
        seen.add(custom_id)
        rows.append(row)
    if len(rows) > OPENAI_BATCH_MAX_REQUESTS:
        errors.append({"code": "too_many_requests", "message": f"At most {OPENAI_BATCH_MAX_REQUESTS} requests per batch.",
                       "param": None, "line": None})
    if not rows and not errors:
        errors.append({"code": "empty_file", "message": "The input file has no requests.", "param": None, "line": None})
    return rows, errors


def _openai_row_error(row: dict, code: str, message: str) -> dict:
    return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": row["custom_id"], "response": None,
            "error": {"code": code, "message": message}}


def _multipart(content_type: str, raw: bytes) -> dict:
    """A multipart/form-data body as {name: text} with file fields as bytes (plus "filename")."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    if not message.is_multipart():
        raise ValueError("malformed multipart/form-data")
    form: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            form["filename"] = part.get_filename()
            form[name] = payload
        else:
            form[name] = payload.decode()
    return form


def _public(obj: dict) -> dict:
    """An object as the API shows it, without the server's own "_" fields."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _bad_roles(path: str, messages: list) -> str | None:
    """What each API says about a turn it does not take: Anthropic takes the system prompt only as the
    `system` parameter, and turns of the user and the assistant only; OpenAI takes its known roles."""
    allowed = ("user", "assistant") if path == "/v1/messages" else ("system", "developer", "user", "assistant", "tool")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in allowed:
            role = m.get("role") if isinstance(m, dict) else None
            return f"messages.{i}.role: Input should be {' or '.join(repr(r) for r in allowed)} (got {role!r})"
    return None


def _text(content: Any) -> str:
    """Message content as text: a string, or a list of content blocks."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content)


REASONING = re.compile(r"^(o\d|gpt-5)(?!-chat)")  # OpenAI's reasoning models: o1, o3, o4-mini, gpt-5, gpt-5-mini...


def _reasoning_refusal(body: dict) -> str | None:
    """What OpenAI's 400 says when a reasoning model gets a parameter it rejects; None if none."""
    if not REASONING.match(str(body.get("model"))):
        return None
    if "max_tokens" in body:
        return "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    if "temperature" in body and body["temperature"] != 1:
        return (f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. "
                "Only the default (1) value is supported.")
    for param in ("top_p", "logprobs", "top_logprobs", "stop"):
        if param in body:
            return f"Unsupported parameter: '{param}' is not supported with this model."
    return None


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(path: str, body: dict, tokens: Callable[[str], int] = _words) -> int:
    messages = list(body.get("messages") or [])
    if path == "/v1/messages" and "system" in body:
        messages.insert(0, {"role": "system", "content": body["system"]})
    return sum(tokens(_text(m.get("content", ""))) for m in messages if isinstance(m, dict))


def _openai_completion(body: dict, reply: Reply, prompt_tokens: int, cached: tuple[int, int] = (0, 0)) -> dict:
    completion_tokens = len(reply.text.split())
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": reply.text},
        "finish_reason": reply.finish_reason,
        "logprobs": None,
    }
    if body.get("logprobs"):
        first = reply.text.split()[0] if reply.text.split() else ""
        candidates = sorted((reply.logprobs or {first: 0.0}).items(), key=lambda kv: -kv[1])
        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in candidates]
        choice["logprobs"] = {
            "content": [{**top[0], "top_logprobs": top[: body.get("top_logprobs") or 0]}],
            "refusal": None,
        }
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            **({"prompt_tokens_details": {"cached_tokens": cached[0]}} if cached[0] else {}),
        },
    }


def _anthropic_message(body: dict, reply: Reply, prompt_tokens: int, cached: tuple[int, int] = (0, 0)) -> dict:
    stop_reason = {"stop": "end_turn", "length": "max_tokens"}.get(reply.finish_reason, reply.finish_reason)
    return {
        "id": f"msg_{time.monotonic_ns()}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens - sum(cached), "output_tokens": len(reply.text.split()),
                  **({"cache_read_input_tokens": cached[0], "cache_creation_input_tokens": cached[1]}
                     if any(cached) else {})},
    }


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


def _error(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    """The provider's own error shape: Anthropic's under /v1/messages, OpenAI's otherwise."""
    kind = _ERROR_TYPES.get(status, "api_error")
    if path.startswith("/v1/messages"):
        body: dict = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "code": str(status)}}
    return status, headers or {}, body


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many concurrent clients connect at once
    fake: FakeAPIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or gave up leaves a broken pipe behind; that is not a server bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    disable_nagle_algorithm = True  # headers and body go out as separate writes; don't wait on delayed ACKs
    server: _HTTPServer

    def do_POST(self) -> None:
        self._answer("POST")

    def do_GET(self) -> None:
        self._answer("GET")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, method: str) -> None:
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.fake.handle(method, self.path, headers, raw)
        if answer is None:
            self.close_connection = True
            return
        status, extra_headers, body = answer
        data, content_type = (body, "application/octet-stream") if isinstance(body, bytes) else (
            json.dumps(body).encode(), "application/json")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `FakeAPIServer.requests` instead."""


def main(argv: list[str] | None = None) -> None:
    """Serve the default responder until killed; the first stdout line is the server's URL."""
    parser = argparse.ArgumentParser(description="The fake OpenAI/Anthropic API server, for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="mean seconds per chat request")
    parser.add_argument("--jitter", type=float, default=0.0, help="latency varies uniformly by +- this")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of chat requests that fail")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch-delay", type=float, default=0.0, help="seconds until a batch ends")
    parser.add_argument("--rate-limit-headers", action="store_true", help="send rate-limit headers for --rpm/--tpm")
    parser.add_argument("--rpm", type=int, default=10_000)
    parser.add_argument("--tpm", type=int, default=2_000_000)
    parser.add_argument("--enforce-rpm", type=int, default=None, help="answer 429 above this many requests per window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the rate-limit window")
    args = parser.parse_args(argv)
    server = FakeAPIServer(
        latency=args.latency, jitter=args.jitter, fault_rate=args.fault_rate, seed=args.seed,
        batch_delay=args.batch_delay, rate_limit_headers=args.rate_limit_headers, rpm=args.rpm, tpm=args.tpm,
        enforce_rpm=args.enforce_rpm, window_s=args.window, host=args.host, port=args.port, record=False,
    ).start()
    print(server.url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
        print(json.dumps({"counts": dict(server.counts)}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
