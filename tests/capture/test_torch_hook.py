"""The PyTorch hook, checked on real training runs through the public trace reader."""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import time
import warnings
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dbgcli import TraceWriter, open_trace
from dbgcli.errors import TraceWriterError
from dbgcli.findings import Severity
from dbgcli.report.model import RuleStatus
from dbgcli.torch import ACTIVATION_KINDS
from dbgcli.torch import _hook as hook_module
from dbgcli.torch import _stats as stats_module
from dbgcli.torch import attach as attach_with_defaults
from dbgcli.torch._hook import DEFAULT_STATS_EVERY, rank_path, refuse_existing
from dbgcli.trace import schema
from dbgcli.trace.stats import COL, StatsKernel, unit_measure

FEATURES, CLASSES, BATCH = 8, 3, 16

# These tests check what is recorded at every step; the default (tensors every 10th step) is
# checked in test_default_records_tensors_every_tenth_step_and_scalars_every_step.
attach = partial(attach_with_defaults, stats_every=1)


def make_net(dropout: float = 0.0) -> nn.Sequential:
    """fc1 -> relu -> (dropout) -> fc2 -> tanh -> fc3 -> sigmoid -> out."""
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(FEATURES, 16),
            relu=nn.ReLU(),
            drop=nn.Dropout(dropout),
            fc2=nn.Linear(16, 12),
            tanh=nn.Tanh(),
            fc3=nn.Linear(12, 8),
            sigmoid=nn.Sigmoid(),
            out=nn.Linear(8, CLASSES),
        )
    )


def batches(count: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(BATCH, FEATURES, generator=generator),
            torch.randint(0, CLASSES, (BATCH,), generator=generator),
        )
        for _ in range(count)
    ]


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    hook: hook_module.TorchHook,
    x: torch.Tensor,
    y: torch.Tensor,
) -> None:
    """One step of a loop that records its loss before the backward pass."""
    optimizer.zero_grad()
    loss = loss_fn(model, x, y)
    hook.record_loss(loss)
    loss.backward()
    optimizer.step()


PARAMETERS = [
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "fc3.weight",
    "fc3.bias",
    "out.weight",
    "out.bias",
]


def test_records_every_tag_with_its_collection_kind_mode_and_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(
        [
            {"params": model.fc1.parameters()},
            {
                "params": [p for n, p in model.named_parameters() if not n.startswith("fc1")],
                "lr": 0.05,
            },
        ],
        lr=0.1,
    )
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path, raw_every=2) as hook:
        for x, y in batches(5):
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()

    with open_trace(path) as trace:
        expected: dict[str, tuple[str | None, str | None]] = {
            "loss": (None, None),
            "lr": (None, None),
            "lr/group1": (None, None),
        }
        for name in PARAMETERS:
            expected[name] = ("biases" if name.endswith("bias") else "weights", None)
            expected[f"grad/{name}"] = ("gradients", None)
        expected |= {
            "act/relu": ("activations", "relu"),
            "act/tanh": ("activations", "tanh"),
            "preact/tanh": ("preactivations", "tanh"),
            "act/sigmoid": ("activations", "sigmoid"),
            "preact/sigmoid": ("preactivations", "sigmoid"),
        }
        assert {info.tag for info in trace.tags()} == set(expected)
        for tag, (collection, kind) in expected.items():
            info = trace.tag(tag)
            assert (info.collection, info.kind) == (collection, kind), tag
            steps, modes = trace.index(tag)
            assert steps.tolist() == [0, 1, 2, 3, 4], tag
            assert modes.tolist() == [0] * 5, tag
        assert trace.scalar("lr").values.tolist() == [0.1] * 5
        assert trace.scalar("lr/group1").values.tolist() == [0.05] * 5
        assert trace.tag("fc1.weight").raw_records == 3  # steps 0, 2, 4
        assert trace.metadata["framework"] == "pytorch"
        assert trace.complete


def test_statistics_equal_those_of_the_model_tensors(tmp_path: Path, no_dbg_warnings: None) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    grad_norms, weight_means, relu_zero_fracs, losses, first_weight = [], [], [], [], None
    seen: list[torch.Tensor] = []
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path, raw_every=3):
        # Registered after the hook's own, so it sees the same output.
        observer = model.relu.register_forward_hook(
            lambda m, a, out: seen.append(out.detach().clone())
        )
        for x, y in batches(6):
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            losses.append(loss.item())
            grad_norms.append(torch.linalg.vector_norm(model.fc1.weight.grad).item())
            weight_means.append(model.fc2.weight.mean().item())
            relu_zero_fracs.append((seen[-1] == 0).double().mean().item())
            if first_weight is None:
                first_weight = model.fc1.weight.detach().clone().numpy()
            optimizer.step()
        observer.remove()

    with open_trace(path) as trace:
        np.testing.assert_allclose(
            trace.stat("grad/fc1.weight", "l2").values, grad_norms, rtol=1e-5
        )
        np.testing.assert_allclose(
            trace.stat("fc2.weight", "mean").values, weight_means, rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(trace.stat("act/relu", "zero_frac").values, relu_zero_fracs)
        # Activations carry every statistic and their per-unit share of active values.
        outputs = np.stack([output.numpy() for output in seen])
        np.testing.assert_allclose(
            trace.stat("act/relu", "l1").values, np.abs(outputs).sum(axis=(1, 2)), rtol=1e-5
        )
        np.testing.assert_allclose(
            trace.stat("act/relu", "pos_frac").values, (outputs > 0).mean(axis=(1, 2))
        )
        units = trace.units("act/relu")
        assert units is not None
        np.testing.assert_allclose(units.values, (outputs > 0).mean(axis=1), rtol=1e-6)
        np.testing.assert_array_equal(trace.raw("fc1.weight", 0), first_weight)
        np.testing.assert_array_equal(trace.raw("act/relu", 3), seen[3].numpy())
        assert trace.raw("act/relu", 1) is None  # raw_every=3
        # update_l2 of a weight is the norm of the previous step's update.
        updates = trace.stat("fc1.weight", "update_l2").values
        assert np.isnan(updates[0]) and (updates[1:] > 0).all()
        # No loss was recorded and none is in the model's output.
        assert "loss" not in trace


def train_run(
    hooked: bool, tmp_path: Path, steps: int = 12, accumulate: int = 2
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Train with dropout, momentum, accumulation and evaluations; return params, RNG state."""
    torch.manual_seed(1234)
    model = make_net(dropout=0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = batches(steps * accumulate, seed=7)
    hook = (
        attach(model, optimizer, tmp_path / "run.h5", raw_every=1, overwrite=True)
        if hooked
        else None
    )
    for index, (x, y) in enumerate(data):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y) / accumulate
        if hook is not None:
            hook.record_loss(loss)
            hook.record(labels=y, predictions=logits, inputs=x)
        loss.backward()
        if (index + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
        if index % 5 == 0:
            model.eval()
            with torch.no_grad():
                model(x)
            model.train()
    if hook is not None:
        hook.remove()
    return [p.detach().clone() for p in model.parameters()], torch.get_rng_state()


def test_training_is_bit_identical_with_and_without_the_hook(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    plain_params, plain_rng = train_run(False, tmp_path)
    hooked_params, hooked_rng = train_run(True, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(plain_params, hooked_params, strict=True))
    assert torch.equal(plain_rng, hooked_rng)
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.index("grad/fc1.weight")[0].tolist() == list(range(12))


def test_frozen_parameters_record_weights_and_no_gradient(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    model.fc1.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path):
        for x, y in batches(3):
            optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            optimizer.step()
    with open_trace(path) as trace:
        assert trace.index("fc1.weight")[0].tolist() == [0, 1, 2]
        assert "grad/fc1.weight" not in trace and "grad/fc1.bias" not in trace
        assert trace.index("grad/fc2.weight")[0].tolist() == [0, 1, 2]
        assert trace.metadata["frozen_parameters"] == ["fc1.weight", "fc1.bias"]
        assert (trace.stat("fc1.weight", "update_l2").values[1:] == 0).all()


def test_frozen_parameters_follow_requires_grad_through_the_run(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """A layer switched off and on again (a GAN's discriminator around the generator's
    step): the metadata lists it while it requires no gradient, and a gradient it holds at
    a step is recorded all the same (optimizers update any parameter with a ``.grad``)."""
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    listed = []
    with attach(model, optimizer, path, stats_every=1) as hook:
        for step, (x, y) in enumerate(batches(6)):
            optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            model.fc1.requires_grad_(step not in (2, 3))  # after backward: .grad is kept
            optimizer.step()
            listed.append(list(hook.writer.metadata["frozen_parameters"]))
    assert listed[1] == [] and listed[2] == listed[3] == ["fc1.weight", "fc1.bias"]
    assert listed[4] == listed[5] == []
    with open_trace(path) as trace:
        # Step 2's gradient was computed before the switch; steps 3 and 4 computed none.
        assert trace.index("grad/fc1.weight")[0].tolist() == [0, 1, 2, 5]


def test_dropout_rates_are_noted_by_module_name(tmp_path: Path) -> None:
    """Every module that drops values in training, with its rate, under the name the trace
    gives its parameters (a compiled wrapper's prefix left out): DBG804 reads them."""
    model = nn.Sequential(make_net(dropout=0.3), nn.GRU(4, 4, num_layers=2, dropout=0.2))
    with attach(torch.compile(model, backend="eager"), None, tmp_path / "run.h5"):
        pass
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.metadata["dropout"] == {"0.drop": 0.3, "1": 0.2}
    with attach(make_net(), None, tmp_path / "none.h5"):
        pass
    with open_trace(tmp_path / "none.h5") as trace:
        assert "dropout" not in trace.metadata


def test_the_activation_module_a_model_returns_is_noted_as_its_output_layer(
    tmp_path: Path,
) -> None:
    """The model's last activation, whose output the model returns as it is, in a view or in
    a tuple, is noted with its input (the saturation rules leave it out); an activation
    whose output the model only computes with is not, nor is any in a model that ends in a
    linear layer."""

    class Returns(nn.Module):
        def __init__(self, how: str) -> None:
            super().__init__()
            self.how = how
            self.body = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 5))
            self.head = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> Any:
            probabilities = self.head(self.body(x))
            if self.how == "tuple":
                return probabilities, x
            if self.how == "view":
                return probabilities.view(-1)
            if self.how == "computed":
                return probabilities * 2
            return probabilities

    noted = {}
    for how in ("tensor", "tuple", "view", "computed"):
        model = Returns(how)
        path = tmp_path / f"{how}.h5"
        with attach(model, None, path):
            model(torch.randn(16, 4))
        with open_trace(path) as trace:
            noted[how] = trace.metadata.get("model_outputs")
    head = ["act/head", "preact/head"]
    assert noted == {"tensor": head, "tuple": head, "view": head, "computed": None}
    model = make_net()
    with attach(model, None, tmp_path / "linear.h5"):
        model(torch.randn(BATCH, FEATURES))
    with open_trace(tmp_path / "linear.h5") as trace:
        assert "model_outputs" not in trace.metadata


def test_batch_norms_note_the_values_they_normalise_each_channel_over(tmp_path: Path) -> None:
    """Before the first update, each batch norm in training mode counts the fewest values a
    channel of its input holds: the batch, times an image's positions. A fine-tune that
    freezes them in eval mode after ``model.train()`` has none to count. At 2 values, DBG806
    names the layer; a convolution's 2 images of 4x4 give 32."""
    from tests.rules.helpers import analyze_path

    def trained(path: Path, *, frozen: bool) -> Path:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 8),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.Linear(8, 3),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with attach(model, optimizer, path) as hook:
            model.train()
            if frozen:
                model[1].eval()
                model[5].eval()
            for _ in range(3):
                x, y = torch.randn(2, 1, 4, 4), torch.randint(0, 3, (2,))
                train_step(model, optimizer, hook, x, y)
        return path

    live = trained(tmp_path / "live.h5", frozen=False)
    with open_trace(live) as trace:
        assert trace.metadata["batch_norm"] == {"1": 32, "5": 2}
    (finding,) = analyze_path(live, select=("DBG806",)).findings
    assert (finding.key, finding.value, finding.extra["modules"]) == ("small-batch", 2.0, {"5": 2})
    with open_trace(trained(tmp_path / "frozen.h5", frozen=True)) as trace:
        assert "batch_norm" not in trace.metadata


