"""Cost of the XGBoost callback per boosting round, against the same training without it.

Deep trees make the callback's per-round work large: a tree of depth 20 has thousands of
nodes, and what the callback reads of the model grows with it. Three trainings of
``--rounds`` rounds on the same synthetic data (``--rows`` x ``--features``, binary
classification, ``max_depth=--depth``, ``tree_method=hist``, one thread) run in turn,
``--repeat`` times, and the median of each is kept:

* **plain**: ``xgb.train`` with no callback;
* **callback**: with :class:`dbgcli.xgboost.DbgCallback` (metrics of the training and a
  validation set, the depth of the new trees, feature importance of three types; no ``data``);
* **callback, whole model**: the same callback reading the whole model every round, as it did
  before this benchmark existed: the JSON dump of the new trees (``get_dump(dump_format=
  "json")`` parsed with ``json.loads``) and ``get_score`` of the whole booster for each
  importance type, which walks every tree built so far, so a round costs more the longer the
  run.

It prints the seconds of each, the overhead over plain training, and the CPU time spent
inside the callback per round, in milliseconds and as a share of a plain round: the
callback's own cost, which the difference of two whole trainings measures less precisely on
a shared machine. The per-round work is also timed on its own for
the last round of a trained model: the depth from each dump format and the importance of the
new trees against the whole model's. Times are CPU seconds of this process (everything runs
on one thread): on a shared machine wall-clock time would measure the other jobs too.

Run: ``python bench/bench_xgboost.py [--depth 20] [--rounds 200] [--rows 20000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xgboost as xgb

from dbgcli.xgboost import (
    IMPORTANCE_TYPES,
    TREE_READ_EVERY,
    DbgCallback,
    _json_depth,
    _model_trees,
    model_tree_depths,
    tree_depth,
)


class Timed:
    """Adds the CPU time spent in the callback's hooks to ``spent`` (a mixin)."""

    spent = 0.0

    def before_training(self, model):  # type: ignore[no-untyped-def]
        return self._timed(super().before_training, model)  # type: ignore[misc]

    def after_iteration(self, model, epoch, evals_log):  # type: ignore[no-untyped-def]
        return self._timed(super().after_iteration, model, epoch, evals_log)  # type: ignore[misc]

    def after_training(self, model):  # type: ignore[no-untyped-def]
        return self._timed(super().after_training, model)  # type: ignore[misc]

    def _timed(self, method, *args):  # type: ignore[no-untyped-def]
        started = time.process_time()
        try:
            return method(*args)
        finally:
            Timed.spent += time.process_time() - started


class TimedCallback(Timed, DbgCallback):
    """The callback, timed."""


class WholeModelCallback(DbgCallback):
    """The callback as it read the model before: JSON dumps and whole-model importance."""

    def _note_round(self, writer, model, step):  # type: ignore[no-untyped-def]
        rounds = model.num_boosted_rounds()
        dumps = model[rounds - 1 : rounds].get_dump(dump_format="json")
        depths = np.array([_json_depth(tree) for tree in dumps], dtype=np.int64)
        writer.add_tensor("trees/depth", depths, step, collection="trees", raw=True)
        names = self._names(writer, model)
        for importance_type in IMPORTANCE_TYPES:
            score = model.get_score(importance_type=importance_type)
            values = np.array([float(score.get(name, 0.0)) for name in names], dtype=np.float64)
            writer.add_tensor(
                f"feature_importance/{importance_type}",
                values,
                step,
                collection="feature_importance",
                kind=importance_type,
                raw=True,
            )


class TimedWholeModelCallback(Timed, WholeModelCallback):
    """The callback as it was, timed."""


