"""Record the sample traces in ``sample_traces/`` from real, small training runs.

Every trace comes from an actual PyTorch or XGBoost run on synthetic data, recorded with the
dbg hooks (:func:`dbgcli.torch._hook.attach`, :class:`dbgcli.xgboost.DbgCallback`). The runs
are deterministic: fixed seeds, ``torch.use_deterministic_algorithms(True)`` and one CPU
thread, so the same command writes the same values on the same machine (wall-clock times in
the trace differ). All of them take a few minutes on a laptop CPU:

    python examples/record_samples.py                     # every scenario into sample_traces/
    python examples/record_samples.py --only dying_relu   # one of them
    python examples/record_samples.py --out /tmp/traces   # elsewhere

Scenarios (trace ``torch_<name>.h5`` or ``xgboost_<name>.h5``):

healthy             ReLU MLP on a 4-class blob problem, SGD with momentum: learns cleanly.
vanishing_gradient  Six sigmoid layers of 16: the first layers' gradients are far below the last's.
exploding           The healthy network with SGD at lr 8: the loss and weights blow up to inf/NaN.
dying_relu          Hidden biases initialised to -10: nearly every ReLU is off from step 0.
tanh_saturation     Weights into the tanh layer drawn with std 100: |pre-activations| >> 3.
constant_init       Every weight 0.05 and every bias 0: units of a layer stay identical.
overfit             24 training examples of overlapping classes, 64 hidden units, Adam for 300
                    steps: the eval loss rises while the training loss falls.
class_imbalance     Binary task with 95 % of labels 0; labels and predictions recorded.
unnormalized_input  Inputs multiplied by 100 (Adam still trains); inputs recorded.
greedy_lr           The healthy network trained with GreedyLR (dbgcli.torch.GreedyLR, factor 0.8,
                    patience 3) stepped on every training loss: ``dbg lr`` replays it exactly.
deep_trees          XGBoost, max_depth 20, on data where one feature encodes the label through
                    many ranges and the others are rare binary flags.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import xgboost as xgb
from torch import nn

from dbgcli.torch import GreedyLR, TorchHook, attach
from dbgcli.xgboost import DbgCallback

SEED = 0
FEATURES, CLASSES, BATCH = 16, 4, 64
RAW_EVERY = 50
EVAL_EVERY = 25


def blobs(
    rng: np.random.Generator,
    n: int,
    *,
    spread: float = 2.5,
    noise: float = 1.0,
    classes: int = CLASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: one centre per class, isotropic noise."""
    centres = rng.normal(0.0, spread, size=(classes, FEATURES))
    labels = rng.integers(0, classes, size=n)
    inputs = centres[labels] + rng.normal(0.0, noise, size=(n, FEATURES))
    return inputs.astype(np.float32), labels


def mlp(
    widths: list[int], activation: Callable[[], nn.Module], classes: int = CLASSES
) -> nn.Sequential:
    """``fc1, act1, fc2, act2, ..., out`` with the given hidden widths."""
    layers: list[tuple[str, nn.Module]] = []
    fan_in = FEATURES
    for index, width in enumerate(widths, start=1):
        layers += [(f"fc{index}", nn.Linear(fan_in, width)), (f"act{index}", activation())]
        fan_in = width
    layers.append(("out", nn.Linear(fan_in, classes)))
    return nn.Sequential(OrderedDict(layers))


def train(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[np.ndarray, np.ndarray],
    *,
    steps: int,
    scenario: str,
    hyperparameters: dict[str, object],
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    batch: int = BATCH,
    raw_every: int = RAW_EVERY,
    record_data: bool = False,
    exclude: list[str] | None = None,
    scheduler: GreedyLR | None = None,
) -> None:
    """Minibatch training with the dbg hook; evaluation every EVAL_EVERY steps if ``valid``.

    A ``scheduler`` is stepped with each training loss after the optimizer step, as in the
    GreedyLR authors' Trainer; the hook records the learning rate each step used.
    """
    generator = torch.Generator().manual_seed(SEED)
    x_all, y_all = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    metadata = {"scenario": scenario, "script": "examples/record_samples.py"}
    with attach(
        model,
        optimizer,
        path,
        raw_every=raw_every,
        stats_every=1,  # the samples show every step; the default records every 10th
        overwrite=True,
        exclude=exclude,
        hyperparameters={**hyperparameters, "batch_size": batch, "steps": steps, "seed": SEED},
        metadata=metadata,
    ) as hook:
        order = torch.randperm(len(x_all), generator=generator)
        cursor = 0
        for step in range(steps):
            if cursor + batch > len(order):
                order, cursor = torch.randperm(len(x_all), generator=generator), 0
            index = order[cursor : cursor + batch]
            cursor += batch
            x, y = x_all[index], y_all[index]
            optimizer.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            hook.record_loss(loss)
            if record_data:
                # Full tensors every 10 steps: the data rules want several hundred samples.
                probabilities = logits.detach().softmax(-1)
                hook.record(labels=y, predictions=probabilities, inputs=x, raw=step % 10 == 0)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step(loss.item())
            if valid is not None and (step + 1) % EVAL_EVERY == 0:
                evaluate(model, hook, valid)


