"""The package's exceptions, in one tree:

    FactoryError            the user can fix it (bad input, a missing key or file): exit code 2, no traceback
      InputError            bad content in a file, located by file, line and field
      StoppedAtBudget       a command stopped cleanly before passing --max-cost: exit code 3, resumable
    ModelCallError          a model or search call failed (retried when `retryable`; then the record fails)
      CallTimeout           cut by the timeout
      ParseFailure          every sample of a call failed to parse
    ParseError              a stage's parser rejects one output (the caller samples again)
    BudgetExceeded          the next call could pass --max-cost: the run stops cleanly (exit code 3)

Exit codes are decided in one place, `factory.cli.main`."""

from __future__ import annotations

from pathlib import Path


class FactoryError(Exception):
    """Something the user can fix: bad input, a missing key, a missing file.

    The message says what is wrong and, where it helps, what to do next.
    """

    exit_code = 2


class InputError(FactoryError):
    """Bad content in a file, located by file, line (or a table's row, counted from 1) and field."""

    def __init__(self, path: str | Path, message: str, *, line: int | None = None, field: str | None = None,
                 row: int | None = None):
        self.path, self.line, self.field, self.detail, self.row = str(path), line, field, message, row
        where = self.path + (f":{line}" if line else "") + (f": row {row}" if row is not None else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class StoppedAtBudget(FactoryError):
    """A command (training, a loop, principle discovery) stopped before a call could pass --max-cost.
    Exit code 3, as for `factory run`; the message says how to continue."""

    exit_code = 3


class ModelCallError(Exception):
    """A model call failed. The caller's one retry layer retries it when `retryable`; once the
    retries are spent the record goes to failed.jsonl.

    `retryable`: worth another attempt (408, 409, 429, 5xx, a timeout, a dropped connection).
    `retry_after`: seconds the server asked us to wait (its Retry-After header), if any.
    `status`: the HTTP status, if there was a response (429 slows the whole endpoint down).
    `fatal`: every later call would fail the same way (a rejected key, an unknown model): the run
    stops instead of filling failed.jsonl.
    """

    def __init__(self, message: str, *, fatal: bool = False, retryable: bool = False,
                 retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.fatal, self.retryable, self.retry_after, self.status = fatal, retryable, retry_after, status


class CallTimeout(ModelCallError):
    """A request cut by the timeout. The server may have read (and billed) its input."""


class ParseFailure(ModelCallError):
    """Every sample of a call failed to parse; the record fails with this reason."""


class ParseError(ValueError):
    """Raised by a stage's parser: the output is not what the template asked for."""


class BudgetExceeded(Exception):
    """Raised instead of making a call that could take spending past --max-cost. Not a failure:
    the record stays unfinished and `factory run --resume` picks it up (with a larger budget)."""


RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))  # 5xx includes Anthropic's 529
FATAL_STATUS = frozenset({401, 403, 404})


def http_error(message: str, status: int, headers: object) -> ModelCallError:
    """A ModelCallError for an HTTP error answer: fatal, retryable or neither, with its Retry-After."""
    return ModelCallError(message, fatal=status in FATAL_STATUS, retryable=status in RETRYABLE_STATUS,
                          retry_after=retry_after_seconds(headers), status=status)


def retry_after_seconds(headers: object) -> float | None:
    """The Retry-After (or retry-after-ms) header of a response, in seconds; None if absent or unreadable."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            return None  # an HTTP date: rare from these APIs; back off exponentially instead
    return None
