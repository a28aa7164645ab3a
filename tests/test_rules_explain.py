"""``dbg rules explain`` shows rule documentation as written: brackets kept, no raw backticks.

The expected strings are taken from the rules' docstrings, so the tests follow their wording.
"""

from __future__ import annotations

import re

from dbgcli.report.model import EXIT_OK
from dbgcli.rules import REGISTRY

LITERAL = re.compile(r"``(.+?)``")


def _flat(text: str) -> str:
    """Whitespace runs as one space (Markdown reflows paragraphs)."""
    return " ".join(text.split())


def test_brackets_and_literals_of_a_real_docstring(cli, monkeypatch) -> None:
    """DBG602 (input-not-normalized) writes ``[1/max_std_ratio, max_std_ratio]`` inside a
    literal and ranges such as [0, 255] outside one."""
    monkeypatch.setenv("COLUMNS", "300")
    spec = REGISTRY.get("DBG602")
    bracketed = [text for text in LITERAL.findall(spec.description) if "[" in text]
    plain = re.findall(r"\[[^\]`]*\]", LITERAL.sub("", spec.description))
    assert bracketed and plain  # the docstring still has what this test is about
    result = cli("rules", "explain", "DBG602")
    assert result.code == EXIT_OK, result.stderr
    out = _flat(result.stdout)
    for text in bracketed + plain:
        assert _flat(text) in out
    assert f"or in [tool.dbg.rules.{spec.name}]." in out
    assert "``" not in out


def test_summary_and_parameter_help_lose_their_backticks(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    checked = 0
    for spec in REGISTRY.all():
        lines = [spec.summary, *(param.help for param in spec.params)]
        literal = [line for line in lines if LITERAL.search(line)]
        if not literal:
            continue
        checked += 1
        out = _flat(cli("rules", "explain", spec.id).stdout)
        for line in literal:
            assert _flat(LITERAL.sub(r"\1", line)) in out, spec.id
        assert "``" not in out, spec.id
    assert (
        checked
    )  # some rule still writes literals there (DBG101's ``abs_mean``, DBG701's ``depth``)


def test_explain_shows_what_a_rule_explains(cli, monkeypatch) -> None:
    """The declarations the diagnosis groups by, per kind of finding where they differ."""
    monkeypatch.setenv("COLUMNS", "300")
    out = _flat(cli("rules", "explain", "DBG503").stdout)
    assert "Explains (too-high): DBG101 vanishing-gradient, DBG102 exploding-gradient," in out
    assert "Explains (too-low): DBG301 loss-not-decreasing (not-decreasing)," in out
    spec = REGISTRY.get("DBG201")
    listed = ", ".join(f"{t} {REGISTRY.get(t).name}" for t in spec.explains["*"][:2])
    assert f"Explains: {listed}," in _flat(cli("rules", "explain", "DBG201").stdout)
    # A rule that explains nothing (a symptom only) says nothing about it.
    assert not any(REGISTRY.get("DBG301").explains.values())
    assert "Explains" not in cli("rules", "explain", "DBG301").stdout
    assert "Explains (shifted): DBG302 overfit, DBG304 overtraining," in _flat(
        cli("rules", "explain", "DBG604").stdout
    )
