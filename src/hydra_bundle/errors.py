"""Typed errors. Each carries context; the CLI prints one line and exits with ``exit_code``."""

from __future__ import annotations


class HydraError(Exception):
    """Base error. ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class UsageError(HydraError):
    """Bad input from the user: spec, config, flags (exit 2)."""

    exit_code = 2


class SpecError(UsageError):
    """One or more problems in a spec or config file, each ``file:line: field: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceError(HydraError):
    """An upstream source (registry, chart repo, HTTP server, file) failed or returned something wrong."""


class DigestMismatch(SourceError):
    """Content did not hash to the digest it was pinned to or addressed by."""

    def __init__(self, what: str, expected: str, actual: str):
        self.what, self.expected, self.actual = what, expected, actual
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")


class AuthError(SourceError):
    """A registry refused our credentials (or we had none)."""


class NotFound(SourceError):
    """A manifest, blob, chart or file does not exist upstream."""


class VerifyError(HydraError):
    """A bundle failed verification. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class DiskSpaceError(HydraError):
    """Not enough free space for a write we are about to make."""
