"""Record XGBoost training into a dbg trace with a training callback.

Importing this module imports xgboost (the callback subclasses
``xgboost.callback.TrainingCallback``); ``import dbgcli`` does not.

Example::

    import xgboost as xgb
    from dbgcli.xgboost import DbgCallback

    booster = xgb.train(
        params, dtrain, num_boost_round=200,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        callbacks=[DbgCallback("run.h5", data=dtrain)],
    )

One step is one boosting round (``epoch`` as XGBoost passes it to the callback).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xgboost
from xgboost.callback import TrainingCallback

from dbgcli._failures import FailureReporter
from dbgcli.errors import TraceWriterError
from dbgcli.live_rules import LiveRules, check_stop_on, stop_if
from dbgcli.trace.roles import scalar_meaning
from dbgcli.trace.schema import META_CLASS_WEIGHTING, META_XGBOOST_INTERCEPT, MODES
from dbgcli.trace.writer import DEFAULT_RAW_BUDGET, TraceWriter, check_raw_settings

__all__ = ["IMPORTANCE_TYPES", "TRAIN_SET_NAMES", "DbgCallback", "model_tree_depths", "tree_depth"]

#: Feature importance types recorded every round, each as ``feature_importance/<type>``.
IMPORTANCE_TYPES: tuple[str, ...] = ("weight", "gain", "cover")
#: Names of an ``evals`` entry taken to be the training set (case-insensitive), unless
#: ``train_set`` says otherwise.
TRAIN_SET_NAMES = frozenset({"train", "training", "dtrain"})
#: Keep full tensors of labels and predictions every this many rounds by default.
DEFAULT_RAW_EVERY = 100
#: Read the trees of this many rounds at once (each read has a fixed cost of about a
#: third of a millisecond, whatever it reads); their records reach the trace together.
TREE_READ_EVERY = 10
# What get_score sums over trees; weight, gain and cover are computed from these totals.
_TOTALS = ("weight", "total_gain", "total_cover")


def tree_depth(tree_dump: str) -> int:
    """Depth of one tree from its dump: edges from the root to the deepest leaf.

    A tree that is a single leaf has depth 0; ``max_depth=6`` allows depth 6. The text dump
    (``get_dump()``) indents every node by one tab per level, so the depth is the deepest
    indentation: no parsing, a fraction of the cost of the JSON dump for deep trees. A JSON
    dump (``dump_format="json"``) is walked node by node.
    """
    if tree_dump.lstrip().startswith("{"):
        return _json_depth(tree_dump)
    return max(len(line) - len(line.lstrip("\t")) for line in tree_dump.splitlines())


# A tree's node arrays in the model's JSON (``Booster.save_raw("json")``): children (-1 for
# none), the feature each node splits on, its gain and its cover.
_NODE_ARRAYS = ("left_children", "right_children", "split_indices", "loss_changes", "sum_hessian")
_ARRAY = {name: re.compile(rb'"%s":\s*\[([^\]]*)\]' % name.encode()) for name in _NODE_ARRAYS}
# Where each round's trees start among the model's trees (XGBoost >= 2.0).
_ITERATION_INDPTR = re.compile(rb'"iteration_indptr":\s*\[([^\]]*)\]')


class _Tree(NamedTuple):
    """One tree as ``get_score`` and the depth rule see it: its depth, and per feature the
    splits on it, their total gain and their total cover."""

    depth: int
    importance: np.ndarray  # (3, features): weight, total gain, total cover


def model_tree_depths(model: xgboost.Booster) -> np.ndarray:
    """Depth of every tree of ``model`` (slice it first to get some trees only).

    Read from the node arrays of the model's JSON (``left_children``, ``right_children``),
    level by level, without parsing the rest of the JSON: for trees of a thousand nodes this
    is a few times cheaper than any dump (``python bench/bench_xgboost.py``).
    """
    raw = model.save_raw("json")
    lefts, rights = (_ARRAY[side].findall(raw) for side in ("left_children", "right_children"))
    return np.array(
        [_splits(_ints(left), _ints(right))[0] for left, right in zip(lefts, rights, strict=True)],
        dtype=np.int64,
    )


def _model_trees(raw: bytes | bytearray, features: int) -> tuple[list[_Tree], np.ndarray | None]:
    """The trees of a model's JSON, and where each round's trees start (None if the model
    does not say)."""
    arrays = [_ARRAY[name].findall(raw) for name in _NODE_ARRAYS]
    trees = []
    for left, right, feature, gain, cover in zip(*arrays, strict=True):
        depth, splits = _splits(_ints(left), _ints(right))
        on = _ints(feature)[splits]
        importance = np.zeros((len(_TOTALS), features))
        # Nodes reachable from the root only, as get_score walks them (pruning leaves some
        # deleted nodes in the arrays).
        for row, weights in enumerate((None, _floats(gain)[splits], _floats(cover)[splits])):
            importance[row] = np.bincount(on, weights, minlength=features)[:features]
        trees.append(_Tree(depth, importance))
    indptr = _ITERATION_INDPTR.search(raw)
    return trees, None if indptr is None else _ints(indptr.group(1))


def _ints(text: bytes) -> np.ndarray:
    if not text.strip():
        return np.zeros(0, dtype=np.int64)
    return np.fromstring(text, dtype=np.int64, sep=",")


def _floats(text: bytes) -> np.ndarray:
    if not text.strip():
        return np.zeros(0)
    return np.fromstring(text, sep=",")


def _splits(left: np.ndarray, right: np.ndarray) -> tuple[int, np.ndarray]:
    """Edges from node 0 to the deepest leaf, and the nodes reachable from node 0 that
    split, given each node's children (-1: none)."""
    depth, level = 0, np.zeros(1, dtype=np.int64)
    splits: list[np.ndarray] = []
    while True:
        below = np.concatenate((left[level], right[level]))
        inner = below >= 0
        if not inner.any():
            return depth, np.concatenate(splits) if splits else level[:0]
        splits.append(level[inner[: len(level)] | inner[len(level) :]])
        depth, level = depth + 1, below[inner]


