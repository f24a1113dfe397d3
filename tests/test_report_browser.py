"""The report seen in a real browser: headless Chromium (Debian's ``chromium``) renders the page, the screenshot
is not blank and the page logs nothing to the console (no script error). Skips where Chromium is absent."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from benchmark.cli import main
from fabricate_results import write_results

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


def render(page: Path, screenshot: Path) -> list[str]:
    """Screenshot ``page`` with headless Chromium; returns the console messages the page logged."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--screenshot={screenshot}", "--window-size=1280,1600", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert screenshot.exists(), done.stderr[-2000:]
    return CONSOLE.findall(done.stderr)


def test_the_console_capture_sees_a_script_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>undefinedFunction()</script>")
    messages = render(page, tmp_path / "broken.png")
    assert any("undefinedFunction" in message for message in messages)


def test_report_renders_without_errors(tmp_path):
    results = write_results(tmp_path / "results")
    assert main(["report", "--results-dir", str(results)]) == 0
    screenshot = tmp_path / "report.png"
    assert render(results / "report.html", screenshot) == []
    with Image.open(screenshot) as image:
        assert image.size == (1280, 1600)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or range(2)) > 1  # not one flat colour
