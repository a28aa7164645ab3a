"""The commands shown in the documentation are real: run each one."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dbg_commands(page: str) -> list[str]:
    """Every ``dbg ...`` command in the code blocks of a documentation page."""
    text = (ROOT / page).read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # join continued lines
        for line in block.splitlines():
            line = re.sub(r"^\s*(- |run: |\$ )", "", line.strip()).strip()
            line = line.removeprefix("run: ").removeprefix("- ")
            if line.startswith("dbg "):
                commands.append(line)
    return commands


@pytest.mark.parametrize("command", dbg_commands("docs/ci.md"))
def test_ci_page_commands_run(cli, command: str, tmp_path: Path, monkeypatch) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for sample in ("numpy_mlp_healthy.h5", "numpy_mlp_dead_relu.h5"):
        shutil.copy(ROOT / "sample_traces" / sample, traces / sample)
    monkeypatch.chdir(tmp_path)
    if "--baseline " in command:
        cli("analyze", "traces/", "--write-baseline", "dbg-baseline.json")
    result = cli(*shlex.split(command)[1:])
    assert result.code in (0, 1), result.stderr
    for fmt, output in re.findall(r"--format (\w+):(\S+)", command):
        text = (tmp_path / output).read_text(encoding="utf-8")
        assert {
            "sarif": '"version": "2.1.0"',
            "junit": "<testsuites",
            "markdown": "## dbg analyze",
            "json": '"version": 1',
        }[fmt] in text
    for output in re.findall(r"--write-baseline (\S+)", command):
        assert '"fingerprint"' in (tmp_path / output).read_text(encoding="utf-8")


def test_ci_page_has_both_pipelines() -> None:
    commands = dbg_commands("docs/ci.md")
    assert any("--format sarif" in c and "--format markdown" in c for c in commands)
    assert any("--format junit" in c for c in commands)


def test_readme_rules_table_is_current() -> None:
    """The README's rule table is exactly what ``dbg rules list --format markdown`` prints.

    Run in a fresh process: other tests register rules of their own in this one.
    """
    result = subprocess.run(
        [sys.executable, "-m", "dbgcli", "rules", "list", "--format", "markdown"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", ["README.md", "docs/capture.md"])
def test_documented_dbg_commands_parse(cli, page: str) -> None:
    """Every ``dbg`` command shown is accepted (run with --help so no trace is needed)."""
    for command in dbg_commands(page):
        words = shlex.split(command.split(" #")[0])
        subcommand = [w for w in words[1:] if not w.startswith("-")][:2]
        name = subcommand[0] if subcommand else ""
        args = ["rules", subcommand[1], "--help"] if name == "rules" else [name, "--help"]
        assert cli(*args).code == 0, command


def test_help_texts_are_shown_as_written(cli) -> None:
    """Square brackets in help texts are text, not Rich markup that silently vanishes."""
    assert "[tool.dbg]" in cli("analyze", "--help").stdout
    assert "[default: train" in cli("lr", "--help").stdout
