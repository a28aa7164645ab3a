"""DBG7xx: decision-tree ensembles: trees too deep, feature importance concentrated on few features,
a learning rate too low for the rounds.

Recording convention (what the XGBoost capture callback writes; other tree libraries should
follow it):

* Step = boosting round (0-based, the ``epoch`` XGBoost passes to ``after_iteration``), mode
  ``train``.
* ``trees/depth``: collection ``trees``, shape ``(trees added this round,)`` (``num_class ×
  num_parallel_tree`` for XGBoost), integer depth of each new tree: the number of edges on
  its longest root-to-leaf path, so a single leaf has depth 0 and a tree grown with XGBoost's
  ``max_depth=6`` has depth at most 6.
* ``feature_importance/<type>`` for ``<type>`` in ``weight``, ``gain``, ``cover`` (and
  optionally ``total_gain``, ``total_cover``): collection ``feature_importance``, ``kind`` =
  the type, shape ``(n_features,)``, the raw scores of the whole ensemble so far as
  ``Booster.get_score(importance_type=<type>)`` returns them, with 0 for features no split
  uses, in the model's feature order; full tensor kept every round (``raw=True``).
* Run metadata key ``feature_names``: the list of feature names, when known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dbgcli.errors import RuleConfigError
from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import RuleContext, TensorView
from dbgcli.rules._registry import Need, rule
from dbgcli.trace import roles
from dbgcli.trace.derive import Accumulator, Derivation
from dbgcli.trace.reader import TagInfo
from dbgcli.trace.stats import COL

if TYPE_CHECKING:
    from dbgcli.trace.reader import RawChunk, Trace

DEPTH_TAG = "trees/depth"
IMPORTANCE_COLLECTION = "feature_importance"
IMPORTANCE_TYPES = ("weight", "gain", "cover", "total_gain", "total_cover")
ImportanceType = Literal["weight", "gain", "cover", "total_gain", "total_cover"]


def _depth_views(ctx: RuleContext) -> list[TensorView]:
    """Tree-depth tensors: role ``trees`` with "depth" in the name (``trees/depth``,
    ``tree_depth``), or the only tensor of role ``trees``."""
    trees = ctx.tensors(collection="trees")
    named = [v for v in trees if "depth" in roles.name_words(v.tag)]
    return named or (trees if len(trees) == 1 else [])


@rule(
    "DBG701",
    "tree-depth",
    severity="warning",
    category="trees",
    requires=Need(
        "tree depths (a tensor of role 'trees' named like 'trees/depth' or 'tree_depth')",
        lambda ctx: bool(_depth_views(ctx)),
        looks_at="tensors",
    ),
    label={"too-deep": "trees too deep", "no-splits": "trees that never split"},
    explains={
        "too-deep": ("DBG302", "DBG304", "DBG303:held-out-at-chance"),
        # A constant model learns nothing and predicts one class.
        "no-splits": ("DBG301:not-decreasing", "DBG303", "DBG601:mispredicted", "DBG604"),
    },
)
def tree_depth(ctx: RuleContext, *, depth: int = 10, min_rounds: int = 5) -> Iterator[Finding]:
    """Boosting grew trees deeper than ``depth`` (memorising the data), or trees that never split.

    Reads ``trees/depth`` (one record per boosting round holding the depth of each tree added
    that round; see the recording convention in ``dbgcli.rules.trees``) through its ``max``
    statistic: a round violates when its deepest new tree has depth ``> depth`` (edges from
    the root to the deepest leaf). One finding per mode gathers every violating round: it
    starts at the first of them, and its value is the largest depth seen.

    SageMaker Debugger's TreeDepth estimates the depth as ``log2`` of the largest node id and
    defaults to 4, which fires on every model trained with XGBoost's own default
    ``max_depth=6``. Here the recorded depth is exact and the default is 10: above the range
    (about 3 to 10) that tuning usually explores, so only deliberately deep or unbounded trees
    (``max_depth=0`` with ``grow_policy=lossguide``, very large ``max_leaves``) are reported.
    The 2019 SageMaker Debugger cases (``max_depth=100`` fires, ``max_depth=4`` for 10 rounds
    does not) hold with ``depth=4``. Trees whose leaves XGBoost caps (``max_leaves`` in its
    configuration, run metadata ``xgboost_config``) at no more than a tree of ``depth``
    holds, ``2**depth``, are not judged by depth: a loss-guided tree of 31 leaves grows 17
    deep along its best branch and holds what a depth-5 tree does.

    **Never split** (key ``no-splits``): every tree of every round, at least ``min_rounds``
    of them, is a single leaf (depth 0). Each round then only moves the one prediction the
    model makes for every row: no split was worth making, because ``min_child_weight``,
    ``gamma`` (``min_split_loss``) or the data allow none, or the labels are one value with
    nothing to learn (a join or filter that left a constant target). Trees that stop
    splitting after the first rounds are an ensemble that has learned what it can, and are
    not reported.

    Why it matters: a deep tree splits the data into tiny leaves that fit noise; the
    ensemble overfits, validation error rises while training error keeps falling, and
    prediction gets slower. A model that never splits predicts a constant.

    Typical causes: ``max_depth`` set high (or 0, unlimited) during tuning, loss-guided growth
    with many leaves, no ``min_child_weight`` or ``gamma`` to stop useless splits.

    Fix: for trees too deep, lower ``max_depth`` (XGBoost's default 6 is a good start),
    raise ``min_child_weight`` or ``gamma``, cap ``max_leaves``, and tune against a
    validation set with early stopping; for trees that never split, lower
    ``min_child_weight`` and ``gamma`` and check that the labels vary.

    Args:
        depth: Largest acceptable tree depth (edges from the root to the deepest leaf).
        min_rounds: Rounds of single leaves needed to call a model one that never splits.
    """
    for view in _depth_views(ctx):
        deepest = view.stat("max")
        for code in view.mode_codes:
            mine = np.flatnonzero(view.modes == code)
            if len(mine) >= min_rounds and (deepest[mine] == 0).all():
                yield Finding(
                    message=(
                        f"every tree of the {len(mine)} rounds is a single leaf (depth 0): the "
                        "model predicts one value for every row (min_child_weight or gamma "
                        "too high for the data, or labels with nothing to learn?)"
                    ),
                    tensor=view.tag,
                    first_step=int(view.steps[mine[0]]),
                    last_step=int(view.steps[mine[-1]]),
                    steps=len(mine),
                    value=0.0,
                    threshold=None,
                    mode=view.mode_name(int(mine[0])),
                    key="no-splits",
                )
            rows = np.flatnonzero((view.modes == code) & (deepest > depth))
            if not rows.size or _leaves_capped(ctx, depth):
                continue
            worst = rows[np.argmax(deepest[rows])]
            yield Finding(
                message=f"trees as deep as {deepest[worst]:.0f} (> {depth}) in {rows.size} of "
                f"{int((view.modes == code).sum())} rounds",
                tensor=view.tag,
                first_step=int(view.steps[rows[0]]),
                last_step=int(view.steps[rows[-1]]),
                steps=int(rows.size),
                value=float(deepest[worst]),
                threshold=float(depth),
                mode=view.mode_name(int(rows[0])),
                key="too-deep",
                extra={"deepest_round": int(view.steps[worst])},
            )


@dataclass(frozen=True)
class TopImportanceShare(Derivation):
    """Per record, the share of the total importance held by the ``nfeatures`` largest scores.

    The result is ``(share, top)``: ``share`` ``(records,)`` (NaN where not computed) and
    ``top`` ``(records, nfeatures)``, the indices of those features, largest first (-1 where
    not computed). Records with at most ``nfeatures`` features hold all of the importance by
    construction and are left out. Only records that can exceed ``threshold`` are read: the
    statistics bound the share by ``nfeatures × max / l1``.
    """

    nfeatures: int
    threshold: float

    def wanted(self, info: TagInfo, trace: Trace) -> np.ndarray | None:
        if not info.has_stats or not {"min", "max", "l1"} <= set(info.stat_columns):
            return None
        stats = trace.stats(info.tag)
        largest = np.fmax(np.abs(stats[:, COL["min"]]), np.abs(stats[:, COL["max"]]))
        with np.errstate(invalid="ignore", divide="ignore"):
            bound = self.nfeatures * largest / stats[:, COL["l1"]]
        return np.asarray(bound > self.threshold)

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _TopShareAccumulator(info.records, self.nfeatures)


class _TopShareAccumulator(Accumulator):
    def __init__(self, records: int, nfeatures: int) -> None:
        self.nfeatures = nfeatures
        self.share = np.full(records, np.nan)
        self.top = np.full((records, nfeatures), -1, dtype=np.int64)

    def feed(self, chunk: RawChunk) -> None:
        scores = np.abs(chunk.values.reshape(len(chunk.records), -1).astype(np.float64))
        if scores.shape[1] <= self.nfeatures:
            return
        top = np.argpartition(-scores, self.nfeatures - 1, axis=1)[:, : self.nfeatures]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        with np.errstate(invalid="ignore", divide="ignore"):
            share = top_scores.sum(axis=1) / scores.sum(axis=1)
        self.share[chunk.records] = share
        self.top[chunk.records] = np.take_along_axis(top, order, axis=1)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        return self.share, self.top


def importance_type_of(info: TagInfo) -> str | None:
    """The importance type of a feature-importance tensor: its kind, else the type its name
    ends with (``feature_importance/gain``, ``importance_total_gain``)."""
    if info.kind in IMPORTANCE_TYPES:
        return info.kind
    words = roles.name_words(info.tag)
    for size in (2, 1):
        if len(words) >= size and "_".join(words[-size:]) in IMPORTANCE_TYPES:
            return "_".join(words[-size:])
    return None


def _importance_view(ctx: RuleContext, importance_type: str) -> TensorView | None:
    """The importance tensor of ``importance_type`` with full tensors, else the first such type."""
    return _first_of_types(ctx, (importance_type, *IMPORTANCE_TYPES))


def _first_of_types(ctx: RuleContext, types: tuple[str, ...]) -> TensorView | None:
    """The importance tensor with full tensors of the first of ``types`` recorded."""
    views = [v for v in ctx.tensors(collection=IMPORTANCE_COLLECTION) if v.info.raw_records]
    for wanted in types:
        for view in views:
            if importance_type_of(view.info) == wanted:
                return view
    return None


def _gain_view(ctx: RuleContext) -> TensorView | None:
    """The gain (else total gain) importance tensor with full tensors, if recorded."""
    return _first_of_types(ctx, ("gain", "total_gain"))


def _plan_importance(ctx: RuleContext, params: dict[str, Any]) -> Iterable[tuple[str, Derivation]]:
    view = _importance_view(ctx, params["importance_type"])
    if view is None or params["nfeatures"] < 1:
        return []
    planned: list[tuple[str, Derivation]] = [
        (view.tag, TopImportanceShare(params["nfeatures"], params["threshold"]))
    ]
    gain = _gain_view(ctx)
    if gain is not None:
        planned.append((gain.tag, TopImportanceShare(1, params["gain_share"])))
    return planned


@rule(
    "DBG702",
    "feature-importance-overweight",
    severity="warning",
    category="trees",
    requires=Need(
        f"full feature importance tensors (role {IMPORTANCE_COLLECTION!r}, kind "
        f"{', '.join(IMPORTANCE_TYPES[:-1])} or {IMPORTANCE_TYPES[-1]})",
        lambda ctx: _importance_view(ctx, IMPORTANCE_TYPES[0]) is not None,
        looks_at="tensors",
    ),
    plan=_plan_importance,
    label={"one-feature": "importance on one feature", "*": "importance on a few features"},
)
def feature_importance_overweight(
    ctx: RuleContext,
    *,
    threshold: float = 0.8,
    nfeatures: int = 3,
    importance_type: ImportanceType = "weight",
    gain_share: float = 0.9,
) -> Iterator[Finding]:
    """A few features carry almost all of the model's feature importance.

    SageMaker Debugger's FeatureImportanceOverweight, judged on the model training ends with.
    Per boosting round, from the full ``feature_importance/<importance_type>`` tensor (the
    ensemble's raw scores so far, one per feature; see the recording convention in
    ``dbgcli.rules.trees``): ``share = sum of the nfeatures largest scores / sum of all
    scores``. The finding is about the final model, the one that is kept: it is reported when
    the last judged round has ``share > threshold``, at that round, with the round since
    which every round has been over the threshold; its value is the final share, and the
    message names the features (from the run metadata key ``feature_names``, else XGBoost's
    ``f<index>``). SageMaker Debugger judges every round, but the first rounds of any
    ensemble of shallow trees use only a handful of features (a tree of depth 2 has at most
    three splits), so early rounds say nothing about what the model ends up relying on. Only
    rounds whose full tensor is kept are judged (the convention keeps it every round). Rounds
    whose tensor has at most ``nfeatures`` features are not judged, since those features hold
    everything by construction; with few features remember that even importance spread evenly
    gives ``nfeatures / n_features``.

    The importance type defaults to ``weight`` (how many splits use the feature), as in
    SageMaker Debugger, rather than XGBoost's scikit-learn default ``gain``: the gain of the
    first splits of every tree dwarfs the rest, so a healthy model with a few strong
    predictors routinely puts more than 80 % of its gain on three features, whereas most
    splits landing on three features means the model genuinely ignores the others. When the
    trace lacks the requested type, the first recorded of weight, gain, cover, total_gain,
    total_cover is used, and the message names it.

    One feature can hold the model's learning without most splits: a leaked column is
    learnt by the first trees, after which the others chase noise with splits of tiny gain,
    spread over every feature. So, when the importance bar above is not crossed, a final
    model whose gain (or total gain) importance puts more than ``gain_share`` (90 %: nine
    times all the other features' together) on one feature is reported too (key
    ``one-feature``). On the calibration corpus's XGBoost runs, seeds 0-11, the leaked
    feature holds 96-99.5 % of the gain (84-380 times the runner-up's) and no other run puts
    more than 53 % on one feature (the runner-up at most 3.5 times below; a Poisson
    regression outside the corpus, 55 %); a leak planted in exploration runs outside it held
    99.2 % of the gain on 42 % of the splits, under the weight bar.

    Why it matters: a model that leans on a handful of features is fragile: it breaks when
    one of them drifts or goes missing, and one dominant feature is the classic sign of target
    leakage (a column that encodes the label).

    Typical causes: a leaked feature (an id, a timestamp, a post-outcome field), a feature
    with many distinct values that trees split on again and again, strong collinearity, too
    few informative features.

    Fix: check the top features for leakage and drop them if they encode the label, use
    ``colsample_bytree``/``colsample_bynode`` to force trees to use other features, bin or
    regularise high-cardinality features, and compare with the gain and SHAP importances.

    Args:
        threshold: Share (0-1) of the total importance above which the top features are
            reported.
        nfeatures: How many of the most important features to add up.
        importance_type: Which recorded importance to read: weight, gain, cover, total_gain
            or total_cover.
        gain_share: Share (0-1) of the gain importance above which one feature is reported.
    """
    view = _importance_view(ctx, importance_type)
    if view is None or nfeatures < 1:
        return
    found = list(_overweight(ctx, view, threshold, nfeatures, importance_type))
    if not found:
        gain = _gain_view(ctx)
        if gain is not None:
            found = list(_one_feature(ctx, gain, gain_share))
    yield from found


def _overweight(
    ctx: RuleContext,
    view: TensorView,
    threshold: float,
    nfeatures: int,
    importance_type: str,
) -> Iterator[Finding]:
    """DBG702's top-``nfeatures`` share of the final model's ``importance_type``."""
    share_all, top_all = view.derive(TopImportanceShare(nfeatures, threshold))
    share, top = share_all[view.records], top_all[view.records]
    name = _feature_namer(ctx, view)
    counts = view.stat("count")
    kind = importance_type_of(view.info) or importance_type

    # Rounds with a full tensor and more than nfeatures features; a round the derivation did
    # not read could not exceed the threshold (its statistics bound the share), so it is calm.
    stored = np.isin(view.records, ctx.trace.raw_records(view.tag))
    judged = np.flatnonzero(stored & (counts > nfeatures))
    over = share > threshold
    if not len(judged) or not over[judged[-1]]:
        return
    last = int(judged[-1])
    calm = judged[~over[judged]]
    since = int(calm[-1]) + 1 if len(calm) else int(judged[0])
    since = int(judged[np.searchsorted(judged, since)])
    features = ", ".join(name(int(index)) for index in top[last])
    yield Finding(
        message=(
            f"top {nfeatures} of {counts[last]:.0f} features hold {100 * share[last]:.0f} % of "
            f"the {kind} importance of the final model (> {100 * threshold:g} %, since round "
            f"{view.steps[since]}): {features}"
        ),
        tensor=view.tag,
        first_step=int(view.steps[last]),
        last_step=int(view.steps[last]),
        steps=1,
        value=float(share[last]),
        threshold=threshold,
        mode=view.mode_name(last),
        key="overweight",
        extra={"importance_type": kind, "since_step": int(view.steps[since])},
    )


def _one_feature(ctx: RuleContext, view: TensorView, gain_share: float) -> Iterator[Finding]:
    """DBG702's one feature holding more than ``gain_share`` of the final model's gain."""
    share_all, top_all = view.derive(TopImportanceShare(1, gain_share))
    share, top = share_all[view.records], top_all[view.records]
    stored = np.isin(view.records, ctx.trace.raw_records(view.tag))
    judged = np.flatnonzero(stored & (view.stat("count") > 1))
    if not len(judged) or not share[judged[-1]] > gain_share:
        return
    last = int(judged[-1])
    kind = importance_type_of(view.info) or "gain"
    yield Finding(
        message=(
            f"{_feature_namer(ctx, view)(int(top[last][0]))} holds "
            f"{100 * share[last]:.1f} % of the {kind} importance of the final model (> "
            f"{100 * gain_share:g} %: more than {gain_share / (1 - gain_share):.3g} times all "
            "the other features together): one column the model learnt almost everything from"
        ),
        tensor=view.tag,
        first_step=int(view.steps[last]),
        last_step=int(view.steps[last]),
        steps=1,
        value=float(share[last]),
        threshold=gain_share,
        mode=view.mode_name(last),
        key="one-feature",
        extra={"importance_type": kind},
    )


def _feature_namer(ctx: RuleContext, view: TensorView) -> Callable[[int], str]:
    """Feature index to name, from the metadata key ``feature_names`` when it fits the tensor."""
    recorded = ctx.trace.metadata.get("feature_names")
    if isinstance(recorded, list) and view.info.shape and len(recorded) == view.info.shape[0]:
        return lambda index: str(recorded[index])
    return lambda index: f"f{index}"


def _tree_learning_rate(ctx: RuleContext) -> float | None:
    """The boosting's learning rate (shrinkage): XGBoost's own ``eta`` from the booster
    configuration the callback stores (run metadata ``xgboost_config``, any tree booster,
    dart's too), else ``eta`` or ``learning_rate`` among the run's hyperparameters when the
    trace records trees."""
    found = _config_number(ctx.trace.metadata.get("xgboost_config"), "tree_train_param", "eta")
    if found is not None:
        return found
    hyperparameters = ctx.trace.metadata.get("hyperparameters")
    if not isinstance(hyperparameters, dict) or not (
        ctx.tensors(collection="trees") or ctx.tensors(collection=IMPORTANCE_COLLECTION)
    ):
        return None
    for name in ("eta", "learning_rate"):
        value = hyperparameters.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _leaves_capped(ctx: RuleContext, depth: int) -> bool:
    """Whether XGBoost's configuration caps each tree at no more leaves than a tree ``depth``
    deep holds."""
    leaves = _config_number(
        ctx.trace.metadata.get("xgboost_config"), "tree_train_param", "max_leaves"
    )
    return leaves is not None and 0 < leaves <= 2**depth


def _config_number(config: object, section: str, name: str) -> float | None:
    """``name`` in the first ``section`` of an XGBoost configuration (nested dicts of strings,
    as ``Booster.save_config`` writes it; dart nests its tree booster's)."""
    if not isinstance(config, dict):
        return None
    params = config.get(section)
    if isinstance(params, dict) and name in params:
        try:
            return float(params[name])
        except (TypeError, ValueError):
            return None
    for value in config.values():
        found = _config_number(value, section, name)
        if found is not None:
            return found
    return None


def _boosting_rounds(ctx: RuleContext) -> int | None:
    """Rounds boosted by the end of the run: the last round (0-based) the tree depths or the
    training loss recorded, plus one (a training continued from a saved booster numbers its
    losses on from the rounds it had)."""
    loss = ctx.loss("train")
    last = [int(view.steps.max()) for view in _depth_views(ctx)]
    if loss is not None and len(loss.steps):
        last.append(int(loss.steps.max()))
    return max(last) + 1 if last else None


def _continued(ctx: RuleContext) -> bool:
    """Whether the booster held trees when the recorded training began (``xgb_model=``): the
    configuration the callback stores then counts them (``num_trees``)."""
    trees = _config_number(
        ctx.trace.metadata.get("xgboost_config"), "gbtree_model_param", "num_trees"
    )
    return bool(trees)


def _stopped_early(ctx: RuleContext, rounds: int) -> bool:
    """Whether early stopping found the validation optimum before the last round (run
    metadata ``early_stopping`` with ``best_step``)."""
    stopping = ctx.trace.metadata.get("early_stopping")
    best = stopping.get("best_step") if isinstance(stopping, dict) else None
    return type(best) is int and best < rounds - 1


@rule(
    "DBG703",
    "boosting-learning-rate",
    severity="warning",
    category="trees",
    requires=Need(
        "boosting learning rate (XGBoost's eta in run metadata xgboost_config, or "
        "hyperparameter eta or learning_rate beside tree tensors) and its rounds",
        lambda ctx: _tree_learning_rate(ctx) is not None and _boosting_rounds(ctx) is not None,
    ),
    label="learning rate too low for the rounds",
    # Predictions that cannot leave the base score: the loss stays near its start, and a
    # classifier predicts the majority class.
    explains=("DBG301:not-decreasing", "DBG303", "DBG601:mispredicted", "DBG604"),
)
def boosting_learning_rate(ctx: RuleContext, *, min_total: float = 1.0) -> Iterator[Finding]:
    """The boosting's learning rate times its rounds is below one: less than one tree's worth.

    Gradient boosting adds each round's tree scaled by the learning rate ``eta`` (shrinkage,
    Friedman 2001): a tree's leaves hold the Newton step towards the current residuals, and
    the ensemble moves each prediction by ``eta`` of it. Over ``M`` rounds the ensemble can
    move at most ``eta · M`` such steps; Friedman showed that a smaller ``eta`` trades against
    more rounds, the product being what a run has to learn with (XGBoost's default 0.3 over
    tens of rounds, 0.01 over thousands). When ``eta · M`` is below ``min_total`` (1: less
    than one unshrunk tree), the predictions move less than one full step from the base
    score whatever the data: the loss stays near its start, and the probabilities near the
    base rate. The rule reads ``eta`` from the booster configuration the XGBoost callback
    stores (run metadata ``xgboost_config``), else the hyperparameters ``eta`` or
    ``learning_rate`` of a trace with trees; ``M`` is the last recorded round plus one. Left
    alone: a run that early stopping ended at its validation optimum (run metadata
    ``early_stopping`` with a ``best_step`` before the last round), where more rounds at that
    rate did not help, so the rate was not what limited it; and a training continued from a
    booster that held trees already (``xgb_model=``), whose earlier rounds the trace does not
    hold. A warning once the run is over (the trace closed), a note while it is still being
    written (a run being watched has not had all its rounds yet); the cause of a loss that
    stays high either way.

    Why it matters: the rounds are spent and the model is still close to the base score.

    Typical causes: a neural network's learning rate (1e-3, 1e-4) pasted into a boosting
    config; a small ``eta`` chosen for a long run and the rounds cut for a quick test.

    Fix: keep ``eta · rounds`` well above 1 (``eta`` 0.05 to 0.3 with a few hundred rounds),
    and let early stopping on a validation set choose the rounds.

    Args:
        min_total: ``eta`` times the rounds below which the ensemble cannot fit.
    """
    if not min_total > 0:
        raise RuleConfigError(f"DBG703 min_total must be positive, got {min_total:g}")
    eta, rounds = _tree_learning_rate(ctx), _boosting_rounds(ctx)
    if eta is None or rounds is None or eta * rounds >= min_total:
        return
    if _stopped_early(ctx, rounds) or _continued(ctx):
        return
    yield Finding(
        message=(
            f"learning rate (eta) {eta:.3g} x {rounds} rounds = {eta * rounds:.3g} (< "
            f"{min_total:g}): the ensemble adds up less than one unshrunk tree, so its "
            "predictions move less than one full step from the base score"
        ),
        first_step=0,
        last_step=rounds - 1,
        value=eta * rounds,
        threshold=min_total,
        key="too-low",
        severity=None if ctx.trace.complete else Severity.info,
    )
