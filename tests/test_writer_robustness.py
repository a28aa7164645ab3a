"""The writer never kills training and never loses committed data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dbgcli import TraceWriter, open_trace
from dbgcli.trace import writer as writer_module

CHILD = """
import sys
import numpy as np
from dbgcli import TraceWriter

path, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
with TraceWriter(path, flush_secs=3600, raw_every=3) as writer:
    step = 0
    while True:
        writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.add_tensor("w", np.full((64, 32), step, dtype=np.float32), step, collection="weights")
        writer.add_tensor("act", np.maximum(rng.normal(size=(16, 8)), 0), step, collection="activations", kind="relu")
        if step % 5 == 4:
            writer.flush()
            print(step, flush=True)
        step += 1
"""


@pytest.mark.parametrize("seed", range(12))
def test_sigkill_leaves_every_committed_step(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "killed.h5"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(seed)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first.strip(), "the writer never committed"
    time.sleep(np.random.default_rng(seed).uniform(0.0, 0.4))
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()
    child.wait()
    committed = int((first + rest).split()[-1])
    with open_trace(path) as trace:
        assert not trace.complete
        assert any("did not close" in reason for reason in trace.incomplete_reasons)
        loss = trace.scalar("loss")
        last = int(loss.steps[-1])
        assert last >= committed
        assert loss.steps.tolist() == list(range(last + 1))
        np.testing.assert_array_equal(loss.values, 1.0 / (loss.steps + 1))
        for tag in ("w", "act"):
            steps, _ = trace.index(tag)
            assert steps.tolist()[: committed + 1] == list(range(committed + 1))
        mean = trace.stat("w", "mean")
        np.testing.assert_array_equal(mean.values, mean.steps.astype(float))
        raw_steps = [int(s) for chunk in trace.iter_raw("w") for s in chunk.steps]
        assert [s for s in raw_steps if s <= committed] == list(range(0, committed + 1, 3))
        for chunk in trace.iter_raw("w"):
            for step, values in zip(chunk.steps, chunk.values):
                assert (values == step).all()


def test_reading_while_the_writer_runs(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    writer = TraceWriter(path, flush_secs=3600)
    for step in range(10):
        writer.add_scalar("loss", float(step), step)
    writer.flush()
    for step in range(10, 15):
        writer.add_scalar("loss", float(step), step)
    # Another process (dbg info on a running job) sees what was committed.
    reader = (
        "import sys; from dbgcli import open_trace\n"
        "t = open_trace(sys.argv[1]); print(t.complete, t.scalar('loss').steps.tolist())\n"
    )
    seen = subprocess.run(
        [sys.executable, "-c", reader, str(path)], capture_output=True, text=True, check=True
    )
    assert seen.stdout.strip() == f"False {list(range(10))}"
    writer.close()
    with open_trace(path) as trace:
        assert trace.complete
        assert len(trace.scalar("loss")) == 15


def test_bad_values_are_dropped_with_one_log_message(tmp_path: Path, caplog) -> None:
    path = tmp_path / "t.h5"
    with TraceWriter(path) as writer:
        writer.add_tensor("text", np.array(["a", "b"]), 0)
        writer.add_tensor("text", np.array(["a", "b"]), 1)
        writer.add_tensor("objects", [object()], 0)
        writer.add_scalar("loss", "not a number", 0)
        writer.add_scalar("loss", 1.0, 0, mode="validation")
        writer.add_scalar("loss", 1.0, 0.5)
        writer.add_scalar("", 1.0, 0)
        writer.add_scalar("loss", float("nan"), 1)
        writer.add_scalar("loss", float("inf"), 2)
        writer.add_tensor("nan", np.array([np.nan, 1.0]), 0)
    assert writer.dropped == 7
    assert sum("'text'" in record.getMessage() for record in caplog.records) == 1
    assert {record.name for record in caplog.records} == {"dbgcli"}
    with open_trace(path) as trace:
        loss = trace.scalar("loss")
        assert loss.steps.tolist() == [1, 2]
        assert np.isnan(loss.values[0]) and np.isinf(loss.values[1])
        assert trace.stat("nan", "nan_count").values.tolist() == [1.0]
        assert "text" not in trace


def test_recording_after_close_is_dropped_not_raised(tmp_path: Path, caplog) -> None:
    writer = TraceWriter(tmp_path / "t.h5")
    writer.add_scalar("loss", 1.0, 0)
    writer.close()
    writer.close()
    writer.add_scalar("loss", 2.0, 1)
    assert "closed" in caplog.text
    assert writer.dropped_by_reason == {"closed": 1}


def test_io_failure_keeps_committed_data(tmp_path: Path, monkeypatch, caplog) -> None:
    path = tmp_path / "full.h5"
    writer = TraceWriter(path, flush_secs=3600)
    for step in range(5):
        writer.add_scalar("loss", float(step), step)
        writer.add_tensor("w", np.full(8, step, dtype=np.float32), step, collection="weights")
    writer.flush()

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "resize", disk_full)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", disk_full)
    monkeypatch.setattr(writer_module, "_write_rows", disk_full)  # the low-level path
    for step in range(5, 10):
        writer.add_scalar("loss", float(step), step)
    writer.flush()
    assert "No space left" in caplog.text
    writer.add_scalar("loss", 99.0, 99)
    writer.close()
    monkeypatch.undo()
    # The records held for a retry could never be written: counted as lost, not raised.
    assert writer.dropped_by_reason == {"unwritten": 6}
    with open_trace(path) as trace:
        assert not trace.complete
        assert trace.scalar("loss").values.tolist() == [0, 1, 2, 3, 4]
        assert trace.index("w")[0].tolist() == [0, 1, 2, 3, 4]


def test_a_forked_child_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "fork.h5"
    writer = TraceWriter(path)
    writer.add_scalar("loss", 1.0, 0)
    pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker, say, that exits
        writer.add_scalar("loss", 666.0, 1)
        writer.flush()
        writer.close()
        os._exit(0)
    os.waitpid(pid, 0)
    writer.add_scalar("loss", 2.0, 1)
    writer.close()
    with open_trace(path) as trace:
        assert trace.complete
        assert trace.scalar("loss").values.tolist() == [1.0, 2.0]


def test_buffer_limit_commits_early(tmp_path: Path) -> None:
    # Every tag buffers up to 1 MiB of records; many tags together must not exceed the limit.
    path = tmp_path / "t.h5"
    writer = TraceWriter(path, flush_secs=3600, max_buffer_bytes=4 << 20)
    for tag in range(12):
        writer.add_tensor(f"big{tag}", np.full((256, 256), tag, dtype=np.float32), 0)
    with open_trace(path) as trace:
        assert len(trace.tags()) >= 4
    writer.close()
    with open_trace(path) as trace:
        assert len(trace.tags()) == 12


def test_unclosed_writer_is_closed_at_interpreter_exit(tmp_path: Path) -> None:
    path = tmp_path / "exit.h5"
    script = (
        "import sys; from dbgcli import TraceWriter\n"
        "w = TraceWriter(sys.argv[1], flush_secs=3600)\n"
        "for s in range(3): w.add_scalar('loss', float(s), s)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    with open_trace(path) as trace:
        assert trace.complete
        assert len(trace.scalar("loss")) == 3


def test_kill_after_raw_rows_of_a_new_shape_reached_the_file(tmp_path: Path) -> None:
    # Full tensors reach the file as soon as a block fills, before the next commit vouches for
    # them; a segment for a new shape started after the last commit must not break reading.
    path = tmp_path / "killed.h5"
    script = (
        "import os, signal, sys, numpy as np\n"
        "from dbgcli import TraceWriter\n"
        "w = TraceWriter(sys.argv[1], flush_secs=3600)\n"
        "for s in range(4): w.add_tensor('x', np.ones((64, 64), np.float32), s)\n"
        "w.flush()\n"
        "for s in range(4, 200): w.add_tensor('x', np.ones((32, 64), np.float32), s)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=False)
    with open_trace(path) as trace:
        assert not trace.complete
        assert trace.index("x")[0].tolist() == [0, 1, 2, 3]
        assert trace.tag("x").shapes == ((64, 64),)
        assert [int(s) for chunk in trace.iter_raw("x") for s in chunk.steps] == [0, 1, 2, 3]
