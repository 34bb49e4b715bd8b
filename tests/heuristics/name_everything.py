"""Test heuristic: names every convertible series, so real corpus data runs end to end.

4D series become func/bold (task "qa"), 3D series anat/T1w; the series index keeps names
unique (acq-s<N>). Series with diffusion tags *and* a diffusion-like name become dwi (GE fMRI
also carries the diffusion private tag).
"""

from packager.model import BidsName, Series, Skip


def classify(series: Series) -> BidsName | Skip:
    acq = ("acq", f"s{series.index + 1}")
    text = f"{series.series_description} {series.protocol_name}".lower()
    diffusion_words = any(w in text for w in ("dwi", "dti", "diff", "tensor", "b0", "adc"))
    if series.has_diffusion and series.n_volumes != 1 and ("DIFFUSION" in series.image_type or diffusion_words):
        return BidsName("dwi", "dwi", (acq,), "test: diffusion")
    if series.n_volumes > 1 or series.is_mosaic:
        return BidsName("func", "bold", (acq, ("task", "qa")), "test: 4D")
    return BidsName("anat", "T1w", (acq,), "test: 3D")
