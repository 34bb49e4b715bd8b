"""Sidecar: headers of one series -> BIDS JSON fields (before the allowlist).

``derive_fields`` computes BIDS metadata from the datasets already in memory: standard tags
(classic and enhanced multi-frame, whose functional groups convert flattens into the heads),
Siemens CSA and Phoenix protocol, Siemens XA per-frame private items, GE private tags and
Protocol Data Block (``packager.dicom.vendor``). Timing is in seconds, as BIDS wants. Directions
(PhaseEncodingDirection, the order of SliceTiming) are stated in the voxel frame of the NIfTI
we write (its affine), computed through world (LPS) space, so they stay right whatever
orientation convert chooses. What may leave is decided by ``packager.sidecar.allowlist``; nothing
here is written out directly. A value we cannot establish from the header is left out,
never guessed: without a polarity in the header (Philips, some GE) PhaseEncodingDirection
comes only from an explicit ``dir-`` label of the run's name, else it is left out.

Where a value is cross-checked against dcm2niix (``benchmarks/sidecar_agreement.py``), the
formulas follow dcm2niix's documented conventions: Siemens EffectiveEchoSpacing =
1 / (BandwidthPerPixelPhaseEncode x ReconMatrixPE); GE TotalReadoutTime = echo spacing
(0043,102C) x (AcquisitionMatrixPE x ASSET - 1); TotalReadoutTime = EffectiveEchoSpacing x
(ReconMatrixPE - 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from packager.dicom import header
from packager.dicom import vendor as vendor_headers
from packager.dicom.reader import reading_settings

#: Slice onsets must stay below TR; onsets within this of each other count as simultaneous.
SIMULTANEOUS_S = 0.0015
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass
class _Context:
    """What one series' headers say, read once per series."""

    head: Dataset  # first volume's head (classic file, or enhanced top level + first frame)
    heads: tuple[Dataset, ...]  # one per volume
    source: Dataset  # the first original file (private groups of enhanced files intact)
    sources: tuple[Dataset, ...]
    frames: tuple[tuple[int, int], ...]
    vendor: str
    enhanced: bool
    csa_image: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    ge_protocol: dict = field(default_factory=dict)


def _private_number(ds: Dataset, tag: tuple[int, int]) -> float | None:
    """``header.as_number`` of a private element, whose value may be raw bytes (VR UN after an
    implicit-VR round trip): decoded here as FD when 8 bytes long, else as text (not a general
    rule: ``header`` refuses bytes, whose VR it cannot know)."""
    element = ds.get(tag)
    if element is None:
        return None
    value = element.value
    if isinstance(value, (bytes, bytearray)):  # VR UN (implicit little endian): FD if 8 bytes
        if len(value) == 8:
            value = float(np.frombuffer(bytes(value), "<f8")[0])
        else:
            try:
                value = float(bytes(value).decode("ascii").strip("\x00 ").split("\\")[0])
            except (UnicodeDecodeError, ValueError):
                return None
    return header.as_number(value)


# ---------------------------------------------------------------- geometry helpers


def _unit_columns(affine: np.ndarray) -> np.ndarray:
    columns = np.asarray(affine, dtype=float)[:3, :3]
    return columns / np.linalg.norm(columns, axis=0)


def axis_code(world_lps: np.ndarray, affine: np.ndarray) -> str | None:
    """BIDS axis code (i/j/k with sign) of an LPS world direction in the voxel frame of ``affine``."""
    dots = _unit_columns(affine).T @ (np.asarray(world_lps, dtype=float) * _LPS_TO_RAS)
    axis = int(np.argmax(np.abs(dots)))
    if abs(dots[axis]) < 0.8:  # oblique beyond ~37 degrees from every voxel axis: no honest code
        return None
    return "ijk"[axis] + ("" if dots[axis] > 0 else "-")


def _slice_index(position_lps, affine: np.ndarray, n_slices: int) -> int | None:
    """k index of an image whose first voxel sits at ``position_lps`` (None when off the grid)."""
    try:
        ras = np.array([float(v) for v in position_lps]) * _LPS_TO_RAS
    except (TypeError, ValueError):
        return None
    step = np.asarray(affine, dtype=float)[:3, 2]
    norm2 = float(step @ step)
    if norm2 == 0:
        return None
    exact = float((ras - affine[:3, 3]) @ step) / norm2
    k = int(round(exact))
    return k if 0 <= k < n_slices and abs(exact - k) < 0.25 else None


