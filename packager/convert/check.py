"""The dicom2nifti check for convert: a series' datasets + our ``Stack`` -> agree, or refuse the series.

Classic single-frame series are also put through dicom2nifti (``dicom_array_to_nifti``: no
output file, no reorientation, so it neither copies the input folder nor writes twice, and never
names a file after a header value) as an independent check of the geometry ``stacking`` derived
from the headers: it gets the real headers with each image replaced by a 2x2 marker image (the
image's place in the series), so its slice sorting, volume grouping and affine run as on the
real data, and its result says where it put every image; an affine or voxel order that
disagrees with ours refuses the series rather than writing a doubtful affine. dicom2nifti does
not decode the real pixels: its pixel path deep-copies every dataset, holds the whole series
twice and rescales to float64 (FIELD-NOTES.md), which neither fits convert's memory bound nor
changes a voxel (the previous release compared them: equal wherever it accepted a series).

Refuses (``ConversionFailed``, value-free detail): a disagreement with our geometry. A series
dicom2nifti declines (``run_dicom2nifti`` maps its errors to ``ConversionFailed``) stands on
our own geometry checks alone.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from packager.convert import ConversionFailed
from packager.convert.stacking import Stack

if TYPE_CHECKING:
    import nibabel as nib

log = logging.getLogger(__name__)

# dicom2nifti's affine must equal ours, in the canonical frame, to this (mm; NIfTI stores float32).
ENGINE_AFFINE_MM = 1e-3
# Pixel-module elements the dicom2nifti probe drops or sets anew (its 2x2 marker images are
# native uint16): rescale, modality LUT, padding, pixel ranges, frames, planar configuration,
# pixel data, and the image pixel description it is given fresh elements for (the originals'
# DataElement objects are shared with the real dataset and must not be changed).
_PROBE_DROPPED = (
    0x00281052,
    0x00281053,
    0x00281054,
    0x00283000,
    0x00280106,
    0x00280107,
    0x00280120,
    0x00280008,
    0x00280006,
    0x7FE00008,
    0x7FE00009,
    0x7FE00010,
    0x00280034,
    0x00280010,
    0x00280011,
    0x00280100,
    0x00280101,
    0x00280102,
    0x00280103,
    0x00280002,
    0x00280004,
)


def _safe_detail(exc: BaseException) -> str:
    """dicom2nifti's own error codes are constants (e.g. NON_IMAGING_DICOM_FILES); keep those only."""
    text = str(exc.args[0]) if exc.args else ""
    if text and all(c.isupper() or c in "_/ " for c in text) and len(text) < 60:
        return f"dicom2nifti: {text}"
    return f"dicom2nifti raised {type(exc).__name__}"


