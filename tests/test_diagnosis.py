"""Diagnoses from findings and declarations alone (dbgcli.diagnosis), and episode merging.

The rules here are stand-ins with the members diagnosing reads (what each explains, its
titles, its fix), so that every case is about the grouping, not about any rule's maths. The
same behaviour on real recorded runs is tested in test_corpus.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dbgcli.diagnosis import Place, diagnose, place
from dbgcli.findings import Finding, Severity, merge_findings


@dataclass(frozen=True)
class StandIn:
    explains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fixes: dict[str, str] = field(default_factory=dict)
    name: str = ""
    named_only: frozenset[str] = frozenset()

    def fix(self, key: str | None = None) -> str:
        return self.fixes.get(key or "", "fix it")

    def explained_by(self, key: str) -> tuple[str, ...]:
        return self.explains.get(key, self.explains.get("*", ()))

    def title(self, key: str) -> str:
        return f"{self.name} {key}".strip()


RULES = {
    # dead units explain zero gradients and a flat loss
    "DEAD": StandIn({"*": ("ZERO", "FLAT")}, name="dead units"),
    "ZERO": StandIn({"*": ("FLAT",)}, name="zero"),
    "FLAT": StandIn(name="flat loss"),
    # a rate too high and exploding gradients can each cause the other
    "RATE": StandIn({"*": ("GROW", "NAN")}, name="rate too high"),
    "GROW": StandIn({"*": ("RATE", "NAN")}, name="gradients grow"),
    "NAN": StandIn(name="nan"),
    "DATA": StandIn({"*": ("DEAD",)}, name="bad inputs"),
}

PLACES = {
    "inputs": place("inputs", 0),
    "act/1": place("activations", 1),
    "act/2": place("activations", 2),
    "loss": place("loss", 3),
    "grad/1": place("gradients", 4),
    "grad/2": place("gradients", 5),
    "lr": place("lr", 6),
    "w/1": place("weights", 7),
}


def found(rule: str, tensor: str, step: int, *, key: str = "k", severity: str = "warning"):
    return Finding(
        message=f"{rule} on {tensor}",
        tensor=tensor,
        first_step=step,
        last_step=step + 10,
        steps=11,
        key=key,
        severity=Severity(severity),
        rule_id=rule,
        rule=rule.lower(),
    )


def causes(findings: list[Finding], slack: int = 1) -> list[tuple[str, str, list[str]]]:
    """Each diagnosis as (cause rule, cause tensor, symptom rules), in rank order."""
    return [
        (
            findings[d.cause].rule_id,
            findings[d.cause].tensor or "",
            sorted(findings[i].rule_id for i in d.symptoms),
        )
        for d in diagnose(findings, RULES.get, PLACES, slack=slack)
    ]


def test_a_cause_gathers_what_it_explains_directly_and_through_others() -> None:
    findings = [
        found("FLAT", "loss", 20),
        found("ZERO", "grad/1", 15, severity="error"),
        found("DEAD", "act/1", 14),
    ]
    (diagnosis,) = diagnose(findings, RULES.get, PLACES)
    assert findings[diagnosis.cause].rule_id == "DEAD"
    assert diagnosis.severity is Severity.error  # the worst of the group, not the cause's
    assert diagnosis.title == "dead units k" and diagnosis.fix == "fix it"
    assert diagnosis.evidence == (
        "dead units k in act/1 from step 14",
        "zero k in grad/1 from step 15",
        "flat loss k in loss from step 20",
    )


def test_a_diagnosis_gives_the_fix_of_its_cause_key() -> None:
    """A rule's findings differ in what fixes them (a schedule stepped too often, a warmup too
    long): the diagnosis gives the fix for its cause's key where the rule has one."""
    rules = {**RULES, "DEAD": StandIn({"*": ("ZERO",)}, fixes={"init": "zero the biases"})}
    for key, fix in (("init", "zero the biases"), ("other", "fix it")):
        (diagnosis,) = diagnose([found("DEAD", "act/1", 14, key=key)], rules.get, PLACES)
        assert diagnosis.fix == fix, key


def test_rules_fix_their_keys_from_their_docstrings() -> None:
    """``Fix (key ``k``):`` paragraphs of a rule's docstring, else its ``Fix:`` paragraph."""
    from dbgcli.rules import REGISTRY

    REGISTRY.load()
    underfit = REGISTRY.get("DBG303")
    assert underfit.fix("held-out-at-chance").startswith("check that each label stays paired")
    assert underfit.fix("loss-high") == underfit.fix() and underfit.fix().startswith(
        "run a learning-rate range test"
    )
    schedule = REGISTRY.get("DBG503")
    assert schedule.fix("rose-until-diverged").startswith("check the schedule's factor")
    assert "'gamma'" in schedule.fix("rose-until-diverged")


def test_a_named_only_key_is_explained_only_by_rules_that_name_it() -> None:
    # FLAT's "memorised" findings are another problem than a flat loss: a bare "FLAT" in
    # DEAD's list does not cover them, "FLAT:memorised" in NAMING's does.
    rules = {
        **RULES,
        "FLAT": StandIn(name="flat loss", named_only=frozenset({"memorised"})),
        "NAMING": StandIn({"*": ("FLAT:memorised",)}, name="naming"),
    }
    flat, memorised = found("FLAT", "loss", 20), found("FLAT", "loss", 20, key="memorised")
    dead, naming = found("DEAD", "act/1", 14), found("NAMING", "inputs", 10)

    def groups(findings: list[Finding]) -> list[tuple[str, list[str]]]:
        return [
            (
                findings[d.cause].rule_id + ":" + findings[d.cause].key,
                sorted(findings[i].key for i in d.symptoms),
            )
            for d in diagnose(findings, rules.get, PLACES)
        ]

    assert groups([flat, dead]) == [("DEAD:k", ["k"])]
    assert sorted(groups([memorised, dead])) == [("DEAD:k", []), ("FLAT:memorised", [])]
    assert groups([memorised, naming]) == [("NAMING:k", ["memorised"])]


