"""Run rules over traces and build the report. No printing, no exit codes.

The flow for one trace: open it, check what each selected rule requires (a rule whose data is
absent is *skipped* with the reason), read every full tensor that some rule needs once (the
rules' plans, plus statistics the file lacks, are computed together in one pass per tensor),
run the rules, and collect their findings. Rules that look at the trace as a whole run first;
then the tensors are visited one by one, each shown to every ``per_tensor`` rule before its
statistics are let go, so memory stays that of one tensor however long the trace. A rule that
raises is reported as an *error* of the run; the other rules' results stay intact.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dbgcli.diagnosis import Place, diagnose, place
from dbgcli.errors import DbgError, MissingDataError, RuleConfigError, RuleSkipped
from dbgcli.findings import Finding, Severity, merge_findings
from dbgcli.isolation import DEFAULT_LIMITS, Failed, Limits, opened, run_isolated
from dbgcli.lr import SchedulerSpec, plan_replay, recorded_lr, run_schedulers
from dbgcli.report.model import (
    Curve,
    Report,
    RuleResult,
    RuleStatus,
    TraceReport,
    sorted_findings,
)
from dbgcli.rules._context import RuleContext, record_interval
from dbgcli.rules._registry import REGISTRY, RuleSpec
from dbgcli.trace import schema
from dbgcli.trace.derive import Derivation
from dbgcli.trace.reader import Trace, open_trace
from dbgcli.trace.roles import scalar_meaning


@dataclass(frozen=True)
class ConfiguredRule:
    """A selected rule with its resolved parameters and severity."""

    spec: RuleSpec
    params: dict[str, Any]
    severity: Severity


@dataclass(frozen=True)
class Options:
    """What to run and on which part of the trace.

    Args:
        select: Rule ids, names, id prefixes or categories to run (None: the default set).
        ignore: Rules to leave out (same forms).
        params: ``{rule id or name: {parameter: value}}``; strings are coerced to the type.
        severities: ``{rule id or name: severity}`` overrides.
        start: First step analysed (inclusive).
        stop: Last step analysed (inclusive).
        mode: Only records of this mode.
        rules_files: Python files of custom rules to load first.
        loss: The loss series when its name does not say so: a tag, or ``{"train": tag,
            "eval": tag}`` (the ``loss`` configuration key).
    """

    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    severities: Mapping[str, str] = field(default_factory=dict)
    start: int | None = None
    stop: int | None = None
    mode: str | None = None
    rules_files: tuple[str, ...] = ()
    loss: str | Mapping[str, str] | None = None


def configure(options: Options) -> list[ConfiguredRule]:
    """Resolve the selection and the parameter overrides; raises RuleConfigError."""
    for path in options.rules_files:
        REGISTRY.load_file(path)
    REGISTRY.load()
    if options.mode is not None and options.mode not in schema.MODES:
        raise RuleConfigError(f"unknown mode {options.mode!r}; modes: {', '.join(schema.MODES)}")
    if options.start is not None and options.stop is not None and options.start > options.stop:
        # An empty window would analyse nothing and pass: a CI gate that checks nothing.
        raise RuleConfigError(
            f"no step to analyse: start {options.start} is after stop {options.stop}"
        )
    chosen = REGISTRY.select(options.select, options.ignore)
    overrides: dict[str, dict[str, Any]] = {}
    for key, values in options.params.items():
        spec = REGISTRY.get(key)
        for name, raw in values.items():
            param = spec.param(name)
            try:
                overrides.setdefault(spec.id, {})[name] = param.coerce(raw)
            except ValueError as error:
                raise RuleConfigError(
                    f"bad value for {spec.id}.{name} ({param.type_name}): {error}"
                ) from None
    severities: dict[str, Severity] = {}
    for key, level in options.severities.items():
        spec = REGISTRY.get(key)
        try:
            severities[spec.id] = Severity(str(level).lower())
        except ValueError:
            raise RuleConfigError(
                f"bad severity {level!r} for {spec.id}; choose info, warning or error"
            ) from None
    return [
        ConfiguredRule(
            spec,
            {**spec.defaults(), **overrides.get(spec.id, {})},
            severities.get(spec.id, spec.severity),
        )
        for spec in chosen
    ]


def analyze(
    paths: Sequence[str | Path],
    options: Options,
    fail_on: Severity = Severity.error,
    jobs: int = 1,
    limits: Limits = DEFAULT_LIMITS,
) -> Report:
    """Analyse traces in ``jobs`` worker processes, each trace under ``limits``.

    Each worker resolves the rules itself from ``options`` (rule functions, custom rule files
    included, are never pickled); an unreadable trace, one that overruns its limits or one
    whose worker dies is an error of that trace only.
    """
    configure(options)
    outcomes = run_isolated(
        _analyze_in_worker,
        [str(p) for p in paths],
        jobs=jobs,
        limits=limits,
        initializer=_init_worker,
        initargs=(options,),
    )
    return Report(
        tuple(
            TraceReport(path=str(path), complete=False, error=outcome.message)
            if isinstance(outcome, Failed)
            else outcome
            for path, outcome in zip(paths, outcomes)
        ),
        fail_on=fail_on,
    )


_WORKER: tuple[list[ConfiguredRule], Options] | None = None


def _init_worker(options: Options) -> None:
    global _WORKER
    _WORKER = (configure(options), options)


def _analyze_in_worker(path: str) -> TraceReport:
    assert _WORKER is not None
    rules, options = _WORKER
    return analyze_trace(path, rules, options)


def analyze_trace(
    path: str | Path, rules: Sequence[ConfiguredRule], options: Options
) -> TraceReport:
    """Run configured rules over one trace; an unreadable trace becomes a report with an error."""
    started = time.perf_counter()
    try:
        trace = open_trace(path)
    except DbgError as error:
        return TraceReport(path=str(path), complete=False, error=str(error))
    opened()
    with trace:
        return report_open_trace(trace, rules, options, path=str(path), started=started)


def report_open_trace(
    trace: Trace,
    rules: Sequence[ConfiguredRule],
    options: Options,
    *,
    path: str | None = None,
    started: float | None = None,
    curves: bool = True,
) -> TraceReport:
    """Run configured rules over an open trace (``dbg watch`` passes the tail of one);
    ``path`` is the trace's name in the report (default: the path it was opened with)."""
    started = time.perf_counter() if started is None else started
    path = str(trace.path) if path is None else path
    try:
        if not trace.tags():
            return TraceReport(
                path=path, complete=trace.complete, error="the trace holds no records"
            )
        ctx = RuleContext(
            trace,
            start=options.start,
            stop=options.stop,
            mode=options.mode,
            loss=options.loss,
        )
        results = tuple(_run_rules(ctx, rules))
        places = places_of(trace)
        # A tensor recorded every N steps shows a change up to N steps late: onsets
        # closer than that cannot be ordered by time.
        slack = _record_interval(trace)
        return TraceReport(
            path=path,
            complete=trace.complete,
            incomplete_reasons=tuple(trace.incomplete_reasons),
            results=results,
            summary=_summary(trace, ctx),
            curves=tuple(_curves(ctx)) if curves else (),
            seconds=time.perf_counter() - started,
            diagnoses=diagnose(sorted_findings(results), REGISTRY.find, places, slack=slack),
            places=places,
            slack=slack,
        )
    except DbgError as error:
        return TraceReport(path=path, complete=trace.complete, error=str(error))


