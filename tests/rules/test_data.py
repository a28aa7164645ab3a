"""DBG601 class-imbalance, DBG602 input-not-normalized, DBG603 token-ratio, DBG604 confusion."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from dbgcli.findings import Severity
from dbgcli.report.model import RuleStatus
from dbgcli.rules.data import class_ids

from .helpers import analyze_path, keyed, run_rule

SAMPLES = Path(__file__).resolve().parents[2] / "sample_traces"


def scores(predicted: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Softmax probabilities whose argmax is ``predicted``."""
    logits = rng.normal(0.0, 0.5, size=(len(predicted), classes))
    logits[np.arange(len(predicted)), predicted] += 4.0
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def classifier(
    accuracy: list[float],
    *,
    classes: int = 4,
    batch: int = 64,
    seed: int = 0,
    mode: str = "train",
    steps: list[int] | None = None,
) -> dict[str, dict]:
    """Labels and probability predictions, one record per step, right with the given accuracy."""
    rng = np.random.default_rng(seed)
    labels, predictions = [], []
    for share in accuracy:
        truth = rng.integers(0, classes, size=batch)
        wrong = rng.random(batch) >= share
        guess = np.where(wrong, (truth + rng.integers(1, classes, size=batch)) % classes, truth)
        labels.append(truth)
        predictions.append(scores(guess, classes, rng))
    steps = steps if steps is not None else list(range(len(accuracy)))
    return {
        "labels": {"values": labels, "steps": steps, "mode": mode, "collection": "labels"},
        "predictions": {
            "values": predictions,
            "steps": steps,
            "mode": mode,
            "collection": "predictions",
        },
    }


def learning_curve(steps: int) -> list[float]:
    """Accuracy of a healthy run: from chance (0.25) to 0.99."""
    return [0.25 + 0.74 * (1 - math.exp(-step / (steps / 6))) for step in range(steps)]


# -- class ids ------------------------------------------------------------------------------------


def test_class_ids_follow_the_recording_conventions() -> None:
    ids, width = class_ids(np.array([[0, 2, -100]]))
    assert ids.tolist() == [[0, 2, -1]] and width is None
    ids, width = class_ids(np.array([[[0.1, 0.9], [np.nan, 0.2]]], dtype=np.float32))
    assert ids.tolist() == [[1, -1]] and width == 2
    ids, width = class_ids(np.array([[[0, 0, 1], [1, 0, 0]]]))  # one-hot integers
    assert ids.tolist() == [[2, 0]] and width == 3
    ids, width = class_ids(np.array([[0.2, 0.7]]))  # sigmoid probabilities
    assert ids.tolist() == [[0, 1]] and width == 2
    ids, width = class_ids(np.array([[-2.5, 3.5]]))  # logits
    assert ids.tolist() == [[0, 1]] and width == 2
    ids, width = class_ids(np.array([[3.0, 1.0]]))  # whole numbers are class ids
    assert ids.tolist() == [[3, 1]] and width is None


def test_segmentation_scores_are_read_along_the_axis_the_labels_lack(make_trace) -> None:
    """A segmentation records logits ``(N, 3, 32, 32)`` against labels ``(N, 32, 32)``: the
    classes are axis 1, not the image width. Three balanced, well-predicted classes pass the
    class rules; read along the width they were 32 classes, 29 of them never seen."""
    rng = np.random.default_rng(0)
    labels, predictions = [], []
    for _ in range(10):
        truth = rng.integers(0, 3, size=(4, 32, 32))
        logits = rng.normal(0.0, 0.5, size=(4, 3, 32, 32))
        logits += 4.0 * (np.arange(3)[None, :, None, None] == truth[:, None])
        labels.append(truth)
        predictions.append(logits.astype(np.float32))
    path = make_trace(
        tensors={
            "labels": {"values": labels, "collection": "labels"},
            "predictions": {"values": predictions, "collection": "predictions"},
        }
    )
    for rule_id in ("DBG601", "DBG604"):
        result = run_rule(path, rule_id)
        assert result.status is RuleStatus.passed, (result.reason, result.findings)
    assert class_ids(np.stack(predictions[:1]), class_axis=1)[0].tolist() == [
        labels[0].ravel().tolist()
    ]


# -- DBG601 class-imbalance -----------------------------------------------------------------------


def test_class_imbalance_2019_case_fires_at_step_3(make_trace) -> None:
    # SageMaker Debugger's test_class_imbalance.py: one labels tensor of 1000 values at step 3.
    labels = np.concatenate([np.zeros(990, dtype=np.int64), np.ones(10, dtype=np.int64)])
    path = make_trace(
        tensors={"labels_0": {"values": [labels], "steps": [3], "collection": "labels"}}
    )
    result = run_rule(path, "DBG601")
    (finding,) = keyed(result, "imbalance")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "labels_0",
        3,
        3,
        1,
    )
    assert finding.value == pytest.approx(99.0) and finding.threshold == 10.0
    assert finding.severity is Severity.warning
    assert "1000 labels in 1 record" in finding.message


@pytest.mark.parametrize(
    ("weights", "key", "severity"),
    [
        ([1.0, 99.0], "compensated", Severity.info),  # inverse frequencies
        ([1.0, 9.0], "compensated", Severity.info),  # halfway there is still compensation
        ([99.0, 1.0], "imbalance", Severity.warning),  # frequencies, written for inverses
        ("a balancing sampler", "compensated", Severity.info),  # no weights to check
    ],
)
def test_class_imbalance_is_compensated_only_by_weights_that_even_the_classes(
    make_trace, weights: object, key: str, severity: Severity
) -> None:
    labels = np.concatenate([np.zeros(990, dtype=np.int64), np.ones(10, dtype=np.int64)])
    path = make_trace(
        tensors={"labels": {"values": [labels], "collection": "labels"}},
        metadata={"class_weighting": {"CrossEntropyLoss.weight": weights}},
    )
    (finding,) = keyed(run_rule(path, "DBG601"), key)
    assert finding.severity is severity
    if key == "imbalance":
        assert finding.message.endswith(
            "do not compensate it: counts times weights have a ratio of 9.8e+03"
        )


@pytest.mark.parametrize(
    ("weights", "found"),
    [
        ([10.0, 1.0], True),  # the larger class weighted: 9:1 becomes 90:1
        ([1.0, 9.0], False),  # inverse frequencies: even
        ([1.0, 50.0], False),  # the smaller class over-weighted to 50:9, under the bar
        ([1.0, 200.0], True),  # ... and to 200:9, over it
    ],
)
def test_class_weights_that_unbalance_labels_under_the_bar_are_an_imbalance(
    make_trace, weights: list[float], found: bool
) -> None:
    labels = np.concatenate([np.zeros(900, dtype=np.int64), np.ones(100, dtype=np.int64)])
    path = make_trace(
        tensors={"labels": {"values": [labels], "collection": "labels"}},
        metadata={"class_weighting": {"CrossEntropyLoss.weight": weights}},
    )
    findings = keyed(run_rule(path, "DBG601"), "imbalance")
    assert bool(findings) is found
    if found:
        (finding,) = findings
        assert finding.severity is Severity.warning and finding.value > 10
        assert "ratio 9, but the run's class weights" in finding.message


def test_class_weights_of_the_training_loss_leave_a_balanced_held_out_set_alone(
    make_trace,
) -> None:
    """Weights 1:12 even out training labels of 12:1; the held-out labels are balanced, and
    scored unweighted: no imbalance there, whatever the weights would make of its counts."""
    skewed = np.r_[np.zeros(1200, dtype=np.int64), np.ones(100, dtype=np.int64)]
    balanced = np.r_[np.zeros(300, dtype=np.int64), np.ones(300, dtype=np.int64)]
    path = make_trace(
        tensors={
            "labels": {
                "values": [skewed, balanced],
                "steps": [0, 0],
                "modes": ["train", "eval"],
                "collection": "labels",
            }
        },
        metadata={"class_weighting": {"CrossEntropyLoss.weight": [1.0, 12.0]}},
    )
    findings = run_rule(path, "DBG601").findings
    assert [(f.key, f.mode) for f in findings] == [("compensated", "train")]


def train_in_batches(path: Path, model: Any, loss_fn: Any, x: Any, y: Any) -> None:
    """200 Adam steps (lr 0.01) over ``x`` and ``y`` in turn in batches of 256, recording the
    loss every step, and the labels and the model's outputs in full every 10th."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with attach(model, optimizer, path) as hook:
        for step in range(200):
            start = 256 * (step % (len(y) // 256))
            optimizer.zero_grad()
            outputs = model(x[start : start + 256])
            loss = loss_fn(outputs, y[start : start + 256])
            hook.record_loss(loss)
            if step % 10 == 0:
                hook.record(labels=y[start : start + 256], predictions=outputs.detach(), raw=True)
            loss.backward()
            optimizer.step()


@pytest.mark.parametrize("pos_weight", [19.0, 1.0])
def test_a_pos_weight_read_off_the_loss_compensates_the_imbalance(
    tmp_path: Path, pos_weight: float
) -> None:
    """5 % positives under BCEWithLogitsLoss(pos_weight=19): the loss, labels and logits give
    the weight ((L - B) / A, the same at every step), so the imbalance is compensated (a
    note) and the weighted loss is not judged against the labels' entropy. Unweighted, the
    imbalance is a warning."""
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    x = torch.randn(4096, 8)
    y = (x[:, 0] > 1.645).float()  # 5 % positives
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    path = tmp_path / "weighted.h5"
    train_in_batches(path, torch.nn.Sequential(model, torch.nn.Flatten(0)), loss_fn, x, y)
    (imbalance,) = keyed(
        run_rule(path, "DBG601"), "compensated" if pos_weight != 1 else "imbalance"
    )
    if pos_weight != 1:
        assert imbalance.severity is Severity.info
        assert "weighting its positives 19x (read off the loss)" in imbalance.message
        assert not keyed(run_rule(path, "DBG303"), "at-chance")
    else:
        assert imbalance.severity is not Severity.info


@pytest.mark.parametrize(
    ("weights", "smoothing"), [([1.0, 8.5, 17.0], 0.0), ([1.0, 1.0, 1.0], 0.0), (None, 0.1)]
)
def test_class_weights_read_off_the_loss_compensate_the_imbalance(
    tmp_path: Path, weights: list[float] | None, smoothing: float
) -> None:
    """85/10/5 % classes under CrossEntropyLoss(weight=[1, 8.5, 17]): the loss, labels and
    logits of 20 steps give the weights (the weighted mean's equations), so the imbalance is
    compensated (a note) and the weighted loss is not judged against the labels' entropy.
    Equal weights, or label smoothing in an unweighted loss, are no class weights: the
    imbalance stays a warning."""
    torch = pytest.importorskip("torch")

    generator = torch.Generator().manual_seed(0)
    y = torch.multinomial(torch.tensor([0.85, 0.1, 0.05]), 5120, True, generator=generator)
    x = torch.randn(5120, 8, generator=generator) + 1.5 * torch.nn.functional.one_hot(y, 8)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=None if weights is None else torch.tensor(weights), label_smoothing=smoothing
    )
    path = tmp_path / "weighted.h5"
    train_in_batches(path, model, loss_fn, x, y)
    if weights is not None and weights[-1] != 1:
        (imbalance,) = keyed(run_rule(path, "DBG601"), "compensated")
        assert imbalance.severity is Severity.info
        assert "weighting its classes 0: 1, 1: 8.5, 2: 17 (read off the loss)" in (
            imbalance.message
        )
        assert not keyed(run_rule(path, "DBG303"), "at-chance")
    else:
        (imbalance,) = keyed(run_rule(path, "DBG601"), "imbalance")
        assert imbalance.severity is not Severity.info


@pytest.mark.parametrize("weighted", [True, False])
def test_class_weights_of_a_per_pixel_loss_compensate_the_imbalance(
    tmp_path: Path, weighted: bool
) -> None:
    """A segmentation's cross-entropy over logits (N, 3, 8, 8) and labels (N, 8, 8), 95 %
    background, weighted [1, 30, 45]: the weights are read off the loss pixel by pixel, as a
    classifier's are row by row."""
    torch = pytest.importorskip("torch")

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 1, 8, 8, generator=generator)
    y = torch.zeros(2048, 8, 8, dtype=torch.long)
    y[x[:, 0] > 1.9], y[x[:, 0] < -2.05] = 1, 2
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)
    )
    weight = torch.tensor([1.0, 30.0, 45.0]) if weighted else None
    path = tmp_path / "segmentation.h5"
    train_in_batches(path, model, torch.nn.CrossEntropyLoss(weight=weight), x, y)
    (imbalance,) = keyed(run_rule(path, "DBG601"), "compensated" if weighted else "imbalance")
    if weighted:
        assert "weighting its classes 0: 1, 1: 30, 2: 45 (read off the loss)" in imbalance.message
    else:
        assert imbalance.severity is Severity.warning


