"""Every error hydra-bundle raises, in one place. Each carries its context; the CLI prints one line and exits
with ``exit_code``.

Two families, as users meet them:

- **the input is wrong** (exit 2 for what the user gave us: :class:`UsageError`, :class:`SpecError`; exit 1 for
  a bundle that fails verification: :class:`VerifyError`, whose ``reason`` is a short machine-readable code);
- **an operation failed** (exit 1): :class:`SourceError` (an upstream registry, repository or server),
  :class:`ApplyError` (a deploy step on site; :class:`TransientError` when the API server or database was out of
  reach, so retrying later may work), :class:`DiskSpaceError`.

:class:`Cancelled` is not an error: the work stopped because it was asked to (the agent is stopping, a sibling
download failed first) and can simply run again.
"""

from __future__ import annotations


class HydraError(Exception):
    """Base error. ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


# ---------------------------------------------------------------- the input is wrong

class UsageError(HydraError):
    """Bad input from the user: spec, config, flags (exit 2)."""

    exit_code = 2


class SpecError(UsageError):
    """One or more problems in a spec, config or manifest file, each ``file:line: field: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SubstError(SpecError):
    """An unknown or misused ``${site.…}`` variable in a manifest or values; ``problems`` are ``file:line: …``."""


class VerifyError(HydraError):
    """A bundle failed verification. ``reason`` is a short machine-readable code (docs/agent.md lists them)."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class UnknownBundle(UsageError):
    """No bundle of that name (or digest) on this site."""


class NotRetained(UsageError):
    """``agent rollback --to VERSION``: that version is not on this site any more (never admitted, refused, or
    its content is no longer in the store)."""


# ---------------------------------------------------------------- an operation failed

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


class BodyInterrupted(SourceError):
    """The connection broke while a body was being read; the download resumes with ``Range`` from there."""


class DiskSpaceError(HydraError):
    """Not enough free space for a write we are about to make."""


class PipelineBusy(HydraError):
    """Another run (the daemon, ``agent ingest``/``apply``) holds the pipeline lock; try again when it ends."""


class ApplyError(HydraError):
    """A deploy step failed on site; the message says what and where."""


class TransientError(ApplyError):
    """The API server or database was not reachable within the step's timeout; retry the step later."""


# ---------------------------------------------------------------- not an error

class Cancelled(Exception):
    """Stopped on request (the agent is stopping; a sibling download failed first). Nothing is half done that a
    re-run would not finish."""


def brief(e: BaseException) -> str:
    """One line for an exception (urllib3/pymysql messages can be long)."""
    s = str(e).strip().splitlines()
    text = s[0] if s else type(e).__name__
    return text[:300]
