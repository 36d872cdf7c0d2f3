"""Library chatter (Python warnings, transformers and Hugging Face Hub logs, progress bars such as
the GGUF converter's) kept off the console: a user who did nothing wrong should not read it. It goes
to the run directory's debug.log; what is said before the run directory exists (model loading)
is held and written there once it does."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

LIBRARIES = ("transformers", "huggingface_hub", "torch", "datasets", "accelerate")
_active: list[LibraryLog] = []


@contextlib.contextmanager
def stderr_to_log() -> Iterator[None]:
    """Inside a capture, what is written to stderr (a tqdm bar no library setting turns off) goes
    to the log; outside one, it stays on stderr."""
    with contextlib.redirect_stderr(_active[-1]) if _active else contextlib.nullcontext():
        yield


class LibraryLog(io.TextIOBase):
    def __init__(self) -> None:
        self._held: list[str] = []
        self._file: io.TextIOBase | None = None
        self._bars: bool | None = None  # transformers' progress bars before the capture; None: not imported yet

    def write(self, text: str) -> int:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()
        else:
            self._held.append(text)
        return len(text)

    def attach(self, path: Path) -> None:
        """From now on write to `path` (appending), starting with what was held."""
        self._file = path.open("a")
        self.write("".join(self._held))
        self._held = []

    @contextlib.contextmanager
    def capture(self) -> Iterator[LibraryLog]:
        """Warnings and library logs go here while inside. Restored on the way out."""
        handler = logging.StreamHandler(self)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        saved = []
        for name in LIBRARIES:
            logger = logging.getLogger(name)
            saved.append((logger, logger.handlers[:], logger.propagate))
            logger.handlers, logger.propagate = [handler], False
        show = warnings.showwarning
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: self.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        # not imported here: transformers costs about 15 MB of RSS, and most runs never load it
        self._bars = _progress_bars(False) if "transformers" in sys.modules else None
        _active.append(self)
        try:
            yield self
        finally:
            _active.remove(self)
            warnings.showwarning = show
            if self._bars is not None:
                _progress_bars(self._bars)
                self._bars = None
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate
            if self._file is not None:
                self._file.close()
                self._file = None


def transformers_imported() -> None:
    """Call right after importing transformers: inside a capture, its and the Hub's progress bars go
    off until the capture ends (outermost first, so each capture restores what it found)."""
    for log in _active:
        if log._bars is None:
            log._bars = _progress_bars(False)


def _progress_bars(on: bool) -> bool:
    """Turn transformers' and the Hub's progress bars on or off; returns whether they were on."""
    try:
        from transformers.utils import logging as tlogging
    except ImportError:
        return on
    was = tlogging.is_progress_bar_enabled()
    (tlogging.enable_progress_bar if on else tlogging.disable_progress_bar)()
    return was
