"""PyTorch runs of the calibration corpus: MLPs on tabular data, small CNNs, a small ResNet and
a tiny vision transformer on images.

Every run trains a small model on synthetic data for a few hundred steps, on one CPU thread,
and records it twice in the same loop: through ``dbgcli.torch.attach`` (the hook trace) and
through :class:`common.HandRecorder` (the hand trace). A scenario is a :class:`Recipe`, the
healthy recipe of its twin with one setting changed, plus the :class:`Check` s that prove its
point: the measurements are taken in the training loop itself (:class:`Probe`: dead units from
the activations, saturated pre-activations, gradient norms, update/weight norm ratios, the
relative variance of the weights, train and validation loss and accuracy), and a run whose
fault is not really there, or whose healthy twin is not really healthy, fails. The figures of
every check go to ``seed<k>.measured.json`` beside the traces.

The figures in the comments above each scenario are those measured for seeds 0, 1 and 2.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from unittest import mock

import numpy as np
import torch
from common import HandRecorder, Naming, RunSpec, scenario, seed_everything
from torch import nn

from dbgcli.torch import TorchHook, attach
from dbgcli.torch._hook import DEFAULT_STATS_EVERY

FEATURES, CLASSES = 16, 4
EVAL_EVERY = 25
IMAGE = 12  # side of the CNN's images

Init = Callable[[nn.Module], None]
Arrays = tuple[np.ndarray, np.ndarray]


# -- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """Training and held-out tensors (labels, or float targets for regression)."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def regression(self) -> bool:
        return self.y.is_floating_point()


Encoding = Callable[[np.ndarray, np.ndarray, np.random.Generator], Arrays]


def _floats(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32)


def standardise(x: np.ndarray, x_val: np.ndarray, rng: np.random.Generator) -> Arrays:
    """The usual pipeline: zero mean, unit variance with the training set's statistics
    (NaN-skipping, as pandas computes them)."""
    mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    return (x - mean) / std, (x_val - mean) / std


def raw_bytes(x: np.ndarray, x_val: np.ndarray, rng: np.random.Generator) -> Arrays:
    """Features as a sensor or a CSV export delivers them: integers on a 0-255 scale, each
    feature with its own offset and gain."""
    offset = rng.uniform(60.0, 190.0, size=x.shape[1])
    gain = rng.uniform(10.0, 25.0, size=x.shape[1])
    return (
        np.clip(np.round(offset + gain * x), 0, 255),
        np.clip(np.round(offset + gain * x_val), 0, 255),
    )


def bytes_integer_divided(x: np.ndarray, x_val: np.ndarray, rng: np.random.Generator) -> Arrays:
    """The 0-255 features scaled with integer division, ``x // 255`` for ``x / 255``: every
    value below 255 becomes exactly 0 (they are clipped to 254 first, as uint8 sensors with a
    reserved 255 deliver them)."""
    x, x_val = raw_bytes(x, x_val, rng)
    return np.minimum(x, 254) // 255, np.minimum(x_val, 254) // 255


def missing_values(share: float) -> Encoding:
    """Standardised features where ``share`` of the rows miss one feature (NaN), not imputed."""

    def encode(x: np.ndarray, x_val: np.ndarray, rng: np.random.Generator) -> Arrays:
        for array in (x, x_val):
            rows = rng.random(len(array)) < share
            array[rows, rng.integers(0, array.shape[1], size=int(rows.sum()))] = np.nan
        return standardise(x, x_val, rng)

    return encode


def tabular(
    *,
    n_train: int = 8192,
    n_val: int = 1024,
    spread: float = 1.0,
    label_noise: float = 0.0,
    shares: tuple[float, ...] | None = None,
    twin_classes: bool = False,
    encode: Encoding = standardise,
    classes: int = CLASSES,
) -> Callable[[np.random.Generator], Data]:
    """``classes`` classes (four) in 16 features, each two Gaussian blobs at opposite points
    ``±c_k``.

    Every class has mean zero, so no linear model separates them (logistic regression stays
    near chance) while a ReLU MLP learns ``|<x, c_k>|`` in a few hundred steps.

    Args:
        n_train: Training samples (the held-out set has ``n_val``).
        spread: Standard deviation of the blob centres per feature (noise has 1).
        label_noise: Share of labels (train and held-out) replaced by a uniform random class.
        shares: Class probabilities (default: uniform).
        twin_classes: Classes 2 and 3 share their blobs: identical input distributions.
        encode: Turns raw features into model inputs (default: standardisation).
        classes: Number of classes.
    """

    def build(rng: np.random.Generator) -> Data:
        centres = rng.normal(0.0, spread, size=(classes, FEATURES))
        if twin_classes:
            centres[3] = centres[2]
        n = n_train + n_val
        labels = rng.choice(classes, size=n, p=shares)
        signs = rng.choice((-1.0, 1.0), size=(n, 1))
        x = signs * centres[labels] + rng.normal(size=(n, FEATURES))
        noisy = rng.random(n) < label_noise
        labels[noisy] = rng.integers(0, classes, size=int(noisy.sum()))
        x_train, x_val = encode(x[:n_train], x[n_train:], rng)
        return Data(
            _floats(x_train),
            torch.as_tensor(labels[:n_train]),
            _floats(x_val),
            torch.as_tensor(labels[n_train:]),
        )

    return build


def regression(rng: np.random.Generator, n_train: int = 2048, n_val: int = 512) -> Data:
    """A smooth nonlinear target of 16 standardised features plus 10 % noise, standardised."""
    n = n_train + n_val
    x = rng.normal(size=(n, FEATURES))
    a, b = rng.normal(size=(2, FEATURES)) / math.sqrt(FEATURES)
    y = 2.0 * np.tanh(x @ a) + (x @ b) ** 2 + 0.1 * rng.normal(size=n)
    y = ((y - y[:n_train].mean()) / y[:n_train].std())[:, None]
    return Data(
        _floats(x[:n_train]), _floats(y[:n_train]), _floats(x[n_train:]), _floats(y[n_train:])
    )


def images(rng: np.random.Generator, n_train: int = 4096, n_val: int = 512) -> Data:
    """1x12x12 images: a class's 4x4 pattern of ±1 at a random place, plus N(0, 0.8²) noise."""
    n = n_train + n_val
    patterns = rng.choice((-1.0, 1.0), size=(CLASSES, 4, 4))
    labels = rng.integers(0, CLASSES, size=n)
    x = rng.normal(0.0, 0.8, size=(n, 1, IMAGE, IMAGE))
    rows, cols = rng.integers(0, IMAGE - 3, size=(2, n))
    for i in range(n):
        x[i, 0, rows[i] : rows[i] + 4, cols[i] : cols[i] + 4] += 1.5 * patterns[labels[i]]
    x = (x - x[:n_train].mean()) / x[:n_train].std()
    return Data(
        _floats(x[:n_train]),
        torch.as_tensor(labels[:n_train]),
        _floats(x[n_train:]),
        torch.as_tensor(labels[n_train:]),
    )


NUMERIC, LEVELS = 3, (4, 9)  # the mixed table: 3 numeric columns, one-hots of 4 and 9 levels


def mixed_tabular(
    rng: np.random.Generator, n_train: int = 8192, n_val: int = 1024, label_noise: float = 0.02
) -> Data:
    """A table as a pandas pipeline delivers it: three standardised numeric columns beside two
    categorical ones one-hot encoded (``pd.get_dummies``: 4 and 9 levels, 0/1 indicators; 16
    inputs in all). The class is the 4-level category shifted by the parity of the 9-level one
    and by which side of a hyperplane the numeric columns lie on (``(a + b % 2 + 2 [<x, w> >
    0]) % 4``), so it needs all three; 2 % of the labels are random.

    An indicator of a 4-level category has mean 0.25, one of a 9-level category a standard
    deviation of 0.31: off-centre and badly scaled as numeric features, and as they should
    be."""
    n = n_train + n_val
    numeric = rng.normal(size=(n, NUMERIC))
    a, b = (rng.integers(0, levels, size=n) for levels in LEVELS)
    side = numeric @ rng.normal(size=NUMERIC) > 0
    labels = (a + b % 2 + 2 * side) % CLASSES
    noisy = rng.random(n) < label_noise
    labels[noisy] = rng.integers(0, CLASSES, size=int(noisy.sum()))
    numeric = (numeric - numeric[:n_train].mean(0)) / numeric[:n_train].std(0)
    x = np.concatenate([numeric, np.eye(LEVELS[0])[a], np.eye(LEVELS[1])[b]], axis=1)
    assert x.shape[1] == FEATURES
    return Data(
        _floats(x[:n_train]),
        torch.as_tensor(labels[:n_train]),
        _floats(x[n_train:]),
        torch.as_tensor(labels[n_train:]),
    )


# -- batches ------------------------------------------------------------------------------------

Batches = Callable[[Data, np.random.Generator, int], Iterator[torch.Tensor]]


def shuffled(data: Data, rng: np.random.Generator, batch: int) -> Iterator[torch.Tensor]:
    """Reshuffled every epoch; a batch never spans two epochs."""
    n = len(data.x)
    while True:
        order = torch.as_tensor(rng.permutation(n))
        for start in range(0, n - min(batch, n) + 1, batch):
            yield order[start : start + batch]


def sorted_by_class(data: Data, rng: np.random.Generator, batch: int) -> Iterator[torch.Tensor]:
    """No shuffling, the training set sorted by label: each batch holds a single class."""
    order = torch.argsort(data.y, stable=True)
    ends = torch.cumsum(torch.bincount(data.y), 0).tolist()
    starts = [0, *ends[:-1]]
    while True:
        for start, end in zip(starts, ends):
            for first in range(start, end - batch + 1, batch):
                yield order[first : first + batch]


def one_batch(data: Data, rng: np.random.Generator, batch: int) -> Iterator[torch.Tensor]:
    """The same first ``batch`` samples at every step."""
    index = torch.arange(batch)
    while True:
        yield index


# -- models -------------------------------------------------------------------------------------


