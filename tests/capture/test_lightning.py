"""The Lightning callback, on a tiny LightningModule trained with gradient accumulation."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dbgcli import open_trace
from dbgcli.errors import TraceWriterError
from dbgcli.lightning import DbgCallback
from tests.rules.helpers import analyze_path

BATCHES_PER_EPOCH, ACCUMULATE, EPOCHS = 8, 2, 2
STEPS_PER_EPOCH = BATCHES_PER_EPOCH // ACCUMULATE


class Classifier(pl.LightningModule):
    """training_step calls submodules directly, as LightningModules usually do."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 0.1, "hidden": 8})
        self.net = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(4, 8),
                relu=nn.ReLU(),
                fc2=nn.Linear(8, 6),
                tanh=nn.Tanh(),
                out=nn.Linear(6, 2),
            )
        )
        self.batch_losses: list[float] = []
        self.grad_norms: list[float] = []

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.batch_losses.append(loss.item())
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.grad_norms.append(torch.linalg.vector_norm(self.net.fc1.weight.grad).item())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(seed: int, batches: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * 8, 4, generator=generator)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def fit(
    callback: DbgCallback,
    *others: pl.Callback,
    epochs: int = EPOCHS,
    save: Path | None = None,
    resume: Path | None = None,
    module_class: Callable[[DbgCallback], Classifier] = lambda _: Classifier(),
    accumulate: int = ACCUMULATE,
    clip: float | None = None,
) -> Classifier:
    """Train a fresh Classifier (or a subclass, given the callback); ``save`` a checkpoint at
    the end, or ``resume`` from one."""
    torch.manual_seed(0)
    module = module_class(callback)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        callbacks=[callback, *others],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")  # data loader worker advice
        trainer.fit(module, loader(1, BATCHES_PER_EPOCH), loader(2, 2), ckpt_path=resume)
    if save is not None:
        trainer.save_checkpoint(save)
    return module


