"""Release, report: the staged dataset + build facts -> one private, offline HTML QC page.

Per run: a mid-slice thumbnail in three planes (grayscale PNG written here with zlib, embedded
as ``data:`` URIs), shape, voxel size, TR, volumes, source series (plan index and series
number) -> BIDS path, warnings; for BOLD a carpet plot (PNG) and the mean signal (inline SVG).
Then the excluded series with their reasons and the validator's counts.

The page is private (it shows the source's series structure, folders and series descriptions,
so a reviewer can find each series) and says so at the top; it is written 0600 *next to* the
bundle, never into it, and also when a build fails after planning (what was known, and the
error). It holds no identity, ID, date or UID field; every text (folder parts, descriptions,
reasons) goes through the caller's ``scrub``, which withholds any text holding a source PHI
value. Each exclusion comes with a "what to do" line, each dropped sidecar key with its name and
reason, each validator issue with the files it names.
Offline by construction: no script, no external font, image or style, and a Content Security
Policy that forbids fetching anything.

Memory stays bounded by one 3D volume: images are read back one at a time, 4D images one volume
at a time (``dataobj[..., t]``), and only mid-slices and a sampled carpet are kept.
"""

from __future__ import annotations

import base64
import html
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np

from packager import executors

PRIVATE_BANNER = "PRIVATE \u2014 contains source structure, do not share"
THUMB_HEIGHT = 120  # CSS pixels; widths follow the physical aspect ratio ...
THUMB_WIDTH = 168  # ... up to this (then the height shrinks), so three planes fit one card
CARPET_ROWS = 240  # voxels shown in a carpet plot (sampled evenly inside the brain mask)
MAX_CARPET_VOLUMES = 2000


@dataclass(frozen=True, slots=True)
class Run:
    """One converted run as the report shows it."""

    relpath: str  # BIDS path of the image, relative to the dataset root
    series: int  # plan index, 1-based (as in ``dcmpack plan``)
    series_number: int | None
    datatype: str
    suffix: str
    shape: tuple[int, ...]
    zooms: tuple[float, ...]
    repetition_time: float | None = None
    warnings: tuple[str, ...] = ()
    folder: str = ""  # source folder, relative to its SOURCE (PRIVATE, shown through ``scrub``)
    description: str = ""  # SeriesDescription or ProtocolName (PRIVATE, shown through ``scrub``)
    deface: str = ""  # head runs: "defaced" or "exempt: <why>"
    renders: tuple[tuple[str, bytes], ...] = ()  # defaced runs: (label, PNG) surface views, before/after


