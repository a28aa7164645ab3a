"""Lightning runs: a LightningModule MLP classifying four Gaussian blobs.

The hook trace comes from :class:`dbgcli.lightning.DbgCallback`; the hand trace from the
LightningModule's own code, as a user writes it: the loss in ``training_step``, weights,
gradients and the learning rate in ``on_before_optimizer_step``, the validation loss and
accuracy in ``on_validation_epoch_end``.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace

import lightning.pytorch as pl
import numpy as np
import torch
from common import HandRecorder, RunSpec, scenario, seed_everything, verify
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dbgcli.lightning import DbgCallback
from dbgcli.torch._hook import DEFAULT_STATS_EVERY

# Lightning announces the devices it found and such at INFO level, once per run.
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

FAMILY = "lightning-mlp"
FEATURES, CLASSES = 8, 4
# Class centres: orthonormal directions times this, so every two are 5.7 apart (unit spread
# around them): a Bayes accuracy of about 0.99 in every seed.
SPREAD = 4.0


@dataclass(frozen=True)
class Recipe:
    """One configuration; scenarios are ``replace(HEALTHY, <one setting>)``."""

    lr: float = 1e-3
    hidden: int = 64
    epochs: int = 20
    train_samples: int = 512
    label_noise: float = 0.0
    hidden_bias: float | None = None  # every hidden bias starts at this (None: default init)


HEALTHY = Recipe()


class Blobs(pl.LightningModule):
    """MLP ``8 - hidden - hidden - 4`` with ReLU, trained with Adam."""

    def __init__(self, recipe: Recipe, spec: RunSpec) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": recipe.lr, "hidden": recipe.hidden})
        self.lr = recipe.lr
        self.net = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(FEATURES, recipe.hidden),
                relu1=nn.ReLU(),
                fc2=nn.Linear(recipe.hidden, recipe.hidden),
                relu2=nn.ReLU(),
                out=nn.Linear(recipe.hidden, CLASSES),
            )
        )
        if recipe.hidden_bias is not None:
            for layer in (self.net.fc1, self.net.fc2):
                nn.init.constant_(layer.bias, recipe.hidden_bias)
        self.hand = HandRecorder(spec, self, stats_every=spec.stats_every or DEFAULT_STATS_EVERY)
        self._val_losses: list[torch.Tensor] = []
        self._val_correct: list[torch.Tensor] = []
        self.val_history: list[tuple[float, float]] = []
        self.train_losses: list[float] = []

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        self.hand.step = self.global_step  # the forward hooks file activations under it
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.train_losses.append(loss.item())
        self.hand.loss(loss.item())
        self.hand.accuracy((logits.argmax(1) == y).float().mean().item())
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.hand.lr(optimizer.param_groups[0]["lr"])
        self.hand.parameters(self)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y, reduction="none")
        self.log("val_loss", loss.mean())
        self.log("val_acc", (logits.argmax(1) == y).float().mean())
        self._val_losses.append(loss)
        self._val_correct.append(logits.argmax(1) == y)

    def on_validation_epoch_end(self) -> None:
        loss = float(torch.cat(self._val_losses).mean())
        accuracy = float(torch.cat(self._val_correct).float().mean())
        self._val_losses.clear()
        self._val_correct.clear()
        if self.trainer.sanity_checking:
            return
        self.val_history.append((loss, accuracy))
        self.hand.loss(loss, self.global_step, mode="eval")
        self.hand.accuracy(accuracy, self.global_step, mode="eval")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _blobs(
    rng: np.random.Generator, centres: np.ndarray, count: int, noise: float
) -> TensorDataset:
    """``count`` samples around the class centres (unit spread); a share ``noise`` of the
    labels is replaced by random ones."""
    labels = rng.integers(0, CLASSES, size=count)
    x = centres[labels] + rng.normal(size=(count, FEATURES))
    flip = rng.random(count) < noise
    labels[flip] = rng.integers(0, CLASSES, size=int(flip.sum()))
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(labels))


def _dead_share(module: Blobs, x: torch.Tensor) -> float:
    """Share of hidden ReLU units that output 0 for every one of the samples ``x``."""
    outputs: list[torch.Tensor] = []
    handles = [
        getattr(module.net, name).register_forward_hook(lambda m, a, out: outputs.append(out))
        for name in ("relu1", "relu2")
    ]
    with torch.no_grad():
        module.net(x)
    for handle in handles:
        handle.remove()
    return float(torch.cat([(out <= 0).all(0) for out in outputs]).float().mean())


def _train(spec: RunSpec, recipe: Recipe) -> dict[str, float]:
    """Train and record both traces; returns the run's figures."""
    rng = seed_everything(spec.seed)
    centres = SPREAD * np.linalg.qr(rng.normal(size=(FEATURES, CLASSES)))[0].T
    train = _blobs(rng, centres, recipe.train_samples, recipe.label_noise)
    valid = _blobs(rng, centres, 512, recipe.label_noise)
    generator = torch.Generator().manual_seed(spec.seed)
    module = Blobs(recipe, spec)
    trainer = pl.Trainer(
        max_epochs=recipe.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[
            DbgCallback(
                spec.hook_path, overwrite=True, stats_every=spec.stats_every or DEFAULT_STATS_EVERY
            )
        ],
    )
    with warnings.catch_warnings():
        # Lightning advises more data loader workers; one process is the point here.
        warnings.filterwarnings("ignore", module="lightning")
        try:
            trainer.fit(
                module,
                DataLoader(train, batch_size=64, shuffle=True, generator=generator),
                DataLoader(valid, batch_size=512),
            )
        finally:
            module.hand.close()
    val_loss = [loss for loss, _ in module.val_history]
    per_epoch = np.reshape(module.train_losses, (recipe.epochs, -1)).mean(1)
    return {
        "train loss, first epoch": per_epoch[0],
        "train loss, last epoch": per_epoch[-1],
        "train loss, max": float(np.max(module.train_losses)),
        "val loss, final": val_loss[-1],
        "val loss, best": min(val_loss),
        "val loss, epoch of best": float(np.argmin(val_loss) + 1),
        "val loss, final / best": val_loss[-1] / min(val_loss),
        "val accuracy, final": module.val_history[-1][1],
        "dead hidden units, share": _dead_share(module, train.tensors[0]),
    }


