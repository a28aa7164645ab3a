"""Issue 14, causes 7-11: a bad record, a full disk or a second writer never costs the run.

* 7: every record is checked when it is added; a bad one is dropped and counted, and nothing
  else is affected (other records before and after, other tags, later commits).
* 8: a bad first record of a tag leaves nothing in the file.
* 9: problems are logged (logger ``dbgcli``), never raised or warned into the training loop.
* 10: a second writer on the same path is refused before anything touches the file.
* 11: a full disk leaves a trace that opens, holding everything up to the last commit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from dbgcli import TraceWriter, open_trace
from dbgcli.errors import TraceWriterError
from dbgcli.trace import schema

GOOD_BEFORE = range(0, 5)
GOOD_AFTER = range(5, 10)


def _good(writer: TraceWriter, step: int) -> None:
    writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.add_tensor("w", np.full((4, 3), step, dtype=np.float32), step, collection="weights")
    writer.add_tensor(
        "act", np.full((2, 5), step - 4.5), step, collection="activations", kind="relu"
    )


class _Raises:
    """An object every conversion of which fails."""

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("no array for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message either")


class _RaisesUnprintable:
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise _Unprintable()


class _BadTensor:
    def detach(self) -> Any:
        raise RuntimeError("detach failed")

    def cpu(self) -> Any:
        return self


def _circular_dict() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


def _circular_list() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


Case = tuple[str, str, Callable[[TraceWriter, str], None]]
# Each case: (id, reason it is dropped for, how it is added). The tag passed in is a new tag
# (the bad record would be the tag's first) or one that already has records.
BAD_TAGS = [
    "",
    None,
    5,
    5.0,
    b"loss",
    bytearray(b"loss"),
    "a\x00b",
    "\x00",
    "\ud800",
    "x\udcff",
    ["loss"],
    ("loss",),
    object(),
    _Raises(),
]
BAD_STEPS = [
    -1,
    -(2**63),
    2**63,
    2**64,
    10**30,
    0.5,
    -0.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    "3",
    None,
    True,
    np.bool_(True),
    [1],
    np.array([1, 2]),
    1 + 2j,
    object(),
    np.float64(1.5),
    Decimal("1"),
    np.uint64(2**63),
]
BAD_MODES = ["validation", "", "TRAIN", None, 0, b"train", "train\x00", ["train"]]
BAD_SCALARS = [
    "not a number",
    "1.5",
    None,
    [1.0, 2.0],
    np.array([1.0, 2.0]),
    np.zeros((2, 2)),
    1 + 2j,
    np.complex128(1),
    np.array(["a"]),
    object(),
    {"a": 1},
    10**400,
    np.datetime64("2020-01-01"),
    np.array([], dtype=float),
    Decimal("1.5"),
    _Raises(),
    b"1",
]
BAD_TENSORS = [
    np.array(["a", "b"]),
    [object()],
    np.zeros(2, complex),
    np.zeros(2, "M8[s]"),
    np.zeros(2, "m8[s]"),
    np.zeros(2, dtype=[("a", "f4")]),
    np.zeros(2, "V4"),
    np.zeros(2, np.longdouble),
    np.zeros((1,) * 32),
    np.zeros((1,) * 33),
    np.zeros((1,) * 64),
    [[1.0], [1.0, 2.0]],
    "string",
    None,
    {"a": 1},
    _Raises(),
    _BadTensor(),
    b"abc",
    np.array([None, 1.0]),
    _RaisesUnprintable(),
]
BAD_UNIT_AXES = ["x", 1.5, True, [1], 2, -3, 2**70]
BAD_LABELS = [5, "", "a\x00", b"weights", "\ud800", ["w"], 3.5]
BAD_FLAGS = ["yes", 2, np.array([True, False]), 0.0]
BAD_STATS: list[tuple[str, dict[str, Any]]] = [
    ("stats", {"stats": {"not_a_stat": 1.0}}),
    ("value", {"stats": {"mean": "x"}}),
    ("value", {"stats": {"mean": 1 + 1j}}),
    ("stats", {"stats": [("mean", 1.0)]}),
    ("shape", {"shape": "abc"}),
    ("shape", {"shape": (-1,)}),
    ("shape", {"shape": (1,) * 32}),
    ("shape", {"shape": (1.5,)}),
    ("dtype", {"dtype": "complex64"}),
    ("dtype", {"dtype": "U3"}),
    ("dtype", {"dtype": "not a dtype"}),
    ("dtype", {"units": np.array(["a"])}),
    ("dtype", {"value": np.array(["a"])}),
    ("rank", {"value": np.zeros((1,) * 32)}),
]
BAD_METADATA = [
    _circular_dict(),
    _circular_list(),
    _nested(100),
    _nested(100_000),
    {"deep": _nested(70)},
]


def _scalar(**kwargs: Any) -> Callable[[TraceWriter, str], None]:
    def add(writer: TraceWriter, target: str) -> None:
        arguments = {"tag": target, "value": 0.5, "step": 5, **kwargs}
        writer.add_scalar(
            arguments.pop("tag"), arguments.pop("value"), arguments.pop("step"), **arguments
        )

    return add


def _tensor(**kwargs: Any) -> Callable[[TraceWriter, str], None]:
    def add(writer: TraceWriter, target: str) -> None:
        arguments = {"tag": target, "value": np.ones((2, 3)), "step": 5, **kwargs}
        writer.add_tensor(
            arguments.pop("tag"), arguments.pop("value"), arguments.pop("step"), **arguments
        )

    return add


def _tensor_stats(**kwargs: Any) -> Callable[[TraceWriter, str], None]:
    def add(writer: TraceWriter, target: str) -> None:
        arguments = {"stats": {"mean": 1.0}, "shape": (2, 3), "dtype": "f4", **kwargs}
        tag, step = arguments.pop("tag", target), arguments.pop("step", 5)
        writer.add_tensor_stats(tag, arguments.pop("stats"), step, **arguments)

    return add


def _cases() -> list[Case]:
    cases: list[Case] = []
    for i, tag in enumerate(BAD_TAGS):
        cases += [
            (f"scalar-tag-{i}", "tag", _scalar(tag=tag)),
            (f"tensor-tag-{i}", "tag", _tensor(tag=tag)),
            (f"tensor-stats-tag-{i}", "tag", _tensor_stats(tag=tag)),
        ]
    for i, step in enumerate(BAD_STEPS):
        cases.append((f"scalar-step-{i}", "step", _scalar(step=step)))
    for i, step in enumerate(BAD_STEPS[:6]):
        cases.append((f"tensor-step-{i}", "step", _tensor(step=step)))
        cases.append((f"tensor-stats-step-{i}", "step", _tensor_stats(step=step)))
    for i, mode in enumerate(BAD_MODES):
        cases.append((f"scalar-mode-{i}", "mode", _scalar(mode=mode)))
        cases.append((f"tensor-mode-{i}", "mode", _tensor(mode=mode)))
    for i, value in enumerate(BAD_SCALARS):
        cases.append((f"scalar-value-{i}", "value", _scalar(value=value)))
    for i, value in enumerate(BAD_TENSORS):
        rank = isinstance(value, np.ndarray) and value.ndim > 31
        # Ragged lists and objects that fail to convert are not arrays at all.
        reason = "rank" if rank else "value" if i in (11, 15, 16, 19) else "dtype"
        cases.append((f"tensor-value-{i}", reason, _tensor(value=value)))
    for i, axis in enumerate(BAD_UNIT_AXES):
        cases.append(
            (
                f"unit-axis-{i}",
                "unit_axis",
                _tensor(unit_axis=axis, collection="activations", kind="relu"),
            )
        )
    for i, label in enumerate(BAD_LABELS):
        cases.append((f"collection-{i}", "collection", _tensor(collection=label)))
        cases.append((f"kind-{i}", "kind", _tensor(kind=label)))
        cases.append((f"stats-collection-{i}", "collection", _tensor_stats(collection=label)))
    for i, flag in enumerate(BAD_FLAGS):
        cases.append((f"track-updates-{i}", "track_updates", _tensor(track_updates=flag)))
        cases.append((f"raw-{i}", "raw", _tensor(raw=flag)))
    for i, (reason, arguments) in enumerate(BAD_STATS):
        cases.append((f"tensor-stats-{i}", reason, _tensor_stats(**arguments)))
    return cases


CASES = _cases()


def test_the_campaign_is_covered() -> None:
    assert len(CASES) >= 127


def _check_good_records(path: Path) -> None:
    with open_trace(path) as trace:
        assert trace.complete, trace.incomplete_reasons
        loss = trace.scalar("loss")
        assert loss.steps.tolist() == list(range(10))
        np.testing.assert_array_equal(loss.values, 1.0 / (loss.steps + 1))
        mean = trace.stat("w", "mean")
        assert mean.steps.tolist() == list(range(10))
        np.testing.assert_array_equal(mean.values, mean.steps.astype(float))
        assert [int(s) for chunk in trace.iter_raw("w") for s in chunk.steps] == list(range(10))
        assert trace.index("act")[0].tolist() == list(range(10))
        units = trace.units("act")
        assert units is not None and units.values.shape == (10, 5)


@pytest.mark.parametrize("target", ["new tag", "existing tag"])
@pytest.mark.parametrize(("name", "reason", "add"), CASES, ids=[case[0] for case in CASES])
def test_a_bad_record_is_dropped_and_nothing_else_is_affected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, reason: str, add: Any, target: str
) -> None:
    path = tmp_path / "t.h5"
    scalar = name.startswith("scalar")
    tag = "bad" if target == "new tag" else "loss" if scalar else "w"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is warned (or raised) into the loop
        with TraceWriter(path, flush_secs=3600) as writer:
            for step in GOOD_BEFORE:
                _good(writer, step)
            writer.flush()  # a commit before, and one after the bad record
            add(writer, tag)
            for step in GOOD_AFTER:
                _good(writer, step)
    assert writer.dropped_by_reason == {reason: 1}, caplog.text
    assert writer.dropped == 1
    assert [r.name for r in caplog.records] == ["dbgcli"]
    _check_good_records(path)
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs[schema.ATTR_DROPPED]) == {reason: 1}
        # Cause 8: the bad first record of a tag leaves nothing behind.
        assert set(f[schema.SCALARS]) == {"loss"}
        assert set(f[schema.TENSORS]) == {"w", "act"}


@pytest.mark.parametrize("index", range(len(BAD_METADATA)))
def test_metadata_that_cannot_be_stored_is_dropped_key_by_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, index: int
) -> None:
    path = tmp_path / "t.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with TraceWriter(
            path, flush_secs=3600, metadata={"lr": 0.1, "bad": BAD_METADATA[index]}
        ) as writer:
            for step in GOOD_BEFORE:
                _good(writer, step)
            writer.set_metadata(worse=BAD_METADATA[index], seed=7)
            for step in GOOD_AFTER:
                _good(writer, step)
    assert writer.dropped_by_reason == {"metadata": 2}
    # ``writer`` (the writing process, for dbg watch) is the writer's own key.
    metadata = writer.metadata
    assert metadata.pop("writer")["pid"] == os.getpid()
    assert metadata == {"lr": 0.1, "seed": 7}
    _check_good_records(path)
    with open_trace(path) as trace:
        assert trace.metadata.pop("writer")["pid"] == os.getpid()
        assert trace.metadata == {"lr": 0.1, "seed": 7}


def test_values_finite_or_not_are_data(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    with TraceWriter(path) as writer:
        for step, value in enumerate([np.nan, np.inf, -np.inf, 1e308, -0.0, np.float16(np.nan)]):
            writer.add_scalar("loss", value, step)
        writer.add_tensor("x", np.array([np.nan, np.inf, 1.0]), 0)
        writer.add_tensor("big", np.array([2**63 - 1, 0], dtype=np.int64), 0)
        writer.add_tensor("empty", np.zeros((0, 3)), 0)
        writer.add_tensor("bool", np.array([True, False]), 0)
        writer.add_tensor("deep", np.zeros((1,) * 31), 0)
        writer.add_scalar("loss", 1.0, 2**63 - 1)
    assert writer.dropped == 0
    with open_trace(path) as trace:
        assert len(trace.scalar("loss")) == 7
        assert int(trace.scalar("loss").steps[-1]) == 2**63 - 1
        assert trace.stat("x", "nan_count").values.tolist() == [1.0]
        assert trace.tag("deep").shape == (1,) * 31


def test_statistics_rows_sent_again_are_checked_alike(tmp_path: Path) -> None:
    """The checks of a call's shapes, dtypes and collections are kept for the next call with
    the same ones (a hook sends the same at every step): a bad record is dropped every time."""
    rows = np.zeros((2, len(schema.STAT_COLUMNS)))
    with TraceWriter(tmp_path / "again.h5") as writer:
        for step in range(3):
            writer.add_tensor_stats_rows(
                ["good", "bad"],
                rows,
                step,
                shapes=[(2,), (2, -1)],
                dtypes=["f4", "f4"],
                collections=["weights", "weights"],
            )
        # A refused shape equal to a good one (2.0 == 2) does not refuse the good one later.
        for shape in [(2.0,), (2,)]:
            writer.add_tensor_stats_rows(
                ["late"], rows[:1], 3, shapes=[shape], dtypes=["f4"], collections=["weights"]
            )
    assert writer.dropped_by_reason == {"shape": 4}
    with open_trace(tmp_path / "again.h5") as trace:
        assert trace.index("good")[0].tolist() == [0, 1, 2]
        assert trace.index("late")[0].tolist() == [3]
        assert "bad" not in trace


def test_statistics_rows_added_at_once_are_checked_one_by_one(tmp_path: Path) -> None:
    """add_tensor_stats_rows records what add_tensor_stats would, record for record: a bad
    record is dropped alone, and rows of the wrong shape drop the call's records."""
    path, alone = tmp_path / "rows.h5", tmp_path / "alone.h5"
    rows = np.arange(4 * len(schema.STAT_COLUMNS), dtype=np.float64).reshape(4, -1)
    tags = ["a", "", "b", "c"]
    shapes: list[Any] = [(2, 3), (2, 3), "bad", (4,)]
    units = [np.array([0.5, 1.0, 0.0]), None, None, None]
    with TraceWriter(path) as writer:
        writer.add_tensor_stats_rows(
            tags,
            rows,
            7,
            shapes=shapes,
            dtypes=["f4", "f4", "f4", "f2"],
            collections=["activations", None, None, "gradients"],
            kind="relu",
            units=units,
            values=[np.ones((2, 3), np.float32), None, None, None],
        )
        writer.add_tensor_stats_rows(
            ["d"], rows[:2], 7, shapes=[(1,)], dtypes=["f4"], collections=[None]
        )
        no_tags: Any = None  # not even a sequence: one drop, no exception
        writer.add_tensor_stats_rows(no_tags, rows, 7, shapes=[], dtypes=[], collections=[])
        writer.add_tensor_stats_rows(["e"], rows[:1], 7, shapes=[], dtypes=[], collections=[])
        # The step is the call's: a bad one drops each of its records.
        writer.add_tensor_stats_rows(
            ["f", "g"], rows[:2], -1, shapes=[(1,), (1,)], dtypes=["f4"] * 2, collections=[None] * 2
        )
    assert writer.dropped_by_reason == {"tag": 1, "shape": 1, "stats": 1, "error": 2, "step": 2}
    with TraceWriter(alone) as writer:
        for index in (0, 3):
            writer.add_tensor_stats(
                tags[index],
                rows[index],
                7,
                shape=shapes[index],
                dtype=["f4", "f4", "f4", "f2"][index],
                collection=["activations", None, None, "gradients"][index],
                kind="relu",
                units=units[index],
                value=np.ones((2, 3), np.float32) if index == 0 else None,
            )
    with open_trace(path) as bulk, open_trace(alone) as single:
        assert [i.tag for i in bulk.tags(scalar=False)] == ["a", "c"]
        for tag in ("a", "c"):
            np.testing.assert_array_equal(bulk.stats(tag), single.stats(tag))
            assert bulk.tag(tag) == single.tag(tag)
        np.testing.assert_array_equal(bulk.units("a").values, [[0.5, 1.0, 0.0]])
        np.testing.assert_array_equal(bulk.raw("a", 7), np.ones((2, 3), np.float32))