def test_near_uniform_logits_beside_another_batchs_loss_are_no_class_weights(
    tmp_path: Path,
) -> None:
    """An unweighted cross-entropy on 93/7 % labels that does not learn (lr 1e-7, logits near
    zero) with gradient accumulation: the recorded loss is the mean of four micro-batches,
    the labels and logits the first one's. Every sample's loss is about ln 2, which any
    weights fit within 1 %, but equal weights fit it as well: the imbalance stays a
    warning."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    with torch.no_grad():
        model[2].weight.mul_(0.01)
        model[2].bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-7)
    path = tmp_path / "accumulated.h5"
    with attach(model, optimizer, path) as hook:
        for step in range(200):
            optimizer.zero_grad()
            total = torch.zeros(())
            for micro in range(4):
                y = torch.multinomial(torch.tensor([0.93, 0.07]), 32, True, generator=generator)
                logits = model(torch.randn(32, 8, generator=generator))
                loss = torch.nn.functional.cross_entropy(logits, y) / 4
                loss.backward()
                total += loss.detach()
                if micro == 0 and step % 5 == 0:
                    hook.record(labels=y, predictions=logits.detach(), raw=True)
            hook.record_loss(total)
            optimizer.step()
    (imbalance,) = keyed(run_rule(path, "DBG601"), "imbalance")
    assert imbalance.severity is Severity.warning


def test_class_imbalance_quiet_on_balanced_labels_and_tunable(make_trace) -> None:
    path = make_trace(tensors=classifier(learning_curve(40)))
    assert run_rule(path, "class-imbalance").status is RuleStatus.passed
    (finding,) = keyed(run_rule(path, "DBG601", threshold_imbalance=1.0), "imbalance")
    # The whole run is skewed, although 500 labels are reached only in the 8th record.
    assert (finding.first_step, finding.last_step, finding.steps) == (0, 39, 40)
    assert 1.0 < finding.value < 1.5


def test_class_imbalance_missing_class_is_infinitely_rare_when_classes_are_known(
    make_trace,
) -> None:
    tensors = classifier([0.9] * 20)
    for values in tensors["labels"]["values"]:
        values[values == 3] = 0
    (finding,) = keyed(run_rule(make_trace(tensors=tensors), "DBG601"), "imbalance")
    assert (
        finding.value == math.inf
        and "1 of 4 classes never appear (3; classes the model scores but never sees"
        in (finding.message)
    )
    # Plain integer labels do not say how many classes there are: only those seen count.
    del tensors["predictions"]
    assert not keyed(run_rule(make_trace(tensors=tensors), "DBG601"), "imbalance")


def test_tokens_no_label_holds_are_a_note(make_trace) -> None:
    """A sequence model scores its whole vocabulary at every position, padding and
    start-of-sequence tokens included, which are never targets: only the predictions' width
    counts them, and no labels of any mode hold them. The 10 tokens that are targets are
    balanced: a note on the two outputs, no imbalance. One label per sample keeps the
    imbalance (above), and so do one-hot labels, which declare their classes themselves."""
    tensors = classifier([0.9] * 20, classes=12)
    for values in tensors["labels"]["values"]:
        values[values < 2] += 2
    per_position = {
        tag: {**spec, "values": [v.reshape(8, 8, *v.shape[1:]) for v in spec["values"]]}
        for tag, spec in tensors.items()
    }
    result = run_rule(make_trace(tensors=per_position), "DBG601")
    (note,) = result.findings
    assert (note.key, note.severity, note.extra) == (
        "unlabelled-outputs",
        Severity.info,
        {"unlabelled_classes": [0, 1]},
    )
    assert "2 of the 12 classes the model scores never appear in any labels (0, 1)" in (
        note.message
    )
    assert keyed(run_rule(make_trace(tensors=tensors), "DBG601"), "imbalance")
    tensors["labels"]["values"] = [np.eye(12)[values] for values in tensors["labels"]["values"]]
    (finding,) = keyed(run_rule(make_trace(tensors=tensors), "DBG601"), "imbalance")
    assert finding.value == math.inf


def test_class_rules_skip_multi_label_indicators(make_trace) -> None:
    """Multi-hot targets (BCE over 8 labels, several per sample, some rare) are no classes:
    their argmax is not the sample's class, nor are their 0s and 1s two classes."""
    rng = np.random.default_rng(48)
    rates = np.array([0.6, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.005])
    for dtype in (np.float32, np.int64):
        targets = [(rng.random((64, 8)) < rates).astype(dtype) for _ in range(20)]
        logits = [rng.normal(size=(64, 8)).astype(np.float32) for _ in range(20)]
        path = make_trace(
            tensors={
                "labels": {"values": targets, "collection": "labels"},
                "predictions": {"values": logits, "collection": "predictions"},
            }
        )
        for rule_id in ("DBG601", "DBG604", "DBG605"):
            result = run_rule(path, rule_id)
            assert result.status is RuleStatus.skipped, rule_id
            assert result.reason == (
                "the labels are multi-label indicators (several classes per sample), not classes"
            )
    # One-hot targets are one class per sample, as before.
    onehot = [np.eye(8, dtype=np.float32)[rng.integers(0, 8, size=64)] for _ in range(20)]
    path = make_trace(tensors={"labels": {"values": onehot, "collection": "labels"}})
    assert run_rule(path, "DBG601").status is not RuleStatus.skipped


def test_class_rules_skip_regression_targets(make_trace) -> None:
    """Targets around 1000 that are not whole numbers are a regression's: cut at zero they made
    two "classes", one never seen, and a class imbalance on a healthy run; so are shares in
    [0, 1] of many values. Soft targets of a binary classifier, two values in [0, 1], are
    still judged as its two classes."""
    rng = np.random.default_rng(3)
    targets = [(1000 + 5 * rng.normal(size=64)).astype(np.float32) for _ in range(20)]
    predictions = [(t + rng.normal(size=64)).astype(np.float32) for t in targets]
    path = make_trace(
        tensors={
            "labels": {"values": targets, "collection": "labels"},
            "predictions": {"values": predictions, "collection": "predictions"},
        }
    )
    for rule_id in ("DBG601", "DBG604", "DBG605"):
        result = run_rule(path, rule_id)
        assert result.status is RuleStatus.skipped, rule_id
        assert "the targets of a regression" in result.reason
    shares = [rng.beta(2, 5, size=64).astype(np.float32) for _ in range(20)]  # in [0, 1]
    path = make_trace(tensors={"labels": {"values": shares, "collection": "labels"}})
    assert "the targets of a regression" in run_rule(path, "DBG601").reason
    soft = [np.where(rng.random(64) < 0.05, 0.9, 0.1).astype(np.float32) for _ in range(20)]
    path = make_trace(tensors={"labels": {"values": soft, "collection": "labels"}})
    assert keyed(run_rule(path, "DBG601"), "imbalance")


def test_class_rules_skip_a_contrastive_loss_in_batch_targets(make_trace) -> None:
    """CLIP's InfoNCE targets: each batch's labels are 0 .. B-1 once each (B = 64 in training,
    256 in evaluation). They index the batch, they are no classes: 192 "classes" that
    training never saw were a class imbalance on a healthy run. Labels that are classes and
    happen to cover 0 .. B-1 in one batch do not pass for that."""
    rng = np.random.default_rng(5)
    train = [rng.permutation(64) for _ in range(10)]
    evaluation = [rng.permutation(256) for _ in range(2)]
    path = make_trace(
        tensors=modes(
            {
                "labels": {
                    "values": train,
                    "steps": list(range(10)),
                    "mode": "train",
                    "collection": "labels",
                }
            },
            {
                "labels": {
                    "values": evaluation,
                    "steps": [4, 9],
                    "mode": "eval",
                    "collection": "labels",
                }
            },
        )
    )
    for rule_id in ("DBG601", "DBG605"):
        result = run_rule(path, rule_id)
        assert result.status is RuleStatus.skipped, rule_id
        assert "the indices of each sample's match within its batch" in result.reason
    classes = [rng.permutation(64)] + [rng.integers(0, 64, size=64) for _ in range(9)]
    path = make_trace(tensors={"labels": {"values": classes, "collection": "labels"}})
    assert run_rule(path, "DBG601").status is not RuleStatus.skipped


def test_class_imbalance_judges_modes_apart(make_trace) -> None:
    rng = np.random.default_rng(4)
    train = [rng.integers(0, 3, size=64) for _ in range(10)]
    skewed = [np.where(rng.random(64) < 0.97, 0, 1) for _ in range(10)]
    steps = list(range(10))
    path = make_trace(
        tensors=modes(
            {"labels": {"values": train, "steps": steps, "mode": "train", "collection": "labels"}},
            {"labels": {"values": skewed, "steps": steps, "mode": "eval", "collection": "labels"}},
        )
    )
    (finding,) = keyed(run_rule(path, "DBG601"), "imbalance")
    assert finding.mode == "eval" and finding.value > 10


def test_misprediction_judges_the_model_training_leaves(make_trace) -> None:
    # An untrained start mispredicts every class; SageMaker's accumulation from step 0 would fire.
    start = classifier([0.0] * 10 + [0.98] * 30, seed=1)
    assert not keyed(run_rule(make_trace(tensors=start), "DBG601"), "mispredicted")
    # A class the model ends up never getting right.
    tensors = classifier([0.98] * 40, seed=2)
    rng = np.random.default_rng(3)
    for step in range(30, 40):
        truth = tensors["labels"]["values"][step]
        guess = tensors["predictions"]["values"][step].argmax(axis=1)
        guess[truth == 2] = 0
        tensors["predictions"]["values"][step] = scores(guess, 4, rng)
    path = make_trace(tensors=tensors)
    (finding,) = keyed(run_rule(path, "DBG601"), "mispredicted")
    # The latest 500 labelled predictions: the last 8 records of 64.
    assert (finding.first_step, finding.last_step, finding.steps) == (32, 39, 8)
    assert finding.value == 1.0 and finding.message.startswith("classes mostly mispredicted")
    assert "class 2 100%" in finding.message
    assert (finding.tensor, finding.extra["labels"]) == ("predictions", "labels")
    assert not keyed(run_rule(path, "DBG601", threshold_misprediction=1.0), "mispredicted")


def test_misprediction_needs_evidence_and_a_trained_model(make_trace) -> None:
    # 100 classes over 1,000 samples: class 7's 5 samples, 4 mispredicted, could be chance;
    # class 8's 100, 89 mispredicted, are not.
    counts = [5 if k == 7 else 100 if k == 8 else 9 for k in range(100)]
    labels, predicted = confused(counts, {(7, 0): 0.8, (8, 9): 0.89}, seed=45)
    path = ids_trace(make_trace, labels, predicted)
    (finding,) = keyed(run_rule(path, "DBG601", samples=500), "mispredicted")
    assert finding.extra["shares"] == {8: pytest.approx(0.89)}
    assert "surely > 70% of their samples): class 8 89% of 100" in finding.message
    # The same predictions as the only ones of a run's first half: an untrained model's.
    late = classifier([0.0] * 10, seed=46, steps=list(range(10)))
    scalars = {"loss": np.linspace(2.0, 0.1, 100)}
    assert not keyed(run_rule(make_trace(scalars=scalars, tensors=late), "DBG601"), "mispredicted")


