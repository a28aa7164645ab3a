"""XGBoost runs: gradient-boosted trees on synthetic tabular data with an evaluation set.

The hook trace comes from :class:`dbgcli.xgboost.DbgCallback`; the hand trace from a user's
own ``xgboost.callback.TrainingCallback`` (:class:`_HandCallback`) that writes XGBoost's
evaluation log under XGBoost's own names, the depth of the trees each round added (from the
text dump), feature importance and, for classifiers, the labels and predictions of the
training set.

Runs rotate between the two names XGBoost gives the evaluation sets: ``train``/``eval`` as
users of the native API name them, and ``validation_0``/``validation_1`` as the scikit-learn
API names ``eval_set=[(X_train, y_train), (X_valid, y_valid)]`` (scikit-learn is not
installed here, so ``xgb.train`` is called with those names, which is what ``XGBClassifier``
itself does).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import xgboost as xgb
from common import Bounds, HandRecorder, RunSpec, scenario, seed_everything, verify

from dbgcli.xgboost import DbgCallback

FAMILY = "xgboost"
FEATURES = 10
# Full tensors of the labels and predictions every this many rounds (DbgCallback's raw_every;
# the hand callback records them only then, and at the last round).
DATA_EVERY = 10


@dataclass(frozen=True)
class Recipe:
    """One configuration; scenarios are ``replace(<twin's recipe>, <one setting>)``."""

    task: Literal["binary", "multiclass", "regression"] = "binary"
    rounds: int = 60
    eta: float = 0.1
    max_depth: int = 6
    train_samples: int = 2000
    label_noise: float = 0.02  # share of labels replaced by random ones
    leak: bool = False  # an extra feature that is the label plus a little noise
    positive_share: float = 0.5  # binary: share of class 1
    # xgb.train's early_stopping_rounds on the evaluation set (None: train every round).
    early_stopping_rounds: int | None = None


HEALTHY = Recipe()
OBJECTIVES = {
    "binary": {"objective": "binary:logistic", "eval_metric": "logloss"},
    "multiclass": {"objective": "multi:softprob", "eval_metric": "mlogloss", "num_class": 3},
    "regression": {"objective": "reg:squarederror", "eval_metric": "rmse"},
}


def _data(rng: np.random.Generator, count: int, recipe: Recipe) -> xgb.DMatrix:
    """Ten standard normal features; the target is a nonlinear function of the first six
    (each with a similar share), plus noise. Classes are quantiles of it."""
    x = rng.normal(size=(count, FEATURES))
    score = (
        x[:, 0]
        + np.sin(2 * x[:, 1])
        + x[:, 2] * x[:, 3]
        + np.abs(x[:, 4])
        - 0.8 * (x[:, 5] > 0.5)
        + 0.3 * rng.normal(size=count)
    )
    if recipe.task == "regression":
        return xgb.DMatrix(x, label=score)
    if recipe.task == "multiclass":
        labels = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
        classes = 3
    else:
        labels = (score > np.quantile(score, 1 - recipe.positive_share)).astype(int)
        classes = 2
    noisy = rng.random(count) < recipe.label_noise
    labels[noisy] = rng.integers(0, classes, size=int(noisy.sum()))
    if recipe.leak:
        x = np.column_stack([x, labels + rng.normal(scale=0.1, size=count)])
    return xgb.DMatrix(x, label=labels.astype(np.float32))


def _text_depth(tree: str) -> int:
    """Depth of a tree from its text dump: a leaf is indented by one tab per level."""
    return max(len(line) - len(line.lstrip("\t")) for line in tree.splitlines() if "leaf=" in line)


class _HandCallback(xgb.callback.TrainingCallback):
    """What a user writes to log boosting by hand, in their own names."""

    def __init__(
        self,
        spec: RunSpec,
        train_set: str,
        data: xgb.DMatrix | None,
        rounds: int,
        hyperparameters: dict[str, Any],
    ) -> None:
        super().__init__()
        self.hand = HandRecorder(spec, raw_every=0)
        self.hand.writer.set_metadata(hyperparameters=hyperparameters)
        self.names = spec.names
        self.train_set = train_set
        self.data = data
        self.last = rounds - 1

    def after_iteration(
        self, model: xgb.Booster, epoch: int, evals_log: xgb.callback.TrainingCallback.EvalsLog
    ) -> bool:
        writer = self.hand.writer
        for set_name, metrics in evals_log.items():
            mode = (
                self.names.train_loss[1] if set_name == self.train_set else self.names.eval_loss[1]
            )
            for metric, history in metrics.items():
                writer.add_scalar(f"{set_name}-{metric}", float(history[-1]), epoch, mode=mode)
        depths = [_text_depth(tree) for tree in model[epoch : epoch + 1].get_dump()]
        tag, collection = self.names.tree_depth
        writer.add_tensor(tag, np.array(depths), epoch, collection=collection, raw=True)
        features = model.feature_names or [f"f{i}" for i in range(model.num_features())]
        for kind in ("weight", "gain"):
            score = model.get_score(importance_type=kind)
            tag, collection, tag_kind = self.names.importance(kind)
            values = np.array([score.get(name, 0.0) for name in features], dtype=np.float64)
            writer.add_tensor(tag, values, epoch, collection=collection, kind=tag_kind, raw=True)
        if self.data is not None and (epoch % DATA_EVERY == 0 or epoch == self.last):
            predictions = model.predict(self.data, iteration_range=(0, epoch + 1))
            self.hand.data(labels=self.data.get_label(), predictions=predictions, step=epoch)
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        # The run metadata that says early stopping watched the run (docs/trace-format.md),
        # as a user who stops early writes it; XGBoost's EarlyStopping sets best_iteration.
        best = model.attr("best_iteration")
        if best is not None:
            self.hand.writer.set_metadata(early_stopping={"best_step": int(best)})
        self.hand.close()
        return model


def _set_names(spec: RunSpec) -> tuple[str, str]:
    """The names of the training and evaluation sets: native or scikit-learn style, rotated
    over scenario and seed."""
    key = zlib.crc32(f"{spec.family}/{spec.scenario}".encode()) + spec.seed
    return ("train", "eval") if key % 2 == 0 else ("validation_0", "validation_1")


def _train(spec: RunSpec, recipe: Recipe) -> dict[str, float]:
    """Train and record both traces; returns the run's figures."""
    rng = seed_everything(spec.seed)
    dtrain = _data(rng, recipe.train_samples, recipe)
    dvalid = _data(rng, 1000, recipe)
    train_name, eval_name = _set_names(spec)
    params: dict[str, Any] = {
        **OBJECTIVES[recipe.task],
        "eta": recipe.eta,
        "max_depth": recipe.max_depth,
        "seed": spec.seed,
        "nthread": 1,
    }
    classifier = recipe.task != "regression"
    history: dict[str, dict[str, list[float]]] = {}
    hyperparameters = {**params, "num_boost_round": recipe.rounds}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=recipe.rounds,
        evals=[(dtrain, train_name), (dvalid, eval_name)],
        evals_result=history,
        early_stopping_rounds=recipe.early_stopping_rounds,
        verbose_eval=False,
        callbacks=[
            DbgCallback(
                spec.hook_path,
                data=dtrain if classifier else None,
                train_set=train_name,
                raw_every=DATA_EVERY,
                overwrite=True,
                hyperparameters=hyperparameters,
            ),
            _HandCallback(
                spec, train_name, dtrain if classifier else None, recipe.rounds, hyperparameters
            ),
        ],
    )
    return _figures(booster, history[train_name], history[eval_name], dvalid, recipe)


