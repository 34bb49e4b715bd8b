"""Convert, the per-series task: one Planned series -> its staged NIfTI (+ b-tables),
its derived sidecar fields and its QC pictures.

``convert_task`` is a pure function of its arguments, run in a worker process or on a Dask
worker (pickled by module path, so it stays a module-level function). It sees no PHI value:
the sidecar fields it returns are the derived ones, before the allowlist, which the build
applies once with the PHI terms of the whole source. Of the allowlist it needs only the
validated RepetitionTime, the one the NIfTI header states. A series that cannot be converted
is a ``TaskResult`` with ``error`` set (a value-free detail), never an exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager import __version__, executors
from packager import cache as cache_service
from packager import deface as deface_stage
from packager.config import DefaceConfig, Engine, ReleaseConfig, parse_executor
from packager.convert import ConversionFailed, cached, engines
from packager.deface import parts as deface_parts
from packager.model import BidsName, Planned
from packager.release import bundle as bundle_stage
from packager.release import report as report_stage
from packager.sidecar import allowlist


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What one conversion task returns (small: the NIfTI itself is already staged).

    ``fields`` are the derived sidecar fields before the allowlist, which the build applies
    with the PHI terms of the whole source: a task sees no PHI value.
    """

    series_index: int
    relpath: str
    staged: tuple[bundle_stage.Staged, ...] = ()
    fields: tuple[tuple[str, object], ...] = ()
    shape: tuple[int, ...] = ()
    zooms: tuple[float, ...] = ()
    error: str = ""
    pictures: report_stage.Pictures | None = None  # QC thumbnails made from the voxels in memory
    engine: str = ""  # the engine that converted it ("" when none did)
    fallback: str = ""  # --engine auto: why our engine refused it (dcm2niix converted it then)
    deface: deface_stage.Record | None = None  # head runs only: defaced, exempt or refused


def convert_task(
    item: Planned,
    dataset_dir: str,
    tool: str,
    engine: str = "dicom2nifti",
    deface: DefaceConfig | None = None,
    shared: tuple[tuple[str, deface_parts.Cut], ...] = (),
) -> TaskResult:
    """Convert one planned series, derive its sidecar fields, stage its files.

    Parameters
    ----------
    item : Planned
        The series and its BIDS path.
    dataset_dir : str
        The private dataset staging folder the files are written into.
    tool : str
        ``ConversionSoftwareVersion`` of the sidecar (dcmpack's and the engine's versions).
    engine : str
        ``dicom2nifti``, ``dcm2niix`` or ``auto`` (ours, then dcm2niix for a series ours refuses).
    deface : DefaceConfig, optional
        ``[deface]``; None: no defacing step at all (the default config defaces).
    shared : tuple of (str, Cut)
        Cuts of other parts of an acquisition, by the BIDS path of the run they are for
        (``deface.parts.in_waves``).

    Returns
    -------
    TaskResult
        With ``error`` set (and nothing staged) when the series could not be converted.
    """
    if engine == Engine.DCM2NIIX:
        return _convert_task_dcm2niix(item, dataset_dir, tool, deface, shared)
    if engine == Engine.AUTO:
        return _convert_task_auto(item, dataset_dir, tool, deface, shared)
    # the conversion's own modules (pydicom, the readers) are imported where a series is
    # converted: a build whose every series comes from the build cache never needs them
    from packager.convert import volume as convert_stage
    from packager.convert.diffusion import MISSING_TABLES, diffusion_tables
    from packager.sidecar import fields as sidecar_stage

    series, name = item.series, item.name
    try:
        datasets = convert_stage.read_series_datasets(series.files)
        volume = convert_stage.convert_datasets(datasets, frames=series.frames, release=True)
    except ConversionFailed as exc:
        return TaskResult(series.index, item.relpath, error=exc.detail)
    data = _as_4d_if_func(volume.data, name)
    fields = sidecar_stage.derive_fields(
        volume.heads,
        volume.slice_datasets,
        volume.affine,
        data.shape,
        dict(name.entities),
        name.datatype,
        name.suffix,
        sources=tuple(datasets),
        frames=tuple(getattr(series, "frames", ()) or ()),
    )
    tables = None
    if name.datatype == "dwi":
        tables = diffusion_tables(volume.heads, volume.affine)
        if tables is None:
            return TaskResult(series.index, item.relpath, error=MISSING_TABLES)
    affine = volume.affine
    del datasets, volume  # the headers are done with; the voxels are in ``data``
    return _finish_task(item, dataset_dir, data, affine, fields, tables, tool, deface, shared=shared)


