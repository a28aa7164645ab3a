"""``dbg watch``: following a trace while it is written, stopping the run, a killed writer.

The training runs are real subprocesses (tests/watch_run.py); every wait has a deadline and
nothing asserts a timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dbgcli import TraceWriter, open_trace
from dbgcli.analysis import Options
from dbgcli.errors import DbgError
from dbgcli.trace.reader import open_tail
from dbgcli.trace.stop import read_stop_request, stop_request_path
from dbgcli.watch import State, Watcher

RUN = Path(__file__).resolve().parent / "watch_run.py"
COMMIT_EVERY = 100
DEADLINE = 120.0


def start_watch(trace: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dbgcli", "watch", str(trace), "--interval", "0.02", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(stream: object, wanted: str, deadline: float = DEADLINE) -> str:
    """The first line of ``stream`` containing ``wanted`` (the process writes it eventually)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            break
        if wanted in line:
            return str(line)
    raise AssertionError(f"no line with {wanted!r}")


def first_nonfinite_step(trace: Path) -> int:
    with open_trace(trace) as opened:
        loss = opened.scalar("loss", "train")
        steps = list(loss.steps[~np.isfinite(loss.values)])
        for info in opened.tags(scalar=False):
            bad = (
                opened.stat(info.tag, "nan_count").values
                + opened.stat(info.tag, "inf_count").values
            )
            steps += list(opened.index(info.tag)[0][bad > 0])
    return int(min(steps))