def _position(ds: Dataset):
    value = ds.get("ImagePositionPatient")
    if value is None:
        plane = ds.get("PlanePositionSequence")
        if plane:
            value = plane[0].get("ImagePositionPatient")
    return value


# ---------------------------------------------------------------- slice timing


def _seconds_of_day(text: str) -> float | None:
    match = re.fullmatch(r"(\d{2})(\d{2})(\d{2})(\.\d+)?", text.strip())
    if not match:
        return None
    return int(match.group(1)) * 3600 + int(match.group(2)) * 60 + int(match.group(3)) + float(match.group(4) or 0)


def _by_slice(pairs, affine: np.ndarray, n_slices: int) -> list[float] | None:
    """Earliest onset per k from (position, onset s) pairs; None unless every slice has one."""
    by_k: dict[int, float] = {}
    for position, onset in pairs:
        if position is None or onset is None:
            continue
        k = _slice_index(position, affine, n_slices)
        if k is not None:
            by_k[k] = min(by_k.get(k, onset), onset)
    if len(by_k) != n_slices:
        return None
    start = min(by_k.values())
    return [by_k[k] - start for k in range(n_slices)]


def _mosaic_timing(ctx: _Context, affine: np.ndarray, n_slices: int) -> list[float] | None:
    """Siemens mosaic: CSA MosaicRefAcqTimes (ms), listed along the CSA slice normal.

    Read from the second volume when there is one, as dcm2niix does: the first file of CMRR
    multiband runs carries the single-band reference's unfolded times (CMRR-C2P/MB#29), and
    first-volume times are corrupt on some XA31 data (dcm2niix#704).
    """
    csa = vendor_headers.csa_header(ctx.heads[1], "image") if len(ctx.heads) > 1 else ctx.csa_image
    times = csa.get("MosaicRefAcqTimes") or ctx.csa_image.get("MosaicRefAcqTimes")
    if not isinstance(times, (list, tuple)) or len(times) < n_slices:
        return None
    onsets = [float(t) / 1000.0 for t in times[:n_slices]]
    start = min(onsets)
    onsets = [t - start for t in onsets]  # MoCo series can list negative times (dcm2niix#271)
    normal = ctx.csa_image.get("SliceNormalVector")
    if isinstance(normal, (list, tuple)) and len(normal) == 3:
        ras = np.array([float(v) for v in normal]) * _LPS_TO_RAS
        if float(ras @ affine[:3, 2]) < 0:  # our k runs against the mosaic's tile order
            onsets = onsets[::-1]
    return onsets


def _enhanced_siemens_timing(ctx: _Context, affine: np.ndarray, n_slices: int) -> list[float] | None:
    """Siemens XA enhanced: per-frame private slice time (SDI 0x04, in seconds).

    Frames are grouped into volumes by file and TemporalPositionIndex; the second volume is
    used when there is one (see ``_mosaic_timing``)."""
    from packager.dicom.frames import frame_items, frame_view

    wanted = ctx.frames or tuple((i, f) for i, ds in enumerate(ctx.sources) for f in range(frame_items(ds)))
    volumes: dict[tuple, list] = {}
    for position_in_series, frame in wanted:
        if position_in_series >= len(ctx.sources):
            continue
        ds = ctx.sources[position_in_series]
        view = frame_view(ds, frame)
        item = vendor_headers.xa_frame_item(ds, frame)
        onset = header.as_number(vendor_headers.private_value(item, 0x0021, vendor_headers.SIEMENS_SDI, 0x04))
        volume = (position_in_series, header.as_number(view.get("TemporalPositionIndex")))
        volumes.setdefault(volume, []).append((_position(view), onset))  # seconds, unlike CSA's ms
    ordered = [volumes[key] for key in sorted(volumes, key=lambda k: (k[0], k[1] or 0))]
    for pairs in ordered[1:2] + ordered[:1]:
        onsets = _by_slice(pairs, affine, n_slices)
        if onsets is not None:
            return onsets
    return None


