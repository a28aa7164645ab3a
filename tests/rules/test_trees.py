"""DBG701 tree-depth and DBG702 feature-importance-overweight.

The XGBoost capture callback is not part of the package yet; ``record_xgboost`` below writes
the recording convention documented in ``dbgcli.rules.trees`` from a real booster, so the
rules are also checked against what XGBoost actually produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from dbgcli import TraceWriter
from dbgcli.findings import Severity
from dbgcli.report.model import RuleStatus
from dbgcli.rules.trees import TopImportanceShare
from dbgcli.trace.reader import open_trace

from .helpers import keyed, run_rule


def depth_trace(make_trace, depths: list[list[int]]):
    return make_trace(
        tensors={
            "trees/depth": {
                "values": [np.array(d, dtype=np.int64) for d in depths],
                "collection": "trees",
            }
        }
    )


def importances(rounds: int, features: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Split counts spread over every feature, growing round by round like XGBoost's weight."""
    rng = np.random.default_rng(seed)
    per_round = rng.multinomial(30, rng.dirichlet(np.full(features, 5.0)), size=rounds)
    return list(np.cumsum(per_round, axis=0).astype(np.float64))


def importance_trace(make_trace, by_type: dict[str, list[np.ndarray]], **writer_options: Any):
    return make_trace(
        tensors={
            f"feature_importance/{kind}": {
                "values": values,
                "collection": "feature_importance",
                "kind": kind,
            }
            for kind, values in by_type.items()
        },
        **writer_options,
    )


# -- DBG701 tree-depth ------------------------------------------------------------------------


def test_tree_depth_reports_first_round_and_deepest_tree(make_trace) -> None:
    depths = [[6]] * 5 + [[11], [14], [9], [12], [6]]
    result = run_rule(depth_trace(make_trace, depths), "DBG701")
    (finding,) = keyed(result, "too-deep")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "trees/depth",
        5,
        8,
        3,
    )
    assert (finding.value, finding.threshold, finding.mode) == (14.0, 10.0, "train")
    assert finding.extra == {"deepest_round": 6}
    assert finding.message == "trees as deep as 14 (> 10) in 3 of 10 rounds"
    assert finding.severity is not None and finding.severity.value == "warning"


def test_tree_depth_quiet_at_xgboost_default_depth_and_tunable(make_trace) -> None:
    rng = np.random.default_rng(0)
    path = depth_trace(make_trace, [[int(d)] for d in rng.integers(3, 7, size=50)])
    assert run_rule(path, "tree-depth").status is RuleStatus.passed
    (finding,) = run_rule(path, "tree-depth", depth=4).findings
    assert finding.value == 6.0


def test_tree_depth_looks_at_every_tree_of_a_round(make_trace) -> None:
    # Multi-class boosting adds one tree per class each round.
    path = depth_trace(make_trace, [[3, 4, 5]] * 3 + [[3, 12, 5]] + [[3, 4, 5]] * 3)
    (finding,) = run_rule(path, "DBG701").findings
    assert (finding.first_step, finding.last_step, finding.value) == (3, 3, 12.0)


def test_tree_depth_reports_trees_that_never_split(make_trace) -> None:
    """Single leaves in every round: a constant model. Stumps after rounds that split are an
    ensemble that has learned what it can."""
    (finding,) = run_rule(depth_trace(make_trace, [[0, 0, 0]] * 8), "DBG701").findings
    assert (finding.key, finding.first_step, finding.last_step, finding.steps) == (
        "no-splits",
        0,
        7,
        8,
    )
    assert finding.message.startswith("every tree of the 8 rounds is a single leaf (depth 0)")
    later = depth_trace(make_trace, [[3, 2, 4]] * 3 + [[0, 0, 0]] * 7)
    assert run_rule(later, "DBG701").status is RuleStatus.passed
    few = depth_trace(make_trace, [[0]] * 4)
    assert run_rule(few, "DBG701").status is RuleStatus.passed
    assert run_rule(few, "DBG701", min_rounds=4).status is RuleStatus.violated


def test_tree_depth_skipped_without_trees(make_trace) -> None:
    result = run_rule(make_trace(scalars={"train-logloss": [0.6, 0.5]}), "DBG701")
    assert result.status is RuleStatus.skipped
    assert result.reason == (
        "no tree depths (a tensor of role 'trees' named like 'trees/depth' or 'tree_depth')"
    )


# -- DBG702 feature-importance-overweight ------------------------------------------------------