@pytest.mark.parametrize(
    ("framework", "pause"), [("torch", "0.005"), ("hf", "0.001"), ("lightning", "0.001")]
)
def test_watch_stop_ends_the_run_within_two_commits(
    tmp_path: Path, framework: str, pause: str
) -> None:
    trace = tmp_path / "run.h5"
    watch = start_watch(trace, "--stop", "--format", f"json:{tmp_path / 'report.json'}")
    run = subprocess.run(
        [sys.executable, str(RUN), str(trace), "--framework", framework, "--pause", pause],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    out, err = watch.communicate(timeout=DEADLINE)
    assert "stopped at step" in run.stdout, run.stdout + run.stderr
    assert watch.returncode == 1, err

    with open_trace(trace) as opened:
        stop = opened.metadata["stop"]
        last_step = int(max(opened.index(info.tag)[0].max() for info in opened.tags()))
    onset = first_nonfinite_step(trace)
    # Commit c holds steps [c * COMMIT_EVERY, (c + 1) * COMMIT_EVERY).
    assert stop["seen_at_step"] // COMMIT_EVERY - onset // COMMIT_EVERY <= 2
    assert onset <= stop["step"] <= stop["seen_at_step"]
    assert last_step <= stop["seen_at_step"] + 1  # the next step boundary ends training
    assert stop["by"].startswith("dbg watch")
    assert stop["rule"] in ("DBG306", "DBG102", "DBG404")
    assert "not finite" in stop["reason"] or "NaN" in stop["reason"]
    assert f"ERROR {stop['rule']}" in out
    assert "asked the run to stop" in err and "the run was stopped at step" in err
    assert not stop_request_path(trace).exists()  # the writer removed it when it closed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_code"] == 1 and not report["traces"][0]["healthy"]


@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_callbacks_stop_on_error_in_process(tmp_path: Path, framework: str) -> None:
    trace = tmp_path / "run.h5"
    run = subprocess.run(
        [sys.executable, str(RUN), str(trace), "--framework", framework, "--pause", "0"]
        + ["--stop-on", "error"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    assert "stopped at step" in run.stdout, run.stdout + run.stderr
    with open_trace(trace) as opened:
        stop = opened.metadata["stop"]
        last_step = int(max(opened.index(info.tag)[0].max() for info in opened.tags()))
    onset = first_nonfinite_step(trace)
    assert stop["by"] == "stop_on (in-process)" and stop["rule"] == "DBG306"
    assert stop["step"] == onset
    assert last_step <= onset + 2  # the loss is judged when logged; the next step boundary ends


WRITER = textwrap.dedent(
    """
    import sys, time
    from dbgcli import TraceWriter
    writer = TraceWriter(sys.argv[1], flush_secs=1e9)
    for step in range(50):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.add_tensor("grad/w", [float(step)] * 4, step, collection="gradients")
    writer.flush()
    print("committed", flush=True)
    {then}
    """
)


def start_writer(trace: Path, then: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER.format(then=then), str(trace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_waits_for_a_trace_that_does_not_exist_yet(tmp_path: Path) -> None:
    trace = tmp_path / "later.h5"
    watch = start_watch(trace)
    assert watch.stderr is not None
    read_line(watch.stderr, "waiting for")
    writer = start_writer(trace, "writer.close()")
    assert writer.wait(timeout=DEADLINE) == 0
    out, err = watch.communicate(timeout=DEADLINE)
    analyze = subprocess.run(
        [sys.executable, "-m", "dbgcli", "analyze", str(trace)], capture_output=True, text=True
    )
    assert watch.returncode == analyze.returncode == 0, err
    assert "healthy" in out


def test_watch_says_when_the_writer_was_killed(tmp_path: Path) -> None:
    trace = tmp_path / "killed.h5"
    writer = start_writer(trace, "time.sleep(600)")
    assert writer.stdout is not None
    read_line(writer.stdout, "committed")
    watch = start_watch(trace)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=DEADLINE)
    out, err = watch.communicate(timeout=DEADLINE)
    assert watch.returncode == 2
    assert "ended without closing the trace" in err
    assert err.count("\n") >= 1 and "Traceback" not in err
    with open_trace(trace) as opened:  # what was committed is still there
        assert len(opened.scalar("loss")) == 50


def test_watch_exit_first_and_on_finding(tmp_path: Path) -> None:
    trace = tmp_path / "nan.h5"
    with TraceWriter(trace) as writer:
        for step in range(30):
            writer.add_scalar("loss", float("nan") if step >= 20 else 1.0, step)
    seen = tmp_path / "seen.jsonl"
    command = f"cat >> {seen}; echo; exit 3"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dbgcli",
            "watch",
            str(trace),
            "--exit-first",
            "--on-finding",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 1
    assert "ERROR DBG306 non-finite-loss loss, steps 20-29" in done.stdout
    assert "--on-finding" in done.stderr and "exited with code 3" in done.stderr
    finding = json.loads(seen.read_text().splitlines()[0])
    assert finding["rule_id"] == "DBG306" and finding["trace"] == str(trace)


def test_watch_refuses_a_file_that_is_not_a_trace(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    done = subprocess.run(
        [sys.executable, "-m", "dbgcli", "watch", str(junk), "--interval", "0.01"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("dbg: error:")
    assert "not an HDF5 file" in done.stderr


# -- polling an active writer ------------------------------------------------------------------

TORN_RULE = textwrap.dedent(
    '''
    import numpy as np
    from dbgcli.findings import Finding
    from dbgcli.rules import Need, rule

    @rule("WCH001", "torn-read", severity="error", category="run", requires=Need.loss())
    def torn_read(ctx):
        """Every record the writer made says its own step: anything else is a torn read."""
        loss = ctx.trace.scalar("loss")
        steps = ctx.trace.index("grad/w")[0]
        mean = ctx.trace.stat("grad/w", "mean").values
        torn = (
            not np.array_equal(loss.values, loss.steps.astype(float))
            or not np.array_equal(mean, steps.astype(float))
            or (len(loss.steps) > 1 and not (np.diff(loss.steps) == 1).all())
        )
        if torn:
            yield Finding(message="torn read")
    '''
)

ACTIVE_WRITER = textwrap.dedent(
    """
    import sys
    from dbgcli import TraceWriter
    writer = TraceWriter(sys.argv[1], flush_secs=0.05, raw_every=0)
    step = 0
    while True:
        writer.add_scalar("loss", float(step), step)
        writer.add_tensor("grad/w", [float(step)] * 64, step, collection="gradients")
        if step == 0:
            writer.flush()
            print("started", flush=True)
        step += 1
    """
)

# In a process of its own, so that the custom rule stays out of this session's registry.
POLLER = textwrap.dedent(
    """
    import json, sys, time
    from dbgcli.analysis import Options
    from dbgcli.watch import State, Watcher
    watcher = Watcher(sys.argv[1], Options(select=("WCH001",), rules_files=(sys.argv[2],)), window=200)
    findings, newest, states = [], [], []
    for _ in range(1000):
        poll = watcher.poll()
        states.append(poll.state.value)
        findings += [f.message for f in poll.new_findings]
        if watcher.newest_step is not None:
            newest.append(watcher.newest_step)
        time.sleep(0.001)  # pace the polls; the writer commits every 50 ms
    statuses = [r.status.value for r in watcher.report().results]
    print(json.dumps({"reads": watcher.reads, "discarded": watcher.discarded,
                      "findings": findings, "newest": newest,
                      "states": states, "statuses": statuses}))
    """
)


def test_a_thousand_polls_against_an_active_writer(tmp_path: Path) -> None:
    trace = tmp_path / "active.h5"
    rules = tmp_path / "torn.py"
    rules.write_text(TORN_RULE)
    writer = subprocess.Popen(
        [sys.executable, "-c", ACTIVE_WRITER, str(trace)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        read_line(writer.stdout, "started")
        polled = subprocess.run(
            [sys.executable, "-c", POLLER, str(trace), str(rules)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert writer.poll() is None  # the writer ran throughout
    finally:
        writer.kill()
        writer.wait()
    assert polled.returncode == 0, polled.stderr
    result = json.loads(polled.stdout)
    assert len(result["states"]) == 1000
    assert result["findings"] == []  # no torn read
    assert result["reads"] >= 10
    newest = result["newest"]
    assert newest == sorted(newest) and newest[-1] > newest[0]
    assert result["statuses"] == ["passed"]


def test_a_poll_reads_only_the_tail(tmp_path: Path) -> None:
    trace = tmp_path / "long.h5"
    with TraceWriter(trace) as writer:
        for step in range(5000):
            writer.add_scalar("loss", float(step), step)
            writer.add_tensor("grad/w", np.full(3, float(step)), step, collection="gradients")
    tail = open_tail(trace, 100)
    with tail:
        assert tail.scalar("loss").steps.tolist() == list(range(4900, 5000))
        assert tail.stat("grad/w", "mean").values.tolist() == [float(s) for s in range(4900, 5000)]
        assert tail.timeline().steps.tolist() == list(range(4900, 5000))
        assert not tail.being_written


def test_watcher_is_closed_on_a_finished_trace_and_reports_like_analyze(tmp_path: Path) -> None:
    trace = tmp_path / "done.h5"
    with TraceWriter(trace) as writer:
        for step in range(40):
            writer.add_scalar("loss", float("inf") if step == 30 else 1.0, step)
    watcher = Watcher(trace, Options(), quiet=0.0)
    poll = watcher.poll()
    assert poll.state is State.closed
    assert [f.rule_id for f in poll.new_findings] == ["DBG306"]
    assert watcher.report().verdict.startswith("unhealthy")
    assert watcher.final_report().exit_code() == 1


def test_a_window_below_ten_steps_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DbgError, match="at least 10"):
        Watcher(tmp_path / "x.h5", Options(), window=3)


def test_the_stop_request_reaches_the_writer_at_its_next_commit(tmp_path: Path) -> None:
    trace = tmp_path / "stop.h5"
    writer = TraceWriter(trace)
    writer.add_scalar("loss", 1.0, 0)
    writer.flush()
    watcher = Watcher(trace, Options(), quiet=0.0)
    assert watcher.poll().state is State.analysed
    from dbgcli.findings import Finding

    watcher.request_stop(Finding(message="loss is NaN", rule_id="DBG306", rule="non-finite-loss"))
    assert read_stop_request(trace) is not None
    assert writer.stop_requested is None  # read at commits only
    writer.add_scalar("loss", 1.0, 1)
    writer.flush()
    request = writer.stop_requested
    assert request is not None and request.rule == "DBG306" and "loss is NaN" in request.reason
    writer.close()
    with open_trace(trace) as opened:
        assert opened.metadata["stop"]["seen_at_step"] == 1
    # A new run on the same path does not inherit the old request.
    stop_request_path(trace).write_text(json.dumps({"by": "old", "reason": "old"}))
    with TraceWriter(trace, overwrite=True) as fresh:
        fresh.add_scalar("loss", 1.0, 0)
        fresh.flush()
        assert fresh.stop_requested is None


def test_writer_pid_is_recorded_for_liveness(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "pid.h5") as writer:
        assert writer.metadata["writer"]["pid"] == os.getpid()


def test_watch_gives_up_waiting_after_timeout(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dbgcli", "watch", str(tmp_path / "never.h5"), "--timeout", "0.1"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"dbg: error: {tmp_path / 'never.h5'}: no trace appeared within 0.1 s"
    )


def test_an_html_report_is_refreshed_while_the_run_goes_on(tmp_path: Path) -> None:
    trace = tmp_path / "active.h5"
    page = tmp_path / "live.html"
    writer = subprocess.Popen(
        [sys.executable, "-c", ACTIVE_WRITER, str(trace)], stdout=subprocess.PIPE, text=True
    )
    watch = None
    try:
        assert writer.stdout is not None
        read_line(writer.stdout, "started")
        watch = start_watch(trace, "--format", f"html:{page}")
        end = time.monotonic() + DEADLINE
        while not page.exists() and time.monotonic() < end:
            time.sleep(0.1)
        text = page.read_text()  # whole: a refresh writes beside the page and renames
        # The run never ended: this page is a refresh, not the final report.
        assert writer.poll() is None and watch.poll() is None
        assert f"dbg report: {trace}" in text and "Plotly.newPlot" in text
    finally:
        for process in (writer, watch):
            if process is not None:
                process.kill()
                process.wait()