def test_an_imbalance_explains_its_rare_classes_mispredicted(make_trace) -> None:
    """The rare classes of skewed labels, mostly predicted as the frequent one: one problem,
    the imbalance (the misprediction is a finding about the predictions, the imbalance one
    about the labels)."""
    labels, predicted = confused([900, 50, 50], {(1, 0): 0.9, (2, 0): 0.9}, seed=49)
    path = ids_trace(make_trace, labels, predicted)
    for select in (("DBG601",), ("DBG601", "DBG604")):
        report = analyze_path(path, select=select)
        (diagnosis,) = report.problems
        assert report.findings[diagnosis.cause].key == "imbalance"
        found = {(report.findings[i].rule_id, report.findings[i].key) for i in diagnosis.symptoms}
        assert ("DBG601", "mispredicted") in found


def test_classes_the_model_cannot_tell_apart_explain_their_misprediction(make_trace) -> None:
    """Two balanced classes that look alike are mostly mispredicted: not rare classes to
    resample, but a pair the model cannot tell apart."""
    labels, predicted = confused([300] * 4, {(2, 3): 0.8, (3, 2): 0.2}, seed=47)
    report = analyze_path(ids_trace(make_trace, labels, predicted), select=("DBG601", "DBG604"))
    (diagnosis,) = report.problems
    assert report.findings[diagnosis.cause].key == "indistinct"
    symptoms = {(report.findings[i].rule_id, report.findings[i].key) for i in diagnosis.symptoms}
    assert ("DBG601", "mispredicted") in symptoms


def test_classes_a_model_that_learned_nothing_mispredicts_are_its_symptom(make_trace) -> None:
    """Balanced classes, a model that predicts class 0 for everything and a loss at ln 4:
    the mispredicted classes are no imbalance to resample but the underfitting's symptom."""
    rng = np.random.default_rng(0)
    steps = list(range(0, 200, 10))
    labels = [rng.integers(0, 4, size=64) for _ in steps]
    constant = [scores(np.zeros(64, dtype=np.int64), 4, rng) for _ in steps]
    path = make_trace(
        scalars={"loss": list(np.log(4) + rng.normal(0, 0.01, 200))},
        tensors={
            "labels": {"values": labels, "steps": steps, "collection": "labels"},
            "predictions": {"values": constant, "steps": steps, "collection": "predictions"},
        },
    )
    report = analyze_path(path, select=("DBG303", "DBG601", "DBG604"))
    (diagnosis,) = report.problems
    assert report.findings[diagnosis.cause].rule_id == "DBG303"
    symptoms = {(report.findings[i].rule_id, report.findings[i].key) for i in diagnosis.symptoms}
    assert ("DBG601", "mispredicted") in symptoms


def test_class_imbalance_too_few_labels_is_skipped_with_the_reason(make_trace) -> None:
    rng = np.random.default_rng(5)
    labels = [np.where(rng.random(64) < 0.95, 0, 1) for _ in range(3)]
    path = make_trace(tensors={"labels": {"values": labels, "collection": "labels"}})
    result = run_rule(path, "DBG601")
    assert result.status is RuleStatus.skipped
    assert (
        "labels (train): only 192 labels in 3 records" in result.reason
        and "< samples 500" in result.reason
    )
    (finding,) = keyed(run_rule(path, "DBG601", samples=128), "imbalance")
    assert (finding.first_step, finding.last_step) == (0, 2)


def test_class_imbalance_too_few_in_one_stream_is_an_info_hint(make_trace) -> None:
    rng = np.random.default_rng(5)
    train = [np.where(rng.random(64) < 0.95, 0, 1) for _ in range(10)]
    path = make_trace(
        tensors={
            "labels": [
                {"values": train, "collection": "labels"},
                {
                    "values": [np.arange(4) % 2],
                    "steps": [9],
                    "mode": "eval",
                    "collection": "labels",
                },
            ]
        }
    )
    result = run_rule(path, "DBG601")
    (hint,) = keyed(result, "too-few-samples")
    assert hint.severity is Severity.info and hint.mode == "eval" and hint.value == 4
    assert keyed(result, "imbalance")[0].mode == "train"


def test_class_imbalance_skips_without_full_labels(make_trace) -> None:
    assert run_rule(make_trace(scalars={"loss": [1.0, 0.5]}), "DBG601").reason == (
        "no full tensors of labels (role 'labels': labels, targets, y...)"
    )
    path = make_trace(
        tensors={"labels": {"values": [np.arange(4)] * 3, "collection": "labels"}}, raw_every=0
    )
    result = run_rule(path, "DBG601")
    assert (
        result.status is RuleStatus.skipped
        and result.reason == "no full tensors of labels (role 'labels': labels, targets, y...)"
    )


# -- DBG602 input-not-normalized ------------------------------------------------------------------


def images(
    steps: int,
    *,
    shift: tuple[float, ...] = (0.0, 0.0, 0.0),
    scale: tuple[float, ...] = (1.0, 1.0, 1.0),
):
    rng = np.random.default_rng(6)
    values = []
    for _ in range(steps):
        batch = rng.normal(0.0, 1.0, size=(16, 3, 8, 8))
        batch = batch * np.array(scale)[None, :, None, None] + np.array(shift)[None, :, None, None]
        values.append(batch.astype(np.float32))
    return {"inputs": {"values": values, "collection": "inputs"}}


def test_input_not_normalized_fires_on_an_off_centre_channel(make_trace) -> None:
    path = make_trace(tensors=images(40, shift=(0.0, 0.6, 0.0)))
    result = run_rule(path, "DBG602")
    (finding,) = keyed(result, "mean")
    # Every record: the channel was off-centre from the first batch on (500 images, the
    # samples needed to say so, are reached in the 32nd record of 16).
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "inputs",
        0,
        39,
        40,
    )
    assert finding.value == pytest.approx(0.6, abs=0.02) and finding.threshold == 0.2
    assert (
        "1 of 3 channels off-centre" in finding.message and "channel 1 mean 0.59" in finding.message
    )
    assert "640 samples in 40 records" in finding.message
    assert not keyed(result, "std")
    assert run_rule(path, "DBG602", threshold_mean=0.7).status is RuleStatus.passed


def test_input_not_normalized_quiet_on_standardised_images(make_trace) -> None:
    assert (
        run_rule(make_trace(tensors=images(40)), "input-not-normalized").status is RuleStatus.passed
    )


def test_input_not_normalized_std_of_features(make_trace) -> None:
    rng = np.random.default_rng(7)
    features = []
    for _ in range(20):
        batch = rng.normal(0.0, 1.0, size=(32, 6))
        batch -= batch.mean(axis=0)
        batch[:, 2] *= 10.0
        batch[:, 4] = 1.5  # constant: nothing to standardise
        features.append(batch.astype(np.float32))
    path = make_trace(tensors={"x": {"values": features, "collection": "inputs"}})
    result = run_rule(path, "DBG602")
    (finding,) = keyed(result, "std")
    assert finding.value == pytest.approx(10.0, rel=0.05) and finding.threshold == 3.0
    assert "1 of 5 features badly scaled" in finding.message and "feature 2 std" in finding.message
    assert not keyed(result, "mean")
    assert run_rule(path, "DBG602", max_std_ratio=20.0).status is RuleStatus.passed


def test_input_not_normalized_leaves_out_batches_unlike_the_rest(make_trace) -> None:
    """Sixty standardised batches, three of them corrupted (scaled by 300): pooled, every
    feature reads a std near 70; they are batches unlike the data set, left out and counted.
    The same batches all scaled by 50 are the data set's scale, and badly scaled."""
    rng = np.random.default_rng(8)
    batches = [rng.normal(0.0, 1.0, size=(128, 20)).astype(np.float32) for _ in range(60)]
    corrupted = [b * 300 if i in (15, 30, 42) else b for i, b in enumerate(batches)]
    result = run_rule(
        make_trace(tensors={"x": {"values": corrupted, "collection": "inputs"}}), "DBG602"
    )
    assert result.status is RuleStatus.passed
    scaled = [b * 50 for b in batches]
    (finding,) = keyed(
        run_rule(make_trace(tensors={"x": {"values": scaled, "collection": "inputs"}}), "DBG602"),
        "std",
    )
    assert finding.value == pytest.approx(50.0, rel=0.05)
    mixed = [b * 50 if i != 15 else b * 50 * 300 for i, b in enumerate(batches)]
    (finding,) = keyed(
        run_rule(make_trace(tensors={"x": {"values": mixed, "collection": "inputs"}}), "DBG602"),
        "std",
    )
    assert "(1 record left out, whose scale is over 9x off the median record's" in finding.message


def test_input_not_normalized_judges_a_wide_feature_centred_by_its_own_spread(make_trace) -> None:
    """A feature of std 1000 around -2.4 is badly scaled but centred: once divided by its std
    its mean is 0.002. One of std 5 around 50 stays off-centre once scaled (10 stds)."""
    rng = np.random.default_rng(8)
    features = []
    for _ in range(20):
        batch = rng.normal(0.0, 1.0, size=(32, 4))
        batch -= batch.mean(axis=0)
        batch[:, 1] = batch[:, 1] * 1000.0 - 2.4
        batch[:, 3] = batch[:, 3] * 5.0 + 50.0
        features.append(batch.astype(np.float32))
    result = run_rule(
        make_trace(tensors={"x": {"values": features, "collection": "inputs"}}), "DBG602"
    )
    (mean,) = keyed(result, "mean")
    assert list(mean.extra["means"]) == [3]
    assert "1 of 4 features off-centre (|mean| > 0.2 x its std where above 1)" in mean.message
    # The bar the worst feature was held to: 0.2 x its std of 5.
    assert mean.threshold == pytest.approx(1.0, rel=0.05)
    (scale,) = keyed(result, "std")
    assert set(scale.extra["stds"]) == {1, 3}


def test_input_not_normalized_leaves_indicator_features_alone(make_trace) -> None:
    # Two standardised numeric features beside a one-hot category of three levels (about 20,
    # 30 and 50 % of the rows: means 0.2 to 0.5, stds 0.4 to 0.5) and a rare binary flag; the
    # last feature is a count left in raw units (0 to 3), which is not an indicator.
    rng = np.random.default_rng(17)
    features = []
    for _ in range(20):
        numeric = rng.normal(0.0, 1.0, size=(32, 2))
        category = np.eye(3)[rng.choice(3, size=32, p=[0.2, 0.3, 0.5])]
        flag = (rng.random((32, 1)) < 0.03).astype(float)
        counts = rng.integers(0, 4, size=(32, 1)).astype(float) * 3
        features.append(np.hstack([numeric, category, flag, counts]).astype(np.float32))
    path = make_trace(tensors={"x": {"values": features, "collection": "inputs"}})
    result = run_rule(path, "DBG602")
    (mean,) = keyed(result, "mean")
    assert list(mean.extra["means"]) == [6] and "1 of 3 features off-centre" in mean.message
    (std,) = keyed(result, "std")
    assert list(std.extra["stds"]) == [6]


def test_input_not_normalized_gives_a_rare_feature_the_doubt_its_records_leave(make_trace) -> None:
    """A standardised feature that is one value but in one of 1,920 recorded rows (a corner
    pixel of a digit) pools to a std of 0.27, yet its records disagree wildly: not judged.
    A feature of std 0.3 in every batch, and one off-centre in every batch, are."""
    rng = np.random.default_rng(3)
    records = []
    for index in range(30):
        rows = rng.normal(size=(64, 4)).astype(np.float32)
        rows[:, 1] = -0.03  # the corner pixel, standardised
        if index == 17:
            rows[rng.integers(0, 64), 1] = 12.0
        rows[:, 2] *= 0.3
        rows[:, 3] += 0.5
        records.append(rows)
    pooled = np.concatenate(records)
    assert np.std(pooled[:, 1]) < 1 / 3  # the pooled std alone would fail it
    result = run_rule(
        make_trace(tensors={"x": {"values": records, "collection": "inputs"}}), "DBG602"
    )
    (std,) = keyed(result, "std")
    assert list(std.extra["stds"]) == [2]
    (mean,) = keyed(result, "mean")
    assert list(mean.extra["means"]) == [3]
    # Without the doubt (z = 0), the pooled std decides, as before.
    loose = run_rule(
        make_trace(tensors={"x": {"values": records, "collection": "inputs"}}), "DBG602", z=0.0
    )
    assert sorted(keyed(loose, "std")[0].extra["stds"]) == [1, 2]


