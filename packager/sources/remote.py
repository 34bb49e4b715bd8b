"""Remote sources: a DICOMweb, DIMSE or XNAT URL -> DICOM files in the private staging dir.

Used by stage 1 (``packager.sources``): ``fetch(spec, staging)`` queries the server for one or
more studies, retrieves every instance of every image series and returns a ``SourceSet`` of
Part-10 files under ``staging``. Each instance keeps the bytes the server sent (WADO-RS parts and
XNAT files as they are; DIMSE data sets behind a Part-10 file meta header), so a build from the
PACS equals a build from a local copy of the same study.

Spec forms (``?`` filters select studies: StudyInstanceUID, PatientID, AccessionNumber, StudyDate
as ``YYYYMMDD`` or a ``YYYYMMDD-YYYYMMDD`` range)::

    dicomweb+https://host[:port]/path?StudyInstanceUID=...      QIDO-RS search, WADO-RS per series
    dimse://CALLED_AET@host:port?PatientID=...[&calling=AET][&move_dest=AET:port][&retrieve=move]
                                                                C-FIND, then C-GET (or C-MOVE)
    xnat://host[/prefix]/PROJECT/SUBJECT/SESSION                XNAT REST API (xnat+http:// too)

Staging layout: ``staging/remote-<digest of the spec>/<series dir>/<digest of the UID>.dcm``.
Names hold no UID and no patient name (a digest is not reversible), so relpaths may appear in
messages. Files are written atomically and recorded in a journal with their size: a rerun into
the same staging dir downloads only what is missing (resume).

Refuses
-------
- Credentials in the URL (``user:password@``): ``ConfigError``. A user name alone is accepted;
  secrets come from ``DCMPACK_PASSWORD`` / ``DCMPACK_TOKEN`` or ``~/.netrc`` (``$NETRC``).
- Unknown or repeated query keys, a DICOMweb/DIMSE URL without a study filter, malformed UIDs,
  dates, AE titles or ports: ``ConfigError``.
- Unverified TLS: verification is always on; a CA bundle can be added (``ca_bundle`` argument,
  ``DCMPACK_CA_BUNDLE``), never switched off.
- Non-image series (SR, PR, KO, DOC, ... see ``NON_IMAGE_MODALITIES``) are not fetched when the
  server reports the series modality (XNAT: the scan's xsiType).

Errors are one value-free line (no password, PatientID, UID or server text): ``InputError``
(exit 3) for authentication failures, no matching study, unreachable servers after retries and
series that failed; ``OutputError`` when the staging dir cannot be written. Logging carries counts
only; the loggers of pynetdicom (which dumps query identifiers), dicomweb-client and urllib3 (which
log URLs with UIDs and PatientIDs) are silenced while a fetch runs.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import ipaddress
import logging
import netrc
import os
import re
import socket
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from packager.errors import ConfigError, InputError, OutputError
from packager.model import SourceFile, SourceSet

if TYPE_CHECKING:  # optional dependencies ("dcmpack[remote]"), imported where used
    import requests
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

ENV_USER: Final = "DCMPACK_USER"
ENV_PASSWORD: Final = "DCMPACK_PASSWORD"
ENV_TOKEN: Final = "DCMPACK_TOKEN"
ENV_CA_BUNDLE: Final = "DCMPACK_CA_BUNDLE"
ENV_NETRC: Final = "NETRC"

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_CALLING_AET: Final = "DCMPACK"
DEFAULT_DIMSE_PORT: Final = 104
STUDY_KEYS: Final = ("StudyInstanceUID", "PatientID", "AccessionNumber", "StudyDate")
DIMSE_OPTIONS: Final = ("calling", "move_dest", "retrieve")
RETRIEVE_METHODS: Final = ("get", "move")
#: Series modalities that never hold images (PS3.3 C.7.3.1.1.1); not fetched when reported.
NON_IMAGE_MODALITIES: Final = frozenset({
    "SR", "PR", "KO", "DOC", "REG", "RWV", "AU", "ECG", "HD", "FID", "PLAN", "RTPLAN",
    "RTRECORD", "RTSTRUCT"})
#: XNAT scan types (xsiType) of non-image DICOM objects, by the modality they stand for.
XNAT_NON_IMAGE_TYPES: Final = MappingProxyType({
    "xnat:srScanData": "SR", "xnat:ecgScanData": "ECG", "xnat:voiceAudioScanData": "AU"})

_MAX_CONTEXTS: Final = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255
_QIDO_PAGE: Final = 1000
_CHUNK: Final = 1 << 20
_JOURNAL: Final = ".journal"
_UID_RE: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE_RE: Final = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
# AE title (PS3.5 6.2): 1-16 characters of the default repertoire, no backslash, no control
# characters, no leading/trailing space.
_AET_RE: Final = re.compile(
    r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
_QUIET_LOGGERS: Final = ("pynetdicom", "dicomweb_client", "urllib3")
_PENDING: Final = (0xFF00, 0xFF01)
_GET_REFUSED: Final = (0x0122, 0x0124)  # SOP class not supported / not authorized (PS3.7 C)

ProgressCallback = Callable[[int, "int | None"], None]


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------

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
class RemoteSpec:
    """A parsed remote source URL (no secrets: the URL may not carry any)."""

    kind: str                        # "dicomweb" | "dimse" | "xnat"
    scheme: str                      # as given, e.g. "dicomweb+https"
    host: str
    port: int
    path: str                        # URL path (DICOMweb root, XNAT prefix + p/s/e), unquoted
    user: str | None                 # DICOMweb/XNAT user name; DIMSE: the called AE title
    filters: tuple[tuple[str, str], ...] = field(repr=False, default=())
    options: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """The spec without credentials or query: safe for messages and the manifest."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.kind == "dimse":
            return f"dimse://{self.user}@{host}:{self.port}"
        return f"{self.scheme}://{host}:{self.port}{quote(self.path)}"

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"

    @property
    def http_origin(self) -> str:
        """``http(s)://host:port`` for DICOMweb and XNAT."""
        secure = self.scheme.endswith("https") or self.scheme == "xnat"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if secure else 'http'}://{host}:{self.port}"

    @property
    def http_base(self) -> str:
        """``http(s)://host:port/path`` (the DICOMweb root)."""
        return self.http_origin + quote(self.path.rstrip("/"))

    def option(self, key: str) -> str | None:
        """A DIMSE option from the query (``calling``, ``move_dest``, ``retrieve``)."""
        return dict(self.options).get(key)


# --------------------------------------------------------------------------------------------
# Parsing and credentials
# --------------------------------------------------------------------------------------------

_SCHEMES: Final = MappingProxyType({  # scheme -> (kind, default port)
    "dicomweb+http": ("dicomweb", 80), "dicomweb+https": ("dicomweb", 443),
    "dimse": ("dimse", DEFAULT_DIMSE_PORT), "xnat": ("xnat", 443), "xnat+http": ("xnat", 80),
    "xnat+https": ("xnat", 443)})