def _weighted(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """``(name, weight, bias)`` of the linear and convolution layers (all have biases here)."""
    return [
        (name, module.get_parameter("weight"), module.get_parameter("bias"))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    ]


def he_init(model: nn.Module) -> None:
    for _, weight, bias in _weighted(model):
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
        nn.init.zeros_(bias)


def xavier_init(model: nn.Module) -> None:
    for _, weight, bias in _weighted(model):
        nn.init.xavier_normal_(weight)
        nn.init.zeros_(bias)


def torch_default_init(model: nn.Module) -> None:
    """PyTorch's own initialisation, as the layers come."""


def _hidden_biases(model: nn.Module) -> list[nn.Parameter]:
    """The biases of the weighted layers before the output layer (named ``out``)."""
    return [bias for name, _, bias in _weighted(model) if name != "out"]


def hidden_bias(value: float, base: Init = he_init) -> Init:
    """``base``, then every hidden bias set to ``value``."""

    def init(model: nn.Module) -> None:
        base(model)
        with torch.no_grad():
            for bias in _hidden_biases(model):
                bias.fill_(value)

    return init


def signed_hidden_bias(magnitude: float, base: Init) -> Init:
    """``base``, then every hidden bias set to ``±magnitude`` (random sign per unit)."""

    def init(model: nn.Module) -> None:
        base(model)
        with torch.no_grad():
            for bias in _hidden_biases(model):
                bias.copy_(magnitude * (2.0 * torch.randint(0, 2, bias.shape) - 1.0))

    return init


def constant_init(weight: float, jitter: float = 0.0) -> Init:
    """Every weight ``weight + jitter * N(0, 1)``, every bias 0."""

    def init(model: nn.Module) -> None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("weight"):
                    parameter.copy_(weight + jitter * torch.randn_like(parameter))
                else:
                    parameter.zero_()

    return init


def unscaled_normal_init(model: nn.Module) -> None:
    """Weights from ``torch.randn`` as they come (std 1, no 1/sqrt(fan_in)), biases 0."""
    with torch.no_grad():
        for _, weight, bias in _weighted(model):
            weight.copy_(torch.randn_like(weight))
            bias.zero_()


def mlp(
    widths: tuple[int, ...] = (64, 64),
    activation: Callable[[], nn.Module] = nn.ReLU,
    init: Init = he_init,
    *,
    dropout: float = 0.0,
    outputs: int = CLASSES,
    head: Callable[[], nn.Module] | None = None,
    float16: bool = False,
    batchnorm: bool = False,
) -> Callable[[], nn.Module]:
    """``fc1, [bn1,] act1, [drop1,] fc2, ..., out[, head]`` with the given hidden widths;
    ``float16``: its parameters in float16 (``model.half()``), between casts of its input to
    float16 and of its output back to float32."""

    def build() -> nn.Module:
        layers: list[tuple[str, nn.Module]] = [("to_half", Cast(torch.float16))] if float16 else []
        fan_in = FEATURES
        for index, width in enumerate(widths, start=1):
            layers.append((f"fc{index}", nn.Linear(fan_in, width)))
            if batchnorm:
                layers.append((f"bn{index}", nn.BatchNorm1d(width)))
            layers.append((f"act{index}", activation()))
            if dropout:
                layers.append((f"drop{index}", nn.Dropout(dropout)))
            fan_in = width
        layers.append(("out", nn.Linear(fan_in, outputs)))
        if head is not None:
            layers.append(("head", head()))
        if float16:
            layers.append(("to_float", Cast(torch.float32)))
        model = nn.Sequential(OrderedDict(layers))
        init(model)
        return model.half() if float16 else model

    return build


class Cast(nn.Module):
    """Casts its input to ``dtype``."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def cnn(init: Init = he_init, *, batchnorm: bool = False) -> Callable[[], nn.Module]:
    """conv8-ReLU-conv16-ReLU-global max pool-linear on 1x12x12 images (optionally BatchNorm
    after each convolution)."""

    def build() -> nn.Module:
        layers: list[tuple[str, nn.Module]] = []
        for index, (c_in, c_out) in enumerate(((1, 8), (8, 16)), start=1):
            layers.append((f"conv{index}", nn.Conv2d(c_in, c_out, 3, padding=1)))
            if batchnorm:
                layers.append((f"bn{index}", nn.BatchNorm2d(c_out)))
            layers.append((f"act{index}", nn.ReLU()))
        # Global max pooling: the pattern may be anywhere in the image.
        layers += [
            ("pool", nn.AdaptiveMaxPool2d(1)),
            ("flat", nn.Flatten()),
            ("out", nn.Linear(16, CLASSES)),
        ]
        model = nn.Sequential(OrderedDict(layers))
        init(model)
        return model

    return build


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN plus the identity, then ReLU (convolutions
    without biases, as torchvision's)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act2(x + self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return out


def resnet(channels: int = 16, blocks: int = 2) -> Callable[[], nn.Module]:
    """A small ResNet on 1x12x12 images: a conv-BN-ReLU stem, ``blocks`` basic blocks, global
    average pooling and a linear head; convolutions initialised as torchvision's (Kaiming
    normal, fan_out), BatchNorm at weight 1 and bias 0."""

    def build() -> nn.Module:
        model = nn.Sequential(
            OrderedDict(
                stem=nn.Conv2d(1, channels, 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(channels),
                act=nn.ReLU(),
                blocks=nn.Sequential(*(BasicBlock(channels) for _ in range(blocks))),
                pool=nn.AdaptiveAvgPool2d(1),
                flat=nn.Flatten(),
                out=nn.Linear(channels, CLASSES),
            )
        )
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        return model

    return build


class LayerScale(nn.Module):
    """CaiT's LayerScale: a learned per-channel ``gamma`` scaling a residual branch."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class EncoderBlock(nn.Module):
    """A pre-norm transformer block as timm's ViT writes it: attention and a GELU MLP, each
    branch scaled by LayerScale before it is added to the residual stream."""

    def __init__(self, dim: int, heads: int, hidden: int, layer_scale: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ls1 = LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim))
        )
        self.ls2 = LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.ls1(self.attn(h, h, h, need_weights=False)[0])
        out: torch.Tensor = x + self.ls2(self.mlp(self.norm2(x)))
        return out


