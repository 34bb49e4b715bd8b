"""Remote sources, DICOMweb: a ``dicomweb+http(s)://`` spec -> staged Part-10 files.

QIDO-RS (through dicomweb-client) finds the matching studies and their series; WADO-RS is read
as raw ``multipart/related`` so every instance keeps the exact bytes the server sent (a bare
data set gets a PS3.10 file meta header in front, its bytes unchanged). A few missing instances
are asked for one by one, otherwise the whole series once.
Refuses (``InputError``): no matching study, a server that does not answer QIDO-RS with DICOM
JSON, a part that is not a DICOM instance or a body cut short (retried, then the series fails),
failed authentication. The root path must make a usable DICOMweb URL (``ConfigError``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from packager.errors import ConfigError, InputError
from packager.model import SourceFile
from packager.sources.remote.context import FetchContext, Transient
from packager.sources.remote.http import CHUNK, get, http_errors, http_session
from packager.sources.remote.retrieval import (
    Item,
    SeriesPlan,
    listed,
    retrieve_all,
    series_dirname,
    sort_number,
    store,
)

if TYPE_CHECKING:  # optional dependency ("dcmpack[remote]"), imported where used
    import requests

log = logging.getLogger(__name__)

_QIDO_PAGE: Final = 1000
_TAG_STUDY_UID, _TAG_SERIES_UID, _TAG_SOP_UID = "0020000D", "0020000E", "00080018"
_TAG_MODALITY, _TAG_SERIES_NUMBER, _TAG_SERIES_COUNT = "00080060", "00200011", "00201209"
_WADO_ACCEPT: Final = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def fetch_dicomweb(context: FetchContext) -> list[SourceFile]:
    """Stage every instance of the image series of the studies matching the spec's filters.

    Parameters
    ----------
    context : FetchContext
        A ``dicomweb`` spec, with credentials and CA bundle resolved.

    Returns
    -------
    list of SourceFile
        The staged files (see ``retrieval.retrieve_all``).

    Raises
    ------
    ConfigError
        The URL is not a usable DICOMweb root.
    InputError
        Authentication failure, no matching study, non-DICOM answers, unreachable server or
        failed series.
    """
    from dicomweb_client.api import DICOMwebClient

    remote = context.remote
    session = http_session(context, bearer=True)
    base = remote.http_base
    try:
        client = DICOMwebClient(base, session=session, timeout=context.timeout)
    except ValueError:
        raise ConfigError("dicomweb: the URL is not a usable DICOMweb root") from None
    client.set_http_retry_params(retry=False)  # one retry policy: ours

    def qido_once(search: Callable[..., list[dict]], key_tag: str, **kwargs: Any) -> list[dict]:
        with http_errors(remote):
            try:
                return _qido_all(search, key_tag, **kwargs)
            except ValueError:  # undecodable JSON: a proxy page, a wrong path
                raise InputError(
                    f"dicomweb: {remote.where} did not answer QIDO-RS with DICOM JSON; check the DICOMweb root path"
                ) from None

    def qido(search: Callable[..., list[dict]], key_tag: str, **kwargs: Any) -> list[dict]:
        try:
            return context.retry(lambda: qido_once(search, key_tag, **kwargs), "dicomweb: query")
        except Transient as exc:
            if exc.connection:
                raise context.unreachable(exc) from None
            raise InputError(f"dicomweb: query failed at {remote.where} ({exc.reason})") from None

    studies = qido(client.search_for_studies, _TAG_STUDY_UID, search_filters=dict(remote.filters))
    study_uids = sorted(uid for uid in (_json_value(s, _TAG_STUDY_UID) for s in studies) if uid)
    if not study_uids:
        raise InputError(f"dicomweb: no study matched the query at {remote.where}")
    plans: list[SeriesPlan] = []
    skipped = 0
    for study_uid in study_uids:
        series = qido(
            client.search_for_series,
            _TAG_SERIES_UID,
            study_instance_uid=study_uid,
            fields=["NumberOfSeriesRelatedInstances"],
        )
        for item in sorted(series, key=_series_sort_key):
            series_uid = _json_value(item, _TAG_SERIES_UID)
            if not series_uid:
                continue
            if (_json_value(item, _TAG_MODALITY) or "").upper() in context.skip:
                skipped += 1
                continue
            count = _json_value(item, _TAG_SERIES_COUNT)
            plans.append(
                SeriesPlan(
                    len(plans) + 1,
                    series_dirname(_json_value(item, _TAG_SERIES_NUMBER), series_uid),
                    (study_uid, series_uid),
                    int(count) if count and count.isdigit() else None,
                )
            )
    context.stage.not_fetched += skipped
    log.info("dicomweb: %d studies matched; %d series skipped as non-image", len(study_uids), skipped)

    def list_instances(plan: SeriesPlan) -> SeriesPlan:
        study_uid, series_uid = plan.ids
        found = qido_once(
            client.search_for_instances, _TAG_SOP_UID, study_instance_uid=study_uid, series_instance_uid=series_uid
        )
        uids = sorted({u for u in (_json_value(i, _TAG_SOP_UID) for i in found) if u})
        return replace(plan, items=tuple(Item(u, plan.relpath(u)) for u in uids))

    def retrieve(plan: SeriesPlan, missing: list[Item] | None) -> None:
        study_uid, series_uid = plan.ids
        series_url = f"{base}/studies/{study_uid}/series/{series_uid}"
        # Few missing: ask for those instances; else the series once, skipping staged ones.
        urls = (
            [f"{series_url}/instances/{item.key}" for item in missing]
            if missing is not None and 2 * len(missing) <= len(plan.items or ())
            else [series_url]
        )
        listed_keys = listed(plan)
        for url in urls:
            response = get(context, session, url, stream=True, headers={"Accept": _WADO_ACCEPT})
            with response, http_errors(remote):
                if response.status_code >= 400:
                    raise Transient(f"HTTP {response.status_code} on retrieve", connection=False)
                for content_type, data in _iter_parts(response):
                    uid, part10 = _as_part10(data, content_type)
                    store(context, plan, uid, (part10,), listed_keys)

    return retrieve_all(context, plans, retrieve, list_instances)


def _json_value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _series_sort_key(item: dict) -> tuple[int, str]:
    return (sort_number(_json_value(item, _TAG_SERIES_NUMBER)), _json_value(item, _TAG_SERIES_UID) or "")


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
        raise Transient("unexpected response content type", connection=False)
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    buffer = bytearray(b"\r\n")  # so a boundary on the body's first line matches too
    search_from, started, after_delimiter, closed = 0, False, False, False
    for chunk in response.iter_content(chunk_size=CHUNK):
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
            del buffer[: found + len(delimiter)]
        if closed:
            break
    if not closed:
        raise Transient("response ended early", connection=True)


def _split_part(part: bytes) -> tuple[str, bytes]:
    head, sep, body = part.partition(b"\r\n\r\n")
    if not sep:
        raise Transient("malformed multipart part", connection=False)
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
        dataset = dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        meta = dataset.get("file_meta") or FileMetaDataset()
        uid = str(dataset.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "")
        if not uid:
            raise ValueError("no SOPInstanceUID")
        if data[128:132] == b"DICM":
            return uid, data
        meta = FileMetaDataset()  # a bare data set: PS3.10 7.1 header in front, bytes unchanged
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = _content_type(content_type)[1].get("transfer-syntax") or ExplicitVRLittleEndian
        buffer = DicomBytesIO()
        buffer.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(buffer, meta)
        return uid, buffer.getvalue() + data
    except (InvalidDicomError, AttributeError, ValueError, KeyError, EOFError, TypeError):
        raise Transient("a part is not a DICOM instance", connection=False) from None