def test_input_not_normalized_leaves_alone_codes_an_embedding_table_looks_up(make_trace) -> None:
    """Two categorical columns kept as floats (codes 0-19 and 0-6) beside a numeric one, in a
    model with a 20-row embedding table: the codes are ids, not features to standardise.
    Without a table they are judged, and so are codes beyond its rows."""
    rng = np.random.default_rng(6)

    def inputs(top: int) -> list[np.ndarray]:
        return [
            np.column_stack(
                [rng.integers(0, top, 64), rng.integers(0, 7, 64), rng.normal(size=64)]
            ).astype(np.float32)
            for _ in range(12)
        ]

    table = {
        "values": [rng.normal(size=(20, 8))] * 12,
        "collection": "weights",
        "kind": "embedding",
    }
    looked_up = make_trace(
        tensors={"x": {"values": inputs(20), "collection": "inputs"}, "emb.weight": table}
    )
    assert run_rule(looked_up, "DBG602").status is RuleStatus.passed
    alone = make_trace(tensors={"x": {"values": inputs(20), "collection": "inputs"}})
    (mean,) = keyed(run_rule(alone, "DBG602"), "mean")
    assert sorted(mean.extra["means"]) == [0, 1]
    beyond = make_trace(
        tensors={"x": {"values": inputs(40), "collection": "inputs"}, "emb.weight": table}
    )
    (mean,) = keyed(run_rule(beyond, "DBG602"), "mean")
    assert sorted(mean.extra["means"]) == [0]


def test_input_not_normalized_leaves_rows_of_unit_length_alone(make_trace) -> None:
    """tf-idf rows (non-negative, sparse, each of L2 norm 1) have features of std 0.01-0.05
    by construction; the same counts left raw are badly scaled."""
    rng = np.random.default_rng(4)
    counts = [(rng.random((64, 200)) < 0.05) * rng.integers(1, 30, (64, 200)) for _ in range(12)]
    tfidf = [
        (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        for c in counts
    ]
    result = run_rule(
        make_trace(tensors={"x": {"values": tfidf, "collection": "inputs"}}), "DBG602"
    )
    assert result.status is RuleStatus.passed
    raw = [c.astype(np.float32) for c in counts]
    result = run_rule(make_trace(tensors={"x": {"values": raw, "collection": "inputs"}}), "DBG602")
    assert keyed(result, "std")


def test_input_not_normalized_counts_an_evaluation_set_once(make_trace) -> None:
    """Twelve passes over one held-out set of 397 unscaled rows are 397 samples, under the
    500 a judgement needs: a note that explains nothing, so a loss stuck at its start
    is the diagnosis, not the inputs."""
    rng = np.random.default_rng(5)
    held_out = (rng.normal(size=(397, 4)) * 5).astype(np.float32)
    train = [rng.normal(size=(64, 4)).astype(np.float32) for _ in range(12)]
    steps = list(range(0, 300, 25))
    spec = modes(
        {"x": {"values": train, "steps": steps, "mode": "train", "collection": "inputs"}},
        {"x": {"values": [held_out] * 12, "steps": steps, "mode": "eval", "collection": "inputs"}},
    )
    path = make_trace(scalars={"loss": list(np.full(300, 1.38))}, tensors=spec)
    (note,) = keyed(run_rule(path, "DBG602"), "too-few-samples")
    assert note.mode == "eval" and "only 397 distinct samples (the largest evaluation)" in (
        note.message
    )
    report = analyze_path(path)
    assert report.findings[report.problems[0].cause].rule_id != "DBG602"


def test_input_not_normalized_skips_non_finite_values_and_judges_modes_apart(make_trace) -> None:
    rng = np.random.default_rng(16)
    train = [rng.normal(0.0, 1.0, size=(32, 4)) for _ in range(20)]
    # Two evaluations of 640 samples each: the largest evaluation counts, not every pass.
    evaluation = [
        rng.normal(0.0, 1.0, size=(640, 4)) * [1, 5, 1, 1] + [1, 0, 0, 0] for _ in range(2)
    ]
    evaluation[0][0, 0] = np.nan
    evaluation[1][5, 1] = np.inf
    steps = list(range(20))
    spec = modes(
        {"x": {"values": train, "steps": steps, "mode": "train", "collection": "inputs"}},
        {"x": {"values": evaluation, "steps": [9, 19], "mode": "eval", "collection": "inputs"}},
    )
    result = run_rule(make_trace(tensors=spec), "DBG602")
    everything = np.concatenate(evaluation)
    everything[~np.isfinite(everything)] = np.nan
    (mean,) = keyed(result, "mean")
    assert mean.mode == "eval" and mean.extra["means"][0] == pytest.approx(
        np.nanmean(everything[:, 0])
    )
    (std,) = keyed(result, "std")
    assert std.mode == "eval" and std.extra["stds"][1] == pytest.approx(np.nanstd(everything[:, 1]))


def test_input_not_normalized_too_few_samples_and_skips(make_trace) -> None:
    path = make_trace(tensors=images(10, shift=(1.0, 1.0, 1.0)))
    result = run_rule(path, "DBG602")
    assert result.status is RuleStatus.skipped and "only 160 samples" in result.reason
    assert keyed(run_rule(path, "DBG602", samples=100), "mean")[0].first_step == 0
    tokens = make_trace(
        tensors={"ids": {"values": [np.arange(64).reshape(8, 8)] * 3, "collection": "inputs"}}
    )
    result = run_rule(tokens, "DBG602")
    assert (
        result.status is RuleStatus.skipped
        and result.reason
        == "no full tensors (or, for images, statistics) of model inputs that are quantities, "
        "not ids (role 'inputs')"
    )


def test_input_not_normalized_judges_images_as_a_whole_without_enough_full_tensors(
    make_trace,
) -> None:
    # 40 batches of 16 images, full tensors of the first only (raw_every): 16 samples to judge
    # channel by channel, 640 in the statistics of every record.
    pixels = images(40, shift=(120.0, 110.0, 100.0), scale=(60.0, 60.0, 60.0))
    path = make_trace(tensors=pixels, raw_every=100)
    result = run_rule(path, "DBG602")
    (mean,) = keyed(result, "mean")
    assert mean.extra["whole"] and (mean.first_step, mean.last_step, mean.steps) == (0, 39, 40)
    assert mean.value == pytest.approx(110.0, rel=0.01) and mean.threshold == 0.2
    assert "inputs off-centre as a whole, so at least one channel is" in mean.message
    assert "640 samples in 40 records, from their statistics" in mean.message
    assert "full tensors of 16 samples are too few" in mean.message
    (std,) = keyed(result, "std")
    # Pooled over the channels: sqrt(60² + the variance of 120, 110, 100) = 60.6.
    assert std.value == pytest.approx(np.sqrt(60.0**2 + 200 / 3), rel=0.02)
    # Standardised images pass; so do channels off by a little each, which only a look at
    # each channel can tell (their pooled mean is 0).
    assert run_rule(make_trace(tensors=images(40), raw_every=100), "DBG602").status is (
        RuleStatus.passed
    )
    balanced = make_trace(tensors=images(40, shift=(0.5, -0.5, 0.0)), raw_every=100)
    assert run_rule(balanced, "DBG602").status is RuleStatus.passed
    # Binarised images are indicators: left alone channel by channel, and not judged as a
    # whole (the records' statistics show it).
    rng = np.random.default_rng(19)
    binary = {"inputs": {"values": [(rng.random((16, 1, 8, 8)) < 0.3) * 1.0 for _ in range(40)]}}
    binary["inputs"]["collection"] = "inputs"
    assert run_rule(make_trace(tensors=binary), "DBG602").status is RuleStatus.passed
    result = run_rule(make_trace(tensors=binary, raw_every=100), "DBG602")
    assert result.status is RuleStatus.skipped and "only 16 samples" in result.reason
    # Statistics of fewer than 500 images, and no full tensor at all: not judged, and said so.
    few = make_trace(tensors=images(10, shift=(100.0, 100.0, 100.0)), raw_every=0)
    result = run_rule(few, "DBG602")
    assert result.status is RuleStatus.skipped
    assert "only 160 samples (in statistics; fewer with full tensors)" in result.reason
    # Tabular inputs are not judged as a whole: one-hot features would pool to a small std.
    rng = np.random.default_rng(18)
    onehot = [np.eye(50)[rng.integers(0, 50, size=32)].astype(np.float32) for _ in range(40)]
    table = make_trace(tensors={"x": {"values": onehot, "collection": "inputs"}}, raw_every=100)
    result = run_rule(table, "DBG602")
    assert result.status is RuleStatus.skipped and "only 32 samples" in result.reason


# -- DBG603 token-ratio ---------------------------------------------------------------------------


def sequences(padding: list[float], *, seed: int = 8, unknown: float = 0.0) -> list[np.ndarray]:
    """Token ids (8, 50): a share of padding (0) at the end, an ``unknown`` share of token 3."""
    rng = np.random.default_rng(seed)
    values = []
    for share in padding:
        ids = rng.integers(4, 1000, size=(8, 50))
        ids[:, 50 - round(50 * share) :] = 0
        ids[:, : round(50 * unknown)] = 3
        values.append(ids)
    return values


def test_token_ratio_fires_on_padding(make_trace) -> None:
    padding = [0.3] * 4 + [0.7] * 12 + [0.3] * 4
    path = make_trace(tensors={"tokens": {"values": sequences(padding), "collection": "inputs"}})
    result = run_rule(path, "DBG603")
    (finding,) = keyed(result, "token-0")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "tokens",
        4,
        15,
        12,
    )
    assert finding.value == pytest.approx(70.0) and finding.threshold == 50.0
    assert "in 12 of 20 records analysed" in finding.message
    assert run_rule(path, "DBG603", token_thresholds_percent=(70,)).status is RuleStatus.passed