def test_lightning_run_is_recorded(tmp_path: Path, no_dbg_warnings: None) -> None:
    path = tmp_path / "run.h5"
    # One byte a step: only step 0 keeps full tensors, which shows the budget reached the trace.
    module = fit(DbgCallback(path, raw_every=2, raw_budget=1, stats_every=1))
    total_steps = STEPS_PER_EPOCH * EPOCHS
    steps = list(range(total_steps))
    with open_trace(path) as trace:
        assert trace.metadata["framework"] == "lightning"
        assert trace.metadata["hyperparameters"] == {"lr": 0.1, "hidden": 8}
        for name, _ in module.named_parameters():
            assert trace.index(name)[0].tolist() == steps, name
            assert trace.index(f"grad/{name}")[0].tolist() == steps, name
            assert [int(s) for chunk in trace.iter_raw(name) for s in chunk.steps] == [0]
        np.testing.assert_allclose(
            trace.stat("grad/net.fc1.weight", "l2").values, module.grad_norms, rtol=1e-5
        )
        assert trace.scalar("lr").values.tolist() == [0.1] * total_steps

        # The loss of a step is the mean of its micro-batches' losses, undivided.
        loss = trace.scalar("loss", mode="train")
        assert loss.steps.tolist() == steps
        np.testing.assert_allclose(
            loss.values, np.reshape(module.batch_losses, (-1, ACCUMULATE)).mean(1), rtol=1e-6
        )

        # Each micro-batch's activations are filed under its optimizer step.
        act_steps, act_modes = trace.index("act/net.relu")
        assert act_steps[act_modes == 0].tolist() == [s for s in steps for _ in range(ACCUMULATE)]
        assert trace.tag("preact/net.tanh").kind == "tanh"

        # Validation after each epoch, at the optimizer steps taken; no sanity-check records.
        validated = [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
        assert trace.scalar("loss", mode="eval").steps.tolist() == validated
        assert trace.scalar("acc", mode="eval").steps.tolist() == validated
        assert sorted(set(act_steps[act_modes == 1].tolist())) == validated
        assert trace.scalar("epoch").values.tolist() == list(range(EPOCHS))
        assert trace.complete


class RecordingClassifier(Classifier):
    """Records its validation labels and predictions through the callback's hook, as
    docs/capture.md shows."""

    def __init__(self, dbg: DbgCallback) -> None:
        super().__init__()
        self.dbg = dbg

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        if self.dbg.hook is not None:
            self.dbg.hook.record(labels=y, predictions=logits, raw=True)


def test_validation_records_leave_out_the_sanity_check(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """The sanity check's two validation batches of the untrained model were recorded as
    training data at step 0; now the hook is None while it runs."""
    path = tmp_path / "run.h5"
    fit(DbgCallback(path), module_class=RecordingClassifier, accumulate=1)
    with open_trace(path) as trace:
        steps, modes = trace.index("labels")
    # Two validation batches after each epoch of eight steps, in mode eval; nothing at step 0.
    assert steps.tolist() == [8, 8, 16, 16] and set(modes.tolist()) == {1}


def test_early_stopping_is_noted_in_the_metadata(tmp_path: Path, no_dbg_warnings: None) -> None:
    stopped, plain = tmp_path / "stopped.h5", tmp_path / "plain.h5"
    fit(DbgCallback(stopped), pl.callbacks.EarlyStopping(monitor="val_loss", patience=3))
    fit(DbgCallback(plain))
    with open_trace(stopped) as trace:
        assert trace.metadata["early_stopping"] == {"monitor": "val_loss", "patience": 3}
    with open_trace(plain) as trace:
        assert "early_stopping" not in trace.metadata


def test_gradients_clipped_after_they_are_recorded_are_judged_by_the_noted_bound(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """Lightning clips after the callback records the gradients, so the callback notes the
    bound; clipped to 1e-4 at every step, the starved updates are named as the clipping's."""
    path = tmp_path / "clipped.h5"
    fit(DbgCallback(path, stats_every=1), epochs=20, accumulate=1, clip=1e-4)
    with open_trace(path) as trace:
        assert trace.metadata["gradient_clipping"] == {"max_norm": 1e-4}
    report = analyze_path(path, select=("DBG503",))
    (finding,) = report.findings
    assert finding.key == "clipped" and "total norm is 0.0001 at every step" in finding.message


def test_a_fit_resumed_from_a_checkpoint_is_noted_as_such(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    """``ckpt_path`` restores the global step: the new trace starts there, and its metadata
    says so, so that the loss rules do not take its first loss for an untrained model's."""
    checkpoint = tmp_path / "last.ckpt"
    fit(DbgCallback(tmp_path / "first.h5"), save=checkpoint)
    fit(DbgCallback(tmp_path / "resumed.h5"), epochs=EPOCHS + 1, resume=checkpoint)
    done = STEPS_PER_EPOCH * EPOCHS
    with open_trace(tmp_path / "first.h5") as trace:
        assert "resumed_from_step" not in trace.metadata
    with open_trace(tmp_path / "resumed.h5") as trace:
        assert trace.metadata["resumed_from_step"] == done
        expected = list(range(done, done + STEPS_PER_EPOCH))
        assert trace.scalar("loss", mode="train").steps.tolist() == expected


def test_default_records_tensors_every_tenth_step_and_the_loss_every_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    path = tmp_path / "run.h5"
    fit(DbgCallback(path))
    with open_trace(path) as trace:  # 8 steps: tensors at step 0 only
        assert trace.index("net.fc1.weight")[0].tolist() == [0]
        assert trace.scalar("loss", mode="train").steps.tolist() == list(range(8))


def test_an_existing_trace_is_refused_before_training(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    with pytest.raises(TraceWriterError):
        DbgCallback(path)
    with pytest.raises(ValueError, match="stats_every must be a positive integer"):
        DbgCallback(tmp_path / "other.h5", stats_every=0)
    with pytest.raises(
        ValueError, match=r"raw_every \(4\) must be a multiple of stats_every \(10\)"
    ):
        DbgCallback(tmp_path / "other.h5", raw_every=4)
    with pytest.raises(ValueError, match="raw_budget must be >= 0"):
        DbgCallback(tmp_path / "other.h5", raw_budget=-1)
    assert not (tmp_path / "other.h5").exists()


class TwoOptimizers(Classifier):
    """Manual optimization with two optimizers, one per part of the network, as a GAN's;
    ``forget`` leaves out one's ``zero_grad()``."""

    def __init__(self, forget: str | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.forget = forget

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        first, second = self.optimizers()  # type: ignore[misc]
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        if self.forget != "first":
            first.zero_grad()
        if self.forget != "second":
            second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()
        self.batch_losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        head = list(self.net.out.parameters())
        body = [p for p in self.net.parameters() if all(p is not h for h in head)]
        return [torch.optim.SGD(body, lr=0.1), torch.optim.Adam(head, lr=0.01)]


class ManualSteps(Classifier):
    """Manual optimization, one optimizer, ``zero_grad()`` called or forgotten."""

    def __init__(self, zero: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.zero = zero

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        optimizer = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        if self.zero:
            optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        return loss


def test_a_zero_grad_forgotten_under_manual_optimization_is_noted(tmp_path: Path) -> None:
    """Under manual optimization the module zeroes its gradients itself. Forgotten, every
    step follows the sum of all gradients so far: the callback's optimizer steps run the same
    check as the PyTorch hook's, and DBG103 names it. Called, nothing is noted."""
    for zero in (False, True):
        path = tmp_path / f"zero-{zero}.h5"
        fit(DbgCallback(path), module_class=lambda _, z=zero: ManualSteps(z), accumulate=1)
        with open_trace(path) as trace:
            assert ("gradients_not_zeroed" in trace.metadata) is not zero
        found = analyze_path(path, select=("DBG103",)).findings
        assert [f.key for f in found] == ([] if zero else ["carried"])


@pytest.mark.parametrize("forget", [None, "first", "second"])
def test_each_of_two_optimizers_is_checked_for_its_own_zero_grad(
    tmp_path: Path, forget: str | None
) -> None:
    """Two optimizers, one for the body and one for the head: the second's ``zero_grad()``
    forgotten is found as the first's is. The trace steps once a batch and the first
    optimizer arms the check there, so the second's parameters went unprobed."""
    path = tmp_path / f"forget-{forget}.h5"
    fit(DbgCallback(path), module_class=lambda _: TwoOptimizers(forget), accumulate=1)
    with open_trace(path) as trace:
        noted = trace.metadata.get("gradients_not_zeroed")
    if forget is None:
        assert noted is None
        return
    assert noted is not None
    assert noted["parameter"].startswith("net.out.") is (forget == "second"), noted
    found = analyze_path(path, select=("DBG103",)).findings
    assert [f.key for f in found] == ["carried"]


class Gan(pl.LightningModule):
    """Manual optimization: the discriminator steps every second batch, zeroing its own
    gradients first (or not); the generator every batch, its loss through the discriminator."""

    def __init__(self, zero_discriminator: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.zero_discriminator = zero_discriminator
        self.G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.D = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch
        generator, discriminator = self.optimizers()  # type: ignore[misc]
        z = torch.randn(x.shape[0], 4)
        if batch_idx % 2 == 0:
            if self.zero_discriminator:
                discriminator.zero_grad()
            fake = self.G(z).detach()
            softplus = nn.functional.softplus
            loss = softplus(-self.D(x)).mean() + softplus(self.D(fake)).mean()
            self.manual_backward(loss)
            discriminator.step()
        generator.zero_grad()
        loss = nn.functional.softplus(-self.D(self.G(z))).mean()
        self.manual_backward(loss)
        generator.step()
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        return [
            torch.optim.Adam(self.G.parameters(), 1e-3),
            torch.optim.Adam(self.D.parameters(), 1e-3),
        ]


def test_a_gan_is_checked_at_each_optimizer_s_own_steps(tmp_path: Path) -> None:
    """The discriminator's gradient still holds its last step's and the generator's between
    two of its own steps, zeroed or not: only its own next step says whether it zeroed them.
    Checked at the generator's steps, this healthy GAN read as gradients not zeroed."""
    for zero in (True, False):
        path = tmp_path / f"gan-{zero}.h5"
        torch.manual_seed(0)
        trainer = pl.Trainer(
            max_epochs=1,
            callbacks=[DbgCallback(path)],
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        data = DataLoader(TensorDataset(torch.randn(320, 8)), batch_size=8)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            trainer.fit(Gan(zero), data)
        with open_trace(path) as trace:
            assert ("gradients_not_zeroed" in trace.metadata) is not zero, zero


def test_two_optimizers_step_the_trace_once_a_batch(tmp_path: Path, no_dbg_warnings: None) -> None:
    """Lightning counts each optimizer's step in ``global_step`` (two a batch here). The trace
    steps once a batch, as Lightning's loggers do: the parameters are recorded once a step,
    each optimizer's rate in its own series, and the run is not read as resumed (DBG801 saw
    the step go back when the loss of a batch came after the second optimizer's step)."""
    path = tmp_path / "run.h5"
    module = fit(
        DbgCallback(path, stats_every=1), module_class=lambda _: TwoOptimizers(), accumulate=1
    )
    batches = BATCHES_PER_EPOCH * EPOCHS
    with open_trace(path) as trace:
        assert trace.scalar("loss", mode="train").steps.tolist() == list(range(batches))
        np.testing.assert_allclose(
            trace.scalar("loss", mode="train").values, module.batch_losses, rtol=1e-6
        )
        assert trace.scalar("lr").values.tolist() == [0.1] * batches
        assert trace.scalar("lr/opt1").values.tolist() == [0.01] * batches
        assert trace.index("grad/net.out.weight")[0].tolist() == list(range(batches))
        validated = [BATCHES_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
        assert trace.scalar("loss", mode="eval").steps.tolist() == validated
        assert "resumed_from_step" not in trace.metadata
    assert not analyze_path(path, select=("DBG801",)).findings