@pytest.mark.parametrize("how", ["compiled, then attached", "its forward"])
def test_a_compiled_model_with_batch_norm_compiles_once(tmp_path: Path, how: str) -> None:
    """The batch norms' counting hooks are traced into a compiled model, where they do
    nothing: they stay (removing them would recompile it), and nothing is counted."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run: nn.Module = model
    if how == "compiled, then attached":
        run = cast(nn.Module, torch.compile(model, backend="eager"))
    hook = attach(run, optimizer, tmp_path / "run.h5")
    if how == "its forward":
        model.forward = torch.compile(model.forward, backend="eager")  # type: ignore[method-assign]
    with hook:
        for _ in range(6):
            x, y = torch.randn(4, 4), torch.randint(0, 3, (4,))
            optimizer.zero_grad()
            nn.functional.cross_entropy(run(x), y).backward()
            optimizer.step()
    assert counters["stats"]["unique_graphs"] == 1
    with open_trace(tmp_path / "run.h5") as trace:
        assert "batch_norm" not in trace.metadata


@pytest.mark.parametrize(
    ("dropout", "switches", "noted_at"),
    [(0.5, False, 2), (0.5, True, None), (0.0, False, None)],
)
def test_evaluation_in_training_mode_is_noted_and_told(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    dropout: float,
    switches: bool,
    noted_at: int | None,
) -> None:
    """An evaluation under no_grad that leaves the model in training mode runs its dropout:
    the hook notes the first one after an update (the one before any is left alone, as a
    data-dependent initialisation's would be), and DBG803 reports it. Switching modes, or a
    model without dropout or batch norm, is no such case."""
    from tests.rules.helpers import run_rule

    torch.manual_seed(0)
    model = make_net(dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with caplog.at_level(logging.WARNING, logger="dbgcli"), attach(model, optimizer, path) as hook:
        for index, (x, y) in enumerate(batches(4)):
            if index % 2 == 0:
                model.train(not switches)
                with torch.no_grad():
                    hook.record_loss(loss_fn(model, x, y))
                model.train()
            train_step(model, optimizer, hook, x, y)
    warned = [r.getMessage() for r in caplog.records if "in training mode" in r.getMessage()]
    with open_trace(path) as trace:
        noted = trace.metadata.get("evaluated_in_train_mode")
        assert trace.scalar("loss", mode="eval").steps.tolist() == [0, 2]
    result = run_rule(path, "DBG803")
    if noted_at is None:
        assert noted is None and warned == [] and result.status is RuleStatus.passed
        return
    assert noted == {"step": noted_at, "modules": ["Dropout"]} and len(warned) == 1
    (finding,) = result.findings
    assert (finding.key, finding.first_step, finding.severity) == (
        "train-mode",
        noted_at,
        Severity.warning,
    )
    assert finding.message == (
        "the model was evaluated in training mode from optimizer step 2 (model.eval() not "
        "called?): a forward pass without gradients ran with its Dropout modules computing as "
        "in training (random units dropped), so the evaluation's numbers are not the trained "
        "model's"
    )


def test_recomputing_batch_norm_statistics_is_no_evaluation(tmp_path: Path) -> None:
    """swa_utils.update_bn runs the model in training mode under no_grad on purpose, with the
    norms' momentum set to None: no note."""
    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path) as hook:
        for x, y in batches(3):
            train_step(model, optimizer, hook, x, y)
        update_bn([x for x, _ in batches(3)], model)
    with open_trace(path) as trace:
        assert "evaluated_in_train_mode" not in trace.metadata


@pytest.mark.parametrize("start", [0, 1, 40])
def test_a_run_continued_from_a_checkpoint_is_noted_as_resumed(
    tmp_path: Path, no_dbg_warnings: None, start: int
) -> None:
    """Setting the hook's step before the first update continues a run's step axis: the trace
    then starts from a trained model, which the metadata says (``resumed_from_step``)."""
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path) as hook:
        hook.step = start
        for x, y in batches(3):
            train_step(model, optimizer, hook, x, y)
    with open_trace(path) as trace:
        assert trace.scalar("loss").steps.tolist() == [start, start + 1, start + 2]
        # Counting steps from 1 is no checkpoint.
        assert trace.metadata.get("resumed_from_step") == (start if start > 1 else None)


def test_training_in_eval_mode_is_noted_and_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``model.eval()`` before the loop and never undone: the optimizer steps after forward
    passes under eval mode, whose losses are recorded as evaluation. The hook says so once,
    notes the step in the metadata, and the loss rules' skip reason reads it. A run that
    evaluates under no_grad between training steps is no such case."""
    from tests.rules.helpers import run_rule

    for trains_in_eval, dropout in ((True, 0.0), (True, 0.5), (False, 0.5)):
        torch.manual_seed(0)
        model = make_net(dropout)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        path = tmp_path / f"eval{trains_in_eval}{dropout}.h5"
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="dbgcli"),
            attach(model, optimizer, path) as hook,
        ):
            model.train(not trains_in_eval)
            for x, y in batches(4):
                train_step(model, optimizer, hook, x, y)
                if not trains_in_eval:
                    model.eval()
                    with torch.no_grad():
                        hook.record_loss(loss_fn(model, x, y))
                    model.train()
        warned = [
            r.getMessage() for r in caplog.records if "eval mode while it trains" in r.getMessage()
        ]
        with open_trace(path) as trace:
            noted = trace.metadata.get("trained_in_eval_mode")
        in_eval_mode = run_rule(path, "DBG802")
        if not trains_in_eval:
            assert noted is None and warned == []
            assert in_eval_mode.status is RuleStatus.passed
            continue
        modules = ["Dropout"] if dropout else []
        assert noted == {"step": 0, "modules": modules} and len(warned) == 1
        reason = run_rule(path, "DBG301").reason
        assert reason == (
            "no train loss series; the model trained in eval mode from step 0 (model.train() "
            "never called?), so its training losses were recorded as evaluation"
        )
        (finding,) = in_eval_mode.findings
        assert finding.key == "eval-mode" and finding.first_step == 0
        if dropout:
            assert finding.severity is Severity.warning
            assert "its Dropout modules compute as in inference" in warned[0]
            assert finding.message == (
                "the model trained in eval mode from optimizer step 0 (model.train() never "
                "called?): its Dropout modules computed as in inference; its training losses "
                "from step 0 on were recorded as evaluation"
            )
        else:
            # Nothing in the model computes differently in eval mode: a note.
            assert finding.severity is Severity.info
            assert "it has no dropout or batch norm modules" in warned[0]


def zero_grad_loop(tmp_path: Path, loop: str) -> tuple[Any, Any]:
    """Twenty steps of a loop of one kind; the hook's note and DBG103's result."""
    from tests.rules.helpers import run_rule

    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    path = tmp_path / f"{loop}.h5"
    with attach(model, optimizer, path, stats_every=2) as hook:
        for x, y in batches(20):
            if loop in ("zeroed", "clipped"):
                optimizer.zero_grad()
            micro_batches = 3 if loop in ("accumulated", "accumulated-unzeroed") else 1
            for part in range(micro_batches):
                rows = slice(part * BATCH // micro_batches, (part + 1) * BATCH // micro_batches)
                loss = loss_fn(model, x[rows], y[rows]) / micro_batches
                loss.backward()
            hook.record_loss(loss)
            if loop in ("clipped", "clipped-unzeroed"):
                nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            optimizer.step()
            if loop == "accumulated":
                optimizer.zero_grad()
    with open_trace(path) as trace:
        noted = trace.metadata.get("gradients_not_zeroed")
    return noted, run_rule(path, "DBG103")


@pytest.mark.parametrize(
    ("loop", "carried_from"),
    [
        ("zeroed", None),
        ("unzeroed", 0),
        ("clipped", None),
        ("clipped-unzeroed", 0),
        ("accumulated", None),
        ("accumulated-unzeroed", 0),
    ],
)
def test_hook_notes_gradients_not_zeroed(
    tmp_path: Path, loop: str, carried_from: int | None
) -> None:
    """zero_grad() forgotten: the gradient of a recorded step is still part of the next one's,
    whatever clipping does to its length; accumulation that zeroes after each step is fine."""
    noted, result = zero_grad_loop(tmp_path, loop)
    if carried_from is None:
        assert noted is None and result.status is RuleStatus.passed
        return
    # Two checks in a row (recorded steps 2 apart) must agree: dated from the first. The
    # probe is the smallest parameter of 64 values or more (fc3.weight, 8 x 12).
    assert noted == {"step": carried_from, "parameter": "fc3.weight"}
    (finding,) = result.findings
    assert (finding.key, finding.severity) == ("carried", Severity.error)
    assert finding.first_step == carried_from
    assert finding.message == (
        f"the gradients are not zeroed between optimizer steps: the gradient of step "
        f"{carried_from} was still part of the next step's (seen in the gradient of "
        "fc3.weight); zero_grad() missing?"
    )


def test_hook_sees_no_carried_gradient_in_a_gan(tmp_path: Path) -> None:
    """The generator's loss flows into the discriminator's gradients after the
    discriminator's step and before its zero_grad(): the old gradient is zeroed away all the
    same, so the discriminator's hook notes nothing."""
    torch.manual_seed(0)
    generator, discriminator = nn.Linear(4, FEATURES), make_net()
    d_optimizer = torch.optim.Adam(discriminator.parameters(), 1e-3)
    g_optimizer = torch.optim.Adam(generator.parameters(), 1e-3)
    path = tmp_path / "gan.h5"
    with attach(discriminator, d_optimizer, path, stats_every=2) as hook:
        for x, _ in batches(20):
            fake = generator(torch.randn(BATCH, 4))
            discriminator.zero_grad()
            real_score, fake_score = discriminator(x)[:, 0], discriminator(fake.detach())[:, 0]
            d_loss = (
                nn.functional.softplus(-real_score).mean()
                + nn.functional.softplus(fake_score).mean()
            )
            d_loss.backward()
            d_optimizer.step()
            hook.record_loss(d_loss)
            generator.zero_grad()
            nn.functional.softplus(-discriminator(fake)[:, 0]).mean().backward()
            g_optimizer.step()
    with open_trace(path) as trace:
        assert "gradients_not_zeroed" not in trace.metadata


def test_hook_notes_parameters_the_optimizer_does_not_hold(tmp_path: Path) -> None:
    """An optimizer built before the model was replaced holds none of its parameters: the hook
    lists them at the first update, leaves them out of the zero_grad check (that optimizer's
    zero_grad() never clears them, so their gradients pile up without a missing call), and
    DBG403 says so as a fact. A second group added after attach counts."""
    from tests.rules.helpers import analyze_path

    torch.manual_seed(0)
    optimizer = torch.optim.SGD(make_net().parameters(), lr=0.1)
    model = make_net()
    stale = tmp_path / "stale.h5"
    with attach(model, optimizer, stale, stats_every=2) as hook:
        for x, y in batches(20):
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            optimizer.step()
            hook.record_loss(loss)
    with open_trace(stale) as trace:
        assert trace.metadata["parameters_not_in_optimizer"] == [
            name for name, _ in model.named_parameters()
        ]
        assert "gradients_not_zeroed" not in trace.metadata
    report = analyze_path(stale, select=("DBG103", "DBG403"))
    assert {f.rule_id for f in report.findings} == {"DBG403"}
    assert all("in none of the optimizer's parameter groups" in f.message for f in report.findings)

    model = make_net()
    optimizer = torch.optim.SGD(model[:2].parameters(), lr=0.1)
    grown = tmp_path / "grown.h5"
    with attach(model, optimizer, grown) as hook:
        optimizer.add_param_group({"params": list(model[2:].parameters())})
        for x, y in batches(2):
            train_step(model, optimizer, hook, x, y)
    with open_trace(grown) as trace:
        assert trace.metadata["parameters_not_in_optimizer"] == []
        # The optimizer's settings, per group, as JSON holds them.
        noted = trace.metadata["optimizer"]
        assert noted["type"] == "SGD" and len(noted["groups"]) == 2
        assert all(g["lr"] == 0.1 and g["weight_decay"] == 0 for g in noted["groups"])
        assert all("params" not in g for g in noted["groups"])

    # Two optimizers, each over half the model (a GAN's, or manual optimisation): together
    # they hold everything. One that keeps float64 copies (master weights) says nothing.
    model = make_net()
    first = torch.optim.SGD(model[:2].parameters(), lr=0.1)
    second = torch.optim.Adam(model[2:].parameters(), lr=1e-3)
    copies = torch.optim.SGD([p.detach().double() for p in model.parameters()], lr=0.1)
    split = tmp_path / "split.h5"
    with attach(model, first, split) as hook:
        for x, y in batches(2):
            for optimizer in (first, second, copies):
                optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            first.step()
            hook.record_optimizer_step(second)
            second.step()
            hook.record_optimizer_step(copies)
    with open_trace(split) as trace:
        assert trace.metadata["parameters_not_in_optimizer"] == []
        assert trace.metadata["optimizer"]["type"] == "SGD, Adam"
        assert len(trace.metadata["optimizer"]["groups"]) == 3
    masters = tmp_path / "masters.h5"
    with attach(model, copies, masters) as hook:
        for x, y in batches(2):
            train_step(model, copies, hook, x, y)
    with open_trace(masters) as trace:
        assert "parameters_not_in_optimizer" not in trace.metadata
        assert trace.metadata["optimizer"]["type"] == "SGD"


class TwoHeads(nn.Module):
    """The aux head takes part only when asked to, so its gradient is None on other steps."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(FEATURES, CLASSES)
        self.aux = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor, use_aux: bool) -> torch.Tensor:
        out = self.body(x)
        return out + self.aux(x) if use_aux else out


def test_parameters_without_gradient_in_a_step_are_skipped_for_that_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path):
        for step, (x, y) in enumerate(batches(4)):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x, use_aux=step % 2 == 0), y).backward()
            optimizer.step()
    with open_trace(path) as trace:
        assert trace.index("grad/aux.weight")[0].tolist() == [0, 2]
        assert trace.index("grad/body.weight")[0].tolist() == [0, 1, 2, 3]
        assert trace.index("aux.weight")[0].tolist() == [0, 1, 2, 3]


def test_gradient_accumulation_counts_optimizer_steps(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    micro, steps = 4, 3
    step_losses: list[float] = []
    accumulated_norms: list[float] = []
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path) as hook:
        data = iter(batches(micro * steps))
        for _ in range(steps):
            optimizer.zero_grad()
            micro_losses = []
            for _ in range(micro):
                x, y = next(data)
                loss = loss_fn(model, x, y)
                hook.record_loss(loss)
                micro_losses.append(loss.item())
                (loss / micro).backward()
            accumulated_norms.append(torch.linalg.vector_norm(model.out.weight.grad).item())
            step_losses.append(sum(micro_losses) / micro)
            optimizer.step()
            assert hook.step == len(step_losses)
    with open_trace(path) as trace:
        assert trace.index("grad/out.weight")[0].tolist() == [0, 1, 2]
        assert trace.index("lr")[0].tolist() == [0, 1, 2]
        np.testing.assert_allclose(
            trace.stat("grad/out.weight", "l2").values, accumulated_norms, rtol=1e-5
        )
        # Every micro-batch's activations are kept, all under their optimizer step.
        assert trace.index("act/relu")[0].tolist() == [0] * micro + [1] * micro + [2] * micro
        loss = trace.scalar("loss")
        assert loss.steps.tolist() == [0, 1, 2]
        np.testing.assert_allclose(loss.values, step_losses, rtol=1e-6)


def test_loss_recorded_after_the_optimizer_step_keeps_its_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    expected = []
    with attach(model, optimizer, path) as hook:
        for x, y in batches(3):
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            optimizer.step()
            hook.record_loss(loss)
            expected.append(loss.item())
    with open_trace(path) as trace:
        loss = trace.scalar("loss")
        assert loss.steps.tolist() == [0, 1, 2]
        np.testing.assert_allclose(loss.values, expected, rtol=1e-6)


def test_eval_passes_are_recorded_in_eval_mode_at_the_current_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    eval_losses: list[float] = []
    with attach(model, optimizer, path) as hook:
        train, valid = batches(2), batches(2, seed=9)
        for x, y in train:
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for x, y in valid:
                eval_loss = loss_fn(model, x, y)
                eval_losses.append(eval_loss.item())
                hook.record_loss(eval_loss, mode="eval")
        model.train()
        with torch.no_grad():  # training mode, but no gradients: an evaluation too
            loss_fn(model, *valid[0])
        x, y = train[0]
        optimizer.zero_grad()
        loss_fn(model, x, y).backward()
        optimizer.step()
    with open_trace(path) as trace:
        steps, modes = trace.index("act/relu")
        assert list(zip(steps.tolist(), modes.tolist(), strict=True)) == [
            (0, 0),
            (1, 0),
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 0),
        ]
        eval_loss_series = trace.scalar("loss", mode="eval")
        assert eval_loss_series.steps.tolist() == [2]
        np.testing.assert_allclose(eval_loss_series.values, [np.mean(eval_losses)], rtol=1e-6)
        assert trace.scalar("loss", mode="train").steps.tolist() == [0, 1]
        assert trace.index("grad/fc1.weight")[0].tolist() == [0, 1, 2]


def test_stats_every_records_tensors_of_every_nth_step_and_scalars_always(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    weights: dict[int, torch.Tensor] = {}
    with attach(model, optimizer, path, stats_every=3, raw_every=3) as hook:
        for step, (x, y) in enumerate(batches(7)):
            weights[step] = model.fc1.weight.detach().clone()
            if step == 4:
                with torch.no_grad():
                    loss_fn(model.eval(), x, y)  # an evaluation pass between recorded steps
                model.train()
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    with open_trace(path) as trace:
        for tag in ("fc1.weight", "grad/fc1.weight"):
            assert trace.index(tag)[0].tolist() == [0, 3, 6]
        steps, modes = trace.index("act/relu")
        assert list(zip(steps.tolist(), modes.tolist(), strict=True)) == [
            (0, 0),
            (3, 0),
            (4, 1),
            (6, 0),
        ]
        assert trace.scalar("loss").steps.tolist() == list(range(7))
        assert trace.scalar("lr").steps.tolist() == list(range(7))
        # The update is the change since the previous recorded step.
        update = trace.stat("fc1.weight", "update_l2").values
        expected = float(torch.linalg.vector_norm(weights[3] - weights[0]))
        np.testing.assert_allclose(update[1], expected, rtol=1e-5)
        assert trace.raw("fc1.weight", 3) is not None


def test_default_records_tensors_every_tenth_step_and_scalars_every_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach_with_defaults(model, optimizer, path) as hook:
        for x, y in batches(21):
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    assert DEFAULT_STATS_EVERY == 10
    with open_trace(path) as trace:
        for tag in ("fc1.weight", "grad/fc1.weight", "act/relu"):
            assert trace.index(tag)[0].tolist() == [0, 10, 20], tag
        assert trace.scalar("loss").steps.tolist() == list(range(21))
        assert trace.scalar("lr").steps.tolist() == list(range(21))
    # Full tensors are kept at recorded steps only: raw_every must fall on them.
    with pytest.raises(ValueError, match=r"raw_every \(15\) must be a multiple of stats_every"):
        attach_with_defaults(model, optimizer, tmp_path / "other.h5", raw_every=15)
    assert not (tmp_path / "other.h5").exists()


@pytest.mark.parametrize("every", [0, -2, 1.5, True])
def test_stats_every_must_be_a_positive_integer(tmp_path: Path, every: Any) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(ValueError, match="stats_every must be a positive integer"):
        attach(make_net(), None, path, stats_every=every)
    assert not path.exists()


class Checkpointed(nn.Module):
    """Runs its hidden block under activation checkpointing."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.block = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
        self.out = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.out(hidden)


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_records_each_activation_once_in_train_mode(
    tmp_path: Path, reentrant: bool, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path):
        for x, y in batches(3):
            optimizer.zero_grad()
            x.requires_grad_(reentrant)  # the reentrant variant needs an input that requires grad
            loss_fn(model, x, y).backward()
            optimizer.step()
    with open_trace(path) as trace:
        for tag in ("act/block.1", "act/block.3", "preact/block.3"):
            steps, modes = trace.index(tag)
            assert steps.tolist() == [0, 1, 2], tag
            assert modes.tolist() == [0, 0, 0], tag