def evaluate(model: nn.Module, hook: TorchHook, valid: tuple[np.ndarray, np.ndarray]) -> None:
    model.eval()
    with torch.no_grad():
        x, y = torch.from_numpy(valid[0]), torch.from_numpy(valid[1])
        hook.record_loss(nn.functional.cross_entropy(model(x), y), mode="eval")
    model.train()


def split(
    data: tuple[np.ndarray, np.ndarray], n_train: int
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    x, y = data
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


# -- scenarios ----------------------------------------------------------------------------------
def healthy(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    # Overlapping classes: the loss settles well above 0 instead of vanishing with the gradients.
    train_set, valid = split(blobs(rng, 1024 + BATCH, spread=1.0), 1024)
    model = mlp([32], nn.ReLU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hyper = {"lr": 0.05, "momentum": 0.9, "optimizer": "sgd", "widths": [32]}
    train(
        path,
        model,
        optimizer,
        train_set,
        steps=200,
        scenario="healthy",
        hyperparameters=hyper,
        valid=valid,
    )


def vanishing_gradient(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    train_set, _ = split(blobs(rng, 1280), 1024)
    widths = [16] * 6
    model = mlp(widths, nn.Sigmoid)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hyper = {"lr": 0.1, "optimizer": "sgd", "widths": widths, "activation": "sigmoid"}
    # Biases and pre-activations add little to this story and much to the file size.
    train(
        path,
        model,
        optimizer,
        train_set,
        steps=120,
        scenario="vanishing_gradient",
        hyperparameters=hyper,
        exclude=["*.bias", "preact/*"],
    )


def exploding(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    train_set, _ = split(blobs(rng, 1280), 1024)
    model = mlp([32], nn.ReLU)
    optimizer = torch.optim.SGD(model.parameters(), lr=8.0, momentum=0.9)
    hyper = {"lr": 8.0, "momentum": 0.9, "optimizer": "sgd", "widths": [32]}
    train(path, model, optimizer, train_set, steps=60, scenario="exploding", hyperparameters=hyper)


def dying_relu(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    train_set, _ = split(blobs(rng, 1280), 1024)
    model = mlp([32], nn.ReLU)
    with torch.no_grad():
        model.fc1.bias.fill_(-10.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hyper = {"lr": 0.05, "momentum": 0.9, "optimizer": "sgd", "hidden_bias_init": -10.0}
    train(
        path, model, optimizer, train_set, steps=150, scenario="dying_relu", hyperparameters=hyper
    )


def tanh_saturation(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    train_set, _ = split(blobs(rng, 1280), 1024)
    model = mlp([32], nn.Tanh)
    with torch.no_grad():
        model.fc1.weight.normal_(0.0, 100.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hyper = {"lr": 0.05, "momentum": 0.9, "optimizer": "sgd", "hidden_weight_std": 100.0}
    train(
        path,
        model,
        optimizer,
        train_set,
        steps=150,
        scenario="tanh_saturation",
        hyperparameters=hyper,
    )


def constant_init(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    train_set, _ = split(blobs(rng, 1280), 1024)
    model = mlp([32], nn.ReLU)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(0.05 if name.endswith("weight") else 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hyper = {"lr": 0.05, "momentum": 0.9, "optimizer": "sgd", "weight_init": "constant 0.05"}
    train(
        path,
        model,
        optimizer,
        train_set,
        steps=150,
        scenario="constant_init",
        hyperparameters=hyper,
    )


def overfit(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    # Classes overlap (noise > spread): 24 examples can be memorised but do not generalise.
    train_set, valid = split(blobs(rng, 24 + BATCH, spread=1.0, noise=2.0), 24)
    model = mlp([64], nn.ReLU)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    hyper = {"lr": 3e-3, "optimizer": "adam", "widths": [64], "train_examples": 24}
    train(
        path,
        model,
        optimizer,
        train_set,
        steps=300,
        scenario="overfit",
        hyperparameters=hyper,
        valid=valid,
        batch=24,
        raw_every=100,
    )


def class_imbalance(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    n = 1280
    labels = (rng.random(n) < 0.05).astype(np.int64)
    inputs = rng.normal(0.0, 1.0, size=(n, FEATURES)).astype(np.float32)
    inputs[:, 0] += 1.5 * labels  # the rare class is only slightly separable
    model = mlp([32], nn.ReLU, classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hyper = {"lr": 0.05, "momentum": 0.9, "optimizer": "sgd", "positive_share": 0.05}
    train(
        path,
        model,
        optimizer,
        (inputs, labels),
        steps=150,
        scenario="class_imbalance",
        hyperparameters=hyper,
        record_data=True,
    )


def unnormalized_input(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    inputs, labels = blobs(rng, 1024)
    model = mlp([32], nn.ReLU)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    hyper = {"lr": 1e-3, "optimizer": "adam", "input_scale": 100.0}
    train(
        path,
        model,
        optimizer,
        (inputs * 100.0, labels),
        steps=150,
        scenario="unnormalized_input",
        hyperparameters=hyper,
        record_data=True,
    )


def greedy_lr(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    train_set, valid = split(blobs(rng, 1024 + BATCH, spread=1.0), 1024)
    model = mlp([32], nn.ReLU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    settings = {"factor": 0.8, "patience": 3, "min_lr": 1e-3, "max_lr": 0.5}
    hyper = {"lr": 0.05, "optimizer": "sgd", "widths": [32], "scheduler": "GreedyLR", **settings}
    train(
        path,
        model,
        optimizer,
        train_set,
        steps=200,
        scenario="greedy_lr",
        hyperparameters=hyper,
        valid=valid,
        scheduler=GreedyLR(optimizer, **settings),
    )


def deep_trees(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    n, features = 2000, 8
    # x0 encodes the label through many ranges (as a leaked id column would); the other seven
    # features are rare binary flags. Trees up to depth 20 chase the ranges of x0.
    x = rng.normal(size=(n, features)).astype(np.float32)
    x[:, 1:] = rng.random(size=(n, features - 1)) < 0.1
    y = (np.floor(x[:, 0] * 4) % 2).astype(np.float32)
    names = [f"x{i}" for i in range(features)]
    dtrain = xgb.DMatrix(x[:1600], label=y[:1600], feature_names=names)
    dvalid = xgb.DMatrix(x[1600:], label=y[1600:], feature_names=names)
    params = {
        "objective": "binary:logistic",
        "eval_metric": ["logloss", "error"],
        "max_depth": 20,
        "eta": 0.3,
        "seed": SEED,
        "nthread": 1,
    }
    callback = DbgCallback(
        path,
        data=dtrain,
        raw_every=RAW_EVERY,
        overwrite=True,
        hyperparameters=params,
        metadata={"scenario": "deep_trees", "script": "examples/record_samples.py"},
    )
    xgb.train(
        params,
        dtrain,
        num_boost_round=60,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        callbacks=[callback],
        verbose_eval=False,
    )


SCENARIOS: dict[str, Callable[[Path], None]] = {
    "torch_healthy": healthy,
    "torch_vanishing_gradient": vanishing_gradient,
    "torch_exploding": exploding,
    "torch_dying_relu": dying_relu,
    "torch_tanh_saturation": tanh_saturation,
    "torch_constant_init": constant_init,
    "torch_overfit": overfit,
    "torch_class_imbalance": class_imbalance,
    "torch_unnormalized_input": unnormalized_input,
    "torch_greedy_lr": greedy_lr,
    "xgboost_deep_trees": deep_trees,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("sample_traces"), help="folder to write into"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="scenario names, with or without the torch_/xgboost_ prefix",
    )
    args = parser.parse_args()
    wanted = SCENARIOS
    if args.only:
        wanted = {
            name: run
            for name, run in SCENARIOS.items()
            if name in args.only or name.split("_", 1)[1] in args.only
        }
        unknown = set(args.only) - {n for name in wanted for n in (name, name.split("_", 1)[1])}
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, run in wanted.items():
        torch.manual_seed(SEED)
        path = args.out / f"{name}.h5"
        start = time.perf_counter()
        run(path)
        size = path.stat().st_size
        print(f"{path}  {size / 1e3:7.0f} kB  {time.perf_counter() - start:5.1f} s")


if __name__ == "__main__":
    main()
