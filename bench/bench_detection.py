"""Detection quality of the rules on the calibration corpus of real training runs.

    python bench/bench_detection.py                 # train what is missing, then measure
    python bench/bench_detection.py --quick         # the fast subset (seed 0 of a few)
    python bench/bench_detection.py --only 'hf-*' --misses

The corpus (``bench/corpus/``) trains every scenario over several seeds and records each run
two ways: through the framework integration (``hook``) and through hand-written
``TraceWriter`` calls with the names people use (``hand``). For every trace this script runs
the default rules, as ``dbg analyze`` does, and prints:

* per rule, over the runs whose induced fault is that rule's problem: **recall** (the rule
  reported it, at warning or error, or as a note that heads a diagnosis of one), per
  recording path;
* over healthy runs: how many got an **error** finding, and how many **any warning**;
* **cause first**: among flagged induced runs, how often the first diagnosis names the
  induced cause (its rule, or one the scenario accepts as naming it correctly), and the rank
  of the cause rule's first finding among the findings (the order of the verbose listing);
* the **length of the human report** at 100 columns, median lines per pathological and per
  healthy trace.

The quality bars of the calibration and diagnosis issues are printed beside the figures.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from dbgcli.analysis import Options, analyze
from dbgcli.findings import Finding, Severity
from dbgcli.report import human
from dbgcli.report.model import Report, TraceReport

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "corpus"))

from generate import DEFAULT_OUT, generate, positive_int  # noqa: E402

RECORDINGS = ("hook", "hand")
REPORT_WIDTH = 100


@dataclass(frozen=True)
class Outcome:
    """What the rules made of one trace of the corpus."""

    run: str
    recording: str
    naming: str
    cause: str | None
    accept: tuple[str, ...]
    flagged: bool
    errors: int
    warnings: int
    first: str | None
    cause_rank: int | None
    lines: int
    verdict: str
    # The --values rule's finding furthest beyond its threshold: (distance, value), if any.
    worst: tuple[float, float] | None = None

    @property
    def healthy(self) -> bool:
        return self.cause is None

    @property
    def cause_first(self) -> bool:
        return self.first is not None and self.first in (self.cause, *self.accept)


def report_lines(trace: TraceReport) -> int:
    """Lines of the human report of one trace at REPORT_WIDTH columns."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=REPORT_WIDTH, color_system=None, highlight=False)
    human.render(Report((trace,)), console)
    return buffer.getvalue().count("\n")


def worst_value(findings: Sequence[Finding], values_of: str | None) -> tuple[float, float] | None:
    """``(distance beyond the threshold, value)`` of the finding of ``values_of`` (``RULE`` or
    ``RULE:KEY``) furthest beyond its threshold: the largest value of a rule that flags high
    values, the smallest of one that flags low ones."""
    if values_of is None:
        return None
    rule, _, key = values_of.partition(":")
    return max(
        (
            (abs(f.value - f.threshold) if f.threshold is not None else 0.0, f.value)
            for f in findings
            if f.rule_id == rule and (not key or f.key == key) and f.value is not None
        ),
        default=None,
    )


def outcome(
    record: dict[str, Any], recording: str, trace: TraceReport, values_of: str | None = None
) -> Outcome | None:
    """The outcome of one trace (None for a trace that could not be read, said on stderr)."""
    if trace.error is not None:
        print(f"left out, unreadable: {trace.error}", file=sys.stderr)
        return None
    cause = record["cause"]
    findings = trace.findings
    # A rule flags a run with a warning or an error, or with a note that heads a diagnosis of
    # one (a setting such as DBG804's dropout rate is a note until it explains a symptom).
    problems = [f for f in findings if (f.severity or Severity.info).rank >= Severity.warning.rank]
    problems += [findings[diagnosis.cause] for diagnosis in trace.problems]
    ranks = [i for i, f in enumerate(findings) if f.rule_id == cause]
    first = findings[trace.problems[0].cause].rule_id if trace.problems else None
    return Outcome(
        run=record["run"],
        recording=recording,
        naming=record["naming"] if recording == "hand" else "hook",
        cause=cause,
        accept=tuple(record.get("accept") or ()),
        flagged=any(f.rule_id == cause for f in problems) if cause else False,
        errors=sum(1 for f in findings if f.severity is Severity.error),
        warnings=sum(1 for f in findings if f.severity is Severity.warning),
        first=first,
        cause_rank=ranks[0] + 1 if ranks else None,
        lines=report_lines(trace),
        verdict=trace.verdict,
        worst=worst_value(findings, values_of),
    )


