"""The rule engine: registration, selection, parameters, configuration, plugins, planning."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from dbgcli import open_trace
from dbgcli.analysis import Options, analyze, analyze_trace, configure
from dbgcli.errors import RuleConfigError
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, Report, RuleStatus
from dbgcli.rules import REGISTRY, Need, RuleContext, rule

# Test rules are opt-in (default_enabled=False): registered once per process, they must not
# leak into the default rule set of other tests.
CUSTOM_RULES = '''
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dbgcli.rules import Accumulator, Derivation, Finding, Need, RuleContext, rule

FEEDS = []


@dataclass(frozen=True)
class RecordSums(Derivation):
    """Sum of each full tensor (counts the chunks it is fed, to prove single reads)."""

    def start(self, info, trace):
        return _Sums(info.records)


class _Sums(Accumulator):
    def __init__(self, records):
        self.sums = np.full(records, np.nan)

    def feed(self, chunk):
        FEEDS.append(len(chunk.records))
        self.sums[chunk.records] = chunk.values.reshape(len(chunk.records), -1).sum(axis=1)

    def finish(self):
        return self.sums


def _plan(ctx, params):
    return [(view.tag, RecordSums()) for view in ctx.tensors()]


@rule("TST001", "loss-above", severity="warning", category="testing", requires=Need.loss(), default_enabled=False)
def loss_above(ctx: RuleContext, *, limit: float = 1.0) -> Iterator[Finding]:
    """The training loss exceeds a limit.

    Args:
        limit: Loss above which a step counts.
    """
    loss = ctx.loss()
    bad = loss.values > limit
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        yield Finding(f"loss {loss.values[first]:g} > {limit:g}", tensor="loss",
                      first_step=int(loss.steps[first]), last_step=int(loss.steps[first]), steps=1,
                      value=float(loss.values[first]), threshold=limit)


@rule("TST002", "sum-reader", severity="info", category="testing", requires=Need.tensors(), plan=_plan, default_enabled=False)
def sum_reader(ctx: RuleContext) -> Iterator[Finding]:
    """Reads every tensor's sums through a planned derivation (and finds nothing)."""
    for view in ctx.tensors():
        view.derive(RecordSums())
    return iter(())


@rule("TST003", "sum-reader-too", severity="info", category="testing", requires=Need.tensors(), plan=_plan, default_enabled=False)
def sum_reader_too(ctx: RuleContext) -> Iterator[Finding]:
    """A second rule wanting the same derivation."""
    for view in ctx.tensors():
        view.derive(RecordSums())
    return iter(())


@rule("TST004", "crashes", severity="error", category="testing", default_enabled=False)
def crashes(ctx: RuleContext) -> Iterator[Finding]:
    """Always raises, to show a crash does not hide other rules."""
    raise ZeroDivisionError("boom")


@rule("TST005", "needs-eval", severity="info", category="testing", requires=Need.loss("eval"), default_enabled=False)
def needs_eval(ctx: RuleContext) -> Iterator[Finding]:
    """Needs an eval loss."""
    return iter(())


SEEN = []


@rule("TST006", "one-at-a-time", severity="info", category="testing", requires=Need.tensors(), per_tensor=True, default_enabled=False)
def one_at_a_time(ctx: RuleContext, *, crash_on: str = "") -> Iterator[Finding]:
    """Notes the tensors it is shown and reports each; crashes on the tensor ``crash_on``."""
    views = ctx.tensors()
    SEEN.append([view.tag for view in views])
    for view in views:
        if view.tag == crash_on:
            raise RuntimeError(f"cannot judge {view.tag}")
        yield Finding("seen", tensor=view.tag, first_step=int(view.steps[0]),
                      last_step=int(view.steps[-1]), steps=len(view.steps))
