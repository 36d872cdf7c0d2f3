"""Errors a user can act on. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class FactoryError(Exception):
    """Something the user can fix: bad input, a missing key, a missing file.

    The message says what is wrong and, where it helps, what to do next.
    """

    exit_code = 2


class InputError(FactoryError):
    """Bad content in a file, located by file, line and field."""

    def __init__(self, path: str | Path, message: str, *, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.detail = str(path), line, field, message
        where = self.path + (f":{line}" if line else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class ModelCallError(Exception):
    """A model call failed after the transport retries. The record goes to failed.jsonl.

    `fatal` marks failures that every later call would repeat (a rejected key, an unknown model):
    the run stops instead of filling failed.jsonl.
    """

    def __init__(self, message: str, *, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal
