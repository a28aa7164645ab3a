"""Follow a trace while its writer writes it: the engine of ``dbg watch``. No printing.

At each poll the engine reads the **tail** of the trace (the last ``window`` records of every
series, :func:`dbgcli.trace.reader.open_tail`) and runs the configured rules over the last
``window`` steps with the same machinery as ``dbg analyze``
(:func:`dbgcli.analysis.report_open_trace`). The cost of one poll therefore depends on the
window and the number of series, not on how long the run already is. Findings are keyed by
their identity (rule, tensor, kind, mode): one seen for the first time is *new*; the findings
of all polls together give the current verdict and diagnoses. When the writer closes the
trace, the whole trace is analysed once, so the final report and exit code are exactly those
of ``dbg analyze``.

Reading while the writer commits: a trace is read only once its file (modification time,
size, inode) has stayed the same for ``quiet`` seconds by the watcher's own clock, and a read
during which the file changed is thrown away; an error while the file was changing is retried
at the next poll. See docs/trace-format.md, "Reading a trace while it is written".
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from dbgcli.analysis import Options, analyze, configure, report_open_trace
from dbgcli.diagnosis import diagnose
from dbgcli.errors import DbgError
from dbgcli.findings import Finding, Severity
from dbgcli.isolation import Isolated, opened
from dbgcli.report.model import Report, RuleStatus, TraceReport, sorted_findings
from dbgcli.rules._registry import REGISTRY
from dbgcli.trace.reader import Trace, open_tail
from dbgcli.trace.stop import new_request, write_stop_request

#: Steps of history each poll judges.
DEFAULT_WINDOW = 1000
#: Seconds a trace file must stay unchanged before it is read.
DEFAULT_QUIET = 0.02
#: Failed reads in a row of a file that did not change in between before the error counts.
_STABLE_FAILURES = 3


class State(str, Enum):
    """What one poll saw."""

    waiting = "waiting"  # no trace file yet
    busy = "busy"  # the file is changing (or a read overlapped a commit): try again soon
    unchanged = "unchanged"  # nothing committed since the last read
    analysed = "analysed"  # new records were read and judged
    closed = "closed"  # the writer closed the trace
    died = "died"  # the writer process is gone and never closed the trace


@dataclass(frozen=True)
class Poll:
    """The outcome of one poll."""

    state: State
    new_findings: tuple[Finding, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class _Signature:
    mtime_ns: int
    size: int
    inode: int


def _signature(path: Path) -> _Signature | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return _Signature(stat.st_mtime_ns, stat.st_size, stat.st_ino)


@dataclass
class _Seen:
    """What the polls so far found out."""

    newest_step: int | None = None
    findings: dict[tuple[str, str, str, str], Finding] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tail: TraceReport | None = None


class Watcher:
    """Polls one trace; see the module docstring.

    Args:
        path: The trace (it may not exist yet).
        options: Rule selection and parameters, as for ``dbg analyze``.
        fail_on: The fail level (of the final report, ``--exit-first`` and ``--stop``).
        window: Steps of history each poll judges.
        quiet: Seconds the file must stay unchanged before it is read.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: Options,
        *,
        fail_on: Severity = Severity.error,
        window: int = DEFAULT_WINDOW,
        quiet: float = DEFAULT_QUIET,
    ) -> None:
        if window < 10:
            raise DbgError(f"the window must be at least 10 steps, got {window}")
        self.path = Path(path)
        self.options = options
        self.fail_on = fail_on
        self.window = window
        self.quiet = quiet
        self.rules = configure(options)
        self._reader = Isolated(_read_tail)
        self.reads = 0
        self.discarded = 0
        self._seen = _Seen()
        self._read_signature: _Signature | None = None
        self._changing: tuple[_Signature, float] | None = None
        self._failures: deque[_Signature] = deque(maxlen=_STABLE_FAILURES)

    # -- polling ------------------------------------------------------------------------------
    def poll(self) -> Poll:
        """Look at the trace once; never raises for a trace that is being written.

        Raises:
            DbgError: If the file stays unreadable while it does not change (not a trace).
        """
        signature = _signature(self.path)
        if signature is None:
            return Poll(State.waiting)
        if signature == self._read_signature:
            return self._unchanged()
        now = time.monotonic()
        if self._changing is None or self._changing[0] != signature:
            self._changing = (signature, now)
        if now - self._changing[1] < self.quiet:
            return Poll(State.busy)
        try:
            metadata, closed, tail, newest = self._read()
        except DbgError as error:
            return self._failed(signature, str(error))
        if _signature(self.path) != signature:
            self.discarded += 1
            return Poll(State.busy, note="the file changed while it was read")
        self._failures.clear()
        self.reads += 1
        self._read_signature = signature
        seen = self._seen
        seen.metadata = metadata
        seen.newest_step = newest
        if tail.error is not None:
            if closed:
                return Poll(State.closed)
            return Poll(State.analysed, note=tail.error)
        new = self._merge(tail)
        return Poll(State.closed if closed else State.analysed, new_findings=new)

    def _unchanged(self) -> Poll:
        if not self._writer_died():
            return Poll(State.unchanged)
        # Read once more: the writer may have closed the trace just before it exited.
        try:
            if self._read()[1]:
                return Poll(State.closed)
        except DbgError:
            pass
        return self._died()

    def _failed(self, signature: _Signature, error: str) -> Poll:
        # A read that fails while the writer commits is retried; an error that comes back
        # while the file stays the same is the file's own, or that of a writer that died.
        self._failures.append(signature)
        if len(self._failures) == _STABLE_FAILURES and len(set(self._failures)) == 1:
            if self._writer_died():
                return self._died()
            raise DbgError(error)
        self._changing = None
        return Poll(State.busy, note=error)

    def _writer_died(self) -> bool:
        return bool(self._seen.metadata) and writer_alive(self._seen.metadata) is False

    def _died(self) -> Poll:
        writer = self._seen.metadata.get("writer", {})
        return Poll(
            State.died,
            note=f"the writer (process {writer.get('pid')}) ended without closing the trace",
        )

    def _read(self) -> tuple[dict[str, Any], bool, TraceReport, int | None]:
        """The trace's metadata, whether it is closed, the rules' report on its last
        ``window`` steps, and its newest step; read in a worker under the CLI's limits, as
        every trace is (dbgcli.isolation)."""
        return self._reader((self.path, self.window, self.options), str(self.path))

    def _merge(self, tail: TraceReport) -> tuple[Finding, ...]:
        seen = self._seen
        seen.tail = tail
        new = []
        for finding in tail.findings:
            old = seen.findings.get(finding.identity)
            if old is None:
                new.append(finding)
                seen.findings[finding.identity] = finding
            else:
                # The window moves on: the onset is the earliest one any poll saw.
                first = min(
                    (s for s in (old.first_step, finding.first_step) if s is not None),
                    default=None,
                )
                seen.findings[finding.identity] = replace(finding, first_step=first)
        return tuple(new)

    # -- what the polls found -----------------------------------------------------------------
    @property
    def newest_step(self) -> int | None:
        """The newest step read so far."""
        return self._seen.newest_step

    @property
    def metadata(self) -> dict[str, Any]:
        """The run metadata at the last read (``stop`` holds a stop request the writer saw)."""
        return dict(self._seen.metadata)

    def report(self) -> TraceReport:
        """The findings of every poll so far, with their verdict and diagnoses."""
        seen = self._seen
        by_rule: dict[str, list[Finding]] = {}
        for finding in seen.findings.values():
            by_rule.setdefault(finding.rule_id, []).append(finding)
        tail = seen.tail
        results = []
        for result in tail.results if tail is not None else ():
            findings = tuple(by_rule.pop(result.id, ()))
            status = result.status
            if findings:
                status = RuleStatus.violated
            elif status is RuleStatus.violated:
                status = RuleStatus.passed
            results.append(replace(result, findings=findings, status=status))
        merged = tuple(results)
        places = tail.places if tail is not None else {}
        slack = tail.slack if tail is not None else 1
        return TraceReport(
            path=str(self.path),
            complete=False,
            results=merged,
            diagnoses=diagnose(sorted_findings(merged), REGISTRY.find, places, slack=slack),
            places=places,
            slack=slack,
        )

    def failing(self, findings: Sequence[Finding]) -> list[Finding]:
        """The findings at or above the fail level."""
        return [f for f in findings if (f.severity or Severity.info).rank >= self.fail_on.rank]

    def final_report(self) -> Report:
        """The whole trace analysed once, as ``dbg analyze`` would."""
        return analyze([self.path], self.options, fail_on=self.fail_on)

    # -- actions ------------------------------------------------------------------------------
    def request_stop(self, finding: Finding) -> Path:
        """Ask the writer to stop the run because of ``finding``."""
        reason = f"{finding.rule_id} {finding.rule}: {finding.message}"
        if finding.tensor:
            reason += f" ({finding.tensor}, {finding.span})"
        request = new_request(
            f"dbg watch (process {os.getpid()} on {socket.gethostname()})",
            reason,
            rule=finding.rule_id,
            step=finding.first_step,
        )
        return write_stop_request(self.path, request)