def _uih_grid_timing(ctx: _Context, affine: np.ndarray, n_slices: int) -> list[float] | None:
    """UIH grid (VFRAME) images: each tile's AcquisitionTime in the private frame items, read
    from the second volume when there is one (as for mosaics). Parsed exactly from the text:
    dcm2niix's lists differ by up to ~13 ms because it holds hhmmss.ffffff in float32
    (docs/sidecars.md)."""
    for ds in ctx.sources[1:2] + ctx.sources[:1]:
        tiles = vendor_headers.uih_grid_times(ds)
        if tiles is not None:
            onsets = _by_slice([(p, _seconds_of_day(t)) for p, t in tiles], affine, n_slices)
            if onsets is not None:
                return onsets
    return None


def _acquisition_time_timing(slice_datasets, affine: np.ndarray, n_slices: int) -> list[float] | None:
    """Classic 2D files: AcquisitionTime of each slice of the first volume."""
    pairs = [(_position(ds), _seconds_of_day(str(ds.get("AcquisitionTime", "") or ""))) for ds in slice_datasets]
    onsets = _by_slice(pairs, affine, n_slices)
    return onsets if onsets and max(onsets) > 0 else None


def _trigger_time_timing(slice_datasets, affine: np.ndarray, n_slices: int) -> list[float] | None:
    """GE 2D EPI: TriggerTime (0018,1060, ms) of each slice is its onset within the volume."""
    pairs = [
        (_position(ds), (lambda t: None if t is None else t / 1000.0)(header.number(ds, "TriggerTime")))
        for ds in slice_datasets
    ]
    onsets = _by_slice(pairs, affine, n_slices)
    return onsets if onsets and max(onsets) > 0 else None


def _ge_timing(
    ctx: _Context, slice_datasets, affine: np.ndarray, n_slices: int, tr: float | None
) -> list[float] | None:
    """GE 2D EPI: slice order from the Protocol Data Block (SLICEORDER 0 sequential, 1
    interleaved odd-first), acquired from the first scan location (0019,1019) onwards,
    evenly over TR; with hyperband (factor from (0043,10B6)) each shot excites one slice per
    slab of n_slices / factor slices."""
    order_code = ctx.ge_protocol.get("SLICEORDER")
    bands = vendor_headers.ge_multiband_factor(ctx.head) or 1
    hyperband_unknown = bands == 1 and vendor_headers.ge_hyperband(ctx.ge_protocol)
    if order_code not in ("0", "1") or not tr or hyperband_unknown or n_slices % bands:
        return None
    shots = n_slices // bands  # slices excited together lie one slab (n_slices / bands) apart
    # GE's hyperband interleave with an even number of shots (> 2), from software 27.0 R03 on,
    # swaps the last two odd positions (0,2,..,8,1,3,5,9,7 for 10 shots): the rule of the
    # dcm_qa_ge authors' slicetime.cpp, matching dcm2niix on its 80-slice HB8 series.
    # Older or unreadable releases: left out rather than guessed.
    swap_last = bands > 1 and order_code == "1" and shots > 2 and shots % 2 == 0
    if swap_last and not _ge_release_27r3_or_later(ctx.head):
        return None
    first = _private_number(ctx.head, (0x0019, 0x1019))
    if first is None:
        return None
    locations: dict[int, float] = {}
    for ds in slice_datasets:
        k = _slice_index(_position(ds), affine, n_slices)
        location = header.number(ds, "SliceLocation")
        if k is not None and location is not None:
            locations.setdefault(k, location)
    if len(locations) != n_slices:
        return None
    # spatial rank from the first scanned location
    ranked = sorted(range(n_slices), key=lambda k: abs(locations[k] - first))
    if order_code == "1":
        acquisition = list(range(0, shots, 2)) + list(range(1, shots, 2))
        if swap_last:
            acquisition[-2:] = acquisition[:-3:-1]
    else:
        acquisition = list(range(shots))
    step = tr / shots
    onsets = [0.0] * n_slices
    for shot, rank in enumerate(acquisition):
        for band in range(bands):
            onsets[ranked[rank + band * shots]] = shot * step
    return onsets


def _ge_release_27r3_or_later(head: Dataset) -> bool:
    """Whether SoftwareVersions names GE release 27.0 R03 or later ("...DV28.0_R02_1947.a",
    "MR29.1_EA_2036.a"); False when it names none."""
    value = head.get("SoftwareVersions") or ""
    text = " ".join(str(v) for v in value) if isinstance(value, Sequence) and not isinstance(value, str) else str(value)
    found = re.search(r"(\d+)\.(\d+)_(?:R(\d+))?", text)
    if found is None:
        return False
    major, minor, patch = int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)
    return (major, minor) > (27, 0) or (major == 27 and patch >= 3)