class TinyViT(nn.Module):
    """A vision transformer on 1x12x12 images: 4x4 patches at stride 2 (25 tokens) embedded by
    a convolution, a ``cls_token`` and a learned positional table ``pos_embed`` that both start
    at zero (``nn.Parameter(torch.zeros(...))``, as timm's ViT declares them), pre-norm blocks
    with LayerScale, and a linear head on the class token."""

    def __init__(
        self, dim: int = 32, depth: int = 2, heads: int = 2, layer_scale: float = 0.1
    ) -> None:
        super().__init__()
        tokens = ((IMAGE - 4) // 2 + 1) ** 2
        self.patch_embed = nn.Conv2d(1, dim, 4, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(
            *(EncoderBlock(dim, heads, 2 * dim, layer_scale) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        logits: torch.Tensor = self.head(self.norm(self.blocks(x))[:, 0])
        return logits


# -- optimizers and schedules -------------------------------------------------------------------

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def _trainable(model: nn.Module, skip: str | None = None) -> list[nn.Parameter]:
    """Parameters that require gradients, less those of the layer ``skip``."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and (skip is None or not name.startswith(f"{skip}."))
    ]


def sgd(
    lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0, skip: str | None = None
) -> OptimizerFactory:
    return lambda model: torch.optim.SGD(
        _trainable(model, skip), lr=lr, momentum=momentum, weight_decay=weight_decay
    )


def adam(lr: float = 1e-3, eps: float = 1e-8) -> OptimizerFactory:
    return lambda model: torch.optim.Adam(_trainable(model), lr=lr, eps=eps)


def adamw(lr: float, weight_decay: float) -> OptimizerFactory:
    return lambda model: torch.optim.AdamW(_trainable(model), lr=lr, weight_decay=weight_decay)


def layer_lr(layer: str, factor: float, lr: float = 1e-3) -> OptimizerFactory:
    """Adam with ``layer`` in a parameter group of its own at ``factor`` times the others' lr."""

    def build(model: nn.Module) -> torch.optim.Optimizer:
        own = [p for name, p in model.named_parameters() if name.startswith(f"{layer}.")]
        rest = [p for name, p in model.named_parameters() if not name.startswith(f"{layer}.")]
        groups: list[dict[str, Any]] = [{"params": rest}, {"params": own, "lr": factor * lr}]
        return torch.optim.Adam(groups, lr=lr)

    return build


Schedule = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


def warmup_linear(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over the first 10 % of the steps, then linear decay to exactly 0 at the
    last step."""
    warmup, last = steps // 10, steps - 1

    def factor(step: int) -> float:
        return step / warmup if step < warmup else (last - step) / (last - warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_lr(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """StepLR(step_size=20, gamma=0.01): the lr is divided by 100 every 20 steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.01)


def step_lr_rising(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """StepLR(step_size=60, gamma=10), gamma meant as 0.1: the lr is multiplied by 10 every
    60 steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=60, gamma=10.0)


def warmup_restarted(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """:func:`warmup_linear` as a loop that creates its scheduler at every epoch of 20 steps
    gets it: its warmup (30 steps) starts again every epoch, before it ends."""
    schedule = warmup_linear(optimizer, steps)
    factor = schedule.lr_lambdas[0]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step % 20))


def one_cycle(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """OneCycleLR at the optimizer's lr: 30 % cosine warmup from lr / 25, then cosine annealing
    to lr / 1e4 (and the momentum, Adam's beta1, cycled against it: 0.95 down to 0.85)."""
    lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)


class NaiveCrossEntropy(nn.Module):
    """Cross-entropy written out as ``-log(softmax(z / T)[label])`` with the temperature
    inverted (``z * T``): for a sample whose true logit trails the largest by more than about
    100 / T, the true class's softmax underflows to 0 and its log to -inf."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits * self.temperature, dim=1)
        return -torch.log(probabilities[torch.arange(len(labels)), labels]).mean()


def pretrain_whole(steps: int) -> Callable[[nn.Module, Data], None]:
    """Train the whole model (Adam 1e-3, batch 64, unrecorded): the checkpoint a resumed run
    (``Recipe.start_step``) continues from."""

    def pretrain(model: nn.Module, data: Data) -> None:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            index = torch.randint(0, len(data.x), (64,))
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data.x[index]), data.y[index]).backward()
            optimizer.step()

    return pretrain


def pretrain_and_freeze(layers: tuple[str, ...], steps: int) -> Callable[[nn.Module, Data], None]:
    """Train the whole model briefly (:func:`pretrain_whole`), then freeze ``layers``
    (``requires_grad_(False)``) and re-initialise the rest: a new head on a trained backbone."""
    train = pretrain_whole(steps)

    def pretrain(model: nn.Module, data: Data) -> None:
        train(model, data)
        for name, module in model.named_children():
            if name in layers:
                module.requires_grad_(False)
            elif isinstance(module, nn.Linear):
                module.reset_parameters()

    return pretrain


def freeze_all_but_the_last_bias(model: nn.Module, data: Data) -> None:
    """``requires_grad_(False)`` on the whole model, then back on for the output layer's bias
    only, as a fine-tuning script that meant to unfreeze the head gets it wrong."""
    model.requires_grad_(False)
    last = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    last.bias.requires_grad_(True)


def warm_restarts(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """SGDR: cosine annealing from the optimizer's lr to 0 over 150 steps, then again from
    the full lr (restarts at steps 150, 300 and 450)."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=150)


def labels_shuffled(build: Callable[[np.random.Generator], Data]) -> Callable[..., Data]:
    """The data of ``build`` with the labels permuted apart from their inputs (train and
    held-out), as a pipeline that shuffles features and labels separately leaves them."""

    def shuffled_build(rng: np.random.Generator) -> Data:
        data = build(rng)
        return replace(
            data,
            y=data.y[torch.as_tensor(rng.permutation(len(data.y)))],
            y_val=data.y_val[torch.as_tensor(rng.permutation(len(data.y_val)))],
        )

    return shuffled_build


# -- measurements -------------------------------------------------------------------------------


@dataclass
class Measured:
    """What the training loop measured, per training step unless said otherwise."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    # Of the final evaluation: rows are true classes, columns predicted ones.
    confusion: np.ndarray | None = None
    # Of each training batch: mean |x| over the finite inputs, share of non-finite inputs.
    input_mean_abs: list[float] = field(default_factory=list)
    input_nonfinite: list[float] = field(default_factory=list)
    label_counts: np.ndarray | None = None
    # Whether the model was in training mode at each training step, and at each evaluation.
    train_mode: list[bool] = field(default_factory=list)
    eval_train_mode: list[bool] = field(default_factory=list)
    # ReLU modules: share of units (features, or channels) with no positive output in the batch.
    dead: dict[str, list[float]] = field(default_factory=dict)
    # Tanh / sigmoid modules: share of pre-activations beyond 3 / 4.6 (derivative below 0.01).
    saturated: dict[str, list[float]] = field(default_factory=dict)
    # Weights (2-D and up): gradient norms before clipping, ||w_after - w_before|| / ||w_before||
    # of each optimizer step, and var / (mean² + var) after it.
    grad_norm: dict[str, list[float]] = field(default_factory=dict)
    update_ratio: dict[str, list[float]] = field(default_factory=dict)
    relative_variance: dict[str, list[float]] = field(default_factory=dict)

    def final_loss(self) -> float:
        """Mean training loss of the last 10 steps."""
        return float(np.mean(self.loss[-10:]))

    def final_accuracy(self) -> float:
        return float(np.mean(self.accuracy[-10:])) if self.accuracy else math.nan

    def final_eval_loss(self) -> float:
        return self.eval_loss[-1] if self.eval_loss else math.nan

    def final_eval_accuracy(self) -> float:
        return self.eval_accuracy[-1] if self.eval_accuracy else math.nan

    def label_share(self, label: int) -> float:
        """Share of a class among the labels of all training batches."""
        assert self.label_counts is not None
        return float(self.label_counts[label] / self.label_counts.sum())

    def recall(self, label: int) -> float:
        """Held-out recall of a class at the final evaluation."""
        assert self.confusion is not None
        return float(self.confusion[label, label] / self.confusion[label].sum())

    def first_nonfinite_loss(self) -> int:
        """Step of the first non-finite training loss (-1: none)."""
        bad = np.flatnonzero(~np.isfinite(self.loss))
        return int(bad[0]) if bad.size else -1

    def nonfinite_loss_share(self) -> float:
        return float(np.mean(~np.isfinite(self.loss)))

    def grad_ratio(self) -> float:
        """Median over steps of ||grad of the first weight|| / ||grad of the last weight||."""
        norms = list(self.grad_norm.values())
        return float(np.median(np.asarray(norms[0]) / np.asarray(norms[-1])))

    def summary(self) -> dict[str, float]:
        return {
            "steps": len(self.loss),
            "final train loss": self.final_loss(),
            "final train accuracy": self.final_accuracy(),
            "final eval loss": self.final_eval_loss(),
            "final eval accuracy": self.final_eval_accuracy(),
        }


def _accuracy(output: torch.Tensor, labels: torch.Tensor) -> float:
    return (output.argmax(dim=1) == labels).float().mean().item()


class Probe:
    """Takes the :class:`Measured` figures of a model during training (forward hooks on its
    activation modules; :meth:`before_step` / :meth:`after_step` around ``optimizer.step()``)."""

    SATURATION = {nn.Tanh: 3.0, nn.Sigmoid: 4.6}

    def __init__(self, model: nn.Module) -> None:
        self.measured = Measured()
        self.weights = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
        self._before: dict[str, torch.Tensor] = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.ReLU):
                module.register_forward_hook(self._dead(self.measured.dead.setdefault(name, [])))
            bound = self.SATURATION.get(type(module))
            if bound is not None:
                series = self.measured.saturated.setdefault(name, [])
                module.register_forward_hook(self._saturated(series, bound))

    @staticmethod
    def _dead(series: list[float]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                # Units are the features of a dense layer, the channels of a convolution.
                positive = (output > 0).transpose(0, 1).flatten(1)
                series.append(1.0 - positive.any(dim=1).float().mean().item())

        return hook

    @staticmethod
    def _saturated(series: list[float], bound: float) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                series.append((args[0].abs() > bound).float().mean().item())

        return hook

    def batch(self, x: torch.Tensor, y: torch.Tensor, regression: bool) -> None:
        """The inputs and labels of a training batch, as the model gets them."""
        measured = self.measured
        finite = torch.isfinite(x)
        measured.input_nonfinite.append(1.0 - finite.float().mean().item())
        measured.input_mean_abs.append(x[finite].abs().mean().item())
        if not regression:
            counts = torch.bincount(y, minlength=CLASSES).numpy()
            previous = measured.label_counts
            if previous is not None:
                width = max(len(counts), len(previous))
                counts = np.pad(counts, (0, width - len(counts)))
                counts += np.pad(previous, (0, width - len(previous)))
            measured.label_counts = counts

    def evaluation(self, loss: float, output: torch.Tensor, labels: torch.Tensor) -> None:
        measured = self.measured
        measured.eval_loss.append(loss)
        if not labels.is_floating_point():
            predicted = output.argmax(dim=1)
            measured.eval_accuracy.append(_accuracy(output, labels))
            classes = output.shape[1]
            measured.confusion = np.zeros((classes, classes), dtype=np.int64)
            np.add.at(measured.confusion, (labels.numpy(), predicted.numpy()), 1)

    def before_step(self) -> None:
        """After backward, before clipping and the update."""
        for name, weight in self.weights.items():
            if weight.grad is not None:
                self.measured.grad_norm.setdefault(name, []).append(weight.grad.norm().item())
            self._before[name] = weight.detach().clone()

    def after_step(self) -> None:
        for name, weight in self.weights.items():
            before = self._before[name]
            ratio = ((weight.detach() - before).norm() / before.norm()).item()
            self.measured.update_ratio.setdefault(name, []).append(ratio)
            w = weight.detach().double()
            var, mean = w.var(unbiased=False).item(), w.mean().item()
            # A parameter at exactly zero (a cls_token before its first update) has none.
            total = mean * mean + var
            self.measured.relative_variance.setdefault(name, []).append(
                var / total if total else math.nan
            )


@dataclass(frozen=True)
class Check:
    """A measured figure and the bounds it must meet for the scenario to be what it claims
    (none: a figure reported for information)."""

    what: str
    measure: Callable[[Measured], float]
    low: float | None = None
    high: float | None = None

    def passes(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class NotAsClaimed(RuntimeError):
    """The run does not show its fault, or a healthy run is not healthy."""


def healthy(accuracy: float = 0.85, gap: float = 0.15) -> tuple[Check, ...]:
    """Learns (held-out accuracy), generalises (held-out loss at most ``gap`` above the training
    loss) and does not overtrain (the last held-out loss at most 0.1 above the best: SGD's
    noise moves it by about 0.05 from one evaluation to the next)."""
    return (
        Check("final eval accuracy", Measured.final_eval_accuracy, low=accuracy),
        Check("final eval - train loss", lambda m: m.final_eval_loss() - m.final_loss(), high=gap),
        Check("final - best eval loss", lambda m: m.final_eval_loss() - min(m.eval_loss), high=0.1),
    )


def verify(spec: RunSpec, measured: Measured, checks: tuple[Check, ...]) -> None:
    """Write the figures beside the traces; raise if a check fails."""
    figures: dict[str, float] = dict(measured.summary())
    failed = []
    for check in checks:
        value = float(check.measure(measured))
        figures[check.what] = value
        if not check.passes(value):
            failed.append(f"{check.what} = {value:.4g} (wanted {check.low} .. {check.high})")
    path = spec.hook_path.with_name(f"seed{spec.seed}.measured.json")
    # JSON has no NaN or infinity: those are written as the strings "nan", "inf", "-inf".
    path.write_text(
        json.dumps({k: v if math.isfinite(v) else str(v) for k, v in figures.items()}, indent=1)
    )
    if failed:
        raise NotAsClaimed(f"{spec.family}/{spec.scenario} seed {spec.seed}: " + "; ".join(failed))


# -- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One training configuration. Scenarios are ``replace(<twin's recipe>, <one setting>)``."""

    data: Callable[[np.random.Generator], Data] = tabular()
    model: Callable[[], nn.Module] = mlp()
    optimizer: OptimizerFactory = sgd()
    steps: int = 300
    batch: int = 64
    batches: Batches = shuffled
    loss: Callable[[], nn.Module] = nn.CrossEntropyLoss
    schedule: Schedule | None = None
    clip: float | None = None
    bf16: bool = False
    # Applied to the batch of a step: a glitch in the input pipeline.
    glitch: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    pretrain: Callable[[nn.Module, Data], None] | None = None
    # Record inputs, labels and predictions (logits) of every training batch, full tensors.
    record_data: bool = False
    # ... only every this many steps, and with this ``raw`` (None: the writers' own raw_every,
    # which keeps full tensors at step 0 only in a run shorter than 50 steps).
    record_data_every: int = 1
    record_data_raw: bool | None = True
    # Record weights, gradients and activations only every this many steps (both traces);
    # None: the library's default, so that detection is measured at the defaults.
    stats_every: int | None = None
    eval_every: int | None = EVAL_EVERY
    # Stop when the training loss reaches this ("overfit one batch").
    until_loss: float | None = None
    # Early stopping with Keras's default patience 0: stop at the first evaluation whose loss
    # is no better than the best so far.
    early_stopping: bool = False
    # Step at which the wall clock the writers read jumps forward (a simulated hang).
    stall_at: int | None = None
    # The optimizer steps a checkpoint holds (trained by ``pretrain``): the recorded run
    # resumes there, ``hook.step = start_step``, and the hand trace notes it in the metadata.
    start_step: int = 0
    # The model stays in eval mode while it trains (model.train() forgotten); the hand trace
    # notes the step in the metadata, as a user can.
    eval_mode: bool = False
    # optimizer.zero_grad() at every step; without it the hand trace notes the fault, as a
    # user can.
    zero_grad: bool = True
    # The evaluations leave the model in training mode (model.eval() forgotten); the hand
    # trace notes the first one after an update in the metadata, as a user can.
    eval_in_train_mode: bool = False


STALL_SECONDS = 20 * 60.0


class JumpingClock:
    """``time.time`` as the writers see it during a run: the real clock plus ``offset``."""

    def __init__(self) -> None:
        self.real = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset


def _hyperparameters(recipe: Recipe, optimizer: torch.optim.Optimizer, seed: int) -> dict[str, Any]:
    group = optimizer.param_groups[0]
    values: dict[str, Any] = {
        "optimizer": type(optimizer).__name__,
        "lr": group.get("initial_lr", group["lr"]),
        "batch_size": recipe.batch,
        "steps": recipe.steps,
        "seed": seed,
    }
    for key in ("momentum", "betas", "weight_decay"):
        if key in group:
            values[key] = list(group[key]) if isinstance(group[key], tuple) else group[key]
    if recipe.clip is not None:
        values["max_grad_norm"] = recipe.clip
    return values


def _optimizer_note(
    optimizer: torch.optim.Optimizer, model: nn.Module, names: Naming
) -> dict[str, Any]:
    """What a user notes of the optimizer, as the hook does: its settings (run metadata
    ``optimizer``) and the trainable parameters it does not hold, by their tags."""
    groups = [
        {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in group.items()
            if key != "params" and isinstance(value, (bool, int, float, str, tuple))
        }
        for group in optimizer.param_groups
    ]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {
        "optimizer": {"type": type(optimizer).__name__, "groups": groups},
        "parameters_not_in_optimizer": [
            names.parameter(name)[0]
            for name, p in model.named_parameters()
            if p.requires_grad and id(p) not in held
        ],
    }


def _batch_norm_values(model: nn.Module, recipe: Recipe) -> dict[str, int]:
    """What a user notes of the batch norms: how many values each normalises a channel over
    per training batch (the batch, times the positions of the CNN's 12x12 images)."""
    return {
        name: recipe.batch * (IMAGE * IMAGE if isinstance(module, nn.BatchNorm2d) else 1)
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
    }


class Loop:
    """One recorded training run of a recipe."""

    def __init__(self, spec: RunSpec, recipe: Recipe) -> None:
        self.spec, self.recipe = spec, recipe
        rng = seed_everything(spec.seed)
        self.data = recipe.data(rng)
        self.batches = recipe.batches(self.data, rng, recipe.batch)
        self.model = recipe.model()
        if recipe.pretrain is not None:
            recipe.pretrain(self.model, self.data)
        self.optimizer = recipe.optimizer(self.model)
        self.schedule = recipe.schedule(self.optimizer, recipe.steps) if recipe.schedule else None
        self.loss_fn = recipe.loss()
        self.probe = Probe(self.model)

    def _autocast(self) -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.recipe.bf16 else nullcontext()

    def run(self) -> Measured:
        recipe, spec, model = self.recipe, self.spec, self.model
        hyper = _hyperparameters(recipe, self.optimizer, spec.seed)
        loss_name = type(self.loss_fn).__name__
        clock = JumpingClock()
        stats_every = recipe.stats_every or spec.stats_every or DEFAULT_STATS_EVERY
        with ExitStack() as stack:
            if recipe.stall_at is not None:
                stack.enter_context(mock.patch("time.time", clock))
            hook = stack.enter_context(
                attach(
                    model,
                    self.optimizer,
                    spec.hook_path,
                    overwrite=True,
                    stats_every=stats_every,
                    hyperparameters=hyper,
                    metadata={"family": spec.family, "scenario": spec.scenario},
                )
            )
            hand = stack.enter_context(
                HandRecorder(spec, model, loss_name=loss_name, stats_every=stats_every)
            )
            hand.writer.set_metadata(
                hyperparameters=hyper, **_optimizer_note(self.optimizer, model, spec.names)
            )
            if recipe.start_step:
                hook.step = recipe.start_step
                hand.writer.set_metadata(resumed_from_step=recipe.start_step)
            if recipe.eval_mode:
                model.eval()
                hand.writer.set_metadata(trained_in_eval_mode=recipe.start_step)
            if not recipe.zero_grad:
                hand.writer.set_metadata(gradients_not_zeroed=recipe.start_step)
            if not recipe.eval_mode and (norms := _batch_norm_values(model, recipe)):
                hand.writer.set_metadata(batch_norm=norms)
            dropout = {n: m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
            if any(dropout.values()):
                hand.writer.set_metadata(dropout=dropout)
            if recipe.eval_in_train_mode and recipe.eval_every:
                first = recipe.start_step + recipe.eval_every
                hand.writer.set_metadata(evaluated_in_train_mode=first)
            self._train(hook, hand, clock)
        return self.probe.measured

    def _train(self, hook: TorchHook, hand: HandRecorder, clock: JumpingClock) -> None:
        recipe, model, measured = self.recipe, self.model, self.probe.measured
        best = math.inf
        evaluated_at = None
        start = recipe.start_step
        step = start
        for step, index in zip(range(start, start + recipe.steps), self.batches):
            if recipe.eval_every and step % recipe.eval_every == 0:
                eval_loss = self._evaluate(hook, hand, step)
                evaluated_at = step
                if recipe.early_stopping and eval_loss >= best:
                    return
                best = min(best, eval_loss)
            if step == recipe.stall_at:
                clock.offset += STALL_SECONDS
            hand.step = step
            x, y = self.data.x[index], self.data.y[index]
            if recipe.glitch is not None:
                x = recipe.glitch(step, x)
            self.probe.batch(x, y, self.data.regression)
            measured.train_mode.append(model.training)
            if recipe.zero_grad:
                self.optimizer.zero_grad()
            with self._autocast():
                output = model(x)
                loss_tensor = self.loss_fn(output, y)
            loss = loss_tensor.item()
            hook.record_loss(loss_tensor)
            hand.loss(loss)
            hand.lr(self.optimizer.param_groups[0]["lr"])
            measured.lr.append(self.optimizer.param_groups[0]["lr"])
            measured.loss.append(loss)
            if not self.data.regression:
                accuracy = _accuracy(output, y)
                hook.record_scalar("accuracy", accuracy)
                hand.accuracy(accuracy)
                measured.accuracy.append(accuracy)
            if recipe.record_data and step % recipe.record_data_every == 0:
                raw = recipe.record_data_raw
                hook.record(inputs=x, labels=y, predictions=output.detach(), raw=raw)
                hand.data(inputs=x, labels=y, predictions=output.detach(), raw=raw)
            loss_tensor.backward()
            self.probe.before_step()
            if recipe.clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
            hand.parameters(model)
            self.optimizer.step()
            self.probe.after_step()
            if self.schedule is not None:
                self.schedule.step()
            if recipe.until_loss is not None and loss <= recipe.until_loss:
                break
        done = step + 1
        if recipe.eval_every and evaluated_at != done:
            self._evaluate(hook, hand, done)

    def _evaluate(self, hook: TorchHook, hand: HandRecorder, step: int) -> float:
        """Loss and accuracy on the held-out set under ``model.eval()`` and ``no_grad``."""
        model, data = self.model, self.data
        model.train(self.recipe.eval_in_train_mode)
        self.probe.measured.eval_train_mode.append(model.training)
        with torch.no_grad(), self._autocast():
            output = model(data.x_val)
            loss = float(self.loss_fn(output, data.y_val))
        model.train(not self.recipe.eval_mode)
        hook.record_loss(loss, mode="eval")
        hand.loss(loss, step=step, mode="eval")
        if not data.regression:
            accuracy = _accuracy(output, data.y_val)
            hook.record_scalar("accuracy", accuracy, mode="eval")
            hand.accuracy(accuracy, step=step, mode="eval")
        self.probe.evaluation(loss, output, data.y_val)
        return loss


def run(spec: RunSpec, recipe: Recipe, *checks: Check) -> None:
    """Train and record ``recipe``, then :func:`verify` the checks."""
    verify(spec, Loop(spec, recipe).run(), checks)


# -- torch-mlp: healthy runs --------------------------------------------------------------------

MLP = "torch-mlp"
HEALTHY_SGD = Recipe()
HEALTHY_ADAM = replace(HEALTHY_SGD, optimizer=adam(1e-3))
HEALTHY_DEEP_RELU = replace(HEALTHY_ADAM, model=mlp((64,) * 8), steps=200)
HEALTHY_TANH = replace(HEALTHY_SGD, model=mlp(activation=nn.Tanh, init=xavier_init))
HEALTHY_SIGMOID = replace(
    HEALTHY_ADAM, model=mlp((64,), nn.Sigmoid, xavier_init), optimizer=adam(3e-2)
)
HEALTHY_DATA = replace(HEALTHY_SGD, record_data=True)
HEALTHY_BATCHNORM = replace(HEALTHY_SGD, model=mlp(batchnorm=True))


# Measured (seeds 0/1/2): final train loss 0.141/0.178/0.0798; final eval loss 0.142/0.225/0.115;
# final eval accuracy 0.957/0.93/0.966.
@scenario(
    MLP,
    "healthy-sgd",
    cause=None,
    quick=True,
    description="""
ReLU MLP 16-64-64-4, He init, on four classes of antipodal Gaussian blobs (standardised);
SGD momentum 0.9, lr 0.05, batch 64, 300 steps.""",
)
def mlp_healthy_sgd(spec: RunSpec) -> None:
    run(spec, HEALTHY_SGD, *healthy())


# Measured (seeds 0/1/2): final train loss 0.203/0.22/0.118; final eval accuracy
# 0.954/0.933/0.961.
@scenario(
    MLP,
    "healthy-batchnorm",
    cause=None,
    description="""
healthy-sgd with BatchNorm1d after each hidden Linear (before its ReLU), batch 64.""",
)
def mlp_healthy_batchnorm(spec: RunSpec) -> None:
    run(spec, HEALTHY_BATCHNORM, *healthy())


# Measured (seeds 0/1/2): final train loss 0.187/0.228/0.133; final eval loss 0.163/0.264/0.143;
# final eval accuracy 0.947/0.91/0.954.
@scenario(MLP, "healthy-adam", cause=None, description="healthy-sgd trained with Adam, lr 1e-3.")
def mlp_healthy_adam(spec: RunSpec) -> None:
    run(spec, HEALTHY_ADAM, *healthy())


# Measured (seeds 0/1/2): final train loss 0.142/0.188/0.0929; final eval loss 0.122/0.216/0.111;
# final eval accuracy 0.956/0.931/0.961.
@scenario(
    MLP,
    "healthy-tanh",
    cause=None,
    description="""
healthy-sgd with tanh hidden layers and Xavier (Glorot normal) initialisation.""",
)
def mlp_healthy_tanh(spec: RunSpec) -> None:
    run(spec, HEALTHY_TANH, *healthy())


# Measured (seeds 0/1/2): final train loss 0.162/0.202/0.106; final eval loss 0.138/0.215/0.113;
# final eval accuracy 0.958/0.931/0.965.
@scenario(
    MLP,
    "healthy-sigmoid",
    cause=None,
    description="""
One sigmoid hidden layer of 64 units, Xavier init, Adam lr 3e-2.""",
)
def mlp_healthy_sigmoid(spec: RunSpec) -> None:
    run(spec, HEALTHY_SIGMOID, *healthy())


# Measured (seeds 0/1/2): final train loss 0.209/0.344/0.159; final eval loss 0.214/0.261/0.174;
# final eval accuracy 0.928/0.908/0.938.
@scenario(
    MLP,
    "healthy-deep-relu",
    cause=None,
    description="""
Eight ReLU hidden layers of 64 units, He init, Adam lr 1e-3.""",
)
def mlp_healthy_deep_relu(spec: RunSpec) -> None:
    run(spec, HEALTHY_DEEP_RELU, *healthy())


# Measured (seeds 0/1/2): final train loss 0.14/0.176/0.0947; final eval loss 0.129/0.207/0.11;
# final eval accuracy 0.959/0.932/0.966.
@scenario(
    MLP,
    "healthy-schedule",
    cause=None,
    description="""
healthy-sgd trained with AdamW (lr 3e-3, weight decay 0.01), linear warmup over the first
10 % of the steps then linear decay to exactly 0 at the last step, clip_grad_norm_ 1.0.""",
)
def mlp_healthy_schedule(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_SGD, optimizer=adamw(3e-3, 0.01), schedule=warmup_linear, clip=1.0)
    run(spec, recipe, *healthy())


# Measured (seeds 0/1/2): steps 51/50/133; last train loss 9.95e-05/9.77e-05/9.94e-05.
@scenario(
    MLP,
    "healthy-fit-minibatch",
    cause=None,
    description="""
The "overfit one batch" sanity check: one fixed batch of 32 samples trained with Adam lr 1e-2
until the loss is 1e-4 or below; no held-out evaluation (memorising is the point).""",
)
def mlp_healthy_fit_minibatch(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_ADAM,
        optimizer=adam(1e-2),
        batch=32,
        batches=one_batch,
        steps=600,
        until_loss=1e-4,
        eval_every=None,
    )
    run(spec, recipe, Check("last train loss", lambda m: m.loss[-1], high=1e-4))


# Measured (seeds 0/1/2): final train loss 0.494/0.508/0.455; final eval loss 0.481/0.535/0.468;
# final eval accuracy 0.958/0.933/0.968.
@scenario(
    MLP,
    "healthy-label-smoothing",
    cause=None,
    description="""
healthy-sgd with CrossEntropyLoss(label_smoothing=0.1): the loss levels off well above 0.""",
)
def mlp_healthy_label_smoothing(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_SGD, loss=lambda: nn.CrossEntropyLoss(label_smoothing=0.1))
    run(spec, recipe, *healthy())


# Measured (seeds 0/1/2): final train loss 0.278/0.381/0.229; final eval loss 0.262/0.396/0.228;
# final eval accuracy 0.944/0.9/0.957.
@scenario(
    MLP,
    "healthy-frozen-backbone",
    cause=None,
    description="""
healthy-adam whose fc1 and fc2 were first trained for 300 unrecorded steps, then frozen with
requires_grad_(False) and left out of the optimizer; a re-initialised head is trained.""",
)
def mlp_healthy_frozen_backbone(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_ADAM, pretrain=pretrain_and_freeze(("fc1", "fc2"), steps=300))
    run(spec, recipe, *healthy())


@scenario(
    MLP,
    "healthy-resumed",
    cause=None,
    description="""
healthy-adam resumed from a checkpoint: the model was trained for 300 unrecorded steps, and
the recorded run continues at step 300 (hook.step = 300; the hand trace notes
resumed_from_step) for 300 more.""",
)
def mlp_healthy_resumed(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_ADAM, pretrain=pretrain_whole(300), start_step=300)
    run(spec, recipe, *healthy())


@scenario(
    MLP,
    "healthy-fine-tune",
    cause=None,
    description="""
healthy-adam fine-tuned: the model was trained for 300 unrecorded steps, and the recorded run
starts again at step 0 with a fresh Adam at lr 1e-4 (no checkpoint's step: a hook attached
after training), recording the labels and predictions of every 10th batch.""",
)
def mlp_healthy_fine_tune(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_ADAM,
        optimizer=adam(1e-4),
        pretrain=pretrain_whole(300),
        record_data=True,
        record_data_every=10,
    )
    run(spec, recipe, *healthy())


@scenario(
    MLP,
    "healthy-warm-restarts",
    cause=None,
    description="""
healthy-sgd for 600 steps under SGDR (CosineAnnealingWarmRestarts, T_0=150): the lr returns
to 0.05 at steps 150, 300 and 450, and the loss rises after each restart before it anneals
again.""",
)
def mlp_healthy_warm_restarts(spec: RunSpec) -> None:
    run(spec, replace(HEALTHY_SGD, schedule=warm_restarts, steps=600), *healthy())


# Measured (seeds 0/1/2): final train loss 0.186/0.228/0.133; final eval loss 0.162/0.263/0.143;
# final eval accuracy 0.948/0.908/0.954.
@scenario(
    MLP,
    "healthy-bf16",
    cause=None,
    description="""
healthy-adam with the forward pass (and loss) under torch.autocast("cpu", dtype=bfloat16).""",
)
def mlp_healthy_bf16(spec: RunSpec) -> None:
    run(spec, replace(HEALTHY_ADAM, bf16=True), *healthy())


# Measured (seeds 0/1/2): final train loss 0.251/0.289/0.129; final eval loss 0.134/0.195/0.119;
# final eval accuracy 0.955/0.934/0.966.
@scenario(
    MLP,
    "healthy-dropout-wd",
    cause=None,
    description="""
healthy-sgd with dropout 0.2 after each hidden ReLU and weight decay 5e-4.""",
)
def mlp_healthy_dropout_wd(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_SGD, model=mlp(dropout=0.2), optimizer=sgd(weight_decay=5e-4))
    run(spec, recipe, *healthy())


# Measured (seeds 0/1/2): final train loss 0.141/0.178/0.0798; final eval loss 0.142/0.225/0.115;
# final eval accuracy 0.957/0.93/0.966.
@scenario(
    MLP,
    "healthy-every-step",
    cause=None,
    description="""
healthy-sgd recording weights, gradients and activations at every step (attach(...,
stats_every=1) and the hand-written loop recording every step), where every other run records
them every 10th step, the default.""",
)
def mlp_healthy_every_step(spec: RunSpec) -> None:
    run(spec, replace(HEALTHY_SGD, stats_every=1), *healthy())


# Measured (seeds 0/1/2): final train loss 0.113/0.124/0.118; final eval loss 0.175/0.173/0.254.
@scenario(
    MLP,
    "healthy-regression",
    cause=None,
    description="""
MSE regression: a ReLU MLP 16-64-64-1 (He init, Adam lr 1e-3) fitting a smooth nonlinear
function of 16 features with 10 % noise.""",
)
def mlp_healthy_regression(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_ADAM, data=regression, model=mlp(outputs=1), loss=nn.MSELoss)
    run(
        spec,
        recipe,
        Check("final eval loss (1 - R²)", Measured.final_eval_loss, high=0.3),
        Check("final eval - train loss", lambda m: m.final_eval_loss() - m.final_loss(), high=0.15),
    )


# Measured (seeds 0/1/2): final train loss 0.141/0.178/0.0798; final eval loss 0.142/0.225/0.115;
# final eval accuracy 0.957/0.93/0.966.
@scenario(
    MLP,
    "healthy-data",
    cause=None,
    description="""
healthy-sgd that also records the inputs, labels and predictions (logits) of every training
batch as full tensors: the twin of the data faults.""",
)
def mlp_healthy_data(spec: RunSpec) -> None:
    run(spec, HEALTHY_DATA, *healthy())


MANY_CLASSES = 20


# Measured (seeds 0/1/2): final eval accuracy 0.951/0.901/0.971; final eval - train loss
# 0.04/0.103/0.03. Classes predicted right less than 90 % of the time in the records DBG604
# judges: 2/5/0 of 20 (hook traces).
@scenario(
    MLP,
    "healthy-many-classes",
    cause=None,
    description=f"""
healthy-data on {MANY_CLASSES} classes of antipodal blobs closer together (spread 1.3), a ReLU
MLP 16-128-128-{MANY_CLASSES}: a harder task the model learns to about 90-97 %
held-out accuracy, some classes predicted wrongly more than one time in ten (under
SageMaker Debugger's 90 % bar for classifier confusion), its errors spread over many classes.""",
)
def mlp_healthy_many_classes(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_DATA,
        data=tabular(classes=MANY_CLASSES, spread=1.3),
        model=mlp((128, 128), outputs=MANY_CLASSES),
    )
    run(spec, recipe, *healthy())


# Measured (seeds 0/1/2): final train loss 0.426/0.725/0.394; final eval loss 0.359/0.649/0.31;
# final eval accuracy 0.901/0.781/0.922; final / first eval loss 0.184/0.294/0.162. The hook and
# hand traces keep full tensors of the data at step 0 only (64 samples), so the data rules
# report too few samples.
@scenario(
    MLP,
    "healthy-short",
    cause=None,
    description="""
healthy-adam at lr 3e-3 for 40 steps only, recording the inputs, labels and predictions of
every 10th training batch with hook.record() at the default raw settings: full tensors at
step 0 only, the predictions of a model that has not trained yet.""",
)
def mlp_healthy_short(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_DATA,
        optimizer=adam(3e-3),
        steps=40,
        record_data_every=10,
        record_data_raw=None,
    )
    run(
        spec,
        recipe,
        Check("final eval accuracy", Measured.final_eval_accuracy, low=0.7),
        Check("final / first eval loss", lambda m: m.final_eval_loss() / m.eval_loss[0], high=0.5),
        Check("final eval - train loss", lambda m: m.final_eval_loss() - m.final_loss(), high=0.15),
    )


# Measured (seeds 0/1/2): final train loss 0.13/0.151/0.143; final eval loss 0.196/0.198/0.183;
# final eval accuracy 0.957/0.954/0.966 (2 % of labels random).
@scenario(
    MLP,
    "healthy-onehot",
    cause=None,
    description="""
healthy-data on a table of three standardised numeric columns and two categorical ones
one-hot encoded (4 and 9 levels: 0/1 indicators with means of 0.25 and 0.11), the class
a function of all three; inputs, labels and predictions recorded as full tensors.""",
)
def mlp_healthy_onehot(spec: RunSpec) -> None:
    run(spec, replace(HEALTHY_DATA, data=mixed_tabular), *healthy())


# -- torch-mlp: induced faults ------------------------------------------------------------------


def scaled_batches(
    first: int, count: int, factor: float
) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """A glitch: the batches of steps ``first .. first + count - 1`` multiplied by ``factor``."""
    return lambda step, x: x * factor if first <= step < first + count else x


GLITCH = 150  # the first step of exploding-gradient's scaled batches


def glitch_ratio(m: Measured) -> float:
    """Largest gradient norm of fc1 in the glitch's two steps over its median before them."""
    norms = m.grad_norm["fc1.weight"]
    return max(norms[GLITCH : GLITCH + 2]) / float(np.median(norms[:GLITCH]))


def dead_share(module: str) -> Callable[[Measured], float]:
    return lambda m: float(np.mean(m.dead[module]))


def min_saturated(module: str) -> Callable[[Measured], float]:
    return lambda m: float(np.min(m.saturated[module]))


# Measured (seeds 0/1/2): act1 dead share 0.955/0.973/0.973; act2 dead share 1/1/1; final train
# loss 1.39/1.38/1.39; final eval accuracy 0.213/0.252/0.236.
@scenario(
    MLP,
    "dying-relu",
    cause="DBG201",
    twin="healthy-sgd",
    quick=True,
    description="""
healthy-sgd with every hidden bias initialised to -5 (weights He): on standardised inputs the
pre-activations are about N(-5, 1.4²), so nearly every ReLU unit outputs 0 for every sample
from the first step on, gets no gradient and never recovers.""",
)
def mlp_dying_relu(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_SGD, model=mlp(init=hidden_bias(-5.0)))
    run(
        spec,
        recipe,
        Check("act1 dead share", dead_share("act1"), low=0.8),
        Check("act2 dead share", dead_share("act2"), low=0.8),
    )


# Measured (seeds 0/1/2): median |grad fc1| / |grad out| 1.23e-07/1.39e-07/1.24e-07; final train
# loss 1.39/1.41/1.41; final eval accuracy 0.245/0.27/0.245.
@scenario(
    MLP,
    "vanishing-gradient",
    cause="DBG101",
    twin="healthy-deep-relu",
    description="""
Eight sigmoid hidden layers of 64 units with PyTorch's default initialisation, trained with
SGD (lr 0.05, momentum 0.9): each layer scales the backpropagated gradient by about 0.25 x 0.6,
so the first layer's gradient is orders of magnitude below the last layer's.""",
)
def mlp_vanishing_gradient(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_DEEP_RELU, model=mlp((64,) * 8, nn.Sigmoid, torch_default_init), optimizer=sgd()
    )
    run(spec, recipe, Check("median |grad fc1| / |grad out|", Measured.grad_ratio, high=1e-3))


# Measured (seeds 0/1/2): |grad fc1| at the glitch / median before 2.88e+05/4.26e+05/1.01e+05;
# final train loss 1.38/1.38/1.39; final eval accuracy 0.216/0.252/0.236.
@scenario(
    MLP,
    "exploding-gradient",
    cause="DBG102",
    twin="healthy-sgd",
    description="""
healthy-sgd with a glitch in the input pipeline: the batches of steps 150 and 151 are
multiplied by 1000 (a unit conversion applied twice), so their gradients are 1e5 times the
usual; the SGD steps they drive throw the weights far off and the model never recovers (the
loss returns to chance).""",
)
def mlp_exploding_gradient(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_SGD, glitch=scaled_batches(GLITCH, 2, 1e3))
    run(spec, recipe, Check("|grad fc1| at the glitch / median before", glitch_ratio, low=100.0))


# Measured (seeds 0/1/2): act1 saturated share (min over steps) 0.994/0.997/0.997; act2 saturated
# share (min over steps) 0.953/0.953/0.984; final train loss 1.52/1.46/1.42; final eval accuracy
# 0.273/0.235/0.27.
@scenario(
    MLP,
    "tanh-saturation",
    cause="DBG202",
    twin="healthy-tanh",
    description="""
healthy-tanh with every hidden bias initialised to ±5 (random sign per unit; weights Xavier):
the pre-activations sit beyond ±3, where tanh' < 0.01, for nearly every unit and sample,
and the gradients through them are too small to move them back.""",
)
def mlp_tanh_saturation(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_TANH, model=mlp(activation=nn.Tanh, init=signed_hidden_bias(5.0, xavier_init))
    )
    run(
        spec,
        recipe,
        Check("act1 saturated share (min over steps)", min_saturated("act1"), low=0.9),
        Check("act2 saturated share (min over steps)", min_saturated("act2"), low=0.9),
    )


# Measured (seeds 0/1/2): act1 saturated share (min over steps) 0.81/0.794/0.789; final train loss
# 0.133/0.19/0.0904; final eval accuracy 0.958/0.919/0.949.
@scenario(
    MLP,
    "sigmoid-saturation",
    cause="DBG203",
    twin="healthy-sigmoid",
    description="""
healthy-sigmoid with every hidden bias initialised to ±12 (random sign per unit; weights
Xavier): most pre-activations sit beyond ±4.6, where sigmoid' < 0.01, throughout the run;
Adam revives a few units, which carry the learning.""",
)
def mlp_sigmoid_saturation(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_SIGMOID, model=mlp((64,), nn.Sigmoid, signed_hidden_bias(12.0, xavier_init))
    )
    run(
        spec, recipe, Check("act1 saturated share (min over steps)", min_saturated("act1"), low=0.6)
    )


# Measured (seeds 0/1/2): mean loss of steps 50-150 - of steps 200-300 0.0075/0.00427/0.00604;
# final train loss 0.419/0.657/0.281; final eval accuracy 0.861/0.737/0.907.
@scenario(
    MLP,
    "loss-not-decreasing",
    cause="DBG301",
    twin="healthy-sgd",
    accept=("DBG503",),
    description="""
healthy-sgd with StepLR(step_size=20, gamma=0.01): the lr is 5e-4 from step 20 and 5e-6
from step 40, so the loss stops decreasing far above the twin's.""",
)
def mlp_loss_not_decreasing(spec: RunSpec) -> None:
    # The twin's final train loss is 0.08-0.18; this run's stays where step 40 left it.
    run(
        spec,
        replace(HEALTHY_SGD, schedule=step_lr),
        Check("final train loss", Measured.final_loss, low=0.25),
        Check(
            "mean loss of steps 50-150 - of steps 200-300",
            lambda m: float(np.mean(m.loss[50:150]) - np.mean(m.loss[200:])),
            high=0.02,
        ),
    )


@scenario(
    MLP,
    "frozen-everything",
    cause="DBG403",
    twin="healthy-sgd",
    description="""
healthy-sgd with requires_grad_(False) on the whole model and back on for the output bias
only (a script that meant to unfreeze the head): the optimizer trains 4 of 5,508 values, and
the loss cannot go below chance (ln 4).""",
)
def mlp_frozen_everything(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, pretrain=freeze_all_but_the_last_bias),
        Check("final train loss / ln 4", lambda m: m.final_loss() / math.log(CLASSES), low=0.95),
    )


# The class shares of the shuffled-labels scenario: 70 % of one class, so that learning the
# prior alone leaves the loss at H(0.7, 0.1, 0.1, 0.1) = 0.94, 68 % of ln 4.
SKEWED = (0.7, 0.1, 0.1, 0.1)


@scenario(
    MLP,
    "shuffled-labels",
    cause="DBG303",
    twin="healthy-data",
    description="""
healthy-data on classes of shares 0.7/0.1/0.1/0.1 whose labels were permuted apart from their
inputs (train and held-out): the model can learn the class frequencies only, and its loss
settles at their entropy (0.94, 68 % of ln 4).""",
)
def mlp_shuffled_labels(spec: RunSpec) -> None:
    data = labels_shuffled(tabular(shares=SKEWED))
    prior = -sum(p * math.log(p) for p in SKEWED)
    run(
        spec,
        replace(HEALTHY_DATA, data=data),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=max(SKEWED) + 0.03),
        Check("final train loss / label entropy", lambda m: m.final_loss() / prior, low=0.95),
    )


OVERFIT = replace(
    HEALTHY_ADAM,
    data=tabular(n_train=40, label_noise=0.3),
    model=mlp((256,) * 3),
    batch=40,
    steps=200,
)


# Measured (seeds 0/1/2): final eval - train loss 2.62/3.67/3.09; final train loss
# 7.9e-05/0.000144/0.000124; final eval accuracy 0.498/0.347/0.421.
@scenario(
    MLP,
    "overfit",
    cause="DBG302",
    twin="healthy-adam",
    # Overfitting seen as overtraining names the same problem (DBG302 and DBG304 explain each
    # other), as the overtraining scenario accepts DBG302.
    accept=("DBG304",),
    description="""
healthy-adam on 40 training samples with 30 % of the labels replaced by random ones (train and
held-out alike), a 3x256 MLP trained full-batch for 200 steps: it memorises the noise and
the held-out loss ends far above the training loss.""",
)
def mlp_overfit(spec: RunSpec) -> None:
    run(
        spec,
        OVERFIT,
        Check("final eval - train loss", lambda m: m.final_eval_loss() - m.final_loss(), low=1.0),
        Check("final train accuracy", Measured.final_accuracy, low=0.99),
    )


# Measured (seeds 0/1/2): final train loss 1.41/1.4/1.42; final eval accuracy 0.303/0.264/0.202.
@scenario(
    MLP,
    "underfit",
    cause="DBG303",
    twin="healthy-sgd",
    description="""
healthy-sgd without hidden layers (logistic regression): every class is two blobs at
opposite points, so no linear model separates them and accuracy stays near chance.""",
)
def mlp_underfit(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, model=mlp(())),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.4),
    )


def evals_after_best(m: Measured) -> float:
    return float(len(m.eval_loss) - 1 - int(np.argmin(m.eval_loss)))


OVERTRAINING = replace(
    HEALTHY_ADAM,
    data=tabular(n_train=1024, label_noise=0.2),
    model=mlp((256, 256)),
    steps=400,
)


# Measured (seeds 0/1/2): steps 75/75/75; final train loss 0.574/0.489/0.501; final eval loss
# 0.787/0.875/0.826; final eval accuracy 0.758/0.735/0.765.
@scenario(
    MLP,
    "healthy-early-stopping",
    cause=None,
    description="""
The overtraining run stopped by early stopping with Keras's default patience 0: training ends
at the first evaluation whose held-out loss is no better than the best, one evaluation (25
steps) past the optimum, as the network starts to memorise the noisy labels.""",
)
def mlp_healthy_early_stopping(spec: RunSpec) -> None:
    run(
        spec,
        replace(OVERTRAINING, early_stopping=True),
        Check("evaluations after the best", evals_after_best, high=1),
        Check("final eval - train loss", lambda m: m.final_eval_loss() - m.final_loss(), high=0.4),
    )


# Measured (seeds 0/1/2): evaluations after the best 14/14/14; final / best eval loss
# 1.31/1.34/1.33; final train loss 0.121/0.0933/0.0981; final eval accuracy 0.712/0.696/0.737.
@scenario(
    MLP,
    "overtraining",
    cause="DBG304",
    twin="healthy-early-stopping",
    accept=("DBG302",),
    description="""
healthy-adam with hidden layers of 256 units on 1024 training samples, 20 % of the labels
(train and held-out) random, trained 400 steps: the held-out loss reaches its minimum around
step 50, then rises for every evaluation after it while the network memorises the noisy
labels and the training loss keeps falling.""",
)
def mlp_overtraining(spec: RunSpec) -> None:
    run(
        spec,
        OVERTRAINING,
        Check("evaluations after the best", evals_after_best, low=10),
        Check("final / best eval loss", lambda m: m.final_eval_loss() / min(m.eval_loss), low=1.25),
    )


# Batches of one class: the loss jumps at every change of class.
LOSS_JUMPS = Check(
    "max / median train loss over steps 100-300",
    lambda m: float(np.max(m.loss[100:]) / np.median(m.loss[100:])),
    low=20.0,
)


# Measured (seeds 0/1/2): max / median train loss over steps 100-300 573/641/189; final train loss
# 2.05/1.07/2.96; final eval accuracy 0.213/0.243/0.268.
@scenario(
    MLP,
    "oscillating-loss",
    cause="DBG305",
    twin="healthy-sgd",
    description="""
healthy-sgd without shuffling, the training set sorted by class: every batch holds a single
class, the model swings to predicting the class of the moment and the loss jumps at every
change of class.""",
)
def mlp_oscillating_loss(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, batches=sorted_by_class),
        LOSS_JUMPS,
    )


# Measured (seeds 0/1/2): max / median train loss over steps 100-300 573/641/189; final eval
# accuracy 0.213/0.243/0.268 (the oscillating-loss run, seed for seed).
@scenario(
    MLP,
    "unshuffled-batches",
    cause="DBG605",
    twin="healthy-data",
    description="""
healthy-data without shuffling, the training set sorted by class: every batch holds a single
class (the oscillating-loss run, with its labels recorded).""",
)
def mlp_unshuffled_batches(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, batches=sorted_by_class),
        LOSS_JUMPS,
    )