@dataclass(frozen=True, slots=True)
class Exclusion:
    """One series left out, with its reason (closed set) and value-free detail."""

    series: int
    series_number: int | None
    reason: str
    detail: str = ""
    is_error: bool = False
    folder: str = ""
    description: str = ""
    advice: str = ""  # what the data owner can do about it (``advice.WHAT_TO_DO``)


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the page shows besides the images."""

    dataset: str
    bundle: str
    sha256: str
    size: int
    tool: str
    runs: tuple[Run, ...]
    excluded: tuple[Exclusion, ...] = ()
    skipped_files: int = 0
    validator: dict = field(default_factory=dict)
    failure: str = ""  # the error that stopped the build (a report of what was known by then)
    notes: tuple[str, ...] = ()  # value-free: identity warnings, neutralised labels
    deface: str = ""  # "on" or "off: <reason>"


# ---------------------------------------------------------------- images


def png_gray(pixels: np.ndarray) -> bytes:
    """A minimal 8-bit grayscale PNG (PNG spec: IHDR, one zlib IDAT, IEND; filter 0 per row)."""
    image = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.hstack([np.zeros((height, 1), np.uint8), image]).tobytes()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        # zlib's default level: level 9 took 25 ms a thumbnail of a 256² slice (4 % of a pixel-heavy
        # series' conversion) for 1.5 % fewer bytes in a private page
        + chunk(b"IDAT", zlib.compress(rows, 6))
        + chunk(b"IEND", b"")
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_float(array: np.ndarray) -> np.ndarray:
    """Voxels as float32 (RGB records averaged, complex as magnitude)."""
    if array.dtype.names:
        # a record has at least one field, so the sum is an array
        total = cast(np.ndarray, sum(array[name].astype(np.float32) for name in array.dtype.names))
        return total / len(array.dtype.names)
    if np.iscomplexobj(array):
        return np.abs(array).astype(np.float32)
    return np.asarray(array, dtype=np.float32)


#: Voxels the display window is computed from: all of them up to this many, else an even sample
#: (a 512^2 x 500 volume would otherwise be copied three times as floats for one percentile).
WINDOW_SAMPLE = 1 << 20


def _bounds(values: np.ndarray) -> tuple[float, float] | None:
    """The robust 1-99 % range of the finite values (None when there are none), as float32."""
    flat = np.ravel(values, order="K")  # memory order: a view of a contiguous volume
    if flat.size > WINDOW_SAMPLE:
        flat = flat[:: -(-flat.size // WINDOW_SAMPLE)]
    flat = _as_float(flat)
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [1, 99])
    return low, high


_OWN = object()


def _window(slab: np.ndarray, bounds=_OWN) -> np.ndarray:
    """Robust 1-99 % window to 0..255 (constant images become mid-gray); ``bounds``: of another array."""
    if bounds is _OWN:
        bounds = _bounds(slab)
    if bounds is None:
        return np.zeros(slab.shape, np.uint8)
    low, high = bounds
    if high <= low:
        return np.full(slab.shape, 0 if high == 0 else 128, np.uint8)
    scaled = (np.nan_to_num(slab, nan=low) - low) / (high - low)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


@dataclass(frozen=True, slots=True)
class Thumb:
    """One plane: PNG bytes and its display size (CSS px, physical aspect)."""

    plane: str
    png: bytes
    width: int
    height: int


def _planes(volume: np.ndarray, affine: np.ndarray) -> list[Thumb]:
    """Axial, coronal, sagittal mid-slices of a 3D volume in RAS, neurological view (L left)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    # One window (from the whole volume, in any voxel order) for the three planes; only the
    # planes are scaled (scaling the whole volume first made five full-size temporaries).
    bounds = _bounds(volume)
    window = nib.orientations.apply_orientation(volume, ornt)  # flips and transposes: views
    voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[np.argsort(ornt[:, 0])]
    nx, ny, nz = window.shape
    # (slab with axes (horizontal, vertical), physical width, physical height); rows are
    # flipped so that superior (axial: anterior) is up; patient left is on the left.
    cuts = (
        ("axial", window[:, :, nz // 2], voxel[0] * nx, voxel[1] * ny),
        ("coronal", window[:, ny // 2, :], voxel[0] * nx, voxel[2] * nz),
        ("sagittal", window[nx // 2, :, :], voxel[1] * ny, voxel[2] * nz),
    )
    thumbs = []
    for plane, slab, width_mm, height_mm in cuts:
        pixels = _window(_as_float(slab), bounds).T[::-1]
        ratio = float(width_mm / height_mm) if height_mm > 0 else 1.0
        ratio = min(max(ratio, 0.1), 10.0)
        height: float
        width, height = THUMB_HEIGHT * ratio, THUMB_HEIGHT
        if width > THUMB_WIDTH:
            width, height = THUMB_WIDTH, THUMB_WIDTH / ratio
        thumbs.append(Thumb(plane, png_gray(pixels), max(int(round(width)), 8), max(int(round(height)), 8)))
    return thumbs


@dataclass(frozen=True, slots=True)
class Pictures:
    """What one image contributes to the page."""

    thumbs: tuple[Thumb, ...]
    carpet: bytes | None = None
    mean_signal: tuple[float, ...] = ()
    constant: bool = False


def _volume(proxy, shape: tuple[int, ...], t: int) -> np.ndarray:
    """Volume ``t`` (x, y, z) as stored (a view of an array); further dimensions (5D) at their
    first index. Floats are made only of what is drawn (``_as_float``): a whole 3D volume as
    float32 is twice an int16 series."""
    if len(shape) <= 3:
        return np.asanyarray(proxy).reshape(shape[:3])
    index = (slice(None),) * 3 + (t,) + (0,) * (len(shape) - 4)
    return np.asanyarray(proxy[index]).reshape(shape[:3])


def _constant(volume: np.ndarray) -> bool:
    """Every voxel equal as float32 (the check made on the float32 volume, without making it)."""
    if not volume.size:
        return True
    if volume.dtype.names or np.iscomplexobj(volume):
        values = _as_float(volume)
        return bool(np.nanmax(values) == np.nanmin(values))
    high, low = np.nanmax(volume), np.nanmin(volume)  # float32 rounding is monotonic
    return bool(np.float32(high) == np.float32(low))


def pictures(path: Path, with_carpet: bool) -> Pictures:
    """Thumbnails (mid volume) and, for BOLD, carpet + mean signal; one volume in memory at a time."""
    # keep_file_open: one gzip stream for all volumes (reading forward), not a fresh decompression
    # from the start of the file for every volume.
    import nibabel as nib

    image = nib.load(str(path), keep_file_open=True)
    # nibabel's load is typed as returning FileBasedImage; a .nii.gz loads as a Nifti1Image
    return pictures_of(image.dataobj, image.affine, with_carpet)  # type: ignore[attr-defined]


def pictures_of(data, affine: np.ndarray, with_carpet: bool) -> Pictures:
    """``pictures`` of an image's voxels: its array (a conversion task's, still in memory, gives
    the same pictures as the NIfTI written from it) or a nibabel array proxy (read one volume at
    a time, forward)."""
    shape = tuple(int(n) for n in data.shape)
    while len(shape) < 3:
        shape = shape + (1,)
    proxy = data
    n_volumes = shape[3] if len(shape) >= 4 else 1
    middle = _volume(proxy, shape, n_volumes // 2)
    thumbs = tuple(_planes(middle, np.asarray(affine, float)))
    with np.errstate(invalid="ignore"):
        constant = _constant(middle)
    if not with_carpet or n_volumes < 2:
        return Pictures(thumbs, constant=constant)
    middle = _as_float(middle)
    finite = middle[np.isfinite(middle)]
    threshold = np.percentile(finite, 60) if finite.size else 0.0
    mask = np.flatnonzero(np.isfinite(middle).ravel() & (middle.ravel() > threshold))
    if mask.size == 0:
        mask = np.arange(middle.size)
    chosen = mask[np.linspace(0, mask.size - 1, min(CARPET_ROWS, mask.size)).round().astype(int)]
    del middle
    steps = range(min(n_volumes, MAX_CARPET_VOLUMES))
    series = np.empty((chosen.size, len(steps)), np.float32)
    mean = []
    for t in steps:  # ascending t: gzip readers only ever seek forward
        volume = _volume(proxy, shape, t).reshape(-1)
        series[:, t] = _as_float(volume[chosen])
        mean.append(float(np.nanmean(_as_float(volume[mask]))))
        del volume
    centred = series - series.mean(axis=1, keepdims=True)
    spread = series.std(axis=1, keepdims=True)
    z = np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)
    carpet = ((np.clip(z, -3, 3) + 3) / 6 * 255).round().astype(np.uint8)
    return Pictures(thumbs, png_gray(carpet), tuple(mean), constant)


# ---------------------------------------------------------------- page

_STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1d232b; background: #f4f6f8; }
header { background: #8b1a1a; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; letter-spacing: .02em; }
header p { margin: 4px 0 0; opacity: .92; }
main { padding: 16px 24px 40px; max-width: 1280px; }
section { background: #fff; border: 1px solid #d9dee4; border-radius: 8px; padding: 12px 16px; margin: 14px 0; }
h2 { font-size: 16px; margin: 0 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e6e9ee; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr) max-content minmax(0, 1fr); gap: 2px 14px; }
.facts dt { color: #5a6470; } .facts dd { margin: 0; }
.runs { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 12px; }
.runs section { margin: 0; }
h2.part { font-size: 16px; margin: 20px 0 10px; }
.run h3 { font-size: 13.5px; margin: 0 0 6px; overflow-wrap: anywhere; }
.thumbs { display: flex; gap: 10px; align-items: flex-end; flex-wrap: wrap; margin: 6px 0; min-height: 138px; }
figure { margin: 0; text-align: center; } figcaption { font-size: 11px; color: #5a6470; }
img.px { image-rendering: pixelated; background: #000; border-radius: 3px; display: block; }
img.carpet { width: 100%; height: 150px; }
.warn { color: #8a4b00; } .err { color: #a61b1b; font-weight: 600; } .ok { color: #1f6f3f; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; background: #e8ecf1; font-size: 12px; }
svg.signal { width: 100%; height: 90px; background: #fbfcfd; border: 1px solid #e6e9ee; border-radius: 3px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def _shape(run: Run) -> str:
    return "\u00d7".join(str(n) for n in run.shape)


def _voxel(run: Run) -> str:
    return " \u00d7 ".join(f"{z:g}" for z in run.zooms[:3])


def _signal_svg(values: Iterable[float]) -> str:
    points = [v for v in values if np.isfinite(v)]
    if len(points) < 2:
        return ""
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    n = len(points)
    coords = " ".join(f"{i * 1000 / (n - 1):.1f},{80 - (v - low) / span * 70:.1f}" for i, v in enumerate(points))
    change = 100.0 * span / abs(np.mean(points)) if np.mean(points) else 0.0
    return (
        f'<svg class="signal" viewBox="0 0 1000 90" preserveAspectRatio="none" role="img" '
        f'aria-label="mean signal over {n} volumes">'
        f'<polyline fill="none" stroke="#2463a6" stroke-width="2" vector-effect="non-scaling-stroke" '
        f'points="{coords}"/></svg>'
        f'<div class="mono">mean signal in brain mask, {n} volumes, range {change:.2f} % of mean</div>'
    )


def _scrub_path(folder: str, scrub: Callable[[str], str]) -> str:
    """A source folder with each part scrubbed on its own (a name in one part hides only that part)."""
    return "/".join(scrub(part) for part in folder.split("/"))


def _source_line(folder: str, description: str, scrub: Callable[[str], str]) -> str:
    if not folder and not description:
        return ""
    return (
        f'<div class="mono">source folder <code>{_e(_scrub_path(folder, scrub))}</code>'
        f" \u00b7 description <code>{_e(scrub(description))}</code></div>"
    )


def _run_section(run: Run, pics: Pictures | None, scrub: Callable[[str], str]) -> str:
    number = f"series {run.series}" + (f" (no. {run.series_number})" if run.series_number is not None else "")
    shape, voxel = _shape(run), _voxel(run)
    volumes = run.shape[3] if len(run.shape) > 3 else 1
    tr = f"{run.repetition_time:g} s" if run.repetition_time else "\u2014"
    parts = [
        f'<section class="run" id="run-{run.series}">',
        f"<h3>{_e(number)} \u2192 <code>{_e(scrub(run.relpath))}.nii.gz</code> "
        f'<span class="badge">{_e(run.datatype)}/{_e(run.suffix)}</span></h3>',
        f'<div class="mono">shape {shape} \u00b7 voxel {voxel} mm \u00b7 TR {tr} \u00b7 volumes {volumes}</div>',
        _source_line(run.folder, run.description, scrub),
    ]
    if pics is not None and pics.thumbs:
        parts.append('<div class="thumbs">')
        for thumb in pics.thumbs:
            parts.append(
                f'<figure><img class="px" alt="{_e(thumb.plane)} mid-slice" width="{thumb.width}" '
                f'height="{thumb.height}" src="{_data_uri(thumb.png)}"><figcaption>{_e(thumb.plane)}'
                f"</figcaption></figure>"
            )
        parts.append("</div>")
    if pics is not None and pics.carpet is not None:
        parts.append(
            f'<figure><img class="px carpet" alt="carpet plot" src="{_data_uri(pics.carpet)}">'
            f"<figcaption>carpet: {CARPET_ROWS} sampled voxels \u00d7 volumes, z-scored (\u00b13)"
            f"</figcaption></figure>"
        )
        parts.append(_signal_svg(pics.mean_signal))
    parts.append(_deface_block(run))
    warnings = list(run.warnings) + (["image is constant (every voxel the same)"] if pics and pics.constant else [])
    if warnings:
        parts.append("<ul>" + "".join(f'<li class="warn">{_e(scrub(w))}</li>' for w in warnings) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _deface_block(run: Run) -> str:
    """The run's defacing status and, when defaced, its surface renders before and after."""
    if not run.deface:
        return ""
    parts = [f'<div class="mono">defacing: {_e(run.deface)}</div>']
    if run.renders:
        parts.append('<div class="thumbs">')
        for label, png in run.renders:
            parts.append(
                f'<figure><img class="px" alt="surface render, {_e(label)}" height="{THUMB_HEIGHT}" '
                f'src="{_data_uri(png)}"><figcaption>{_e(label)}</figcaption></figure>'
            )
        parts.append("</div>")
    return "\n".join(parts)


def render(
    data: ReportData, images: Iterable[tuple[Run, Pictures | None]], scrub: Callable[[str], str] = lambda text: text
) -> str:
    """The whole page as text (``images`` may be a generator: one image in memory at a time)."""
    validator = data.validator or {}
    if validator.get("errors") is None:
        validation = "bids-validator-deno not installed: not validated"
    else:
        validation = f"{validator.get('errors', 0)} error(s), {validator.get('warnings', 0)} warning(s)"
    runs_by_type: dict[str, int] = {}
    for run in data.runs:
        runs_by_type[run.datatype] = runs_by_type.get(run.datatype, 0) + 1
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        '<meta name="robots" content="noindex, nofollow">',
        '<link rel="icon" href="data:,">',
        f"<title>PRIVATE QC report \u2014 {_e(data.dataset)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<header><h1>{_e(PRIVATE_BANNER)}</h1><p>dcmpack QC report for <code>{_e(data.bundle)}</code>. "
        "Source series numbers and their BIDS paths are shown; keep this file with the data owner.</p></header>",
        "<main>",
        *(
            [f'<section><h2 class="err">Build failed: nothing published</h2><p>{_e(scrub(data.failure))}</p></section>']
            if data.failure
            else []
        ),
        '<section><h2>Bundle</h2><dl class="facts">',
        f'<dt>sha256</dt><dd class="mono" style="grid-column: 2 / 5">{_e(data.sha256)}</dd>',
        f"<dt>file</dt><dd><code>{_e(data.bundle)}</code></dd>",
        f"<dt>size</dt><dd>{_size(data.size)}</dd>",
        f"<dt>runs</dt><dd>{len(data.runs)}: "
        + (", ".join(f"{n} {_e(k)}" for k, n in sorted(runs_by_type.items())) or "none")
        + "</dd>",
        f"<dt>excluded</dt><dd>{len(data.excluded)} series</dd>",
        f"<dt>non-DICOM files</dt><dd>{data.skipped_files} skipped</dd>",
        f"<dt>BIDS validator</dt><dd>{_e(validation)}</dd>",
        f"<dt>defacing</dt><dd>{_e(data.deface or 'on')}</dd>",
        f"<dt>made by</dt><dd>{_e(data.tool)}</dd>",
        *(f'<dt>note</dt><dd class="warn" style="grid-column: 2 / 5">{_e(note)}</dd>' for note in data.notes),
        "</dl></section>",
    ]
    body = [f'<h2 class="part">Runs: source series \u2192 BIDS ({len(data.runs)})</h2><div class="runs">']
    for run, pics in images:
        body.append(_run_section(run, pics, scrub))
    body.append("</div>")
    excluded = [f"<section><h2>Excluded series ({len(data.excluded)})</h2>"]
    if data.excluded:
        excluded.append(
            "<table><thead><tr><th>series</th><th>no.</th><th>source folder</th><th>description</th>"
            "<th>reason</th><th>detail</th><th>what to do</th></tr></thead><tbody>"
        )
        for item in data.excluded:
            css = "err" if item.is_error else ""
            detail = "" if item.detail == item.reason else item.detail
            excluded.append(
                f"<tr><td>{item.series}</td><td>{'' if item.series_number is None else item.series_number}"
                f"</td><td><code>{_e(_scrub_path(item.folder, scrub))}</code></td>"
                f"<td><code>{_e(scrub(item.description))}</code></td>"
                f'<td class="{css}">{_e(scrub(item.reason))}</td><td>{_e(scrub(detail))}</td>'
                f"<td>{_e(item.advice)}</td></tr>"
            )
        excluded.append("</tbody></table>")
    else:
        excluded.append('<p class="ok">none</p>')
    excluded.append("</section>")
    codes = validator.get("codes") or []
    checks = []
    if codes:
        checks.append(
            "<section><h2>BIDS validator issues</h2><table><thead><tr><th>severity</th><th>code</th>"
            "<th>count</th><th>files</th></tr></thead><tbody>"
        )
        files = validator.get("files") or {}
        for severity, code, count in codes:
            css = "err" if severity == "error" else "warn"
            named = "<br>".join(f"<code>{_e(scrub(path))}</code>" for path in files.get(code, ())) or "dataset"
            checks.append(
                f'<tr><td class="{css}">{_e(severity)}</td><td><code>{_e(code)}</code></td><td>{_e(count)}</td>'
                f"<td>{named}</td></tr>"
            )
        checks.append("</tbody></table></section>")
    tail = [
        f'<footer class="mono" style="padding:0 24px 24px">{_e(PRIVATE_BANNER)}</footer>',
        "</main></body></html>",
        "",
    ]
    return "\n".join(head + body + excluded + checks + tail)


def _star_pictures(task: tuple[Path, bool]) -> tuple[Pictures | None, str]:
    return _safe_pictures(*task)


def _safe_pictures(path: Path, with_carpet: bool) -> tuple[Pictures | None, str]:
    """``pictures``, or None and the exception's type name (QC pictures never block a release)."""
    import nibabel as nib

    try:
        return pictures(path, with_carpet), ""
    except (OSError, ValueError, TypeError, IndexError, MemoryError, nib.filebasedimages.ImageFileError) as exc:
        return None, type(exc).__name__


def wants_carpet(datatype: str, suffix: str) -> bool:
    """Whether a run's pictures include a carpet plot and mean signal (BOLD-like runs)."""
    return datatype == "func" and suffix in ("bold", "cbv")


def write_report(
    target: Path,
    data: ReportData,
    dataset_dir: Path,
    scrub: Callable[[str], str] = lambda text: text,
    progress: Callable[[int, int], None] | None = None,
    jobs: int = 1,
    workers: executors.Workers | None = None,
    made: dict[str, Pictures | None] | None = None,
) -> Path:
    """Render the page from the images under ``dataset_dir`` and write it to ``target``.

    ``target`` should be in the private staging folder; the caller publishes it with
    ``os.replace``. ``made`` holds pictures already made from the voxels by the conversion
    tasks (by run path); the other images are read, reduced to thumbnails and released one at
    a time, by ``jobs`` worker processes (0: all cores) or ``workers``.
    """
    total = len(data.runs)
    made = made or {}

    def images():
        todo = [run for run in data.runs if made.get(run.relpath) is None]
        tasks = [(dataset_dir / (run.relpath + ".nii.gz"), wants_carpet(run.datatype, run.suffix)) for run in todo]
        pictures = executors.imap(_star_pictures, tasks, jobs=jobs, workers=workers)
        read = dict(zip((run.relpath for run in todo), pictures, strict=True))
        found = [
            (made[run.relpath], "") if made.get(run.relpath) is not None else read[run.relpath] for run in data.runs
        ]
        for done, (run, (pics, failure)) in enumerate(zip(data.runs, found, strict=True), 1):
            if pics is None:
                run = replace(run, warnings=run.warnings + (f"no thumbnails: image unreadable here ({failure})",))
            yield run, pics
            if progress is not None:
                progress(done, total)

    text = render(data, images(), scrub)
    write_private(target, text)
    return target


def write_private(target: Path, text: str) -> None:
    """``text`` into ``target``, mode 0600 from the start (the page is the data owner's), replacing it atomically."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, target)