def _convert_task_auto(
    item: Planned, dataset_dir: str, tool: str, deface: DefaceConfig | None, shared: tuple = ()
) -> TaskResult:
    """``--engine auto``: our engine, and dcm2niix for a series it refuses (the refusal kept as
    ``fallback`` for MANIFEST and the report). Both refusing is one failure naming both; a run
    the defacing step refuses is not converted again (dcm2niix's voxels show the same head)."""
    ours = convert_task(item, dataset_dir, tool, Engine.DICOM2NIFTI, deface, shared)
    if not ours.error or (ours.deface is not None and ours.deface.refused):
        return ours
    theirs = _convert_task_dcm2niix(
        item, dataset_dir, f"dcmpack {__version__}; {engine_version(Engine.DCM2NIIX)}", deface, shared
    )
    if theirs.error:
        return dataclasses.replace(theirs, error=f"{ours.error}; dcm2niix: {theirs.error}")
    return dataclasses.replace(theirs, fallback=ours.error)


def _convert_task_dcm2niix(
    item: Planned, dataset_dir: str, tool: str, deface: DefaceConfig | None, shared: tuple = ()
) -> TaskResult:
    """``convert_task`` with the dcm2niix engine: its voxels, JSON and b-tables through our
    NIfTI hygiene and staging (see ``packager.convert.dcm2niix``)."""
    from packager.convert import dcm2niix  # as in convert_task

    series, name = item.series, item.name
    try:
        output = dcm2niix.run_dcm2niix(series.files, frames=tuple(series.frames or ()))
    except ConversionFailed as exc:
        return TaskResult(series.index, item.relpath, error=exc.detail)
    data = _as_4d_if_func(output.data, name)
    fields = dcm2niix.sidecar_fields(output, dict(name.entities), name.datatype, name.suffix)
    tables = None
    if name.datatype == "dwi":
        if output.bval is None or output.bvec is None:
            return TaskResult(series.index, item.relpath, error="dcm2niix wrote no b-values/vectors")
        tables = (output.bval, output.bvec)
    return _finish_task(item, dataset_dir, data, output.affine, fields, tables, tool, deface, Engine.DCM2NIIX, shared)


def _as_4d_if_func(data, name: BidsName):
    """BOLD-like runs must be 4D even with one volume (BIDS validator rule)."""
    if name.datatype == "func" and data.ndim == 3 and name.suffix in ("bold", "cbv", "phase"):
        return data[..., None]
    return data


def _finish_task(
    item: Planned,
    dataset_dir: str,
    data,
    affine,
    fields: dict,
    tables: tuple[str, str] | None,
    tool: str,
    deface: DefaceConfig | None = None,
    engine: str = Engine.DICOM2NIFTI,
    shared: tuple[tuple[str, deface_parts.Cut], ...] = (),
) -> TaskResult:
    """The engine-independent tail: defacing, clean NIfTI (with the TR the sidecar will state), staging."""
    from packager.convert.nifti import write_nifti  # as in convert_task

    data, record = _defaced(data, affine, item.name, fields, deface, dict(shared).get(item.relpath))
    if record is not None and record.refused:
        return TaskResult(item.series.index, item.relpath, error=f"defacing {record.status}", deface=record)
    fields["ConversionSoftware"] = "dcmpack"
    fields["ConversionSoftwareVersion"] = tool
    tr = _kept_repetition_time(fields) if data.ndim == 4 else None
    folder = Path(dataset_dir)
    nifti, (shape, zooms) = bundle_stage.stage_stream(
        folder, item.image, lambda sink: write_nifti(sink, data, affine, tr)
    )
    staged = [nifti]
    if tables is not None:
        staged.append(bundle_stage.stage_bytes(folder, item.relpath + ".bval", tables[0].encode()))
        staged.append(bundle_stage.stage_bytes(folder, item.relpath + ".bvec", tables[1].encode()))
    return TaskResult(
        item.series.index,
        item.relpath,
        tuple(staged),
        tuple(sorted(fields.items())),
        shape,
        zooms,
        pictures=_pictures(data, affine, item.name),
        engine=engine,
        deface=record,
    )


def _defaced(data, affine, name: BidsName, fields: dict, deface: DefaceConfig | None, cut=None):
    """``deface_stage.apply`` with its renders encoded as PNG (small to send back from a worker)."""
    if deface is None:
        return data, None
    acquisition = fields.get("MRAcquisitionType")
    data, record = deface_stage.apply(data, affine, name.datatype, name.suffix, acquisition, deface, cut)
    if record is not None and record.views:
        views = tuple((label, report_stage.png_gray(np.asarray(image))) for label, image in record.views)
        record = dataclasses.replace(record, views=views)
    return data, record


def _kept_repetition_time(fields: dict[str, Any]) -> Any:
    """The RepetitionTime the allowlist will keep in the sidecar, or None.

    The allowlist keeps a number when its validator accepts it; PHI terms never drop a number,
    so the build's one pass (with the source's terms) keeps this same value.
    """
    value = fields.get("RepetitionTime")
    return value if value is not None and allowlist.ALLOWLIST["RepetitionTime"].check(value) else None


