"""Verdicts on real training runs: the calibration corpus (``bench/corpus/``), trained here.

Each test trains the corpus scenario it names (deterministic, seed 0, CPU) into tmp_path and
analyses what was recorded, through the framework integration (``hook``) and through
hand-written ``TraceWriter`` calls (``hand``), exactly as ``bench/bench_detection.py`` does
over the whole corpus.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dbgcli.analysis import Options, analyze
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import TraceReport
from dbgcli.trace.reader import open_trace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "corpus"))

from common import NAMINGS, SCENARIOS, RunSpec  # noqa: E402
from generate import load_scenarios  # noqa: E402

load_scenarios()


def train(key: str, out: Path, naming: str = "dbg", seed: int = 0) -> RunSpec:
    """Train scenario ``key`` once; its hook and hand traces land in ``out``."""
    spec = RunSpec(
        family=SCENARIOS[key].family,
        scenario=SCENARIOS[key].name,
        seed=seed,
        hook_path=out / f"{naming}.hook.h5",
        hand_path=out / f"{naming}.hand.h5",
        naming=naming,
    )
    SCENARIOS[key].train(spec)
    return spec


def report(path: Path) -> TraceReport:
    (trace,) = analyze([path], Options()).traces
    assert trace.error is None, trace.error
    return trace


def errors(trace: TraceReport) -> list[Finding]:
    return [f for f in trace.findings if f.severity is Severity.error]


@pytest.mark.parametrize("key", ["hf-bert/healthy", "hf-gpt2/healthy", "lightning-mlp/healthy"])
def test_healthy_transformer_and_lightning_runs_pass(key: str, tmp_path: Path) -> None:
    """Attention key biases without gradient, a padding embedding row, GPT-2's scaled c_proj
    initialisation, LayerNorm and warmup plus linear decay to zero: none of it is a fault."""
    spec = train(key, tmp_path)
    for path in (spec.hook_path, spec.hand_path):
        trace = report(path)
        assert errors(trace) == [], f"{path.name}: {trace.verdict}"
        assert trace.healthy, f"{path.name}: {trace.verdict}"


@pytest.mark.parametrize(
    "key",
    [
        "torch-mlp/healthy-short",
        "torch-mlp/healthy-onehot",
        "torch-vit/healthy",
        "xgboost/healthy-early-stopping",
        "hf-distilbert/healthy",
        "hf-gpt2/healthy-data",
        "torch-mlp/healthy-resumed",
        "torch-mlp/healthy-fine-tune",
        "torch-mlp/healthy-many-classes",
    ],
)
def test_healthy_runs_that_once_drew_false_alarms_pass(key: str, tmp_path: Path) -> None:
    """Shapes that real runs outside the corpus showed to fool the rules: the untrained model's
    predictions as a 40-step run's only full data tensors (DBG604), one-hot indicator inputs
    (DBG602), a cls_token and positional table initialised to zero and LayerScale's gamma
    (DBG501, DBG502), XGBoost's early stopping (DBG304), DistilBERT's q_lin/k_lin gradients
    (DBG102), a language model's token labels (DBG601, DBG604), a run resumed from a
    checkpoint, whose first loss is a trained model's (DBG301, DBG303), a fine-tune of a
    trained model without a checkpoint's step (DBG301, DBG303, whose scale its first
    predictions now set), and a 20-class model at 90-97 % accuracy with some classes under
    SageMaker's 90 % precision (DBG604)."""
    spec = train(key, tmp_path)
    for path in (spec.hook_path, spec.hand_path):
        trace = report(path)
        assert trace.healthy, f"{path.name}: {trace.verdict}"


@pytest.mark.parametrize(
    ("key", "cause"),
    [
        ("torch-mlp/frozen-everything", "DBG403"),
        ("torch-mlp/shuffled-labels", "DBG303"),
        ("torch-mlp/unshuffled-batches", "DBG605"),
        ("torch-mlp/trained-in-eval-mode", "DBG802"),
        ("torch-mlp/evaluated-in-train-mode", "DBG803"),
        ("torch-mlp/weight-decay-too-strong", "DBG504"),
        ("torch-mlp/softmax-twice", "DBG307"),
        ("torch-mlp/relu-logits", "DBG308"),
        ("torch-mlp/softmax-over-batch", "DBG309"),
        ("torch-mlp/dropout-too-strong", "DBG804"),
        ("torch-mlp/adam-eps-too-large", "DBG805"),
        ("torch-mlp/float16-adam", "DBG805"),
        ("torch-mlp/batchnorm-tiny-batch", "DBG806"),
        ("torch-mlp/warmup-restarted", "DBG503"),
        ("xgboost/learning-rate-too-low", "DBG703"),
        ("torch-mlp/zero-grad-forgotten", "DBG103"),
    ],
)
def test_faults_that_once_went_unnamed_lead_with_their_cause(
    key: str, cause: str, tmp_path: Path
) -> None:
    """A freeze that left no layer's weights training was filed as 'frozen on purpose',
    labels shuffled apart from skewed classes left the loss at their entropy, below ln C, and
    batches sorted by class were told only by the loss they make oscillate, a model that
    trained in eval mode was called healthy, as was one evaluated with its dropout on, a
    loop without zero_grad() was "learning rate too high", a weight decay that collapsed the
    layers was "underfitting", a softmax applied twice was mostly called healthy, logits
    clamped by a final ReLU were "classes the model cannot tell apart", a log-softmax over the
    batch was "overfitting", dropout of 0.9 and
    Adam's eps of 1 were "underfitting", a float16 model under a plain Adam was "NaN
    values", boosting at eta 1e-3 and a warmup restarted every epoch were healthy, and batch
    norm over batches of 2 was "learning rate too high": each run now leads with its cause."""
    spec = train(key, tmp_path)
    for path in (spec.hook_path, spec.hand_path):
        trace = report(path)
        assert trace.findings[trace.diagnoses[0].cause].rule_id == cause, trace.verdict