def test_feature_importance_overweight_fires_when_three_features_take_over(make_trace) -> None:
    weights = importances(20)
    for step in range(10, 20):
        weights[step] = weights[step].copy()
        weights[step][[7, 2, 4]] += [3000.0, 2000.0, 1000.0]
    names = [f"col{i}" for i in range(10)]
    path = importance_trace(make_trace, {"weight": weights}, metadata={"feature_names": names})
    (finding,) = keyed(run_rule(path, "DBG702"), "overweight")
    # Judged on the final model: at its round, saying since when it leans on three features.
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "feature_importance/weight",
        19,
        19,
        1,
    )
    top = np.sort(weights[19])[::-1][:3].sum() / weights[19].sum()
    assert finding.value == pytest.approx(top) and finding.threshold == 0.8
    assert finding.message.startswith("top 3 of 10 features hold ")
    assert finding.message.endswith(
        " % of the weight importance of the final model (> 80 %, since round 10): col7, col2, col4"
    )
    assert finding.extra == {"importance_type": "weight", "since_step": 10}


def test_feature_importance_overweight_early_rounds_do_not_count(make_trace) -> None:
    """Shallow first trees split on a few features; the model that is kept does not."""
    weights = importances(20)
    for step in range(5):
        weights[step] = np.zeros(10)
        weights[step][[0, 1]] = [2.0, 1.0]
    assert run_rule(importance_trace(make_trace, {"weight": weights}), "DBG702").status is (
        RuleStatus.passed
    )


def test_feature_importance_overweight_quiet_on_spread_importance_and_tunable(make_trace) -> None:
    weights = importances(30)
    path = importance_trace(make_trace, {"weight": weights})
    assert run_rule(path, "feature-importance-overweight").status is RuleStatus.passed
    # Nine of ten features hold at least 90 % of any importance.
    (finding,) = run_rule(path, "DBG702", nfeatures=9).findings
    assert (finding.first_step, finding.last_step, finding.extra["since_step"]) == (29, 29, 0)
    assert run_rule(path, "DBG702", nfeatures=9, threshold=0.99).status is RuleStatus.passed


def test_feature_importance_overweight_reads_the_chosen_type(make_trace) -> None:
    spread = importances(10)
    concentrated = [np.array([50.0, 40.0, 30.0] + [1.0] * 7) * (r + 1) for r in range(10)]
    path = importance_trace(make_trace, {"weight": spread, "gain": concentrated})
    assert run_rule(path, "DBG702").status is RuleStatus.passed
    (finding,) = run_rule(path, "DBG702", importance_type="gain").findings
    assert finding.value == pytest.approx(120 / 127)
    assert finding.extra["importance_type"] == "gain"


def test_feature_importance_one_feature_holding_the_gain_is_reported(make_trace) -> None:
    """A leaked column: its splits are few (the weight importance is spread, under the bar),
    but it holds 99 % of the gain, the others chasing noise with splits of tiny gain. A strong
    feature that holds half the gain, the corpus's most, is not a leak."""
    spread = importances(10)
    leaked = [np.array([400.0] + [0.4] * 9) * (r + 1) for r in range(10)]
    path = importance_trace(make_trace, {"weight": spread, "gain": leaked})
    (finding,) = run_rule(path, "DBG702").findings
    assert (finding.key, finding.tensor, finding.first_step) == (
        "one-feature",
        "feature_importance/gain",
        9,
    )
    assert finding.value == pytest.approx(400 / 403.6)
    assert finding.message.startswith("f0 holds 99.1 % of the gain importance")
    strong = [np.array([45.0] + [5.0] * 9) * (r + 1) for r in range(10)]
    path = importance_trace(make_trace, {"weight": spread, "gain": strong})
    assert run_rule(path, "DBG702").status is RuleStatus.passed


def test_feature_importance_overweight_falls_back_to_a_recorded_type(make_trace) -> None:
    concentrated = [np.array([50.0, 40.0, 30.0] + [1.0] * 7)] * 4
    (finding,) = run_rule(importance_trace(make_trace, {"cover": concentrated}), "DBG702").findings
    assert "of the cover importance" in finding.message and finding.first_step == 3


def test_feature_importance_overweight_needs_more_features_than_nfeatures(make_trace) -> None:
    three = [np.array([5.0, 1.0, 1.0])] * 5
    assert (
        run_rule(importance_trace(make_trace, {"weight": three}), "DBG702").status
        is RuleStatus.passed
    )