class EmbedAndHead(nn.Module):
    """An embedding network and a classification head, which a training loop may call one
    after the other instead of calling the model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU())
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def test_training_through_submodules_after_an_evaluation_is_recorded_as_training(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """The model is called whole once, to evaluate it, and then trained through its
    submodules: those passes are training passes, not checkpointing recomputing the eval."""
    torch.manual_seed(0)
    model = EmbedAndHead()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path) as hook:
        model.eval()
        with torch.no_grad():
            hook.record_loss(loss_fn(model, *batches(1, seed=5)[0]))
        model.train()
        for x, y in batches(3):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model.head(model.embed(x)), y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    with open_trace(path) as trace:
        assert trace.scalar("loss", mode="train").steps.tolist() == [0, 1, 2]
        assert trace.scalar("loss", mode="eval").steps.tolist() == [0]
        steps, modes = trace.index("act/embed.1")
        assert list(zip(steps.tolist(), modes.tolist(), strict=True)) == [
            (0, 1),
            (0, 0),
            (1, 0),
            (2, 0),
        ]


class ReturnsLoss(nn.Module):
    """Returns a dict with the loss, as Hugging Face models do when given labels."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


def test_loss_in_the_model_output_is_captured(tmp_path: Path, no_dbg_warnings: None) -> None:
    torch.manual_seed(0)
    model = ReturnsLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    losses = []
    with attach(model, optimizer, path):
        for x, y in batches(3):
            optimizer.zero_grad()
            loss = model(x, y)["loss"]
            losses.append(loss.item())
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            eval_loss = model(*batches(1, seed=5)[0])["loss"].item()
    with open_trace(path) as trace:
        assert trace.scalar("loss", mode="train").steps.tolist() == [0, 1, 2]
        np.testing.assert_allclose(trace.scalar("loss", mode="train").values, losses, rtol=1e-6)
        np.testing.assert_allclose(trace.scalar("loss", mode="eval").values, [eval_loss], rtol=1e-6)
        assert "net.fc1.weight" in trace  # names of the wrapped modules keep their path


