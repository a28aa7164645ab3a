"""The XGBoost callback, checked on real boosting runs through the public trace reader."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from dbgcli import TraceWriter, open_trace
from dbgcli.errors import TraceWriterError
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import RuleStatus
from dbgcli.trace.writer import DEFAULT_RAW_BUDGET
from dbgcli.xgboost import (
    IMPORTANCE_TYPES,
    TREE_READ_EVERY,
    DbgCallback,
    model_tree_depths,
    tree_depth,
)
from tests.rules.helpers import analyze_path

N_FEATURES = 6


def make_data(seed: int, rows: int = 400, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES))
    # Feature 5 is never useful (and, being constant, never split on).
    x[:, 5] = 1.0
    score = 2 * x[:, 0] + x[:, 1] - 0.5 * x[:, 2] + rng.normal(scale=0.5, size=rows)
    labels = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return x, labels.astype(np.float32)


def train(
    callbacks: list[xgb.callback.TrainingCallback],
    rounds: int = 8,
    history: dict[str, dict[str, list[float]]] | None = None,
    **params: object,
) -> tuple[xgb.Booster, xgb.DMatrix, xgb.DMatrix]:
    x, y = make_data(0)
    xv, yv = make_data(1)
    dtrain, dvalid = xgb.DMatrix(x, label=y), xgb.DMatrix(xv, label=yv)
    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "eval_metric": ["logloss", "error"],
            "max_depth": 4,
            "seed": 0,
            **params,
        },
        dtrain,
        num_boost_round=rounds,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        callbacks=callbacks,
        evals_result=history,
        verbose_eval=False,
    )
    return booster, dtrain, dvalid


def boost(
    params: dict[str, object], dtrain: xgb.DMatrix, callback: xgb.callback.TrainingCallback
) -> None:
    """20 rounds on ``dtrain``, evaluated on itself, recorded by ``callback``."""
    xgb.train(
        params,
        dtrain,
        num_boost_round=20,
        evals=[(dtrain, "train")],
        callbacks=[callback],
        verbose_eval=False,
    )


def test_metrics_trees_and_feature_importance_per_round(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    path = tmp_path / "run.h5"
    x, y = make_data(0)
    dtrain = xgb.DMatrix(x, label=y)
    history: dict[str, dict[str, list[float]]] = {}
    callback = DbgCallback(path, data=dtrain, hyperparameters={"max_depth": 4})
    booster, _, _ = train([callback], history=history)
    rounds = list(range(8))
    with open_trace(path) as trace:
        assert trace.metadata["framework"] == "xgboost"
        assert trace.metadata["feature_names"] == [f"f{i}" for i in range(N_FEATURES)]
        assert trace.metadata["hyperparameters"] == {"max_depth": 4}
        for metric in ("logloss", "error"):
            for mode, name in (("train", "train"), ("eval", "valid")):
                series = trace.scalar(metric, mode=mode)
                assert series.steps.tolist() == rounds
                np.testing.assert_allclose(series.values, history[name][metric])
        np.testing.assert_array_equal(
            trace.scalar("loss", mode="eval").values, trace.scalar("logloss", mode="eval").values
        )

        depth = trace.tag("trees/depth")
        assert depth.collection == "trees"
        assert trace.index("trees/depth")[0].tolist() == rounds
        # The callback reads the text dump's indentation; the JSON dump's tree is independent.
        expected_depths = [tree_depth(tree) for tree in booster.get_dump(dump_format="json")]
        recorded = [int(trace.raw("trees/depth", step)[0]) for step in rounds]
        assert recorded == expected_depths
        assert max(recorded) <= 4

        for importance_type in IMPORTANCE_TYPES:
            tag = f"feature_importance/{importance_type}"
            info = trace.tag(tag)
            assert (info.collection, info.kind, info.raw_records) == (
                "feature_importance",
                importance_type,
                8,
            )
            # Every round's importance is the model's so far, summed from the new trees of
            # each round; xgboost sums in float32, hence the tolerance.
            for step in rounds:
                score = booster[: step + 1].get_score(importance_type=importance_type)
                np.testing.assert_allclose(
                    trace.raw(tag, step),
                    [score.get(f"f{i}", 0.0) for i in range(N_FEATURES)],
                    rtol=1e-6,
                )
            assert trace.raw(tag, 7)[5] == 0.0  # never split on

        np.testing.assert_array_equal(trace.raw("labels", 0), y)
        # In full every raw_every (100) rounds, within the default budget, and after the last:
        # rounds 0 and 7.
        assert callback.writer is not None and callback.writer.raw_budget == DEFAULT_RAW_BUDGET
        assert trace.index("predictions")[0].tolist() == [0, 7]
        np.testing.assert_allclose(trace.raw("predictions", 7), booster.predict(dtrain), rtol=1e-6)
        np.testing.assert_allclose(
            trace.stat("predictions", "mean").values[-1], booster.predict(dtrain).mean(), rtol=1e-6
        )


def test_training_is_identical_with_and_without_the_callback(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    x, y = make_data(0)
    plain, _, _ = train([], subsample=0.8)
    recorded, _, _ = train(
        [DbgCallback(tmp_path / "run.h5", data=xgb.DMatrix(x, label=y))], subsample=0.8
    )
    assert plain.save_raw("json") == recorded.save_raw("json")


def test_early_stopping_is_noted_and_spares_the_rounds_it_waited_through(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    # Deep trees at a high rate overfit within a few rounds: early stopping waits 30 more.
    stopped = tmp_path / "stopped.h5"
    x, y = make_data(0, rows=200)
    xv, yv = make_data(1, rows=200)
    dtrain, dvalid = xgb.DMatrix(x, label=y), xgb.DMatrix(xv, label=yv)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 8, "eta": 0.5, "seed": 0},
        dtrain,
        num_boost_round=500,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        early_stopping_rounds=30,
        callbacks=[DbgCallback(stopped)],
        verbose_eval=False,
    )
    assert booster.num_boosted_rounds() == booster.best_iteration + 31 < 500
    with open_trace(stopped) as trace:
        assert trace.metadata["early_stopping"] == {"best_step": booster.best_iteration}
    overtraining = analyze_path(stopped, select=("DBG304",)).results[0]
    assert overtraining.status is RuleStatus.skipped
    assert f"best at step {booster.best_iteration}" in overtraining.reason
    # Without early stopping nothing is noted, also when training goes on from a booster that
    # early stopping left its best_iteration on.
    plain, more = tmp_path / "plain.h5", tmp_path / "more.h5"
    train([DbgCallback(plain)])
    xgb.train(
        {"max_depth": 8},
        dtrain,
        num_boost_round=5,
        xgb_model=booster,
        callbacks=[DbgCallback(more)],
    )
    for path in (plain, more):
        with open_trace(path) as trace:
            assert "early_stopping" not in trace.metadata


def test_a_regression_on_whole_numbers_is_no_classification(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    # Counts as targets: whole numbers that would read as some hundred class ids.
    x, _ = make_data(2)
    counts = np.round(np.exp(1 + x[:, 0] + 0.5 * x[:, 1])).astype(np.float32)
    path = tmp_path / "counts.h5"
    dtrain = xgb.DMatrix(x, label=counts)
    boost(
        {"objective": "reg:squarederror", "max_depth": 3, "seed": 0},
        dtrain,
        DbgCallback(path, data=dtrain),
    )
    with open_trace(path) as trace:
        assert trace.metadata["task"] == "regression"
    results = {r.id: r for r in analyze_path(path, select=("DBG303", "DBG601", "DBG604")).results}
    for rule_id in ("DBG601", "DBG604"):
        assert results[rule_id].status is RuleStatus.skipped
        assert results[rule_id].reason == (
            "the labels are the targets of a regression (metadata task 'regression'), not classes"
        )
    assert not any(f.key == "at-chance" for f in results["DBG303"].findings)
    # A classifier's trace says nothing of its task: the labels are read as classes.
    plain = tmp_path / "plain.h5"
    train([DbgCallback(plain)])
    with open_trace(plain) as trace:
        assert "task" not in trace.metadata


@pytest.mark.parametrize(
    ("metrics", "loss"), [(["ndcg@5", "map@5", "rmse"], "rmse"), (["ndcg@5", "auc"], None)]
)
def test_a_score_that_rises_is_not_recorded_as_the_loss(
    tmp_path: Path, no_dbg_warnings: None, metrics: list[str], loss: str | None
) -> None:
    """A ranker's first metric, NDCG, rises as it learns: ``loss`` is the first metric that
    falls (none when every metric is a score), so the loss rules do not read a rising NDCG
    as a loss that climbs."""
    x, y = make_data(3)
    path = tmp_path / "rank.h5"
    dtrain = xgb.DMatrix(x, label=y)
    dtrain.set_group([20] * (len(y) // 20))
    params = {"objective": "rank:pairwise", "eval_metric": metrics, "max_depth": 3, "seed": 0}
    boost(params, dtrain, DbgCallback(path))
    with open_trace(path) as trace:
        assert trace.scalar("ndcg@5").values[-1] > trace.scalar("ndcg@5").values[0]
        if loss is None:
            assert "loss" not in trace
        else:
            assert trace.scalar("loss").values.tolist() == trace.scalar(loss).values.tolist()
    findings = analyze_path(path, select=("DBG301", "DBG303")).findings
    assert findings == []


@pytest.mark.parametrize(
    ("metrics", "loss"), [(["merror", "mlogloss"], "mlogloss"), (["merror"], None)]
)
def test_an_error_rate_is_not_recorded_as_the_loss(
    tmp_path: Path, no_dbg_warnings: None, metrics: list[str], loss: str | None
) -> None:
    """A four-class booster evaluated with ``merror`` first: the share of misclassified
    samples (0.75 for a guess) is no loss on ``ln C``'s scale, so ``loss`` copies
    ``mlogloss``, and nothing when the error rate is the only metric."""
    x, y = make_data(4, classes=4)
    path = tmp_path / "multiclass.h5"
    params = {"objective": "multi:softprob", "num_class": 4, "eval_metric": metrics, "seed": 0}
    boost(params, xgb.DMatrix(x, label=y), DbgCallback(path))
    with open_trace(path) as trace:
        assert trace.scalar("merror").values[-1] < trace.scalar("merror").values[0]
        if loss is None:
            assert "loss" not in trace
        else:
            assert trace.scalar("loss").values.tolist() == trace.scalar(loss).values.tolist()


def test_an_imbalance_the_objective_compensates_is_a_note(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """5 % positives: without ``scale_pos_weight`` DBG601 warns of the imbalance; with it,
    the fix is in place and the imbalance is a note, unless it weighs the positives down."""
    x, _ = make_data(4, rows=1000)
    rng = np.random.default_rng(4)
    positives = (x[:, 0] + rng.normal(scale=0.3, size=len(x)) > 1.65).astype(np.float32)
    dtrain = xgb.DMatrix(x, label=positives)
    severities = {}
    for weight in (1.0, 19.0, 0.0625):
        path = tmp_path / f"weight{weight:g}.h5"
        params = {"objective": "binary:logistic", "scale_pos_weight": weight, "seed": 0}
        boost(params, dtrain, DbgCallback(path, data=dtrain))
        with open_trace(path) as trace:
            noted = trace.metadata.get("class_weighting")
        assert noted == (None if weight == 1.0 else {"scale_pos_weight": weight})
        result = analyze_path(path, select=("DBG601",)).results[0]
        (finding,) = [f for f in result.findings if f.key in ("imbalance", "compensated")]
        severities[weight] = (finding.key, finding.severity)
    assert severities == {
        1.0: ("imbalance", Severity.warning),
        19.0: ("compensated", Severity.info),
        0.0625: ("imbalance", Severity.warning),  # 1/16, exact in float32
    }
    # Balancing sample weights in the DMatrix the callback records compensate it too.
    balanced = xgb.DMatrix(x, label=positives, weight=np.where(positives == 1, 19.0, 1.0))
    path = tmp_path / "sample_weights.h5"
    boost({"objective": "binary:logistic", "seed": 0}, balanced, DbgCallback(path, data=balanced))
    with open_trace(path) as trace:
        assert trace.metadata["class_weighting"] == {"sample weights, mean per class": [1.0, 19.0]}
    result = analyze_path(path, select=("DBG601",)).results[0]
    assert [f.key for f in result.findings if f.key in ("imbalance", "compensated")] == [
        "compensated"
    ]
    # Weights that shift the classes a little (1.5 on positives, as recency or a source's
    # trust may) balance nothing: 19 to 1 becomes 13 to 1.
    shifted = xgb.DMatrix(x, label=positives, weight=np.where(positives == 1, 1.5, 1.0))
    path = tmp_path / "shifting_weights.h5"
    boost({"objective": "binary:logistic", "seed": 0}, shifted, DbgCallback(path, data=shifted))
    with open_trace(path) as trace:
        assert "class_weighting" not in trace.metadata


@pytest.mark.parametrize("max_leaves", [31, 0])
def test_loss_guided_trees_are_judged_by_their_leaves_not_their_depth(
    tmp_path: Path, no_dbg_warnings: None, max_leaves: int
) -> None:
    """Loss-guided growth on noisy labels: 31 leaves a tree reach 14 deep along the best
    branches, and hold what a depth-5 tree does; without a cap on the leaves the trees grow
    23 deep, and DBG701 names them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6))
    y = (x[:, 0] + rng.normal(scale=1.5, size=3000) > 0).astype(np.float32)
    path = tmp_path / "lossguide.h5"
    params = {"objective": "binary:logistic", "grow_policy": "lossguide", "max_depth": 0}
    boost(
        {**params, "max_leaves": max_leaves, "seed": 0}, xgb.DMatrix(x, label=y), DbgCallback(path)
    )
    with open_trace(path) as trace:
        assert trace.stat("trees/depth", "max").values.max() > 10  # deep either way
    deep = [f for f in analyze_path(path, select=("DBG701",)).findings if f.key == "too-deep"]
    assert bool(deep) is (max_leaves == 0)


