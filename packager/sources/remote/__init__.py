"""Remote sources: a DICOMweb, DIMSE or XNAT URL -> DICOM files in the private staging dir.

Used by the sources stage (``packager.sources``): ``fetch(spec, staging)`` queries the server for one or
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

Modules: ``spec`` (the URL), ``context`` (``FetchContext``: what every protocol needs),
``staging`` (atomic writes and the resume journal), ``retrieval`` (the per-series loop), ``http``
(sessions and error mapping for DICOMweb and XNAT), and one per protocol: ``dicomweb``, ``dimse``,
``xnat``. This module parses the spec, builds the context and dispatches.

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

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from packager.errors import ConfigError
from packager.model import SourceSet
from packager.sources.remote.context import (
    DEFAULT_TIMEOUT,
    NON_IMAGE_MODALITIES,
    FetchContext,
    Progress,
    ProgressCallback,
    RetryPolicy,
    quiet_libraries,
)
from packager.sources.remote.dicomweb import fetch_dicomweb
from packager.sources.remote.dimse import fetch_dimse
from packager.sources.remote.spec import (
    ENV_CA_BUNDLE,
    ENV_NETRC,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    RETRIEVE_METHODS,
    STUDY_KEYS,
    RemoteSpec,
    merge_option,
    parse_move_dest,
    parse_spec,
)
from packager.sources.remote.staging import Stage, digest
from packager.sources.remote.xnat import fetch_xnat

log = logging.getLogger(__name__)

__all__ = [
    "fetch",
    "parse_spec",
    "parse_move_dest",
    "RemoteSpec",
    "RetryPolicy",
    "FetchContext",
    "ProgressCallback",
    "DEFAULT_TIMEOUT",
    "NON_IMAGE_MODALITIES",
    "STUDY_KEYS",
    "RETRIEVE_METHODS",
    "ENV_USER",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_CA_BUNDLE",
    "ENV_NETRC",
]


def fetch(
    spec: str,
    staging: Path,
    *,
    progress: ProgressCallback | None = None,
    ca_bundle: str | os.PathLike | None = None,
    move_dest: str | None = None,
    retrieve: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = RetryPolicy(),
    skip_modalities: Iterable[str] = NON_IMAGE_MODALITIES,
) -> SourceSet:
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
    root = Path(staging) / f"remote-{digest(remote.label + '?' + repr(sorted(remote.filters)))}"
    stage = Stage(root)
    ticker = Progress(progress)
    started = time.monotonic()
    with quiet_libraries():
        context = FetchContext.create(
            remote, stage, ticker, policy=retry, timeout=timeout, skip=skip, ca_bundle=ca_bundle
        )
        if remote.kind == "dicomweb":
            staged = fetch_dicomweb(context)
        elif remote.kind == "dimse":
            if retrieve is not None and retrieve not in RETRIEVE_METHODS:
                raise ConfigError(f"dimse: retrieve must be one of {', '.join(RETRIEVE_METHODS)}")
            staged = fetch_dimse(
                context,
                move_dest=merge_option(remote, "move_dest", move_dest),
                method=merge_option(remote, "retrieve", retrieve) or "get",
            )
        else:
            staged = fetch_xnat(context)
    files = {source.relpath: source for source in staged}
    log.info(
        "%s: %d instances staged (%d downloaded) in %.1f s",
        remote.kind,
        len(files),
        stage.written,
        time.monotonic() - started,
    )
    return SourceSet(
        root=root, files=tuple(files[k] for k in sorted(files)), label=remote.label, not_fetched=stage.not_fetched
    )
