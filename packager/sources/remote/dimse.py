"""Remote sources, DIMSE: a ``dimse://AET@host:port?filters`` spec -> staged Part-10 files.

C-FIND at study, series (and, to resume or to learn SOP classes, image) level; then C-GET with
the SCP role on shared associations (at most 128 presentation contexts each), or C-MOVE to a
storage SCP this fetch starts (``move_dest=AET:port``) when the peer refuses C-GET or
``retrieve=move`` is asked for. Each received data set keeps its bytes as sent, behind a PS3.10
file meta header. TCP_NODELAY is set on every association (pynetdicom never does).
Refuses: ``retrieve=move`` without ``move_dest`` (``ConfigError``); no matching study, C-GET
refused without ``move_dest``, a move destination the peer does not know, a port we cannot
listen on, a peer unreachable or rejecting our calling AE title (``InputError``); stores from
any AE but the peer; instances that cannot be written (``OutputError``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from packager.errors import ConfigError, InputError, OutputError
from packager.model import SourceFile
from packager.sources.remote.context import FetchContext, Transient
from packager.sources.remote.retrieval import (
    Item,
    SeriesPlan,
    listed,
    retrieve_all,
    series_dirname,
    sort_number,
    store,
)
from packager.sources.remote.spec import parse_move_dest

if TYPE_CHECKING:  # optional dependencies ("dcmpack[remote]"), imported where used
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

DEFAULT_CALLING_AET: Final = "DCMPACK"
_MAX_CONTEXTS: Final = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255
_PENDING: Final = (0xFF00, 0xFF01)
_GET_REFUSED: Final = (0x0122, 0x0124)  # SOP class not supported / not authorized (PS3.7 C)

_Find = Callable[["Dataset"], "list[Dataset]"]


def fetch_dimse(context: FetchContext, *, move_dest: str | None, method: str) -> list[SourceFile]:
    """Stage every instance of the image series of the studies matching the spec's filters.

    Parameters
    ----------
    context : FetchContext
        A ``dimse`` spec (called AE title, host, port, filters, ``calling`` option).
    move_dest : str or None
        ``AET:port`` of the storage SCP to start for C-MOVE (checked already).
    method : {"get", "move"}
        C-GET first (falling back to C-MOVE if refused and ``move_dest`` is given), or C-MOVE.

    Returns
    -------
    list of SourceFile
        The staged files (see ``retrieval.retrieve_all``).

    Raises
    ------
    ConfigError
        ``method="move"`` without ``move_dest``.
    InputError
        No matching study, C-GET refused without ``move_dest``, an unknown move destination,
        a port we cannot listen on, unreachable or rejecting peer, failed series.
    OutputError
        Received instances could not be written.
    """
    remote, skip = context.remote, context.skip
    peer = _Dimse(context)
    if method == "move" and move_dest is None:
        raise ConfigError(
            "dimse: retrieve=move needs move_dest=AET:port (a storage AE title the peer knows, and our local port)"
        )
    filters = dict(remote.filters)

    def listing(find: _Find) -> tuple[list[SeriesPlan], int, int]:
        studies = find(_dimse_query("STUDY", **{"StudyInstanceUID": "", "SOPClassesInStudy": "", **filters}))
        by_uid = {str(s.get("StudyInstanceUID", "")): s for s in studies}
        by_uid.pop("", None)
        plans: list[SeriesPlan] = []
        skipped = 0
        for study_uid in sorted(by_uid):
            study_sops = tuple(_as_list(by_uid[study_uid].get("SOPClassesInStudy")))
            series = find(
                _dimse_query(
                    "SERIES",
                    StudyInstanceUID=study_uid,
                    SeriesInstanceUID="",
                    SeriesNumber="",
                    Modality="",
                    NumberOfSeriesRelatedInstances="",
                )
            )
            for item in sorted(
                series, key=lambda s: (sort_number(s.get("SeriesNumber")), str(s.get("SeriesInstanceUID", "")))
            ):
                series_uid = str(item.get("SeriesInstanceUID", ""))
                if not series_uid:
                    continue
                if str(item.get("Modality", "")).upper() in skip:
                    skipped += 1
                    continue
                count = str(item.get("NumberOfSeriesRelatedInstances", "")).strip()
                plans.append(
                    SeriesPlan(
                        len(plans) + 1,
                        series_dirname(item.get("SeriesNumber"), series_uid),
                        (study_uid, series_uid),
                        # Without SOP classes from the study level, list the series to learn them.
                        int(count) if count.isdigit() and study_sops else None,
                        sop_classes=study_sops,
                    )
                )
        return plans, len(by_uid), skipped

    def list_instances(plan: SeriesPlan) -> SeriesPlan:
        study_uid, series_uid = plan.ids
        images = peer.find_once(
            lambda find: find(
                _dimse_query(
                    "IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID="", SOPClassUID=""
                )
            )
        )
        uids = sorted({str(i.SOPInstanceUID) for i in images if i.get("SOPInstanceUID")})
        sops = {str(i.SOPClassUID) for i in images if i.get("SOPClassUID")}
        return replace(
            plan,
            items=tuple(Item(u, plan.relpath(u)) for u in uids),
            sop_classes=tuple(sorted(sops | set(plan.sop_classes))) or _COMMON_IMAGE_SOP_CLASSES,
        )

    plans, n_studies, skipped = peer.find(listing)
    if not n_studies:
        raise InputError(f"dimse: no study matched the query at {remote.where}")
    context.stage.not_fetched += skipped
    log.info("dimse: %d studies matched; %d series skipped as non-image", n_studies, skipped)
    receiver = _Receiver(context)
    retriever = _DimseRetriever(peer, receiver, move_dest, method, {sop for plan in plans for sop in plan.sop_classes})
    try:
        files = retrieve_all(context, plans, retriever.retrieve, list_instances)
    finally:
        retriever.close()
    if receiver.write_failed:
        raise OutputError("staging: cannot write received instances; check free space")
    return files


def _transfer_syntax_groups() -> tuple[tuple[str, ...], ...]:
    """Transfer syntaxes we propose for storage, one presentation context per group.

    Uncompressed first; then the common compressed ones, each in a context of its own so the
    peer can send a compressed instance as stored instead of transcoding it (it has to pick
    ONE syntax per context, PS3.8 9.3.2.2). Fewer groups are used when SOP classes are many.
    """
    from pydicom import uid

    return (
        (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian),
        (uid.JPEGLosslessSV1,),
        (uid.JPEG2000Lossless,),
        (uid.JPEGBaseline8Bit,),
        (uid.JPEG2000,),
        (uid.JPEGLSLossless,),
        (uid.RLELossless,),
        (uid.DeflatedExplicitVRLittleEndian,),
        (uid.JPEGExtended12Bit,),
        (uid.JPEGLossless,),
        (uid.JPEGLSNearLossless,),
        (uid.ExplicitVRBigEndian,),
    )


#: Used only when the peer reports no SOP class at all (neither study- nor image-level): MR,
#: Enhanced MR, Legacy Converted Enhanced MR, CT, Enhanced CT, PET, Enhanced PET, NM, SC, CR,
#: DX, XA, US, Segmentation.
_COMMON_IMAGE_SOP_CLASSES: Final = (
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.4.4",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.130",
    "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.12.1",
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.66.4",
)


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

    def __init__(self, context: FetchContext) -> None:
        self.context = context
        self.plan: SeriesPlan | None = None
        self.listed: frozenset[str] | None = None
        self.received = 0
        self.write_failed = False

    def expect(self, plan: SeriesPlan) -> None:
        self.plan, self.listed = plan, listed(plan)

    def on_store(self, event: Event) -> int:
        """EVT_C_STORE handler: keep the data set bytes as sent, behind a Part-10 header."""
        if self.plan is None:
            return 0xA700  # nothing requested: refuse (Out of resources, PS3.4 B.2.3)
        self.received += 1
        try:
            store(
                self.context,
                self.plan,
                str(event.request.AffectedSOPInstanceUID),
                (event.encoded_dataset(include_meta=True),),
                self.listed,
            )
        except OutputError:
            self.write_failed = True
            return 0xA700
        return 0x0000


class _Dimse:
    """One DIMSE peer: associations with retries, C-FIND, C-GET, C-MOVE."""

    def __init__(self, context: FetchContext) -> None:
        self.context = context
        self.remote = context.remote
        self.calling = self.remote.option("calling") or DEFAULT_CALLING_AET

    def make_ae(self, ae_title: str | None = None) -> Any:
        """A pynetdicom AE with our timeouts (``ae_title`` defaults to the calling AE)."""
        from pynetdicom import AE

        ae = AE(ae_title=ae_title or self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.context.timeout
        ae.connection_timeout = self.context.timeout
        ae.maximum_pdu_size = 1 << 20  # larger PDUs, fewer round trips
        return ae

    def associate(
        self,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        roles: Sequence[str] = (),
        handlers: Sequence[tuple] = (),
    ) -> Association:
        """Open one association (no retry here); raise Transient when it does not come up."""
        from pynetdicom import build_role, evt

        ae = self.make_ae()
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        try:
            assoc = ae.associate(
                self.remote.host,
                self.remote.port,
                ae_title=self.remote.user,
                ext_neg=[build_role(s, scp_role=True) for s in roles] or None,
                evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay), *handlers],
            )
        except OSError as exc:  # name resolution
            raise Transient(type(exc).__name__, connection=True) from None
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise Transient("association rejected", connection=False, rejected=True)
        raise Transient("no association (connection refused, timeout or abort)", connection=True)

    def is_up(self) -> bool:
        """True when the peer accepts (or rejects) an association: it is listening."""
        from pydicom.uid import ImplicitVRLittleEndian
        from pynetdicom.sop_class import Verification

        try:
            probe = self.associate([(Verification, (ImplicitVRLittleEndian,))])
        except Transient as exc:
            return exc.rejected  # only "no connection" means down
        probe.release()
        return True

    def find_once(self, queries: Callable[[_Find], Any]) -> Any:
        """Run ``queries(find)`` on one new FIND association; raise Transient on failure."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        model = StudyRootQueryRetrieveInformationModelFind
        assoc = self.associate([(model, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))])

        def find(query: Dataset) -> list[Dataset]:
            matches = []
            for status, identifier in assoc.send_c_find(query, model):
                code = getattr(status, "Status", None)
                if code is None:
                    raise Transient("C-FIND: no response (association lost)", connection=False)
                if code in _PENDING and identifier is not None:
                    matches.append(identifier)
                elif code not in _PENDING and code != 0x0000:
                    raise Transient(f"C-FIND status 0x{code:04X}", connection=False)
            return matches

        try:
            return queries(find)
        finally:
            if assoc.is_established:
                assoc.release()

    def find(self, queries: Callable[[_Find], Any]) -> Any:
        """``find_once`` with retries; failures become one-line ``InputError``s."""
        try:
            return self.context.retry(lambda: self.find_once(queries), "dimse: query")
        except Transient as exc:
            if exc.connection or exc.rejected:
                raise self.context.unreachable(exc) from None
            raise InputError(f"dimse: query failed at {self.remote.where} ({exc.reason})") from None