def _figures(
    booster: xgb.Booster,
    train: dict[str, list[float]],
    valid: dict[str, list[float]],
    dvalid: xgb.DMatrix,
    recipe: Recipe,
) -> dict[str, float]:
    metric = OBJECTIVES[recipe.task]["eval_metric"]
    curve = np.array(valid[metric])
    best = int(np.argmin(curve))
    depths = [_text_depth(tree) for tree in booster.get_dump()]
    gain = booster.get_score(importance_type="gain")
    weight = booster.get_score(importance_type="weight")
    figures = {
        "rounds trained": float(len(curve)),
        f"train {metric}, final": train[metric][-1],
        f"eval {metric}, first": curve[0],
        f"eval {metric}, final": curve[-1],
        f"eval {metric}, best": curve[best],
        "round of the best eval": float(best),
        f"eval {metric}, final / best": curve[-1] / curve[best],
        "rounds the eval metric rose, after its best": float(np.sum(np.diff(curve[best:]) > 0)),
        "tree depth, max": float(max(depths)),
        "tree depth, mean": float(np.mean(depths)),
        "top feature share of gain": max(gain.values()) / sum(gain.values()),
        "top feature share of weight": max(weight.values()) / sum(weight.values()),
    }
    labels = dvalid.get_label()
    predictions = booster.predict(dvalid)
    if recipe.task == "regression":
        figures["eval R2"] = 1 - float(np.mean((predictions - labels) ** 2) / np.var(labels))
    elif recipe.task == "multiclass":
        figures["eval accuracy"] = float(np.mean(predictions.argmax(1) == labels))
    else:
        predicted = predictions > 0.5
        figures["eval accuracy"] = float(np.mean(predicted == labels))
        figures["share of class 1 in the eval labels"] = float(np.mean(labels))
        figures["eval recall of class 1"] = float(np.mean(predicted[labels == 1]))
    return figures