def parse_spec(spec: str) -> RemoteSpec:
    """Parse and validate a remote source URL.

    Parameters
    ----------
    spec : str
        ``dicomweb+http(s)://...``, ``dimse://AET@host:port?...`` or ``xnat[+http(s)]://...``.

    Returns
    -------
    RemoteSpec
        The parsed URL; ``label`` is safe to show.

    Raises
    ------
    ConfigError
        Unknown scheme, credentials in the URL, bad host/port/path, unknown or repeated query
        keys, missing study filter, malformed UID, date or AE title. Messages name the key,
        never its value.

    """
    try:
        parts = urlsplit(spec)
        port = parts.port
    except ValueError:
        raise ConfigError("remote source: malformed URL (check the host and port)") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(f"remote source: unknown scheme {scheme!r}; use one of "
                          f"{', '.join(sorted(_SCHEMES))}")
    kind, default_port = _SCHEMES[scheme]
    if parts.password is not None:
        raise ConfigError(f"{kind}: credentials in the URL are refused; set {ENV_USER} and "
                          f"{ENV_PASSWORD} (or {ENV_TOKEN}) or use ~/.netrc")
    if not parts.hostname:
        raise ConfigError(f"{kind}: the URL has no host")
    if parts.fragment:
        raise ConfigError(f"{kind}: the URL has a '#' fragment; remove it")
    user = unquote(parts.username) if parts.username is not None else None
    path = unquote(parts.path)
    query = _parse_query(kind, parts.query)
    filters = tuple((k, v) for k, v in query if k in STUDY_KEYS)
    options = tuple((k, v) for k, v in query if k not in STUDY_KEYS)
    remote = RemoteSpec(kind=kind, scheme=scheme, host=parts.hostname, port=port or default_port,
                        path=path, user=user, filters=filters, options=options)
    if kind == "xnat":
        if len([p for p in path.split("/") if p]) < 3:
            raise ConfigError("xnat: the URL path must end in /PROJECT/SUBJECT/SESSION")
    else:
        if not filters:
            raise ConfigError(f"{kind}: give at least one study filter: "
                              f"{', '.join(k + '=...' for k in STUDY_KEYS)}")
        if kind == "dimse":
            if not user or not _AET_RE.match(user):
                raise ConfigError("dimse: give the called AE title (1-16 characters, no "
                                  "backslash) as dimse://AET@host:port")
            _check_dimse_options(remote)
    return remote


def _parse_query(kind: str, query: str) -> list[tuple[str, str]]:
    if not query:
        return []
    if kind == "xnat":
        raise ConfigError("xnat: the URL takes no query; give xnat://host/PROJECT/SUBJECT/SESSION")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigError(f"{kind}: malformed query string") from None
    allowed = STUDY_KEYS + (DIMSE_OPTIONS if kind == "dimse" else ())
    seen: set[str] = set()
    for key, value in pairs:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"{kind}: unknown query key {key!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else
                                 f"; allowed: {', '.join(allowed) or 'none'}"))
        if key in seen:
            raise ConfigError(f"{kind}: query key {key!r} given twice")
        seen.add(key)
        if not value or any(ord(c) < 0x20 or c in "\\*?" for c in value):
            raise ConfigError(f"{kind}: query key {key!r} is empty or has a wildcard, backslash "
                              "or control character")
        if key == "StudyInstanceUID" and (len(value) > 64 or not _UID_RE.match(value)):
            raise ConfigError(f"{kind}: StudyInstanceUID is not a valid UID")
        if key == "StudyDate" and (not _DATE_RE.match(value) or value == "-"):
            raise ConfigError(f"{kind}: StudyDate must be YYYYMMDD or a YYYYMMDD-YYYYMMDD range")
    return pairs


def _check_dimse_options(remote: RemoteSpec) -> None:
    calling = remote.option("calling")
    if calling is not None and not _AET_RE.match(calling):
        raise ConfigError("dimse: calling= must be an AE title (1-16 characters, no backslash)")
    retrieve = remote.option("retrieve")
    if retrieve is not None and retrieve not in RETRIEVE_METHODS:
        raise ConfigError(f"dimse: retrieve= must be one of {', '.join(RETRIEVE_METHODS)}")
    move_dest = remote.option("move_dest")
    if move_dest is not None:
        parse_move_dest(move_dest)


def parse_move_dest(value: str) -> tuple[str, int]:
    """Parse a C-MOVE destination ``AET:port`` (our storage SCP, known to the peer).

    Raises
    ------
    ConfigError
        Not ``AET:port``, or the port is not 1-65535.

    """
    aet, sep, port = value.rpartition(":")
    if not sep or not _AET_RE.match(aet) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("dimse: move_dest must be AET:port (an AE title the peer knows and "
                          "the local port to receive on)")
    return aet, int(port)


@dataclass(frozen=True, slots=True)
class _Credentials:
    user: str | None
    password: str | None = field(repr=False, default=None)
    token: str | None = field(repr=False, default=None)


def _credentials(remote: RemoteSpec) -> _Credentials:
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
        raise ConfigError(f"{remote.kind}: user name given but no password: set {ENV_PASSWORD} "
                          f"or add a ~/.netrc entry for {remote.host}")
    if password is not None and user is None:
        raise ConfigError(f"{remote.kind}: {ENV_PASSWORD} is set but no user name: set "
                          f"{ENV_USER} or put user@ in the URL")
    return _Credentials(user=user, password=password, token=token)


