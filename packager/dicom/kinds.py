"""What an image is, beyond where it is (``ImageKind``): a record shared by the index, which groups
by it, and the readers that say it (``dicom.frames``). Kept apart from them so that a build whose
headers all come from the build cache groups them without importing pydicom."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ImageKind:
    """What an image is, beyond where it is: images of one NIfTI share all of it.

    ``echo_time`` is in ms (None when absent); ``part`` is mag/phase/real/imag or ``fieldmap``
    (a direct field map in Hz); ``isotropic`` marks a derived isotropic (trace) diffusion image
    stored inside a DWI series (Philips, dcm2niix Philips/README.md "Derived parametric maps").
    """

    echo_time: float | None
    part: str
    isotropic: bool = False