def places_of(trace: Trace) -> dict[str, Place]:
    """Where each tag of ``trace`` sits in the computation, for :func:`diagnose`."""
    return {
        info.tag: place(_scalar_role(info.tag) if info.scalar else info.role, index)
        for index, info in enumerate(trace.tags())
    }


def _scalar_role(tag: str) -> str | None:
    """``loss`` or ``lr`` for the scalar series that are one (see dbgcli.trace.roles)."""
    quantity = scalar_meaning(tag).quantity
    return quantity if quantity in ("loss", "lr") else None


def _record_interval(trace: Trace) -> int:
    """The usual step distance between records of the model's tensors (``stats_every``)."""
    gaps = [record_interval(trace.index(info.tag)[0]) for info in trace.tags(scalar=False)]
    return max(gaps) if gaps else 1


def _run_rules(ctx: RuleContext, rules: Sequence[ConfiguredRule]) -> list[RuleResult]:
    runs: list[_Run] = []
    results: dict[str, RuleResult] = {}
    for configured in rules:
        missing = [
            need.reason_for(configured.params, ctx)
            for need in configured.spec.requires
            if not need.met(ctx, configured.params)
        ]
        if missing:
            results[configured.spec.id] = _result(
                configured, RuleStatus.skipped, reason="; ".join(missing)
            )
        else:
            runs.append(_Run(configured))
    plan_errors = _prefetch(ctx, [run.configured for run in runs])
    for run in runs:
        if run.configured.spec.id in plan_errors:
            run.status, run.reason = RuleStatus.error, plan_errors[run.configured.spec.id]
    for run in runs:
        if not run.configured.spec.per_tensor:
            run.feed(ctx)
    per_tensor = [run for run in runs if run.configured.spec.per_tensor]
    if per_tensor:
        for info in ctx.trace.tags(scalar=False):
            focused = ctx.focused(info.tag)
            for run in per_tensor:
                run.feed(focused)
            ctx.trace.release(info.tag)
    for run in runs:
        results[run.configured.spec.id] = run.result()
    return [results[configured.spec.id] for configured in rules]


