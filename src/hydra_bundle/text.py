"""Text from outside (file names, error details, names in signed but foreign indexes) made safe to print: control
characters — terminal escape sequences, carriage returns that overwrite a line, bidi overrides that reorder it —
are shown as ``\\xNN``/``\\uNNNN`` instead of acting on the screen or the log."""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(s: object) -> str:
    """``str(s)`` with every control character except tab and newline escaped."""
    return _CONTROL.sub(_escape, str(s))