def _slice_timing(
    ctx: _Context, slice_datasets, affine: np.ndarray, n_slices: int, tr: float | None
) -> list[float] | None:
    if n_slices < 2 or str(ctx.head.get("MRAcquisitionType", "") or "").upper() == "3D":
        return None
    onsets = None
    if ctx.vendor == "Siemens":
        if ctx.csa_image.get("MosaicRefAcqTimes") is not None and "MOSAIC" in _image_type(ctx.head):
            onsets = _mosaic_timing(ctx, affine, n_slices)
        elif ctx.enhanced:
            onsets = _enhanced_siemens_timing(ctx, affine, n_slices)
        else:
            onsets = _acquisition_time_timing(slice_datasets, affine, n_slices)
    elif ctx.vendor == "UIH":
        onsets = _uih_grid_timing(ctx, affine, n_slices)
    elif ctx.vendor == "GE":
        onsets = _trigger_time_timing(slice_datasets, affine, n_slices) or _ge_timing(
            ctx, slice_datasets, affine, n_slices, tr
        )
    if onsets is None or min(onsets) < 0 or (tr and max(onsets) >= tr):
        return None
    return [round(t, 6) for t in onsets]


def _multiband_from_timing(onsets: list[float]) -> int | None:
    """Slices sharing onsets in equal groups (simultaneous multi-slice)."""
    if not onsets:
        return None
    groups: list[list[float]] = []
    for t in sorted(onsets):
        if groups and t - groups[-1][0] < SIMULTANEOUS_S:
            groups[-1].append(t)
        else:
            groups.append([t])
    sizes = {len(g) for g in groups}
    return sizes.pop() if len(sizes) == 1 and len(groups) > 1 else None


# ---------------------------------------------------------------- acquisition parameters


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType") or []
    if isinstance(value, str):
        value = value.split("\\")
    return [str(t).strip().upper() for t in value if str(t).strip()]


def _bandwidth_per_pixel_pe(ctx: _Context) -> float | None:
    if ctx.enhanced:
        frame = ctx.frames[0] if ctx.frames else (0, 0)
        ds = ctx.sources[frame[0]] if frame[0] < len(ctx.sources) else ctx.source
        item = vendor_headers.xa_frame_item(ds, frame[1])
        return header.as_number(vendor_headers.private_value(item, 0x0021, vendor_headers.SIEMENS_SDI, 0x53))
    return _private_number(ctx.source, (0x0019, 0x1028))


def _acquisition_matrix_pe(ds: Dataset) -> int | None:
    values = header.numbers(ds, "AcquisitionMatrix") or ()
    if len(values) == 4:
        pe = values[3] or values[2]
        return int(pe) if pe > 0 else None
    steps = header.number(ds, "MRAcquisitionPhaseEncodingStepsInPlane")
    return int(steps) if steps else None


def _readout(ctx: _Context, recon_pe: int | None) -> tuple[float | None, float | None]:
    """(EffectiveEchoSpacing, TotalReadoutTime) in seconds."""
    if not recon_pe or recon_pe < 2:
        return None, None
    if ctx.vendor == "Siemens":
        bandwidth = _bandwidth_per_pixel_pe(ctx)
        if not bandwidth or bandwidth <= 0:
            return None, None
        spacing = 1.0 / (bandwidth * recon_pe)
        return spacing, spacing * (recon_pe - 1)
    if ctx.vendor == "GE":
        echo_spacing_us = _private_number(ctx.head, (0x0043, 0x102C))
        acquired = _acquisition_matrix_pe(ctx.head)
        if not echo_spacing_us or echo_spacing_us <= 0 or not acquired:
            return None, None
        lines = vendor_headers.ge_acquired_lines(ctx.head, acquired)
        readout = echo_spacing_us * 1e-6 * (lines - 1)
        return readout / (recon_pe - 1), readout
    return None, None