# Measured (seeds 0/1/2): training steps in train mode 0/0/0; final eval accuracy
# 0.956/0.932/0.966 (dropout off, the model still learns: only the hook's note tells).
@scenario(
    MLP,
    "trained-in-eval-mode",
    cause="DBG802",
    twin="healthy-dropout-wd",
    description="""
healthy-dropout-wd whose model is put in eval mode before training and never back in training
mode (model.train() forgotten after an evaluation): dropout is off for the whole run.""",
)
def mlp_trained_in_eval_mode(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_SGD, model=mlp(dropout=0.2), optimizer=sgd(weight_decay=5e-4), eval_mode=True
    )
    run(
        spec,
        recipe,
        Check("training steps in train mode", lambda m: float(sum(m.train_mode)), high=0.0),
        Check("final eval accuracy", Measured.final_eval_accuracy, low=0.85),
    )


@scenario(
    MLP,
    "softmax-twice",
    cause="DBG307",
    twin="healthy-data",
    description="""
healthy-data whose model ends in nn.Softmax while the loss is still F.cross_entropy, which
applies log_softmax itself: the loss cannot fall below ln(1 + 3/e) = 0.74 and the model
learns slowly.""",
)
def mlp_softmax_twice(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, model=mlp(head=partial(nn.Softmax, dim=1))),
        Check("final train loss", Measured.final_loss, low=math.log(1 + 3 / math.e)),
    )