def verdict(trace: TraceReport) -> tuple[str, str, frozenset[str]]:
    """What a user reads first: the cause's rule and kind, and which rules found something."""
    cause = trace.findings[trace.diagnoses[0].cause]
    return cause.rule_id, cause.key, frozenset(f.rule_id for f in trace.findings)


@pytest.mark.parametrize("key", ["torch-mlp/dying-relu", "torch-mlp/lr-too-high"])
def test_one_run_named_five_ways_gets_one_verdict(key: str, tmp_path: Path) -> None:
    """dbg's own names, SageMaker's (``CrossEntropyLoss_output_0``), TensorBoard's
    (``train/loss``, no collections), Keras's (``val_loss``, ``kernel:0``) and plain
    (``layer1/grad``): the same run, the same verdict as the integration's trace."""
    verdicts = {}
    losses = []
    for naming in NAMINGS:
        spec = train(key, tmp_path, naming)
        verdicts[naming] = verdict(report(spec.hand_path))
        verdicts[f"{naming} (hook)"] = verdict(report(spec.hook_path))
        with open_trace(spec.hook_path) as trace:
            losses.append(trace.scalar("loss").values.tolist())
    # One run: it recorded the same losses every time (the scenario is deterministic).
    assert all(loss == losses[0] for loss in losses)
    assert len(set(verdicts.values())) == 1, verdicts
    assert next(iter(verdicts.values()))[0] == SCENARIOS[key].cause


def diagnosis_of(trace: TraceReport, rule_id: str) -> tuple[Finding, list[Finding]]:
    """The cause and symptoms of the diagnosis whose cause is a finding of ``rule_id``."""
    (found,) = [d for d in trace.diagnoses if trace.findings[d.cause].rule_id == rule_id]
    return trace.findings[found.cause], [trace.findings[i] for i in found.symptoms]


def test_dying_relu_explains_zero_gradients_and_frozen_weights(tmp_path: Path) -> None:
    """Hidden biases at -5: the ReLUs are dead from the first step, so no gradient reaches the
    layers below (exactly zero, ``all-zero`` on the gradients), their weights never change and
    the loss stays at chance. One diagnosis, the dead units first."""
    spec = train("torch-mlp/dying-relu", tmp_path)
    for path in (spec.hook_path, spec.hand_path):
        trace = report(path)
        assert trace.verdict.startswith("unhealthy: dying ReLU (")
        assert len(trace.problems) == 1
        cause, symptoms = diagnosis_of(trace, "DBG201")
        roles = {(f.rule_id, trace.places[f.tensor or ""].role) for f in symptoms}
        assert {("DBG401", "gradients"), ("DBG403", "weights"), ("DBG303", "loss")} <= roles
        assert all(cause.first_step <= (f.first_step or 0) + trace.slack for f in symptoms)


def test_learning_rate_too_high_explains_non_finite_values_and_exploding_gradients() -> None:
    """The bundled sample recorded with SGD at lr 8: updates of a hundred times the weights
    from step 0, gradients that explode, then NaN everywhere."""
    trace = report(ROOT / "sample_traces" / "torch_exploding.h5")
    assert trace.verdict.startswith("unhealthy: learning rate too high (")
    cause, symptoms = diagnosis_of(trace, "DBG503")
    assert (cause.key, cause.first_step) == ("too-high", 0)
    explained = {(f.rule_id, f.key) for f in symptoms}
    assert {("DBG102", "magnitude"), ("DBG102", "nonfinite"), ("DBG306", "nonfinite")} <= explained
    assert any(f.rule_id == "DBG404" for f in symptoms)
    assert len(trace.problems) == 1


def test_a_measure_hovering_at_its_threshold_is_one_finding(tmp_path: Path) -> None:
    """In the dying-ReLU run a few units of the first layer fire now and then, so its
    activations are all zero at some records and not at the next: one finding for the tensor,
    its episodes counted, spanning the first to the last."""
    spec = train("torch-mlp/dying-relu", tmp_path)
    trace = report(spec.hook_path)
    (finding,) = [f for f in trace.findings if (f.rule_id, f.tensor) == ("DBG401", "act/act1")]
    assert finding.episodes >= 2 and finding.steps >= finding.episodes
    assert finding.first_step is not None and finding.last_step is not None
    assert finding.last_step - finding.first_step > 200
    assert f"in {finding.episodes} episodes" in finding.span


def test_detection_benchmark_quick_subset(tmp_path: Path) -> None:
    """``bench_detection.py --quick`` trains seed 0 of a healthy run and two faults and
    prints the bars of the calibration and diagnosis issues, met."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_detection.py"), "--quick"]
        + ["--corpus", str(tmp_path), "--jobs", "1", "--values", "DBG201"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert "2/2 (100 %)  " in lines["induced runs flagged by their cause rule"]
    assert lines["healthy runs with an error finding"].count("0/1 (0 %)") == 2
    assert "4/4 (100 %)" in lines["cause named by the first diagnosis"]
    # --values: the dying-ReLU rule's measure on its own fault's two traces, none on the
    # healthy run's (its dead share stays under the rule's bar).
    values = {line.strip().split("  ")[0]: line for line in result.stdout.splitlines()}
    assert "2/2 traces with findings" in values["runs of its fault (DBG201)"]
    assert "no findings in 2 traces" in values["healthy runs"]