def test_a_symptom_that_starts_first_is_not_explained() -> None:
    # Zero gradients from step 5, dead units only from step 30: the units did not cause them.
    findings = [found("ZERO", "grad/1", 5), found("DEAD", "act/1", 30)]
    assert causes(findings) == [("ZERO", "grad/1", []), ("DEAD", "act/1", [])]


def test_a_cause_may_be_seen_up_to_slack_steps_late() -> None:
    findings = [found("ZERO", "grad/1", 10), found("DEAD", "act/1", 12)]
    assert causes(findings, slack=2) == [("DEAD", "act/1", ["ZERO"])]
    assert causes(findings, slack=1) == [("ZERO", "grad/1", []), ("DEAD", "act/1", [])]


def test_mutual_explanations_go_to_the_earlier_then_to_the_upstream() -> None:
    rate_first = [found("GROW", "grad/1", 2), found("RATE", "lr", 0), found("NAN", "loss", 4)]
    assert causes(rate_first) == [("RATE", "lr", ["GROW", "NAN"])]
    # Simultaneous (within slack): the gradients sit before the update in a training step.
    together = [found("RATE", "lr", 3), found("GROW", "grad/1", 3), found("NAN", "loss", 4)]
    assert causes(together) == [("GROW", "grad/1", ["NAN", "RATE"])]


def test_one_kind_of_problem_in_several_layers_is_one_diagnosis_led_upstream() -> None:
    findings = [found("DEAD", "act/2", 0), found("DEAD", "act/1", 0)]
    (diagnosis,) = diagnose(findings, RULES.get, PLACES)
    assert findings[diagnosis.cause].tensor == "act/1"
    assert diagnosis.evidence == ("dead units k in 2 tensors from step 0",)


def test_a_rules_note_leads_none_of_its_graver_findings() -> None:
    """Too few training labels to judge (a note at step 0) are no cause of the imbalance the
    evaluation labels show at step 10: that imbalance is a diagnosis of its own."""
    findings = [
        found("IMBALANCE", "labels", 0, key="too-few", severity="info"),
        found("IMBALANCE", "labels", 10, key="imbalance"),
    ]
    places = {**PLACES, "labels": place("labels", 0)}
    ranked = diagnose(findings, RULES.get, places)
    assert [(d.cause, d.symptoms) for d in ranked] == [(1, ()), (0, ())]
    # A graver finding still leads a later note.
    findings[0] = replace(findings[0], severity=Severity.warning)
    findings[1] = replace(findings[1], severity=Severity.info)
    (diagnosis,) = diagnose(findings, RULES.get, places)
    assert (diagnosis.cause, diagnosis.symptoms) == (0, (1,))


def test_nothing_computed_from_the_data_explains_the_data_at_the_same_time() -> None:
    # A (pretend) declaration that dead units explain bad inputs must not win at one onset.
    rules = {**RULES, "DEAD": StandIn({"*": ("DATA", "ZERO")}, name="dead units")}
    findings = [found("DEAD", "act/1", 0), found("DATA", "inputs", 0)]
    (diagnosis,) = diagnose(findings, rules.get, PLACES)
    assert findings[diagnosis.cause].rule_id == "DATA"


def test_ranking_severity_then_onset_then_size() -> None:
    findings = [
        found("FLAT", "loss", 0),
        found("NAN", "grad/2", 50, severity="error"),
        found("DEAD", "act/1", 10),
        found("ZERO", "grad/1", 11),
    ]
    assert [c[0] for c in causes(findings)] == ["NAN", "FLAT", "DEAD"]


def test_unknown_rules_stand_alone_and_places_default_to_last() -> None:
    findings = [found("PLUGIN", "somewhere", 0), found("DEAD", "act/1", 0)]
    assert sorted(c[0] for c in causes(findings)) == ["DEAD", "PLUGIN"]
    assert place(None, 3) == Place(6, 3, "")
    assert diagnose([], RULES.get, PLACES) == ()


def test_merged_episodes_keep_the_worst_value_and_the_whole_span() -> None:
    def episode(first: int, value: float, threshold: float = 1e-7) -> Finding:
        return Finding(
            message=f"fell to {value}",
            tensor="grad/fc1.weight",
            first_step=first,
            last_step=first + 4,
            steps=5,
            value=value,
            threshold=threshold,
            key="vanished",
            rule_id="DBG101",
            severity=Severity.warning,
        )

    other = replace(episode(0, 1e-9), tensor="grad/fc2.weight")
    merged = merge_findings([episode(10, 5e-8), other, episode(40, 1e-10), episode(80, 2e-8)])
    assert [f.tensor for f in merged] == ["grad/fc1.weight", "grad/fc2.weight"]
    first = merged[0]
    assert (first.first_step, first.last_step, first.steps, first.episodes) == (10, 84, 15, 3)
    # Vanishing violates below the threshold: the smallest value is the worst.
    assert first.value == 1e-10 and first.message == "fell to 1e-10"
    # Growth violates above it: the largest.
    grown = merge_findings([episode(0, 2e3, 1e3), episode(9, 9e3, 1e3), episode(20, 4e3, 1e3)])
    assert grown[0].value == 9e3 and grown[0].span == "steps 0-24 (15 records in 3 episodes)"
