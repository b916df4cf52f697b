"""The HTML report of `peftlab compare` renders in a real headless browser (Debian's chromium).

The screenshot must show the table (dark text on white) and the figures
(coloured plot lines): a report whose images failed to load shows neither the
plot colours nor their area. Skips, with the reason, where no chromium is installed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import peftlab

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def screenshot(html, png, tmp_path):
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2600",
            f"--screenshot={png}", f"file://{html}"]
    subprocess.run(args, capture_output=True, timeout=120, check=False)
    assert png.is_file(), "chromium wrote no screenshot"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's chromium)")
def test_html_report_renders_table_and_figures(runs, tmp_path):
    from PIL import Image

    html = tmp_path / "report.html"
    result = peftlab("compare", str(runs), "--html", str(html))
    assert result.returncode == 0, result.stderr
    png = tmp_path / "shot.png"
    screenshot(html, png, tmp_path)
    image = Image.open(png).convert("RGB")
    width, height = image.size
    pixels = list(image.getdata())
    dark = sum(1 for r, g, b in pixels if r + g + b < 200)
    # matplotlib's default cycle (blue, orange, green, red): strongly coloured, unlike text or borders
    coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 80)
    assert dark > 0.002 * width * height, "no text rendered (the table is missing)"
    assert coloured > 2000, f"only {coloured} coloured pixels: the embedded figures did not render"
    # the figures come after the table: coloured pixels must appear below the top part of the page
    rows_with_colour = {i // width for i, (r, g, b) in enumerate(pixels) if max(r, g, b) - min(r, g, b) > 80}
    assert max(rows_with_colour) > height * 0.3