def _netrc_entry(host: str) -> tuple[str, str] | None:
    path = Path(os.environ.get(ENV_NETRC) or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except netrc.NetrcParseError as exc:  # its message can quote a token: keep only the line
        raise ConfigError(f"netrc: {path.name}: parse error at line {exc.lineno} (or the file "
                          "is readable by others: chmod 600)") from None
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
        raise ConfigError(f"{remote.kind}: CA bundle {path.name} not found (--ca-bundle or "
                          f"{ENV_CA_BUNDLE})")
    return str(path)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Staging, progress, retries
# --------------------------------------------------------------------------------------------

def _digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class _Stage:
    """The files of one fetch: atomic writes, a journal of finished sizes, resume checks.

    Thread-safe: DIMSE stores arrive on pynetdicom's association threads.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self.extras: list[SourceFile] = []
        self.written = 0
        self.not_fetched = 0  # non-image series left at the archive (reported as excluded)
        try:
            root.mkdir(mode=0o700, parents=False, exist_ok=True)
            journal = root / _JOURNAL
            if journal.exists():
                for line in journal.read_text(errors="replace").splitlines():
                    size, tab, relpath = line.partition("\t")
                    if tab and size.isdigit():
                        self._sizes[relpath] = int(size)
        except OSError as exc:
            raise OutputError(f"staging: cannot create or read the staging dir "
                              f"({type(exc).__name__})") from None

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def has(self, relpath: str, expected: int | None = None) -> bool:
        """True when the file was finished earlier and still has its recorded size."""
        recorded = self._sizes.get(relpath)
        if recorded is None or (expected is not None and recorded != expected):
            return False
        try:
            return self.path(relpath).stat().st_size == recorded
        except OSError:
            return False

    def write(self, relpath: str, chunks: Iterable[bytes], expected: int | None = None) -> bool:
        """Write atomically and journal the size; False (nothing kept) on a size mismatch."""
        target = self.path(relpath)
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(handle, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                    size = out.tell()
                if expected is not None and size != expected:
                    tmp.unlink()
                    return False
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            with self._lock:
                with open(self.root / _JOURNAL, "a", encoding="ascii") as journal:
                    journal.write(f"{size}\t{relpath}\n")
                self._sizes[relpath] = size
                self.written += 1
        except OSError as exc:
            raise OutputError(f"staging: cannot write {relpath} ({type(exc).__name__}); "
                              "check free space") from None
        return True

    def staged_in(self, dirname: str) -> list[str]:
        """Relpaths finished earlier in one series dir (recorded and still the recorded size)."""
        prefix = dirname + "/"
        with self._lock:
            relpaths = [r for r in self._sizes if r.startswith(prefix)]
        return [r for r in relpaths if self.has(r)]

    def add_extra(self, relpath: str) -> None:
        with self._lock:
            self.extras.append(SourceFile(self.path(relpath), relpath))


class _Progress:
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


class _Transient(Exception):
    """A failure worth retrying: lost connection, timeout, HTTP 5xx, aborted association."""

    def __init__(self, reason: str, *, connection: bool, rejected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connection = connection
        self.rejected = rejected


def _retry(call: Callable[[], Any], policy: RetryPolicy, what: str) -> Any:
    """Run ``call``, retrying on ``_Transient`` with exponential backoff; re-raise the last."""
    last: _Transient | None = None
    for attempt, wait in enumerate(policy.waits(), start=1):
        if wait:
            time.sleep(wait)
        try:
            return call()
        except _Transient as exc:
            last = exc
            log.info("%s: attempt %d of %d failed (%s)", what, attempt, policy.attempts,
                     exc.reason)
    assert last is not None
    raise last


def _unreachable(remote: RemoteSpec, exc: _Transient, policy: RetryPolicy) -> InputError:
    if exc.rejected:
        return InputError(f"{remote.kind}: association rejected by {remote.where} after "
                          f"{policy.attempts} attempts; is our calling AE title configured on "
                          "the peer?")
    return InputError(f"{remote.kind}: cannot reach {remote.where} after {policy.attempts} "
                      f"attempts ({exc.reason}); check the server and rerun to resume")


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
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
        log.warning("remote: %d library warning(s) suppressed (their text may quote header "
                    "values)", len(caught))


@dataclass(frozen=True, slots=True)
class _Item:
    """One instance (or XNAT file) to have locally."""

    key: str = field(repr=False)  # SOPInstanceUID or XNAT file path: never logged
    relpath: str
    size: int | None = None       # expected size, when the server tells (XNAT)
    uri: str = field(repr=False, default="")  # XNAT: the file's URI from the listing


@dataclass(frozen=True, slots=True)
class _SeriesPlan:
    """One series to retrieve; ``index`` (1-based, in query order) is what messages show.

    ``items`` is the instance listing, or None while the series has not been listed: a series
    with nothing staged and a server-reported ``count`` is fetched whole without one.
    """

    index: int
    dirname: str
    ids: tuple[str, ...] = field(repr=False)  # (study UID, series UID) or (scan ID,)
    count: int | None = None
    items: tuple[_Item, ...] | None = None
    sop_classes: tuple[str, ...] = field(repr=False, default=())

    def relpath(self, key: str) -> str:
        return f"{self.dirname}/{_digest(key, 20)}.dcm"


def _series_dirname(number: Any, key: str) -> str:
    """``<series number>-<digest>``: readable order, stable across runs, no UID."""
    text = str(number).strip() if number is not None else ""
    prefix = f"{int(text):04d}" if text.isdigit() and len(text) < 10 else "x"
    return f"{prefix}-{_digest(key, 10)}"


def _missing(stage: _Stage, plan: _SeriesPlan) -> list[_Item]:
    return [item for item in plan.items or () if not stage.has(item.relpath, item.size)]


_Lister = Callable[[_SeriesPlan], _SeriesPlan]
_Find = Callable[["Dataset"], "list[Dataset]"]
_Retriever = Callable[[_SeriesPlan, "list[_Item] | None"], None]


def _retrieve_all(plans: Sequence[_SeriesPlan], stage: _Stage, progress: _Progress,
                  policy: RetryPolicy, remote: RemoteSpec, retrieve: _Retriever,
                  list_instances: _Lister) -> list[SourceFile]:
    """Retrieve what is missing of each series with retries; raise once at the end on failures.

    Listing a series' instances costs about as much as transferring them (Orthanc reads every
    instance for QIDO and image-level C-FIND), so a series with nothing staged is fetched whole
    and checked against the server's count; one partly staged is listed and only its missing
    instances are fetched (``retrieve(plan, None)`` = the whole series). A series whose staged
    count equals the server's count is taken as complete without a listing.
    """
    def resolve(plan: _SeriesPlan) -> _SeriesPlan:
        if plan.items is not None:
            return plan
        staged = len(stage.staged_in(plan.dirname))
        if plan.count is not None and staged in (0, plan.count):
            return plan
        return list_instances(plan)

    def todo(plan: _SeriesPlan) -> int:
        if plan.items is not None:
            return len(_missing(stage, plan))
        return 0 if stage.staged_in(plan.dirname) else plan.count or 0

    current = {plan.index: plan for plan in plans}  # replaced by the listed plan when listed
    failed: list[int] = []

    def attempt(index: int) -> None:
        plan = current[index] = resolve(current[index])
        if plan.items is None:
            retrieve(plan, None)
            left = (plan.count or 0) - len(stage.staged_in(plan.dirname))
        else:
            missing = _missing(stage, plan)
            if missing:
                retrieve(plan, missing)
            left = len(_missing(stage, plan))
        if left > 0:
            raise _Transient(f"{left} of {plan.count if plan.items is None else len(plan.items)}"
                             " instances not received", connection=False)

    def guarded(step: Callable[[int], None], index: int) -> None:
        try:
            _retry(lambda: step(index), policy, f"{remote.kind}: series {index}")
        except _Transient as exc:
            if exc.connection or exc.rejected:
                raise _unreachable(remote, exc, policy) from None
            log.warning("%s: series %d failed: %s", remote.kind, index, exc.reason)
            failed.append(index)

    def list_if_partial(index: int) -> None:
        current[index] = resolve(current[index])

    for index in current:  # list partly staged series first, so the total is known up front
        guarded(list_if_partial, index)
    total = sum(todo(plan) for index, plan in current.items() if index not in failed)
    log.info("%s: %d series, %d instances to download", remote.kind, len(plans), total)
    progress.start(total)
    for index in current:
        if index not in failed and todo(current[index]):
            guarded(attempt, index)
    if failed:
        shown = ", ".join(str(i) for i in failed[:10]) + (", ..." if len(failed) > 10 else "")
        raise InputError(f"{remote.kind}: {len(failed)} of {len(plans)} series failed (series "
                         f"{shown}) at {remote.where}; rerun the same command to resume")
    files: list[SourceFile] = list(stage.extras)
    for plan in current.values():
        relpaths = ([i.relpath for i in plan.items] if plan.items is not None else
                    stage.staged_in(plan.dirname))
        files.extend(SourceFile(stage.path(r), r) for r in relpaths)
    return files


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def fetch(spec: str, staging: Path, *, progress: ProgressCallback | None = None,
          ca_bundle: str | os.PathLike | None = None, move_dest: str | None = None,
          retrieve: str | None = None, timeout: float = DEFAULT_TIMEOUT,
          retry: RetryPolicy = RetryPolicy(),
          skip_modalities: Iterable[str] = NON_IMAGE_MODALITIES) -> SourceSet:
    """Fetch every instance of the image series of the matching studies into ``staging``.

    Parameters
    ----------
    spec : str
        A remote source URL (see the module docstring); never with a password in it.
    staging : Path
        The caller's private (0700) staging dir; files go to ``staging/remote-<digest>/``, the
        same dir for the same spec, so a rerun resumes.
    progress : callable, optional
        ``progress(done, total)``: instances downloaded so far in this run, of ``total`` to
        download (known before the first download; it grows if the server sends instances it
        did not list). DIMSE calls it from pynetdicom's threads.
    ca_bundle : str or PathLike, optional
        Extra CA certificates for HTTPS (default: env ``DCMPACK_CA_BUNDLE``, else the system's).
    move_dest : str, optional
        ``AET:port`` of a storage SCP this call starts for C-MOVE (DIMSE); used when the peer
        refuses C-GET or ``retrieve="move"``. Same as ``&move_dest=`` in the URL.
    retrieve : {"get", "move"}, optional
        DIMSE retrieval method (default ``get``, falling back to ``move`` if refused).
    timeout : float
        Seconds for every network call (connect, each read, each DIMSE message).
    retry : RetryPolicy
        Attempts and backoff for transient failures.
    skip_modalities : iterable of str
        Series modalities not fetched (default ``NON_IMAGE_MODALITIES``); empty to fetch all.

    Returns
    -------
    SourceSet
        ``root`` under ``staging``, every staged instance (sorted by relpath), ``label`` = the
        spec without credentials or query.

    Raises
    ------
    ConfigError
        Bad URL or options, credentials in the URL, user without password.
    InputError
        Authentication failure, no matching study, server unreachable after retries, or series
        that failed (named by index; what did arrive stays staged for a resume).
    OutputError
        The staging dir is not writable.

    """
    remote = parse_spec(spec)
    skip = frozenset(m.upper() for m in skip_modalities)
    root = Path(staging) / f"remote-{_digest(remote.label + '?' + repr(sorted(remote.filters)))}"
    stage = _Stage(root)
    ticker = _Progress(progress)
    started = time.monotonic()
    with _quiet_libraries():
        if remote.kind == "dicomweb":
            staged = _fetch_dicomweb(remote, stage, ticker, retry, timeout, skip, ca_bundle)
        elif remote.kind == "dimse":
            if retrieve is not None and retrieve not in RETRIEVE_METHODS:
                raise ConfigError(f"dimse: retrieve must be one of {', '.join(RETRIEVE_METHODS)}")
            staged = _fetch_dimse(remote, stage, ticker, retry, timeout, skip,
                                 _merge_option(remote, "move_dest", move_dest),
                                 _merge_option(remote, "retrieve", retrieve) or "get")
        else:
            staged = _fetch_xnat(remote, stage, ticker, retry, timeout, skip, ca_bundle)
    files = {source.relpath: source for source in staged}
    log.info("%s: %d instances staged (%d downloaded) in %.1f s", remote.kind, len(files),
             stage.written, time.monotonic() - started)
    return SourceSet(root=root, files=tuple(files[k] for k in sorted(files)), label=remote.label,
                     not_fetched=stage.not_fetched)


def _merge_option(remote: RemoteSpec, key: str, value: str | None) -> str | None:
    given = remote.option(key)
    if value is not None and given is not None and value != given:
        raise ConfigError(f"dimse: {key} given both in the URL and as an option, differently")
    if value is not None and key == "move_dest":
        parse_move_dest(value)
    return value if value is not None else given


# --------------------------------------------------------------------------------------------
# HTTP (DICOMweb and XNAT)
# --------------------------------------------------------------------------------------------

def _http_session(remote: RemoteSpec, creds: _Credentials, verify: str | bool,
                  *, bearer: bool) -> requests.Session:
    import requests

    class Session(requests.Session):
        """A requests Session that passes ``verify`` with every request.

        requests lets REQUESTS_CA_BUNDLE override a Session's own ``verify``
        (psf/requests#3829), which would silently drop ``--ca-bundle``.
        """

        def request(self, method: str | bytes, url: str | bytes, *args: Any,
                    **kwargs: Any) -> requests.Response:
            kwargs.setdefault("verify", verify)
            return super().request(method, url, *args, **kwargs)

    session = Session()
    session.verify = verify
    if bearer and creds.token:
        session.headers["Authorization"] = f"Bearer {creds.token}"
    elif creds.user is not None and creds.password is not None:
        session.auth = (creds.user, creds.password)
    if (session.auth or "Authorization" in session.headers) and remote.http_base.startswith(
            "http:") and not _is_loopback(remote.host):
        log.warning("%s: sending credentials over plain HTTP (not HTTPS)", remote.kind)
    return session


def _http_status(remote: RemoteSpec, status: int) -> None:
    """Raise for an HTTP error status: auth is fatal, 5xx/408/429 transient, others returned."""
    if status in (401, 403):
        raise InputError(f"{remote.kind}: authentication failed (HTTP {status}) at "
                         f"{remote.where}; check {ENV_USER}/{ENV_PASSWORD}"
                         f"{'/' + ENV_TOKEN if remote.kind == 'dicomweb' else ''} or ~/.netrc"
                         ) from None  # may run while a library error (URL text) is handled
    if status >= 500 or status in (408, 429):
        raise _Transient(f"HTTP {status}", connection=False) from None


@contextlib.contextmanager
def _http_errors(remote: RemoteSpec) -> Iterator[None]:
    """Map requests' exceptions to ours (value-free: their text can carry URLs with UIDs)."""
    import requests

    try:
        yield
    except requests.exceptions.SSLError:
        raise InputError(f"{remote.kind}: TLS verification failed at {remote.where}; give the "
                         f"server's CA with --ca-bundle or {ENV_CA_BUNDLE}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(type(exc).__name__, connection=True) from None
    except requests.exceptions.ChunkedEncodingError as exc:  # connection lost mid-body
        raise _Transient(type(exc).__name__, connection=True) from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        _http_status(remote, status)
        hint = "; check the URL path" if status == 404 else ""
        raise InputError(f"{remote.kind}: the server answered HTTP {status} at "
                         f"{remote.where}{hint}") from None


def _get(session: requests.Session, remote: RemoteSpec, url: str, timeout: float,
         **kwargs: Any) -> requests.Response:
    """GET with our error mapping; the caller handles 4xx other than 401/403."""
    with _http_errors(remote):
        response = session.get(url, timeout=timeout, **kwargs)
    _http_status(remote, response.status_code)
    return response


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    media, *params = (part.strip() for part in value.split(";"))
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"')
    return media.lower(), parsed


def _iter_parts(response: requests.Response) -> Iterator[tuple[str, bytes]]:
    """Stream the parts of a ``multipart/related`` body as (part content type, bytes).

    PS3.18 8.6.1.2: each part of a WADO-RS ``application/dicom`` response is one instance. We
    decode it ourselves because dicomweb-client only returns parsed data sets, and we keep the
    exact bytes. A body that ends without the closing delimiter is a lost connection.
    """
    media, params = _content_type(response.headers.get("Content-Type", ""))
    if media == "application/dicom":  # non-conformant single-part answer (some servers)
        yield media, response.content
        return
    boundary = params.get("boundary")
    if media != "multipart/related" or not boundary:
        raise _Transient("unexpected response content type", connection=False)
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    buffer = bytearray(b"\r\n")  # so a boundary on the body's first line matches too
    search_from, started, after_delimiter, closed = 0, False, False, False
    for chunk in response.iter_content(chunk_size=_CHUNK):
        buffer += chunk
        while True:
            if after_delimiter:  # "--" right after a delimiter closes the body (RFC 2046 5.1.1)
                if len(buffer) < 2:
                    break
                closed, after_delimiter = buffer[:2] == b"--", False
                if closed:
                    break
            found = buffer.find(delimiter, search_from)
            if found < 0:
                search_from = max(0, len(buffer) - len(delimiter) + 1)
                break
            if started:
                yield _split_part(bytes(buffer[:found]))
            started, after_delimiter, search_from = True, True, 0
            del buffer[:found + len(delimiter)]
        if closed:
            break
    if not closed:
        raise _Transient("response ended early", connection=True)


def _split_part(part: bytes) -> tuple[str, bytes]:
    head, sep, body = part.partition(b"\r\n\r\n")
    if not sep:
        raise _Transient("malformed multipart part", connection=False)
    content_type = ""
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip()
    return content_type, body


def _as_part10(data: bytes, content_type: str) -> tuple[str, bytes]:
    """(SOPInstanceUID, Part-10 bytes): kept as sent, or given a file meta header if bare."""
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    try:
        dataset = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True,
                          specific_tags=["SOPClassUID", "SOPInstanceUID"])
        meta = dataset.get("file_meta") or FileMetaDataset()
        uid = str(dataset.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "")
        if not uid:
            raise ValueError("no SOPInstanceUID")
        if data[128:132] == b"DICM":
            return uid, data
        meta = FileMetaDataset()  # a bare data set: PS3.10 7.1 header in front, bytes unchanged
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = (_content_type(content_type)[1].get("transfer-syntax")
                                  or ExplicitVRLittleEndian)
        buffer = DicomBytesIO()
        buffer.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(buffer, meta)
        return uid, buffer.getvalue() + data
    except (InvalidDicomError, AttributeError, ValueError, KeyError, EOFError, TypeError):
        raise _Transient("a part is not a DICOM instance", connection=False) from None


# --------------------------------------------------------------------------------------------
# DICOMweb: QIDO-RS (dicomweb-client) + WADO-RS (raw multipart, bytes kept)
# --------------------------------------------------------------------------------------------

_TAG_STUDY_UID, _TAG_SERIES_UID, _TAG_SOP_UID = "0020000D", "0020000E", "00080018"
_TAG_MODALITY, _TAG_SERIES_NUMBER, _TAG_SERIES_COUNT = "00080060", "00200011", "00201209"
_WADO_ACCEPT: Final = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _json_value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _qido_all(search: Callable[..., list[dict]], key_tag: str, **kwargs: Any) -> list[dict]:
    """Every QIDO result, paging with offset until a page is empty or brings nothing new.

    Servers cap result counts (with or without a Warning header, PS3.18 8.3.4.1.1), and some
    ignore ``offset``; stopping on "no new UID" handles both without missing results.
    """
    results: dict[str, dict] = {}
    offset = 0
    while True:
        page = search(limit=_QIDO_PAGE, offset=offset, **kwargs)
        fresh = [item for item in page if (_json_value(item, key_tag) or "") not in results]
        for item in fresh:
            uid = _json_value(item, key_tag)
            if uid:
                results[uid] = item
        if not page or not fresh:
            return list(results.values())
        offset += len(page)


def _fetch_dicomweb(remote: RemoteSpec, stage: _Stage, progress: _Progress, policy: RetryPolicy,
                    timeout: float, skip: frozenset[str],
                    ca_bundle: str | os.PathLike | None) -> list[SourceFile]:
    from dicomweb_client.api import DICOMwebClient

    session = _http_session(remote, _credentials(remote), _ca_bundle(remote, ca_bundle),
                            bearer=True)
    base = remote.http_base
    try:
        client = DICOMwebClient(base, session=session, timeout=timeout)
    except ValueError:
        raise ConfigError("dicomweb: the URL is not a usable DICOMweb root") from None
    client.set_http_retry_params(retry=False)  # one retry policy: ours

    def qido_once(search: Callable[..., list[dict]], key_tag: str, **kwargs: Any) -> list[dict]:
        with _http_errors(remote):
            try:
                return _qido_all(search, key_tag, **kwargs)
            except ValueError:  # undecodable JSON: a proxy page, a wrong path
                raise InputError(f"dicomweb: {remote.where} did not answer QIDO-RS with DICOM "
                                 "JSON; check the DICOMweb root path") from None

    def qido(search: Callable[..., list[dict]], key_tag: str, **kwargs: Any) -> list[dict]:
        try:
            return _retry(lambda: qido_once(search, key_tag, **kwargs), policy, "dicomweb: query")
        except _Transient as exc:
            if exc.connection:
                raise _unreachable(remote, exc, policy) from None
            raise InputError(f"dicomweb: query failed at {remote.where} ({exc.reason})") from None

    studies = qido(client.search_for_studies, _TAG_STUDY_UID, search_filters=dict(remote.filters))
    study_uids = sorted(uid for uid in (_json_value(s, _TAG_STUDY_UID) for s in studies) if uid)
    if not study_uids:
        raise InputError(f"dicomweb: no study matched the query at {remote.where}")
    plans: list[_SeriesPlan] = []
    skipped = 0
    for study_uid in study_uids:
        series = qido(client.search_for_series, _TAG_SERIES_UID, study_instance_uid=study_uid,
                      fields=["NumberOfSeriesRelatedInstances"])
        for item in sorted(series, key=_series_sort_key):
            series_uid = _json_value(item, _TAG_SERIES_UID)
            if not series_uid:
                continue
            if (_json_value(item, _TAG_MODALITY) or "").upper() in skip:
                skipped += 1
                continue
            count = _json_value(item, _TAG_SERIES_COUNT)
            plans.append(_SeriesPlan(
                len(plans) + 1, _series_dirname(_json_value(item, _TAG_SERIES_NUMBER), series_uid),
                (study_uid, series_uid), int(count) if count and count.isdigit() else None))
    stage.not_fetched += skipped
    log.info("dicomweb: %d studies matched; %d series skipped as non-image", len(study_uids),
             skipped)

    def list_instances(plan: _SeriesPlan) -> _SeriesPlan:
        study_uid, series_uid = plan.ids
        found = qido_once(client.search_for_instances, _TAG_SOP_UID,
                          study_instance_uid=study_uid, series_instance_uid=series_uid)
        uids = sorted({u for u in (_json_value(i, _TAG_SOP_UID) for i in found) if u})
        return replace(plan, items=tuple(_Item(u, plan.relpath(u)) for u in uids))

    def retrieve(plan: _SeriesPlan, missing: list[_Item] | None) -> None:
        study_uid, series_uid = plan.ids
        series_url = f"{base}/studies/{study_uid}/series/{series_uid}"
        # Few missing: ask for those instances; else the series once, skipping staged ones.
        urls = ([f"{series_url}/instances/{item.key}" for item in missing]
                if missing is not None and 2 * len(missing) <= len(plan.items or ())
                else [series_url])
        listed = _listed(plan)
        for url in urls:
            response = _get(session, remote, url, timeout, stream=True,
                            headers={"Accept": _WADO_ACCEPT})
            with response, _http_errors(remote):
                if response.status_code >= 400:
                    raise _Transient(f"HTTP {response.status_code} on retrieve",
                                     connection=False)
                for content_type, data in _iter_parts(response):
                    uid, part10 = _as_part10(data, content_type)
                    _store(stage, progress, plan, uid, (part10,), listed)

    return _retrieve_all(plans, stage, progress, policy, remote, retrieve, list_instances)


def _store(stage: _Stage, progress: _Progress, plan: _SeriesPlan, uid: str,
           chunks: Iterable[bytes], listed: frozenset[str] | None) -> None:
    """Stage one received instance of ``plan`` unless it is staged already."""
    relpath = plan.relpath(uid)
    if listed is not None and uid not in listed:
        stage.add_extra(relpath)  # not in the listing, yet part of the series: keep it
    if not stage.has(relpath):
        stage.write(relpath, chunks)
        progress.advance()


def _listed(plan: _SeriesPlan) -> frozenset[str] | None:
    return None if plan.items is None else frozenset(item.key for item in plan.items)


def _series_sort_key(item: dict) -> tuple[int, str]:
    return _number(_json_value(item, _TAG_SERIES_NUMBER)), _json_value(item, _TAG_SERIES_UID) or ""


def _number(value: Any) -> int:
    """An IS value as int for sorting; absent or odd values sort last."""
    text = str(value if value is not None else "").strip()
    return int(text) if text.lstrip("-").isdigit() else 1 << 31


# --------------------------------------------------------------------------------------------
# DIMSE: C-FIND (study, series, image), then C-GET with SCP role, or C-MOVE to our own SCP
# --------------------------------------------------------------------------------------------

def _transfer_syntax_groups() -> tuple[tuple[str, ...], ...]:
    """Transfer syntaxes we propose for storage, one presentation context per group.

    Uncompressed first; then the common compressed ones, each in a context of its own so the
    peer can send a compressed instance as stored instead of transcoding it (it has to pick
    ONE syntax per context, PS3.8 9.3.2.2). Fewer groups are used when SOP classes are many.
    """
    from pydicom import uid

    return ((uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian),
            (uid.JPEGLosslessSV1,), (uid.JPEG2000Lossless,), (uid.JPEGBaseline8Bit,),
            (uid.JPEG2000,), (uid.JPEGLSLossless,), (uid.RLELossless,),
            (uid.DeflatedExplicitVRLittleEndian,), (uid.JPEGExtended12Bit,), (uid.JPEGLossless,),
            (uid.JPEGLSNearLossless,), (uid.ExplicitVRBigEndian,))


#: Used only when the peer reports no SOP class at all (neither study- nor image-level): MR,
#: Enhanced MR, Legacy Converted Enhanced MR, CT, Enhanced CT, PET, Enhanced PET, NM, SC, CR,
#: DX, XA, US, Segmentation.
_COMMON_IMAGE_SOP_CLASSES: Final = (
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4",
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.20", "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.12.1",
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.66.4")


def _set_nodelay(event: Event) -> None:
    """Set TCP_NODELAY on a pynetdicom socket (pynetdicom never does).

    With Nagle on, each DIMSE exchange waits 40-90 ms for the peer's delayed ACK (PACS.md:
    20 instances/s instead of 200/s against Orthanc).
    """
    with contextlib.suppress(OSError, AttributeError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


class _Receiver:
    """Stages incoming C-STOREs (C-GET or C-MOVE sub-operations) of the series being retrieved."""

    def __init__(self, stage: _Stage, progress: _Progress) -> None:
        self.stage = stage
        self.progress = progress
        self.plan: _SeriesPlan | None = None
        self.listed: frozenset[str] | None = None
        self.received = 0
        self.write_failed = False

    def expect(self, plan: _SeriesPlan) -> None:
        self.plan, self.listed = plan, _listed(plan)

    def on_store(self, event: Event) -> int:
        """EVT_C_STORE handler: keep the data set bytes as sent, behind a Part-10 header."""
        if self.plan is None:
            return 0xA700  # nothing requested: refuse (Out of resources, PS3.4 B.2.3)
        self.received += 1
        try:
            _store(self.stage, self.progress, self.plan, str(event.request.AffectedSOPInstanceUID),
                   (event.encoded_dataset(include_meta=True),), self.listed)
        except OutputError:
            self.write_failed = True
            return 0xA700
        return 0x0000


class _Dimse:
    """One DIMSE peer: associations with retries, C-FIND, C-GET, C-MOVE."""

    def __init__(self, remote: RemoteSpec, policy: RetryPolicy, timeout: float) -> None:
        self.remote = remote
        self.policy = policy
        self.timeout = timeout
        self.calling = remote.option("calling") or DEFAULT_CALLING_AET

    def make_ae(self, ae_title: str | None = None) -> Any:
        """A pynetdicom AE with our timeouts (``ae_title`` defaults to the calling AE)."""
        from pynetdicom import AE

        ae = AE(ae_title=ae_title or self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        ae.maximum_pdu_size = 1 << 20  # larger PDUs, fewer round trips
        return ae

    def associate(self, contexts: Sequence[tuple[str, Sequence[str]]], *,
                  roles: Sequence[str] = (), handlers: Sequence[tuple] = ()) -> Association:
        """Open one association (no retry here); raise _Transient when it does not come up."""
        from pynetdicom import build_role, evt

        ae = self.make_ae()
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        try:
            assoc = ae.associate(self.remote.host, self.remote.port, ae_title=self.remote.user,
                                 ext_neg=[build_role(s, scp_role=True) for s in roles] or None,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay), *handlers])
        except OSError as exc:  # name resolution
            raise _Transient(type(exc).__name__, connection=True) from None
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise _Transient("association rejected", connection=False, rejected=True)
        raise _Transient("no association (connection refused, timeout or abort)",
                         connection=True)

    def is_up(self) -> bool:
        """True when the peer accepts (or rejects) an association: it is listening."""
        from pydicom.uid import ImplicitVRLittleEndian
        from pynetdicom.sop_class import Verification

        try:
            probe = self.associate([(Verification, (ImplicitVRLittleEndian,))])
        except _Transient as exc:
            return exc.rejected  # only "no connection" means down
        probe.release()
        return True

    def find_once(self, queries: Callable[[_Find], Any]) -> Any:
        """Run ``queries(find)`` on one new FIND association; raise _Transient on failure."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        model = StudyRootQueryRetrieveInformationModelFind
        assoc = self.associate([(model, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))])

        def find(query: Dataset) -> list[Dataset]:
            matches = []
            for status, identifier in assoc.send_c_find(query, model):
                code = getattr(status, "Status", None)
                if code is None:
                    raise _Transient("C-FIND: no response (association lost)", connection=False)
                if code in _PENDING and identifier is not None:
                    matches.append(identifier)
                elif code not in _PENDING and code != 0x0000:
                    raise _Transient(f"C-FIND status 0x{code:04X}", connection=False)
            return matches

        try:
            return queries(find)
        finally:
            if assoc.is_established:
                assoc.release()

    def find(self, queries: Callable[[_Find], Any]) -> Any:
        """``find_once`` with retries; failures become one-line ``InputError``s."""
        try:
            return _retry(lambda: self.find_once(queries), self.policy, "dimse: query")
        except _Transient as exc:
            if exc.connection or exc.rejected:
                raise _unreachable(self.remote, exc, self.policy) from None
            raise InputError(f"dimse: query failed at {self.remote.where} "
                             f"({exc.reason})") from None


def _dimse_query(level: str, **keys: Any) -> Dataset:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(query, key, value)
    return query


def _fetch_dimse(remote: RemoteSpec, stage: _Stage, progress: _Progress, policy: RetryPolicy,
                 timeout: float, skip: frozenset[str], move_dest: str | None,
                 method: str) -> list[SourceFile]:
    peer = _Dimse(remote, policy, timeout)
    if method == "move" and move_dest is None:
        raise ConfigError("dimse: retrieve=move needs move_dest=AET:port (a storage AE title "
                          "the peer knows, and our local port)")
    filters = dict(remote.filters)

    def listing(find: _Find) -> tuple[list[_SeriesPlan], int, int]:
        studies = find(_dimse_query("STUDY", **{"StudyInstanceUID": "", "SOPClassesInStudy": "",
                                                **filters}))
        by_uid = {str(s.get("StudyInstanceUID", "")): s for s in studies}
        by_uid.pop("", None)
        plans: list[_SeriesPlan] = []
        skipped = 0
        for study_uid in sorted(by_uid):
            study_sops = tuple(_as_list(by_uid[study_uid].get("SOPClassesInStudy")))
            series = find(_dimse_query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="",
                                       SeriesNumber="", Modality="",
                                       NumberOfSeriesRelatedInstances=""))
            for item in sorted(series, key=lambda s: (_number(s.get("SeriesNumber")),
                                                      str(s.get("SeriesInstanceUID", "")))):
                series_uid = str(item.get("SeriesInstanceUID", ""))
                if not series_uid:
                    continue
                if str(item.get("Modality", "")).upper() in skip:
                    skipped += 1
                    continue
                count = str(item.get("NumberOfSeriesRelatedInstances", "")).strip()
                plans.append(_SeriesPlan(
                    len(plans) + 1, _series_dirname(item.get("SeriesNumber"), series_uid),
                    (study_uid, series_uid),
                    # Without SOP classes from the study level, list the series to learn them.
                    int(count) if count.isdigit() and study_sops else None,
                    sop_classes=study_sops))
        return plans, len(by_uid), skipped

    def list_instances(plan: _SeriesPlan) -> _SeriesPlan:
        study_uid, series_uid = plan.ids
        images = peer.find_once(lambda find: find(_dimse_query(
            "IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
            SOPInstanceUID="", SOPClassUID="")))
        uids = sorted({str(i.SOPInstanceUID) for i in images if i.get("SOPInstanceUID")})
        sops = {str(i.SOPClassUID) for i in images if i.get("SOPClassUID")}
        return replace(plan, items=tuple(_Item(u, plan.relpath(u)) for u in uids),
                       sop_classes=tuple(sorted(sops | set(plan.sop_classes)))
                       or _COMMON_IMAGE_SOP_CLASSES)

    plans, n_studies, skipped = peer.find(listing)
    if not n_studies:
        raise InputError(f"dimse: no study matched the query at {remote.where}")
    stage.not_fetched += skipped
    log.info("dimse: %d studies matched; %d series skipped as non-image", n_studies, skipped)
    receiver = _Receiver(stage, progress)
    retriever = _DimseRetriever(peer, receiver, move_dest, method,
                                {sop for plan in plans for sop in plan.sop_classes})
    try:
        files = _retrieve_all(plans, stage, progress, policy, remote, retriever.retrieve,
                              list_instances)
    finally:
        retriever.close()
    if receiver.write_failed:
        raise OutputError("staging: cannot write received instances; check free space")
    return files


class _DimseRetriever:
    """C-GET per series on shared associations (<= 128 contexts each); C-MOVE when refused."""

    def __init__(self, peer: _Dimse, receiver: _Receiver, move_dest: str | None,
                 method: str, sop_classes: Iterable[str]) -> None:
        self.peer = peer
        self.sop_classes = frozenset(sop_classes)  # the study's, for our C-MOVE storage SCP
        self.receiver = receiver
        self.move_dest = move_dest
        self.method = method
        self.get_worked = False
        self.assoc: Association | None = None
        self.assoc_sops: frozenset[str] = frozenset()
        self.scp: Any = None
        self.groups = _transfer_syntax_groups()

    # -- shared ----------------------------------------------------------------------------
    def retrieve(self, plan: _SeriesPlan, missing: list[_Item] | None) -> None:
        """Retrieve ``missing`` (None: the whole series) with C-GET, or C-MOVE if refused."""
        self.receiver.expect(plan)
        if self.method == "get":
            try:
                self._get(plan, missing)
                return
            except _GetRefused:
                if self.move_dest is None:
                    raise InputError(f"dimse: {self.peer.remote.where} refused C-GET for calling "
                                     f"AE title {self.peer.calling!r}; give move_dest=AET:port "
                                     "to retrieve with C-MOVE instead") from None
                log.info("dimse: the peer refused C-GET; retrieving with C-MOVE")
                self.method = "move"
        self._move(plan, missing)

    def _queries(self, plan: _SeriesPlan, missing: list[_Item] | None) -> list[Dataset]:
        """The whole series in one request, or (a few missing) one request per instance."""
        study_uid, series_uid = plan.ids
        if missing is None or 2 * len(missing) > len(plan.items or ()):
            return [_dimse_query("SERIES", StudyInstanceUID=study_uid,
                                 SeriesInstanceUID=series_uid)]
        return [_dimse_query("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                             SOPInstanceUID=item.key) for item in missing]

    def close(self) -> None:
        self._drop_association()
        if self.scp is not None:
            self.scp.shutdown()
            self.scp = None

    def _drop_association(self) -> None:
        if self.assoc is not None:
            with contextlib.suppress(Exception):  # a dead association may raise anything here
                if self.assoc.is_established:
                    self.assoc.release()
                else:
                    self.assoc.abort()
            self.assoc = None

    # -- C-GET -----------------------------------------------------------------------------
    def _contexts(self, sops: Sequence[str]) -> list[tuple[str, Sequence[str]]]:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        per_class = max(1, min(len(self.groups), (_MAX_CONTEXTS - 1) // max(1, len(sops))))
        contexts: list[tuple[str, Sequence[str]]] = [
            (GET, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]
        for sop in sops:
            contexts.extend((sop, group) for group in self.groups[:per_class])
        return contexts

    def _get_association(self, sops: frozenset[str]) -> Association:
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        if self.assoc is not None and self.assoc.is_established and sops <= self.assoc_sops:
            return self.assoc
        self._drop_association()
        if len(sops) > _MAX_CONTEXTS - 1:
            raise _Transient("series has more SOP classes than presentation contexts",
                             connection=False)
        assoc = self.peer.associate(self._contexts(sorted(sops)), roles=sorted(sops),
                                    handlers=[(evt.EVT_C_STORE, self.receiver.on_store)])
        if not any(cx.abstract_syntax == GET for cx in assoc.accepted_contexts):
            assoc.release()
            raise _GetRefused()
        self.assoc, self.assoc_sops = assoc, sops
        return assoc

    def _get(self, plan: _SeriesPlan, missing: list[_Item] | None) -> None:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        assoc = self._get_association(frozenset(plan.sop_classes))
        before = self.receiver.received
        for query in self._queries(plan, missing):
            final: int | None = None
            for status, _identifier in assoc.send_c_get(query, GET):
                final = getattr(status, "Status", None)
            if final in _GET_REFUSED and not self.get_worked:
                self._drop_association()
                raise _GetRefused()
            if final is None:  # association lost: aborted by the peer, timeout, or peer gone
                self._drop_association()
                if not self.get_worked and self.receiver.received == before and \
                        self.peer.is_up():
                    raise _GetRefused()  # Orthanc aborts a C-GET from an AE without the right
                raise _Transient("C-GET: association lost", connection=False)
            if final not in (0x0000, 0xB000):
                raise _Transient(f"C-GET status 0x{final:04X}", connection=False)
        if self.receiver.received > before:
            self.get_worked = True

    # -- C-MOVE ----------------------------------------------------------------------------
    def _start_scp(self) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        assert self.move_dest is not None
        aet, port = parse_move_dest(self.move_dest)
        ae = self.peer.make_ae(aet)
        # Accept every transfer syntax: the peer then sends each instance as it stores it.
        sops = {cx.abstract_syntax for cx in AllStoragePresentationContexts} | self.sop_classes
        for sop in sorted(sops):
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
        # Only the peer may store to us: its sub-operations come from its own AE title.
        ae.require_called_aet = True
        ae.require_calling_aet = [self.peer.remote.user]
        bind = "127.0.0.1" if _is_loopback(self.peer.remote.host) else ""
        try:
            self.scp = ae.start_server((bind, port), block=False, evt_handlers=[
                (evt.EVT_CONN_OPEN, _set_nodelay), (evt.EVT_C_STORE, self.receiver.on_store)])
        except OSError:
            raise InputError(f"dimse: cannot listen on port {port} for C-MOVE (in use or "
                             "not permitted); choose another move_dest port") from None

    def _move(self, plan: _SeriesPlan, missing: list[_Item] | None) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        if self.scp is None:
            self._start_scp()
        assert self.move_dest is not None
        aet, _ = parse_move_dest(self.move_dest)
        assoc = self.peer.associate([(MOVE, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))])
        try:
            for query in self._queries(plan, missing):
                final: int | None = None
                for status, _identifier in assoc.send_c_move(query, aet, MOVE):
                    final = getattr(status, "Status", None)
                if final is None:
                    raise _Transient("C-MOVE: association lost", connection=False)
                if final == 0xA801:
                    raise InputError(f"dimse: {self.peer.remote.where} does not know the move "
                                     f"destination AE title {aet!r}; register it on the peer")
                if final not in (0x0000, 0xB000):
                    raise _Transient(f"C-MOVE status 0x{final:04X}", connection=False)
        finally:
            with contextlib.suppress(Exception):
                if assoc.is_established:
                    assoc.release()


class _GetRefused(Exception):
    """The peer does not allow C-GET for us (context rejected, refused status or abort)."""


# --------------------------------------------------------------------------------------------
# XNAT REST API
# --------------------------------------------------------------------------------------------

_XNAT_FILES_RE: Final = re.compile(r"/resources/[^/]+/files/(.+)$")
_XNAT_ZIP_RE: Final = re.compile(r"(?:^|/)scans/[^/]+/resources/[^/]+/files/(.+)$")


def _xnat_results(response: requests.Response, remote: RemoteSpec) -> list[dict]:
    try:
        results = response.json()["ResultSet"]["Result"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"xnat: {remote.where} did not answer with an XNAT ResultSet; check "
                         "the URL (and any /xnat path prefix)") from None
    return [r for r in results if isinstance(r, dict)]


def _fetch_xnat(remote: RemoteSpec, stage: _Stage, progress: _Progress, policy: RetryPolicy,
                timeout: float, skip: frozenset[str],
                ca_bundle: str | os.PathLike | None) -> list[SourceFile]:
    segments = [quote(s, safe="") for s in remote.path.split("/") if s]
    site = "/".join([remote.http_origin, *segments[:-3]])  # XNAT may live under a path prefix
    project, subject, label = segments[-3:]
    experiment = f"{site}/data/projects/{project}/subjects/{subject}/experiments/{label}"
    session = _http_session(remote, _credentials(remote), _ca_bundle(remote, ca_bundle),
                            bearer=False)

    def listing(url: str, what: str) -> list[dict] | None:
        def attempt() -> list[dict] | None:
            response = _get(session, remote, url, timeout, params={"format": "json"})
            if response.status_code == 404:
                return None
            if response.status_code >= 400:
                raise InputError(f"xnat: {what} listing answered HTTP {response.status_code} "
                                 f"at {remote.where}")
            return _xnat_results(response, remote)
        try:
            return _retry(attempt, policy, f"xnat: {what} listing")
        except _Transient as exc:
            if exc.connection:
                raise _unreachable(remote, exc, policy) from None
            raise InputError(f"xnat: {what} listing failed at {remote.where} "
                             f"({exc.reason})") from None

    scans = listing(f"{experiment}/scans", "scan")
    if scans is None:
        raise InputError(f"xnat: no such session at {remote.where} (HTTP 404); check the "
                         "project, subject and session labels")
    plans: list[_SeriesPlan] = []
    skipped = no_dicom = 0
    for scan in sorted(scans, key=_scan_sort_key):
        scan_id = str(scan.get("ID", ""))
        if not scan_id:
            continue
        if XNAT_NON_IMAGE_TYPES.get(str(scan.get("xsiType", ""))) in skip:
            skipped += 1
            continue
        files = listing(f"{experiment}/scans/{quote(scan_id, safe='')}/resources/DICOM/files",
                        "file")
        if not files:
            no_dicom += 1  # no DICOM resource (e.g. snapshots only)
            continue
        plan = _SeriesPlan(len(plans) + 1, _series_dirname(scan_id, scan_id), (scan_id,))
        items = {}
        for entry in files:
            uri = str(entry.get("URI", ""))
            match = _XNAT_FILES_RE.search(uri)
            key = unquote(match.group(1)) if match else str(entry.get("Name", ""))
            size = str(entry.get("Size", "")).strip()
            if key:
                items[key] = _Item(key, plan.relpath(key),
                                   int(size) if size.isdigit() else None, uri)
        plans.append(replace(plan, count=len(items), items=tuple(
            sorted(items.values(), key=lambda i: i.relpath))))
    stage.not_fetched += skipped
    log.info("xnat: %d scans; %d skipped as non-image, %d without a DICOM resource", len(scans),
             skipped, no_dicom)
    if not plans:
        raise InputError(f"xnat: the session at {remote.where} has no image scans with DICOM "
                         "files")

    def write(items: dict[str, _Item], key: str, chunks: Iterable[bytes]) -> None:
        item = items.get(key)
        if item is None or stage.has(item.relpath, item.size):
            return  # not in the listing (the listing is the reference), or already staged
        if stage.write(item.relpath, chunks, item.size):
            progress.advance()

    def retrieve(plan: _SeriesPlan, missing: list[_Item] | None) -> None:
        files_url = (f"{experiment}/scans/{quote(plan.ids[0], safe='')}"
                     "/resources/DICOM/files")
        items = {item.key: item for item in plan.items or ()}
        if missing is not None and 2 * len(missing) <= len(items):  # a few: one GET each
            for item in missing:
                url = f"{site}{item.uri}" if item.uri.startswith("/") else \
                    f"{files_url}/{quote(item.key)}"
                response = _get(session, remote, url, timeout, stream=True)
                with response, _http_errors(remote):
                    if response.status_code >= 400:
                        raise _Transient(f"HTTP {response.status_code}", connection=False)
                    write(items, item.key, response.iter_content(chunk_size=_CHUNK))
            return
        with tempfile.TemporaryFile(dir=stage.root) as spool:  # zip needs seeking: spool it
            response = _get(session, remote, files_url, timeout, stream=True,
                            params={"format": "zip"})
            with response, _http_errors(remote):
                if response.status_code >= 400:
                    raise _Transient(f"HTTP {response.status_code}", connection=False)
                for chunk in response.iter_content(chunk_size=_CHUNK):
                    spool.write(chunk)
            spool.seek(0)
            try:
                with zipfile.ZipFile(spool) as archive:
                    for info in archive.infolist():
                        # XNAT layout SESSION/scans/ID-TYPE/resources/DICOM/files/<path>. Member
                        # names only select listed files, never become paths (no zip-slip).
                        match = _XNAT_ZIP_RE.search(info.filename)
                        if match and not info.is_dir():
                            with archive.open(info) as member:
                                write(items, match.group(1),
                                      iter(lambda member=member: member.read(_CHUNK), b""))
            except (zipfile.BadZipFile, EOFError):
                raise _Transient("truncated or corrupt zip", connection=False) from None

    return _retrieve_all(plans, stage, progress, policy, remote, retrieve, lambda plan: plan)


def _scan_sort_key(scan: dict) -> tuple[int, str]:
    scan_id = str(scan.get("ID", ""))
    return (int(scan_id) if scan_id.isdigit() else 1 << 31, scan_id)
