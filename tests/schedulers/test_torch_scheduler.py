"""``dbgcli.torch.GreedyLR`` in real training loops, against the reference and the pure version."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest
import torch
from transformers.optimization import GreedyLR as ReferenceGreedyLR

from dbgcli.errors import ConfigError
from dbgcli.schedulers import simulate
from dbgcli.torch import GreedyLR

from .helpers import make_problem

PARAMS: dict[str, Any] = {
    "factor": 0.7,
    "patience": 3,
    "cooldown": 2,
    "warmup": 1,
    "min_lr": 1e-3,
    "max_lr": 0.5,
    "smooth": True,
    "window_size": 5,
    "reset_start": 3,
}


def train(
    scheduler_class: type, steps: int, seed: int = 0, **params: Any
) -> tuple[list[float], list[list[float]], list[torch.Tensor]]:
    """Train with minibatch SGD; the scheduler sets the learning rate of the next step."""
    model, inputs, targets = make_problem(seed)
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.05},
            {"params": model[2].parameters(), "lr": 0.02},
        ]
    )
    scheduler = scheduler_class(optimizer, **params)
    losses, lrs = [], []
    for step in range(steps):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss.detach())  # a 0-d tensor, as in most training loops
        losses.append(loss.item())
        lrs.append([group["lr"] for group in optimizer.param_groups])
    return losses, lrs, [p.detach().clone() for p in model.parameters()]


def test_training_loop_matches_reference_and_pure_replay() -> None:
    losses, lrs, weights = train(GreedyLR, 400, **PARAMS)
    ref_losses, ref_lrs, ref_weights = train(ReferenceGreedyLR, 400, **PARAMS)
    # Bit-identical learning rates make the two training runs identical, weight for weight.
    assert lrs == ref_lrs
    assert losses == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(weights, ref_weights, strict=True))
    # The learning rates actually moved: up, down and back to the start.
    assert len({row[0] for row in lrs}) > 5
    # Replaying the recorded losses through the pure scheduler gives the same curve.
    assert simulate(losses, "greedy", lr=[0.05, 0.02], **PARAMS).tolist() == lrs


def test_external_writes_become_the_new_base() -> None:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}]
    ours_opt = torch.optim.SGD(groups)
    ref_opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    ours = GreedyLR(ours_opt, factor=0.5, patience=1, min_lr=1e-3, reset_start=2)
    ref = ReferenceGreedyLR(ref_opt, factor=0.5, patience=1, min_lr=1e-3, reset_start=2)
    losses = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8] * 30
    for step, loss in enumerate(losses):
        if step % 7 == 3:
            for optimizer in (ours_opt, ref_opt):
                optimizer.param_groups[0]["lr"] = 0.3 / (step + 1)
        ours.step(loss)
        ref.step(loss)
        assert ours.get_last_lr() == ref.get_last_lr()
        assert ours_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    # A reset restores the rate the optimizer had at construction, not an external write.
    assert ours.state.resets > 0


@pytest.mark.parametrize("save_at", [1, 57, 150, 299])
def test_state_dict_round_trips_mid_run(save_at: int) -> None:
    steps = 300
    _, uninterrupted, _ = train(GreedyLR, steps, seed=3, **PARAMS)

    model, inputs, targets = make_problem(3)
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.05},
            {"params": model[2].parameters(), "lr": 0.02},
        ]
    )
    scheduler = GreedyLR(optimizer, **PARAMS)
    lrs: list[list[float]] = []
    for step in range(steps):
        if step == save_at:
            buffer = io.BytesIO()
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
                buffer,
            )
            buffer.seek(0)
            checkpoint = torch.load(buffer, weights_only=True)
            # A fresh model, optimizer (with its original learning rates) and scheduler.
            model, inputs, targets = make_problem(3)
            optimizer = torch.optim.SGD(
                [
                    {"params": model[0].parameters(), "lr": 0.05},
                    {"params": model[2].parameters(), "lr": 0.02},
                ]
            )
            scheduler = GreedyLR(optimizer, **PARAMS)
            model.load_state_dict(checkpoint["model"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            assert [g["lr"] for g in optimizer.param_groups] == lrs[-1]
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss.detach())
        lrs.append(scheduler.get_last_lr())
    assert lrs == uninterrupted


def test_load_state_dict_adopts_saved_parameters_after_checking_them() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    saved = GreedyLR(optimizer, patience=3, factor=0.5).state_dict()
    scheduler = GreedyLR(optimizer, patience=4)
    scheduler.load_state_dict(saved)  # as the reference does: the saved parameters win
    assert (scheduler.patience, scheduler.factor) == (3, 0.5)
    before = scheduler.state_dict()
    with pytest.raises(ConfigError, match="factor must be < 1"):
        scheduler.load_state_dict({**saved, "factor": 1.5, "best": 2.0})
    assert scheduler.state_dict() == before  # a rejected load changes nothing


def test_get_last_lr_before_any_step_is_the_initial_rates() -> None:
    optimizer = torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01},
        ]
    )
    assert GreedyLR(optimizer).get_last_lr() == [0.1, 0.01]


def test_rejects_non_optimizer_with_type_error() -> None:
    with pytest.raises(TypeError, match="list is not an Optimizer"):
        GreedyLR([torch.nn.Parameter(torch.zeros(1))])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "params", [{"factor": 0.0}, {"patience": -1}, {"window_size": 0}, {"mode": "low"}], ids=repr
)
def test_rejects_the_same_parameters_as_the_pure_scheduler(params: dict[str, Any]) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match=next(iter(params))):
        GreedyLR(optimizer, **params)


def test_rejects_per_group_bounds_of_the_wrong_length() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="min_lr has 2 values but there is 1 parameter group"):
        GreedyLR(optimizer, min_lr=[0.0, 0.0])


def test_added_param_group_is_an_error() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = GreedyLR(optimizer)
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2})
    with pytest.raises(ConfigError, match="2 parameter groups"):
        scheduler.step(1.0)


def test_tensor_learning_rates_are_updated_in_place() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=torch.tensor(0.1))
    lr_tensor = optimizer.param_groups[0]["lr"]
    scheduler = GreedyLR(optimizer, factor=0.5, patience=0)
    scheduler.step(1.0)
    assert optimizer.param_groups[0]["lr"] is lr_tensor
    assert lr_tensor.item() == torch.tensor(0.2).item()
    assert scheduler.get_last_lr() == [lr_tensor.item()]


def test_importing_dbgcli_torch_does_not_import_torch() -> None:
    code = "import sys, dbgcli.torch; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
