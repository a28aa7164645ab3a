"""The bundled sample traces report what sample_traces/README.md says they report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbgcli.analysis import Options, analyze

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def expectations() -> list[tuple[str, set[str], set[str]]]:
    """(trace, rules by design, rules also reported) from the README table."""
    rows = []
    for line in (SAMPLES / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| `([\w.]+\.h5)` \|", line)
        if match:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.append(
                (
                    match.group(1),
                    set(re.findall(r"DBG\d{3}", cells[-2])),
                    set(re.findall(r"DBG\d{3}", cells[-1])),
                )
            )
    return rows


def test_every_sample_is_listed() -> None:
    listed = {name for name, _, _ in expectations()}
    assert listed == {path.name for path in SAMPLES.glob("*.h5")}


@pytest.mark.parametrize(
    ("trace", "by_design", "also"), expectations(), ids=lambda v: v if isinstance(v, str) else None
)
def test_sample_reports_what_the_readme_says(
    trace: str, by_design: set[str], also: set[str]
) -> None:
    report = analyze([SAMPLES / trace], Options())
    (result,) = report.traces
    assert result.error is None
    reported = {finding.rule_id for finding in result.findings}
    assert reported == by_design | also, f"{trace}: reported {sorted(reported)}"
    if not by_design:
        assert report.exit_code() == 0  # a healthy run passes the default gate
    else:
        assert by_design <= reported
