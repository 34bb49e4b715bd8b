"""heudiconv heuristic for benchmarks/bench.py: names every series, like
tests/heuristics/name_everything.py does for dcmpack (so both convert the same series of a
non-ReproIn input such as the QA corpus). 4D or mosaic series become func/bold, the rest anat/T1w;
the series index keeps names unique.
"""


def create_key(template, outtype=("nii.gz",), annotation_classes=None):
    return template, outtype, annotation_classes


def infotodict(seqinfo):
    info = {}
    for index, series in enumerate(seqinfo, 1):
        if series.dim4 > 1 or "MOSAIC" in tuple(series.image_type or ()):
            key = create_key(f"sub-{{subject}}/func/sub-{{subject}}_task-qa_acq-s{index}_bold")
        else:
            key = create_key(f"sub-{{subject}}/anat/sub-{{subject}}_acq-s{index}_T1w")
        info[key] = [series.series_id]
    return info