@pytest.mark.parametrize("commit_between", [False, True])
def test_unit_measures_that_start_late_stay_with_their_records(
    tmp_path: Path, commit_between: bool
) -> None:
    """A measured series whose first records come without unit measures: those records get
    NaN measures, whether they were committed before the first measures arrived or not, and
    no record is lost (before, every commit failed or the measures shifted onto the wrong
    records)."""
    path = tmp_path / "late.h5"
    row = np.zeros((1, len(schema.STAT_COLUMNS)))
    kwargs: dict[str, Any] = {
        "shapes": [(4, 3)],
        "dtypes": ["f4"],
        "collections": ["activations"],
        "kind": "relu",
    }
    measured = np.array([0.25, 0.5, 1.0], np.float32)
    with TraceWriter(path) as writer:
        writer.add_tensor_stats_rows(["act"], row, 0, units=None, **kwargs)
        if commit_between:
            writer.flush()
        writer.add_tensor_stats_rows(["act"], row, 1, units=[measured], **kwargs)
        writer.add_tensor_stats_rows(["act"], row, 2, units=None, **kwargs)
    assert writer.dropped == 0
    with open_trace(path) as trace:
        units = trace.units("act")
        assert units is not None
        np.testing.assert_array_equal(units.steps, [0, 1, 2])
        np.testing.assert_array_equal(units.values, [[np.nan] * 3, measured, [np.nan] * 3])