class _Run:
    """One rule's findings so far; a skip or a crash ends it and drops them."""

    def __init__(self, configured: ConfiguredRule) -> None:
        self.configured = configured
        self.findings: list[Finding] = []
        self.status: RuleStatus | None = None
        self.reason = ""
        self.seconds = 0.0

    def feed(self, ctx: RuleContext) -> None:
        """Run the rule on ``ctx`` (the whole trace, or one tensor of it) unless it has ended."""
        if self.status is not None:
            return
        spec = self.configured.spec
        started = time.perf_counter()
        try:
            self.findings.extend(
                _stamp(f, self.configured) for f in spec.function(ctx, **self.configured.params)
            )
        except RuleSkipped as skipped:
            self.status, self.reason = RuleStatus.skipped, str(skipped)
        except DbgError:
            raise
        except (Exception, SystemExit) as error:  # noqa: BLE001 - nor may it end the run
            self.status, self.reason = RuleStatus.error, f"{type(error).__name__}: {error}"
        finally:
            self.seconds += time.perf_counter() - started

    def result(self) -> RuleResult:
        if self.status is not None:
            return _result(self.configured, self.status, reason=self.reason, seconds=self.seconds)
        findings = tuple(merge_findings(self.findings))
        status = RuleStatus.violated if findings else RuleStatus.passed
        return _result(self.configured, status, findings=findings, seconds=self.seconds)


def _prefetch(ctx: RuleContext, rules: Iterable[ConfiguredRule]) -> dict[str, str]:
    """Compute every planned derivation with one pass over each tensor's full tensors."""
    wanted: dict[str, list[Derivation]] = {}
    errors: dict[str, str] = {}
    for configured in rules:
        if configured.spec.plan is None:
            continue
        try:
            for tag, derivation in configured.spec.plan(ctx, configured.params):
                wanted.setdefault(tag, []).append(derivation)
        except Exception as error:  # noqa: BLE001
            errors[configured.spec.id] = f"{type(error).__name__}: {error}"
    for info in ctx.trace.tags(scalar=False):
        implied = ctx.trace.implied_derivations(info.tag)
        if implied:
            wanted.setdefault(info.tag, []).extend(implied)
    for tag, derivations in wanted.items():
        # Without full tensors there is no pass to share: rules derive from statistics alone
        # when they get to the tag, so its statistics need not all sit in memory from here on.
        if ctx.trace.tag(tag).segments:
            ctx.trace.derive(tag, derivations)
    return errors


def _stamp(finding: Finding, configured: ConfiguredRule) -> Finding:
    if not isinstance(finding, Finding):
        raise TypeError(
            f"rule {configured.spec.id} yielded {type(finding).__name__}, not a Finding"
        )
    overridden = configured.severity != configured.spec.severity
    # A severity set in the configuration wins; otherwise the rule may grade its own findings.
    if overridden or finding.severity is None:
        severity = configured.severity
    else:
        severity = finding.severity
    return replace(
        finding,
        rule_id=configured.spec.id,
        rule=configured.spec.name,
        severity=severity,
        key=finding.key or configured.spec.name,
    )


def _result(
    configured: ConfiguredRule,
    status: RuleStatus,
    *,
    reason: str = "",
    findings: tuple[Finding, ...] = (),
    seconds: float = 0.0,
) -> RuleResult:
    spec = configured.spec
    return RuleResult(
        id=spec.id,
        name=spec.name,
        category=spec.category,
        severity=configured.severity,
        summary=spec.summary,
        status=status,
        reason=reason,
        findings=findings,
        seconds=seconds,
        judges_training=any(need.training_loss(configured.params) for need in spec.requires),
    )


def _summary(trace: Trace, ctx: RuleContext) -> dict[str, Any]:
    timeline = trace.timeline()
    modes: dict[str, dict[str, int]] = {}
    if len(timeline):
        keep = ctx.keep(timeline.steps, timeline.modes)
        for code, name in enumerate(schema.MODES):
            steps = timeline.steps[keep & (timeline.modes == code)]
            if steps.size:
                modes[name] = {
                    "steps": int(np.unique(steps).size),
                    "first_step": int(steps.min()),
                    "last_step": int(steps.max()),
                }
    tags = trace.tags()
    return {
        "modes": modes,
        "scalars": sum(1 for t in tags if t.scalar),
        "tensors": sum(1 for t in tags if not t.scalar),
        "raw_tensors": sum(1 for t in tags if not t.scalar and t.raw_records),
        "framework": trace.metadata.get("framework"),
    }


def _curves(ctx: RuleContext) -> list[Curve]:
    curves = []
    for mode in ("train", "eval"):
        loss = ctx.loss(mode)
        if loss is not None:
            curves.append(
                Curve(
                    f"{mode} loss",
                    tuple(int(s) for s in loss.steps),
                    tuple(float(v) for v in loss.values),
                )
            )
    recorded = recorded_lr(ctx)
    if recorded is not None:
        curves.append(
            Curve(
                "recorded lr",
                tuple(int(s) for s in recorded[0]),
                tuple(float(v) for v in recorded[1]),
            )
        )
    try:
        plan = plan_replay(ctx)
    except MissingDataError:  # no loss to replay; the rules say what that means
        return curves
    if len(plan.metric.values) > 1:
        # GreedyLR with its reference defaults, fed what ``dbg lr`` feeds it by default, so
        # the two draw the same curve from the same start.
        greedy = SchedulerSpec.parse("greedy")
        (replayed,) = run_schedulers(plan.metric, [greedy], plan.lr)
        curves.append(
            Curve(
                "GreedyLR (sim.)",
                tuple(int(s) for s in plan.metric.steps),
                tuple(float(v) for v in replayed.replay.lrs),
                note=plan.note(greedy),
            )
        )
    return curves
