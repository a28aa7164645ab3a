"""The HTML report in a real browser: headless Chromium (Debian's package) driven by selenium.

The report of every bundled sample trace is opened as one page; the test fails on any
JavaScript console error and on any plot that did not draw, and keeps a screenshot of the page
(under $DBG_ARTEFACTS when set, else pytest's temporary directory; the path is printed).

Without Chromium, its driver or selenium the test is skipped with the reason on a developer's
machine, and fails where DBG_REQUIRE_BROWSER=1 (set by .ci/run, which installs them).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = (
    "numpy_mlp_dead_relu.h5",
    "torch_tanh_saturation.h5",
    "torch_class_imbalance.h5",
    "torch_overfit.h5",
    "torch_unnormalized_input.h5",
    "xgboost_deep_trees.h5",
)


def _helper():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "html_screenshots", ROOT / "examples" / "html_screenshots.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _unavailable(helper) -> str | None:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    if helper.browser_paths() is None:
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    """The helper of examples/html_screenshots.py, once a browser is known to be there."""
    helper = _helper()
    missing = _unavailable(helper)
    if missing is not None:
        if os.environ.get("DBG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DBG_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return helper


def test_report_of_sample_traces_draws_in_chromium(browser, cli, tmp_path: Path) -> None:
    helper = browser
    page = tmp_path / "samples.html"
    # Between them, every view: activations, saturation, data, eval losses, inputs, trees.
    traces = [ROOT / "sample_traces" / name for name in SAMPLES]
    result = cli("analyze", *traces, "--format", f"html:{page}")
    assert result.code in (0, 1), result.stderr
    artefacts = Path(os.environ.get("DBG_ARTEFACTS") or tmp_path)
    screenshot = artefacts / "html-report-samples.png"
    check = helper.check_in_browser(page, screenshot)
    print(f"screenshot of the sample report: {screenshot}")
    assert check.severe == []
    assert len(check.plots) >= 50
    assert {plot for plot, drawn in check.plots.items() if not drawn} == set()
    assert screenshot.stat().st_size > 10_000


def test_a_broken_plot_is_caught(browser, cli, tmp_path: Path) -> None:
    """The checks can fail: a drawing call with a JavaScript error leaves its plot empty."""
    page = tmp_path / "broken.html"
    trace = ROOT / "sample_traces" / "xgboost_deep_trees.h5"
    assert cli("analyze", trace, "--format", f"html:{page}").code == 0  # warnings only
    text = page.read_text(encoding="utf-8")
    target = re.search(r"dbgPlot\('(t0-tree-depth-plot)', ", text)
    assert target is not None
    page.write_text(
        text.replace(target.group(0), "dbgPlot('t0-tree-depth-plot', undefinedFigure && "),
        encoding="utf-8",
    )
    check = browser.check_in_browser(page)
    assert any("undefinedFigure" in message for message in check.severe)
    assert check.plots["t0-tree-depth-plot"] == 0
    assert check.plots["t0-curves-plot"] > 0