@pytest.mark.parametrize("fault", ["min_child_weight", "constant_labels"])
def test_a_booster_that_never_splits_is_named(
    tmp_path: Path, no_dbg_warnings: None, fault: str
) -> None:
    """min_child_weight far above any node's hessian, or labels that are one value: every
    tree is a single leaf, and DBG701 says so first."""
    x, labels = make_data(6, rows=400)
    if fault == "constant_labels":
        labels = np.zeros_like(labels)
    params: dict[str, object] = {"objective": "binary:logistic", "seed": 0}
    if fault == "min_child_weight":
        params["min_child_weight"] = 1e6
    path = tmp_path / f"{fault}.h5"
    boost(params, xgb.DMatrix(x, label=labels), DbgCallback(path))
    report = analyze_path(path)
    assert report.verdict.startswith("unhealthy: trees that never split")
    healthy = tmp_path / "healthy.h5"
    boost(
        {"objective": "binary:logistic", "seed": 0},
        xgb.DMatrix(x, label=make_data(6)[1]),
        DbgCallback(healthy),
    )
    assert not [f for f in analyze_path(healthy).findings if f.key == "no-splits"]


def test_multiclass_parallel_trees_and_more_eval_sets(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    x, y = make_data(0, classes=3)
    xv, yv = make_data(1, classes=3)
    xt, yt = make_data(2, classes=3)
    path = tmp_path / "run.h5"
    xgb.train(
        {
            "objective": "multi:softprob",
            "num_class": 3,
            "num_parallel_tree": 2,
            "max_depth": 3,
            "seed": 0,
        },
        xgb.DMatrix(x, label=y),
        num_boost_round=3,
        evals=[
            (xgb.DMatrix(x, label=y), "dtrain"),
            (xgb.DMatrix(xv, label=yv), "valid"),
            (xgb.DMatrix(xt, label=yt), "test"),
        ],
        callbacks=[DbgCallback(path)],
        verbose_eval=False,
    )
    with open_trace(path) as trace:
        assert trace.raw("trees/depth", 0).shape == (6,)  # 3 classes x 2 parallel trees
        assert trace.scalar("mlogloss", mode="train").steps.tolist() == [0, 1, 2]
        assert trace.scalar("mlogloss", mode="eval").steps.tolist() == [0, 1, 2]
        assert trace.scalar("test/mlogloss", mode="eval").steps.tolist() == [0, 1, 2]
        assert trace.scalar("test/loss", mode="eval").steps.tolist() == [0, 1, 2]


def test_trees_read_in_batches_keep_each_round_at_its_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """Rounds past TREE_READ_EVERY, several trees a round, and pruned trees whose node arrays
    hold deleted nodes: each round's depths and importance are those of the model then."""
    x, y = make_data(0, classes=3)
    path = tmp_path / "run.h5"
    rounds = 2 * TREE_READ_EVERY + 5
    dtrain = xgb.DMatrix(x, label=y)
    booster = xgb.train(
        {
            "objective": "multi:softprob",
            "num_class": 3,
            "num_parallel_tree": 2,
            "tree_method": "exact",  # grows, then prunes: deleted nodes stay in the arrays
            "gamma": 1.0,
            "max_depth": 6,
            "seed": 0,
        },
        dtrain,
        num_boost_round=rounds,
        evals=[(dtrain, "train")],
        callbacks=[DbgCallback(path)],
        verbose_eval=False,
    )
    dumps = booster.get_dump(dump_format="json")
    assert len(dumps) == 6 * rounds
    with open_trace(path) as trace:
        assert trace.index("trees/depth")[0].tolist() == list(range(rounds))
        # The trees' records reach the trace after the round's metrics: no step went back.
        assert trace.timeline().steps.tolist() == list(range(rounds))
        for step in range(rounds):
            expected = [tree_depth(tree) for tree in dumps[6 * step : 6 * step + 6]]
            assert trace.raw("trees/depth", step).tolist() == expected
            for importance_type in IMPORTANCE_TYPES:
                score = booster[: step + 1].get_score(importance_type=importance_type)
                # get_score sums the gains and covers of 150 trees in float32; dbg in float64.
                np.testing.assert_allclose(
                    trace.raw(f"feature_importance/{importance_type}", step),
                    [score.get(f"f{i}", 0.0) for i in range(N_FEATURES)],
                    rtol=1e-5,
                )


@pytest.mark.filterwarnings("ignore:(?s).*max_depth:UserWarning")  # train() sets it for trees
def test_a_linear_booster_records_its_metrics_and_no_trees(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    path = tmp_path / "run.h5"
    train([DbgCallback(path)], booster="gblinear")
    with open_trace(path) as trace:
        assert trace.scalar("logloss", mode="train").steps.tolist() == list(range(8))
        assert trace.tags("trees/*") == trace.tags("feature_importance/*") == []


def test_the_intercept_is_noted_as_fitted_to_the_labels_or_given(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    x, y = make_data(0)
    y = (y + (x[:, 3] > 1)).clip(0, 1)  # 0.64 positives
    weights = np.linspace(0.5, 1.5, len(y))
    dtrain = xgb.DMatrix(x, label=y, weight=weights)
    boost({"objective": "binary:logistic"}, dtrain, DbgCallback(tmp_path / "fitted.h5"))
    boost(
        {"objective": "binary:logistic", "base_score": 0.3},
        dtrain,
        DbgCallback(tmp_path / "given.h5"),
    )
    with open_trace(tmp_path / "fitted.h5") as trace:
        fitted = trace.metadata["xgboost_intercept"]
    with open_trace(tmp_path / "given.h5") as trace:
        given = trace.metadata["xgboost_intercept"]
    assert fitted["fitted"] is True
    assert fitted["base_score"] == [pytest.approx(np.average(y, weights=weights), rel=1e-6)]
    assert given == {"base_score": [pytest.approx(0.3)], "fitted": False}


def test_a_linear_booster_at_its_optimum_is_judged_from_its_intercept(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """A linear booster at eta 0.5 on data of a logistic model: its first round already
    takes it from 0.693 (the intercept's loss) to 0.571, and it converges at 0.500, the best
    linear model's loss. Judged from its first round it would read as underfitting (88 %),
    and its flat loss as a stall; from the intercept it has learned (72 %), and a convex
    loss that stops falling has reached its optimum."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 20))
    probability = 1 / (1 + np.exp(-x @ (0.45 * rng.normal(size=20))))
    y = (rng.random(6000) < probability).astype(np.float32)
    dtrain, dvalid = xgb.DMatrix(x[:4000], label=y[:4000]), xgb.DMatrix(x[4000:], label=y[4000:])
    path = tmp_path / "linear.h5"
    history: dict[str, dict[str, list[float]]] = {}
    xgb.train(
        {"objective": "binary:logistic", "booster": "gblinear", "eta": 0.5, "lambda": 0},
        dtrain,
        num_boost_round=300,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        evals_result=history,
        callbacks=[DbgCallback(path)],
        verbose_eval=False,
    )
    first, last = history["train"]["logloss"][0], history["train"]["logloss"][-1]
    assert last / first > 0.8 and last / np.log(2) < 0.8
    results = {r.id: r for r in analyze_path(path, select=("DBG301", "DBG303")).results}
    assert results["DBG301"].status is RuleStatus.passed
    assert results["DBG303"].status is RuleStatus.passed


@pytest.mark.parametrize("eta", [0.05, 0.001])
def test_a_low_signal_task_overtrained_is_no_underfitting(
    tmp_path: Path, no_dbg_warnings: None, eta: float
) -> None:
    """Labels drawn from a logistic model of little signal, as clicks or churn: even the true
    probabilities score most of the constant guess's loss. At eta 0.05 the held-out loss
    passes its best within 100 rounds while the training loss falls on to 81 % of the
    intercept's: the model fits more than generalises, so its loss is held up by the
    data's noise, and overtraining leads. At eta 0.001 nothing is fitted: underfitting."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 10))
    score = 0.7 * (0.5 * x[:, 0] - 0.4 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3])
    y = (rng.random(6000) < 1 / (1 + np.exp(-score))).astype(np.float32)
    dtrain, dvalid = xgb.DMatrix(x[:3000], label=y[:3000]), xgb.DMatrix(x[3000:], label=y[3000:])
    path = tmp_path / "clicks.h5"
    xgb.train(
        {"objective": "binary:logistic", "eta": eta, "max_depth": 3, "seed": 0},
        dtrain,
        num_boost_round=300,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        callbacks=[DbgCallback(path)],
        verbose_eval=False,
    )
    report = analyze_path(path)
    underfit = [f for f in report.findings if f.rule_id == "DBG303"]
    if eta < 0.01:
        assert [f.key for f in underfit] == ["loss-high"]
        return
    (note,) = underfit
    assert (note.key, note.severity) == ("high-floor", Severity.info)
    assert "the noise of the data, not the model, holds the loss up" in note.message
    assert report.findings[report.problems[0].cause].rule_id == "DBG304"


def test_soft_labels_of_a_logistic_objective_set_the_loss_floor(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """binary:logistic on a teacher's probabilities (0.1 to 0.9), recorded through ``data``:
    no loss against them falls below their entropy, most of the intercept's, and a model
    that gets there has learned them, not underfitted."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5))
    soft = np.clip(1 / (1 + np.exp(-(0.8 * x[:, 0] - 0.5 * x[:, 1]))), 0.1, 0.9)
    dtrain = xgb.DMatrix(x, label=soft.astype(np.float32))

    def underfit(objective: str) -> list[Finding]:
        path = tmp_path / f"{objective.replace(':', '_')}.h5"
        xgb.train(
            {"objective": objective, "eta": 0.1, "max_depth": 3, "seed": 0},
            dtrain,
            num_boost_round=200,
            evals=[(dtrain, "train")],
            callbacks=[DbgCallback(path, data=dtrain)],
            verbose_eval=False,
        )
        return list(analyze_path(path, select=("DBG303",)).findings)

    (note,) = underfit("binary:logistic")
    assert (note.key, note.severity) == ("high-floor", Severity.info)
    assert "the soft targets' mean entropy" in note.message
    # reg:logistic reports an RMSE by default: no log loss, no entropy floor.
    assert not underfit("reg:logistic")


def test_a_run_evaluated_on_held_out_data_alone_is_no_problems_found(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """``eval_set`` with the validation set alone, a common use of the scikit-learn API: no
    training loss, so nothing says whether training worked; the verdict says so."""
    x, y = make_data(0)
    xv, yv = make_data(1)
    path = tmp_path / "valid_only.h5"
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, callbacks=[DbgCallback(path)])
    model.fit(x, y, eval_set=[(xv, yv)], verbose=False)
    # Feature 0 carries the labels (DBG702's business, not this test's).
    report = analyze_path(path, ignore=("DBG702",))
    assert report.verdict.startswith("no problems found: "), report.verdict
    assert "no train loss series" in report.verdict


def test_the_training_set_can_be_named(tmp_path: Path, no_dbg_warnings: None) -> None:
    x, y = make_data(0)
    xv, yv = make_data(1)
    path = tmp_path / "run.h5"
    xgb.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgb.DMatrix(x, label=y),
        num_boost_round=4,
        # As the scikit-learn API names eval_set entries.
        evals=[
            (xgb.DMatrix(x, label=y), "validation_0"),
            (xgb.DMatrix(xv, label=yv), "validation_1"),
        ],
        callbacks=[DbgCallback(path, train_set="validation_0")],
        verbose_eval=False,
    )
    with open_trace(path) as trace:
        assert trace.scalar("logloss", mode="train").steps.tolist() == [0, 1, 2, 3]
        assert trace.scalar("logloss", mode="eval").steps.tolist() == [0, 1, 2, 3]


def test_raw_budget_spaces_the_rounds_that_keep_labels_and_predictions(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """Without a budget every round keeps them (raw_every=1); with one byte a round, round 0
    takes thousands of rounds' worth, so only the round after the last keeps them again."""
    x, y = make_data(0)
    for budget, kept in ((0, list(range(8))), (1, [0, 7])):
        path = tmp_path / f"budget{budget}.h5"
        data = xgb.DMatrix(x, label=y)
        train([DbgCallback(path, data=data, raw_every=1, raw_budget=budget)])
        with open_trace(path) as trace:
            for tag in ("labels", "predictions"):
                assert [int(s) for chunk in trace.iter_raw(tag) for s in chunk.steps] == kept


def test_a_writer_passed_in_stays_open(tmp_path: Path, no_dbg_warnings: None) -> None:
    with TraceWriter(tmp_path / "run.h5") as writer:
        with pytest.raises(ValueError, match="raw_every"):
            DbgCallback(writer, raw_every=3)
        with pytest.raises(ValueError, match="raw_budget applies to a new trace"):
            DbgCallback(writer, raw_budget=0)
        train([DbgCallback(writer)], rounds=2)
        assert not writer.closed
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.metadata["framework"] == "xgboost"
        assert "xgboost_config" in trace.metadata


def test_bad_arguments_are_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    with pytest.raises(TraceWriterError):
        DbgCallback(path)
    with pytest.raises(ValueError, match="data_mode"):
        DbgCallback(tmp_path / "other.h5", data_mode="validation")
    with pytest.raises(ValueError, match="raw_budget must be >= 0"):
        DbgCallback(tmp_path / "other.h5", raw_budget=-1)


def test_failures_become_log_messages_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dmatrix = np.zeros((3, N_FEATURES))
    callback = DbgCallback(tmp_path / "run.h5", data=not_a_dmatrix)  # type: ignore[arg-type]
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="dbgcli"):
        warnings.simplefilter("error")  # never raised into the loop, even so
        booster, _, _ = train([callback], rounds=3)
    # Once per kind of failure: the rounds' labels and predictions, then the final ones.
    messages = [r.getMessage() for r in caplog.records if r.name == "dbgcli"]
    assert len(messages) == 2
    assert "recording labels and predictions failed" in messages[0]
    assert "recording the final labels and predictions failed" in messages[1]
    assert booster.num_boosted_rounds() == 3
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.index("trees/depth")[0].tolist() == [0, 1, 2]


def test_continued_training_counts_the_trees_it_started_with(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    first, dtrain, _ = train([], rounds=3)
    continued = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "seed": 0},
        dtrain,
        num_boost_round=2,
        xgb_model=first,
        callbacks=[DbgCallback(tmp_path / "run.h5")],
        verbose_eval=False,
    )
    assert continued.num_boosted_rounds() == 5
    with open_trace(tmp_path / "run.h5") as trace:
        steps = trace.index("feature_importance/weight")[0].tolist()
        score = continued.get_score(importance_type="weight")
        np.testing.assert_array_equal(
            trace.raw("feature_importance/weight", steps[-1]),
            [score.get(f"f{i}", 0.0) for i in range(N_FEATURES)],
        )


def test_depths_from_the_model_arrays_equal_those_of_the_dumps() -> None:
    booster, _, _ = train([], rounds=6, max_depth=12, min_child_weight=0, reg_lambda=0)
    depths = model_tree_depths(booster)
    assert depths.tolist() == [tree_depth(t) for t in booster.get_dump(dump_format="json")]
    assert depths.tolist() == [tree_depth(t) for t in booster.get_dump()]
    assert depths.max() > 4
    assert model_tree_depths(booster[2:4]).tolist() == depths[2:4].tolist()


def test_tree_depth_of_text_dumps() -> None:
    assert tree_depth("0:leaf=0.5\n") == 0
    chain = (
        "0:[f0<0.5] yes=1,no=2,missing=1\n\t1:leaf=1\n\t2:[f1<0.5] yes=3,no=4,missing=3\n"
        "\t\t3:leaf=1\n\t\t4:leaf=2\n"
    )
    assert tree_depth(chain) == 2


def test_tree_depth_of_json_dumps() -> None:
    leaf = '{"nodeid": 0, "leaf": 0.5}'
    assert tree_depth(leaf) == 0
    chain = (
        '{"nodeid": 0, "depth": 0, "children": [{"nodeid": 1, "leaf": 1}, '
        '{"nodeid": 2, "depth": 1, "children": '
        '[{"nodeid": 3, "leaf": 1}, {"nodeid": 4, "leaf": 2}]}]}'
    )
    assert tree_depth(chain) == 2


def test_the_scikit_learn_api_takes_the_labels_as_a_dmatrix(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """XGBRegressor builds its DMatrix itself: a DMatrix of the training data passed as
    ``data`` records the labels, which give reg:tweedie's loss its floor (docs/capture.md), so
    DBG303 judges the run rather than skipping it for want of them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6))
    y = np.where(rng.random(2000) < 0.3, 0.0, rng.gamma(2.0, np.exp(0.5 * x[:, 0]) / 2.0))
    paths = {labelled: tmp_path / f"labelled-{labelled}.h5" for labelled in (True, False)}
    for labelled, path in paths.items():
        data = xgb.DMatrix(x[:1500], label=y[:1500]) if labelled else None
        model = xgb.XGBRegressor(
            n_estimators=100,
            learning_rate=0.1,
            max_depth=3,
            objective="reg:tweedie",
            callbacks=[DbgCallback(path, data=data)],
        )
        model.fit(x[:1500], y[:1500], eval_set=[(x[:1500], y[:1500]), (x[1500:], y[1500:])])
    with open_trace(paths[True]) as trace:
        assert trace.tag("labels").raw_records >= 1
    results = {
        labelled: {r.id: r for r in analyze_path(path, select=("DBG303",)).results}["DBG303"]
        for labelled, path in paths.items()
    }
    assert results[True].status is not RuleStatus.skipped
    assert results[False].status is RuleStatus.skipped
