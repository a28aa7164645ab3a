"""Rules: small functions that recognise why a model is not learning.

Write one like this (``dbg rules explain`` shows the docstring)::

    from dbgcli.rules import Finding, Need, RuleContext, episode_findings, rule

    @rule("ACME001", "loss-spike", severity="warning", category="loss", requires=Need.loss())
    def loss_spike(ctx: RuleContext, *, factor: float = 2.0) -> Iterator[Finding]:
        \"\"\"The training loss jumps far above its recent level.

        Args:
            factor: How many times the recent median counts as a spike.
        \"\"\"
        ...

and register the module under the ``dbg.rules`` entry-point group of your package, or pass the
file with ``dbg analyze --rules-file``. ``examples/custom_rules.py`` in the repository is a
complete, tested one.
"""

from dbgcli.errors import RuleSkipped
from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import (
    Episode,
    RuleContext,
    TensorView,
    episode_findings,
    episodes,
    persistent,
    sustained,
    trailing_median,
)
from dbgcli.rules._registry import REGISTRY, Need, Param, RuleSpec, rule
from dbgcli.trace.derive import Accumulator, Derivation

__all__ = [
    "REGISTRY",
    "Accumulator",
    "Derivation",
    "Episode",
    "Finding",
    "Need",
    "Param",
    "RuleContext",
    "RuleSkipped",
    "RuleSpec",
    "Severity",
    "TensorView",
    "episode_findings",
    "episodes",
    "persistent",
    "rule",
    "sustained",
    "trailing_median",
]
