"""The private QC report: next to the bundle, offline, free of header values, and it renders in a
real headless Chromium (Debian's, driven by Playwright, inside a network namespace with no network).
The browser test fails, never skips, when Chromium or Playwright is missing."""

from __future__ import annotations

import io
import os
import re
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO

from packager.release import report

CHROMIUM = Path(os.environ.get("DCMPACK_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = REPO / "docs" / "report.png"


@pytest.fixture(scope="module")
def page(sample_build) -> str:
    return (sample_build["out"] / "report.html").read_text(encoding="utf-8")


def _sections(html: str) -> list[str]:
    return re.findall(r'<section class="run".*?</section>', html, flags=re.S)


# ---------------------------------------------------------------- placement and privacy


def test_report_next_to_bundle_never_inside(sample_build):
    out = sample_build["out"]
    assert (out / "report.html").is_file()
    with zipfile.ZipFile(sample_build["bundle"]) as archive:
        assert not any(n.endswith(".html") or "report" in n.lower() for n in archive.namelist())
    assert not list(out.glob(".dcmpack-staging-*"))
    assert f"{out / 'report.html'}" in sample_build["stderr"]  # the summary points to it


def test_report_is_marked_private(page):
    assert page.count("PRIVATE \u2014 contains source structure, do not share") >= 2  # banner and footer
    assert "<title>PRIVATE" in page
    assert '<meta name="robots" content="noindex, nofollow">' in page


def test_report_holds_no_header_values(page, sample_module):
    lowered = page.lower()
    for canary in sample_module.CANARIES:
        assert canary.lower() not in lowered, canary
    for subject in sample_module.SUBJECTS.values():
        for key in ("PatientID", "PatientBirthDate", "PathName", "PlainName"):
            assert subject[key].lower() not in lowered, key
    for _, _, study_date, study_time, _ in sample_module.STUDIES:
        assert study_date not in page and f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}" not in page
        assert study_time[:6] not in page
    assert "2.25." not in page  # no UIDs
    # source folders (part by part) and descriptions are shown through the scrubber: the parts
    # holding a name or a date are withheld; BIDS paths, reasons and warnings never are
    assert page.count("[withheld") == page.count("<code>[withheld") + page.count("/[withheld") > 0


def test_report_is_offline(page):
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page), "external reference"
    assert not re.search(r"https?://", page)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'; img-src data:" in page  # CSP: the browser may fetch nothing


# ---------------------------------------------------------------- content


def test_report_lists_every_run_with_three_planes(page, sample_build):
    runs = sorted(
        p.relative_to(sample_build["extracted"] / "dcmpack-sample").as_posix()
        for p in (sample_build["extracted"] / "dcmpack-sample").rglob("*.nii.gz")
    )
    sections = _sections(page)
    assert len(sections) == len(runs) == 15
    for run in runs:
        section = next(s for s in sections if f"<code>{run}</code>" in s)
        assert [p for p in ("axial", "coronal", "sagittal") if f'alt="{p} mid-slice"' in section] == [
            "axial",
            "coronal",
            "sagittal",
        ]
        assert re.search(r"<h3>series \d+ \(no\. \d+\) \u2192", section)  # source series -> BIDS path
        assert re.search(r"shape \d+(\u00d7\d+){2,3} \u00b7 voxel [\d.]+ \u00d7 [\d.]+ \u00d7 [\d.]+ mm", section)
        bold = run.endswith("_bold.nii.gz")
        assert ('alt="carpet plot"' in section) is bold
        assert ('<svg class="signal"' in section) is bold


def test_report_shows_geometry_from_the_image(page, sample_build):
    top = sample_build["extracted"] / "dcmpack-sample"
    bold = next(top.rglob("*_bold.nii.gz"))
    image = nib.load(bold)
    section = next(s for s in _sections(page) if f"<code>{bold.relative_to(top).as_posix()}</code>" in s)
    shape = "\u00d7".join(str(n) for n in image.shape)
    assert f"shape {shape}" in section
    assert f"TR {float(image.header.get_zooms()[3]):g} s" in section
    assert f"volumes {image.shape[3]}" in section