class _NotYet(types.ModuleType):
    """Stands for ``scipy.ndimage`` while dicom2nifti is imported (see ``_scipy_ndimage_on_use``);
    anything read from it imports the real module and answers from it."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):  # module metadata probes (the import system's) need nothing
            raise AttributeError(attribute)
        _withdraw(self)
        return getattr(importlib.import_module("scipy.ndimage"), attribute)


def _withdraw(stand_in: _NotYet) -> None:
    if sys.modules.get("scipy.ndimage") is stand_in:
        del sys.modules["scipy.ndimage"]
    scipy = sys.modules.get("scipy")
    if scipy is not None and vars(scipy).get("ndimage") is stand_in:
        delattr(scipy, "ndimage")


@contextmanager
def _scipy_ndimage_on_use() -> Iterator[None]:
    """dicom2nifti imports ``scipy.ndimage`` at its own import (``dicom2nifti.resample``), for
    resampling gantry-tilted series, which its settings leave off and we never turn on; that
    import is ~0.1 s of CPU in every worker (most of dicom2nifti's import). While dicom2nifti is
    imported, a stand-in is in ``sys.modules``; it is taken out afterwards, so ``scipy.ndimage``
    (dicom2nifti's, or the defacer's) is imported for real where it is first used (SciPy's own
    lazy submodules: ``scipy.ndimage`` resolves through ``scipy.__getattr__``). Hand-written
    because ``importlib.util.LazyLoader`` loads the module as soon as an ``import`` statement
    finds it in ``sys.modules`` (the import system reads its ``__spec__``).
    """
    if "scipy.ndimage" in sys.modules:
        yield
        return
    stand_in = _NotYet("scipy.ndimage")
    sys.modules["scipy.ndimage"] = stand_in
    try:
        yield
    finally:
        _withdraw(stand_in)


def run_dicom2nifti(datasets: list[Dataset]) -> dict:
    """Call dicom2nifti without output file or reorientation; map its errors to ConversionFailed."""
    with _scipy_ndimage_on_use():
        import dicom2nifti.convert_dicom as convert_dicom
        import dicom2nifti.exceptions as d2n_errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("dicom2nifti").setLevel(logging.ERROR)
        try:
            return convert_dicom.dicom_array_to_nifti(datasets, None, reorient_nifti=False)
        except (d2n_errors.ConversionError, d2n_errors.ConversionValidationError) as exc:
            raise ConversionFailed(_safe_detail(exc)) from None
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            ZeroDivisionError,
            OverflowError,
            np.linalg.LinAlgError,
            MemoryError,
            NotImplementedError,
        ) as exc:
            raise ConversionFailed(_safe_detail(exc)) from None


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Data and affine reordered to the closest RAS+ voxel axes (for comparing engines)."""
    import nibabel as nib  # imported where an image is compared: a build whose series are cached needs none

    ornt = nib.orientations.io_orientation(affine)
    spatial = data.shape[:3] if data.ndim >= 3 else data.shape + (1,) * (3 - data.ndim)
    reordered = nib.orientations.apply_orientation(data.reshape(spatial + data.shape[3:]), ornt)
    return reordered, affine @ nib.orientations.inv_ornt_aff(ornt, spatial)


class _ProbeDataset(Dataset):
    """A probe image for dicom2nifti (see ``_probe``).

    dicom2nifti deep-copies every slice to keep decoded pixels off the original
    (common.get_volume_pixeldata); a shallow copy does that for these throwaway datasets at a
    fraction of the cost (element-by-element deepcopy was 90 % of its time). Its pixels are the
    marker image itself: nothing to decode.
    """

    def __deepcopy__(self, memo):
        from packager.dicom.fast import copy_elements

        clone = _ProbeDataset.__new__(_ProbeDataset)
        clone.__dict__.update(self.__dict__)
        clone.__dict__["_dict"] = copy_elements(self._dict)
        return clone

    @property
    def pixel_array(self) -> np.ndarray:
        return np.full((2, 2), self.__dict__["_marker"], dtype=np.uint16)


def _probe(ds: Dataset, marker: int, meta: Dataset, module: dict) -> Dataset:
    """``ds``'s header with its image replaced by a 2x2 native uint16 image of value ``marker``
    (``meta``: file meta naming a native transfer syntax; ``module``: the probe's pixel
    description elements (``_pixel_module``); both shared by the probes of a series)."""
    from pydicom.dataelem import DataElement

    from packager.dicom.fast import copy_elements

    probe = _ProbeDataset.__new__(_ProbeDataset)
    probe.__dict__.update(ds.__dict__)
    elements = copy_elements(ds._dict)
    for tag in _PROBE_DROPPED:
        elements.pop(tag, None)
    elements.update(module)
    elements[0x7FE00010] = DataElement(0x7FE00010, "OW", np.full(4, marker, dtype="<u2").tobytes())
    probe.__dict__["_dict"] = elements
    for attribute in ("_pixel_array", "_pixel_id"):
        probe.__dict__.pop(attribute, None)
    probe.__dict__["file_meta"] = meta
    probe.__dict__["_marker"] = marker
    return probe


#: The probe's image pixel description: 2x2, one sample, 16-bit unsigned. Its elements are made
#: once per series and shared by its probes (dicom2nifti reads them, never sets them), not taken
#: from the real dataset, whose elements must not change.
_PROBE_PIXEL_MODULE = (
    (0x00280010, "US", 2),
    (0x00280011, "US", 2),
    (0x00280100, "US", 16),
    (0x00280101, "US", 16),
    (0x00280102, "US", 15),
    (0x00280103, "US", 0),
    (0x00280002, "US", 1),
    (0x00280004, "CS", "MONOCHROME2"),
)


def probe_agrees(engine: nib.Nifti1Image, stack: Stack) -> bool:
    """dicom2nifti's image of the marker probes against ``stack``: every marker where our stack
    puts its image, and the same affine, in the canonical (RAS+) frame (see below)."""
    theirs = np.asanyarray(engine.dataobj)
    while theirs.ndim > 3 and theirs.shape[-1] == 1:
        theirs = theirs[..., 0]
    ours = np.zeros((2, 2, stack.n_slices, len(stack.volumes)), dtype=np.uint16)
    for t, volume in enumerate(stack.volumes):
        for k, image in enumerate(volume):
            ours[:, :, k, t] = image.source + 1
    if ours.shape[3] == 1:
        ours = ours[..., 0]
    theirs, their_affine = _canonical(theirs, np.asarray(engine.affine, dtype=float))
    ours, our_affine = _canonical(ours, stack.affine)
    return (
        theirs.shape == ours.shape
        and np.array_equal(theirs, ours)
        and np.allclose(their_affine, our_affine, rtol=0, atol=ENGINE_AFFINE_MM)
    )


def dicom2nifti_probe(datasets: list[Dataset]) -> dict:
    """dicom2nifti on the marker probes of ``datasets`` (``run_dicom2nifti``'s result)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    module = _pixel_module()
    return run_dicom2nifti([_probe(ds, number + 1, meta, module) for number, ds in enumerate(datasets)])


def _pixel_module() -> dict:
    """``_PROBE_PIXEL_MODULE`` as elements, ``{tag: DataElement}``."""
    from pydicom.dataelem import DataElement

    return {tag: DataElement(tag, vr, content) for tag, vr, content in _PROBE_PIXEL_MODULE}


def check_with_dicom2nifti(datasets: list[Dataset], stack: Stack) -> None:
    """Refuse the series when dicom2nifti places its images or its affine otherwise than we do.

    Marker ``i + 1`` stands for dataset ``i``; where dicom2nifti put each marker is compared with
    where our stack puts that image, and its affine with ours, both in the canonical (RAS+) frame.
    The affine of a voxel grid does not depend on its in-plane size, so the 2x2 probe's affine
    is the real series' affine. A series dicom2nifti declines (single slices: TOO_FEW_SLICES,
    LOCALIZER) stands on our geometry checks alone.
    """
    if len(datasets) >= 0xFFFF:
        return  # more images than 16-bit markers can tell apart
    try:
        result = dicom2nifti_probe(datasets)
    except ConversionFailed as exc:
        log.debug("convert: dicom2nifti declined (%s); using the header stack", exc.detail)
        return
    if not probe_agrees(result["NII"], stack):
        raise ConversionFailed("dicom2nifti and the slice positions disagree (affine or voxel order)")