def test_padding_read_by_a_recurrent_model_is_the_cause_of_its_vanished_gradient(
    tmp_path: Path,
) -> None:
    """A real run: an LSTM reads sequences of 4-9 tokens padded to 60 without packing, so its
    final state comes after about 53 pad steps and the gradient to its input weights
    vanishes. The padding is named first and the vanished gradient hangs under it."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = np.zeros((2000, 60), dtype=np.int64)
    y = rng.integers(0, 2, 2000)
    for row, length in enumerate(rng.integers(4, 10, 2000)):
        x[row, :length] = rng.integers(3, 50, length)
        x[row, rng.integers(0, length)] = 1 + y[row]  # the class's token, somewhere

    class Reader(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8, padding_idx=0)
            self.rnn = torch.nn.LSTM(8, 16, batch_first=True)
            self.head = torch.nn.Linear(16, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            _, (state, _) = self.rnn(self.emb(ids))
            return self.head(state[-1])

    model = Reader()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    tokens, labels = torch.as_tensor(x), torch.as_tensor(y)
    path = tmp_path / "padded.h5"
    with attach(model, optimizer, path) as hook:
        for step in range(60):
            rows = torch.randint(0, 2000, (64,), generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            output = model(tokens[rows])
            loss = torch.nn.functional.cross_entropy(output, labels[rows])
            hook.record_loss(loss)
            if step % 10 == 0:
                hook.record(inputs=tokens[rows], labels=labels[rows], predictions=output.detach())
            loss.backward()
            optimizer.step()
    report = analyze_path(path)
    top = report.problems[0]
    assert report.findings[top.cause].rule_id == "DBG603"
    assert "DBG101" in {report.findings[i].rule_id for i in top.symptoms}


def test_padding_labelled_as_a_class_is_named_with_the_share_of_labels_it_takes(
    make_trace,
) -> None:
    """Labels of the tokens' shape: padding labelled 0 is a class the loss counts; padding
    labelled -100 (the ignore index) is skipped, and costs compute only; next-token labels,
    one fewer per sequence, pair with the tokens they follow."""
    padding = [0.7] * 20
    tokens = sequences(padding)
    rng = np.random.default_rng(9)

    def labelled(pad_label: int) -> list[np.ndarray]:
        return [np.where(ids == 0, pad_label, rng.integers(1, 4, ids.shape)) for ids in tokens]

    def run(labels: list[np.ndarray]) -> Any:
        return run_rule(
            make_trace(
                tensors={
                    "tokens": {"values": tokens, "collection": "inputs"},
                    "tags": {"values": labels, "collection": "labels"},
                }
            ),
            "DBG603",
        )

    (finding,) = keyed(run(labelled(0)), "labelled-padding")
    assert (finding.tensor, finding.first_step, finding.last_step) == ("tokens", 0, 19)
    assert finding.extra["label"] == 0 and finding.extra["labels"] == "tags"
    assert finding.extra["labelled_share"] == 1.0
    assert finding.extra["share_of_labels"] == pytest.approx(0.7)
    assert "its positions are labelled class 0 (100%, in tags)" in finding.message
    assert "70% of the labels" in finding.message
    # Padding the loss skips (-100) costs compute only: a note.
    (masked,) = run(labelled(-100)).findings
    assert (masked.key, masked.severity) == ("masked-padding", Severity.info)
    assert "the loss skips its positions (no label at 100% of them, in tags)" in masked.message
    # A note that explains nothing: a loss stuck at its start is underfitting's, not its.
    stuck = make_trace(
        scalars={"loss": [1.0] * 200},
        tensors={
            "tokens": {"values": tokens, "collection": "inputs", "steps": list(range(0, 200, 10))},
            "tags": {
                "values": labelled(-100),
                "collection": "labels",
                "steps": list(range(0, 200, 10)),
            },
        },
    )
    report = analyze_path(stuck, select=("DBG603", "DBG303"))
    assert report.findings[report.problems[0].cause].rule_id == "DBG303"
    # Padding whose labels vary (unknown words tagged by their context) is no labelled class.
    varied = [np.where(ids == 0, rng.integers(0, 2, ids.shape), 0) for ids in tokens]
    assert [f.key for f in run(varied).findings] == ["token-0"]
    # A language model's next tokens, padding after padding.
    (finding,) = keyed(run([ids[:, 1:] for ids in tokens]), "labelled-padding")
    assert finding.extra["labelled_share"] == 1.0


def test_token_ratio_quiet_on_batches_that_scatter_above_the_bar(make_trace) -> None:
    """Batches padded to their own longest sequence: 44 % padding over the run, a few
    batches at 52 %. SageMaker's record-by-record test would fire on those few."""
    padding = [0.44] * 17 + [0.52] * 3
    path = make_trace(tensors={"tokens": {"values": sequences(padding), "collection": "inputs"}})
    assert run_rule(path, "DBG603").status is RuleStatus.passed


def test_token_ratio_notes_padding_of_evaluation_batches(make_trace) -> None:
    """Evaluation batches padded to their longest sequence cost evaluation time only."""
    padding = [0.3] * 10 + [0.6] * 10
    modes = ["train"] * 10 + ["eval"] * 10
    tokens = {"values": sequences(padding), "collection": "inputs", "modes": modes}
    result = run_rule(make_trace(tensors={"tokens": tokens}), "DBG603")
    (finding,) = keyed(result, "token-0")
    assert (finding.mode, finding.severity, finding.first_step) == ("eval", Severity.info, 10)
    assert finding.message.endswith("; evaluation batches, which cost time only")
    tokens["modes"] = ["eval"] * 10 + ["train"] * 10
    (finding,) = keyed(run_rule(make_trace(tensors={"tokens": tokens}), "DBG603"), "token-0")
    assert (finding.mode, finding.severity) == ("train", Severity.warning)


def test_token_ratio_quiet_on_moderate_padding(make_trace) -> None:
    path = make_trace(
        tensors={"tokens": {"values": sequences([0.1, 0.3, 0.45] * 10), "collection": "inputs"}}
    )
    assert run_rule(path, "token-ratio").status is RuleStatus.passed


def test_token_ratio_other_tokens_and_records_without_full_tensors(make_trace) -> None:
    # Full tensors every 5th record: padding is found through the zero_frac statistic too.
    padding = [0.2] * 8 + [0.8] * 12
    path = make_trace(
        tensors={"tokens": {"values": sequences(padding, unknown=0.2), "collection": "inputs"}},
        raw_every=5,
    )
    result = run_rule(path, "DBG603", token_values=(3, 0), token_thresholds_percent=(10, 50))
    (padded,) = keyed(result, "token-0")
    assert (padded.first_step, padded.last_step, padded.steps) == (8, 19, 12)
    assert "in 12 of 20 records analysed" in padded.message
    (unknown,) = keyed(result, "token-3")
    assert (unknown.first_step, unknown.last_step, unknown.steps) == (0, 15, 4)
    assert unknown.value == pytest.approx(20.0) and "4 of 4 records analysed" in unknown.message


def test_token_ratio_rejects_mismatched_thresholds(make_trace) -> None:
    path = make_trace(tensors={"tokens": {"values": sequences([0.2] * 3), "collection": "inputs"}})
    report = analyze_path(
        path,
        select=("DBG603",),
        params={"DBG603": {"token_values": "3,0,1", "token_thresholds_percent": "10,50"}},
    )
    assert report.error is not None and "one threshold per token value" in report.error


def test_token_ratio_skips_without_integer_inputs(make_trace) -> None:
    result = run_rule(make_trace(tensors=images(3)), "DBG603")
    assert (
        result.status is RuleStatus.skipped
        and result.reason
        == "no token-id inputs (role 'inputs': integers, or whole numbers named like input_ids)"
    )


# -- DBG604 classifier-confusion ------------------------------------------------------------------


def modes(*specs: dict[str, dict]) -> dict[str, dict]:
    """Records of several modes in one spec per tag."""
    merged = {}
    for tag in specs[0]:
        parts = [spec[tag] for spec in specs]
        merged[tag] = {
            "values": [v for part in parts for v in part["values"]],
            "steps": [s for part in parts for s in part["steps"]],
            "modes": [part["mode"] for part in parts for _ in part["values"]],
            "collection": parts[0]["collection"],
        }
    return merged


def ids_trace(make_trace, labels: np.ndarray, predicted: np.ndarray, *, collections: bool = True):
    def spec(values: np.ndarray, collection: str) -> dict:
        return (
            {"values": [values], "collection": collection} if collections else {"values": [values]}
        )

    return make_trace(
        tensors={"labels": spec(labels, "labels"), "predictions": spec(predicted, "predictions")}
    )


# SageMaker Debugger's Confusion judged any number of samples: its cases run with samples=1.
ANY_COUNT = {"samples": 1}


def test_confusion_2019_case_1_perfect_predictions_pass(make_trace) -> None:
    labels = np.random.default_rng(9).integers(0, 10, size=100)
    result = run_rule(ids_trace(make_trace, labels, labels.copy()), "DBG604", **ANY_COUNT)
    assert result.status is RuleStatus.passed


def test_confusion_2019_case_2_one_confused_sample_fires(make_trace) -> None:
    labels = np.arange(10)
    predicted = labels.copy()
    predicted[4] = 7
    result = run_rule(ids_trace(make_trace, labels, predicted), "DBG604", **ANY_COUNT)
    (diagonal,) = keyed(result, "diagonal")
    assert (diagonal.tensor, diagonal.first_step, diagonal.value, diagonal.threshold) == (
        "predictions",
        0,
        0.5,
        0.9,
    )
    assert "for 1 of 9 predicted classes: class 7 50% (1 of 2)" in diagonal.message
    (off,) = keyed(result, "off-diagonal")
    assert off.value == 0.5 and "class 4 as 7 50% (1 of 2)" in off.message
    assert diagonal.severity is Severity.info and diagonal.extra["classes"] == 10
    # One sample is no evidence that the model cannot tell 4 from 7.
    assert not keyed(result, "indistinct")


def test_confusion_2019_case_3_off_diagonal_only(make_trace) -> None:
    labels = np.arange(10)
    predicted = labels.copy()
    predicted[4] = 7
    result = run_rule(
        ids_trace(make_trace, labels, predicted),
        "DBG604",
        min_diag=0.0,
        max_off_diag=0.01,
        **ANY_COUNT,
    )
    assert not keyed(result, "diagonal")
    (off,) = keyed(result, "off-diagonal")
    assert off.value == 0.5 and off.threshold == 0.01


def test_confusion_2019_case_4_default_names_without_collections(make_trace) -> None:
    labels = np.random.default_rng(10).integers(0, 10, size=100)
    path = ids_trace(make_trace, labels, labels.copy(), collections=False)
    assert run_rule(path, "DBG604", **ANY_COUNT).status is RuleStatus.passed
    labels[:5] = (labels[:5] + 1) % 10
    assert run_rule(
        ids_trace(make_trace, labels, labels[::-1].copy(), collections=False),
        "DBG604",
        **ANY_COUNT,
    ).findings


