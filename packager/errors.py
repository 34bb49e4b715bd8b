"""Exceptions with exit codes (one per failure class, see README "Exit codes").

Messages are one line: what, where, next step. They never contain a DICOM header value,
a UID or a third-party library's message text (those may carry PHI).
"""

from __future__ import annotations


class DcmpackError(Exception):
    """Base class; subclasses set ``exit_code``."""

    exit_code = 1


class ConfigError(DcmpackError):
    """Bad release.toml, unknown key, bad flag combination, missing key."""

    exit_code = 2


class InputError(DcmpackError):
    """Source unreadable: empty, no DICOM, truncated, zip-slip, symlink loop, network/auth."""

    exit_code = 3


class PhiAuditError(DcmpackError):
    """The audit found a PHI value in an output byte stream; nothing was published.

    ``review``: for the data owner's terminal only, each hit's description and the
    ``[audit] accept`` line that lets it through ("" when none can); never logged.
    """

    exit_code = 4
    review: tuple[tuple[str, str], ...] = ()


class VerifyError(DcmpackError):
    """Checksum, manifest, allowlist or validator failure."""

    exit_code = 5


class OutputError(DcmpackError):
    """Output not writable, bundle exists without --force, disk full."""

    exit_code = 6


class InternalError(DcmpackError):
    """A bug in dcmpack itself: reported without a traceback unless --verbose."""

    exit_code = 70


EXIT_OK = 0
EXIT_SERIES_FAILED = 1  # a result, not an exception: BuildResult.exit_code
EXIT_USAGE = 2  # also typer/click usage errors
EXIT_INTERNAL = InternalError.exit_code
EXIT_INTERRUPTED = 130  # Ctrl-C, SIGTERM, SIGHUP (128 + SIGINT, the shell convention)

#: Every exit code dcmpack uses and what it means (README "Exit codes" is checked against this).
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_SERIES_FAILED: "bundle built, but some series failed to convert (listed)",
    ConfigError.exit_code: "usage or configuration error",
    InputError.exit_code: "input unreadable",
    PhiAuditError.exit_code: "PHI audit found a source value in the output: nothing published",
    VerifyError.exit_code: "verification failed: nothing published",
    OutputError.exit_code: "output problem: not writable, disk full, or bundle exists without --force",
    EXIT_INTERNAL: "internal error (a bug in dcmpack)",
    EXIT_INTERRUPTED: "interrupted: staging removed, nothing published",
}
