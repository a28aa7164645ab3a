"""What rules report: a :class:`Finding` with a :class:`Severity`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How bad a finding is; ordered ``info < warning < error``."""

    info = "info"
    warning = "warning"
    error = "error"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for error."""
        return _RANK[self]


_RANK = {Severity.info: 0, Severity.warning: 1, Severity.error: 2}


@dataclass(frozen=True)
class Finding:
    """One problem a rule found, aggregated over a run of steps of one tensor or series.

    Rules fill in what they know; the engine stamps ``rule_id``, ``rule`` and (unless the rule
    chose one) ``severity`` from the rule's registration.

    Attributes:
        message: One line saying what is wrong, with the numbers.
        tensor: The tag (tensor or scalar series) concerned, or None for run-wide findings.
        first_step: First step of the first episode (None when not tied to steps).
        last_step: Last step of the last episode.
        steps: Number of recorded steps that violate the condition, over all episodes.
        value: The observed value (the worst one over all episodes).
        threshold: The threshold ``value`` was compared with.
        mode: The mode of the records (train, eval, predict), if one.
        key: Short, stable name of the kind of finding ("vanished", "nan", ...); together with
            the rule and the tensor it identifies the finding across reruns (baselines).
        extra: Further machine-readable evidence.
        episodes: Separate runs of violating records merged into this finding (a finding is
            one per rule, tensor, kind and mode; an episode that comes back is the same
            finding).
    """

    message: str
    tensor: str | None = None
    first_step: int | None = None
    last_step: int | None = None
    steps: int = 0
    value: float | None = None
    threshold: float | None = None
    mode: str | None = None
    key: str = ""
    severity: Severity | None = None
    rule_id: str = ""
    rule: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    episodes: int = 1

    @property
    def span(self) -> str:
        """Where, for people: ``"steps 10-40 (31 records)"``, ``"step 7"`` or ``""``."""
        if self.first_step is None:
            return ""
        if self.first_step == self.last_step or self.last_step is None:
            return f"step {self.first_step}"
        count = f" ({self.steps} records" if self.steps else ""
        if count and self.episodes > 1:
            count += f" in {self.episodes} episodes"
        return f"steps {self.first_step}-{self.last_step}{count}{')' if count else ''}"

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes two findings one: rule, tensor, kind of finding and mode."""
        return (self.rule_id, self.tensor or "", self.key, self.mode or "")

    @property
    def fingerprint(self) -> str:
        """Identity across reruns: the rule, the tensor and the kind of finding, never steps.

        A rerun of the same pathology, recorded to a new file, has the same fingerprint; that
        is what baselines and SARIF alert de-duplication rely on.
        """
        text = "\0".join((self.rule_id, self.tensor or "", self.key))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (NaN and infinities become strings)."""
        return {
            "fingerprint": self.fingerprint,
            "rule_id": self.rule_id,
            "rule": self.rule,
            "severity": self.severity.value if self.severity else None,
            "tensor": self.tensor,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "steps": self.steps,
            "value": json_number(self.value),
            "threshold": json_number(self.threshold),
            "mode": self.mode,
            "key": self.key,
            "episodes": self.episodes,
            "message": self.message,
            "extra": {
                k: json_number(v) if isinstance(v, float) else v for k, v in self.extra.items()
            },
        }


def merge_findings(findings: list[Finding]) -> list[Finding]:
    """One finding per :attr:`Finding.identity`, its episodes merged, in first-seen order.

    The merged finding keeps the message, value and extra of its worst episode: the most
    severe, then the one whose value lies furthest beyond the threshold (on the side the
    episodes violate it: above for a growth, below for a vanishing), then the earliest. It
    spans from the first episode's first step to the last one's last step, and counts the
    violating records and episodes of all of them.
    """
    groups: dict[tuple[str, str, str, str], list[Finding]] = {}
    for finding in findings:
        groups.setdefault(finding.identity, []).append(finding)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        lead = min(group, key=_badness)
        firsts = [f.first_step for f in group if f.first_step is not None]
        lasts = [f.last_step for f in group if f.last_step is not None]
        merged.append(
            replace(
                lead,
                first_step=min(firsts) if firsts else None,
                last_step=max(lasts) if lasts else None,
                steps=sum(f.steps for f in group),
                episodes=sum(f.episodes for f in group),
            )
        )
    return merged


def _badness(finding: Finding) -> tuple[int, float, int]:
    """Sort key of episodes, worst first: severity, distance beyond the threshold, onset."""
    beyond = 0.0
    if finding.value is not None and finding.threshold is not None:
        distance = finding.value - finding.threshold
        beyond = abs(distance) if distance == distance else 0.0  # NaN: no distance
    return -(finding.severity or Severity.info).rank, -beyond, finding.first_step or 0


def json_number(value: float | None) -> float | str | None:
    """A float for JSON: finite numbers as they are, NaN and infinities as strings."""
    if value is None:
        return None
    number = float(value)
    if number != number:
        return "nan"
    if number in (float("inf"), float("-inf")):
        return "inf" if number > 0 else "-inf"
    return number