def test_labels_predictions_inputs_and_arbitrary_tensors(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path, raw_every=1) as hook:
        for x, y in batches(2):
            optimizer.zero_grad()
            logits = model(x)
            hook.record(labels=y, predictions=logits, inputs=x)
            hook.record_tensor(
                "custom/logit_margin",
                logits.max(1).values - logits.min(1).values,
                collection="custom",
            )
            hook.record_scalar("accuracy", (logits.argmax(1) == y).float().mean())
            nn.functional.cross_entropy(logits, y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            x, y = batches(1, seed=3)[0]
            hook.record(labels=y, predictions=model(x))
    with open_trace(path) as trace:
        for tag in ("labels", "predictions", "inputs"):
            assert trace.tag(tag).collection == tag
        assert trace.tag("custom/logit_margin").collection == "custom"
        steps, modes = trace.index("labels")
        assert list(zip(steps.tolist(), modes.tolist(), strict=True)) == [(0, 0), (1, 0), (2, 1)]
        assert trace.index("inputs")[0].tolist() == [0, 1]
        np.testing.assert_array_equal(trace.raw("labels", 2, mode="eval"), y.numpy())
        assert trace.scalar("accuracy").steps.tolist() == [0, 1]


def test_include_and_exclude_select_by_name_or_tag(tmp_path: Path, no_dbg_warnings: None) -> None:
    def tags(**selection: Any) -> set[str]:
        torch.manual_seed(0)
        model = make_net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        path = tmp_path / "run.h5"
        with attach(model, optimizer, path, overwrite=True, **selection):
            x, y = batches(1)[0]
            loss_fn(model, x, y).backward()
            optimizer.step()
        with open_trace(path) as trace:
            return {info.tag for info in trace.tags()}

    assert tags(include="fc1.*") == {"fc1.weight", "fc1.bias", "grad/fc1.weight", "grad/fc1.bias"}
    assert tags(include=["fc2.weight", "tanh"]) == {
        "fc2.weight",
        "grad/fc2.weight",
        "act/tanh",
        "preact/tanh",
    }
    excluded = tags(exclude=["act/*", "preact/*", "grad/*", "*.bias"])
    assert excluded == {"lr", "fc1.weight", "fc2.weight", "fc3.weight", "out.weight"}


@pytest.mark.parametrize("module_type", list(ACTIVATION_KINDS))
def test_every_activation_module_type_is_recorded_with_its_kind(
    tmp_path: Path, module_type: type[nn.Module]
) -> None:
    model = nn.Sequential(OrderedDict(fc=nn.Linear(4, 5), act=module_type()))
    path = tmp_path / "run.h5"
    with attach(model, None, path):
        model(torch.randn(2, 4))
    kind = ACTIVATION_KINDS[module_type]
    with open_trace(path) as trace:
        assert trace.tag("act/act").kind == kind
        assert ("preact/act" in trace) == (kind in ("tanh", "sigmoid"))


def test_more_activation_types_can_be_named(tmp_path: Path) -> None:
    class Swish(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)

    model = nn.Sequential(OrderedDict(fc=nn.Linear(4, 5), act=Swish()))
    path = tmp_path / "run.h5"
    with attach(model, None, path, activation_kinds={Swish: "silu"}):
        model(torch.randn(2, 4))
    with open_trace(path) as trace:
        assert trace.tag("act/act").kind == "silu"


def hook_count(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return (
        modules
        + len(optimizer._optimizer_step_pre_hooks)
        + len(optimizer._optimizer_step_post_hooks)
    )


def test_remove_restores_the_model_and_optimizer(tmp_path: Path, no_dbg_warnings: None) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = attach(model, optimizer, tmp_path / "run.h5")
    assert hook_count(model, optimizer) > 0
    x, y = batches(1)[0]
    loss_fn(model, x, y).backward()
    optimizer.step()
    hook.remove()
    hook.remove()  # idempotent
    assert hook_count(model, optimizer) == 0
    assert hook.writer.closed
    loss_fn(model, x, y).backward()  # training goes on, nothing is recorded
    optimizer.step()
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.index("fc1.weight")[0].tolist() == [0]


def activation_hooks(model: nn.Module) -> list[int]:
    """Forward hooks on each activation module of make_net."""
    return [len(model.get_submodule(name)._forward_hooks) for name in ("relu", "tanh", "sigmoid")]


def test_activation_hooks_are_registered_only_for_passes_that_record_tensors(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    during = []
    with attach(model, optimizer, tmp_path / "run.h5", stats_every=3):
        for x, y in batches(5):
            optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            during.append(activation_hooks(model))
            optimizer.step()
        model.eval()
        with torch.no_grad():
            model(x)
        during.append(activation_hooks(model))
    assert during == [[1, 1, 1], [0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]]
    assert activation_hooks(model) == [0, 0, 0]
    with open_trace(tmp_path / "run.h5") as trace:
        steps, modes = trace.index("act/relu")
        assert steps.tolist() == [0, 3, 5]
        assert modes.tolist() == [schema.MODE_CODES["train"]] * 2 + [schema.MODE_CODES["eval"]]


def test_an_activation_is_its_modules_own_output_whatever_hooks_follow(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, optimizer, tmp_path / "run.h5", stats_every=2):
        # Registered after attach: dbg's hook, re-registered at steps 2 and 4, still runs first.
        model.relu.register_forward_hook(lambda module, args, output: output + 100.0)
        for x, y in batches(5):
            optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            optimizer.step()
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.index("act/relu")[0].tolist() == [0, 2, 4]
        assert (trace.stats("act/relu")[:, COL["max"]] < 100.0).all()


# Dynamo says, once, that it cannot trace into the compiled kernel: the hook runs eagerly there.
@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace:UserWarning")
@pytest.mark.parametrize(
    "how",
    [
        "compiled, then attached",
        "attached, then compiled",
        "in place",
        "its forward",
        "its class's forward",
    ],
)
def test_a_compiled_model_compiles_once_and_records_its_parameters(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook's module hooks read its step and state: traced by dynamo, they made it
    recompile the model at every step until its limit of 8, after which the model ran
    uncompiled. Now the model compiles into one graph once, however it is compiled; its
    compiled passes record no activations (the activation hooks are nothing there, noted in
    the metadata), and its weights and gradients are recorded under the uncompiled names."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(stats_module, "_COUNTS", {})
    torch._dynamo.reset()
    counters.clear()
    model = make_net()
    if how == "its class's forward":

        class CompiledForward(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc1, self.relu = nn.Linear(FEATURES, 16), nn.ReLU()
                self.out = nn.Linear(16, CLASSES)

            @torch.compile(backend="eager")  # type: ignore[misc]
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.out(self.relu(self.fc1(x)))

        model = CompiledForward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    if how == "compiled, then attached":
        run = torch.compile(model, backend="eager")
        hook = attach(run, optimizer, path, stats_every=2)
    else:
        hook = attach(model, optimizer, path, stats_every=2)
        run = model
        if how == "in place":
            model.compile(backend="eager")
        elif how == "its forward":  # as Lightning compiles a LightningModule
            model.forward = torch.compile(model.forward, backend="eager")  # type: ignore[method-assign]
        elif how == "attached, then compiled":
            run = torch.compile(model, backend="eager")
    with hook:
        for x, y in batches(20):
            optimizer.zero_grad()
            loss_fn(run, x, y).backward()
            optimizer.step()
    assert counters["stats"]["unique_graphs"] == 1
    with open_trace(path) as trace:
        assert trace.metadata["compiled"] is True
        assert not trace.tags("act/*")
        # Named as the uncompiled model names them, so that traces compare across runs.
        tags = [info.tag for info in trace.tags(scalar=False)]
        assert "fc1.weight" in tags and "grad/fc1.weight" in tags
        assert trace.index("grad/fc1.weight")[0].tolist() == list(range(0, 20, 2))
        assert not [tag for tag in tags if "_orig_mod" in tag]
    from tests.rules.helpers import analyze_path

    (dying,) = analyze_path(path, select=("DBG201",)).results
    assert dying.reason.endswith(
        "; the model ran compiled (torch.compile), whose passes record no activations"
    )


@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace:UserWarning")
def test_a_compiled_data_parallel_model_records_the_model_names(tmp_path: Path) -> None:
    """``torch.compile(DataParallel(model))``, the order PyTorch documents for DDP: the tags
    lose both wrappers' prefixes, ``_orig_mod.`` and ``module.``."""
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = torch.compile(nn.DataParallel(model), backend="eager")
    with attach(run, optimizer, tmp_path / "run.h5", stats_every=1):
        for x, y in batches(2):
            optimizer.zero_grad()
            loss_fn(run, x, y).backward()
            optimizer.step()
    with open_trace(tmp_path / "run.h5") as trace:
        tags = {info.tag for info in trace.tags(scalar=False)}
    assert {"fc1.weight", "grad/fc1.weight"} <= tags
    assert not [tag for tag in tags if "module." in tag or "_orig_mod" in tag]


@pytest.mark.parametrize("through", ["the wrapper", "a replica"])
def test_under_data_parallel_the_activation_hooks_stay(
    tmp_path: Path, through: str, no_dbg_warnings: None
) -> None:
    # On GPUs DataParallel runs replicas of the model, which share its hook dictionaries, in
    # threads of their own: attached through the wrapper, or once a replica is seen (in any
    # thread), the hooks stay registered.
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if through == "the wrapper":
        attached = run = nn.DataParallel(model)
    else:
        attached, run = model, model._replicate_for_data_parallel()
    with attach(attached, optimizer, tmp_path / "run.h5", stats_every=3):
        for x, y in batches(3):
            optimizer.zero_grad()
            loss_fn(run, x, y).backward()
            assert activation_hooks(model) == [1, 1, 1]
            optimizer.step()
    assert activation_hooks(model) == [0, 0, 0]


def test_a_writer_passed_in_stays_open_and_keeps_its_settings(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with TraceWriter(tmp_path / "run.h5", raw_every=1, framework="custom") as writer:
        with pytest.raises(ValueError, match="raw_every"):
            attach(model, optimizer, writer, raw_every=5)
        with attach(model, optimizer, writer):
            x, y = batches(1)[0]
            loss_fn(model, x, y).backward()
            optimizer.step()
        assert not writer.closed
        writer.add_scalar("after", 1.0, 1)
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.metadata["framework"] == "custom"
        assert trace.tag("fc1.weight").raw_records == 1
        assert "after" in trace


def test_an_existing_trace_is_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    model = make_net()
    with pytest.raises(TraceWriterError):
        attach(model, None, path)
    with pytest.raises(TraceWriterError):
        refuse_existing(path, overwrite=False)
    refuse_existing(path, overwrite=True)
    with pytest.raises(TypeError, match="register_step_pre_hook"):
        attach(model, object(), tmp_path / "other.h5")  # type: ignore[arg-type]


def test_failures_become_one_log_message_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, optimizer, tmp_path / "run.h5") as hook, warnings.catch_warnings():
        # Never raised into the loop, even where warnings are errors.
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING, logger="dbgcli"):
            for x, y in batches(3):
                optimizer.zero_grad()
                hook.record_loss("not a number")
                loss_fn(model, x, y).backward()
                optimizer.step()
        messages = [r.getMessage() for r in caplog.records if r.name == "dbgcli"]
        assert len(messages) == 1 and "recording the loss failed" in messages[0]
        assert hook.step == 3


def test_a_loss_of_several_values_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Per-sample losses are not averaged silently into one figure, nor half recorded."""
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, optimizer, tmp_path / "run.h5") as hook:
        with caplog.at_level(logging.WARNING, logger="dbgcli"):
            for x, y in batches(2):
                hook.record_loss(torch.ones(2))
                loss_fn(model, x, y).backward()
                optimizer.step()
        messages = [r.getMessage() for r in caplog.records if r.name == "dbgcli"]
        assert len(messages) == 1, messages
        assert "a loss has one value, got a tensor of shape (2,)" in messages[0]
    with open_trace(tmp_path / "run.h5") as trace:
        assert "loss" not in trace and trace.index("grad/fc1.weight")[0].tolist() == [0, 1]


@pytest.mark.parametrize("variant", ["scaler-step", "explicit-unscale", "fused"])
def test_gradients_are_unscaled_under_grad_scaler(
    tmp_path: Path, variant: str, no_dbg_warnings: None
) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=variant == "fused")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    unscaled_norms = []
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path):
        for x, y in batches(3):
            optimizer.zero_grad()
            scaler.scale(loss_fn(model, x, y)).backward()
            unscaled_norms.append(
                torch.linalg.vector_norm(model.fc1.weight.grad).item() / scaler.get_scale()
            )
            if variant == "explicit-unscale":
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
            scaler.step(optimizer)
            scaler.update()
    with open_trace(path) as trace:
        np.testing.assert_allclose(
            trace.stat("grad/fc1.weight", "l2").values, unscaled_norms, rtol=1e-6
        )


def test_an_update_the_scaler_skips_is_not_a_step(tmp_path: Path, no_dbg_warnings: None) -> None:
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    path = tmp_path / "run.h5"
    with attach(model, optimizer, path) as hook:
        for index, (x, y) in enumerate(batches(3)):
            optimizer.zero_grad()
            loss = loss_fn(model, x, y) * (float("inf") if index == 1 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        assert hook.step == 2
    with open_trace(path) as trace:
        assert trace.index("grad/fc1.weight")[0].tolist() == [0, 1]


def test_ranks_write_their_own_file(tmp_path: Path) -> None:
    assert rank_path(tmp_path / "run.h5", 3) == tmp_path / "run.rank3.h5"
    assert rank_path("traces/run", 0) == Path("traces/run.rank0")


def _ddp_worker(rank: int, world_size: int, port: int, path: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(make_net())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with attach(model, optimizer, path) as hook:
            for x, y in batches(3, seed=rank):
                optimizer.zero_grad()
                loss = loss_fn(model, x, y)
                hook.record_loss(loss)
                loss.backward()
                optimizer.step()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_distributed_data_parallel_writes_one_trace_per_rank(tmp_path: Path) -> None:
    # DDP's constructor imports torch._dynamo; importing it here once keeps each forked
    # worker from spending seconds on it.
    import torch._dynamo  # noqa: F401

    path = tmp_path / "run.h5"
    context = mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 60 s")
    norms = []
    for rank in range(2):
        with open_trace(rank_path(path, rank)) as trace:
            assert trace.metadata["rank"] == rank and trace.metadata["world_size"] == 2
            assert trace.index("grad/fc1.weight")[0].tolist() == [0, 1, 2]
            assert "act/relu" in trace
            norms.append(trace.stat("grad/fc1.weight", "l2").values)
    assert not path.exists()
    # DDP averages gradients: both ranks record the same ones, from different batches.
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-6)


@pytest.mark.parametrize(
    "module", ["dbgcli", "dbgcli.trace.writer", "dbgcli.trace.reader", "dbgcli.xgboost"]
)
def test_importing_dbgcli_does_not_import_training_frameworks(module: str) -> None:
    frameworks = ["torch", "transformers", "lightning"] + (
        [] if module == "dbgcli.xgboost" else ["xgboost"]
    )
    code = f"import sys, {module}; print([m for m in {frameworks!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_hook_statistics_equal_the_writers_from_the_full_tensors(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """Torch computes the statistics and unit measures where the tensors live; with every
    full tensor kept, the writer's own kernel gives the same numbers from them."""
    torch.manual_seed(0)
    model = make_net()
    with torch.no_grad():
        model.fc2.weight *= 40  # drive tanh and sigmoid across their bands' edges
        model.fc3.weight *= 60
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "t.h5"
    with attach(model, optimizer, path, raw_every=1):
        for x, y in batches(4):
            optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            optimizer.step()
    with open_trace(path) as trace:
        tags = [info.tag for info in trace.tags(scalar=False)]
        assert {"fc1.weight", "fc1.bias", "grad/fc1.weight", "act/relu", "preact/tanh"} <= set(tags)
        for tag in tags:
            info = trace.tag(tag)
            raw = np.concatenate([chunk.values for chunk in trace.iter_raw(tag)])
            expected = StatsKernel().compute(raw)
            recorded = trace.stats(tag)
            computed = ~np.isnan(recorded).all(axis=0)
            # Activations get every column but update_l2; weights and gradients lack the signs.
            assert computed.sum() >= (11 if tag.startswith(("act/", "preact/")) else 8), tag
            computed[COL["update_l2"]] = False  # differences of records, checked elsewhere
            np.testing.assert_allclose(
                recorded[:, computed], expected[:, computed], rtol=1e-5, atol=1e-7, err_msg=tag
            )
            if info.kind is not None and tag.startswith(("act/", "preact/")):
                measure = schema.unit_measure(info.kind)
                assert measure is not None
                units = unit_measure(raw, measure, info.band, 1)
                np.testing.assert_allclose(trace.units(tag).values, units, err_msg=tag)
                assert 0 < units.mean() < 1, tag  # both sides of the measure occur


def stacked_net(dtype: torch.dtype) -> nn.Sequential:
    """Three ReLU and two Tanh layers of one width: their activations are reduced as blocks."""
    layers: list[nn.Module] = [nn.Linear(FEATURES, 16)]
    for kind in (nn.ReLU, nn.Tanh, nn.ReLU, nn.Tanh, nn.ReLU):
        layers += [kind(), nn.Linear(16, 16)]
    layers.append(nn.Linear(16, CLASSES))
    return nn.Sequential(*layers).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("held_bytes", [None, 1])
def test_activations_reduced_together_equal_the_writers_kernel(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_dbg_warnings: None,
    dtype: torch.dtype,
    held_bytes: int | None,
    reduction_path: str,
) -> None:
    """Same-shaped activations of a pass are stacked and reduced at once when the forward
    pass ends (or one by one past the held-bytes cap; float32 ones by the compiled kernel);
    each record still equals the writer's kernel on its full tensor, unit measures included,
    in training and evaluation passes."""
    if held_bytes is not None:
        monkeypatch.setattr(hook_module, "HELD_ACTIVATION_BYTES", held_bytes)
    torch.manual_seed(0)
    model = stacked_net(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "t.h5"
    with attach(model, optimizer, path, raw_every=1) as hook:
        for x, y in batches(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x.to(dtype)), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            model(batches(1, seed=2)[0][0].to(dtype))
        assert not hook._held
    with open_trace(path) as trace:
        tags = [t for t in (i.tag for i in trace.tags(scalar=False)) if "act/" in t]
        assert len(tags) == 7  # five activations, two pre-activations
        for tag in tags:
            info = trace.tag(tag)
            assert trace.index(tag)[1].tolist() == [0, 0, 0, 1]  # three train, one eval
            raw = np.concatenate([chunk.values for chunk in trace.iter_raw(tag)])
            expected = StatsKernel().compute(raw)
            recorded = trace.stats(tag)
            computed = ~np.isnan(recorded).all(axis=0)
            assert computed.sum() == 11, tag  # every column but update_l2
            np.testing.assert_allclose(
                recorded[:, computed], expected[:, computed], rtol=1e-5, atol=1e-7, err_msg=tag
            )
            measure = schema.unit_measure(info.kind)
            assert measure is not None
            units = unit_measure(raw, measure, info.band, 1)
            np.testing.assert_allclose(trace.units(tag).values, units, err_msg=tag)


def test_stacking_memory_follows_the_shapes_of_the_latest_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of changing size (sequences padded per batch, a last short batch) do not pile
    up stacking memory: a pass keeps only the buffers of its own shapes. (The compiled kernel
    stacks nothing: this is torch's path.)"""
    monkeypatch.setattr(stats_module, "_fused", None)
    torch.manual_seed(0)
    model = stacked_net(torch.float32)
    with attach(model, None, tmp_path / "t.h5") as hook, torch.no_grad():
        for size in range(2, 12):
            model(torch.randn(size, FEATURES))
            # Three blocks a pass: three ReLU outputs, two Tanh outputs, two Tanh inputs.
            assert len(hook._activation_memory) == 3


def test_an_activation_changed_in_place_after_its_module_is_left_out_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Statistics of activations are computed when the forward pass ends; a module's output
    that a later operation changes in place would give wrong numbers, so that record is left
    out and the log says so; the others are recorded."""

    class Overwrites(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(FEATURES, 16)
            self.act = nn.Tanh()
            self.other = nn.ReLU()
            self.out = nn.Linear(16, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.act(self.fc(x))
            hidden.mul_(2.0)  # legal without autograd, which would need the output unchanged
            return self.out(self.other(hidden))

    model = Overwrites()
    path = tmp_path / "t.h5"
    with caplog.at_level(logging.WARNING, logger="dbgcli"):
        with attach(model, None, path) as hook:
            with torch.no_grad():
                model(batches(1)[0][0])
            hook.flush()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("dbgcli")]
    assert any("act/act" in m and "changed in place" in m for m in messages), messages
    with open_trace(path) as trace:
        assert "act/act" not in trace
        assert "act/other" in trace and "preact/act" in trace


class CountedReads:
    """Counts the hook's transfers (``dbgcli.torch._stats.to_host``) and every torch call
    that reads a tensor's values into Python or host memory."""

    READS = ("cpu", "item", "tolist", "numpy", "__float__", "__bool__", "__int__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.transfers = 0
        self.reads = 0
        original = stats_module.to_host

        def counted_transfer(parts: Any) -> Any:
            self.transfers += 1
            return original(parts)

        monkeypatch.setattr(stats_module, "to_host", counted_transfer)
        for name in self.READS:
            read = getattr(torch.Tensor, name)

            def counted_read(tensor: torch.Tensor, *args: Any, _read: Any = read, **kw: Any) -> Any:
                self.reads += 1
                return _read(tensor, *args, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted_read)

    def take(self) -> tuple[int, int]:
        counts = (self.transfers, self.reads)
        self.transfers = self.reads = 0
        return counts


def test_one_transfer_per_recorded_step_and_none_otherwise(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_dbg_warnings: None,
    reduction_path: str,
) -> None:
    """Weights, gradients, activations, unit measures and the losses of the steps since the
    last one reach the host in one transfer per recorded step; other steps read nothing. On
    the compiled path every statistic is complete in host memory already, so nothing is
    transferred: the host losses are read when they are written."""
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(9)
    path = tmp_path / "run.h5"
    hook = attach(model, optimizer, path, stats_every=3, raw_every=0)
    counted = CountedReads(monkeypatch)
    per_step = []
    for x, y in data:
        optimizer.zero_grad()
        loss = loss_fn(model, x, y)
        hook.record_loss(loss)
        loss.backward()
        optimizer.step()
        per_step.append(counted.take())
    hook.remove()
    # The torch path makes one transfer per recorded step (on the CPU one .cpu(), and the
    # hand-over one .numpy() of its result); the compiled path none. Each host loss is read
    # once when it is written: at the first record its own, then those of three steps, and
    # with them the zero_grad check of the step after the record before (a tensor in host
    # memory; on a device it would join the transfer; the first two records arm one).
    transfers, transfer_reads = (0, 0) if reduction_path == "compiled" else (1, 2)
    first, later = (transfers, transfer_reads + 1), (transfers, transfer_reads + 3 + 1)
    assert per_step == [first, (0, 0), (0, 0), later, (0, 0), (0, 0), later, (0, 0), (0, 0)]
    assert counted.take() == (0, 2)  # at close: the losses of the two steps after the last
    monkeypatch.undo()
    with open_trace(path) as trace:
        assert trace.scalar("loss").steps.tolist() == list(range(9))
        assert trace.index("act/tanh")[0].tolist() == [0, 3, 6]
        assert trace.units("act/tanh") is not None


class NeverReady(stats_module.Transfer):
    """A transfer that reports itself still under way, as a GPU copy may: the hook hands its
    records over only when it must (the next recorded step, a flush, the close)."""

    def ready(self) -> bool:
        return False


def record_run(
    path: Path, stats_every: int, poison: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Train 10 steps; returns the parameters, and fc2's weight when it was poisoned."""
    torch.manual_seed(0)
    poisoned = None
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, optimizer, path, stats_every=stats_every, raw_every=4) as hook:
        for step, (x, y) in enumerate(batches(10)):
            if poison and step == 4:
                with torch.no_grad():
                    model.fc2.weight[0, 0] = math.nan  # NaN from here on, everywhere after fc2
                poisoned = model.fc2.weight.detach().clone()
            optimizer.zero_grad()
            loss = loss_fn(model, x, y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    return [p.detach().clone() for p in model.parameters()], poisoned


class FakeClock:
    """Stands in for the hook's ``time`` module: both of its clocks read ``now``."""

    now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def test_scalars_reach_the_writer_within_its_commit_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_dbg_warnings: None
) -> None:
    """Losses and learning rates of steps that record no tensors wait for the next transfer,
    but no longer than the writer's commit interval, so a watcher never sees them late."""

    clock = FakeClock()
    monkeypatch.setattr(hook_module, "time", clock)
    seen: list[tuple[str, int]] = []

    class Seen(TraceWriter):
        def add_scalar(self, tag: str, value: Any, step: int, **options: Any) -> None:
            seen.append((tag, step))
            super().add_scalar(tag, value, step, **options)

    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = Seen(tmp_path / "t.h5", flush_secs=10.0)
    with attach_with_defaults(model, optimizer, writer, stats_every=1000) as hook:
        for step, (x, y) in enumerate(batches(4)):
            clock.now = 4.0 * step  # steps 0-2 within 10 s of the first transfer, 3 after
            train_step(model, optimizer, hook, x, y)
            if step == 2:
                assert ("lr", 0) in seen and ("lr", 1) not in seen and ("loss", 1) not in seen
        assert {("lr", 3), ("loss", 1), ("loss", 2), ("loss", 3)} <= set(seen)
    writer.close()


def test_the_timeline_keeps_when_each_step_ran_not_when_it_was_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_dbg_warnings: None
) -> None:
    """Steps between two records of tensors reach the writer together, at the next record;
    the timeline still gets the time each training step and evaluation pass started, so the
    gaps between its rows are the run's own (the stalled-training rule reads them)."""

    clock = FakeClock()
    monkeypatch.setattr(hook_module, "time", clock)
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach_with_defaults(model, optimizer, path, stats_every=10) as hook:
        for step, (x, y) in enumerate(batches(25)):
            clock.now = 1000.0 + 2.0 * step
            train_step(model, optimizer, hook, x, y)
            if step == 5:
                clock.now += 1.0
                model.eval()
                with torch.no_grad():
                    model(x)
                model.train()
    with open_trace(path) as trace:
        timeline = trace.timeline()
        modes = [schema.MODES[code] for code in timeline.modes.tolist()]
        rows = list(zip(timeline.steps.tolist(), modes, timeline.values.tolist(), strict=True))
    train = [(step, when) for step, mode, when in rows if mode == "train"]
    assert train == [(step, 1000.0 + 2.0 * step) for step in range(25)]
    assert [(step, when) for step, mode, when in rows if mode == "eval"] == [(6, 1011.0)]


@pytest.mark.parametrize("transfer", ["lands", "under way"])
def test_records_the_caller_writes_do_not_overtake_the_steps_still_queued(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Any,
    no_dbg_warnings: None,
    transfer: str,
) -> None:
    """A loop that calls ``hook.record`` at every 10th step (labels, predictions, inputs after
    the forward pass) and ``record_scalar`` in its evaluation passes: those are written at
    once, while the losses and learning rates of the steps since the last recorded one are
    still queued (or on their way from a device). They must not overtake them: the timeline
    holds every training step once, in order, and ``dbg analyze`` counts them all."""
    if transfer == "under way":
        monkeypatch.setattr(hook_module, "Transfer", NeverReady)
    torch.manual_seed(0)
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    steps = 45
    with attach_with_defaults(model, optimizer, path) as hook:  # tensors every 10th step
        for step, (x, y) in enumerate(batches(steps)):
            optimizer.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            hook.record_loss(loss)
            if hook.step % 10 == 0:
                hook.record(labels=y, predictions=logits, inputs=x)
            loss.backward()
            optimizer.step()
            if (step + 1) % 20 == 0:
                model.eval()
                with torch.no_grad():
                    logits = model(x)
                    hook.record_loss(nn.functional.cross_entropy(logits, y), mode="eval")
                    hook.record_scalar("accuracy", (logits.argmax(1) == y).float().mean())
                    hook.record_scalar("batch", len(y))  # a number: queued behind the rest
                model.train()
    with open_trace(path) as trace:
        timeline = trace.timeline()
        rows = [
            (step, schema.MODES[code])
            for step, code in zip(timeline.steps.tolist(), timeline.modes.tolist(), strict=True)
        ]
        assert trace.scalar("loss").select(mode="train").steps.tolist() == list(range(steps))
        assert trace.index("labels")[0].tolist() == [0, 10, 20, 30, 40]
        assert trace.scalar("accuracy").steps.tolist() == [20, 40]
        assert trace.scalar("accuracy").mode_names() == ["eval"]
    assert [step for step, mode in rows if mode == "train"] == list(range(steps))
    assert [step for step, mode in rows if mode == "eval"] == [20, 40]
    # Each evaluation pass sits between the training steps it came between.
    assert rows.index((20, "eval")) == rows.index((19, "train")) + 1
    assert rows.index((40, "eval")) == rows.index((39, "train")) + 1
    report = cli("analyze", path)
    assert f"train 0..{steps - 1} ({steps} steps), eval 20..40 (2 steps)" in report.stdout


@pytest.mark.parametrize("poison", [False, True])
def test_records_handed_over_late_are_the_same_and_none_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poison: bool
) -> None:
    """Deferring the hand-over to the writer changes no number and loses no record, NaN
    records (whose exact statistics are read again from the values they had) included."""
    now, poisoned = record_run(tmp_path / "now.h5", 2, poison)
    monkeypatch.setattr(hook_module, "Transfer", NeverReady)
    late, _ = record_run(tmp_path / "late.h5", 2, poison)
    for a, b in zip(now, late, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    with open_trace(tmp_path / "now.h5") as first, open_trace(tmp_path / "late.h5") as second:
        tags = [info.tag for info in first.tags()]
        assert tags == [info.tag for info in second.tags()]
        for tag in tags:
            if first.tag(tag).scalar:
                np.testing.assert_array_equal(first.scalar(tag).values, second.scalar(tag).values)
                continue
            assert first.index(tag)[0].tolist() == second.index(tag)[0].tolist()
            np.testing.assert_array_equal(first.stats(tag), second.stats(tag), err_msg=tag)
            assert first.tag(tag).raw_records == second.tag(tag).raw_records
            # A full tensor holds the values its statistics were computed from (weights and
            # gradients written without a copy, or copied before the update when deferred).
            for trace in (first, second):
                for chunk in trace.iter_raw(tag):
                    recorded = trace.stats(tag)[chunk.records]
                    np.testing.assert_allclose(
                        StatsKernel().compute(chunk.values)[:, [COL["min"], COL["max"]]],
                        recorded[:, [COL["min"], COL["max"]]],
                        err_msg=tag,
                    )
        assert first.index("fc1.weight")[0].tolist() == [0, 2, 4, 6, 8]
        assert first.scalar("loss").steps.tolist() == list(range(10))
        if poison:
            nans = first.stat("fc2.weight", "nan_count").values
            assert nans.tolist() == [0, 0, 1, 12 * 16, 12 * 16]  # one NaN, then the whole row
            highest = first.stat("fc2.weight", "max").values
            assert poisoned is not None
            assert highest[2] == float(poisoned.nan_to_num(nan=-1.0).max())  # finite ones only
            assert np.isnan(highest[3:]).all()  # none is left
            assert (first.stat("act/tanh", "nan_count").values[2:] > 0).all()
            assert (first.stat("grad/fc2.weight", "nan_count").values[2:] > 0).all()


NO_KERNEL = """
class NoKernel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "dbgcli.torch._fused":
            raise ImportError("built without a C compiler")
sys.meta_path.insert(0, NoKernel())
"""
# A build left from an older checkout: its calling convention is not this code's.
OLD_KERNEL = """
sys.modules["dbgcli.torch._fused"] = types.SimpleNamespace(reduce=None, count_units=None)
"""


@pytest.mark.parametrize("kernel", [NO_KERNEL, OLD_KERNEL], ids=["none", "an old build"])
def test_without_the_compiled_kernel_dbgcli_imports_and_computes(kernel: str) -> None:
    """An install without a C compiler has no ``dbgcli.torch._fused``, and one built from
    older sources is not used: the statistics come from torch's operations (run in a fresh
    interpreter that cannot import the kernel, or finds an old one)."""
    code = f"""
import importlib.abc, sys, types
{kernel}
import torch
from dbgcli.torch import _stats
assert _stats._fused is None
print(_stats.statistics([torch.arange(4.0)], l1=True)[0])
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "'mean': 1.5" in done.stdout and "'l1': 6.0" in done.stdout, done.stdout


def test_a_sparse_gradient_is_recorded_as_its_dense_values(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """nn.Embedding(sparse=True) gives sparse gradients: they are recorded (zeros of the rows
    not looked up included) beside the dense ones, not dropped with them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Flatten(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "sparse.h5"
    with attach(model, optimizer, path, stats_every=1) as hook:
        optimizer.zero_grad()
        loss = model(torch.randint(0, 50, (5, 4))).sum()
        hook.record_loss(loss)
        loss.backward()
        dense = model[0].weight.grad.to_dense().numpy().copy()
        optimizer.step()
    with open_trace(path) as trace:
        assert "grad/2.weight" in trace
        recorded = trace.stats("grad/0.weight")[0]
    expected = StatsKernel().compute(dense[None])[0]
    for name in ("count", "min", "max", "mean", "std", "l1", "l2"):
        assert recorded[COL[name]] == pytest.approx(expected[COL[name]], rel=1e-5), name


def test_a_failure_mid_step_still_writes_the_full_tensors_of_before_the_update(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Full tensors of weights are written from the live tensors when possible; if recording
    the gradients fails, the weights' records already queued still leave with the values
    their statistics were computed from, not those the optimizer writes next."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    path = tmp_path / "failure.h5"
    before = model[0].weight.detach().clone()
    with attach(model, optimizer, path, stats_every=1, raw_every=1) as hook:

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a simulated failure while reducing the gradients")

        hook._gradients.reduce = fail  # type: ignore[method-assign]
        x = torch.randn(8, 4)
        for _ in range(2):
            optimizer.zero_grad()
            loss = model(x).pow(2).sum()
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    assert any("simulated failure" in r.getMessage() for r in caplog.records)
    with open_trace(path) as trace:
        assert trace.index("0.weight")[0].tolist() == [0, 1]
        np.testing.assert_array_equal(trace.raw("0.weight", 0), before.numpy())
        assert trace.stats("0.weight")[0, COL["min"]] == pytest.approx(float(before.min()))


def test_tensors_that_do_not_hold_their_values_take_torchs_path() -> None:
    """A lazily negated view (and any tensor subclass) keeps its values elsewhere than at
    data_ptr(): the compiled kernel must not read it there."""
    x = torch.tensor([1.0, -2.0, 3.0])
    negated = torch._neg_view(x)
    assert negated.is_neg() and not stats_module._fusable(negated)
    assert not stats_module._fusable(torch.nn.Parameter(x).as_subclass(ASubclass))
    (got,) = stats_module.statistics([negated], l1=True)
    assert (got["min"], got["max"], got["mean"], got["l1"]) == (
        -3.0,
        2.0,
        pytest.approx(-2 / 3),
        6.0,
    )


class ASubclass(torch.Tensor):
    """A tensor subclass: it may dispatch its operations anywhere (a DTensor does)."""


def test_a_distributed_tensor_is_recorded_or_reported_never_a_crash(tmp_path: Path) -> None:
    """A DTensor (FSDP2, tensor parallelism) has no memory of its own at data_ptr(): the
    hook must not hand it to the compiled kernel (which would read address 0)."""
    code = f"""
import os, torch, torch.distributed as dist
from torch import nn
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{_free_port()}")
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_module
from dbgcli.torch import attach
model = distribute_module(nn.Linear(4, 3), init_device_mesh("cpu", (1,)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with attach(model, optimizer, {str(tmp_path / "dtensor.h5")!r}, stats_every=1):
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
print("training went on")
dist.destroy_process_group()
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "training went on" in done.stdout


def full_tensor_steps(path: Path) -> dict[str, list[int]]:
    with open_trace(path) as trace:
        return {
            info.tag: [int(step) for chunk in trace.iter_raw(info.tag) for step in chunk.steps]
            for info in trace.tags()
            if info.raw_records
        }


def full_tensor_bytes(path: Path, at_step: int) -> int:
    with open_trace(path) as trace:
        return sum(
            values.nbytes
            for info in trace.tags()
            for chunk in trace.iter_raw(info.tag)
            for values, step in zip(chunk.values, chunk.steps)
            if step == at_step
        )


def test_raw_budget_spaces_every_full_tensor_of_the_hook_alike(tmp_path: Path) -> None:
    """Weights, gradients and activations of a step are kept together or not at all. With a
    budget of a quarter of what a kept step takes, every fourth step of those raw_every picks
    is kept; without one, each of them."""

    def train(path: Path, raw_budget: int) -> None:
        torch.manual_seed(0)
        model = make_net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with attach(model, optimizer, path, raw_every=2, raw_budget=raw_budget):
            for x, y in batches(10):
                optimizer.zero_grad()
                loss_fn(model, x, y).backward()
                optimizer.step()

    train(tmp_path / "unlimited.h5", 0)
    unlimited = full_tensor_steps(tmp_path / "unlimited.h5")
    assert {"fc1.weight", "grad/fc1.weight", "act/relu", "preact/tanh"} <= set(unlimited)
    assert set(map(tuple, unlimited.values())) == {(0, 2, 4, 6, 8)}
    train(tmp_path / "budget.h5", -(-full_tensor_bytes(tmp_path / "unlimited.h5", 0) // 4))
    budget = full_tensor_steps(tmp_path / "budget.h5")
    assert set(budget) == set(unlimited)
    assert set(map(tuple, budget.values())) == {(0, 4, 8)}


def test_raw_budget_defaults_to_a_mebibyte_a_step_and_belongs_to_a_new_trace(
    tmp_path: Path,
) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, optimizer, tmp_path / "run.h5") as hook:
        assert hook.writer.raw_budget == 1 << 20
    with TraceWriter(tmp_path / "own.h5") as writer:
        with pytest.raises(ValueError, match="raw_budget applies to a new trace"):
            attach(model, optimizer, writer, raw_budget=0)
        with pytest.raises(ValueError, match="raw_budget applies to a new trace"):
            hook_module.CallbackRecording(writer, raw_budget=0)
    with pytest.raises(ValueError, match="raw_budget must be >= 0"):
        hook_module.CallbackRecording(tmp_path / "later.h5", raw_budget=-1)
    assert not (tmp_path / "later.h5").exists()


def test_raw_budget_keeps_every_micro_batch_and_evaluation_pass_of_a_kept_step(
    tmp_path: Path,
) -> None:
    """Gradient accumulation (two micro-batches a step) and an evaluation pass after every
    step, which opens the next step before its training pass: a step the budget keeps keeps
    every record of it, and every tag keeps the same steps."""

    def train(path: Path, raw_budget: int) -> None:
        torch.manual_seed(0)
        model = make_net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = batches(24)
        with attach(model, optimizer, path, raw_every=2, raw_budget=raw_budget):
            for step in range(12):
                optimizer.zero_grad()
                for x, y in data[2 * step : 2 * step + 2]:
                    (loss_fn(model, x, y) / 2).backward()
                optimizer.step()
                if step < 11:  # the evaluation pass of the next step
                    model.eval()
                    with torch.no_grad():
                        model(data[0][0])
                    model.train()

    train(tmp_path / "unlimited.h5", 0)
    every_even_step = list(range(0, 12, 2))
    unlimited = full_tensor_steps(tmp_path / "unlimited.h5")
    assert {tuple(sorted(set(steps))) for steps in unlimited.values()} == {tuple(every_even_step)}
    path = tmp_path / "budget.h5"
    train(path, -(-full_tensor_bytes(tmp_path / "unlimited.h5", 0) // 3))
    (steps,) = {tuple(sorted(set(steps))) for steps in full_tensor_steps(path).values()}
    assert steps[0] == 0 and 1 < len(steps) < len(every_even_step)
    with open_trace(path) as trace:
        records_at = dict(zip(*np.unique(trace.index("act/relu")[0], return_counts=True)))
        raws = [int(step) for chunk in trace.iter_raw("act/relu") for step in chunk.steps]
    # Two micro-batches at step 0; two and the evaluation pass before them at the others.
    assert [records_at[step] for step in steps] == [2] + [3] * (len(steps) - 1)
    assert raws == [step for step in steps for _ in range(records_at[step])]


class BagOfWords(nn.Module):
    """A text classifier whose lookup tables have no 'embed' in their names."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(50, 16)
        self.bag = nn.EmbeddingBag(50, 16, mode="mean")
        self.out = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.tok(ids).mean(1), self.bag(ids)], dim=1))


def test_lookup_tables_are_recorded_as_embeddings_whatever_their_names(tmp_path: Path) -> None:
    from tests.rules.helpers import analyze_path

    torch.manual_seed(0)
    model = BagOfWords()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    path = tmp_path / "run.h5"
    generator = torch.Generator().manual_seed(1)
    with attach_with_defaults(model, optimizer, path, stats_every=1) as hook:
        for _ in range(30):
            ids = torch.randint(0, 50, (16, 6), generator=generator)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(ids), (ids[:, 0] < 25).long())
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    with open_trace(path) as trace:
        kinds = {info.tag: info.kind for info in trace.tags(scalar=False)}
    for table in ("tok.weight", "bag.weight"):
        assert kinds[table] == kinds[f"grad/{table}"] == "embedding"
    assert kinds["out.weight"] is None and kinds["grad/out.weight"] is None
    # torch initialises lookups N(0, 1): no layer's scale, and no poor initialisation.
    result = analyze_path(path, select=("DBG501",)).results[0]
    assert not result.findings, [f.message for f in result.findings]


def test_normalisation_layers_are_recorded_as_such_whatever_their_names(tmp_path: Path) -> None:
    """BatchNorm and LayerNorm inside Sequentials are named ``0.1``, ``1.2``: their kind says
    what they are, so the rules know the network normalises (DBG101 then leaves out its
    across-layer comparison, whose premise is a plain stack)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU()),
        nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.LayerNorm(8)),
        nn.Linear(8, CLASSES),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    with attach_with_defaults(model, optimizer, path, stats_every=1) as hook:
        for x, y in batches(3):
            train_step(model, optimizer, hook, x, y)
    with open_trace(path) as trace:
        kinds = {info.tag: info.kind for info in trace.tags(scalar=False) if "." in info.tag}
    normalising = {"0.1.weight", "0.1.bias", "1.2.weight", "1.2.bias"}
    for name in normalising:
        assert kinds[name] == kinds[f"grad/{name}"] == "normalisation"
    assert {tag for tag, kind in kinds.items() if kind == "normalisation"} == normalising | {
        f"grad/{name}" for name in normalising
    }
