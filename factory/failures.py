"""What the CLI says, and which exit code it returns, for anything that stops a command.

Exit codes: 0 done, 1 done with failures, 2 bad input or environment (the message says what to
fix), 3 stopped at --max-cost (resumable), 4 stopped, resumable: an endpoint was down past its
limit, or the disk filled up, 70 internal error (a bug: the traceback is in the debug log),
130 interrupted (resumable). A traceback never reaches the console; it goes to the run's
debug.log (or, before a run directory exists, to the cache folder's last-error.log)."""

from __future__ import annotations

import errno
import json
import sqlite3
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from factory.errors import FactoryError
from factory.redaction import redact

EXIT_INPUT, EXIT_RESUMABLE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 4, 70, 130
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class Resumable(FactoryError):
    """The run stopped cleanly and can be resumed as it is (`factory run --resume RUN_DIR`)."""

    exit_code = EXIT_RESUMABLE
    status = "stopped_resumable"


@dataclass
class Failure:
    message: str
    exit_code: int
    status: str  # the manifest's status for a run that stopped this way
    internal: bool = False


def classify(exc: BaseException) -> Failure:
    """The user-facing message, exit code and manifest status for an exception that stopped a command."""
    if isinstance(exc, Resumable):
        return Failure(redact(str(exc)), exc.exit_code, exc.status)
    if isinstance(exc, FactoryError):
        return Failure(redact(str(exc)), exc.exit_code, "aborted")
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", EXIT_INTERRUPTED, "interrupted")
    if disk_full(exc):
        return Failure("the disk is full; free some space, then continue with factory run --resume RUN_DIR "
                       "(finished work is kept)", EXIT_RESUMABLE, "stopped_disk_full")
    if isinstance(exc, PermissionError) or (isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc)):
        where = getattr(exc, "filename", None)
        return Failure(f"permission denied{f': {where}' if where else ''} ({exc}); check the folder's owner and "
                       "mode, or choose another --out", EXIT_INPUT, "failed")
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return Failure(f"{exc.strerror or exc}{where}", EXIT_INPUT, "failed")
    if isinstance(exc, sqlite3.Error):
        return Failure(f"a database in the run directory failed: {exc}", EXIT_INPUT, "failed")
    if isinstance(exc, json.JSONDecodeError):  # a file the tool wrote, damaged (the user's own files are named)
        return Failure(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} (a damaged file in the "
                       "run or dataset folder?)", EXIT_INPUT, "failed")
    if isinstance(exc, yaml.YAMLError):
        return Failure(f"malformed YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                       EXIT_INPUT, "failed")
    if isinstance(exc, ValidationError):
        return Failure(f"unexpected data ({exc.error_count()} error(s)): {redact(str(exc))[:300]} (a damaged file in "
                       "the run or dataset folder?)", EXIT_INPUT, "failed")
    if isinstance(exc, UnicodeError):
        return Failure(f"text that cannot be encoded as UTF-8 ({exc}); remove lone surrogates (\\ud800...)",
                       EXIT_INPUT, "failed")
    return Failure(f"internal error: {type(exc).__name__}: {redact(str(exc))[:500]}", EXIT_INTERNAL, "failed",
                   internal=True)


def disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def log_traceback(exc: BaseException, path: Path) -> Path | None:
    """Append the (redacted) traceback to `path`; None when even that cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(redact("".join(traceback.format_exception(exc))) + "\n")
        return path
    except OSError:
        return None
