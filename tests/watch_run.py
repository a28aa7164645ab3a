"""A training run for the ``dbg watch`` tests: a linear model whose learning rate drives it to
NaN after a few hundred steps, trained with plain PyTorch, Hugging Face ``Trainer`` or
Lightning, recorded into a trace that is committed every ``--commit-every`` steps.

Run as a script: ``python tests/watch_run.py TRACE --framework torch``. It prints one line,
``stopped at step N`` or ``finished at step N``.

The model is ``y = w . x + b`` on fixed data, trained with SGD on the mean squared error. Along
the top eigenvector of the loss's Hessian an SGD step multiplies the error by
``1 - lr * eigenvalue``; the rate is chosen so that this is ``-GROWTH``: the loss grows by
``GROWTH ** 2`` per step and overflows float32 after about 240 steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch
from torch import nn

FEATURES, SAMPLES, GROWTH = 8, 64, 1.2


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=generator)
    y = x @ torch.randn(FEATURES, 1, generator=generator)
    return x, y


def diverging_lr(x: torch.Tensor) -> float:
    """The rate at which SGD on the MSE multiplies the top error component by -GROWTH."""
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    top = float(torch.linalg.eigvalsh(2.0 / len(x) * design.T @ design).max())
    return (1.0 + GROWTH) / top


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(FEATURES, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        prediction = self.linear(x)
        if labels is None:
            return prediction
        return {"loss": nn.functional.mse_loss(prediction, labels), "logits": prediction}


def train_torch(path: str, steps: int, commit_every: int, pause: float, stop_on: str | None) -> int:
    from dbgcli.torch import attach

    x, y = data()
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=diverging_lr(x))
    with attach(model, optimizer, path, raw_every=0, flush_secs=1e9, stop_on=stop_on) as hook:
        for step in range(steps):
            optimizer.zero_grad()
            loss = model(x, y)["loss"]
            loss.backward()
            optimizer.step()
            if (step + 1) % commit_every == 0:
                hook.flush()
            if hook.should_stop:
                return step
            time.sleep(pause)  # the rest of a real step's work
    return -1


def train_hf(path: str, steps: int, commit_every: int, pause: float, stop_on: str | None) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from dbgcli.hf import DbgCallback

    x, y = data()
    rows = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    recorder = DbgCallback(path, raw_every=0, flush_secs=1e9, stop_on=stop_on)
    last = {"step": -1}

    class Pace(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            last["step"] = state.global_step - 1
            if state.global_step % commit_every == 0 and recorder.hook is not None:
                recorder.hook.flush()
            time.sleep(pause)

    args = TrainingArguments(
        os.path.join(os.path.dirname(path) or ".", "hf-out"),
        per_device_train_batch_size=SAMPLES,
        max_steps=steps,
        learning_rate=diverging_lr(x),
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        logging_steps=1,
        logging_nan_inf_filter=False,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(Regressor(), args, train_dataset=rows, callbacks=[recorder, Pace()])
    trainer.train()
    return last["step"] if last["step"] < steps - 1 else -1


def train_lightning(
    path: str, steps: int, commit_every: int, pause: float, stop_on: str | None
) -> int:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from dbgcli.lightning import DbgCallback

    x, y = data()
    lr = diverging_lr(x)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = Regressor()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            features, labels = batch
            loss: torch.Tensor = self.model(features, labels)["loss"]
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    recorder = DbgCallback(path, raw_every=0, flush_secs=1e9, stop_on=stop_on)

    class Pace(pl.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            if trainer.global_step % commit_every == 0 and recorder.hook is not None:
                recorder.hook.flush()
            time.sleep(pause)

    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[recorder, Pace()],
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=SAMPLES)
    trainer.fit(Module(), loader)
    return trainer.global_step - 1 if trainer.global_step < steps else -1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--framework", choices=("torch", "hf", "lightning"), default="torch")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--commit-every", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.005)
    parser.add_argument("--stop-on", choices=("error", "warning"), default=None)
    args = parser.parse_args()
    train = {"torch": train_torch, "hf": train_hf, "lightning": train_lightning}[args.framework]
    stopped = train(args.trace, args.steps, args.commit_every, args.pause, args.stop_on)
    print(f"stopped at step {stopped}" if stopped >= 0 else "finished", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