def _siemens_readout_facts(ctx: _Context, image_type: list[str]) -> dict[str, Any]:
    """DwellTime (CSA RealDwellTime / XA per-frame 0x42, ns) and NonlinearGradientCorrection
    (ImageType or the XA private ImageTypeText carries DIS2D/DIS3D when distortion correction
    was applied, ND when it was not)."""
    facts: dict[str, Any] = {}
    if ctx.enhanced:
        frame = ctx.frames[0] if ctx.frames else (0, 0)
        ds = ctx.sources[frame[0]] if frame[0] < len(ctx.sources) else ctx.source
        item = vendor_headers.xa_frame_item(ds, frame[1])
        dwell = header.as_number(vendor_headers.private_value(item, 0x0021, vendor_headers.SIEMENS_SDI, 0x42))
        text = vendor_headers.private_value(item, 0x0021, vendor_headers.SIEMENS_SDI, 0x75) or ()
        values = text.split("\\") if isinstance(text, str) else text
        tokens = set(image_type) | {str(t).strip().upper() for t in values}
    else:
        dwell = header.as_number(ctx.csa_image.get("RealDwellTime"))
        tokens = set(image_type)
    if dwell and dwell > 0:
        facts["DwellTime"] = float(f"{dwell * 1e-9:.6g}")
    if tokens & {"DIS2D", "DIS3D"}:
        facts["NonlinearGradientCorrection"] = True
    elif "ND" in tokens:
        facts["NonlinearGradientCorrection"] = False
    return facts


def _parallel_factor(ctx: _Context) -> float | None:
    value = None
    if ctx.vendor == "Siemens":
        value = vendor_headers.protocol_number(ctx.protocol, "sPat.lAccelFactPE")
    elif ctx.vendor == "GE":
        asset = header.numbers(ctx.head, (0x0043, 0x1083)) or ()
        if asset and 0 < asset[0] <= 1:
            value = round(1.0 / asset[0], 4)
    if value is None:
        value = header.number(ctx.head, "ParallelReductionFactorInPlane")
    return float(value) if value and value >= 1 else None


def _multiband(ctx: _Context, onsets: list[float] | None, is_epi: bool) -> int | None:
    factor = vendor_headers.protocol_number(ctx.protocol, "sSliceAcceleration.lMultiBandFactor") or 1
    if factor <= 1 and ctx.vendor == "GE":
        factor = vendor_headers.ge_multiband_factor(ctx.head) or 1
    if factor <= 1 and "cmrr" in ctx.protocol.get("tSequenceFileName", "").lower():
        factor = vendor_headers.protocol_number(ctx.protocol, "sWipMemBlock.alFree[13]") or 1
    if factor <= 1 and ctx.vendor == "Siemens":
        match = re.search(r"\bMB(\d+)\b", str(ctx.source.get("ImageComments", "") or ""))
        if match:  # CMRR sequences write "Unaliased MB3/PE3" into ImageComments
            factor = int(match.group(1))
    if factor <= 1 and is_epi and onsets:
        factor = _multiband_from_timing(onsets) or 1
    return int(factor) if factor > 1 else None


def _echo_times(ctx: _Context, suffix: str, echo_time_s: float | None) -> dict[str, float]:
    """EchoTime1/EchoTime2 for phase-difference and direct field maps, from the headers alone."""
    if ctx.vendor == "Siemens" and suffix == "phasediff":
        first = vendor_headers.protocol_number(ctx.protocol, "alTE[0]")
        second = vendor_headers.protocol_number(ctx.protocol, "alTE[1]")
        if first and second and second > first:
            return {"EchoTime1": round(first / 1e6, 6), "EchoTime2": round(second / 1e6, 6)}
    if ctx.vendor == "GE" and suffix == "fieldmap" and echo_time_s:
        # GE direct field maps: delta TE = 1e6 / (2 pi VelocityEncodeScale) us (dcm2niix #617)
        scale = _private_number(ctx.head, (0x0019, 0x10E2))
        if scale:
            delta = 1.0 / (2 * math.pi * abs(scale))
            return {"EchoTime1": round(echo_time_s, 6), "EchoTime2": round(echo_time_s + delta, 6)}
    return {}


def _fieldmap_units(ctx: _Context, slice_datasets) -> str | None:
    if ctx.vendor == "GE":
        return "Hz"  # GE direct B0 maps are stored in Hz (dcm2niix #501)
    from packager.dicom.frames import real_world_mapping

    for ds in list(slice_datasets[:1]) + [ctx.head]:
        mapping = real_world_mapping(ds)
        if mapping and mapping[2] in ("Hz", "rad/s"):
            return mapping[2]
    return None


