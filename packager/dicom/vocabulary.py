"""DICOM vocabularies: defined terms that are not PHI wherever they appear.

Data, not a stage. ``IMAGE_TYPE_VOCABULARY`` holds the ImageType (0008,0008) values scanners
write (DICOM defined terms and the common vendor-specific ones); ``VENDORS`` the manufacturer
names dcmpack recognises. The sidecar allowlist validates ImageType and Manufacturer against them;
the phi service treats them as generic words that are never searched as PHI.
"""

from __future__ import annotations

#: ImageType values: DICOM defined terms plus the vendor-specific ones seen in real archives.
IMAGE_TYPE_VOCABULARY = frozenset(
    """
ORIGINAL DERIVED PRIMARY SECONDARY M P R I MAGNITUDE PHASE REAL IMAGINARY ND NORM DIS2D DIS3D
MOSAIC DIFFUSION FMRI MOCO ADC FA TRACEW TRACE OTHER NONE MFSPLIT FILTERED UNI T1 T2 PD
SUBTRACT PERFUSION ASL FM B0 B0MAP FIELDMAP CSA ENDORECTAL MIXED MPR PROJECTION VOLUME AXIAL
CALC CBF RELCBF TTEST STATISTICS WATER FAT IN_PHASE OUT_PHASE VELOCITY DIXON SWI MIP MNIP
TENSOR TENSOR_B0 COLFA EADC EXP RGB DIS1D SH PMU STD NONE EPI SUBTRACTION RCBF RELCBV CBV MTT TTP
MOSAIC_NORM SE GRE IR FLAIR MEAN AVERAGE MAX MIN SUM DIXON_W DIXON_F WATER_IMAGE FAT_IMAGE
T1MAP T2MAP T2STAR T2STARMAP R2STAR QSM SWI_PHASE MAG PHA ISO DTI DWI TRACE_W CSA_RESAMPLED
RESAMPLED REFORMATTED LOCALIZER LOCALISER SCOUT CSA_REPORT VIBE MIXED_2 COMBINED
UNI_IMAGES INV1 INV2 T1_MAP T2_MAP PROPELLER RECON HEADER ORIGINAL_IMAGE
""".split()
)

#: Manufacturer names as the sidecar writes them (the Manufacturer enum).
VENDORS = ("Siemens", "GE", "Philips", "Canon", "Toshiba", "Hitachi", "UIH", "Bruker", "Fujifilm")