# -- scenarios ---------------------------------------------------------------------------------


def _learns(metric: str, final: float, quality: dict[str, Bounds]) -> dict[str, Bounds]:
    """A healthy run: the eval metric ends below ``final`` and within 5 % of its best, and the
    ``quality`` figures (accuracy, R2) are within their bounds."""
    return {
        f"eval {metric}, final": (None, final),
        f"eval {metric}, final / best": (None, 1.05),
        **quality,
    }


# Seeds 0/1/2: eval logloss 0.359/0.334/0.352 (0.69 at the start), train logloss
# 0.159/0.135/0.146, eval accuracy 0.832/0.856/0.844; the top feature holds 26-29 % of the gain.
@scenario(
    FAMILY,
    "healthy",
    cause=None,
    description="""
Binary classification (binary:logistic, logloss) of 2000 training samples with ten features,
six of them informative (2 % random labels); eta 0.1, max_depth 6, 60 rounds, a held-out
evaluation set of 1000 samples. Labels and predictions of the training set are recorded.""",
)
def healthy(spec: RunSpec) -> None:
    verify(spec, _train(spec, HEALTHY), _learns("logloss", 0.45, {"eval accuracy": (0.8, None)}))


# Seeds 0/1/2: eval mlogloss 0.679/0.644/0.641 (ln 3 = 1.10 at chance), train 0.256/0.284/
# 0.260, eval accuracy 0.712/0.723/0.722 (three quantile classes of a noisy score).
@scenario(
    FAMILY,
    "healthy-multiclass",
    cause=None,
    description="""
xgboost healthy as a three-class problem (multi:softprob, mlogloss): the classes are the
terciles of the same score, three trees per round.""",
)
def healthy_multiclass(spec: RunSpec) -> None:
    recipe = replace(HEALTHY, task="multiclass")
    verify(spec, _train(spec, recipe), _learns("mlogloss", 0.8, {"eval accuracy": (0.65, None)}))


# Seeds 0/1/2: eval rmse 0.891/0.916/0.927 (1.63-1.69 at the first round), train rmse
# 0.450/0.485/0.432, eval R2 0.745/0.713/0.727.
@scenario(
    FAMILY,
    "healthy-regression",
    cause=None,
    description="""
xgboost healthy as a regression of the score itself (reg:squarederror, rmse); no labels or
predictions are recorded.""",
)
def healthy_regression(spec: RunSpec) -> None:
    recipe = replace(HEALTHY, task="regression")
    verify(spec, _train(spec, recipe), _learns("rmse", 1.1, {"eval R2": (0.6, None)}))


# Seeds 0/1/2: the eval logloss is best at round 252/335/336 (0.353/0.314/0.312; 0.66-0.67 at
# the first) and early stopping ends the run 25 rounds later, after 278/361/362 of the 1000
# rounds, the eval logloss then 1.01 times its best; train logloss 0.180/0.129/0.131, eval
# accuracy 0.840/0.868/0.857.
@scenario(
    FAMILY,
    "healthy-early-stopping",
    cause=None,
    description="""
xgboost healthy with trees of depth 3, up to 1000 rounds and early_stopping_rounds=25 on the
evaluation set: training stops 25 rounds after the best eval logloss, while the train logloss
is still falling.""",
)
def healthy_early_stopping(spec: RunSpec) -> None:
    recipe = replace(HEALTHY, max_depth=3, rounds=1000, early_stopping_rounds=25)
    verify(
        spec,
        _train(spec, recipe),
        {
            "rounds trained": (None, 900.0),
            "eval logloss, best": (None, 0.45),
            "eval logloss, final / best": (None, 1.05),
            "eval accuracy": (0.8, None),
        },
    )


