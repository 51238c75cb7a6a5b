"""Structured logs on stderr: one ``key=value`` line per event (logfmt), journald-friendly.

Under systemd (``$JOURNAL_STREAM`` set) lines start with the ``<N>`` syslog priority prefix journald parses
and carry no timestamp (the journal adds one). Pass fields with ``extra={"kv": {...}}``. Never log secrets:
credentials are never passed to the logger (``Credential.__repr__`` masks them anyway).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from ..text import printable

_PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _val(v: object) -> str:
    s = printable(v)  # a file name or a detail from outside never moves the cursor or forges a line
    if s == "" or any(c in s for c in ' "=\\\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    def __init__(self, journald: bool):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if not self.journald:
            t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"time={t}.{int(record.msecs):03d}Z")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"msg={_val(record.getMessage())}")
        for k, v in (getattr(record, "kv", None) or {}).items():
            if v is not None:
                parts.append(f"{k}={_val(v)}")
        if record.exc_info:
            parts.append(f"exc={_val(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        return f"<{_PRIO.get(record.levelno, 6)}>{line}" if self.journald else line


def setup(level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger("hydra_bundle.agent")
    logger.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(LogfmtFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    logger.addHandler(h)
    logger.setLevel(level)
    logger.propagate = False
    return logger
