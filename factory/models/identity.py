"""Which model answers, as the call cache must know it. The spec string alone is not enough: a
model retrained into the same `local:PATH`, or another server behind the same `openai:NAME`, would
be served the previous model's cached answers.

- a local folder: a SHA-256 over its top-level files (weights, config, tokenizer), each file's hash
  computed once and remembered by path, size and mtime in `cache_root()/file_digests.json`, so an
  unchanged folder costs a few `stat` calls and a retrained one is read once;
- an HTTP model: the base URL with the model name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from factory.config import cache_root

_CHUNK = 1 << 22
_lock = threading.Lock()


def http_identity(spec: str, base_url: str) -> str:
    """`openai:NAME@https://host/v1`: the server and the model name."""
    return f"{spec}@{base_url.rstrip('/')}"


def folder_identity(spec: str, folder: Path) -> str:
    """`local:PATH@sha256:...`: the spec and a digest of the folder's files."""
    return f"{spec}@sha256:{folder_digest(folder)}"


def folder_digest(folder: Path) -> str:
    """A digest of every top-level regular file of a model folder (names and contents). Hidden files
    and subfolders (e.g. training checkpoints) are left out: they do not shape what the model says."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    with _lock:
        store = _store_path()
        known = _read(store)
        total, changed = hashlib.sha256(), False
        for path in files:
            st = path.stat()
            memo = f"{path}|{st.st_size}|{st.st_mtime_ns}"
            if memo not in known:
                known[memo], changed = _file_sha256(path), True
            total.update(f"{path.name}\0{known[memo]}\n".encode())
        if changed:
            _write(store, known)
    return total.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _store_path() -> Path:
    return cache_root() / "file_digests.json"


def _read(store: Path) -> dict[str, str]:
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(store: Path, known: dict[str, str]) -> None:
    """Atomically (another process may read it meanwhile); a cache that cannot be written is only slower."""
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".file_digests.", dir=store.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(known, f)
        os.replace(tmp, store)
    except OSError:
        pass