def test_statistics_rows_of_known_tags_are_stored_in_order(tmp_path: Path) -> None:
    """Rows of tags already known (a hook's every recorded step after the first) are stored as
    given, in the order of the records, also around full tensors of the same tag added in
    between (whose statistics the writer computes)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "rows.h5"
    given = {step: rng.normal(size=(2, len(schema.STAT_COLUMNS))) for step in range(4)}
    with TraceWriter(path) as writer:
        for step, rows in given.items():
            if step == 2:
                writer.add_tensor("w", np.full((3, 2), 5.0, np.float32), step)
            writer.add_tensor_stats_rows(
                ["w", "b"],
                rows,
                step,
                shapes=[(3, 2), (3,)],
                dtypes=["f4", "f4"],
                collections=["weights", "biases"],
            )
    assert writer.dropped == 0
    with open_trace(path) as trace:
        assert trace.index("w")[0].tolist() == [0, 1, 2, 2, 3]
        stats = trace.stats("w")
        np.testing.assert_array_equal(stats[[0, 1, 3, 4]], [given[s][0] for s in range(4)])
        assert stats[2, schema.STAT_COLUMNS.index("mean")] == 5.0
        np.testing.assert_array_equal(trace.stats("b"), [given[s][1] for s in range(4)])


# -- cause 7: a failed commit loses nothing, and never leaves pre-allocated rows as data ----
def test_a_series_that_fails_to_write_does_not_hold_back_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dbgcli.trace import writer as writer_module

    path = tmp_path / "t.h5"
    original = writer_module._TensorSeries.write
    failures = iter([True, True])

    def write(self: Any) -> None:
        if self is writer.__dict__["_tensors"].get("w") and next(failures, False):
            raise RuntimeError("injected failure")
        original(self)

    monkeypatch.setattr(writer_module._TensorSeries, "write", write)
    writer = TraceWriter(path, flush_secs=3600)
    for step in GOOD_BEFORE:
        _good(writer, step)
    writer.flush()  # "w" fails, the others commit
    with open_trace(path) as trace:
        assert trace.scalar("loss").steps.tolist() == list(GOOD_BEFORE)
        assert trace.index("act")[0].tolist() == list(GOOD_BEFORE)
        assert "w" not in trace
    assert "injected failure" in caplog.text
    for step in GOOD_AFTER:
        _good(writer, step)
    writer.flush()  # fails once more: still kept
    writer.close()  # written now, with every record before
    assert writer.dropped == 0
    _check_good_records(path)


def test_a_first_record_that_fails_after_its_group_was_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbgcli.trace import writer as writer_module

    real_role = writer_module.roles.tensor_role

    def tensor_role(tag: str, *args: Any) -> Any:
        if tag == "odd":
            raise RuntimeError("an unforeseen failure")
        return real_role(tag, *args)

    monkeypatch.setattr(writer_module.roles, "tensor_role", tensor_role)
    path = tmp_path / "t.h5"
    with TraceWriter(path) as writer:
        for step in GOOD_BEFORE:
            _good(writer, step)
        writer.add_tensor("odd", np.ones(3), 5)
        for step in GOOD_AFTER:
            _good(writer, step)
    assert writer.dropped_by_reason == {"error": 1}
    _check_good_records(path)
    with h5py.File(path, "r") as f:
        assert "odd" not in f[schema.TENSORS]


KILL_BEFORE_COUNTS = """
import os, signal, sys
from dbgcli import TraceWriter
writer = TraceWriter(sys.argv[1], flush_secs=3600)
flushes = []
real_flush = writer._file.flush
def flush():
    flushes.append(1)
    if len(flushes) == 2:  # data is in the file, the counts that vouch for it are not
        os.kill(os.getpid(), signal.SIGKILL)
    real_flush()
