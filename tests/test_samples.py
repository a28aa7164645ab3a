"""The bundled sample traces report what sample_traces/README.md says they report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbgcli.analysis import Options, analyze

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def expectations() -> list[tuple[str, str | None, set[str]]]:
    """(trace, rule of the cause named first or None, rules also reported) from the README
    table."""
    rows = []
    for line in (SAMPLES / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| `([\w.]+\.h5)` \|", line)
        if match:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            causes = re.findall(r"DBG\d{3}", cells[-2])
            assert len(causes) <= 1, f"{match.group(1)}: one cause per sample"
            rows.append(
                (
                    match.group(1),
                    causes[0] if causes else None,
                    set(re.findall(r"DBG\d{3}", cells[-1])),
                )
            )
    return rows


def test_every_sample_is_listed() -> None:
    listed = {name for name, _, _ in expectations()}
    assert listed == {path.name for path in SAMPLES.glob("*.h5")}


@pytest.mark.parametrize(
    ("trace", "cause", "also"), expectations(), ids=lambda v: v if isinstance(v, str) else None
)
def test_sample_reports_what_the_readme_says(trace: str, cause: str | None, also: set[str]) -> None:
    report = analyze([SAMPLES / trace], Options())
    (result,) = report.traces
    assert result.error is None
    reported = {finding.rule_id for finding in result.findings}
    if cause is None:
        assert reported == also == set(), f"{trace}: reported {sorted(reported)}"
        assert result.healthy and report.exit_code() == 0
        return
    assert reported == {cause} | also, f"{trace}: reported {sorted(reported)}"
    first = result.findings[result.diagnoses[0].cause]
    assert first.rule_id == cause, f"{trace}: leads with {first.rule_id} {first.key}"
