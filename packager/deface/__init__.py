"""Deface, the step between conversion and staging: a converted run -> its voxels with the face
zeroed, the record of what was done, and before/after renders for the private QC report.

Which runs: those whose suffix shows a head (``config.HEAD_SUFFIXES``: every anatomical and the
magnitude images of field maps, or ``[deface] suffixes``). A field-map magnitude from a 2D
acquisition, a run with voxels coarser than 4 mm in any direction, a run with fewer than 4
voxels along an axis and a field of view under 80 mm in two directions are exempt (recorded as
such): none of them renders a face. Runs exempted
by config (``[deface] enabled = false`` or a narrower suffix list, each with a written reason)
are recorded with that reason.

Field-map images that are not magnitudes (``phasediff``, ``phase1``, ``phase2``, ``fieldmap``:
``FIELD_MAP_PARTS``) show the same head against air noise, so a face outline, and are parts of
their field map (``parts``): they take the cut of a magnitude of their field map on their voxel
grid, follow that magnitude's exemptions (2D acquisition, config), and are never registered on
their own (phase and Hz maps fail the gates, and a pass would be luck).

Parts of one acquisition (magnitude, real, imaginary, phase) on one voxel grid share one cut
(``parts``): the cut of the first part defaced on its own registration, handed to the others as
a ``parts.Cut``. Their face voxels are set to 0 like the magnitude's: with the magnitude 0 the
complex signal there is 0 whatever the phase says, and 0 is the phase NumPy and most tools give
a zero complex value; a constant (not noise, not NaN) leaves no outline of the face and no
values that break phase unwrapping.

Refuses (``Record.refused``): a head run that ``face.deface`` cannot place the template on
plausibly (phantoms included) and that no other part of its acquisition gives a cut, and a
field-map phase or field map with no defaced magnitude on its grid; the build leaves it out
(exit 1, with the field map it belongs to), never publishes it with its face or a hole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from packager import __version__
from packager.config import HEAD_SUFFIXES, DefaceConfig
from packager.deface.parts import FIELD_MAP_PARTS, Cut, field_map_part

#: DICOM CID 7050 code for what the step does (added to DeidentificationMethodCodeSequence).
CODE = ("113102", "Clean Recognizable Visual Features")
MAX_VOXEL_MM = 4.0
MIN_VOXELS = 4  # along every axis: ITK's smoothing needs four, and fewer slices draw no face
#: A face (eyes to mouth, cheek to cheek) needs this much in two directions; a slab through a
#: head (a 40 mm mid-sagittal band shows the profile) spans it, and is defaced or refused.
MIN_FACE_MM = 80.0
FIELD_MAP_2D = "field-map image from a 2D acquisition"
NO_MAGNITUDE_CUT = "no defaced magnitude of its field map on its voxel grid to take the cut from"
DEFACED = "defaced"
EXEMPT = "exempt: "
REFUSED = "refused: "


@dataclass(frozen=True, slots=True)
class Record:
    """What the step did to one run: ``status`` is ``defaced``, ``exempt: <why>`` or
    ``refused: <why>`` (value-free); ``views`` are (label, image) pairs for the report: uint8
    arrays as made here, PNG bytes once the conversion task has encoded them."""

    status: str
    removed: int = 0
    checks: tuple[tuple[str, float], ...] = ()
    views: tuple[tuple[str, np.ndarray | bytes], ...] = ()
    cut: Cut | None = None  # defaced on its own registration: the cut, for the other parts
    cut_from: str = ""  # defaced with another part's cut: that part's BIDS path

    @property
    def refused(self) -> bool:
        return self.status.startswith(REFUSED)

    @property
    def defaced(self) -> bool:
        return self.status == DEFACED


def method() -> dict[str, str]:
    """How runs are defaced (for MANIFEST.json)."""
    return {
        "method": "affine registration of a whole-head template (SimpleITK Mattes MI, 1 thread, fixed seed); "
        "voxels under its face mask set to 0; refused when implausible or when a second registration disagrees; "
        "the magnitude, real, imaginary and phase parts of one acquisition on one voxel grid share the cut of "
        "the first part defaced on its own registration; field-map phase and field-map (Hz) images take "
        "the cut of a magnitude of their field map on their grid, and are never registered on their own",
        "template": "pydeface 2.1.0 mean_reg2mean.nii.gz + facemask.nii.gz (MIT), MNI152 2009 brain mask",
        "version": f"dcmpack {__version__}; SimpleITK {version('SimpleITK')}",
    }


def constant_texts() -> tuple[bytes, ...]:
    """The fixed texts this step puts into MANIFEST.json, as they stand in the JSON (quoted): the
    PHI audit blanks them like the README's sentences (a private vendor text holding "affine" or
    "template" does not match dcmpack's own words). A user's ``[deface] reason`` stays searched."""
    values = {*method().values(), DEFACED}
    values |= {
        EXEMPT + "field-map magnitude from a 2D acquisition",
        EXEMPT + FIELD_MAP_2D,
        EXEMPT + f"not a volume (an axis shorter than {MIN_VOXELS} voxels)",
        EXEMPT + f"voxels coarser than {MAX_VOXEL_MM:g} mm",
        EXEMPT + f"field of view under {MIN_FACE_MM:g} mm in two directions: no room for a face",
    }
    return tuple(json.dumps(value).encode() for value in sorted(values))


def applies(suffix: str, config: DefaceConfig) -> bool:
    """Whether runs with ``suffix`` are heads the step looks at (defaced, or exempt with a record):
    a head suffix, or a field-map phase or field map (``FIELD_MAP_PARTS``)."""
    return suffix in HEAD_SUFFIXES or suffix in config.suffixes or suffix in FIELD_MAP_PARTS


def apply(
    data: np.ndarray,
    affine: np.ndarray,
    datatype: str,
    suffix: str,
    acquisition: object,
    config: DefaceConfig,
    cut: Cut | None = None,
) -> tuple[np.ndarray, Record | None]:
    """Deface one run's voxels when its suffix shows a head.

    Parameters
    ----------
    data : numpy.ndarray
        The run's voxels (3D, or 4D with volumes last), as they will be written.
    affine : numpy.ndarray
        Voxel-to-RAS+ affine.
    datatype, suffix : str
        The run's BIDS datatype and suffix.
    acquisition : object
        Its ``MRAcquisitionType`` (``2D``, ``3D`` or None).
    config : DefaceConfig
    cut : parts.Cut, optional
        The cut of another part of the run's acquisition: used, instead of a registration of
        this run, when the run is on the cut's voxel grid (``Cut.fits``).

    Returns
    -------
    (numpy.ndarray, Record or None)
        The voxels to write (``data`` itself unless defaced) and the record (None: not a head run).
    """
    if not applies(suffix, config):
        return data, None
    follower = field_map_part(datatype, suffix)
    exemption = config.exemption(FIELD_MAP_PARTS[suffix] if follower else suffix)
    if exemption:
        return data, Record(EXEMPT + exemption)
    if datatype == "fmap" and str(acquisition or "").upper() != "3D":
        return data, Record(EXEMPT + (FIELD_MAP_2D if follower else "field-map magnitude from a 2D acquisition"))
    voxel = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    if data.ndim < 3 or min(data.shape[:3]) < MIN_VOXELS:
        return data, Record(EXEMPT + f"not a volume (an axis shorter than {MIN_VOXELS} voxels)")
    if voxel.max() > MAX_VOXEL_MM + 1e-3:  # 4 mm voxels, as stored (float32), are not coarser
        return data, Record(EXEMPT + f"voxels coarser than {MAX_VOXEL_MM:g} mm")
    if np.count_nonzero(np.array(data.shape[:3]) * voxel >= MIN_FACE_MM) < 2:
        return data, Record(EXEMPT + f"field of view under {MIN_FACE_MM:g} mm in two directions: no room for a face")
    # imported here: SciPy and SimpleITK cost ~0.3 s, paid only by a build that defaces a run
    from packager.deface import face

    if cut is not None and cut.fits(affine, data.shape):
        mask = cut.mask()
        out = face.zeroed(data, mask)
        views = _views(data, out, affine)
        return out, Record(DEFACED, int(np.count_nonzero(mask)), cut.checks, views, cut_from=cut.source)
    if follower:
        return data, Record(REFUSED + NO_MAGNITUDE_CUT)
    outcome = face.deface(data, affine)
    if outcome.data is None or outcome.cut is None:
        return data, Record(REFUSED + outcome.refusal, checks=outcome.checks)
    own = Cut.of(outcome.cut, affine, outcome.checks)
    return outcome.data, Record(DEFACED, outcome.removed, outcome.checks, _views(data, outcome.data, affine), own)


def _views(data: np.ndarray, defaced: np.ndarray, affine: np.ndarray) -> tuple[tuple[str, np.ndarray], ...]:
    """The report's surface renders of the first volume, before and after."""
    from packager.deface import render  # lazy, as in apply

    first_before = data[..., 0] if data.ndim == 4 else data
    first_after = defaced[..., 0] if data.ndim == 4 else defaced
    front, side = render.views(first_before, affine)
    front_after, side_after = render.views(first_after, affine)
    return (
        ("front, before", front),
        ("front, after", front_after),
        ("side, before", side),
        ("side, after", side_after),
    )