def confused(
    counts: list[int], mix: dict[tuple[int, int], float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ``counts[k]`` samples of class k, predicted rightly except for a share
    ``mix[(k, i)]`` of class k's samples predicted as class i."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    predicted = labels.copy()
    for k, count in enumerate(counts):
        start = sum(counts[:k])
        moved = 0
        for (label, other), share in mix.items():
            if label == k:
                size = round(share * count)
                predicted[start + moved : start + moved + size] = other
                moved += size
    order = rng.permutation(labels.size)
    return labels[order], predicted[order]


def test_confusion_twin_classes_are_indistinct(make_trace) -> None:
    # Classes 2 and 3 look alike: the model guesses between them. Classes 0 and 1 are fine.
    labels, predicted = confused([150] * 4, {(2, 3): 0.5, (3, 2): 0.5, (0, 1): 0.04}, seed=30)
    result = run_rule(ids_trace(make_trace, labels, predicted), "DBG604")
    (finding,) = keyed(result, "indistinct")
    assert finding.severity is Severity.warning
    assert [(p["label"], p["predicted"]) for p in finding.extra["pairs"]] == [(2, 3), (3, 2)]
    assert finding.value == pytest.approx(1.0) and finding.threshold == 3.0
    assert (
        "the model cannot tell 2 pairs of classes apart, predicting class 3 for 50% of class 2's "
        "samples and 50% of class 3's (ratio 1)" in finding.message
    )
    assert "shifted" not in finding.message
    # SageMaker's bars are reported as notes beside it.
    (diagonal,) = keyed(result, "diagonal")
    assert diagonal.severity is Severity.info and set(diagonal.extra["precision"]) == {2, 3}


def test_confusion_repeated_evaluations_of_one_set_are_not_new_evidence(make_trace) -> None:
    """One held-out set of 20 samples per class, evaluated 20 times: class 0 is predicted for
    40 % of its own samples and 30 % of class 1's (ratio 1.3). Twenty samples cannot show that
    confidently, however often they are evaluated; twenty new batches can."""
    labels = np.repeat(np.arange(4), 20)
    predicted = labels.copy()
    predicted[:20] = [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4
    predicted[20:26] = 0
    steps = list(range(60, 160, 5))

    def trace(mode: str) -> Path:
        return make_trace(
            scalars={"loss": {"values": [1.0] * 161, "steps": list(range(161))}},
            tensors={
                name: {
                    "values": [values] * len(steps),
                    "steps": steps,
                    "mode": mode,
                    "collection": name,
                }
                for name, values in (("labels", labels), ("predictions", predicted))
            },
        )

    assert not keyed(run_rule(trace("eval"), "DBG604"), "indistinct")
    (finding,) = keyed(run_rule(trace("train"), "DBG604"), "indistinct")
    assert (1, 0) in [(p["label"], p["predicted"]) for p in finding.extra["pairs"]]


def test_confusion_spread_errors_are_a_note_not_a_warning(make_trace) -> None:
    # 20 classes, each 88 % right, its errors spread over its two neighbours: under
    # SageMaker's 90 % bar, but every prediction is strong evidence for its class.
    mix = {}
    for k in range(20):
        mix[(k, (k + 1) % 20)] = 0.06
        mix[(k, (k - 1) % 20)] = 0.06
    labels, predicted = confused([400] * 20, mix, seed=31)
    result = run_rule(ids_trace(make_trace, labels, predicted), "DBG604")
    assert not keyed(result, "indistinct")
    (diagonal,) = keyed(result, "diagonal")
    assert diagonal.severity is Severity.info and len(diagonal.extra["precision"]) == 20
    assert all(f.severity is Severity.info for f in result.findings)
    # A weak binary classifier, 80 % right on each class: a ratio of 4 is evidence.
    labels, predicted = confused([500, 500], {(0, 1): 0.2, (1, 0): 0.2}, seed=32)
    assert not keyed(run_rule(ids_trace(make_trace, labels, predicted), "DBG604"), "indistinct")
    # At 60 % it is not (a ratio of 1.5).
    labels, predicted = confused([500, 500], {(0, 1): 0.4, (1, 0): 0.4}, seed=33)
    (finding,) = keyed(run_rule(ids_trace(make_trace, labels, predicted), "DBG604"), "indistinct")
    assert finding.value == pytest.approx(1.5)


def test_confusion_ratio_does_not_depend_on_class_frequency(make_trace) -> None:
    # The same model (class 1's samples predicted 0 half the time) on balanced and on 9:1
    # labels: the column share of the confusion differs tenfold, the likelihood ratio not.
    for counts in ([500, 500], [4500, 500]):
        labels, predicted = confused(counts, {(1, 0): 0.5}, seed=34)
        result = run_rule(ids_trace(make_trace, labels, predicted), "DBG604")
        (finding,) = keyed(result, "indistinct")
        assert finding.value == pytest.approx(2.0)
        assert finding.extra["pairs"][0] == {
            "label": 1,
            "predicted": 0,
            "label_rate": 0.5,
            "own_rate": 1.0,
            "ratio": 2.0,
        }


def test_confusion_collapse_onto_one_class(make_trace) -> None:
    labels = np.random.default_rng(35).integers(0, 4, size=800)
    result = run_rule(ids_trace(make_trace, labels, np.zeros_like(labels)), "DBG604")
    (finding,) = keyed(result, "indistinct")
    assert [(p["label"], p["predicted"], p["ratio"]) for p in finding.extra["pairs"]] == [
        (1, 0, 1.0),
        (2, 0, 1.0),
        (3, 0, 1.0),
    ]


def test_confusion_shifted_labels_are_named(make_trace) -> None:
    # Evaluation labels off by one: each class's samples predicted as the class before it.
    labels = np.random.default_rng(36).integers(0, 10, size=2000)
    predicted = (labels - 1) % 10
    predicted[:40] = labels[:40]  # a few right by the shift's accident
    (finding,) = keyed(run_rule(ids_trace(make_trace, labels, predicted), "DBG604"), "shifted")
    assert len(finding.extra["pairs"]) == 10
    assert all(p["ratio"] < 0.1 for p in finding.extra["pairs"]) and "reversed)" in finding.message
    assert finding.message.startswith(
        "most classes' samples are predicted mostly as one other class, more often than that "
        "class's own: are the labels shifted or coded differently between training and "
        "evaluation? 10 pairs of classes reversed or alike, predicting class "
    )
    # One class swallowed by another is no shift.
    labels, predicted = confused([300] * 4, {(3, 2): 0.9}, seed=37)
    result = run_rule(ids_trace(make_trace, labels, predicted), "DBG604")
    (finding,) = keyed(result, "indistinct")
    assert not keyed(result, "shifted")
    assert "reversed" not in finding.message and "shifted" not in finding.message


def test_confusion_dates_shifted_labels_from_the_first_record_that_shows_them(
    make_trace,
) -> None:
    # Ten evaluations of 400 samples: an untrained model's guesses at steps 10-30, then the
    # training coding, one class off the evaluation labels', from step 40 on.
    rng = np.random.default_rng(41)
    labels, predicted = [], []
    for index in range(10):
        truth = rng.integers(0, 10, size=400)
        labels.append(truth)
        predicted.append(rng.integers(0, 10, size=400) if index < 3 else (truth - 1) % 10)
    steps = list(range(10, 110, 10))
    tensors = {
        "labels": {"values": labels, "steps": steps, "mode": "eval", "collection": "labels"},
        "predictions": {
            "values": predicted,
            "steps": steps,
            "mode": "eval",
            "collection": "predictions",
        },
    }
    (finding,) = keyed(run_rule(make_trace(tensors=tensors), "DBG604"), "shifted")
    assert (finding.first_step, finding.last_step, finding.steps) == (40, 100, 7)
    # It explains the held-out loss that the shifted coding drives up as the model learns.
    train = np.linspace(2.3, 0.1, 101)
    held_out = {"values": [2.3, 2.3, 2.3, 3, 4, 5, 6, 7, 8, 9], "steps": steps, "mode": "eval"}
    path = make_trace(scalars={"loss": train, "val_loss": held_out}, tensors=tensors)
    report = analyze_path(path, select=("DBG302", "DBG604"))
    (diagnosis,) = report.problems
    assert report.findings[diagnosis.cause].key == "shifted"
    assert {report.findings[i].rule_id for i in diagnosis.symptoms} == {"DBG302", "DBG604"}


def test_confusion_needs_evidence_and_a_material_share(make_trace) -> None:
    # A rare class whose 8 samples are predicted as class 0 half the time: a ratio of 2 on
    # so few samples could be chance (the interval of 4 of 8 reaches down to 22 %).
    labels, predicted = confused([500, 500, 8], {(2, 0): 0.5}, seed=38)
    path = ids_trace(make_trace, labels, predicted)
    assert not keyed(run_rule(path, "DBG604"), "indistinct")
    # 80 samples so predicted are evidence.
    labels, predicted = confused([500, 500, 80], {(2, 0): 0.5}, seed=38)
    assert keyed(run_rule(ids_trace(make_trace, labels, predicted), "DBG604"), "indistinct")
    # A class the model rarely predicts for its own samples or any other is no confusion:
    # class 1 is right 5 % of the time and takes 5 % of class 0's samples (below min_share).
    labels, predicted = confused([1000, 1000], {(1, 0): 0.95, (0, 1): 0.05}, seed=39)
    (finding,) = keyed(run_rule(ids_trace(make_trace, labels, predicted), "DBG604"), "indistinct")
    assert [(p["label"], p["predicted"]) for p in finding.extra["pairs"]] == [(1, 0)]
    result = run_rule(ids_trace(make_trace, labels, predicted), "DBG604", min_share=0.01)
    (finding,) = keyed(result, "indistinct")
    assert [(p["label"], p["predicted"]) for p in finding.extra["pairs"]] == [(1, 0), (0, 1)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_evidence": 0}, "DBG604 min_evidence must be positive, got 0"),
        ({"min_share": 0}, "DBG604 min_share must be in (0, 1], got 0"),
        ({"min_share": 1.5}, "DBG604 min_share must be in (0, 1], got 1.5"),
    ],
)
def test_confusion_refuses_bad_evidence_parameters(make_trace, params, message) -> None:
    labels = np.arange(10)
    report = analyze_path(
        ids_trace(make_trace, labels, labels.copy()), select=("DBG604",), params={"DBG604": params}
    )
    assert report.error is not None and message in report.error


def test_confusion_quiet_on_a_healthy_run_but_not_over_its_whole_history(make_trace) -> None:
    path = make_trace(tensors=classifier(learning_curve(100), seed=11))
    assert run_rule(path, "classifier-confusion").status is RuleStatus.passed
    result = run_rule(path, "DBG604", tail_fraction=1.0)
    (diagonal,) = keyed(result, "diagonal")
    assert (diagonal.first_step, diagonal.last_step, diagonal.steps) == (0, 99, 100)


def test_confusion_prefers_eval_records(make_trace) -> None:
    collapsed = classifier([0.25] * 50, seed=12)  # train predictions of a model gone wrong
    evals = [10, 20, 30, 40, 49]
    good = classifier([0.5, 0.9, 0.95, 0.99, 0.99], seed=13, mode="eval", steps=evals)
    enough = {"samples": 64}  # one evaluation's batch
    result = run_rule(make_trace(tensors=modes(collapsed, good)), "DBG604", **enough)
    assert result.status is RuleStatus.passed
    bad = classifier([0.5] * 5, seed=14, mode="eval", steps=evals)
    (finding,) = keyed(
        run_rule(make_trace(tensors=modes(collapsed, bad)), "DBG604", **enough), "diagonal"
    )
    # Evaluations in the last 20 % of the eval step range (from step 41.2): the one at 49.
    assert finding.mode == "eval" and (finding.first_step, finding.last_step) == (49, 49)
    assert "64 samples in 1 record (eval" in finding.message
    wide = keyed(
        run_rule(make_trace(tensors=modes(collapsed, bad)), "DBG604", tail_fraction=0.5, **enough),
        "diagonal",
    )
    assert (wide[0].first_step, wide[0].steps) == (30, 3)


def test_confusion_widens_a_tail_of_too_few_samples_within_the_second_half(make_trace) -> None:
    # 20 batches of 64 over steps 0..19: the tail (steps 15.2..19) holds 256 samples, fewer
    # than 500; the latest 8 records (steps 12..19) hold 512.
    path = make_trace(tensors=classifier([0.25] * 20, seed=20))
    (finding,) = keyed(run_rule(path, "DBG604"), "diagonal")
    assert (finding.first_step, finding.last_step, finding.extra["samples"]) == (12, 19, 512)
    # Steps 10..19 hold 640 samples, not 1,000: the first half is never counted.
    result = run_rule(path, "DBG604", samples=1000)
    assert result.status is RuleStatus.skipped
    assert "only 640 labelled predictions from the run's second half in 10 records" in (
        result.reason
    )
    assert "confusion not judged" in result.reason


def test_confusion_is_not_judged_on_an_untrained_model(make_trace) -> None:
    # A 100-step run whose only labels and predictions are those of step 0 (raw_every):
    # the untrained model mispredicts three classes in four.
    untrained = classifier([0.25], batch=1000, seed=21)
    path = make_trace(scalars={"loss": np.linspace(2.0, 0.1, 100)}, tensors=untrained)
    result = run_rule(path, "DBG604")
    assert result.status is RuleStatus.skipped
    assert "latest labelled predictions are from step 0, in the first half of the run" in (
        result.reason
    )
    # The same predictions at step 60 are judged: they are the model training ends with.
    late = classifier([0.25], batch=1000, seed=21, steps=[60])
    later = make_trace(scalars={"loss": np.linspace(2.0, 0.1, 100)}, tensors=late)
    assert keyed(run_rule(later, "DBG604"), "diagonal")


def test_confusion_judges_a_late_mode_and_is_skipped_only_when_no_stream_is_judged(
    make_trace,
) -> None:
    # An evaluation before training (step 0) and the training batches of the run's second
    # half, whose predictions are wrong three times in four: the train records are judged.
    early_eval = classifier([0.25], batch=600, seed=23, mode="eval", steps=[0])
    late_train = classifier([0.25] * 10, batch=64, seed=24, steps=list(range(60, 100, 4)))
    path = make_trace(
        scalars={"loss": np.linspace(2.0, 0.1, 100)}, tensors=modes(early_eval, late_train)
    )
    (finding,) = keyed(run_rule(path, "DBG604"), "diagonal")
    assert finding.mode == "train" and finding.first_step >= 60
    # Two streams: one judged and fine, one too small. The rule passes, with the reason of the
    # other as an info finding.
    good = classifier([1.0] * 10, batch=128, seed=25)
    tiny = classifier([1.0], batch=10, seed=26, steps=[9])
    tensors = {**good, **{f"b/{tag}": spec for tag, spec in tiny.items()}}
    result = run_rule(make_trace(tensors=tensors), "DBG604")
    assert result.status is not RuleStatus.skipped
    assert [f.key for f in result.findings] == ["too-few-samples"]


def test_confusion_without_a_timeline_uses_the_steps_of_the_series(make_trace) -> None:
    # A trace written by hand without a timeline: the labels' and loss's steps span the run.
    untrained = classifier([0.25], batch=1000, seed=27)
    path = make_trace(scalars={"loss": np.linspace(2.0, 0.1, 100)}, tensors=untrained)
    with h5py.File(path, "a") as file:
        del file["timeline"]
    result = run_rule(path, "DBG604")
    assert result.status is RuleStatus.skipped and "first half of the run" in result.reason


def test_class_rules_skip_the_token_labels_of_a_language_model(make_trace) -> None:
    tensors = classifier([0.25] * 10, classes=50, batch=100, seed=22)
    plain = make_trace(tensors=tensors)
    assert keyed(run_rule(plain, "DBG604"), "diagonal")
    # A task of another type in a hand-written trace is no language model, and no crash.
    assert keyed(
        run_rule(make_trace(tensors=tensors, metadata={"task": ["x"]}), "DBG604"), "diagonal"
    )
    language_model = make_trace(tensors=tensors, metadata={"task": "causal-lm"})
    for rule_id in ("DBG601", "DBG604"):
        result = run_rule(language_model, rule_id)
        assert result.status is RuleStatus.skipped
        assert result.reason == (
            "the labels are the tokens of a language model (metadata task 'causal-lm'), not classes"
        )


def test_class_rules_skip_labels_that_are_the_input_ids(make_trace) -> None:
    """Hugging Face's causal language models take ``labels = input_ids`` and shift them
    inside: labels that repeat the recorded token ids are a language model's, whatever the
    metadata says. Labels that merely share the ids' shape are judged."""
    tensors = classifier([0.25] * 10, classes=50, batch=100, seed=22)
    ids = tensors["labels"]["values"]
    as_inputs = {"values": [v.copy() for v in ids], "collection": "inputs"}
    language_model = make_trace(tensors={**tensors, "input_ids": as_inputs})
    for rule_id in ("DBG601", "DBG604"):
        result = run_rule(language_model, rule_id)
        assert result.status is RuleStatus.skipped
        assert result.reason.startswith(
            "the labels are the tokens of a language model (the labels are the input ids"
        )
    shifted = {**as_inputs, "values": [np.roll(v, 1) + 1 for v in ids]}
    classifier_run = make_trace(tensors={**tensors, "input_ids": shifted})
    assert keyed(run_rule(classifier_run, "DBG604"), "diagonal")


def test_class_rules_skip_labels_that_are_the_next_input_ids(make_trace) -> None:
    """A causal language model trained on ``x = seq[:, :-1]``, ``y = seq[:, 1:]``, both
    recorded: each sequence's labels are its input ids one position on, the next tokens, no
    classes (with random logits, 20 "classes" read as mostly mispredicted). A tagger's labels
    of the same shape, one per input token, are judged."""
    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, 20, (16, 13)) for _ in range(6)]
    logits = [rng.normal(size=(16, 12, 20)).astype(np.float32) for _ in range(6)]

    def trace(inputs: list[np.ndarray], labels: list[np.ndarray]) -> Path:
        return make_trace(
            tensors={
                "inputs": {"values": inputs, "collection": "inputs"},
                "labels": {"values": labels, "collection": "labels"},
                "predictions": {"values": logits, "collection": "predictions"},
            }
        )

    language_model = trace([s[:, :-1] for s in sequences], [s[:, 1:] for s in sequences])
    for rule_id in ("DBG601", "DBG604"):
        result = run_rule(language_model, rule_id)
        assert result.status is RuleStatus.skipped, rule_id
        assert result.reason.startswith(
            "the labels are the tokens of a language model (each sequence's labels are its "
            "input ids one position on"
        )
    tags = [rng.integers(0, 20, (16, 12)) for _ in range(6)]
    tagger = trace([s[:, :-1] for s in sequences], tags)
    assert run_rule(tagger, "DBG601").status is not RuleStatus.skipped

    # A tag may change shape between records: a flat record is no sequence to compare.
    def mixed(part: slice) -> list[np.ndarray]:
        return [s[:, part] if i % 3 == 0 else s[0, part] for i, s in enumerate(sequences)]

    flat = trace(mixed(slice(None, -1)), mixed(slice(1, None)))
    assert run_rule(flat, "DBG601").status is not RuleStatus.error