# Measured (seeds 0/1/2): final eval accuracy 0.729/0.481/0.739 (healthy-data
# 0.957/0.93/0.966).
@scenario(
    MLP,
    "relu-logits",
    cause="DBG308",
    twin="healthy-data",
    description="""
healthy-data whose model ends in a ReLU after the output layer (an nn.Sequential with a ReLU
after every Linear): the logits cannot go below zero, and a class whose logit sits at zero
passes no gradient.""",
)
def mlp_relu_logits(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, model=mlp(head=nn.ReLU)),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.9),
    )


# Measured (seeds 0/1/2): final train loss / ln 4 2.24/2.5/2.24; final eval accuracy
# 0.343/0.26/0.385 (healthy-adam 0.947/0.91/0.954).
# Measured (seeds 0/1/2): final train loss 2.95/2.99/2.90 (ln 16 = 2.77), final eval loss
# 5.70/5.79/5.68 (ln 256 = 5.55); final eval accuracy 0.956/0.932/0.964: the argmax is unharmed.
@scenario(
    MLP,
    "softmax-over-batch",
    cause="DBG309",
    twin="healthy-data",
    description="""
healthy-data whose model ends in nn.LogSoftmax(dim=0) (dim=1 meant) under nn.NLLLoss: each
class's log-probabilities are normalised over the 64 samples of a batch, so the loss cannot
fall below about ln(64 / 4) and the evaluation, over the whole held-out set at once, reads
far worse.""",
)
def mlp_softmax_over_batch(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, model=mlp(head=partial(nn.LogSoftmax, dim=0)), loss=nn.NLLLoss),
        Check("final train loss", Measured.final_loss, low=1.0),
    )


