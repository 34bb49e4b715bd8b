"""Test heuristic: every series is one field map for dcmpack to name (fmap suffix ``auto``).

dcm_qa_philips_enh's two-echo field map (a magnitude and a phase per echo in one enhanced
object) becomes magnitude1, magnitude2, phase1 and phase2 of one field map.
"""

from packager.model import BidsName, Series, Skip


def classify(series: Series) -> BidsName | Skip:
    return BidsName("fmap", "auto", (("acq", "fm"),), "test: field map")