def _json_depth(tree_json: str) -> int:
    deepest = 0
    stack = [(json.loads(tree_json), 0)]
    while stack:
        node, depth = stack.pop()
        children = node.get("children")
        if children:
            stack.extend((child, depth + 1) for child in children)
        else:
            deepest = max(deepest, depth)
    return deepest


def _task(objective: str) -> dict[str, str]:
    """The run metadata's ``task`` for an objective whose labels are no classes: the class
    rules skip them, and whole-number targets (counts, prices) do not read as class ids.
    ``reg:logistic`` regresses probabilities of 0/1 labels and is left to the data."""
    kind = objective.partition(":")[0]
    if kind in ("reg", "count", "survival") and objective != "reg:logistic":
        return {"task": "regression"}
    return {"task": "ranking"} if kind == "rank" else {}


def _class_weighting(objective: Mapping[str, Any], data: xgboost.DMatrix | None) -> dict[str, Any]:
    """The run metadata's ``class_weighting`` when the objective weighs the positive class
    (``scale_pos_weight`` other than 1), or the recorded data's sample weights balance its
    classes (their weighted counts no more apart than the square root of the counts' ratio):
    the run compensates its class imbalance."""
    weighting: dict[str, Any] = {}
    weight = objective.get("reg_loss_param", {}).get("scale_pos_weight")
    try:
        scale = float(weight)
    except (TypeError, ValueError):
        scale = 1.0
    if scale != 1.0:
        weighting["scale_pos_weight"] = scale
    name = str(objective.get("name", ""))
    # Anything else given as data fails where it is recorded, once, said so there.
    if isinstance(data, xgboost.DMatrix) and name.partition(":")[0] in ("binary", "multi"):
        try:
            weights, labels = data.get_weight(), data.get_label()
        except Exception:  # noqa: BLE001 - an unreadable DMatrix notes no weights
            weights = labels = np.zeros(0)
        if weights.size and weights.size == labels.size and (labels == np.round(labels)).all():
            classes = labels.astype(np.int64)
            if classes.min() >= 0:
                sums = np.bincount(classes, weights=weights)
                counts = np.bincount(classes).astype(np.float64)
                seen = counts > 0
                imbalance = counts[seen].max() / counts[seen].min()
                mass = sums[seen]
                # Weights that balance: they close at least half the imbalance (on a log
                # scale), as inverse frequencies close all of it; weights for another reason
                # (recent rows first) that shift the classes a little are none.
                if mass.min() > 0 and imbalance > 1 and mass.max() / mass.min() <= imbalance**0.5:
                    means = np.where(seen, sums / np.maximum(counts, 1), 1.0)
                    weighting["sample weights, mean per class"] = [float(w) for w in means]
    return {META_CLASS_WEIGHTING: weighting} if weighting else {}


