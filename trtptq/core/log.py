"""One `trtptq` logger and one progress helper, so a run prints its progress, its result and each warning once.

Modules log through `logging.getLogger(__name__)` (children of "trtptq");
the library adds no handler (Python's convention), the CLI adds one that
prints `trtptq: warning: ...`. Progress bars are tqdm, shown when the caller
asks (`show_progress`) and stderr is a terminal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from tqdm import tqdm

LOGGER_NAME = "trtptq"


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar, off when `enabled` is False and off by itself when stderr is not a terminal."""
    return tqdm(iterable, disable=not enabled or None, **kwargs)


class _OncePerMessage(logging.Filter):
    """Drops a record whose message was already shown: a warning per cause, not per batch or per node."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


class _CliFormatter(logging.Formatter):
    """`trtptq: warning: message`, lower case like the CLI's `trtptq: error: message` (and argparse's)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"trtptq: {record.levelname.lower()}: {record.getMessage()}"


def cli_handler(verbose: bool = False) -> logging.Handler:
    """The CLI's handler: `trtptq: warning: ...` on stderr, each message once; returned so the caller can remove it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter())
    handler.addFilter(_OncePerMessage())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    return handler