writer._file.flush = flush
for step in range(20):
    writer.add_scalar("loss", float(step), step)
writer.flush()
"""


def test_rows_written_before_their_commit_are_never_served(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    subprocess.run([sys.executable, "-c", KILL_BEFORE_COUNTS, str(path)], check=False)
    with h5py.File(path, "r") as f:
        assert f["scalars/loss/value"].shape[0] >= 20  # rows, pre-allocated ones too
    with open_trace(path) as trace:
        assert not trace.complete
        assert "loss" not in trace or len(trace.scalar("loss")) == 0


# -- cause 9: nothing raises or warns into the loop, even under -W error ---------------------
UNDER_W_ERROR = """
import logging, sys
import numpy as np
from dbgcli import TraceWriter

writer = TraceWriter(sys.argv[1], flush_secs=0.0)
for step in range(30):
    writer.add_scalar("loss", float(step), step)
    writer.add_scalar("loss", 1 + 2j, step)
    writer.add_scalar("bad\\x00tag", 1.0, step)
    writer.add_tensor("w", np.ones((3, 3)), step, unit_axis="x")
    writer.add_tensor("w", np.zeros((1,) * 32), step)
    writer.add_tensor("c", np.zeros(3, complex), step)
    cycle = []
    cycle.append(cycle)
    writer.set_metadata(me=cycle)