# The metrics XGBoost's EarlyStopping maximises when not told (``xgboost.callback``): scores
# that rise as the model learns (``ndcg@10``, ``auc``), which must not pass for a loss.
_MAXIMISED_METRICS = ("auc", "aucpr", "pre", "map", "ndcg")


def _maximised(metric: str) -> bool:
    """Whether XGBoost's evaluation ``metric`` is a score to maximise (``mape`` is an error)."""
    name = metric.split("@")[0].split("-")[0]
    return name != "mape" and name.startswith(_MAXIMISED_METRICS)


@functools.lru_cache(maxsize=64)
def _loss_metric(metrics: tuple[str, ...]) -> str | None:
    """The metric the ``loss`` alias copies: the first that names a loss (``logloss``,
    ``rmse``, ``poisson-nloglik``...), else the first that is neither a score to maximise nor
    an error rate or accuracy (a custom metric, ``quantile``). An error rate (``error``,
    ``merror``) counts misclassified samples: it is no loss the model descends, and its values
    are not on a loss's scale (an untrained classifier's 0.75 is no ``ln C``)."""
    for metric in metrics:
        if scalar_meaning(metric).quantity == "loss":
            return metric
    return next(
        (
            metric
            for metric in metrics
            if not _maximised(metric)
            and scalar_meaning(metric).quantity not in ("metric", "accuracy")
        ),
        None,
    )