def _pictures(data, affine, name: BidsName) -> report_stage.Pictures | None:
    """The run's QC pictures while its voxels are in memory (the report reads the file otherwise)."""
    try:
        return report_stage.pictures_of(data, affine, report_stage.wants_carpet(name.datatype, name.suffix))
    except (ValueError, TypeError, IndexError, MemoryError):
        return None


def run_tasks(
    items: list[Planned],
    dataset_dir: Path,
    config: ReleaseConfig,
    progress: Callable[[int, int], None] | None,
    initializer: Callable[[], None] | None = None,
    workers: executors.Workers | None = None,
) -> list[TaskResult]:
    """``convert_task`` for every planned series, on the configured executor, in ``items`` order.

    Parameters
    ----------
    items : list of Planned
    dataset_dir : Path
        The private dataset staging folder.
    config : ReleaseConfig
        Its executor, jobs, ``[convert] engine`` and build cache.
    progress : callable, optional
        ``progress(done, total)`` after each finished task.
    initializer : callable, optional
        Run once in each local worker process (signal handling).
    workers : executors.Workers, optional
        The build's worker processes.

    Returns
    -------
    list of TaskResult
        One per item, in order, their staged files where they are in ``dataset_dir`` now.

    Raises
    ------
    ConfigError
        The chosen engine is not installed, or the Dask cluster is unusable.
    """
    engines.require(config.convert.engine)  # ConfigError (exit 2) when the chosen engine is not installed
    # --engine auto: ours first; the dcm2niix fallback names its own version
    first = Engine.DICOM2NIFTI if config.convert.engine == Engine.AUTO else config.convert.engine
    tool = f"dcmpack {__version__}; {engine_version(first)}"
    probe = tuple(dict.fromkeys(str(p.series.files[0]) for p in items[:1] + items[-1:] if p.series.files))
    task: Callable[..., TaskResult] = convert_task
    args: tuple = (tool, config.convert.engine, config.deface)
    if config.cache is not None:  # the same task, its results reused through the build cache
        cache_service.Store(config.cache)  # made private now; ConfigError when others can open it
        task, args = cached.convert_cached, (convert_task, str(config.cache), cache_service.environment(), *args)
    done = [0]  # tasks finished in earlier waves (parts of an acquisition wait for their cut)

    def wave(positions: list[int], shared: tuple) -> list[TaskResult]:
        def report(finished: int, total: int) -> None:
            if progress is not None:
                progress(done[0] + finished, max(len(items), done[0] + total))

        wave_args = (*args, shared) if shared else args
        # reused series are taken from the cache here; only the others go to the workers
        here: dict[int, TaskResult] = {}
        if config.cache is not None and parse_executor(config.executor) is None:
            for position in positions:
                hit = cached.reused(items[position], str(dataset_dir), *wave_args[1:])
                if hit is not None:
                    here[position] = hit
                    report(len(here), len(positions))
        rest = [p for p in positions if p not in here]
        if rest:
            _import_converters()
        found = iter(
            executors.run(
                task,
                [items[p] for p in rest],
                dataset_dir,
                wave_args,
                executor=config.executor,
                jobs=config.jobs,
                cost=series_cost,
                progress=lambda finished, total: report(len(here) + finished, len(positions)),
                initializer=initializer,
                probe=probe,
                workers=workers,
            )
            if rest
            else ()
        )
        done[0] += len(positions)
        return [here[p] if p in here else next(found) for p in positions]

    if config.deface.enabled:
        results = deface_parts.in_waves(items, config.deface, wave)
    else:
        results = wave(list(range(len(items))), ())
    # A Dask worker staged its files in its own scratch folder: point at where they are now.
    return [
        dataclasses.replace(r, staged=tuple(dataclasses.replace(s, path=dataset_dir / s.relpath) for s in r.staged))
        for r in results
    ]


def _import_converters() -> None:
    """Import the conversion's modules here, before tasks are sent: worker processes forked from
    now on share them instead of each importing them. Not done when every series comes from the
    build cache (``convert_task`` imports them where it runs)."""
    from packager.dicom import load_pydicom

    load_pydicom()
    import packager.convert.dcm2niix
    import packager.convert.nifti
    import packager.convert.volume
    import packager.sidecar.fields  # noqa: F401


def series_cost(item: Planned) -> int:
    """Relative work of a series (pixels), so the biggest start first."""
    series = item.series
    return max(series.n_frames, series.n_files, 1) * max(series.rows, 1) * max(series.columns, 1)


def engine_version(engine: str) -> str:
    """``<engine> <version>`` of the installed conversion library (just its name when not installed);
    both engines' for ``auto``."""
    from importlib.metadata import PackageNotFoundError, version

    if engine == Engine.AUTO:
        return f"{engine_version(Engine.DICOM2NIFTI)} + {engine_version(Engine.DCM2NIIX)}"

    try:
        return f"{engine} {version(engine)}"
    except PackageNotFoundError:
        return engine