def _dimse_query(level: str, **keys: Any) -> Dataset:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(query, key, value)
    return query


class _DimseRetriever:
    """C-GET per series on shared associations (<= 128 contexts each); C-MOVE when refused."""

    def __init__(
        self, peer: _Dimse, receiver: _Receiver, move_dest: str | None, method: str, sop_classes: Iterable[str]
    ) -> None:
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
    def retrieve(self, plan: SeriesPlan, missing: list[Item] | None) -> None:
        """Retrieve ``missing`` (None: the whole series) with C-GET, or C-MOVE if refused."""
        self.receiver.expect(plan)
        if self.method == "get":
            try:
                self._get(plan, missing)
                return
            except _GetRefused:
                if self.move_dest is None:
                    raise InputError(
                        f"dimse: {self.peer.remote.where} refused C-GET for calling "
                        f"AE title {self.peer.calling!r}; give move_dest=AET:port "
                        "to retrieve with C-MOVE instead"
                    ) from None
                log.info("dimse: the peer refused C-GET; retrieving with C-MOVE")
                self.method = "move"
        self._move(plan, missing)

    def _queries(self, plan: SeriesPlan, missing: list[Item] | None) -> list[Dataset]:
        """The whole series in one request, or (a few missing) one request per instance."""
        study_uid, series_uid = plan.ids
        if missing is None or 2 * len(missing) > len(plan.items or ()):
            return [_dimse_query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)]
        return [
            _dimse_query("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=item.key)
            for item in missing
        ]

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
        contexts: list[tuple[str, Sequence[str]]] = [(GET, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]
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
            raise Transient("series has more SOP classes than presentation contexts", connection=False)
        assoc = self.peer.associate(
            self._contexts(sorted(sops)), roles=sorted(sops), handlers=[(evt.EVT_C_STORE, self.receiver.on_store)]
        )
        if not any(cx.abstract_syntax == GET for cx in assoc.accepted_contexts):
            assoc.release()
            raise _GetRefused()
        self.assoc, self.assoc_sops = assoc, sops
        return assoc

    def _get(self, plan: SeriesPlan, missing: list[Item] | None) -> None:
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
                if not self.get_worked and self.receiver.received == before and self.peer.is_up():
                    raise _GetRefused()  # Orthanc aborts a C-GET from an AE without the right
                raise Transient("C-GET: association lost", connection=False)
            if final not in (0x0000, 0xB000):
                raise Transient(f"C-GET status 0x{final:04X}", connection=False)
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
        bind = "127.0.0.1" if self.peer.remote.is_loopback else ""
        try:
            self.scp = ae.start_server(
                (bind, port),
                block=False,
                evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay), (evt.EVT_C_STORE, self.receiver.on_store)],
            )
        except OSError:
            raise InputError(
                f"dimse: cannot listen on port {port} for C-MOVE (in use or "
                "not permitted); choose another move_dest port"
            ) from None

    def _move(self, plan: SeriesPlan, missing: list[Item] | None) -> None:
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
                    raise Transient("C-MOVE: association lost", connection=False)
                if final == 0xA801:
                    raise InputError(
                        f"dimse: {self.peer.remote.where} does not know the move "
                        f"destination AE title {aet!r}; register it on the peer"
                    )
                if final not in (0x0000, 0xB000):
                    raise Transient(f"C-MOVE status 0x{final:04X}", connection=False)
        finally:
            with contextlib.suppress(Exception):
                if assoc.is_established:
                    assoc.release()


class _GetRefused(Exception):
    """The peer does not allow C-GET for us (context rejected, refused status or abort)."""