class DbgCallback(TrainingCallback):
    """Records each boosting round: metrics, depth of the new trees, feature importance.

    Per round (step = round index):

    * scalars: every metric of every ``evals`` entry under its own name (``logloss``,
      ``rmse``, ...) and ``loss``, an alias of the first metric that is a loss (never
      ``auc``, ``aucpr``, ``pre``, ``map`` or ``ndcg``, scores XGBoost's early stopping
      maximises, nor the error rates ``error`` and ``merror``; see :func:`_loss_metric`),
      so the loss rules apply. The
      training set is recorded in mode ``train``; the first other set in mode ``eval``; any
      further sets in mode ``eval`` with the set name as a prefix (``test/logloss``);
    * ``trees/depth`` (collection ``trees``): depth of each tree added this round, shape
      ``(num_parallel_tree * groups,)``, full tensor every round;
    * ``feature_importance/<type>`` for weight, gain and cover (collection
      ``feature_importance``, kind = type): shape ``(n_features,)``, features the booster
      has not split on get 0, full tensor every round. Feature names are stored in the run
      metadata under ``feature_names``;
    * with ``data``: ``labels`` and ``predictions`` of that DMatrix (collections of those
      names), in full, every ``raw_every`` rounds and after the last round (the data rules
      judge the model training ends with);
    * in the metadata, ``task`` (``regression`` for ``reg:``, ``count:`` and ``survival:``
      objectives, ``ranking`` for ``rank:``), so that the class rules leave whole-number
      targets alone, and ``early_stopping`` with the best round (``best_step``) when early
      stopping was in effect (``early_stopping_rounds``): DBG304 overtraining does not judge
      the rounds early stopping waited through; and ``xgboost_intercept``, the intercept
      the first round boosted from, which the loss rules start a ``binary:logistic`` run's
      log loss from (the first round's metrics come after one tree).

    The trees are read every :data:`TREE_READ_EVERY` rounds and after the last, so their
    records reach the trace up to that many rounds after the round's metrics. Each read
    takes only the trees added since the last, so its cost does not grow with the model: one
    slice of the booster saved as JSON, whose node arrays give each tree's depth and the
    splits, gain and cover per feature that ``booster.get_score`` sums (``weight``,
    ``total_gain``, ``total_cover``; gain and cover are those totals over the weight), added
    to running totals. With trees of depth 20 this is several times cheaper per round than
    dumping the trees and walking the whole model (``python bench/bench_xgboost.py``;
    docs/benchmarks.md).

    A linear booster (``booster="gblinear"``) has no trees: its rounds record the metrics
    (and ``data``) only.

    The callback ends boosting (``after_iteration`` returns True) only when the run is asked
    to stop (``dbg watch --stop``, or ``stop_on``), and never raises from a training hook:
    failures are logged (WARNING on the ``dbgcli`` logger).

    Args:
        trace: A path (a new trace, created when training starts) or an open
            :class:`TraceWriter` (left open after training).
        data: A DMatrix whose labels and predictions to record every ``raw_every`` rounds and
            after the last one (the training set, or any other). Predictions use every tree
            built so far.
        data_mode: Mode of the ``data`` records.
        train_set: Name of the ``evals`` entry that is the training set. By default an entry
            named train, training or dtrain, else ``validation_0`` when there is a
            ``validation_1`` too (the scikit-learn API's names for
            ``eval_set=[(X_train, y_train), (X_valid, y_valid)]``).
        raw_every: Keep full labels and predictions every this many rounds (default 100;
            only for a path).
        raw_budget: Bytes of full tensors per round, on average, beyond which those rounds
            are spaced further apart (default 1 MiB; 0: no limit; only for a path; see
            :class:`TraceWriter`).
        overwrite: Replace an existing trace file.
        flush_secs: Commit to disk at most this many seconds apart.
        hyperparameters: Stored in the trace's metadata (the booster's own configuration is
            stored under ``xgboost_config`` regardless).
        metadata: Free-form run metadata.
        stop_on: ``"error"`` or ``"warning"``: judge the training loss in the training
            process (dbgcli.live_rules) and end boosting at a finding of that severity or
            above.

    Raises:
        ValueError: If ``raw_every`` or ``raw_budget`` is given with a writer, or
            ``data_mode`` is no mode.
        TraceWriterError: If the trace file exists and ``overwrite`` is False.
    """

    def __init__(
        self,
        trace: str | os.PathLike[str] | TraceWriter,
        *,
        data: xgboost.DMatrix | None = None,
        data_mode: str = "train",
        train_set: str | None = None,
        raw_every: int | None = None,
        raw_budget: int | None = None,
        overwrite: bool = False,
        flush_secs: float = 10.0,
        hyperparameters: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        stop_on: str | None = None,
    ) -> None:
        super().__init__()
        check_stop_on(stop_on)
        if data_mode not in MODES:
            raise ValueError(f"data_mode must be one of {', '.join(MODES)}, got {data_mode!r}")
        check_raw_settings(trace, raw_every=raw_every, raw_budget=raw_budget)
        if not isinstance(trace, TraceWriter) and Path(trace).exists() and not overwrite:
            # Refused here, before training starts, rather than as a warning mid-run.
            raise TraceWriterError(f"{trace} already exists; pass overwrite=True to replace it")
        self.trace = trace
        self.data = data
        self.data_mode = data_mode
        self.train_set = train_set
        self.raw_every = DEFAULT_RAW_EVERY if raw_every is None else raw_every
        self.raw_budget = DEFAULT_RAW_BUDGET if raw_budget is None else raw_budget
        self.overwrite = overwrite
        self.flush_secs = flush_secs
        self.hyperparameters = dict(hyperparameters) if hyperparameters is not None else None
        self.metadata = dict(metadata or {})
        self.writer: TraceWriter | None = None
        self._owns_writer = False
        self._feature_names: list[str] | None = None
        self._set_modes: dict[str, tuple[str, str]] = {}
        self._failures = FailureReporter()
        self._live = LiveRules(stop_on) if stop_on is not None else None
        self._has_trees = True  # not a linear booster (known once training starts)
        self._intercept_noted = False
        self._best_before: str | None = None  # the booster's best_iteration before training
        # The booster whose rounds (epoch, rounds boosted by then) wait for their trees to be
        # read, the rounds whose trees are in the importance totals, and those totals.
        self._model: xgboost.Booster | None = None
        self._unread: list[tuple[int, int]] = []
        self._counted_rounds = 0
        self._totals = np.zeros((len(_TOTALS), 0))

    # -- TrainingCallback ---------------------------------------------------------------------
    def before_training(self, model: xgboost.Booster) -> xgboost.Booster:
        """Open the trace and store the booster's configuration in its metadata."""
        self._best_before = model.attr("best_iteration")
        self._failures.guard("opening the trace", lambda: self._open(model))
        return model

    def after_iteration(
        self, model: xgboost.Booster, epoch: int, evals_log: TrainingCallback.EvalsLog
    ) -> bool:
        """Record round ``epoch``; returns True (end boosting) once the run is asked to stop."""
        writer = self.writer
        if writer is None:
            return False
        self._failures.guard(
            "recording the evaluation metrics",
            lambda: self._record_metrics(writer, epoch, evals_log),
        )
        if not self._intercept_noted:
            self._intercept_noted = True
            self._failures.guard(
                "recording the intercept", lambda: self._note_intercept(writer, model)
            )
        if self._has_trees:
            self._failures.guard(
                "recording the new trees", lambda: self._note_round(writer, model, epoch)
            )
        if self.data is not None and writer.raw_due(epoch):
            data = self.data
            self._failures.guard(
                "recording labels and predictions",
                lambda: self._record_data(writer, model, data, epoch),
            )
        return writer.stop_requested is not None

    def after_training(self, model: xgboost.Booster) -> xgboost.Booster:
        """Keep the final model's labels and predictions in full (the data rules judge the
        model training ends with), then close the trace if this callback opened it, else
        commit what was recorded."""
        writer = self.writer
        if writer is not None and self._unread:
            self._failures.guard("recording the new trees", lambda: self._record_trees(writer))
        if writer is not None:
            self._failures.guard(
                "recording early stopping", lambda: self._record_early_stopping(writer, model)
            )
        if writer is not None and self.data is not None:
            data, last = self.data, model.num_boosted_rounds() - 1
            if last >= 0 and not writer.raw_due(last):
                self._failures.guard(
                    "recording the final labels and predictions",
                    lambda: self._record_data(writer, model, data, last),
                )
        if writer is not None:
            self._failures.guard(
                "closing the trace", writer.close if self._owns_writer else writer.flush
            )
        return model

    # -- recording ----------------------------------------------------------------------------
    def _open(self, model: xgboost.Booster) -> None:
        config = json.loads(model.save_config())
        booster = config.get("learner", {}).get("gradient_booster", {}).get("name")
        self._has_trees = booster != "gblinear"  # no depth, no importance by split
        objective = config.get("learner", {}).get("objective", {})
        metadata: dict[str, Any] = {
            **_task(objective.get("name", "")),
            **_class_weighting(objective, self.data),
            **self.metadata,
            "xgboost_version": xgboost.__version__,
            "xgboost_config": config,
        }
        if isinstance(self.trace, TraceWriter):
            self.writer = self.trace
            if self.hyperparameters is not None:
                metadata["hyperparameters"] = self.hyperparameters
            metadata.setdefault("framework", self.trace.metadata.get("framework", "xgboost"))
            self.writer.set_metadata(**metadata)
            return
        self.writer = TraceWriter(
            self.trace,
            raw_every=self.raw_every,
            raw_budget=self.raw_budget,
            flush_secs=self.flush_secs,
            overwrite=self.overwrite,
            metadata=metadata,
            hyperparameters=self.hyperparameters,
            framework="xgboost",
        )
        self._owns_writer = True

    def _record_metrics(
        self, writer: TraceWriter, step: int, evals_log: TrainingCallback.EvalsLog
    ) -> None:
        for set_name, metrics in evals_log.items():
            mode, prefix = self._set_mode(set_name, list(evals_log))
            loss = _loss_metric(tuple(metrics))  # named once per set, not every round
            for metric, history in metrics.items():
                latest = history[-1]
                # xgboost.cv logs (mean, std) pairs.
                value = latest[0] if isinstance(latest, tuple) else latest
                writer.add_scalar(prefix + metric, value, step, mode=mode)
                if metric == loss:
                    writer.add_scalar(prefix + "loss", value, step, mode=mode)
                    if self._live is not None and mode == "train":
                        stop_if(writer, self._live.loss(float(value), step))

    def _note_intercept(self, writer: TraceWriter, model: xgboost.Booster) -> None:
        """Note the intercept the first round boosted from: XGBoost fits it to the training
        labels then (``boost_from_average``), so the model before any tree is known (the loss
        rules' starting point; the first round's metrics come after one tree)."""
        param = json.loads(model.save_config())["learner"]["learner_model_param"]
        base_score = json.loads(param["base_score"])  # "[2.8E-1]", or "5E-1" before 2.0
        writer.set_metadata(
            **{
                META_XGBOOST_INTERCEPT: {
                    "base_score": [float(v) for v in np.atleast_1d(base_score)],
                    "fitted": param.get("boost_from_average") == "1",
                }
            }
        )

    def _record_early_stopping(self, writer: TraceWriter, model: xgboost.Booster) -> None:
        # Set by the EarlyStopping callback only, and kept by a booster trained on: only a
        # value this training set counts.
        best = model.attr("best_iteration")
        if best is not None and best != self._best_before:
            writer.set_metadata(early_stopping={"best_step": int(best)})

    def _set_mode(self, set_name: str, set_names: list[str]) -> tuple[str, str]:
        """``(mode, tag prefix)`` of an ``evals`` entry, decided once per name."""
        known = self._set_modes.get(set_name)
        if known is not None:
            return known
        if self.train_set is not None:
            train = self.train_set
        else:
            train = next((name for name in set_names if name.lower() in TRAIN_SET_NAMES), "")
            if not train and {"validation_0", "validation_1"} <= set(set_names):
                # The scikit-learn API names eval_set entries validation_<i>; its convention
                # is eval_set=[(X_train, y_train), (X_valid, y_valid)].
                train = "validation_0"
        if set_name == train:
            known = ("train", "")
        elif not any(mode == "eval" and not prefix for mode, prefix in self._set_modes.values()):
            known = ("eval", "")
        else:
            known = ("eval", f"{set_name}/")
        self._set_modes[set_name] = known
        return known

    def _note_round(self, writer: TraceWriter, model: xgboost.Booster, epoch: int) -> None:
        """Read the trees of the rounds noted so far once there are :data:`TREE_READ_EVERY`
        of them (or the booster changed): one slice of the model, whatever its length."""
        rounds = model.num_boosted_rounds()
        if self._unread and (model is not self._model or rounds <= self._unread[-1][1]):
            self._record_trees(writer)  # another booster, or this one went back
        if model is not self._model:
            self._model, self._counted_rounds = model, 0  # its trees are counted from the first
        self._unread.append((epoch, rounds))
        if len(self._unread) >= TREE_READ_EVERY:
            self._record_trees(writer)

    def _record_trees(self, writer: TraceWriter) -> None:
        """Depth of the trees of each unread round and feature importance after it, from the
        trees added since the last read: their node arrays in the JSON of the model's slice
        (the feature each node splits on, its gain and cover are what ``get_score`` sums)."""
        model, unread, self._unread = self._model, self._unread, []
        assert model is not None
        names = self._names(writer, model)
        if self._counted_rounds == 0 or unread[0][1] <= self._counted_rounds:
            self._counted_rounds = 0  # a new model, or one that went back: count from the first
            self._totals = np.zeros((len(_TOTALS), len(names)))
        first, last = self._counted_rounds, unread[-1][1]
        trees, indptr = _model_trees(model[first:last].save_raw("json"), len(names))
        if indptr is None or len(indptr) != last - first + 1:
            indptr = np.linspace(0, len(trees), last - first + 1).astype(np.int64)
        totals = self._totals
        after_round = {}  # round -> (depths of its trees, importance totals after it)
        for index in range(last - first):
            added = trees[indptr[index] : indptr[index + 1]]
            totals = totals + sum((tree.importance for tree in added), np.zeros_like(totals))
            depths = np.array([tree.depth for tree in added], dtype=np.int64)
            after_round[first + index] = (depths, totals)
        self._totals, self._counted_rounds = totals, last
        with writer.late_records():  # all but the newest round are behind the metrics
            for epoch, rounds in unread:
                depths, (weight, total_gain, total_cover) = after_round[rounds - 1]
                writer.add_tensor("trees/depth", depths, epoch, collection="trees", raw=True)
                with np.errstate(invalid="ignore", divide="ignore"):
                    per_split = {
                        "weight": weight,
                        "gain": np.where(weight > 0, total_gain / weight, 0.0),
                        "cover": np.where(weight > 0, total_cover / weight, 0.0),
                    }
                for importance_type in IMPORTANCE_TYPES:
                    writer.add_tensor(
                        f"feature_importance/{importance_type}",
                        per_split[importance_type],
                        epoch,
                        collection="feature_importance",
                        kind=importance_type,
                        raw=True,
                    )

    def _names(self, writer: TraceWriter, model: xgboost.Booster) -> list[str]:
        if self._feature_names is None:
            # Without names, get_score keys features as f0, f1, ...
            names = model.feature_names or [f"f{i}" for i in range(model.num_features())]
            self._feature_names = list(names)
            writer.set_metadata(feature_names=self._feature_names)
        return self._feature_names

    def _record_data(
        self, writer: TraceWriter, model: xgboost.Booster, data: xgboost.DMatrix, step: int
    ) -> None:
        """Labels and predictions in full (the data rules read full tensors)."""
        mode = self.data_mode
        writer.add_tensor(
            "labels", data.get_label(), step, collection="labels", mode=mode, raw=True
        )
        # An explicit range: by default predict stops at best_iteration once early stopping set it.
        predictions = model.predict(data, iteration_range=(0, model.num_boosted_rounds()))
        writer.add_tensor(
            "predictions", predictions, step, collection="predictions", mode=mode, raw=True
        )
