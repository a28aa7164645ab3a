"""Helpers for rule tests: run selected rules on a real trace and look at what they found."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbgcli.analysis import Options, analyze_trace, configure
from dbgcli.findings import Finding
from dbgcli.report.model import RuleResult, RuleStatus, TraceReport


def run_rule(path: Path, rule: str, **params: Any) -> RuleResult:
    """Run one rule (id or name) with parameter overrides on a trace; return its result."""
    options = Options(select=(rule,), params={rule: params} if params else {})
    report = analyze_trace(path, configure(options), options)
    assert report.error is None, report.error
    (result,) = report.results
    assert result.status is not RuleStatus.error, result.reason
    return result


def analyze_path(path: Path, **options: Any) -> TraceReport:
    """Run the default rule set (or ``select=...``) on a trace."""
    opts = Options(**options)
    return analyze_trace(path, configure(opts), opts)


def keyed(result: RuleResult, key: str) -> list[Finding]:
    """Findings of one kind (``Finding.key``)."""
    return [f for f in result.findings if f.key == key]


def train_recording_data(
    model: Any,
    optimizer: Any,
    path: Path,
    batch: Callable[[int], tuple[Any, Any]],
    loss_of: Callable[[Any, Any], Any],
    *,
    steps: int,
    every: int = 10,
) -> Path:
    """Train ``model`` for ``steps`` on ``batch(step)``, recorded by the PyTorch hook at its
    defaults into ``path``, with the labels and predictions of every ``every``-th step kept
    in full."""
    from dbgcli.torch import attach

    with attach(model, optimizer, path) as hook:
        for step in range(steps):
            inputs, labels = batch(step)
            optimizer.zero_grad()
            output = model(inputs)
            loss = loss_of(output, labels)
            hook.record_loss(loss)
            if step % every == 0:
                hook.record(labels=labels, predictions=output.detach(), raw=True)
            loss.backward()
            optimizer.step()
    return path
