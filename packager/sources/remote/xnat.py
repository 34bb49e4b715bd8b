"""Remote sources, XNAT: an ``xnat[+http(s)]://host/PROJECT/SUBJECT/SESSION`` spec -> staged files.

The XNAT REST API lists the session's scans and each scan's DICOM resource files (with their
sizes); a scan is downloaded as one zip (spooled, then only listed files are taken from it) or,
when only a few files are missing, file by file. Files keep the bytes XNAT stores.
Refuses (``InputError``): an unknown session (HTTP 404), an answer that is not an XNAT
ResultSet, a session without image scans holding DICOM files, failed authentication, a corrupt
zip (retried, then the scan fails). Scans whose xsiType is a non-image type are not fetched.
"""

from __future__ import annotations

import logging
import re
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote

from packager.errors import InputError
from packager.model import SourceFile
from packager.sources.remote.context import FetchContext, Transient
from packager.sources.remote.http import CHUNK, get, http_errors, http_session
from packager.sources.remote.retrieval import Item, SeriesPlan, retrieve_all, series_dirname
from packager.sources.remote.spec import RemoteSpec

if TYPE_CHECKING:  # optional dependency ("dcmpack[remote]"), imported where used
    import requests

log = logging.getLogger(__name__)

#: XNAT scan types (xsiType) of non-image DICOM objects, by the modality they stand for.
XNAT_NON_IMAGE_TYPES: Final = MappingProxyType(
    {"xnat:srScanData": "SR", "xnat:ecgScanData": "ECG", "xnat:voiceAudioScanData": "AU"}
)

_XNAT_FILES_RE: Final = re.compile(r"/resources/[^/]+/files/(.+)$")
_XNAT_ZIP_RE: Final = re.compile(r"(?:^|/)scans/[^/]+/resources/[^/]+/files/(.+)$")


def fetch_xnat(context: FetchContext) -> list[SourceFile]:
    """Stage every DICOM file of the session's image scans.

    Parameters
    ----------
    context : FetchContext
        An ``xnat`` spec, with credentials and CA bundle resolved.

    Returns
    -------
    list of SourceFile
        The staged files (see ``retrieval.retrieve_all``).

    Raises
    ------
    InputError
        Authentication failure, no such session, no image scans, unreachable server or
        failed scans.
    """
    remote, stage = context.remote, context.stage
    segments = [quote(s, safe="") for s in remote.path.split("/") if s]
    site = "/".join([remote.http_origin, *segments[:-3]])  # XNAT may live under a path prefix
    project, subject, label = segments[-3:]
    experiment = f"{site}/data/projects/{project}/subjects/{subject}/experiments/{label}"
    session = http_session(context, bearer=False)

    def listing(url: str, what: str) -> list[dict] | None:
        def attempt() -> list[dict] | None:
            response = get(context, session, url, params={"format": "json"})
            if response.status_code == 404:
                return None
            if response.status_code >= 400:
                raise InputError(f"xnat: {what} listing answered HTTP {response.status_code} at {remote.where}")
            return _xnat_results(response, remote)

        try:
            return context.retry(attempt, f"xnat: {what} listing")
        except Transient as exc:
            if exc.connection:
                raise context.unreachable(exc) from None
            raise InputError(f"xnat: {what} listing failed at {remote.where} ({exc.reason})") from None

    scans = listing(f"{experiment}/scans", "scan")
    if scans is None:
        raise InputError(
            f"xnat: no such session at {remote.where} (HTTP 404); check the project, subject and session labels"
        )
    plans: list[SeriesPlan] = []
    skipped = no_dicom = 0
    for scan in sorted(scans, key=_scan_sort_key):
        scan_id = str(scan.get("ID", ""))
        if not scan_id:
            continue
        if XNAT_NON_IMAGE_TYPES.get(str(scan.get("xsiType", ""))) in context.skip:
            skipped += 1
            continue
        files = listing(f"{experiment}/scans/{quote(scan_id, safe='')}/resources/DICOM/files", "file")
        if not files:
            no_dicom += 1  # no DICOM resource (e.g. snapshots only)
            continue
        plan = SeriesPlan(len(plans) + 1, series_dirname(scan_id, scan_id), (scan_id,))
        items = {}
        for entry in files:
            uri = str(entry.get("URI", ""))
            match = _XNAT_FILES_RE.search(uri)
            key = unquote(match.group(1)) if match else str(entry.get("Name", ""))
            size = str(entry.get("Size", "")).strip()
            if key:
                items[key] = Item(key, plan.relpath(key), int(size) if size.isdigit() else None, uri)
        plans.append(replace(plan, count=len(items), items=tuple(sorted(items.values(), key=lambda i: i.relpath))))
    stage.not_fetched += skipped
    log.info("xnat: %d scans; %d skipped as non-image, %d without a DICOM resource", len(scans), skipped, no_dicom)
    if not plans:
        raise InputError(f"xnat: the session at {remote.where} has no image scans with DICOM files")

    def write(items: dict[str, Item], key: str, chunks: Iterable[bytes]) -> None:
        item = items.get(key)
        if item is None or stage.has(item.relpath, item.size):
            return  # not in the listing (the listing is the reference), or already staged
        if stage.write(item.relpath, chunks, item.size):
            context.progress.advance()

    def retrieve(plan: SeriesPlan, missing: list[Item] | None) -> None:
        files_url = f"{experiment}/scans/{quote(plan.ids[0], safe='')}/resources/DICOM/files"
        items = {item.key: item for item in plan.items or ()}
        if missing is not None and 2 * len(missing) <= len(items):  # a few: one GET each
            for item in missing:
                url = f"{site}{item.uri}" if item.uri.startswith("/") else f"{files_url}/{quote(item.key)}"
                response = get(context, session, url, stream=True)
                with response, http_errors(remote):
                    if response.status_code >= 400:
                        raise Transient(f"HTTP {response.status_code}", connection=False)
                    write(items, item.key, response.iter_content(chunk_size=CHUNK))
            return
        with tempfile.TemporaryFile(dir=stage.root) as spool:  # zip needs seeking: spool it
            response = get(context, session, files_url, stream=True, params={"format": "zip"})
            with response, http_errors(remote):
                if response.status_code >= 400:
                    raise Transient(f"HTTP {response.status_code}", connection=False)
                for chunk in response.iter_content(chunk_size=CHUNK):
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
                                write(items, match.group(1), iter(lambda member=member: member.read(CHUNK), b""))
            except (zipfile.BadZipFile, EOFError):
                raise Transient("truncated or corrupt zip", connection=False) from None

    return retrieve_all(context, plans, retrieve, lambda plan: plan)


def _xnat_results(response: requests.Response, remote: RemoteSpec) -> list[dict]:
    try:
        results = response.json()["ResultSet"]["Result"]
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"xnat: {remote.where} did not answer with an XNAT ResultSet; check the URL (and any /xnat path prefix)"
        ) from None
    return [r for r in results if isinstance(r, dict)]


def _scan_sort_key(scan: dict) -> tuple[int, str]:
    scan_id = str(scan.get("ID", ""))
    return (int(scan_id) if scan_id.isdigit() else 1 << 31, scan_id)