def measure(
    corpus: Path,
    manifest: dict[str, Any],
    only: list[str],
    jobs: int,
    params: dict[str, dict[str, str]] | None = None,
    values_of: str | None = None,
) -> list[Outcome]:
    """Analyse every trace of the manifest (matching ``only``) with the default rules (and
    parameter overrides ``{rule: {name: value}}``, to try a setting on the whole corpus);
    ``values_of`` names the rule whose worst finding value each outcome keeps."""
    records = [
        r
        for r in manifest["runs"]
        if not r.get("error")
        and (not only or any(fnmatch.fnmatch(f"{r['family']}/{r['scenario']}", p) for p in only))
    ]
    jobs_list = [(r, recording) for r in records for recording in RECORDINGS]
    paths = [corpus / record["traces"][recording] for record, recording in jobs_list]
    report = analyze(paths, Options(params=params or {}), jobs=jobs)
    found = [
        outcome(record, recording, trace, values_of)
        for (record, recording), trace in zip(jobs_list, report.traces)
    ]
    return [o for o in found if o is not None]


def _share(hits: int, total: int) -> str:
    return f"{hits}/{total} ({100 * hits / total:.0f} %)" if total else "-"


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    """The figures the tables print (also written with ``--json``)."""
    induced = [o for o in outcomes if not o.healthy]
    healthy = [o for o in outcomes if o.healthy]
    flagged = [o for o in induced if o.flagged]
    per_rule: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for o in induced:
        assert o.cause is not None
        per_rule[o.cause][o.recording].append(o.flagged)
    pathological_lines = [o.lines for o in induced]
    healthy_lines = [o.lines for o in healthy]
    return {
        "traces": len(outcomes),
        "induced": len(induced),
        "healthy": len(healthy),
        "recall": {
            recording: [o.flagged for o in induced if o.recording == recording]
            for recording in RECORDINGS
        },
        "healthy_error": {
            recording: [o.errors > 0 for o in healthy if o.recording == recording]
            for recording in RECORDINGS
        },
        "healthy_warning": {
            recording: [o.errors + o.warnings > 0 for o in healthy if o.recording == recording]
            for recording in RECORDINGS
        },
        "cause_first": [o.cause_first for o in flagged],
        "cause_rank": [o.cause_rank for o in flagged if o.cause_rank is not None],
        "per_rule": {rule: dict(paths) for rule, paths in sorted(per_rule.items())},
        "lines_pathological": statistics.median(pathological_lines) if induced else None,
        "lines_healthy": statistics.median(healthy_lines) if healthy else None,
    }


def print_tables(summary: dict[str, Any]) -> None:
    def count(values: list[bool]) -> str:
        return _share(sum(values), len(values))

    print(
        f"{summary['traces']} traces: {summary['induced']} with an induced fault, "
        f"{summary['healthy']} healthy (each run recorded through the hook and by hand)\n"
    )
    print(f"{'rule':8} {'recall, hook':>18} {'recall, hand':>18}")
    for rule, paths in summary["per_rule"].items():
        print(f"{rule:8} {count(paths.get('hook', [])):>18} {count(paths.get('hand', [])):>18}")
    print()
    rows = [
        ("induced runs flagged by their cause rule", "recall", ">= 95 %"),
        ("healthy runs with an error finding", "healthy_error", "0"),
        ("healthy runs with any warning", "healthy_warning", "<= 10 %"),
    ]
    print(f"{'measure':44} {'hook':>16} {'hand':>16}   bar")
    for label, key, bar in rows:
        hook, hand = summary[key]["hook"], summary[key]["hand"]
        print(f"{label:44} {count(hook):>16} {count(hand):>16}   {bar}")
    first = summary["cause_first"]
    print(f"{'cause named by the first diagnosis':44} {count(first):>33}   >= 90 % of flagged")
    ranks = summary["cause_rank"]
    if ranks:
        print(
            f"{'rank of the cause among the findings':44} "
            f"{'median ' + str(statistics.median(ranks)):>33}   (verbose listing order)"
        )
    for label, key, bar in (
        ("human report lines at 100 columns, pathological", "lines_pathological", "<= 40"),
        ("human report lines at 100 columns, healthy", "lines_healthy", "<= 15"),
    ):
        value = summary[key]
        print(f"{label:50} {'median ' + str(value) if value is not None else '-':>27}   {bar}")