def _inversion_time(head: Dataset) -> float | None:
    value = header.number(head, "InversionTime")
    if value is None:
        times = header.numbers(head, "InversionTimes") or ()
        value = times[0] if times else None
    return value


@reading_settings()
def derive_fields(
    heads: Sequence[Dataset],
    slice_datasets: Sequence[Dataset],
    affine: np.ndarray,
    shape: tuple[int, ...],
    entities: dict[str, str],
    datatype: str,
    suffix: str,
    *,
    sources: Sequence[Dataset] = (),
    frames: tuple[tuple[int, int], ...] = (),
) -> dict[str, Any]:
    """BIDS metadata for one converted series, before the allowlist.

    Parameters
    ----------
    heads : sequence of Dataset
        One header per volume (``convert.Volume.heads``); the first one speaks for the series.
    slice_datasets : sequence of Dataset
        Per-image headers, first volume first (``convert.Volume.slice_datasets``).
    affine : ndarray
        The affine of the NIfTI that is written (directions are stated in its voxel frame).
    shape : tuple of int
        Shape of the NIfTI data.
    entities, datatype, suffix
        The run's BIDS name (TaskName comes from ``task``).
    sources : sequence of Dataset, optional
        The series' original files (enhanced files with their private per-frame groups);
        default: ``heads``.
    frames : tuple of (file position, frame), optional
        ``Series.frames``: the frames of enhanced files in this series (empty: all).

    Returns
    -------
    dict
        Candidate sidecar keys (seconds, degrees, tesla); the allowlist decides what leaves.
    """
    head = heads[0]
    originals = tuple(sources) or tuple(heads)
    source = originals[0]
    enhanced = "PerFrameFunctionalGroupsSequence" in source
    ctx = _Context(
        head=head,
        heads=tuple(heads),
        source=source,
        sources=originals,
        frames=tuple(frames),
        vendor=vendor_headers.vendor_of(source),
        enhanced=enhanced,
    )
    if ctx.vendor == "Siemens":
        ctx.csa_image = {} if enhanced else vendor_headers.csa_header(source, "image")
        ctx.protocol = vendor_headers.siemens_protocol(source)
    elif ctx.vendor == "GE":
        ctx.ge_protocol = vendor_headers.ge_protocol(source)

    fields: dict[str, Any] = {}
    modality = str(head.get("Modality", "") or "").upper()
    if modality:
        fields["Modality"] = modality
    if ctx.vendor:
        fields["Manufacturer"] = ctx.vendor
    model = " ".join(str(head.get("ManufacturerModelName", "") or "").split())
    if model:
        fields["ManufacturersModelName"] = model
    for keyword in ("SeriesDescription", "ProtocolName"):
        # free text: the allowlist drops it unless [sidecar] allow_free_text names it (then scrubbed)
        text = " ".join(str(head.get(keyword, "") or "").split())
        if text:
            fields[keyword] = text
    series_number = header.number(head, "SeriesNumber")
    if series_number is not None and series_number == int(series_number):
        fields["SeriesNumber"] = int(series_number)
    strength = header.number(head, "MagneticFieldStrength")
    if strength:
        fields["MagneticFieldStrength"] = round(strength / 10000.0 if strength > 100 else strength, 4)  # gauss
    tr_ms = header.number(head, "RepetitionTime")
    tr = round(tr_ms / 1000.0, 6) if tr_ms and tr_ms > 0 else None
    if tr:
        fields["RepetitionTime"] = tr
    echo_ms = header.number(head, "EchoTime") if "EchoTime" in head else header.number(head, "EffectiveEchoTime")
    echo = round(echo_ms / 1000.0, 6) if echo_ms and echo_ms > 0 else None
    if echo is not None:
        fields["EchoTime"] = echo
    inversion = _inversion_time(head)
    if inversion and inversion > 0:
        fields["InversionTime"] = round(inversion / 1000.0, 6)
    flip = header.number(head, "FlipAngle")
    if flip is not None and flip > 0:
        fields["FlipAngle"] = round(flip, 4)
    for key, keyword in (
        ("SliceThickness", "SliceThickness"),
        ("PixelBandwidth", "PixelBandwidth"),
        ("PercentPhaseFOV", "PercentPhaseFieldOfView"),
    ):
        value = header.number(head, keyword)
        if value is not None and value > 0:
            fields[key] = round(value, 6)
    image_type = _image_type(source) or _image_type(head)
    if image_type:
        fields["ImageType"] = image_type
    for key in ("ScanningSequence", "SequenceVariant", "MRAcquisitionType"):
        value = head.get(key)
        if value:
            # a corrupt header can hold a number here: only a true multi-value is joined
            multi = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
            fields[key] = "_".join(str(v) for v in value) if multi else str(value).strip()
    sequence = str(head.get("SequenceName", "") or head.get("PulseSequenceName", "") or "").strip()
    if sequence:
        fields["SequenceName"] = sequence
    if datatype == "func" and entities.get("task"):
        fields["TaskName"] = entities["task"]

    n_slices = shape[2] if len(shape) >= 3 else 1
    onsets = None
    if datatype in ("func", "dwi", "perf", "fmap") or len(shape) == 4:
        onsets = _slice_timing(ctx, slice_datasets, affine, n_slices, tr)
        if onsets is not None:
            fields["SliceTiming"] = onsets
    delay = vendor_headers.ge_volume_delay(source, ctx.ge_protocol) if ctx.vendor == "GE" and tr else None
    if tr and delay and len(shape) == 4:
        # GE's TR leaves out the pause after each volume: BIDS RepetitionTime is the volume
        # interval (the slices above stay within the acquisition), DelayTime the pause; the NIfTI's
        # pixdim[4] is set from this RepetitionTime (convert.task), so both state the same interval.
        fields["RepetitionTime"] = round(tr + delay, 6)
        fields["DelayTime"] = round(delay, 6)

    first_file, first_frame = ctx.frames[0] if ctx.frames else (0, 0)
    polarity = vendor_headers.pe_polarity(originals[first_file] if first_file < len(originals) else source, first_frame)
    axis_world = vendor_headers.pe_world(head if vendor_headers.pe_direction(head) else source)
    if polarity is None and axis_world is not None:
        # no polarity in the header (Philips, some GE): the run's dir- label states it
        polarity = vendor_headers.label_polarity(entities.get("dir"), axis_world)
    if axis_world is not None:
        if polarity is not None:
            code = axis_code(axis_world * polarity, affine)
            if code:
                fields["PhaseEncodingDirection"] = code
        axis = axis_code(axis_world, affine)
        recon_pe = int(shape["ijk".index(axis[0])]) if axis and len(shape) > "ijk".index(axis[0]) else None
        if recon_pe:
            fields["ReconMatrixPE"] = recon_pe
        spacing, readout = _readout(ctx, recon_pe)
        if spacing and readout is not None:  # _readout gives both or neither
            fields["EffectiveEchoSpacing"] = round(spacing, 9)
            fields["TotalReadoutTime"] = round(readout, 7)
    if ctx.vendor == "Siemens":
        fields.update(_siemens_readout_facts(ctx, image_type))
    accel = _parallel_factor(ctx)
    if accel:
        fields["ParallelReductionFactorInPlane"] = accel
    is_epi = "EP" in str(head.get("ScanningSequence", "") or "").upper() or "MOSAIC" in image_type
    band = _multiband(ctx, onsets, is_epi)
    if band:
        fields["MultibandAccelerationFactor"] = band
    if datatype == "fmap":
        fields.update(_echo_times(ctx, suffix, echo))
        if suffix in ("phasediff",) and "EchoTime1" in fields:
            fields.pop("EchoTime", None)
        if suffix == "fieldmap":
            units = _fieldmap_units(ctx, slice_datasets)
            if units:
                fields["Units"] = units
    if entities.get("part") == "phase":
        # BIDS requires Units for part-phase ("rad" or "arbitrary"): radians only when a real-world
        # value mapping says so; stored phase (e.g. Siemens -4096..4095) is arbitrary.
        mapping = _real_world_units(slice_datasets[:1], ctx.head)
        fields["Units"] = "rad" if mapping in ("rad", "radians") else "arbitrary"
    return fields


def _real_world_units(slice_datasets, head: Dataset) -> str | None:
    from packager.dicom.frames import real_world_mapping

    for ds in list(slice_datasets) + [head]:
        mapping = real_world_mapping(ds)
        if mapping and mapping[2]:
            return mapping[2].lower()
    return None