@scenario(
    MLP,
    "dropout-too-strong",
    cause="DBG804",
    twin="healthy-adam",
    description="""
healthy-adam with dropout 0.9 after each hidden ReLU (a keep probability passed as p): the
model trains on a tenth of its hidden units at a time and fits slowly.""",
)
def mlp_dropout_too_strong(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_ADAM, model=mlp(dropout=0.9)),
        Check("final train loss / ln 4", lambda m: m.final_loss() / math.log(CLASSES), low=0.5),
    )


# Measured (seeds 0/1/2): final eval accuracy 0.27/0.25/0.27 (healthy-batchnorm
# 0.954/0.933/0.961).
@scenario(
    MLP,
    "batchnorm-tiny-batch",
    cause="DBG806",
    twin="healthy-batchnorm",
    description="""
healthy-batchnorm at batch 2 (a batch lowered to fit memory), 1200 steps: each batch norm
normalises two samples, so every normalised value is -1 or +1, and evaluation normalises with
running statistics that training never saw.""",
)
def mlp_batchnorm_tiny_batch(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_BATCHNORM, batch=2, steps=1200),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.8),
    )


# Measured (seeds 0/1/2): the rate peaks at 0.63 of the optimizer's; final eval accuracy
# 0.949/0.912/0.955 (healthy-schedule 0.959/0.932/0.966): on this easy task the harm is small.
@scenario(
    MLP,
    "warmup-restarted",
    cause="DBG503",
    twin="healthy-schedule",
    description="""
healthy-schedule with its scheduler created at every epoch of 20 steps (inside the epoch
loop): the 30-step warmup starts again every epoch, so the rate never passes two thirds of
its peak and never decays.""",
)
def mlp_warmup_restarted(spec: RunSpec) -> None:
    recipe = replace(HEALTHY_SGD, optimizer=adamw(3e-3, 0.01), schedule=warmup_restarted, clip=1.0)
    run(spec, recipe, Check("peak lr / the optimizer's", lambda m: max(m.lr) / 3e-3, high=0.7))