writer.close()
writer.add_scalar("loss", 1.0, 99)
print(dict(writer.dropped_by_reason))
"""


def test_under_w_error_nothing_reaches_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", UNDER_W_ERROR, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "Warning" not in run.stderr
    # Python's last-resort handler shows the log messages once per kind, on stderr.
    assert "dbg: dropped a record of 'loss'" in run.stderr
    assert eval(run.stdout) == {
        "value": 30,
        "tag": 30,
        "unit_axis": 30,
        "rank": 30,
        "dtype": 30,
        "metadata": 30,
        "closed": 1,
    }
    with open_trace(path) as trace:
        assert trace.complete
        assert trace.scalar("loss").steps.tolist() == list(range(30))
        assert "w" not in trace


def test_messages_can_be_silenced_or_collected_through_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR", logger="dbgcli"), TraceWriter(tmp_path / "t.h5") as writer:
        writer.add_scalar("loss", "nan?", 0)
    assert caplog.records == []
    assert writer.dropped_by_reason == {"value": 1}


# -- cause 10: a second writer never damages the first --------------------------------------
FIRST_WRITER = """
import sys, time
import numpy as np
from dbgcli import TraceWriter

with TraceWriter(sys.argv[1], flush_secs=3600) as writer:
    for step in range(40):
        writer.add_scalar("loss", float(step), step)
        writer.add_tensor("w", np.full((8, 8), step, np.float32), step)
        if step % 10 == 9:
            writer.flush()
        if step == 19:
            print("committed", flush=True)
            sys.stdin.readline()  # the second writer tries now
