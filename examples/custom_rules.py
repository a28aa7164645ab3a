"""A custom dbg rule: loss spikes, the kind large-model training runs watch for.

Use it from the command line, where it registers exactly like a built-in rule:

    dbg rules explain ACME001 --rules-file examples/custom_rules.py
    dbg analyze run.h5 --rules-file examples/custom_rules.py
    dbg analyze run.h5 --rules-file examples/custom_rules.py --select ACME001 \\
        --param ACME001.factor=3

or list it in ``rules-files`` of ``[tool.dbg]`` (pyproject.toml) or ``dbg.toml``. To ship rules in a
package instead, register the module in the ``dbg.rules`` entry-point group of its
``pyproject.toml``; dbg imports it at start-up, the same way it loads its own rules:

    [project.entry-points."dbg.rules"]
    acme = "acme_dbg_rules"

A rule is a generator function: ``ctx`` is the trace after ``--start``/``--stop``/``--mode``
filters, its keyword arguments are its parameters (typed, with defaults, documented in
``Args:``; ``--param`` values are converted to their types), and its docstring is what
``dbg rules explain`` prints. It yields findings and never prints, raises or exits to report
one; if the trace lacks what ``requires`` names, the rule is reported as skipped with that
reason. ``label`` names the problem in a diagnosis ("loss spike") and ``explains`` lists the
findings (rule ids, or ``id:key``) this rule's findings can cause: the report folds them under
it when they start no later. The docstring's ``Fix:`` paragraph is the fix a diagnosis shows;
a ``Fix (key ``k``):`` paragraph replaces it for findings with key ``k``. A rule that judges every tensor on its own can say
``per_tensor=True``: the engine then shows it one tensor at a time, together with the other
per-tensor rules, so that a long trace's statistics are never all in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dbgcli.rules import Finding, Need, RuleContext, episode_findings, rule


@rule(
    "ACME001",
    "loss-spike",
    severity="warning",
    category="loss",
    requires=Need.loss(),
    label="loss spike",
    # A spike makes the loss rise over a check: when it starts no later, it is the cause.
    explains=("DBG301:increasing",),
)
def loss_spike(
    ctx: RuleContext, *, factor: float = 2.0, z: float = 5.0, warmup: int = 10, window: int = 20
) -> Iterator[Finding]:
    """The training loss jumps far above its recent level, by more than its usual noise.

    Judged on the logarithm of the training loss, where a spike is a ratio and minibatch noise
    is roughly symmetric. For record ``t`` take ``rise = log L[t] - m`` and ``s = 1.4826 * MAD``,
    where ``m`` is the median and MAD the median absolute deviation of ``log L`` over the
    ``window`` records before ``t``. Record ``t`` is a spike when

        rise > log(factor)  and  rise > z * s,

    that is, the loss is more than ``factor`` times its recent median *and* further above it
    than ``z`` robust standard deviations of its recent noise. The second condition keeps the
    rule quiet late in a healthy run, where minibatch losses near zero routinely differ tenfold.
    Records from ``warmup`` on are judged (the loss moves fast at the start); records with a
    loss that is not positive and finite are neither judged nor part of a window. One finding
    per run of consecutive spiking records; its value is the largest ratio ``exp(rise)``.

    Why it matters: a spike that recovers still costs the steps spent climbing back, and
    spikes that grow in size or frequency are the usual prelude to divergence.

    Typical causes: a learning rate too high for the current curvature (often just after
    warm-up), a bad batch (corrupt or extreme examples), fp16 overflow, Adam's second-moment
    estimate lagging a sudden gradient change.

    Fix: lower the peak learning rate or lengthen warm-up, clip gradients, inspect the batches
    at the reported steps, raise Adam's ``eps`` or lower ``beta2``.

    Args:
        factor: How many times the recent median a spike must reach.
        z: How many robust standard deviations of the recent log-loss a spike must clear.
        warmup: Records at the start that are never judged.
        window: Records before each step that define its recent level and noise.
    """
    loss = ctx.loss("train")
    if loss is None:  # not reached: requires=Need.loss() skips the rule first
        return
    values = loss.values.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.where((values > 0) & np.isfinite(values), np.log(values), np.nan)
    rise = np.full(len(logs), np.nan)
    spread = np.full(len(logs), np.nan)
    for t in range(max(warmup, 1), len(logs)):
        before = logs[max(0, t - window) : t]
        before = before[~np.isnan(before)]
        if len(before):
            level = np.median(before)
            rise[t] = logs[t] - level
            spread[t] = 1.4826 * np.median(np.abs(before - level))
    with np.errstate(invalid="ignore"):
        spiking = (rise > np.log(factor)) & (rise > z * spread)
    yield from episode_findings(
        tensor=ctx.loss_tag("train") or "loss",
        steps=loss.steps,
        values=np.exp(rise),
        violating=spiking,
        threshold=factor,
        key="spike",
        message=lambda episode, worst: (
            f"training loss spiked to {worst:.1f}x its median over the previous {window} "
            f"records ({episode.count} record{'s' if episode.count > 1 else ''})"
        ),
    )
