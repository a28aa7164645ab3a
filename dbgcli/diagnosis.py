"""Diagnoses: the findings of one trace grouped under their causes, ranked.

When training goes wrong, one cause shows up as many symptoms: dead ReLUs give zero
activations, vanishing gradients, frozen weights and a flat loss. Each rule declares, next to
its maths, which other rules' findings it can cause (``@rule(..., explains=...)``). This
module turns a trace's findings into diagnoses with those declarations alone; it knows no rule
by name.

**Who explains whom.** Findings are put in *causal order*: by onset (first step), then by
where in the computation their tensor sits (inputs, then activations layer by layer, then the
loss, gradients and weights; see :func:`place`), then by severity. A finding ``C`` explains a
finding ``S`` when ``C``'s rule declares ``S``'s rule (or ``rule:key``, the only way to name
a key that ``S``'s rule keeps ``named_only``), ``C`` starts no later than ``S`` (up to
``slack`` steps: a tensor recorded every N steps is seen up to N steps late), and ``S`` does
not also explain ``C`` from earlier in causal order (where onsets within ``slack`` of each
other count as simultaneous and the place in the computation decides: gradients that
explode make the updates huge, not the other way round). Among findings seen
at the same time, nothing computed from the data explains the data (dead ReLUs do not explain
all-zero inputs), and a layer does not explain one before it in the same role. Findings of
one rule on one tensor (a layer whose gradient jumps and then turns NaN), or of one rule and
kind on several tensors (dead units in three layers), are one problem: the first in causal
order explains the others, unless it is a note (severity info) and they are not. Each
finding hangs under the first of its explainers in causal order; following those links up
gives its root, the *cause*. A diagnosis is a cause with every finding that leads to it: an
earlier anomaly upstream is the better cause.

**Ranking.** Diagnoses are ranked by severity (the worst of their findings), then onset of the
cause, then the number of findings they explain, then position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from dbgcli.findings import Finding, Severity

# Where a role sits in one training step: data, forward pass, loss, backward pass, update.
ROLE_ORDER = {
    "inputs": 0,
    "labels": 0,
    "trees": 1,
    "preactivations": 1,
    "activations": 1,
    "predictions": 2,
    "outputs": 2,
    "feature_importance": 2,
    "loss": 3,
    "gradients": 4,
    "weights": 5,
    "biases": 5,
    # The learning rate acts where the update is made: lr x gradient.
    "lr": 5,
}
_DATA = 0
# Roles of scalar series and run-wide findings: no layer order among them.
_SERIES_ROLES = frozenset({"", "loss", "lr"})
_UNPLACED = 6
_EVIDENCE_LINES = 4


@dataclass(frozen=True)
class Diagnosis:
    """A cause and the findings it explains.

    Attributes:
        title: What went wrong, e.g. "learning rate too high" (the cause rule's label).
        cause: Index of the cause in the trace's findings.
        symptoms: Indices of the findings the cause explains (directly or through others),
            in causal order.
        severity: The worst severity among the cause and its symptoms.
        evidence: A short timeline, the cause's kind of finding first, one line per kind:
            "dying ReLU in act/fc1 from step 14", "vanishing gradients in 3 tensors from
            step 15".
        fix: What usually fixes the cause (the ``Fix:`` paragraph of its rule).
    """

    title: str
    cause: int
    symptoms: tuple[int, ...]
    severity: Severity
    evidence: tuple[str, ...]
    fix: str


class Explaining(Protocol):
    """What diagnosing needs to know of a rule (a registered ``RuleSpec`` has it all)."""

    def fix(self, key: str | None = None) -> str: ...

    @property
    def named_only(self) -> frozenset[str]:
        """Keys of the rule's findings that only an ``ID:key`` entry explains."""
        ...

    def explained_by(self, key: str) -> tuple[str, ...]: ...

    def title(self, key: str) -> str: ...


class Place(NamedTuple):
    """Where a tensor sits in the computation: its role's place in a training step (data,
    forward pass, loss, backward pass, update), then its position in the trace's recording
    order (the framework hooks record layer by layer, so that is the layer order)."""

    rank: int
    recorded: int
    role: str


def place(role: str | None, recorded: int) -> Place:
    """The :class:`Place` of a tensor or series of ``role`` recorded ``recorded``-th."""
    return Place(ROLE_ORDER.get(role or "", _UNPLACED), recorded, role or "")


_NOWHERE = Place(_UNPLACED, 1 << 30, "")


def diagnose(
    findings: Sequence[Finding],
    spec_of: Callable[[str], Explaining | None],
    places: Mapping[str, Place],
    *,
    slack: int = 1,
) -> tuple[Diagnosis, ...]:
    """The ranked diagnoses of one trace's findings.

    Args:
        findings: The trace's findings; diagnoses refer to them by index.
        spec_of: The registered rule of a rule id (None for unknown ones).
        places: Where each tensor or series a finding names sits (:func:`place`).
        slack: Steps by which a cause may start after a finding it explains.
    """
    count = len(findings)
    if not count:
        return ()

    def where(index: int) -> Place:
        return places.get(findings[index].tensor or "", _NOWHERE)

    def order(index: int) -> tuple[float, Place, int, str]:
        finding = findings[index]
        onset = float("inf") if finding.first_step is None else float(finding.first_step)
        severity = (finding.severity or Severity.info).rank
        return onset, where(index), -severity, finding.rule_id

    ranked = sorted(range(count), key=order)
    rank_of = {index: rank for rank, index in enumerate(ranked)}

    def declares(cause: int, symptom: int) -> bool:
        target, source = findings[symptom], findings[cause]
        if source.rule_id == target.rule_id and (
            source.tensor == target.tensor or source.key == target.key
        ):
            # One rule seeing one tensor go wrong in two ways, or one kind of problem in
            # several tensors (dead units in three layers): one problem, first seen upstream.
            # Not a note's, though: too few samples in one mode to judge explain nothing
            # the other mode's judgement finds.
            return _graver(source) or not _graver(target)
        spec = spec_of(source.rule_id)
        if spec is None:
            return False
        wanted = spec.explained_by(source.key)
        if f"{target.rule_id}:{target.key}" in wanted or f"{target.rule}:{target.key}" in wanted:
            return True
        target_spec = spec_of(target.rule_id)
        if target_spec is not None and target.key in target_spec.named_only:
            return False
        return target.rule_id in wanted or target.rule in wanted

    def starts_in_time(cause: int, symptom: int) -> bool:
        first, then = findings[cause].first_step, findings[symptom].first_step
        if first is None or then is None or first < then:
            return True
        if first > then + slack:
            return False
        # Seen at the same time: nothing computed from the data explains the data, and a
        # layer does not explain the one before it in the same role.
        source, target = where(cause), where(symptom)
        if target.rank == _DATA and source.rank != _DATA:
            return False
        layered = source.role == target.role and source.role not in _SERIES_ROLES
        return not (layered and source.recorded > target.recorded)

    def precedes(first: int, second: int) -> bool:
        """``first`` comes before ``second`` in causal order; onsets within ``slack`` of
        each other count as simultaneous, and then the place in the computation decides."""
        a, b = findings[first].first_step, findings[second].first_step
        if a is not None and b is not None and abs(a - b) > slack:
            return a < b
        if where(first)[:1] != where(second)[:1]:
            return where(first) < where(second)
        return rank_of[first] < rank_of[second]

    parent: dict[int, int] = {}
    for symptom in ranked:
        for cause in ranked:
            if cause == symptom or not declares(cause, symptom):
                continue
            if not starts_in_time(cause, symptom):
                continue
            if declares(symptom, cause) and precedes(symptom, cause):
                continue
            parent[symptom] = cause
            break
    root = {index: _root(index, parent, rank_of) for index in range(count)}
    members: dict[int, list[int]] = {}
    for index in ranked:
        members.setdefault(root[index], []).append(index)

    diagnoses = []
    for cause, group in members.items():
        finding = findings[cause]
        spec = spec_of(finding.rule_id)
        symptoms = tuple(i for i in group if i != cause)
        severity = max((findings[i].severity or Severity.info for i in group), key=lambda s: s.rank)
        diagnoses.append(
            Diagnosis(
                title=_title(finding, spec),
                cause=cause,
                symptoms=symptoms,
                severity=severity,
                evidence=_evidence([finding, *(findings[i] for i in symptoms)], spec_of),
                fix=spec.fix(finding.key) if spec else "",
            )
        )
    diagnoses.sort(
        key=lambda d: (-d.severity.rank, order(d.cause)[0], -len(d.symptoms), rank_of[d.cause])
    )
    return tuple(diagnoses)


def causes_first(diagnoses: Sequence[Diagnosis], count: int) -> dict[int, Diagnosis | None]:
    """Every finding index of a trace (``range(count)``) with the diagnosis it belongs to, in
    the order reports lead with: the causes in rank order, then the symptoms diagnosis by
    diagnosis, then findings of no diagnosis (None: a report built without diagnoses, such as
    ``dbg compare``'s). A finding is the cause of its diagnosis when ``diagnosis.cause`` is
    its index."""
    order: dict[int, Diagnosis | None] = {d.cause: d for d in diagnoses}
    for diagnosis in diagnoses:
        order.update(dict.fromkeys(diagnosis.symptoms, diagnosis))
    order.update((index, None) for index in range(count) if index not in order)
    return order


def _graver(finding: Finding) -> bool:
    """Whether a finding is more than a note."""
    return (finding.severity or Severity.info) is not Severity.info


def _root(index: int, parent: Mapping[int, int], rank_of: Mapping[int, int]) -> int:
    """Follow explanations up; a loop (mutual declarations) ends at its first in causal order."""
    seen = [index]
    while index in parent:
        index = parent[index]
        if index in seen:
            loop = seen[seen.index(index) :]
            return min(loop, key=lambda i: rank_of[i])
        seen.append(index)
    return index


def _title(finding: Finding, spec: Explaining | None) -> str:
    """What a finding says went wrong: its rule's label for its key, or the rule's name."""
    return spec.title(finding.key) if spec else finding.rule.replace("-", " ")


def _evidence(group: list[Finding], spec_of: Callable[[str], Explaining | None]) -> tuple[str, ...]:
    """One line per kind of finding (what it names went wrong): the cause's kind first
    (``group[0]`` is the cause), then the others in causal order."""
    kinds: dict[str, list[Finding]] = {}
    for finding in group:
        kinds.setdefault(_title(finding, spec_of(finding.rule_id)), []).append(finding)
    lines = []
    for what, found in kinds.items():
        tensors = list(dict.fromkeys(f.tensor for f in found if f.tensor))
        where = ""
        if len(tensors) == 1:
            where = f" in {tensors[0]}"
        elif tensors:
            where = f" in {len(tensors)} tensors"
        starts = [f.first_step for f in found if f.first_step is not None]
        when = f" from step {min(starts)}" if starts else ""
        lines.append(f"{what}{where}{when}")
    if len(lines) > _EVIDENCE_LINES:
        lines = [*lines[: _EVIDENCE_LINES - 1], f"and {len(lines) - _EVIDENCE_LINES + 1} more"]
    return tuple(lines)