def test_confusion_does_not_judge_non_finite_predictions(make_trace) -> None:
    tensors = classifier([0.3] * 20, seed=15)
    for step in range(10, 20):
        tensors["predictions"]["values"][step][:] = np.nan
    path = make_trace(tensors=tensors)
    assert run_rule(path, "DBG604").status is RuleStatus.passed
    assert (
        keyed(run_rule(path, "DBG604", tail_fraction=1.0), "diagonal")[0].extra["unscored"] == 640
    )


def test_confusion_category_no(make_trace) -> None:
    labels = np.arange(10)
    predicted = labels.copy()
    predicted[4] = 7
    path = ids_trace(make_trace, labels, predicted)
    assert (
        run_rule(path, "DBG604", category_no=5, **ANY_COUNT).status is RuleStatus.passed
    )  # the 4 -> 7 pair is left out
    report = analyze_path(path, select=("DBG604",), params={"DBG604": {"category_no": 1}})
    assert report.error is not None and "category_no must be at least 2" in report.error


def test_confusion_skips_without_predictions(make_trace) -> None:
    path = make_trace(tensors={"labels": {"values": [np.arange(4)] * 3, "collection": "labels"}})
    result = run_rule(path, "DBG604")
    assert (
        result.status is RuleStatus.skipped
        and result.reason
        == "no full tensors of predictions (role 'predictions': predictions, preds, logits...)"
    )


# -- the sample traces ----------------------------------------------------------------------------


def test_data_rules_on_the_sample_traces() -> None:
    healthy = analyze_path(SAMPLES / "numpy_mlp_healthy.h5", select=("DBG6",))
    assert healthy.error is None
    assert healthy.findings == []
    reasons = {r.id: r.reason for r in healthy.results}
    assert "only 384 labels" in reasons["DBG601"] and "only 384 samples" in reasons["DBG602"]
    dead = analyze_path(SAMPLES / "numpy_mlp_dead_relu.h5", select=("DBG6",))
    reasons = {r.id: r.reason for r in dead.results}
    assert "only 192 labelled predictions from the run's second half" in reasons["DBG604"]
    fewer = analyze_path(
        SAMPLES / "numpy_mlp_dead_relu.h5", select=("DBG604",), params={"DBG604": {"samples": 192}}
    )
    assert {f.key for f in fewer.findings} == {"indistinct", "diagonal", "off-diagonal"}
    high_lr = analyze_path(SAMPLES / "numpy_mlp_high_lr.h5", select=("DBG604",))
    assert high_lr.findings == []  # every late prediction is NaN: left to the non-finite rules


# -- DBG605 unshuffled-batches ------------------------------------------------------------------


def batches(labels: np.ndarray, batch: int = 64, mode: str = "train", **spec) -> dict[str, dict]:
    """The labels read in order, ``batch`` at a time, one record per step."""
    values = [labels[start : start + batch] for start in range(0, len(labels), batch)]
    return {"labels": {"values": values, "mode": mode, "collection": "labels", **spec}}


def sorted_labels(classes: int = 10, per_class: int = 192) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def test_unshuffled_batches_fire_on_a_data_set_sorted_by_class(make_trace) -> None:
    result = run_rule(make_trace(tensors=batches(sorted_labels())), "DBG605")
    (finding,) = result.findings
    assert (finding.key, finding.severity, finding.mode) == (
        "unshuffled",
        Severity.warning,
        "train",
    )
    assert finding.value == 1.0 and finding.threshold == 0.5
    assert (finding.first_step, finding.last_step, finding.steps) == (0, 29, 30)
    assert finding.message.startswith(
        "training batches look unshuffled: their labels are alike (intra-batch correlation 1.00 "
        "> 0.5; 0 when shuffled); 30 of 30 batches hold a single class of 10; 1920 labels in "
        "30 records (train, batches of 64 on average)"
    )


def test_shuffled_and_class_balanced_batches_pass(make_trace) -> None:
    rng = np.random.default_rng(40)
    shuffled = rng.permutation(sorted_labels())
    assert run_rule(make_trace(tensors=batches(shuffled)), "DBG605").status is RuleStatus.passed
    # Skewed classes, shuffled: the shares differ from class to class, not from batch to batch.
    skewed = rng.choice(4, size=3200, p=[0.85, 0.05, 0.05, 0.05])
    assert run_rule(make_trace(tensors=batches(skewed)), "DBG605").status is RuleStatus.passed
    # A balanced sampler: every batch holds each class equally (correlation below 0).
    balanced = np.tile(np.arange(4), 800)
    assert run_rule(make_trace(tensors=batches(balanced)), "DBG605").status is RuleStatus.passed


def test_unshuffled_batches_measure_the_intra_batch_correlation(make_trace) -> None:
    # A shuffle buffer shorter than a class's run: each batch of 64 holds two classes of ten,
    # 32 each, a correlation of (10 / 2 - 1) / 9 = 0.44, under the bar of 0.5.
    pairs = np.concatenate(
        [np.repeat(np.array([k, (k + 1) % 10]), 32) for k in range(10) for _ in range(3)]
    )
    path = make_trace(tensors=batches(pairs))
    assert run_rule(path, "DBG605").status is RuleStatus.passed
    (finding,) = run_rule(path, "DBG605", max_correlation=0.4).findings
    assert finding.value == pytest.approx(0.44, abs=0.02)  # 30 batches: 29 x 9 degrees of freedom
    assert "0 of 30 batches hold a single class" in finding.message


def test_unshuffled_batches_need_evidence(make_trace) -> None:
    # Two batches of four labels, each one class: alike, but that happens by chance.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = run_rule(make_trace(tensors=batches(labels, batch=4)), "DBG605", samples=8)
    assert result.status is RuleStatus.passed
    # Fewer labels than samples: skipped with the reason. (The last record, 8 labels, is no
    # batch of the run's size of 64.)
    result = run_rule(make_trace(tensors=batches(sorted_labels(per_class=20))), "DBG605")
    assert result.status is RuleStatus.skipped
    assert "only 192 labels in training batches of two or more in 3 records" in result.reason
    # One record, however large, cannot be compared with another.
    one = {"labels": {"values": [sorted_labels()], "collection": "labels"}}
    result = run_rule(make_trace(tensors=one), "DBG605")
    assert result.status is RuleStatus.skipped
    assert "one training batch with full tensors of labels (step 0)" in result.reason