"""

SECOND_WRITER = """
import sys
from dbgcli import TraceWriter
from dbgcli.errors import TraceWriterError

try:
    TraceWriter(sys.argv[1], **{sys.argv[2]: True})
except TraceWriterError as error:
    print("refused:", error)
else:
    print("accepted")
"""


@pytest.mark.parametrize("hdf5_locking", [None, "FALSE"])
@pytest.mark.parametrize("how", ["overwrite", "resume"])
def test_a_second_writer_is_refused_and_the_first_loses_nothing(
    tmp_path: Path, how: str, hdf5_locking: str | None
) -> None:
    path = tmp_path / "run.h5"
    env = dict(os.environ)
    env.pop("HDF5_USE_FILE_LOCKING", None)
    if hdf5_locking is not None:
        env["HDF5_USE_FILE_LOCKING"] = hdf5_locking
    first = subprocess.Popen(
        [sys.executable, "-c", FIRST_WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert first.stdout is not None and first.stdin is not None
    assert first.stdout.readline().strip() == "committed"
    before = path.stat()
    second = subprocess.run(
        [sys.executable, "-c", SECOND_WRITER, str(path), how],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert second.stdout.startswith("refused:"), second.stdout + second.stderr
    assert "being written by another writer" in second.stdout
    after = path.stat()
    # Not truncated, and the disk space the first writer reserved past the end is still its own.
    assert (after.st_size, after.st_blocks) == (before.st_size, before.st_blocks)
    with open_trace(path) as trace:  # still readable while the first writer runs
        assert trace.scalar("loss").steps.tolist() == list(range(20))
    first.stdin.write("go\n")
    first.stdin.flush()
    assert first.wait(timeout=120) == 0
    with open_trace(path) as trace:
        assert trace.complete
        assert trace.scalar("loss").steps.tolist() == list(range(40))
        assert trace.stat("w", "mean").values.tolist() == [float(s) for s in range(40)]
    # Once the first writer is done, the path is free again.
    again = subprocess.run(
        [sys.executable, "-c", SECOND_WRITER, str(path), how],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert again.stdout.strip() == "accepted"


def test_a_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with TraceWriter(path, flush_secs=3600) as first:
        first.add_scalar("loss", 1.0, 0)
        first.flush()
        for how in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(TraceWriterError, match="being written by another writer"):
                TraceWriter(path, **how)
        with pytest.raises(TraceWriterError, match="already exists"):
            TraceWriter(path)
        first.add_scalar("loss", 2.0, 1)
    with open_trace(path) as trace:
        assert trace.complete
        assert trace.scalar("loss").values.tolist() == [1.0, 2.0]


def test_overwrite_and_resume_after_the_first_writer_closed(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with TraceWriter(path) as writer:
        writer.add_scalar("loss", 1.0, 0)
        writer.add_scalar("loss", 1.0, -1)
    with TraceWriter(path, resume=True) as writer:
        writer.add_scalar("loss", 2.0, 1)
        writer.add_scalar("loss", 1.0, -1)
        writer.add_scalar("loss", "x", 2)
    with open_trace(path) as trace:
        assert trace.scalar("loss").values.tolist() == [1.0, 2.0]
    with h5py.File(path, "r") as f:  # the counts of both writers
        assert json.loads(f.attrs[schema.ATTR_DROPPED]) == {"step": 2, "value": 1}
    with TraceWriter(path, overwrite=True) as writer:
        writer.add_scalar("loss", 3.0, 0)
    with open_trace(path) as trace:
        assert trace.scalar("loss").values.tolist() == [3.0]


# -- cause 11: a full disk ----------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 8 MiB (tmpfs), so that the disk really fills."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill the disk but ``leave`` bytes."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


FULL_DISK_WRITER = """
import json, sys
import numpy as np
from dbgcli import TraceWriter
from dbgcli.errors import TraceWriterError