def _data(rows: int, features: int, seed: int) -> tuple[xgb.DMatrix, xgb.DMatrix]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    # A noisy non-linear target: deep trees keep splitting on the noise.
    signal = np.sin(3 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * rng.normal(size=rows)
    y = (signal > 0).astype(np.float32)
    cut = rows * 4 // 5
    return xgb.DMatrix(x[:cut], label=y[:cut]), xgb.DMatrix(x[cut:], label=y[cut:])


def _train(
    args: argparse.Namespace,
    train: xgb.DMatrix,
    valid: xgb.DMatrix,
    callback: Callable[[Path], xgb.callback.TrainingCallback] | None,
    out: Path,
) -> tuple[float, xgb.Booster]:
    params = {
        "objective": "binary:logistic",
        "max_depth": args.depth,
        "tree_method": "hist",
        "nthread": 1,
        "eta": 0.1,
        "seed": 0,
    }
    callbacks = [] if callback is None else [callback(out / "run.h5")]
    started = time.process_time()
    booster = xgb.train(
        params,
        train,
        num_boost_round=args.rounds,
        evals=[(train, "train"), (valid, "valid")],
        verbose_eval=False,
        callbacks=callbacks,
    )
    return time.process_time() - started, booster


def _time(action: Callable[[], object], repeat: int = 20) -> float:
    """Median seconds of ``action`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        action()
        times.append(time.process_time() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    train, valid = _data(args.rows, args.features, seed=0)
    variants: dict[str, Callable[[Path], xgb.callback.TrainingCallback] | None] = {
        "plain": None,
        "callback": lambda path: TimedCallback(path, overwrite=True),
        "callback, whole model": lambda path: TimedWholeModelCallback(path, overwrite=True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    inside: dict[str, list[float]] = {name: [] for name in variants}
    booster: xgb.Booster | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name, callback in variants.items():
                Timed.spent = 0.0
                elapsed, booster = _train(args, train, valid, callback, Path(tmp))
                seconds[name].append(elapsed)
                inside[name].append(Timed.spent)
    assert booster is not None
    plain = statistics.median(seconds["plain"])
    print(
        f"XGBoost, {args.rows} rows x {args.features} features, max_depth {args.depth}, "
        f"{args.rounds} rounds, 1 thread; median of {args.repeat} runs"
    )
    plain_round = plain / args.rounds * 1e3
    print(f"plain training: {plain:.2f} s, {plain_round:.2f} ms per round")
    print(
        f"{'':24s}{'seconds':>9s}{'overhead':>10s}{'in callback, ms/round':>23s}{'of a round':>12s}"
    )
    for name in list(variants)[1:]:
        median = statistics.median(seconds[name])
        spent = statistics.median(inside[name]) / args.rounds * 1e3
        print(
            f"{name:24s}{median:9.2f}{median / plain - 1:>+10.1%}{spent:23.2f}"
            f"{spent / plain_round:>12.1%}"
        )

    rounds = booster.num_boosted_rounds()
    last = booster[rounds - 1 : rounds]
    nodes = sum(dump.count("\n") for dump in last.get_dump())
    print(f"\nper-round work at the last round ({nodes} nodes in its tree), median CPU ms:")
    batch = min(TREE_READ_EVERY, rounds)
    work = {
        "slice the last round": lambda: booster[rounds - 1 : rounds],
        f"slice the last {batch} rounds": lambda: booster[rounds - batch : rounds],
        "depth, JSON dump": lambda: [_json_depth(t) for t in last.get_dump(dump_format="json")],
        "depth, text dump": lambda: [tree_depth(t) for t in last.get_dump()],
        "depth, model arrays": lambda: model_tree_depths(last),
        "importance, whole model": lambda: [
            booster.get_score(importance_type=kind) for kind in IMPORTANCE_TYPES
        ],
        "importance, new trees": lambda: [
            last.get_score(importance_type=kind) for kind in ("weight", "total_gain", "total_cover")
        ],
        "depth and importance, model arrays": lambda: _model_trees(
            last.save_raw("json"), args.features
        ),
    }
    for name, action in work.items():
        print(f"  {name:36s}{_time(action) * 1e3:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