# Seeds 0/1/2: trees of depth 16 at most, 13.4/12.9/12.8 on average (the twin: 6 and 6.0);
# train logloss 0.052/0.049/0.052 against the twin's 0.14-0.16 (memorised), eval logloss
# 0.368/0.359/0.356, no better than the twin's.
@scenario(
    FAMILY,
    "deep-trees",
    cause="DBG701",
    twin="healthy",
    description="""
xgboost healthy with max_depth 20: with 2000 noisy samples the trees grow to depth 13 on
average (16 at most), fitting the training set far more closely than the evaluation set.""",
)
def deep_trees(spec: RunSpec) -> None:
    verify(
        spec,
        _train(spec, replace(HEALTHY, max_depth=20)),
        {
            "tree depth, mean": (10.0, None),
            "tree depth, max": (14.0, None),
        },
    )


# Seeds 0/1/2: the leaked feature holds 96.5/99.0/96.7 % of the gain and 75/91/75 % of the
# splits (the twin's top feature: 26-29 % and 16-17 %); eval accuracy 0.997/0.995/0.997.
@scenario(
    FAMILY,
    "feature-leak",
    cause="DBG702",
    twin="healthy",
    description="""
xgboost healthy with an eleventh feature that is the label plus N(0, 0.1²) noise, in the
training and the evaluation data alike (a target leak): the trees split on it first and the
other features are left with almost nothing to explain.""",
)
def feature_leak(spec: RunSpec) -> None:
    verify(
        spec,
        _train(spec, replace(HEALTHY, leak=True)),
        {
            "top feature share of gain": (0.9, None),
        },
    )


# Seeds 0/1/2: the eval logloss is best at round 6/12/6 (0.593/0.571/0.567), then rises in
# 60/46/57 of the remaining rounds to 0.840/0.706/0.839 (1.42/1.24/1.48 times the best),
# while the train logloss falls to 0.076/0.067/0.052.
@scenario(
    FAMILY,
    "overfit",
    cause="DBG304",
    twin="healthy",
    accept=("DBG302",),
    description="""
xgboost healthy with eta 1.0, 80 rounds of depth-2 trees and a training set of 500 samples of
which 20 % have random labels: each round fits the training set's noise a full step further,
and the eval logloss, best after a few rounds, rises for the rest of the run.""",
)
def overfit(spec: RunSpec) -> None:
    recipe = replace(HEALTHY, eta=1.0, rounds=80, train_samples=500, label_noise=0.2, max_depth=2)
    verify(
        spec,
        _train(spec, recipe),
        {
            "eval logloss, final / best": (1.2, None),
            "rounds the eval metric rose, after its best": (30.0, None),
        },
    )


# Seeds 0/1/2: eval logloss 0.670/0.671/0.671 (0.69 at the start; healthy 0.33-0.36), eval
# accuracy 0.779/0.747/0.760: the ranking is learned, the probabilities stay near 0.5.
@scenario(
    FAMILY,
    "learning-rate-too-low",
    cause="DBG703",
    twin="healthy",
    description="""
xgboost healthy with eta 1e-3 (a neural network's learning rate pasted into the boosting
config): 60 rounds add up to 0.06 of one unshrunk tree, and the predictions stay near the
base score.""",
)
def learning_rate_too_low(spec: RunSpec) -> None:
    verify(
        spec,
        _train(spec, replace(HEALTHY, eta=1e-3)),
        {"eval logloss, final": (0.6, None)},
    )


# Seeds 0/1/2: class 1 is 5.2/4.8/5.1 % of the eval labels; the model finds 11.5/16.7/13.7 % of
# them (eval recall of class 1; the twin's 0.83-0.87) while its accuracy, 0.954/0.960/0.947,
# is that of always predicting class 0.
@scenario(
    FAMILY,
    "class-imbalance",
    cause="DBG601",
    twin="healthy",
    description="""
xgboost healthy with class 1 only the top 4 % of the score (with the random labels, about
5 % of the samples): the labels and predictions recorded are 95 % class 0, and most samples
of class 1 are predicted as class 0.""",
)
def class_imbalance(spec: RunSpec) -> None:
    verify(
        spec,
        _train(spec, replace(HEALTHY, positive_share=0.04)),
        {
            "share of class 1 in the eval labels": (None, 0.07),
            "eval recall of class 1": (None, 0.5),
        },
    )