def print_misses(outcomes: list[Outcome]) -> None:
    """Every trace that misses a bar, with its verdict, so a rule can be looked at."""
    print("\nmisses:")
    for o in outcomes:
        if o.healthy and o.errors + o.warnings:
            print(f"  healthy with findings   {o.run} [{o.naming}]: {o.verdict}")
        elif not o.healthy and not o.flagged:
            print(f"  {o.cause} not found       {o.run} [{o.naming}]: {o.verdict}")
        elif not o.healthy and not o.cause_first:
            print(f"  {o.cause} not first       {o.run} [{o.naming}]: {o.verdict}")


def print_values(outcomes: list[Outcome], values_of: str, shown: int = 3) -> None:
    """What a rule's findings measure on healthy runs, on the runs of its own fault and on
    other faults: the range a threshold must separate (loosen the rule with ``-p`` to see
    values under its bar). Each trace counts with its finding furthest beyond the threshold;
    the traces nearest the other group are named (the worst healthy ones, the mildest
    faults)."""
    rule = values_of.partition(":")[0]
    print(f"\nworst value of the {values_of} findings per trace:")
    groups = (
        ("healthy runs", [o for o in outcomes if o.healthy], True),
        (f"runs of its fault ({rule})", [o for o in outcomes if o.cause == rule], False),
        ("other faults", [o for o in outcomes if not o.healthy and o.cause != rule], True),
    )
    for label, members, worst_first in groups:
        valued = sorted(
            ((o.worst, o) for o in members if o.worst is not None),
            key=lambda pair: pair[0][0],
            reverse=worst_first,
        )
        if not valued:
            print(f"  {label:28} no findings in {len(members)} traces")
            continue
        values = [value for (_, value), _ in valued]
        print(
            f"  {label:28} {len(valued)}/{len(members)} traces with findings, "
            f"{min(values):.3g} to {max(values):.3g}"
        )
        for (_, value), o in valued[:shown]:
            print(f"  {'':28}   {value:10.4g}  {o.run} [{o.naming}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="the fast subset, seed 0")
    parser.add_argument("--only", action="append", default=[], help="glob on family/scenario")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--misses", action="store_true", help="list the traces that miss a bar")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--no-train", action="store_true", help="measure the traces the manifest lists as they are"
    )
    parser.add_argument(
        "--stats-every",
        type=positive_int,
        help="train the corpus with tensors every N steps (see corpus/generate.py)",
    )
    parser.add_argument(
        "--values",
        metavar="RULE[:KEY]",
        help="print the range of the rule's finding values on healthy and faulty runs",
    )
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="RULE.NAME=VALUE",
        help="try a rule parameter on the whole corpus (as dbg analyze -p)",
    )
    args = parser.parse_args()
    params: dict[str, dict[str, str]] = {}
    for text in args.param:
        key, _, value = text.partition("=")
        rule, _, name = key.partition(".")
        params.setdefault(rule, {})[name] = value
    if args.no_train:
        manifest = json.loads((args.corpus / "manifest.json").read_text())
    else:
        manifest = generate(
            args.corpus,
            only=args.only or None,
            quick=args.quick,
            jobs=args.jobs,
            stats_every=args.stats_every,
        )
    failed = [r["run"] for r in manifest["runs"] if r.get("error")]
    if failed:
        print(f"{len(failed)} runs failed to train and are left out: {', '.join(failed)}")
    outcomes = measure(args.corpus, manifest, args.only, args.jobs, params, args.values)
    summary = summarise(outcomes)
    print()
    print_tables(summary)
    if args.misses:
        print_misses(outcomes)
    if args.values:
        print_values(outcomes, args.values)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
