"""A local stand-in for the Hugging Face Hub's upload API (create repo, preupload, commit), enough
for huggingface_hub's `create_repo` and `upload_folder`. It records what it was sent."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self) -> None:
        self.repos: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.auth: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.auth.append(self.headers.get("Authorization", ""))
                if self.path.startswith("/api/repos/create"):
                    body = json.loads(raw)
                    hub.repos.append(body)
                    return self._send({"url": f"{hub.url}/datasets/{body.get('organization') or 'user'}/{body['name']}"})
                if self.path.startswith("/api/validate-yaml"):
                    return self._send({"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(raw)["files"]
                    return self._send({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                 for f in files]})
                if "/commit/" in self.path:
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = self.path.split("/api/datasets/", 1)[1].split("/commit/", 1)[0]
                    return self._send({"commitUrl": f"{hub.url}/datasets/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40,
                                       "pullRequestUrl": None})
                self._send({"error": f"not faked: {self.path}"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
