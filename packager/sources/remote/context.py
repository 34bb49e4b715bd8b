"""Remote sources, what every protocol needs: a parsed spec -> one frozen ``FetchContext``.

``FetchContext`` carries the parsed URL, the credentials and CA bundle (HTTP protocols only),
the retry policy and timeout, the staging journal, the progress counter and the modalities to
skip, and offers ``retry`` (exponential backoff on ``Transient``) and ``unreachable`` (the
one-line error after the last attempt). ``quiet_libraries`` mutes library logging that can
quote identifiers while a fetch runs.
Refuses (``ConfigError``): a user name without a password, a password without a user name, an
unparsable or unreadable ~/.netrc, a CA bundle that does not exist. Secrets never appear in a
repr or a message.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from packager.errors import ConfigError, InputError
from packager.sources.remote.spec import (
    ENV_CA_BUNDLE,
    ENV_NETRC,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    RemoteSpec,
)
from packager.sources.remote.staging import Stage

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 30.0
#: Series modalities that never hold images (PS3.3 C.7.3.1.1.1); not fetched when reported.
NON_IMAGE_MODALITIES: Final = frozenset(
    {"SR", "PR", "KO", "DOC", "REG", "RWV", "AU", "ECG", "HD", "FID", "PLAN", "RTPLAN", "RTRECORD", "RTSTRUCT"}
)
_QUIET_LOGGERS: Final = ("pynetdicom", "dicomweb_client", "urllib3")

ProgressCallback = Callable[[int, "int | None"], None]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a transient failure is retried.

    ``attempts`` calls in all, waiting ``delay``, ``delay * factor``, ... seconds in between.
    """

    attempts: int = 3
    delay: float = 0.5
    factor: float = 2.0

    def waits(self) -> Iterator[float]:
        """Seconds to wait before each attempt (0 before the first)."""
        wait = self.delay
        for attempt in range(max(1, self.attempts)):
            yield 0.0 if attempt == 0 else wait
            if attempt:
                wait *= self.factor


@dataclass(frozen=True, slots=True)
class Credentials:
    """HTTP credentials: basic (user, password) and/or a bearer token; secrets not in repr."""

    user: str | None
    password: str | None = field(repr=False, default=None)
    token: str | None = field(repr=False, default=None)


class Transient(Exception):
    """A failure worth retrying: lost connection, timeout, HTTP 5xx, aborted association."""

    def __init__(self, reason: str, *, connection: bool, rejected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connection = connection
        self.rejected = rejected


class Progress:
    """Counts instances downloaded in this run and reports ``(done, total)``; thread-safe."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self.done = 0
        self.total: int | None = None

    def start(self, total: int) -> None:
        self.total = total
        self._report()

    def advance(self) -> None:
        with self._lock:
            self.done += 1
            if self.total is not None and self.done > self.total:
                self.total = self.done  # an instance the listing did not announce
        self._report()

    def _report(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total)


@dataclass(frozen=True, slots=True)
class FetchContext:
    """Everything a protocol's fetch needs, in one place (the protocols take only this).

    ``credentials`` and ``verify`` (True, or the path of a CA bundle, as requests takes it) are
    resolved for the HTTP protocols only; None for DIMSE, which has neither.
    """

    remote: RemoteSpec
    stage: Stage
    progress: Progress
    policy: RetryPolicy
    timeout: float
    skip: frozenset[str]
    credentials: Credentials | None = None
    verify: str | bool | None = None

    @classmethod
    def create(
        cls,
        remote: RemoteSpec,
        stage: Stage,
        progress: Progress,
        *,
        policy: RetryPolicy,
        timeout: float,
        skip: frozenset[str],
        ca_bundle: str | os.PathLike | None,
    ) -> FetchContext:
        """The context for ``remote``; credentials and CA bundle resolved for HTTP protocols.

        Raises
        ------
        ConfigError
            User without password (or the reverse), bad ~/.netrc, missing CA bundle.
        """
        if remote.kind == "dimse":
            return cls(remote, stage, progress, policy, timeout, skip)
        return cls(
            remote,
            stage,
            progress,
            policy,
            timeout,
            skip,
            credentials=_credentials(remote),
            verify=_ca_bundle(remote, ca_bundle),
        )

    def retry(self, call: Callable[[], _T], what: str) -> _T:
        """Run ``call``, retrying on ``Transient`` with exponential backoff; re-raise the last."""
        last: Transient | None = None
        for attempt, wait in enumerate(self.policy.waits(), start=1):
            if wait:
                time.sleep(wait)
            try:
                return call()
            except Transient as exc:
                last = exc
                log.info("%s: attempt %d of %d failed (%s)", what, attempt, self.policy.attempts, exc.reason)
        assert last is not None
        raise last

    def unreachable(self, exc: Transient) -> InputError:
        """The error for a server still unreachable (or rejecting us) after every attempt."""
        remote, attempts = self.remote, self.policy.attempts
        if exc.rejected:
            return InputError(
                f"{remote.kind}: association rejected by {remote.where} after "
                f"{attempts} attempts; is our calling AE title configured on "
                "the peer?"
            )
        return InputError(
            f"{remote.kind}: cannot reach {remote.where} after {attempts} "
            f"attempts ({exc.reason}); check the server and rerun to resume"
        )


def _credentials(remote: RemoteSpec) -> Credentials:
    """User/password from the URL user name, env vars, then ~/.netrc (by host); token from env."""
    token = os.environ.get(ENV_TOKEN) or None
    user = remote.user or os.environ.get(ENV_USER) or None
    password = os.environ.get(ENV_PASSWORD) or None
    if password is None and token is None:
        entry = _netrc_entry(remote.host)
        if entry is not None:
            login, secret = entry
            if user is None or user == login:
                user, password = login or user, secret
    if user is not None and password is None and token is None:
        raise ConfigError(
            f"{remote.kind}: user name given but no password: set {ENV_PASSWORD} "
            f"or add a ~/.netrc entry for {remote.host}"
        )
    if password is not None and user is None:
        raise ConfigError(
            f"{remote.kind}: {ENV_PASSWORD} is set but no user name: set {ENV_USER} or put user@ in the URL"
        )
    return Credentials(user=user, password=password, token=token)


def _netrc_entry(host: str) -> tuple[str, str] | None:
    path = Path(os.environ.get(ENV_NETRC) or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except netrc.NetrcParseError as exc:  # its message can quote a token: keep only the line
        raise ConfigError(
            f"netrc: {path.name}: parse error at line {exc.lineno} (or the file is readable by others: chmod 600)"
        ) from None
    except OSError:
        raise ConfigError(f"netrc: {path.name}: not readable") from None
    if entry is None or not entry[2]:
        return None
    return entry[0], entry[2]


def _ca_bundle(remote: RemoteSpec, ca_bundle: str | os.PathLike | None) -> str | bool:
    value = ca_bundle if ca_bundle is not None else os.environ.get(ENV_CA_BUNDLE) or None
    if value is None:
        return True
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{remote.kind}: CA bundle {path.name} not found (--ca-bundle or {ENV_CA_BUNDLE})")
    return str(path)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Mute library output that can quote identifiers while fetching; restore it afterwards.

    pynetdicom logs query identifiers at INFO, dicomweb-client and urllib3 log URLs (with UIDs
    and PatientIDs) at DEBUG, pydicom's validation warnings quote the offending value. Warnings
    are counted and reported without their text.
    """
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    if caught:
        log.warning("remote: %d library warning(s) suppressed (their text may quote header values)", len(caught))