try:
    writer = TraceWriter(sys.argv[1], flush_secs=3600)
except TraceWriterError as error:
    print(json.dumps({"refused": str(error)}))
    sys.exit(0)
committed = -1
for step in range(300):
    writer.add_scalar("loss", float(step), step)
    writer.add_tensor("w", np.full((32, 32), step, np.float32), step, collection="weights")
    writer.add_tensor("act", np.full((8, 4), step % 3 - 1.0), step, collection="activations", kind="relu")
    if step % 25 == 24:
        writer.flush()
writer.close()
print(json.dumps({"dropped": dict(writer.dropped_by_reason)}))
"""

LEAVE = [0, 4 << 10, 64 << 10, 1 << 20, (1 << 20) + (300 << 10), 2 << 20, 3 << 20, 5 << 20]


@pytest.mark.parametrize("leave", LEAVE, ids=[f"{n >> 10}KiB-free" for n in LEAVE])
def test_a_disk_that_fills_at_any_moment_leaves_a_readable_trace(
    small_disk: Path, leave: int
) -> None:
    _fill(small_disk, leave)
    path = small_disk / "run.h5"
    run = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITER, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr
    outcome = json.loads(run.stdout)
    if "refused" in outcome:  # no room even for an empty trace: a clear error at set-up
        assert "no space left" in outcome["refused"]
        assert not path.exists()
        return
    with open_trace(path) as trace:
        loss = trace.scalar("loss") if "loss" in trace else None
        steps = [] if loss is None else loss.steps.tolist()
        assert steps == list(range(len(steps)))  # a prefix: every commit, nothing else
        if loss is not None:
            np.testing.assert_array_equal(loss.values, loss.steps.astype(float))
        if "w" in trace:
            mean = trace.stat("w", "mean")
            np.testing.assert_array_equal(mean.values, mean.steps.astype(float))
            for chunk in trace.iter_raw("w"):
                for step, values in zip(chunk.steps, chunk.values):
                    assert (values == step).all()
        committed = [len(steps)] + [len(trace.index(t)[0]) for t in ("w", "act") if t in trace]
        committed += [0] * (3 - len(committed))
        lost = outcome["dropped"].get("unwritten", 0)
        assert lost == sum(300 - n for n in committed)  # what is not in the trace is counted
        if lost:
            assert not trace.complete
    assert leave < (5 << 20) or (len(steps) == 300 and trace.complete)


def test_records_held_while_the_disk_is_full_are_written_once_there_is_room(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_disk / "run.h5"
    writer = TraceWriter(path, flush_secs=3600)
    for step in range(10):
        _good(writer, step)
    writer.flush()
    filler = _fill(small_disk, 0)
    for step in range(10, 20):
        _good(writer, step)
    writer.flush()
    assert "cannot write" in caplog.text
    with open_trace(path) as trace:
        assert trace.scalar("loss").steps.tolist() == list(range(10))
    filler.unlink()
    writer.flush()
    assert "works again" in caplog.text
    writer.close()
    assert writer.dropped == 0
    with open_trace(path) as trace:
        assert trace.complete
        assert trace.scalar("loss").steps.tolist() == list(range(20))
        assert [int(s) for chunk in trace.iter_raw("w") for s in chunk.steps] == list(range(20))


def test_a_full_disk_at_close_releases_the_file(small_disk: Path) -> None:
    path = small_disk / "run.h5"
    writer = TraceWriter(path, flush_secs=3600)
    writer.add_scalar("loss", 1.0, 0)
    writer.flush()
    _fill(small_disk, 0)
    writer.add_scalar("loss", 2.0, 1)
    writer.close()
    assert writer.dropped_by_reason == {"unwritten": 1}
    open_paths = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(path) not in open_paths
    with open_trace(path) as trace:
        assert not trace.complete
        assert trace.scalar("loss").values.tolist() == [1.0]


def test_no_room_for_an_empty_trace_is_a_clear_error_at_set_up(small_disk: Path) -> None:
    _fill(small_disk, 0)
    path = small_disk / "run.h5"
    with pytest.raises(TraceWriterError, match="no space left"):
        TraceWriter(path)
    assert not path.exists()


def test_overwrite_on_a_full_disk_keeps_the_old_trace(small_disk: Path) -> None:
    path = small_disk / "run.h5"
    with TraceWriter(path) as writer:
        writer.add_scalar("loss", 1.0, 0)
    _fill(small_disk, 0)
    with pytest.raises(TraceWriterError, match="no space left"):
        TraceWriter(path, overwrite=True)
    with open_trace(path) as trace:
        assert trace.complete
        assert trace.scalar("loss").values.tolist() == [1.0]


FILE_SIZE_LIMIT = """
import json, resource, sys
import numpy as np
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from dbgcli import TraceWriter
writer = TraceWriter(sys.argv[1], flush_secs=3600)
rows = np.zeros((1, 12))
for step in range(400):
    writer.add_scalar("loss", float(step), step)
    value = np.full((32, 32), step, np.float32)
    if sys.argv[3] == "rows":  # as the hook records: statistics computed, the full tensor kept
        writer.add_tensor_stats_rows(
            ["w"], rows, step, shapes=[(32, 32)], dtypes=["f4"], collections=[None], values=[value]
        )
    else:
        writer.add_tensor("w", value, step)
    if step % 20 == 19:
        writer.flush()
writer.close()
print(json.dumps(dict(writer.dropped_by_reason)))
"""


@pytest.mark.parametrize("limit_kib", [1100, 1300, 1600, 2200])
@pytest.mark.parametrize("how", ["tensor", "rows"])
def test_a_file_size_limit_is_a_full_disk_too(tmp_path: Path, limit_kib: int, how: str) -> None:
    # RLIMIT_FSIZE needs no privileges: the same path as a full disk (EFBIG instead of ENOSPC).
    path = tmp_path / "run.h5"
    run = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(path), str(limit_kib << 10), how],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    lost = json.loads(run.stdout).get("unwritten", 0)
    assert lost > 0
    with open_trace(path) as trace:
        steps = trace.scalar("loss").steps.tolist() if "loss" in trace else []
        assert steps == list(range(len(steps)))
        assert len(steps) * 2 + lost == 800
    assert resource.getrlimit(resource.RLIMIT_FSIZE)  # the parent's limit is untouched