def test_report_lists_exclusions_with_reasons(page):
    table = page.split("<h2>Excluded series (15)</h2>", 1)[1].split("</section>", 1)[0]
    cells = r"<td><code>([^<]*)</code></td><td><code>([^<]*)</code></td>"  # source folder, description
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d*)</td>" + cells + r"<td[^>]*>([^<]+)</td>", table)
    assert len(rows) == 15
    assert all(folder.endswith(("_localizer", "_screenshot", "_report")) for _, _, folder, _, _ in rows)
    assert table.count("what to do") == 1 and table.count("keeps them</td>") == 9  # one line per exclusion
    assert sorted({reason for _, _, _, _, reason in rows}) == [
        "localizer",
        "non-image object (SR, presentation state, report, raw data, PDF)",
        "secondary capture",
    ]


def test_thumbnails_are_the_mid_slices(page, sample_build):
    """Decode the axial PNG with Pillow (an independent reader) and compare with nibabel's mid-slice."""
    from PIL import Image

    top = sample_build["extracted"] / "dcmpack-sample"
    t1w = next(top.rglob("*_T1w.nii.gz"))
    section = next(s for s in _sections(page) if f"<code>{t1w.relative_to(top).as_posix()}</code>" in s)
    uri = re.search(r'alt="axial mid-slice"[^>]*src="data:image/png;base64,([^"]+)"', section).group(1)
    import base64

    axial = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))
    canonical = nib.as_closest_canonical(nib.load(t1w))
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    expected = data[:, :, data.shape[2] // 2].T[::-1]
    assert axial.shape == expected.shape
    # same picture up to the intensity window: strongly correlated
    assert np.corrcoef(axial.ravel().astype(float), expected.ravel())[0, 1] > 0.98


def test_png_writer_round_trip():
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(report.png_gray(pixels))))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, pixels)


def test_memory_bounded_by_one_volume(tmp_path):
    """A 4D image is read one volume at a time: peak allocation well under the image's size."""
    shape = (64, 64, 40, 120)
    rng = np.random.default_rng(1)
    data = (1000 + 50 * rng.standard_normal(shape)).astype(np.float32)
    path = tmp_path / "sub-01_task-x_bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), path)
    whole = data.nbytes
    del data
    tracemalloc.start()
    try:
        pictures = report.pictures(path, with_carpet=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pictures.carpet is not None and len(pictures.mean_signal) == shape[3]
    assert peak < whole / 8, (peak, whole)


# ---------------------------------------------------------------- a real browser


def _offline_chromium(folder: Path) -> Path:
    """A wrapper that starts Debian's Chromium in a fresh network namespace (it resolves outside hosts
    even with --disable-background-networking; FIELD-NOTES.md)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set DCMPACK_CHROMIUM)")
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to run Chromium without network")
    wrapper = folder / "chromium-offline"
    wrapper.write_text(f'#!/bin/sh\nexec unshare -n -- "{CHROMIUM}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_report_renders_in_chromium(sample_build, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed (pip install -e '.[test]')")
    html = sample_build["out"] / "report.html"
    console_errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(_offline_chromium(tmp_path)),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1150})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
            )
            banner = page.inner_text("header h1")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert console_errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(images) == 15 * 3 + 3 + 3 * 4  # three planes per run + a carpet per BOLD run + 4 renders per T1w
    broken = [alt for alt, complete, width, height in images if not (complete and width > 0 and height > 0)]
    assert broken == []
    assert banner == "PRIVATE \u2014 contains source structure, do not share"
    assert shot.stat().st_size > 20_000
    if os.environ.get("DCMPACK_UPDATE_DOCS"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_docs_show_the_screenshot():
    assert SCREENSHOT.is_file() and SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](report.png)" in (REPO / "docs" / "report.md").read_text()
