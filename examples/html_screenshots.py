"""Open HTML reports in headless Chromium: check that they draw, and take screenshots.

Run ``python examples/html_screenshots.py`` (or ``make screenshots``) to regenerate the
screenshots in docs/img/ of the reports of two bundled sample traces, a healthy run and a
dying-ReLU run. :func:`check_in_browser` is what the browser test (tests/test_html_browser.py)
uses as well.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``) and ``selenium`` (in the ``test`` extra). Nothing is downloaded: the
browser and its driver are the system's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = {
    "numpy_mlp_healthy.h5": "html-report-healthy.png",
    "numpy_mlp_dead_relu.h5": "html-report-dead-relu.png",
}
# The plots draw in well under a second; this only bounds a page that never finishes.
_LOAD_SECONDS = 60


@dataclass(frozen=True)
class BrowserCheck:
    """What the browser made of a report.

    Attributes:
        plots: Every ``.plot`` div by id, with the number of drawn traces in it (scatter
            lines, bars, heatmaps...); 0 means the plot did not draw.
        severe: The browser console's SEVERE entries (JavaScript errors).
    """

    plots: dict[str, int]
    severe: list[str]


def browser_paths() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` when both are installed, else None."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def check_in_browser(
    page: Path, screenshot: Path | None = None, width: int = 1280, height: int = 1600
) -> BrowserCheck:
    """Load ``page`` in headless Chromium, wait for it, count what every plot drew, collect
    console errors, and save a screenshot of the top of the page when asked."""
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    paths = browser_paths()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are not installed")
    chromium, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        driver.set_page_load_timeout(_LOAD_SECONDS)
        driver.get(page.resolve().as_uri())
        WebDriverWait(driver, _LOAD_SECONDS).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        plots = driver.execute_script(
            "const found = {};"
            "for (const div of document.querySelectorAll('div.plot')) {"
            "  const svg = div.querySelector('svg.main-svg');"
            "  found[div.id] = svg ? div.querySelectorAll("
            "    '.scatterlayer .trace, .barlayer .trace, .heatmaplayer .hm, canvas').length : 0;"
            "}"
            "return found;"
        )
        severe = [
            entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
        ]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    return BrowserCheck(dict(plots), severe)


def shrink(png: Path, colours: int = 64) -> None:
    """Rewrite a screenshot with a palette of ``colours``: a plot page needs few, and the PNG
    gets several times smaller."""
    from PIL import Image

    with Image.open(png) as image:
        reduced = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    reduced.save(png, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for trace, image in SCREENSHOTS.items():
            page = Path(work) / (Path(image).stem + ".html")
            # dbg exits 1 for a run with findings; only 2 is a failure here.
            result = subprocess.run(
                [sys.executable, "-m", "dbgcli", "analyze", f"sample_traces/{trace}",
                 "--format", f"html:{page}"],
                capture_output=True, text=True, check=False, cwd=ROOT,
            )  # fmt: skip
            if result.returncode == 2:
                sys.stderr.write(result.stderr)
                return 2
            target = args.out / image
            check = check_in_browser(page, target, width=1100, height=2600)
            if check.severe or not all(check.plots.values()):
                print(f"{trace}: errors {check.severe}, plots {check.plots}", file=sys.stderr)
                return 1
            shrink(target)
            print(f"{target} ({target.stat().st_size // 1024} KiB, {len(check.plots)} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
