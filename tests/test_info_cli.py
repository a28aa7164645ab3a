"""``dbg info`` at 80 columns: key hyperparameters, one line for a trace being written, tensor
names shortened from the middle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dbgcli import TraceWriter
from dbgcli.report.model import EXIT_OK

ROOT = Path(__file__).resolve().parents[1]
XGBOOST = ROOT / "sample_traces" / "xgboost_deep_trees.h5"
LONG_NAMES = (
    "bert.encoder.layer.0.attention.self.key.bias",
    "bert.encoder.layer.11.attention.output.dense.weight",
    "grad/bert.encoder.layer.11.attention.output.dense.weight",
    "grad/bert.encoder.layer.0.attention.self.key.bias",
)


def _panel_row(stdout: str, key: str) -> list[str]:
    """The lines of one field of the header panel: its key's line and the continuations."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"│ {key} "))
    rows = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("│" + " " * 3):
            break
        rows.append(line)
    return rows


def _middle_cut(word: str, name: str) -> bool:
    """Whether ``word`` is ``name`` with its middle replaced by ``…`` (both ends kept)."""
    head, cut, tail = word.partition("…")
    return bool(cut and head and tail) and name.startswith(head) and name.endswith(tail)


def _write(writer: TraceWriter, steps: range) -> None:
    for step in steps:
        writer.add_scalar("loss", 1.0 / (step + 1), step)
        for name in LONG_NAMES:
            collection = "gradients" if name.startswith("grad/") else "weights"
            writer.add_tensor(name, np.full(4, float(step)), step, collection=collection)


@pytest.fixture
def trainer_trace(tmp_path: Path) -> Path:
    """What the Hugging Face callback records as hyperparameters: every TrainingArguments."""
    transformers = pytest.importorskip("transformers")
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path / "out")).to_dict()
    path = tmp_path / "hf.h5"
    with TraceWriter(path, hyperparameters=arguments) as writer:
        _write(writer, range(3))
    return path


def test_training_arguments_take_two_lines(cli, monkeypatch, trainer_trace: Path) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("info", trainer_trace)
    assert result.code == EXIT_OK, result.stderr
    row = _panel_row(result.stdout, "hyperparameters")
    text = " ".join(" ".join(line.strip("│ ").split()) for line in row)
    assert len(row) <= 2, row
    assert text.startswith("hyperparameters learning_rate=5e-05, per_device_train_batch_size=8")
    assert text.endswith("more (--verbose)")
    everything = cli("info", trainer_trace, "--verbose")
    assert "adam_beta2=0.999" in everything.stdout
    assert len(_panel_row(everything.stdout, "hyperparameters")) > 10


def test_key_hyperparameters_come_first(make_trace, cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    hyperparameters = {
        "widths": [32],
        "seed": 7,
        "max_steps": -1,  # unset, as TrainingArguments writes it: the epochs are shown instead
        "num_train_epochs": 3,
        "momentum": 0.9,
        "lr": 0.05,
    }
    trace = make_trace(scalars={"loss": [1.0, 0.5]}, hyperparameters=hyperparameters)
    (row,) = _panel_row(cli("info", trace).stdout, "hyperparameters")
    assert "lr=0.05, num_train_epochs=3, seed=7, widths=[32], momentum=0.9 +1 more" in row


def test_a_whole_configuration_is_summarised(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("info", XGBOOST).stdout
    (config,) = _panel_row(out, "xgboost_config")
    assert "characters (--verbose)" in config
    assert "eta=0.3" in "".join(_panel_row(out, "hyperparameters"))
    assert "tree_train_param" in cli("info", XGBOOST, "-v").stdout


def test_a_trace_being_written_says_so_once(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    writer = TraceWriter(path, flush_secs=3600)
    try:
        _write(writer, range(5))
        writer.flush()
        _write(writer, range(5, 7))  # buffered, not committed
        # Another process, as when dbg info looks at a running job.
        env = {**os.environ, "COLUMNS": "80"}
        run = [sys.executable, "-m", "dbgcli", "info", str(path)]
        seen = subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout
        verbose = subprocess.run(
            [*run, "--verbose"], capture_output=True, text=True, env=env, check=True
        ).stdout
    finally:
        writer.close()
    flat = " ".join(seen.replace("│", " ").split())
    assert "cut to" not in flat
    assert "incomplete: the writer did not close the trace" in flat
    assert "5 series read up to the writer's last commit (rows after it are left out)" in flat
    assert " ".join(verbose.replace("│", " ").split()).count("committed records") == 5


def test_long_names_are_shortened_from_the_middle_at_80_columns(
    make_trace, cli, monkeypatch
) -> None:
    """Columns whose cells all agree go to the group's title, leaving the names the room; a
    name longer than that room is cut from the middle, keeping both ends."""
    monkeypatch.setenv("COLUMNS", "80")
    longest = "grad/model.backbone.stages.3.blocks.11.attention.relative_position_bias_table.weight"
    names = (*LONG_NAMES, longest)
    trace = make_trace(
        scalars={"loss": [1.0, 0.5, 0.25]},
        tensors={
            name: {
                "values": np.ones((3, 4 + index)),
                "collection": "gradients" if name.startswith("grad/") else "weights",
            }
            for index, name in enumerate(names)
        },
    )
    result = cli("info", trace)
    assert result.code == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "tensors: gradients · dtype <f8 · modes train · records 3" in result.stdout
    first_words = [line.split()[0] for line in lines if line.strip()]
    for name in LONG_NAMES:
        assert name in first_words
    (shown,) = [word for word in first_words if _middle_cut(word, longest)]
    head, _, tail = shown.partition("…")
    assert len(head) >= 10 and len(tail) >= 4, shown  # both ends say something
    monkeypatch.setenv("COLUMNS", "200")
    wide = cli("info", trace, "--verbose").stdout
    assert all(name in wide for name in names)
