"""GE fMRI sidecars on dcm_qa_ge.

- A pause after each volume: RepetitionTime is the volume interval, TR + delay, in the sidecar
  and the NIfTI's pixdim[4] alike, as dcm2niix writes it; the header's own timers step by that
  interval. A series whose delay is "Minimum" keeps its header TR.
- Hyperband interleave with an even number of shots (80 slices / HB8): GE's order from release
  27.0 R03 on swaps the last two odd positions; older releases get no SliceTiming.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from benchmarks import sidecar_agreement as benchmark
from packager import api
from packager.config import ReleaseConfig, merge_flags
from packager.sidecar import fields

EVERYTHING = Path(__file__).parent / "heuristics" / "name_everything.py"
SERIES = {  # folder under dcm_qa_ge/In -> (reference, per-image timer, timer unit in s)
    "SliceTimingMPh/3_fMRI_Multiphase_Des_0.35Delay": ("fMRI_Multiphase_Des_0.35Delay_3", "TriggerTime", 1e-3),
    "SliceTimingRT/2_epiRT_IntAsc_GD3s": ("epiRT_IntAsc_GD3s_2", (0x0021, 0x105E), 1.0),
    "SliceTimingMPh/2_fMRI_Multiphase_Des": ("fMRI_Multiphase_Des_2", "TriggerTime", 1e-3),
}
EVEN_SHOTS = "SliceTiming/4_Ax_fMRI_HB8_80sl_int_asc"


@pytest.fixture(scope="module")
def runs(corpus, key_file, tmp_path_factory) -> dict[str, tuple[dict, nib.Nifti1Image]]:
    """Each series built on its own source (sidecar, image), by folder."""
    out = tmp_path_factory.mktemp("ge-delay")
    built = {}
    for folder in (*SERIES, EVEN_SHOTS):
        config = merge_flags(
            ReleaseConfig(),
            sources=(str(corpus / "dcm_qa_ge" / "In" / folder),),
            output=out / folder.replace("/", "_"),
            key_file=str(key_file),
            heuristic=str(EVERYTHING),
        )
        result = api.build(config)
        assert result.exit_code == 0, result.excluded
        with zipfile.ZipFile(result.bundle) as archive:
            (nifti,) = [n for n in archive.namelist() if n.endswith("_bold.nii.gz")]
            sidecar = json.loads(archive.read(nifti.replace(".nii.gz", ".json")))
            image = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(nifti)))
        built[folder] = (sidecar, image)
    return built


def _volume_interval(folder: Path, timer, unit: float) -> float:
    """Seconds between the first and second time the first slice position is acquired."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(folder.iterdir())]
    first = min(float(h.SliceLocation) for h in headers)
    times = sorted(float(h[timer].value) * unit for h in headers if float(h.SliceLocation) == first)
    return times[1] - times[0]


@pytest.mark.parametrize("folder", list(SERIES))
def test_repetition_time_is_the_volume_interval(runs, corpus, folder):
    reference, timer, unit = SERIES[folder]
    sidecar, image = runs[folder]
    theirs = json.loads((corpus / "dcm_qa_ge" / "Ref" / f"{reference}.json").read_text())
    expected = theirs["RepetitionTime"]
    header_tr = float(pydicom.dcmread(next((corpus / "dcm_qa_ge" / "In" / folder).iterdir())).RepetitionTime) / 1000
    assert sidecar["RepetitionTime"] == pytest.approx(expected)
    assert float(image.header["pixdim"][4]) == pytest.approx(sidecar["RepetitionTime"])
    assert image.header.get_xyzt_units() == ("mm", "sec")
    assert _volume_interval(corpus / "dcm_qa_ge" / "In" / folder, timer, unit) == pytest.approx(expected, abs=0.01)
    if expected > header_tr:
        assert sidecar["DelayTime"] == pytest.approx(expected - header_tr)
    else:
        assert "DelayTime" not in sidecar
    assert max(sidecar["SliceTiming"]) < header_tr  # the slices fill the acquisition, not the pause
    assert np.isclose(max(sidecar["SliceTiming"]), max(theirs["SliceTiming"]))


def test_even_shot_hyperband_interleave_matches_dcm2niix(runs, corpus):
    sidecar, image = runs[EVEN_SHOTS]
    reference = benchmark.reference_runs(corpus, "dcm_qa_ge")
    (theirs,) = [r for r in reference if r.name == "Ax_fMRI_HB8_80sl_int_asc_4"]
    ours = benchmark.Run("ours", sidecar, image.affine, image.shape, "mag", None)
    agree, detail = benchmark.compare_key("SliceTiming", ours, theirs)
    assert agree, detail
    shots = sorted(set(sidecar["SliceTiming"]))
    assert len(shots) == 10 and sidecar["SliceTiming"].count(0.0) == 8  # 10 shots of 8 slices


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (["28", "LX", "MR Software release:DV28.0_R02_1947.a"], True),
        (["27", "LX", "MR Software release:RX27.0_R03_1831.b"], True),
        (["27", "LX", "MR Software release:DV27.0_R02_1812.a"], False),
        (["26", "LX", "MR Software release:DV26.0_R01_1725.a"], False),
        ("MR29.1_EA_2036.a", True),
        ("", False),
    ],
)
def test_ge_release_gate(versions, expected):
    head = Dataset()
    head.SoftwareVersions = versions
    assert fields._ge_release_27r3_or_later(head) is expected
