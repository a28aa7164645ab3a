"""Stopping a run from inside: ``stop_on``, ``hook.should_stop``, ``raise_on_stop`` and the
XGBoost callback honouring a stop request."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xgboost as xgb

from dbgcli import TraceWriter, open_trace
from dbgcli.errors import TrainingStopped
from dbgcli.live_rules import LiveRules
from dbgcli.torch import attach
from dbgcli.torch._hook import DEFAULT_STATS_EVERY
from dbgcli.trace.stop import new_request, write_stop_request
from dbgcli.xgboost import DbgCallback
from tests.watch_run import Regressor, data, diverging_lr


def test_non_finite_loss_and_gradients_are_errors() -> None:
    rules = LiveRules("error")
    assert rules.loss(1.0, 0) is None
    found = rules.loss(math.nan, 7)
    assert found is not None and (found.rule_id, found.severity, found.step) == (
        "DBG306",
        "error",
        7,
    )
    gradient = rules.gradient("grad/w", 3.0, math.nan, 8)
    assert gradient is not None and gradient.rule_id == "DBG102" and "3 NaN/inf" in gradient.message


def test_the_live_checks_use_the_defaults_of_their_rules() -> None:
    """The checks follow the rules of the same ids with their default parameters."""
    from dbgcli.rules import REGISTRY

    live = LiveRules("warning")
    exploding, flat = REGISTRY.get("DBG102").defaults(), REGISTRY.get("DBG301").defaults()
    assert (live.growth, live.window) == (exploding["growth"], exploding["window"])
    copied = ("min_decrease_pct", "z", "patience", "converged_fraction")
    assert {name: getattr(live, name) for name in copied} == {name: flat[name] for name in copied}


def test_warnings_only_when_asked_for() -> None:
    quiet, loud = LiveRules("error"), LiveRules("warning")
    norms = [1.0] * 20 + [5000.0]
    assert all(quiet.gradient("g", 0, n, s) is None for s, n in enumerate(norms))
    fired = [loud.gradient("g", 0, n, s) for s, n in enumerate(norms)]
    assert fired[:-1] == [None] * 20
    assert fired[-1] is not None and fired[-1].severity == "warning" and "5000" in fired[-1].message


def test_loss_not_decreasing_needs_a_high_flat_loss() -> None:
    rng = np.random.default_rng(0)

    def first_firing(losses: np.ndarray) -> int | None:
        rules = LiveRules("warning")
        for step, value in enumerate(losses):
            if rules.loss(float(value), step) is not None:
                return step
        return None

    falling = 2.0 * np.exp(-np.arange(500) / 100) + rng.normal(0, 0.01, 500)
    stuck = 2.0 + rng.normal(0, 0.01, 500)
    converged = np.concatenate([np.linspace(2.0, 0.1, 100), 0.1 + rng.normal(0, 0.01, 400)])
    assert first_firing(falling) is None
    assert first_firing(converged) is None
    assert first_firing(stuck) == 149  # the third block of 50 is the second flat check


def test_bad_stop_on_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stop_on"):
        attach(torch.nn.Linear(2, 1), None, tmp_path / "x.h5", stop_on="sometimes")
    assert not (tmp_path / "x.h5").exists()


def diverging_run(tmp_path: Path, **options: object) -> tuple[Path, int, int]:
    """Train the diverging regression until the hook says stop; (trace, last step, steps)."""
    path = tmp_path / "run.h5"
    x, y = data()
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=diverging_lr(x))
    last = -1
    with attach(model, optimizer, path, raw_every=0, **options) as hook:  # type: ignore[arg-type]
        for step in range(1000):
            optimizer.zero_grad()
            loss = model(x, y)["loss"]
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
            last = step
            if hook.should_stop:
                break
    return path, last, hook.step


def test_stop_on_error_stops_at_the_first_non_finite_step(tmp_path: Path) -> None:
    path, last, _ = diverging_run(tmp_path, stop_on="error")
    with open_trace(path) as trace:
        stop = trace.metadata["stop"]
        loss = trace.scalar("loss")
    first_bad = int(loss.steps[~np.isfinite(loss.values)][0])
    # Losses reach the host with the next recorded step's statistics (one transfer per
    # recorded step), so the run stops within stats_every steps of the first bad loss.
    assert first_bad <= last < first_bad + DEFAULT_STATS_EVERY
    assert stop["by"] == "stop_on (in-process)" and stop["rule"] == "DBG306"
    assert stop["step"] == first_bad and "the training loss is inf" in stop["reason"]


def test_raise_on_stop_raises_from_the_optimizer_step(tmp_path: Path) -> None:
    with pytest.raises(TrainingStopped) as raised:
        diverging_run(tmp_path, stop_on="error", raise_on_stop=True)
    assert raised.value.request.rule == "DBG306"  # type: ignore[attr-defined]
    with open_trace(tmp_path / "run.h5") as trace:  # the hook closed the trace on the way out
        assert trace.complete and trace.metadata["stop"]["rule"] == "DBG306"


def test_without_stop_on_the_run_goes_on(tmp_path: Path) -> None:
    _, last, _ = diverging_run(tmp_path)
    assert last == 999


def test_xgboost_ends_boosting_on_a_stop_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    dtrain = xgb.DMatrix(x, label=(x[:, 0] > 0).astype(float))
    path = tmp_path / "trees.h5"
    writer = TraceWriter(path, flush_secs=0.0)
    write_stop_request(path, new_request("test", "enough trees"))
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2},
        dtrain,
        num_boost_round=50,
        evals=[(dtrain, "train")],
        callbacks=[DbgCallback(writer)],
        verbose_eval=False,
    )
    writer.close()
    assert booster.num_boosted_rounds() == 1
    with open_trace(path) as trace:
        assert trace.metadata["stop"]["reason"] == "enough trees"