# Measured (seeds 0/1/2): final train loss / ln 4 1.02/1.2/0.88; final eval accuracy
# 0.36/0.28/0.44 (healthy-adam 0.947/0.91/0.954).
@scenario(
    MLP,
    "adam-eps-too-large",
    cause="DBG805",
    twin="healthy-adam",
    description="""
healthy-adam with eps=1.0 (a setting copied from a setup that raised the learning rate with
it): eps outweighs the root of the gradients' second moment, so each step is about
lr x m / eps, SGD at a thousandth of Adam's rate.""",
)
def mlp_adam_eps_too_large(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_ADAM, optimizer=adam(eps=1.0)),
        Check("final train loss / ln 4", lambda m: m.final_loss() / math.log(CLASSES), low=0.8),
    )


# Measured (seeds 0/1/2): largest finite train loss / ln 4 7.4e25/1.3e5/1e33; final eval
# accuracy 0.27/0.25/0.24.
@scenario(
    MLP,
    "step-lr-rising",
    cause="DBG503",
    twin="healthy-sgd",
    description="""
healthy-sgd with StepLR(step_size=60, gamma=10), gamma meant as 0.1: the learning rate is
multiplied by 10 every 60 steps, 0.05 to 500, and the loss that fell at the first rates
blows up at a later one.""",
)
def mlp_step_lr_rising(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, schedule=step_lr_rising),
        Check(
            "largest finite train loss / ln 4",
            lambda m: (
                float(np.nanmax(np.where(np.isfinite(m.loss), m.loss, np.nan))) / math.log(CLASSES)
            ),
            low=10.0,
        ),
    )


# Measured (seeds 0/1/2): 99.7 % of the training losses NaN in each; final eval accuracy
# 0.27/0.24/0.24.
@scenario(
    MLP,
    "float16-adam",
    cause="DBG805",
    twin="healthy-adam",
    description="""
healthy-adam with the model in float16 (model.half(), input cast to float16 and logits back
to float32) and a plain Adam: its state is float16 too, eps=1e-8 is 0 there, and a gradient
element too small to square in float16 makes its update m / 0.""",
)
def mlp_float16_adam(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_ADAM, model=mlp(float16=True)),
        Check("non-finite train losses", lambda m: float(np.mean(~np.isfinite(m.loss))), low=0.5),
    )


@scenario(
    MLP,
    "weight-decay-too-strong",
    cause="DBG504",
    twin="healthy-sgd",
    description="""
healthy-sgd with weight_decay=0.5 (meant as 5e-4): with momentum 0.9 each step takes about
lr x 0.5 / (1 - 0.9) = 25 % off every weight, far more than the gradients give back; the
layers collapse within tens of steps and the loss stays at chance.""",
)
def mlp_weight_decay_too_strong(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, optimizer=sgd(weight_decay=0.5)),
        Check("final train loss / ln 4", lambda m: m.final_loss() / math.log(CLASSES), low=0.9),
    )


@scenario(
    MLP,
    "evaluated-in-train-mode",
    cause="DBG803",
    twin="healthy-dropout-wd",
    description="""
healthy-dropout-wd whose evaluations run under torch.no_grad() without model.eval(): dropout
stays on while the held-out set is scored.""",
)
def mlp_evaluated_in_train_mode(spec: RunSpec) -> None:
    recipe = replace(
        HEALTHY_SGD,
        model=mlp(dropout=0.2),
        optimizer=sgd(weight_decay=5e-4),
        eval_in_train_mode=True,
    )
    run(
        spec,
        recipe,
        Check(
            "evaluations in eval mode",
            lambda m: float(len(m.eval_train_mode) - sum(m.eval_train_mode)),
            high=0.0,
        ),
        Check("final eval accuracy", Measured.final_eval_accuracy, low=0.85),
    )


# Measured (seeds 0/1/2): final train loss 378/354/263; final eval accuracy 0.213/0.252/0.27.
@scenario(
    MLP,
    "zero-grad-forgotten",
    cause="DBG103",
    twin="healthy-sgd",
    description="""
healthy-sgd without optimizer.zero_grad(): every update follows the sum of all gradients so
far.""",
)
def mlp_zero_grad_forgotten(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, zero_grad=False),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.8),
    )


# Measured (seeds 0/1/2): first train loss inf/inf/inf; non-finite loss share 1/1/1; final eval
# accuracy 0.273/0.235/0.236.
@scenario(
    MLP,
    "non-finite-loss",
    cause="DBG306",
    twin="healthy-sgd",
    accept=("DBG404",),
    description="""
healthy-sgd with a hand-written cross-entropy, -log(softmax(z * 50))[label] (a temperature
multiplied instead of divided, and no log_softmax): the softmax of confidently wrong samples
underflows to 0, the loss becomes inf, backward turns the weights to NaN and the loss stays
NaN.""",
)
def mlp_non_finite_loss(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, loss=lambda: NaiveCrossEntropy(50.0)),
        Check("first train loss", lambda m: m.loss[0], low=math.inf),
        Check("non-finite loss share", Measured.nonfinite_loss_share, low=0.99),
    )


# Measured (seeds 0/1/2): max mean |input| of a batch 0/0/0; final train loss 1.39/1.39/1.39; final
# eval accuracy 0.213/0.243/0.27.
@scenario(
    MLP,
    "all-zero",
    cause="DBG401",
    twin="healthy-data",
    description="""
healthy-data whose features arrive as integers 0-254 and are scaled with integer division,
x // 255 for x / 255: every input (train and held-out) is exactly 0; inputs recorded.""",
)
def mlp_all_zero(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, data=tabular(encode=bytes_integer_divided)),
        Check("max mean |input| of a batch", lambda m: max(m.input_mean_abs), high=0.0),
    )


# Measured (seeds 0/1/2): max relative variance of fc2.weight 4.3e-08/5.01e-08/5.16e-08; final
# train loss 1.24/1.16/1.2; final eval accuracy 0.335/0.371/0.36.
@scenario(
    MLP,
    "tensor-variance",
    cause="DBG402",
    twin="healthy-sgd",
    accept=("DBG501",),
    description="""
healthy-sgd with every weight initialised to 0.05 + 1e-5 * N(0, 1) and biases 0 (a constant
init with a jitter far too small to break the symmetry): the units of each layer compute
nearly the same value and get nearly the same gradient, and fc2's weights stay near-constant
(relative variance var / (mean² + var) below 1e-6) all run.""",
)
def mlp_tensor_variance(spec: RunSpec) -> None:
    # Every layer, not fc2 alone: with random neighbours a constant layer's rows get different
    # gradients and differentiate within a few steps; the symmetry holds only across the net.
    run(
        spec,
        replace(HEALTHY_SGD, model=mlp(init=constant_init(0.05, 1e-5))),
        Check(
            "max relative variance of fc2.weight",
            lambda m: max(m.relative_variance["fc2.weight"]),
            high=1e-6,
        ),
    )


# Measured (seeds 0/1/2): max update ratio of fc2.weight 0/0/0; median |grad fc2.weight|
# 18/18.5/16.5; final train loss 0.131/0.185/0.0865; final eval accuracy 0.955/0.923/0.957.
@scenario(
    MLP,
    "unchanged-tensor",
    cause="DBG403",
    twin="healthy-sgd",
    description="""
healthy-sgd with fc2's parameters left out of the optimizer (requires_grad still True): they
get gradients every step but never change (and optimizer.zero_grad() never clears their
.grad, which accumulates).""",
)
def mlp_unchanged_tensor(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, optimizer=sgd(skip="fc2")),
        Check(
            "max update ratio of fc2.weight", lambda m: max(m.update_ratio["fc2.weight"]), high=0.0
        ),
        Check(
            "median |grad fc2.weight|",
            lambda m: float(np.median(m.grad_norm["fc2.weight"])),
            low=1e-3,
        ),
    )


# Measured (seeds 0/1/2): max non-finite share of a batch's inputs 0.00391/0.00391/0.00391; first
# non-finite loss step 0/4/0; final eval accuracy 0.273/0.235/0.236.
@scenario(
    MLP,
    "non-finite-tensor",
    cause="DBG404",
    twin="healthy-data",
    accept=("DBG306",),
    description="""
healthy-data where 1 % of the rows (train and held-out) miss one feature (NaN), standardised
with NaN-skipping statistics and not imputed: the first batch holding such a row makes the
loss, the gradients and then every weight NaN; inputs recorded.""",
)
def mlp_non_finite_tensor(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, data=tabular(encode=missing_values(0.01))),
        Check(
            "max non-finite share of a batch's inputs", lambda m: max(m.input_nonfinite), low=1e-4
        ),
        Check("first non-finite loss step", Measured.first_nonfinite_loss, low=0),
    )


# Measured (seeds 0/1/2): max relative variance of fc2.weight 0/0/0; final train loss
# 1.24/1.16/1.2; final eval accuracy 0.335/0.371/0.36.
@scenario(
    MLP,
    "poor-init-constant",
    cause="DBG501",
    twin="healthy-sgd",
    description="""
healthy-sgd with every weight initialised to exactly 0.05 and every bias to 0: the units of
a layer are identical, get identical gradients and stay identical.""",
)
def mlp_poor_init_constant(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, model=mlp(init=constant_init(0.05))),
        Check(
            "max relative variance of fc2.weight",
            lambda m: max(m.relative_variance["fc2.weight"]),
            high=1e-12,
        ),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.6),
    )


# Measured (seeds 0/1/2): first train loss 513/333/659; final train loss 1.13/1.02/1.14; final eval
# accuracy 0.439/0.549/0.529.
@scenario(
    MLP,
    "poor-init-large",
    cause="DBG501",
    twin="healthy-sgd",
    description="""
healthy-sgd with hidden layers of 256 units whose weights come from torch.randn unscaled
(std 1 instead of He's sqrt(2 / fan_in)): the logits start in the hundreds and SGD never
recovers a working model.""",
)
def mlp_poor_init_large(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, model=mlp((256, 256), init=unscaled_normal_init)),
        Check("first train loss", lambda m: m.loss[0], low=20.0),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.7),
    )


# Measured (seeds 0/1/2): max update ratio of fc2, first 25 steps 0.568/0.561/0.566; max update
# ratio of fc1, first 25 steps 0.0028/0.00281/0.00291; median update ratio fc2 / fc1 17/14.8/15;
# final train loss 0.182/0.218/0.1; final eval accuracy 0.952/0.916/0.95.
@scenario(
    MLP,
    "update-ratio",
    cause="DBG502",
    twin="healthy-adam",
    description="""
healthy-adam with fc2 in a parameter group of its own at 100x the lr (0.1 against 1e-3):
only fc2's updates are far too large for its weights.""",
)
def mlp_update_ratio(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_ADAM, optimizer=layer_lr("fc2", 100.0)),
        Check("max update ratio of fc2, first 25 steps", early_update_ratio("fc2.weight"), low=0.3),
        Check(
            "max update ratio of fc1, first 25 steps", early_update_ratio("fc1.weight"), high=0.05
        ),
        Check(
            "median update ratio fc2 / fc1",
            lambda m: float(
                np.median(m.update_ratio["fc2.weight"]) / np.median(m.update_ratio["fc1.weight"])
            ),
            low=10.0,
        ),
    )


def early_update_ratio(weight: str | None = None) -> Callable[[Measured], float]:
    """The largest update ratio of the first 25 steps (of ``weight``, or of any weight)."""

    def measure(m: Measured) -> float:
        names = [weight] if weight else list(m.update_ratio)
        return max(max(m.update_ratio[name][:25]) for name in names)

    return measure