def test_feature_importance_derivation_reads_only_records_that_can_exceed(make_trace) -> None:
    weights = importances(6)
    weights[4] = np.array([90.0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    path = importance_trace(make_trace, {"weight": weights})
    with open_trace(path) as trace:
        info = trace.tag("feature_importance/weight")
        derivation = TopImportanceShare(3, 0.8)
        # 3 × max / sum bounds the top-3 share: only record 4 can pass 0.8.
        assert derivation.wanted(info, trace).tolist() == [False] * 4 + [True, False]
        share, top = trace.derive(info.tag, [derivation])[0]
    assert np.isnan(share[[0, 1, 2, 3, 5]]).all() and share[4] == pytest.approx(92 / 99)
    assert top[4].tolist() == [0, 1, 2]


def test_feature_importance_overweight_skipped_without_importances(make_trace) -> None:
    result = run_rule(make_trace(scalars={"train-logloss": [0.6, 0.5]}), "DBG702")
    assert result.status is RuleStatus.skipped
    assert result.reason == (
        "no full feature importance tensors (role 'feature_importance', kind weight, gain, "
        "cover, total_gain or total_cover)"
    )
    stats_only = make_trace(
        tensors={
            "feature_importance/weight": {
                "values": importances(3),
                "collection": "feature_importance",
                "kind": "weight",
            }
        },
        raw_every=0,
    )
    assert run_rule(stats_only, "DBG702").reason == result.reason


# -- real XGBoost -----------------------------------------------------------------------------


def record_xgboost(
    path: Path, params: dict[str, Any], rounds: int, features: int = 12, seed: int = 0
) -> Path:
    """Train XGBoost on a synthetic problem and record trees and importances by the convention."""
    import xgboost as xgb  # an installed test extra: missing, it must fail, not skip

    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(600, features))
    labels = (inputs @ rng.normal(size=features) + 0.5 * rng.normal(size=600) > 0).astype(int)
    names = [f"x{i}" for i in range(features)]

    def depth(node: dict[str, Any]) -> int:
        return 0 if "leaf" in node else 1 + max(depth(child) for child in node["children"])

    class Recorder(xgb.callback.TrainingCallback):
        def __init__(self, writer: TraceWriter) -> None:
            self.writer = writer
            self.trees = 0

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            dumps = model.get_dump(dump_format="json")
            new = [depth(json.loads(tree)) for tree in dumps[self.trees :]]
            self.trees = len(dumps)
            self.writer.add_tensor(
                "trees/depth", np.array(new, dtype=np.int64), epoch, collection="trees"
            )
            for kind in ("weight", "gain", "cover"):
                scores = model.get_score(importance_type=kind)
                values = np.array([scores.get(name, 0.0) for name in names], dtype=np.float64)
                self.writer.add_tensor(
                    f"feature_importance/{kind}",
                    values,
                    epoch,
                    collection="feature_importance",
                    kind=kind,
                    raw=True,
                )
            return False

    data = xgb.DMatrix(inputs, label=labels, feature_names=names)
    with TraceWriter(
        path, overwrite=True, raw_every=0, framework="xgboost", metadata={"feature_names": names}
    ) as writer:
        xgb.train(
            {"objective": "binary:logistic", "nthread": 1, "seed": seed, **params},
            data,
            rounds,
            callbacks=[Recorder(writer)],
        )
    return path


def test_xgboost_default_run_is_quiet(tmp_path: Path) -> None:
    path = record_xgboost(tmp_path / "xgb.h5", {"max_depth": 6}, rounds=20)
    with open_trace(path) as trace:
        assert trace.stat("trees/depth", "max").values.max() == 6
    assert run_rule(path, "DBG701").status is RuleStatus.passed
    for kind in ("weight", "gain", "cover"):
        assert run_rule(path, "DBG702", importance_type=kind).status is RuleStatus.passed


def test_smdebug_tree_depth_max_depth_100_fires(tmp_path: Path) -> None:
    # 2019 SageMaker Debugger case: max_depth 100 -> the rule (depth 4) fires.
    path = record_xgboost(
        tmp_path / "deep.h5", {"max_depth": 100, "min_child_weight": 0, "lambda": 0}, rounds=5
    )
    (finding,) = run_rule(path, "DBG701", depth=4).findings
    assert finding.first_step == 0 and finding.value is not None and finding.value > 4


def test_smdebug_tree_depth_max_depth_4_for_10_rounds_is_quiet(tmp_path: Path) -> None:
    # 2019 SageMaker Debugger case: max_depth 4, num_round 10 -> the rule (depth 4) does not fire.
    path = record_xgboost(tmp_path / "shallow.h5", {"max_depth": 4}, rounds=10)
    assert run_rule(path, "DBG701", depth=4).status is RuleStatus.passed


# -- DBG703 boosting-learning-rate ----------------------------------------------------------


def record_with_callback(
    path: Path,
    eta: float,
    rounds: int,
    *,
    noise: bool = False,
    early_stopping: int | None = None,
    continued: bool = False,
) -> Path:
    """A real XGBoost run recorded by dbg's own callback (its booster configuration in the
    metadata). ``noise``: labels unrelated to the inputs; ``early_stopping``: its rounds on a
    validation set; ``continued``: from a booster trained 50 rounds before the recording."""
    import xgboost as xgb

    from dbgcli.xgboost import DbgCallback

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(600, 6))
    labels = (inputs[:, 0] + inputs[:, 1] ** 2 > 1).astype(int)
    if noise:
        labels = rng.integers(0, 2, size=600)
    train, valid = (
        xgb.DMatrix(inputs[:400], label=labels[:400]),
        xgb.DMatrix(inputs[400:], label=labels[400:]),
    )
    params = {"objective": "binary:logistic", "eta": eta, "max_depth": 3, "nthread": 1}
    start = xgb.train(params, train, 50) if continued else None
    xgb.train(
        params,
        train,
        rounds,
        evals=[(train, "train"), (valid, "valid")],
        early_stopping_rounds=early_stopping,
        xgb_model=start,
        verbose_eval=False,
        callbacks=[DbgCallback(path, data=train)],
    )
    return path


