"""A real local HTTP server that answers like the search APIs, with responses of their recorded shapes.

    with FakeSearchServer() as srv:
        monkeypatch.setenv("TAVILY_BASE_URL", srv.url + "/tavily")           # POST /tavily/search
        monkeypatch.setenv("BRAVE_BASE_URL", srv.url + "/brave/res/v1")      # GET  .../web/search
        monkeypatch.setenv("WIKIPEDIA_API_URL", srv.url + "/w/api.php")      # GET  MediaWiki action API
        monkeypatch.setenv("SEARXNG_URL", srv.url + "/searx")                # GET  /searx/search
        srv.inject(429, headers={"Retry-After": "3"})                        # the next request gets a 429

`requests` holds what clients sent: method, path, query (first value of each name), headers
(lower-cased names) and the JSON body.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

PAGES = [  # (title, text, url): what every fake backend finds, best first
    ("Paris", "Paris is the capital and largest city of France.", "https://en.wikipedia.org/wiki/Paris"),
    ("France", "France is a country in Western Europe; its capital is Paris.", "https://en.wikipedia.org/wiki/France"),
    ("Seine", "The Seine is a river that flows through Paris.", "https://en.wikipedia.org/wiki/Seine"),
]


def tavily(query: dict, body: dict) -> dict:
    n = int(body.get("max_results", 5))
    return {"query": body.get("query"), "follow_up_questions": None, "answer": None, "images": [],
            "results": [{"title": t, "url": u, "content": x, "score": round(0.9 - 0.1 * i, 2), "raw_content": None}
                        for i, (t, x, u) in enumerate(PAGES[:n])], "response_time": 0.42}


def brave(query: dict, body: dict) -> dict:
    n = int(query.get("count", 20))
    results = [{"type": "search_result", "title": f"<strong>{t}</strong> - Wikipedia", "url": u,
                "description": x.replace("Paris", "<strong>Paris</strong>") + " &amp; more",
                "extra_snippets": [f"More about {t}."], "language": "en", "family_friendly": True}
               for t, x, u in PAGES[:n]]
    return {"type": "search", "query": {"original": query.get("q"), "more_results_available": False},
            "mixed": {"type": "mixed", "main": []}, "web": {"type": "search", "results": results}}


def wikipedia(query: dict, body: dict) -> dict:
    if not query.get("gsrsearch"):
        return {"error": {"code": "nosrsearch", "info": "The \"gsrsearch\" parameter must be set."}}
    n = int(query.get("gsrlimit", 10))
    pages = [{"pageid": 100 + i, "ns": 0, "title": t, "index": i + 1, "extract": x, "contentmodel": "wikitext",
              "fullurl": u, "canonicalurl": u} for i, (t, x, u) in enumerate(PAGES[:n])]
    return {"batchcomplete": True, "continue": {"gsroffset": n, "continue": "gsroffset||"},
            "query": {"pages": list(reversed(pages))}}  # the API returns pages by id, not by rank


def searxng(query: dict, body: dict) -> dict:
    if query.get("format") != "json":
        return {"_status": 403}
    results = [{"url": u, "title": t, "content": x, "engine": "wikipedia", "engines": ["wikipedia"],
                "score": round(3.0 - i, 1), "category": "general"} for i, (t, x, u) in enumerate(PAGES)]
    return {"query": query.get("q"), "number_of_results": 0, "results": results, "answers": [],
            "corrections": [], "infoboxes": [], "suggestions": [], "unresponsive_engines": []}


ROUTES = {("POST", "/tavily/search"): tavily, ("GET", "/brave/res/v1/web/search"): brave,
          ("GET", "/w/api.php"): wikipedia, ("GET", "/searx/search"): searxng}


class FakeSearchServer:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self._faults: deque[tuple[int, dict[str, str], bytes] | str] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def inject(self, status: int | str, body: bytes = b'{"detail": {"error": "injected"}}',
               headers: dict[str, str] | None = None) -> None:
        """The next request gets this status, or "drop" (the socket closes with no response), or
        "hang:SECONDS" (the answer comes that late)."""
        with self._lock:
            self._faults.append(status if isinstance(status, str) else (status, headers or {}, body))

    def next_fault(self) -> tuple[int, dict[str, str], bytes] | str | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def start(self) -> Self:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        fake: FakeSearchServer = self.server.fake  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(split.query).items()}
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.loads(raw) if raw else {}
        fake.requests.append({"method": method, "path": split.path, "query": query, "body": body,
                              "headers": {k.lower(): v for k, v in self.headers.items()}})
        fault = fake.next_fault()
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if isinstance(fault, str):
            time.sleep(float(fault.removeprefix("hang:")))
        elif fault is not None:
            status, headers, payload = fault
            return self._send(status, payload, headers)
        route = ROUTES.get((method, split.path))
        if route is None:
            return self._send(404, b'{"error": "no such route"}')
        answer = route(query, body)
        status = answer.pop("_status", 200)
        self._send(status, json.dumps(answer).encode() if status == 200 else b"Forbidden")

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
