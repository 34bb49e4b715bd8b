"""Remote sources, the URL: a SOURCE string -> a checked ``RemoteSpec`` (no network).

Parses ``dicomweb+http(s)://``, ``dimse://AET@host:port`` and ``xnat[+http(s)]://`` URLs, their
study filters (StudyInstanceUID, PatientID, AccessionNumber, StudyDate) and the DIMSE options
(``calling``, ``move_dest``, ``retrieve``).
Refuses (``ConfigError``, naming the key, never its value): unknown schemes, credentials in the
URL, a missing host, fragments, unknown or repeated query keys, empty values and wildcards, a
DICOMweb/DIMSE URL without a study filter, an XNAT URL with a query or without
/PROJECT/SUBJECT/SESSION, malformed UIDs, dates, AE titles or ports.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from packager.errors import ConfigError

ENV_USER: Final = "DCMPACK_USER"
ENV_PASSWORD: Final = "DCMPACK_PASSWORD"
ENV_TOKEN: Final = "DCMPACK_TOKEN"
ENV_CA_BUNDLE: Final = "DCMPACK_CA_BUNDLE"
ENV_NETRC: Final = "NETRC"

DEFAULT_DIMSE_PORT: Final = 104
STUDY_KEYS: Final = ("StudyInstanceUID", "PatientID", "AccessionNumber", "StudyDate")
DIMSE_OPTIONS: Final = ("calling", "move_dest", "retrieve")
RETRIEVE_METHODS: Final = ("get", "move")

_UID_RE: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE_RE: Final = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
# AE title (PS3.5 6.2): 1-16 characters of the default repertoire, no backslash, no control
# characters, no leading/trailing space.
_AET_RE: Final = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")

_SCHEMES: Final = MappingProxyType(
    {  # scheme -> (kind, default port)
        "dicomweb+http": ("dicomweb", 80),
        "dicomweb+https": ("dicomweb", 443),
        "dimse": ("dimse", DEFAULT_DIMSE_PORT),
        "xnat": ("xnat", 443),
        "xnat+http": ("xnat", 80),
        "xnat+https": ("xnat", 443),
    }
)


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    """A parsed remote source URL (no secrets: the URL may not carry any)."""

    kind: str  # "dicomweb" | "dimse" | "xnat"
    scheme: str  # as given, e.g. "dicomweb+https"
    host: str
    port: int
    path: str  # URL path (DICOMweb root, XNAT prefix + p/s/e), unquoted
    user: str | None  # DICOMweb/XNAT user name; DIMSE: the called AE title
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

    @property
    def is_loopback(self) -> bool:
        """True when the host is this machine (``localhost`` or a loopback address)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def option(self, key: str) -> str | None:
        """A DIMSE option from the query (``calling``, ``move_dest``, ``retrieve``)."""
        return dict(self.options).get(key)


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
        raise ConfigError(f"remote source: unknown scheme {scheme!r}; use one of {', '.join(sorted(_SCHEMES))}")
    kind, default_port = _SCHEMES[scheme]
    if parts.password is not None:
        raise ConfigError(
            f"{kind}: credentials in the URL are refused; set {ENV_USER} and "
            f"{ENV_PASSWORD} (or {ENV_TOKEN}) or use ~/.netrc"
        )
    if not parts.hostname:
        raise ConfigError(f"{kind}: the URL has no host")
    if parts.fragment:
        raise ConfigError(f"{kind}: the URL has a '#' fragment; remove it")
    user = unquote(parts.username) if parts.username is not None else None
    path = unquote(parts.path)
    query = _parse_query(kind, parts.query)
    filters = tuple((k, v) for k, v in query if k in STUDY_KEYS)
    options = tuple((k, v) for k, v in query if k not in STUDY_KEYS)
    remote = RemoteSpec(
        kind=kind,
        scheme=scheme,
        host=parts.hostname,
        port=port or default_port,
        path=path,
        user=user,
        filters=filters,
        options=options,
    )
    if kind == "xnat":
        if len([p for p in path.split("/") if p]) < 3:
            raise ConfigError("xnat: the URL path must end in /PROJECT/SUBJECT/SESSION")
    else:
        if not filters:
            raise ConfigError(f"{kind}: give at least one study filter: {', '.join(k + '=...' for k in STUDY_KEYS)}")
        if kind == "dimse":
            if not user or not _AET_RE.match(user):
                raise ConfigError(
                    "dimse: give the called AE title (1-16 characters, no backslash) as dimse://AET@host:port"
                )
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
            raise ConfigError(
                f"{kind}: unknown query key {key!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(allowed) or 'none'}")
            )
        if key in seen:
            raise ConfigError(f"{kind}: query key {key!r} given twice")
        seen.add(key)
        if not value or any(ord(c) < 0x20 or c in "\\*?" for c in value):
            raise ConfigError(f"{kind}: query key {key!r} is empty or has a wildcard, backslash or control character")
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

    Parameters
    ----------
    value : str
        ``AET:port`` from the URL's ``move_dest=`` or the ``move_dest`` option.

    Returns
    -------
    tuple of (str, int)
        The AE title and the local port.

    Raises
    ------
    ConfigError
        Not ``AET:port``, or the port is not 1-65535.

    """
    aet, sep, port = value.rpartition(":")
    if not sep or not _AET_RE.match(aet) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            "dimse: move_dest must be AET:port (an AE title the peer knows and the local port to receive on)"
        )
    return aet, int(port)


def merge_option(remote: RemoteSpec, key: str, value: str | None) -> str | None:
    """A DIMSE option given as an argument, in the URL, or both (then they must agree)."""
    given = remote.option(key)
    if value is not None and given is not None and value != given:
        raise ConfigError(f"dimse: {key} given both in the URL and as an option, differently")
    if value is not None and key == "move_dest":
        parse_move_dest(value)
    return value if value is not None else given