def test_boosting_learning_rate_too_low_for_its_rounds(tmp_path: Path) -> None:
    """eta 1e-3 (a neural network's rate) over 30 rounds adds up to 0.03 of one unshrunk
    tree: a warning once the run is over, read from the booster configuration the callback
    stores; XGBoost's default 0.3 passes."""
    path = record_with_callback(tmp_path / "slow.h5", 1e-3, 30)
    (finding,) = keyed(run_rule(path, "DBG703"), "too-low")
    assert finding.value == pytest.approx(0.03, rel=1e-4)
    assert (finding.first_step, finding.last_step, finding.threshold) == (0, 29, 1.0)
    assert finding.message == (
        "learning rate (eta) 0.001 x 30 rounds = 0.03 (< 1): the ensemble adds up less than "
        "one unshrunk tree, so its predictions move less than one full step from the base score"
    )
    assert run_rule(path, "DBG703", min_total=0.01).status is RuleStatus.passed
    default = record_with_callback(tmp_path / "default.h5", 0.3, 30)
    assert run_rule(default, "DBG703").status is RuleStatus.passed


def test_boosting_learning_rate_leaves_early_stopping_and_continued_training_alone(
    tmp_path: Path,
) -> None:
    """Early stopping that ends a run on noise labels at its validation optimum says more
    rounds did not help, so the rate did not limit it; a training continued from a booster
    with 50 trees holds rounds the trace does not."""
    stopped = record_with_callback(tmp_path / "stopped.h5", 0.05, 200, noise=True, early_stopping=5)
    with open_trace(stopped) as trace:
        assert trace.metadata["early_stopping"]["best_step"] < 10
    assert run_rule(stopped, "DBG703").status is RuleStatus.passed
    continued = record_with_callback(tmp_path / "continued.h5", 0.1, 5, continued=True)
    assert run_rule(continued, "DBG703").status is RuleStatus.passed


def test_boosting_learning_rate_from_hyperparameters_and_a_note_while_running(
    make_trace,
) -> None:
    """A hand trace gives the rate as a hyperparameter beside its trees; while its writer is
    still running, the rounds so far are a note. A neural network's ``lr`` beside no trees is
    not read."""
    trace = make_trace(
        tensors={"trees/depth": {"values": [np.array([3])] * 20, "collection": "trees"}},
        hyperparameters={"learning_rate": 0.01},
    )
    (finding,) = run_rule(trace, "DBG703").findings
    assert (finding.value, finding.severity) == (pytest.approx(0.2), Severity.warning)
    with h5py.File(trace, "r+") as file:
        file.attrs["closed"] = False
    assert run_rule(trace, "DBG703").findings[0].severity is Severity.info
    network = make_trace(scalars={"loss": [1.0] * 20}, hyperparameters={"learning_rate": 0.01})
    assert run_rule(network, "DBG703").status is RuleStatus.skipped
