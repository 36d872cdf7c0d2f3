"""A real local HTTP server that speaks enough of the OpenAI and Anthropic APIs for the official SDKs.

    with FakeAPIServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")    # OpenAI: POST /v1/chat/completions
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)         # Anthropic: POST /v1/messages
        srv.inject("503", "drop")                                 # the next two requests fail
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeAPIServer", "Reply", "Responder", "default_responder"]


@dataclass
class Reply:
    text: str
    finish_reason: str = "stop"  # OpenAI's words; /v1/messages maps stop -> end_turn, length -> max_tokens
    logprobs: dict[str, float] | None = None  # first-token candidates and their logprobs


Responder = Callable[[list[dict], dict], "str | Reply"]


def default_responder(messages: list[dict], body: dict) -> str:
    """A deterministic reply derived from the last user message."""
    last = next((_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    return f"Reply to: {last[:60]}"


class FakeAPIServer:
    """ThreadingHTTPServer on 127.0.0.1 (any free port), served from a daemon thread."""

    def __init__(self, responder: Responder | None = None, latency: float = 0.0) -> None:
        self.responder = responder or default_responder
        self.latency = latency
        self.url = ""
        self.requests: list[dict] = []  # {"path", "headers" (lower-cased keys), "body"}
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None

    def inject(self, *faults: str) -> None:
        """Queue faults for the next requests, one each, in order: a status code such as "500", "503" or
        "429" (sent with Retry-After: 0), "drop" (close the socket, no response), "hang:SECONDS"."""
        for fault in faults:
            if not (fault == "drop" or fault.startswith("hang:") or (fault.isdigit() and int(fault) >= 400)):
                raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> FakeAPIServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeAPIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, path: str, headers: dict[str, str], body: dict) -> tuple[int, dict[str, str], dict] | None:
        """Answer one request as (status, extra headers, JSON), or None to drop the connection."""
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})
            fault = self._faults.popleft() if self._faults else ""
        if fault == "drop":
            return None
        time.sleep(self.latency + (float(fault.removeprefix("hang:")) if fault.startswith("hang:") else 0.0))

        if path not in ("/v1/chat/completions", "/v1/messages"):
            return _error(path, 404, f"no route for {path}")
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key:
            return _error(path, 401, "missing API key")
        if fault.isdigit():
            status = int(fault)
            # Like some real servers, a 401 echoes the key it was given; backends must not pass it on.
            message = f"Incorrect API key provided: {key}" if status == 401 else f"{HTTPStatus(status).phrase} (injected)"
            return _error(path, status, message, {"Retry-After": "0"} if status == 429 else {})
        if path == "/v1/messages":
            sampling = [p for p in ("temperature", "top_p", "top_k") if p in body]
            if sampling and headers.get("anthropic-version", "") >= "2026-10-21":
                return _error(path, 400, f"{sampling[0]}: Extra inputs are not permitted")
            messages = ([{"role": "system", "content": body["system"]}] if "system" in body else []) + body["messages"]
        else:
            messages = body["messages"]

        reply = self.responder(messages, body)
        reply = Reply(reply) if isinstance(reply, str) else reply
        words, limit = reply.text.split(), body.get("max_tokens") or body.get("max_completion_tokens")
        if limit and len(words) > limit:
            reply = Reply(" ".join(words[:limit]), "length", reply.logprobs)
        prompt_tokens = sum(len(_text(m["content"]).split()) for m in messages)
        build = _anthropic_message if path == "/v1/messages" else _openai_completion
        return 200, {}, build(body, reply, prompt_tokens)


def _text(content: Any) -> str:
    """Message content as text: a string, or a list of content blocks."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content)


def _openai_completion(body: dict, reply: Reply, prompt_tokens: int) -> dict:
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
        },
    }


def _anthropic_message(body: dict, reply: Reply, prompt_tokens: int) -> dict:
    stop_reason = {"stop": "end_turn", "length": "max_tokens"}.get(reply.finish_reason, reply.finish_reason)
    return {
        "id": f"msg_{time.monotonic_ns()}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": len(reply.text.split())},
    }


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


def _error(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """The provider's own error shape: Anthropic's for /v1/messages, OpenAI's otherwise."""
    kind = _ERROR_TYPES.get(status, "api_error")
    if path == "/v1/messages":
        body: dict = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "code": str(status)}}
    return status, headers or {}, body


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many concurrent clients connect at once
    fake: FakeAPIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or gave up leaves a broken pipe behind; that is not a server bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    server: _HTTPServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.fake.handle(self.path, headers, json.loads(raw or b"{}"))
        if answer is None:
            self.close_connection = True
            return
        status, extra_headers, body = answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `FakeAPIServer.requests` instead."""