# -- scenarios ---------------------------------------------------------------------------------


# Seeds 0/1/2: val accuracy 0.988/0.998/0.994, val loss 0.032/0.022/0.027 and still falling
# (best at the last epoch), train loss (last epoch) 0.020/0.015/0.017; 2-4 % of hidden units
# dead. With lr 3e-3 the val loss turned up by 9 % after epoch 7-12: mild overtraining.
@scenario(
    FAMILY,
    "healthy",
    cause=None,
    description="""
LightningModule MLP 8-64-64-4 (ReLU, PyTorch's default init) on four Gaussian blobs, 512
training samples; Adam lr 1e-3, batch 64, 20 epochs (160 steps), validation on 512 samples
after every epoch logging val_loss and val_acc.""",
)
def healthy(spec: RunSpec) -> None:
    verify(
        spec,
        _train(spec, HEALTHY),
        {
            "val accuracy, final": (0.95, None),
            "val loss, final": (None, 0.1),
            "val loss, final / best": (None, 1.05),
            "dead hidden units, share": (None, 0.2),
        },
    )


# Seeds 0/1/2: every hidden unit outputs 0 for every training sample at the end (share 1.0;
# the twin 0.02-0.04); the loss stays at ln 4 = 1.386 and val accuracy at chance
# (0.246/0.254/0.227).
@scenario(
    FAMILY,
    "dying-relu",
    cause="DBG201",
    twin="healthy",
    description="""
lightning-mlp healthy with the biases of both hidden layers initialised to -5: every
pre-activation is negative for every sample, so every ReLU outputs 0, no gradient reaches
the hidden layers and they never recover; only the output bias learns.""",
)
def dying_relu(spec: RunSpec) -> None:
    verify(
        spec,
        _train(spec, replace(HEALTHY, hidden_bias=-5.0)),
        {
            "dead hidden units, share": (0.9, None),
            "val accuracy, final": (None, 0.4),
        },
    )


# Seeds 0/1/2: the training loss explodes from ln 4 to 689/290/283 on average over the first
# epoch (peaks 4355/1016/1187; the twin never exceeds 1.41); the final val loss is 50/0.90/38
# against the twin's 0.02-0.03, 3.4/1.3/6.8 times the run's own best. The blobs are so far
# apart that the val accuracy still ends at 0.98/0.70/0.98: the fault is the divergence.
@scenario(
    FAMILY,
    "lr-too-high",
    cause="DBG503",
    twin="healthy",
    description="""
lightning-mlp healthy with Adam lr 1.0 (1000 times the twin's): the first updates throw the
weights so far that the loss explodes by orders of magnitude; it never settles and the
validation loss ends far above the twin's.""",
)
def lr_too_high(spec: RunSpec) -> None:
    verify(
        spec,
        _train(spec, replace(HEALTHY, lr=1.0)),
        {
            "train loss, max": (100.0, None),
            "val loss, final": (0.5, None),
        },
    )


# Seeds 0/1/2: the val loss is best after epoch 8/9/8 (0.83/0.93/0.88) and ends 2.6-2.9 times
# higher (2.13/2.45/2.59) while the training loss falls to 0.005/0.007/0.003; val accuracy
# 0.73/0.57/0.67 (the twin: 0.99-1.00).
@scenario(
    FAMILY,
    "overfit",
    cause="DBG302",
    twin="healthy",
    # The validation loss climbs once the training set is memorised: overfitting seen as
    # overtraining names the same problem (DBG302 and DBG304 explain each other).
    accept=("DBG304",),
    description="""
lightning-mlp healthy with 48 training samples (one batch) of which 30 % have random labels
(validation labels equally noisy), hidden layers of 256 units and 100 epochs: the network
memorises the training set, noise included, and the validation loss climbs after epoch 9.""",
)
def overfit(spec: RunSpec) -> None:
    recipe = replace(HEALTHY, train_samples=48, label_noise=0.3, hidden=256, epochs=100)
    verify(
        spec,
        _train(spec, recipe),
        {
            "train loss, last epoch": (None, 0.05),
            "val loss, final / best": (2.0, None),
        },
    )