def _read_tail(
    arguments: tuple[Path, int, Options],
) -> tuple[dict[str, Any], bool, TraceReport, int | None]:
    path, window, options = arguments
    tail = open_tail(path, window)
    opened()
    with tail:
        newest = _newest_step(tail)
        start = None if newest is None else newest - window + 1
        report = report_open_trace(
            tail, configure(options), replace(options, start=start), path=str(path), curves=False
        )
        return dict(tail.metadata), not tail.being_written, report, newest


def _newest_step(trace: Trace) -> int | None:
    timeline = trace.timeline()
    if len(timeline):
        return int(timeline.steps.max())
    newest = [int(trace.index(info.tag)[0].max()) for info in trace.tags() if info.records]
    return max(newest) if newest else None


def writer_alive(metadata: dict[str, Any]) -> bool | None:
    """Whether the process that writes the trace still runs: None when it cannot be told (no
    process id in the metadata, or a writer on another host)."""
    writer = metadata.get("writer")
    if not isinstance(writer, dict) or writer.get("host") != socket.gethostname():
        return None
    pid = writer.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A killed child its parent has not reaped yet still answers kill(pid, 0).
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def run_on_finding(
    command: str, finding: Finding, trace: Path, timeout: float = 60.0
) -> str | None:
    """Run ``command`` in a shell with the finding's JSON on stdin; None on success, else why
    it failed (the caller reports it; a failing command never stops the watch)."""
    import json

    document = {"trace": str(trace), **finding.to_dict()}
    try:
        done = subprocess.run(
            command,
            shell=True,
            input=json.dumps(document),
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"could not run {command!r}: {error}"
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        return f"{command!r} exited with code {done.returncode}{tail}"
    return None