'''


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "my_rules.py"
    path.write_text(CUSTOM_RULES)
    REGISTRY.load_file(path)
    return path


@pytest.fixture
def trace(make_trace) -> Path:
    rng = np.random.default_rng(0)
    return make_trace(
        scalars={"loss": [2.0, 1.5, 0.9, 0.7]},
        tensors={
            "w": {"values": [rng.normal(size=(64, 64)) for _ in range(4)], "collection": "weights"}
        },
    )


def test_custom_rules_register_like_builtins(rules_file: Path) -> None:
    spec = REGISTRY.get("loss-above")
    assert (spec.id, spec.severity, spec.category, spec.summary) == (
        "TST001",
        Severity.warning,
        "testing",
        "The training loss exceeds a limit.",
    )
    (limit,) = spec.params
    assert (limit.name, limit.type_name, limit.default, limit.help) == (
        "limit",
        "float",
        1.0,
        "Loss above which a step counts.",
    )
    assert REGISTRY.get("tst001") is spec


def test_selection_by_prefix_name_category_and_longest_match(rules_file: Path) -> None:
    def ids(select=None, ignore=()):
        # Other test modules register their own TST rules in this process; look at ours only.
        ours = ("TST001", "TST002", "TST003", "TST004", "TST005", "DBG101", "DBG102")
        return [s.id for s in REGISTRY.select(select, ignore) if s.id in ours]

    assert ids(["testing"]) == ["TST001", "TST002", "TST003", "TST004", "TST005"]
    assert ids(["TST"], ["TST00"]) == []
    assert ids(["TST001", "sum-reader"]) == ["TST001", "TST002"]
    assert ids(["TST0"], ["TST00", "TST001"]) == []
    assert ids(["TST001"], ["TST"]) == ["TST001"]  # the longer prefix wins
    assert ids(["DBG1"]) == ["DBG101", "DBG102"]
    assert "TST005" not in ids() and "DBG101" in ids()  # opt-in rules need --select
    with pytest.raises(RuleConfigError, match="matches no rule"):
        REGISTRY.select(["DBG999x"])


def test_parameters_are_coerced_and_validated(rules_file: Path) -> None:
    (configured,) = configure(Options(select=("TST001",), params={"TST001": {"limit": "2.5"}}))
    assert configured.params == {"limit": 2.5}
    with pytest.raises(RuleConfigError, match="has no parameter 'limt'; parameters: limit"):
        configure(Options(select=("TST001",), params={"TST001": {"limt": "1"}}))
    with pytest.raises(RuleConfigError, match="bad value for TST001.limit"):
        configure(Options(select=("TST001",), params={"loss-above": {"limit": "high"}}))
    with pytest.raises(RuleConfigError, match="unknown rule 'nope'"):
        configure(Options(params={"nope": {"x": "1"}}))
    with pytest.raises(RuleConfigError, match="bad severity"):
        configure(Options(severities={"TST001": "fatal"}))


def test_findings_are_stamped_and_severity_overridable(rules_file: Path, trace: Path) -> None:
    report = analyze([trace], Options(select=("TST001",)))
    (finding,) = report.traces[0].findings
    assert (finding.rule_id, finding.rule, finding.severity, finding.first_step, finding.key) == (
        "TST001",
        "loss-above",
        Severity.warning,
        0,
        "loss-above",
    )
    assert report.exit_code() == EXIT_OK
    assert report.exit_code(Severity.warning) == EXIT_FINDINGS
    raised = analyze([trace], Options(select=("TST001",), severities={"TST001": "error"}))
    assert raised.traces[0].findings[0].severity is Severity.error
    assert raised.exit_code() == EXIT_FINDINGS


def test_a_crashing_rule_is_an_error_and_the_others_still_run(
    rules_file: Path, trace: Path
) -> None:
    report = analyze([trace], Options(select=("TST001", "TST004")))
    results = {r.id: r for r in report.traces[0].results}
    assert results["TST004"].status is RuleStatus.error
    assert results["TST004"].reason == "ZeroDivisionError: boom"
    assert results["TST001"].status is RuleStatus.violated
    assert report.exit_code(exit_zero=True) == EXIT_ERROR


def test_missing_data_skips_with_reason(rules_file: Path, trace: Path) -> None:
    report = analyze([trace], Options(select=("TST005", "DBG101")))
    reasons = {r.id: (r.status, r.reason) for r in report.traces[0].results}
    assert reasons["TST005"] == (RuleStatus.skipped, "no eval loss series")
    assert reasons["DBG101"] == (RuleStatus.skipped, "no tensors of role 'gradients'")
    assert report.exit_code(Severity.info) == EXIT_OK


def analyze_here(path: Path, options: Options) -> Report:
    """The engine on one trace in this process (``analyze`` runs it in a worker), so a test can
    watch what the rules' module records."""
    return Report((analyze_trace(path, configure(options), options),))


def test_planned_derivations_read_each_tensor_once(rules_file: Path, trace: Path) -> None:
    import sys

    module = sys.modules[REGISTRY.get("TST002").function.__module__]
    module.FEEDS.clear()
    report = analyze_here(trace, Options(select=("TST002", "TST003")))
    assert all(r.status is RuleStatus.passed for r in report.traces[0].results)
    assert sum(module.FEEDS) == 4  # four records of "w", fed once for both rules


def test_per_tensor_rules_are_shown_one_tensor_at_a_time(rules_file: Path, make_trace) -> None:
    import sys

    module = sys.modules[REGISTRY.get("TST006").function.__module__]
    rng = np.random.default_rng(1)
    path = make_trace(
        tensors={
            tag: {"values": [rng.normal(size=8) for _ in range(3)], "collection": "weights"}
            for tag in ("a", "b", "c")
        }
    )
    module.SEEN.clear()
    report = analyze_here(path, Options(select=("TST006", "DBG404")))
    assert module.SEEN == [["a"], ["b"], ["c"]]
    other, result = report.traces[0].results  # DBG404, TST006
    assert [f.tensor for f in result.findings] == ["a", "b", "c"]
    assert other.status is RuleStatus.passed

    module.SEEN.clear()
    crashed = analyze_here(
        path, Options(select=("TST006", "DBG404"), params={"TST006": {"crash_on": "b"}})
    )
    other, result = crashed.traces[0].results
    # A crash on one tensor ends the rule: no partial findings, and it is not run again.
    assert (result.status, result.reason, result.findings) == (
        RuleStatus.error,
        "RuntimeError: cannot judge b",
        (),
    )
    assert module.SEEN == [["a"], ["b"]]
    assert other.status is RuleStatus.passed


SAMPLES = sorted((Path(__file__).parent.parent / "sample_traces").glob("*.h5"))


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_per_tensor_builtins_find_what_they_find_on_the_whole_trace(sample: Path) -> None:
    """The per-tensor promise of every built-in that makes it, on every sample trace."""
    REGISTRY.load()
    specs = [s for s in REGISTRY.all() if s.per_tensor and s.source.startswith("dbgcli.")]
    assert len(specs) >= 9
    report = analyze([sample], Options(select=tuple(s.id for s in specs), start=3))
    by_rule = {r.id: r for r in report.traces[0].results}
    with open_trace(sample) as trace:
        ctx = RuleContext(trace, start=3)
        for spec in specs:
            result = by_rule[spec.id]
            if result.status is RuleStatus.skipped:
                continue
            whole = list(spec.function(ctx, **spec.defaults()))
            assert [_essence(f) for f in result.findings] == [_essence(f) for f in whole], spec.id


def _essence(finding: Finding) -> tuple[object, ...]:
    return (
        finding.tensor,
        finding.key,
        finding.first_step,
        finding.last_step,
        finding.steps,
        finding.value,
        finding.message,
    )


def test_filters_restrict_steps_and_modes(rules_file: Path, trace: Path) -> None:
    late = analyze([trace], Options(select=("TST001",), start=2))
    assert late.traces[0].findings == []
    with pytest.raises(RuleConfigError, match="unknown mode"):
        configure(Options(mode="validation"))
    with pytest.raises(RuleConfigError, match="no step to analyse: start 100 is after stop 10"):
        configure(Options(start=100, stop=10))


def test_registration_errors_are_clear() -> None:
    with pytest.raises(RuleConfigError, match="1-4 capitals and 3 digits"):
        rule("X1", "x", severity="info", category="t")(lambda ctx: iter(()))

    def no_doc(ctx):  # type: ignore[no-untyped-def]
        return iter(())

    with pytest.raises(RuleConfigError, match="needs a docstring"):
        rule("TST900", "no-doc", severity="info", category="t")(no_doc)

    def no_default(ctx, *, limit: float):  # type: ignore[no-untyped-def]
        """Doc."""
        return iter(())

    with pytest.raises(RuleConfigError, match="needs a default"):
        rule("TST901", "no-default", severity="info", category="t")(no_default)

    def untyped(ctx, *, limit=1.0):  # type: ignore[no-untyped-def]
        """Doc."""
        return iter(())

    with pytest.raises(RuleConfigError, match="needs a type annotation"):
        rule("TST902", "untyped", severity="info", category="t")(untyped)

    def duplicate(ctx):  # type: ignore[no-untyped-def]
        """Doc."""
        return iter(())

    REGISTRY.load()  # the built-in rules, whichever test runs first
    with pytest.raises(RuleConfigError, match="already registered"):
        rule("DBG101", "another-name", severity="info", category="t")(duplicate)
    with pytest.raises(RuleConfigError, match="named_only takes a list of finding keys"):
        rule("TST903", "bare", severity="info", category="t", named_only="memorised")(duplicate)
    assert Need.loss().reason == "no train loss series"


def test_rule_that_yields_garbage_is_an_error(tmp_path: Path, trace: Path) -> None:
    path = tmp_path / "garbage.py"
    path.write_text(
        textwrap.dedent('''
        from dbgcli.rules import rule

        @rule("TST950", "garbage", severity="info", category="testing", default_enabled=False)
        def garbage(ctx):
            """Yields a string instead of a Finding."""
            yield "oops"
    ''')
    )
    report = analyze([trace], Options(select=("TST950",), rules_files=(str(path),)))
    (result,) = report.traces[0].results
    assert result.status is RuleStatus.error and "not a Finding" in result.reason


def test_empty_and_unreadable_traces_are_errors(tmp_path: Path, trace: Path) -> None:
    from dbgcli import TraceWriter

    empty = tmp_path / "empty.h5"
    TraceWriter(empty).close()
    missing = tmp_path / "missing.h5"
    report = analyze([empty, missing, trace], Options(select=("DBG1",)))
    assert report.traces[0].error == "the trace holds no records"
    assert "no such file" in (report.traces[1].error or "")
    assert report.traces[2].error is None
    assert report.exit_code() == EXIT_ERROR
    assert len(report.errors) == 2


def test_finding_json_is_strict(rules_file: Path) -> None:
    finding = Finding("x", value=float("nan"), threshold=float("inf"))
    data = finding.to_dict()
    assert data["value"] == "nan" and data["threshold"] == "inf"