# Measured (seeds 0/1/2): max update ratio of the first 25 steps 1.56/1.03/1.31; final train loss
# 1.42/1.42/1.41; final eval accuracy 0.273/0.252/0.249.
@scenario(
    MLP,
    "lr-too-high",
    cause="DBG503",
    twin="healthy-sgd",
    quick=True,
    description="""
healthy-sgd at lr 1.0, 20x the twin's (momentum 0.9): the first updates move the weights by
a large fraction of their norm, the loss jumps around and the model ends at chance.""",
)
def mlp_lr_too_high(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, optimizer=sgd(1.0)),
        Check("max update ratio of the first 25 steps", early_update_ratio(), low=0.2),
        Check("final eval loss", Measured.final_eval_loss, low=1.3),
    )


# Measured (seeds 0/1/2): max update ratio of the first 25 steps 0.6/0.561/0.567; final train loss
# 0.329/0.414/0.467; final eval accuracy 0.918/0.765/0.818.
@scenario(
    MLP,
    "lr-too-high-adam",
    cause="DBG503",
    twin="healthy-adam",
    description="""
healthy-adam at lr 0.1, 100x the twin's: Adam's first steps move every weight by about 0.1,
a large fraction of its size, and the loss stays noisy and well above the twin's.""",
)
def mlp_lr_too_high_adam(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_ADAM, optimizer=adam(0.1)),
        Check("max update ratio of the first 25 steps", early_update_ratio(), low=0.3),
        Check("final eval loss", Measured.final_eval_loss, low=0.3),
    )


# Measured (seeds 0/1/2): max update ratio 6.01e-05/6.14e-05/7.87e-05; final / first eval loss
# 0.937/0.939/0.895; final train loss 1.83/2.12/1.68; final eval accuracy 0.256/0.213/0.255.
@scenario(
    MLP,
    "lr-too-low",
    cause="DBG503",
    twin="healthy-sgd",
    description="""
healthy-sgd at lr 1e-5, 5000x below the twin's: the weights barely move and the loss stays
near its initial value.""",
)
def mlp_lr_too_low(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, optimizer=sgd(1e-5)),
        Check(
            "max update ratio", lambda m: max(max(v) for v in m.update_ratio.values()), high=1e-3
        ),
        Check("final / first eval loss", lambda m: m.final_eval_loss() / m.eval_loss[0], low=0.85),
    )


# Measured (seeds 0/1/2): final / first eval loss 0.986/0.987/0.981; final eval accuracy
# 0.249/0.203/0.237.
@scenario(
    MLP,
    "clip-too-tight",
    cause="DBG503",
    twin="healthy-sgd",
    description="""
healthy-sgd with clip_grad_norm_(max_norm=1e-4) before every step (meant as 1.0): the
gradients' total norm is cut to 1e-4 at every step, so the updates are thousands of times
smaller than the twin's at the same learning rate, and the loss stays near its start.""",
)
def mlp_clip_too_tight(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_SGD, clip=1e-4),
        Check("final / first eval loss", lambda m: m.final_eval_loss() / m.eval_loss[0], low=0.85),
    )


# Measured (seeds 0/1/2): share of class 0 in the training batches 0.95/0.949/0.952; mean recall of
# classes 1-3 0.866/0.468/0.66; final train loss 0.0402/0.054/0.0336; final eval accuracy
# 0.986/0.966/0.981.
@scenario(
    MLP,
    "class-imbalance",
    cause="DBG601",
    twin="healthy-data",
    description="""
healthy-data with 95 % of the samples in class 0 and 5 % spread over the other three;
inputs, labels and predictions recorded.""",
)
def mlp_class_imbalance(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, data=tabular(shares=(0.95, 0.05 / 3, 0.05 / 3, 0.05 / 3))),
        Check(
            "share of class 0 in the training batches",
            lambda m: m.label_share(0),
            low=0.9,
        ),
        Check(
            "mean recall of classes 1-3", lambda m: float(np.mean([m.recall(c) for c in (1, 2, 3)]))
        ),
    )


# Measured (seeds 0/1/2): min mean |input| of a batch 115/126/103; final train loss 1.39/1.39/1.39;
# final eval accuracy 0.214/0.243/0.27.
@scenario(
    MLP,
    "input-not-normalized",
    cause="DBG602",
    twin="healthy-data",
    description="""
healthy-data fed the raw features: integers on a 0-255 scale, each with its own offset
(60-190) and gain, not standardised; inputs recorded.""",
)
def mlp_input_not_normalized(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, data=tabular(encode=raw_bytes)),
        Check("min mean |input| of a batch", lambda m: min(m.input_mean_abs), low=50.0),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.4),
    )


# Measured (seeds 0/1/2): mean recall of classes 2 and 3 0.476/0.471/0.465; mean recall of classes
# 0 and 1 0.928/0.953/0.958; final train loss 0.462/0.459/0.444; final eval accuracy
# 0.698/0.694/0.703.
@scenario(
    MLP,
    "classifier-confusion",
    cause="DBG604",
    twin="healthy-data",
    description="""
healthy-data where classes 2 and 3 have identical input distributions (the same blobs): the
model cannot tell them apart and confuses them about half of the time; labels and predictions
recorded.""",
)
def mlp_classifier_confusion(spec: RunSpec) -> None:
    run(
        spec,
        replace(HEALTHY_DATA, data=tabular(twin_classes=True)),
        Check(
            "mean recall of classes 2 and 3", lambda m: (m.recall(2) + m.recall(3)) / 2, high=0.65
        ),
        Check(
            "mean recall of classes 0 and 1", lambda m: (m.recall(0) + m.recall(1)) / 2, low=0.85
        ),
    )


# Measured (seeds 0/1/2): final train loss 0.141/0.178/0.0798; final eval loss 0.142/0.225/0.115;
# final eval accuracy 0.957/0.93/0.966. Both traces' timelines: a 1200 s gap between steps 159 and
# 160 (median gap 2.3 ms), in all three seeds.
@scenario(
    MLP,
    "stalled-training",
    cause="DBG801",
    twin="healthy-sgd",
    description="""
healthy-sgd with a simulated hang: from step 160 on, the wall clock both writers read
(time.time, patched for the run) is 20 minutes ahead, as if step 160 had waited 20 minutes on
a stuck data loader; training is otherwise the twin's, step for step.""",
)
def mlp_stalled_training(spec: RunSpec) -> None:
    # Between two training steps: a gap next to an evaluation would read as a long evaluation.
    run(spec, replace(HEALTHY_SGD, stall_at=160), *healthy())


# -- torch-cnn ----------------------------------------------------------------------------------

CNN = "torch-cnn"
# lr 0.02: at 0.05 the first updates moved the layers by 12 % of their weights per step, the
# loss rose from 6.3 to 9 before falling, and 70-95 % of conv2's channels died within ten
# steps: a run that ends accurate is not a healthy twin for that.
CNN_SGD = Recipe(data=images, model=cnn(), optimizer=sgd(0.02), steps=200, batch=32)


# Measured (seeds 0/1/2): final train loss 0.11/0.0781/0.101; final eval loss 0.0542/0.081/0.109;
# final eval accuracy 0.984/0.973/0.955.
@scenario(
    CNN,
    "healthy-sgd",
    cause=None,
    description="""
conv8-ReLU-conv16-ReLU-global max pool-linear (He init) on 1x12x12 images, each a class's
4x4 pattern of ±1 at a random place plus noise (standardised); SGD momentum 0.9, lr 0.02,
batch 32, 200 steps.""",
)
def cnn_healthy_sgd(spec: RunSpec) -> None:
    run(
        spec,
        CNN_SGD,
        *healthy(),
        Check("act1 dead share", dead_share("act1"), high=0.5),
        Check("act2 dead share", dead_share("act2"), high=0.5),
    )


# Measured (seeds 0/1/2): final train loss 0.258/0.173/0.093; final eval loss 0.233/0.166/0.106;
# final eval accuracy 0.977/0.99/0.996.
@scenario(
    CNN,
    "healthy-batchnorm-adam",
    cause=None,
    description="""
healthy-sgd with BatchNorm2d after each convolution, trained with Adam lr 1e-3.""",
)
def cnn_healthy_batchnorm_adam(spec: RunSpec) -> None:
    run(spec, replace(CNN_SGD, model=cnn(batchnorm=True), optimizer=adam(1e-3)), *healthy())


# Measured (seeds 0/1/2): max update ratio of the first 25 steps 6.19/3.34/2.58; final train loss
# 1.42/1.42/1.42; final eval accuracy 0.252/0.242/0.24.
@scenario(
    CNN,
    "lr-too-high",
    cause="DBG503",
    twin="healthy-sgd",
    description="""
healthy-sgd at lr 0.5, 25x the twin's.""",
)
def cnn_lr_too_high(spec: RunSpec) -> None:
    run(
        spec,
        replace(CNN_SGD, optimizer=sgd(0.5)),
        Check("max update ratio of the first 25 steps", early_update_ratio(), low=0.2),
        Check("final eval loss", Measured.final_eval_loss, low=1.0),
    )


# Measured (seeds 0/1/2): act1 dead share 0.111/0.203/0.124; act2 dead share 1/1/1; final train
# loss 1.39/1.39/1.39; final eval accuracy 0.23/0.26/0.277.
@scenario(
    CNN,
    "dying-relu",
    cause="DBG201",
    twin="healthy-sgd",
    description="""
healthy-sgd with both convolutions' biases initialised to -5: conv2's channels output 0 at
every position of every image from the first step on and never recover (conv1's fire at a
few positions), so the model cannot learn.""",
)
def cnn_dying_relu(spec: RunSpec) -> None:
    run(
        spec,
        replace(CNN_SGD, model=cnn(hidden_bias(-5.0))),
        Check("act1 dead share", dead_share("act1")),
        Check("act2 dead share", dead_share("act2"), low=0.9),
        Check("final eval accuracy", Measured.final_eval_accuracy, high=0.4),
    )


# Measured (seeds 0/1/2): final train loss 0.321/0.195/0.192; final eval loss 0.263/0.147/0.171;
# final eval accuracy 0.988/0.994/0.988.
@scenario(
    CNN,
    "healthy-resnet-onecycle",
    cause=None,
    description="""
A small ResNet (conv-BN-ReLU stem of 16 channels, two basic blocks of conv-BN-ReLU-conv-BN
plus identity, global average pooling, bias-free convolutions, torchvision's init) on
healthy-sgd's images; AdamW lr 3e-3, weight decay 0.05, OneCycleLR, batch 32, 200 steps.""",
)
def cnn_healthy_resnet_onecycle(spec: RunSpec) -> None:
    recipe = replace(CNN_SGD, model=resnet(), optimizer=adamw(3e-3, 0.05), schedule=one_cycle)
    run(spec, recipe, *healthy())


# -- torch-vit ----------------------------------------------------------------------------------

VIT = "torch-vit"


# Measured (seeds 0/1/2): final train loss 0.218/0.165/0.147; final eval loss 0.218/0.169/0.227;
# final eval accuracy 0.916/0.941/0.924.
@scenario(
    VIT,
    "healthy",
    cause=None,
    description="""
A tiny vision transformer (dim 32, 2 pre-norm blocks of 2 heads) on torch-cnn's 1x12x12
images: 4x4 patches at stride 2, a cls_token and a positional table pos_embed both
initialised to zero, LayerScale gamma 0.1 on every residual branch; AdamW lr 3e-3, weight
decay 0.05, 10 % warmup then linear decay to 0, clip_grad_norm_ 1.0, batch 64, 200 steps.""",
)
def vit_healthy(spec: RunSpec) -> None:
    recipe = Recipe(
        data=images,
        model=TinyViT,
        optimizer=adamw(3e-3, 0.05),
        steps=200,
        schedule=warmup_linear,
        clip=1.0,
    )
    run(spec, recipe, *healthy())
