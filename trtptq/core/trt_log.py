"""TensorRT's log as Python logging, with known-harmless builder warnings kept out of the user's terminal.

TensorRT keeps the first logger a process gives it (a builder or runtime made
later with another one is told so, and its logger is ignored), so each
TensorRT module gets one logger per process, made on first use. It forwards
every message to the "trtptq.tensorrt" logger (the CLI prints warnings and
errors as `trtptq: warning: TensorRT: ...`; `--verbose` adds TensorRT's info),
and hands warnings and errors to whoever is `recording` (a build, for its report).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Iterator
from types import ModuleType

logger = logging.getLogger("trtptq.tensorrt")

# Warnings TensorRT prints for builds that are correct: logged at debug level (and recorded), not shown.
KNOWN_HARMLESS = (
    # TensorRT-RTX, once per Conv whose Q/DQ scales are FP16 (a Q/DQ model converted with --fp16): it widens
    # them to FP32, which is exact.
    re.compile(r"Converting conv (activation|weight) scales to fp32"),
)
_LEVELS = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR, "WARNING": logging.WARNING,
           "INFO": logging.INFO, "VERBOSE": logging.DEBUG}


@functools.cache
def tensorrt_logger(trt: ModuleType):
    """The process's one `trt.ILogger` for the TensorRT module `trt` (tensorrt or tensorrt_rtx)."""
    base = trt.ILogger

    class Logger(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._recordings: list[list[str]] = []

        def log(self, severity, msg: str) -> None:
            level, text = _LEVELS.get(severity.name, logging.WARNING), msg.strip()
            if level >= logging.WARNING:
                for recording in self._recordings:
                    recording.append(f"{severity.name}: {text}")
                if any(p.search(text) for p in KNOWN_HARMLESS):
                    level = logging.DEBUG
            if logger.isEnabledFor(level):
                logger.log(level, "TensorRT: %s", text)

        @contextlib.contextmanager
        def recording(self) -> Iterator[list[str]]:
            """Warnings and errors ("WARNING: text") TensorRT logs inside the block, harmless ones included.

            The logger is the process's: builds running at once in threads each record all of them.
            """
            messages: list[str] = []
            self._recordings.append(messages)
            try:
                yield messages
            finally:
                self._recordings.remove(messages)

    return Logger()