def test_unshuffled_batches_judge_one_label_per_sample_in_training(make_trace) -> None:
    labels = sorted_labels()
    # Evaluation batches in order are fine.
    path = make_trace(tensors=batches(labels, mode="eval"))
    result = run_rule(path, "DBG605")
    assert result.status is RuleStatus.skipped
    assert result.reason == (
        "no training labels of one class per sample ((N,), (N, 1) or one-hot (N, C); not "
        "quantities)"
    )
    # Regression targets sorted by value are quantities, not classes.
    targets = np.sort(np.random.default_rng(42).normal(size=1920)).astype(np.float32)
    assert run_rule(make_trace(tensors=batches(targets)), "DBG605").status is RuleStatus.skipped
    # One-hot labels and (N, 1) columns are one label per sample.
    onehot = np.eye(10, dtype=np.float32)[labels]
    assert run_rule(make_trace(tensors=batches(onehot)), "DBG605").findings
    column = labels[:, None].astype(np.float32)
    assert run_rule(make_trace(tensors=batches(column)), "DBG605").findings
    # A sequence's tokens (N, T) are alike by nature: not judged.
    tokens = np.repeat(labels[:, None], 16, axis=1)
    assert run_rule(make_trace(tensors=batches(tokens)), "DBG605").status is RuleStatus.skipped
    # Nor are a language model's labels.
    lm = make_trace(tensors=batches(labels), metadata={"task": "causal-lm"})
    assert run_rule(lm, "DBG605").status is RuleStatus.skipped


def test_unshuffled_batches_count_only_the_batches(make_trace) -> None:
    # Thirty single-class batches of 64 and one pass over the whole training set in train
    # mode: that pass is no batch, and does not dilute the batches' correlation.
    labels = batches(sorted_labels(classes=10, per_class=192))["labels"]
    labels["values"].append(np.random.default_rng(43).integers(0, 10, size=20_000))
    (finding,) = run_rule(make_trace(tensors={"labels": labels}), "DBG605").findings
    assert finding.value == 1.0 and finding.steps == 30
    # Every recorded label of one class: not judged, and said so.
    one = run_rule(make_trace(tensors=batches(np.zeros(1920, dtype=np.int64))), "DBG605")
    assert one.status is RuleStatus.skipped
    assert "every recorded training label is class 0 (1920 in 30 records)" in one.reason
    # X² is summed over the cells that occur (sum c² / E - N): Pearson's over the whole table.
    pairs = np.concatenate(
        [np.repeat(np.array([k, (k + 1) % 10]), 32) for k in range(10) for _ in range(3)]
    )
    (finding,) = run_rule(
        make_trace(tensors=batches(pairs)), "DBG605", max_correlation=0.4
    ).findings
    table = np.stack([np.bincount(pairs[i : i + 64], minlength=10) for i in range(0, 1920, 64)])
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    assert finding.extra["chi_square"] == pytest.approx(((table - expected) ** 2 / expected).sum())


def test_chi_square_quantile() -> None:
    from dbgcli.rules.data import _chi_square_quantile

    # Tabulated 99.9 % quantiles.
    for df, quantile in ((10, 29.588), (100, 149.449), (1000, 1143.917)):
        assert _chi_square_quantile(df) == pytest.approx(quantile, rel=0.01)


def test_unshuffled_batches_refuse_a_bad_bar(make_trace) -> None:
    report = analyze_path(
        make_trace(tensors=batches(sorted_labels())),
        select=("DBG605",),
        params={"DBG605": {"max_correlation": 1}},
    )
    assert report.error is not None and "DBG605 max_correlation must be in [0, 1), got 1" in (
        report.error
    )


def test_misprediction_judges_the_held_out_predictions_over_the_training_ones(make_trace) -> None:
    """Training predictions are made with dropout on: a model that gets 10 % of its training
    batches right under heavy dropout and 95 % of the held-out set is not mispredicting its
    classes. Without the evaluations the training predictions are all there is."""
    train = classifier([0.1] * 100, seed=40)
    held_out = classifier([0.95] * 5, batch=256, seed=41, mode="eval", steps=[59, 69, 79, 89, 99])
    both = run_rule(make_trace(tensors=modes(train, held_out)), "DBG601")
    assert not keyed(both, "mispredicted")
    (alone,) = keyed(run_rule(make_trace(tensors=train), "DBG601"), "mispredicted")
    assert alone.mode == "train"


# -- trained_at_start ------------------------------------------------------------------------------


def test_trained_at_start_needs_first_predictions_that_beat_a_constant_guess(make_trace) -> None:
    """At the first loss step: 60 of 64 right against a largest class of a quarter is a
    trained model; chance-level predictions are not, nor is a boosted ensemble's first
    record, taken after its first tree."""
    from dbgcli.rules._context import RuleContext
    from dbgcli.rules.data import trained_at_start
    from dbgcli.trace.reader import open_trace

    labels = np.tile(np.arange(4), 16)
    right = labels.copy()
    right[:4] = (right[:4] + 1) % 4
    guessed = np.random.default_rng(5).integers(0, 4, size=64)

    def starts(predicted: np.ndarray, **extra: dict) -> object:
        path = make_trace(
            scalars={"loss": [0.2, 0.2]},
            tensors={
                "labels": {"values": [labels], "collection": "labels"},
                "predictions": {"values": [predicted], "collection": "predictions"},
                **extra,
            },
        )
        with open_trace(path) as trace:
            return trained_at_start(RuleContext(trace))

    found = starts(right)
    assert found is not None and (found.step, found.right, found.samples) == (0, 60, 64)
    assert found.constant == 0.25
    assert starts(guessed) is None
    trees = {"trees/depth": {"values": [np.array([3])], "collection": "trees"}}
    assert starts(right, **trees) is None


def test_counts_a_single_output_predicts_are_quantities_not_classes(make_trace) -> None:
    """Poisson counts (up to 7 here) against one output per sample: a classifier of one score
    has two classes and its loss cannot take a label of 7, so the labels are a regression's
    targets and the class rules do not judge them. Two-class labels against the same output
    are judged."""
    rng = np.random.default_rng(7)
    counts = [np.minimum(rng.poisson(2.0, 64), 9).astype(np.float32) for _ in range(20)]
    outputs = [(c + rng.normal(0, 1, 64)).astype(np.float32)[:, None] for c in counts]
    tensors = {
        "labels": {"values": counts, "collection": "labels"},
        "predictions": {"values": outputs, "collection": "predictions"},
    }
    for rule_id in ("DBG601", "DBG604", "DBG605"):
        result = run_rule(make_trace(tensors=tensors), rule_id)
        assert result.status is RuleStatus.skipped, rule_id
        assert result.reason.startswith("the labels are quantities, not classes: they reach 7")
    binary = [(c > 2).astype(np.float32) for c in counts]
    tensors["labels"]["values"] = binary
    assert run_rule(make_trace(tensors=tensors), "DBG601").status is not RuleStatus.skipped
    # A segmentation's void pixels carry one ignore index, 255, beyond its 4 classes.
    masks = [rng.integers(0, 4, size=(2, 8, 8)) for _ in range(20)]
    for mask in masks:
        mask[:, 0, :] = 255
    logits = [rng.normal(size=(2, 4, 8, 8)).astype(np.float32) for _ in range(20)]
    segmentation = {
        "labels": {"values": masks, "collection": "labels"},
        "predictions": {"values": logits, "collection": "predictions"},
    }
    assert run_rule(make_trace(tensors=segmentation), "DBG604").status is not RuleStatus.skipped


# -- DBG606 repeated-batch ------------------------------------------------------------------------


def loader_run(path: Path, *, advanced: bool, record_eval: bool) -> Path:
    """A 5-class MLP on 3,500 samples read by a DataLoader without shuffling, batch 64:
    iterated as it should be (``advanced``), or with ``next(iter(loader))`` at every step,
    the first batch each time; inputs recorded every training step (in full every 10th),
    and (``record_eval``) those of the 500-sample evaluation every 25 steps."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    centres = torch.randn(5, 20)
    y = torch.randint(0, 5, (4000,))
    x = centres[y] + torch.randn(4000, 20)
    data = torch.utils.data.TensorDataset(x[:3500], y[:3500])
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(loader)
    with attach(model, optimizer, path) as hook:
        for step in range(100):
            if advanced:
                inputs, labels = next(batches, (None, None))
                if inputs is None:
                    batches = iter(loader)
                    inputs, labels = next(batches)
            else:
                inputs, labels = next(iter(loader))
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            hook.record_loss(loss)
            hook.record(inputs=inputs, raw=step % 10 == 0)
            loss.backward()
            optimizer.step()
            if step % 25 == 0:
                with torch.no_grad():
                    held_out = model(x[3500:])
                if record_eval:
                    hook.record(inputs=x[3500:], mode="eval")
                hook.record_loss(torch.nn.functional.cross_entropy(held_out, y[3500:]), mode="eval")
    return path


def test_repeated_batch_finds_a_loader_that_is_never_advanced(tmp_path: Path) -> None:
    """``next(iter(loader))`` inside the loop: the first batch at every step. Evaluated on
    500 samples, more than the 64 it trains on, the run is one batch of a split: a warning.
    Without a held-out batch to compare, full-batch training looks the same: a note. A
    loader iterated as it should be passes."""
    stuck = loader_run(tmp_path / "stuck.h5", advanced=False, record_eval=True)
    (finding,) = run_rule(stuck, "DBG606").findings
    assert (finding.key, finding.severity, finding.steps) == ("repeated", Severity.warning, 100)
    assert "the same batch of 1280 values at all 100 records" in finding.message
    unsized = loader_run(tmp_path / "unsized.h5", advanced=False, record_eval=False)
    assert [(f.key, f.severity) for f in run_rule(unsized, "DBG606").findings] == [
        ("one-batch", Severity.info)
    ]
    fine = loader_run(tmp_path / "fine.h5", advanced=True, record_eval=True)
    assert run_rule(fine, "DBG606").status is RuleStatus.passed


def test_repeated_batch_needs_the_same_values_in_order_at_consecutive_steps(make_trace) -> None:
    """Inputs zeroed by a bug (x // 255) are alike at every step without being one batch
    (DBG401's finding); fresh one-hot batches share every statistic and differ in full; an
    unshuffled loader's first batch recorded once an epoch is as it should be."""
    zeros = {"values": [np.zeros((64, 8), np.float32)] * 10, "collection": "inputs"}
    assert run_rule(make_trace(tensors={"inputs": zeros}), "DBG606").status is RuleStatus.passed
    rng = np.random.default_rng(0)
    one_hot = [np.eye(4, dtype=np.float32)[rng.integers(0, 4, (64, 50))] for _ in range(10)]
    fresh = {"values": one_hot, "collection": "inputs"}
    assert run_rule(make_trace(tensors={"inputs": fresh}), "DBG606").status is RuleStatus.passed
    first = rng.normal(size=(64, 8)).astype(np.float32)
    epochs = {"values": [first] * 8, "steps": [25 * i for i in range(8)], "collection": "inputs"}
    skipped = run_rule(make_trace(tensors={"inputs": epochs}), "DBG606")
    assert skipped.status is RuleStatus.skipped
    every_step = {"values": [first] * 8, "collection": "inputs"}
    assert [
        f.key for f in run_rule(make_trace(tensors={"inputs": every_step}), "DBG606").findings
    ] == ["one-batch"]


# -- DBG607 labels-shifted-twice ------------------------------------------------------------------


@pytest.mark.parametrize(("ahead", "found"), [(2, True), (1, False), (0, False)])
def test_labels_two_tokens_ahead_of_their_inputs_are_shifted_twice(
    make_trace, ahead: int, found: bool
) -> None:
    """Sequences of 20 tokens and labels of the same shape, ``ahead`` positions on; the last
    positions, past the sequence, are ignored (-100)."""
    rng = np.random.default_rng(7)
    inputs, labels = [], []
    for _ in range(5):
        sequence = rng.integers(0, 50, size=(8, 22))
        inputs.append(sequence[:, :20])
        shifted = sequence[:, ahead : ahead + 20].copy()
        shifted[:, 20 - ahead :] = -100
        labels.append(shifted)
    path = make_trace(
        tensors={
            "input_ids": {"values": inputs, "collection": "inputs"},
            "labels": {"values": labels, "collection": "labels"},
        }
    )
    result = run_rule(path, "DBG607")
    if not found:
        assert result.status is RuleStatus.passed
        return
    (finding,) = result.findings
    assert (finding.first_step, finding.last_step, finding.steps) == (0, 4, 5)
    assert finding.severity is Severity.error
    assert "the labels (labels) are the input ids (input_ids) two positions on" in finding.message
