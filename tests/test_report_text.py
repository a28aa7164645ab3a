"""``dbgcli.report.text``: names shortened from the middle for terminal output."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbgcli.report.text import shorten_middle

KEY_BIAS = "bert.encoder.layer.0.attention.self.key.bias"


def test_keeps_both_ends_of_a_tensor_name() -> None:
    assert shorten_middle(KEY_BIAS, 30) == "bert.encoder.lay…self.key.bias"
    assert (
        shorten_middle("grad/bert.encoder.layer.11.attention.output.dense.weight", 24)
        == "grad/bert.encoder…weight"
    )


def test_fits_and_never_cuts_at_the_end() -> None:
    for width in range(3, len(KEY_BIAS)):
        short = shorten_middle(KEY_BIAS, width)
        assert len(short) == width, width
        head, _, tail = short.partition("…")
        assert KEY_BIAS.startswith(head) and KEY_BIAS.endswith(tail) and tail, width


def test_short_text_is_left_alone() -> None:
    assert shorten_middle(KEY_BIAS, len(KEY_BIAS)) == KEY_BIAS
    assert shorten_middle("fc1.weight", 80) == "fc1.weight"
    assert shorten_middle("", 0) == ""


@pytest.mark.parametrize(("width", "expected"), [(0, ""), (1, "…"), (2, "b…"), (3, "b…s")])
def test_tiny_widths(width: int, expected: str) -> None:
    assert shorten_middle(KEY_BIAS, width) == expected


def test_the_end_starts_at_a_component_when_one_is_near() -> None:
    # The last 9 characters are "_features"; no separator there, so a plain cut.
    assert shorten_middle("a" * 20 + "_features", 19) == "aaaaaaaaa…_features"
    # "y.weight": the separator is early in the end half, so the end is the whole "weight".
    assert shorten_middle("layer.0.attention.key.weight", 17).endswith("…weight")


def test_a_healthy_verdict_names_the_commonest_skip_reason_without_stream_prefixes() -> None:
    """The data rules name their stream (``labels (train): ...``); the verdict's reason is
    what was missing, not the tag."""
    from dbgcli.findings import Severity
    from dbgcli.report.model import RuleResult, RuleStatus, TraceReport

    def skipped(rule_id: str, reason: str) -> RuleResult:
        return RuleResult(
            rule_id, rule_id.lower(), "data", Severity.warning, "", RuleStatus.skipped, reason
        )

    results = (
        skipped("DBG601", "labels (train): only 384 labels in 6 records (< samples 500)"),
        skipped("DBG605", "labels (train): only 384 labels in 6 records (< samples 500)"),
        skipped("DBG603", "no token-id inputs (role 'inputs': integers)"),
    )
    report = TraceReport(path="run.h5", results=results)
    assert report.verdict == (
        "no problems found: 0 rules passed, 3 skipped (only 384 labels in 6 records, and 1 "
        "other reason)"
    )


def test_healthy_takes_a_loss_rule_that_judged_the_run() -> None:
    """No problem found is not health when nothing judged how training went: a ranker whose
    only metric is NDCG has no loss any rule reads. One passed rule that judges the training
    loss makes it healthy; one that passes on other data of category loss does not."""
    from dbgcli.findings import Severity
    from dbgcli.report.model import RuleResult, RuleStatus, TraceReport

    trees = RuleResult("DBG701", "tree-depth", "trees", Severity.warning, "", RuleStatus.passed)
    skipped = RuleResult(
        "DBG301",
        "loss-not-decreasing",
        "loss",
        Severity.warning,
        "",
        RuleStatus.skipped,
        "no train loss series",
    )
    report = TraceReport(path="rank.h5", results=(trees, skipped))
    assert report.healthy
    assert report.verdict == "no problems found: 1 rule passed, 1 skipped (no train loss series)"
    finite = RuleResult("DBG306", "non-finite-loss", "loss", Severity.error, "", RuleStatus.passed)
    assert TraceReport(path="run.h5", results=(trees, finite)).verdict == (
        "no problems found: 2 rules passed"
    )
    judged = RuleResult(
        "DBG301",
        "loss-not-decreasing",
        "loss",
        Severity.warning,
        "",
        RuleStatus.passed,
        judges_training=True,
    )
    assert TraceReport(path="run.h5", results=(trees, judged)).verdict == (
        "healthy: 2 rules passed"
    )


def test_a_healthy_run_is_healthy_whichever_training_loss_rule_judged_it() -> None:
    """DBG301 judges the loss of the mode its parameter names: on the training loss, it says
    training went on working, with DBG303 left out; on the evaluation loss, it does not."""
    from tests.rules.helpers import analyze_path

    trace = Path(__file__).parent.parent / "sample_traces" / "numpy_mlp_healthy.h5"
    report = analyze_path(trace, select=("DBG301",))
    assert report.verdict.startswith("healthy: 1 rule passed"), report.verdict
    held_out = analyze_path(trace, select=("DBG301",), params={"DBG301": {"mode": "eval"}})
    assert held_out.verdict.startswith("no problems found"), held_out.verdict
