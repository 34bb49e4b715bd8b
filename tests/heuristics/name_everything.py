"""Test heuristic: names every convertible series, so real corpus data runs end to end.

4D series become func/bold (task "qa"), 3D series anat/T1w; the series index keeps names
unique (acq-s<N>). Diffusion series become dwi.
"""
from packager.model import BidsName, Series, Skip


def classify(series: Series) -> BidsName | Skip:
    acq = ("acq", f"s{series.index + 1}")
    if series.has_diffusion and series.n_volumes != 1:
        return BidsName("dwi", "dwi", (acq,), "test: diffusion")
    if series.n_volumes > 1 or series.is_mosaic:
        return BidsName("func", "bold", (acq, ("task", "qa")), "test: 4D")
    return BidsName("anat", "T1w", (acq,), "test: 3D")
