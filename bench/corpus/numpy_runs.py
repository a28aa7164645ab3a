"""numpy runs of the calibration corpus: a 2x64 ReLU MLP with hand-written backprop.

The network and data are those of ``examples/numpy_mlp.py`` (four Gaussian blobs in eight
features, here standardised; He initialisation; plain SGD on batches of 64 for 300 steps). Both traces are written
with :class:`dbgcli.TraceWriter` in the same loop: the hook trace under dbg's own documented
names (``loss``, ``fc1.weight``, ``grad/fc1.weight``, ``act/relu1``, ``inputs``...), the hand
trace under the run's naming convention (:class:`common.HandRecorder` without a model).

Each scenario checks, in the training loop, that it is what it claims (dead-unit shares from
the activations, update/weight norm ratios, losses), writes the figures to
``seed<k>.measured.json`` beside the traces and fails if a check does not hold. The figures
in the comments above each scenario are those measured for seeds 0, 1 and 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from common import HandRecorder, RunSpec, scenario, seed_everything

from dbgcli import TraceWriter

FAMILY = "numpy-mlp"
SIZES = (8, 64, 64, 4)
BATCH, STEPS, EVAL_EVERY = 64, 300, 25


@dataclass(frozen=True)
class Setup:
    """The settings a scenario changes."""

    lr: float = 0.05
    hidden_bias: float = 0.0


@dataclass
class Measured:
    """Per training step unless said otherwise."""

    loss: list[float] = field(default_factory=list)
    # Share of a hidden layer's units with no positive output in the batch.
    dead: dict[int, list[float]] = field(default_factory=dict)
    # max over weights of ||w_after - w_before|| / ||w_before||.
    update_ratio: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)

    def final_loss(self) -> float:
        return float(np.mean(self.loss[-10:]))


def blobs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(0.0, 2.5, size=(SIZES[-1], SIZES[0]))
    labels = rng.integers(0, SIZES[-1], size=n)
    inputs = centres[labels] + rng.normal(0.0, 1.0, size=(n, SIZES[0]))
    return inputs.astype(np.float32), labels


def softmax_cross_entropy(
    logits: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Loss, gradient of the loss with respect to the logits, probabilities."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        loss = float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())
    grad = probs.copy()
    grad[np.arange(len(labels)), labels] -= 1.0
    return loss, grad / len(labels), probs


class Network:
    """``fc1, relu, fc2, relu, out`` as plain arrays."""

    def __init__(self, rng: np.random.Generator, hidden_bias: float) -> None:
        self.params: dict[str, np.ndarray] = {}
        layers = len(SIZES) - 1
        for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:]), start=1):
            name = f"fc{i}" if i < layers else "out"
            self.params[f"{name}.weight"] = rng.normal(
                0.0, np.sqrt(2.0 / fan_in), size=(fan_out, fan_in)
            ).astype(np.float32)
            bias = hidden_bias if i < layers else 0.0
            self.params[f"{name}.bias"] = np.full(fan_out, bias, dtype=np.float32)
        self.names = [n.removesuffix(".weight") for n in self.params if n.endswith(".weight")]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Logits, pre-activations of the hidden layers, inputs of every layer."""
        pre, inputs = [], []
        h = x
        for index, name in enumerate(self.names):
            inputs.append(h)
            with np.errstate(over="ignore", invalid="ignore"):
                z = h @ self.params[f"{name}.weight"].T + self.params[f"{name}.bias"]
            if index < len(self.names) - 1:
                pre.append(z)
                h = np.maximum(z, 0.0)
            else:
                h = z
        return h, pre, inputs

    def backward(
        self, grad: np.ndarray, pre: list[np.ndarray], inputs: list[np.ndarray]
    ) -> dict[str, np.ndarray]:
        grads: dict[str, np.ndarray] = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for index in range(len(self.names) - 1, -1, -1):
                name = self.names[index]
                grads[f"{name}.weight"] = grad.T @ inputs[index]
                grads[f"{name}.bias"] = grad.sum(axis=0)
                if index > 0:
                    grad = (grad @ self.params[f"{name}.weight"]) * (pre[index - 1] > 0)
        return grads


class Recorders:
    """The two traces of a run: dbg's names (hook) and the run's naming convention (hand)."""

    def __init__(self, spec: RunSpec, setup: Setup) -> None:
        hyper = {"lr": setup.lr, "batch_size": BATCH, "layers": list(SIZES), "optimizer": "sgd"}
        self.dbg = TraceWriter(
            spec.hook_path, overwrite=True, raw_every=50, hyperparameters=hyper, framework="numpy"
        )
        self.hand = HandRecorder(spec)
        self.hand.writer.set_metadata(hyperparameters=hyper)

    def step(
        self,
        step: int,
        *,
        loss: float,
        accuracy: float,
        lr: float,
        params: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        activations: list[np.ndarray],
        data: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        dbg, hand, names = self.dbg, self.hand, self.hand.names
        hand.step = step
        dbg.add_scalar("loss", loss, step)
        dbg.add_scalar("accuracy", accuracy, step)
        dbg.add_scalar("lr", lr, step)
        hand.loss(loss)
        hand.accuracy(accuracy)
        hand.lr(lr)
        for name, value in params.items():
            dbg.add_tensor(
                name, value, step, collection="biases" if name.endswith("bias") else "weights"
            )
            dbg.add_tensor(f"grad/{name}", grads[name], step, collection="gradients")
            tag, collection = names.parameter(name)
            hand.writer.add_tensor(tag, value, step, collection=collection)
            tag, collection = names.gradient(name)
            hand.writer.add_tensor(tag, grads[name], step, collection=collection)
        for index, value in enumerate(activations, start=1):
            dbg.add_tensor(f"act/relu{index}", value, step, collection="activations", kind="relu")
            tag, collection, kind = names.activation(f"relu{index}", "relu")
            hand.writer.add_tensor(tag, value, step, collection=collection, kind=kind)
        x, y, probs = data
        dbg.add_tensor("inputs", x, step, collection="inputs")
        dbg.add_tensor("labels", y, step, collection="labels")
        dbg.add_tensor("predictions", probs, step, collection="predictions")
        hand.data(inputs=x, labels=y, predictions=probs)

    def evaluation(self, step: int, loss: float, accuracy: float) -> None:
        self.dbg.add_scalar("loss", loss, step, mode="eval")
        self.dbg.add_scalar("accuracy", accuracy, step, mode="eval")
        self.hand.loss(loss, step=step, mode="eval")
        self.hand.accuracy(accuracy, step=step, mode="eval")

    def close(self) -> None:
        self.dbg.close()
        self.hand.close()


def train(spec: RunSpec, setup: Setup) -> Measured:
    """SGD on a 2x64 ReLU network, recorded both ways; returns the measurements."""
    rng = seed_everything(spec.seed)
    x_all, y_all = blobs(rng, 2560)
    # Standardised with the training set's statistics, as a healthy pipeline does.
    x_all = (x_all - x_all[:2048].mean(axis=0)) / x_all[:2048].std(axis=0)
    x_train, y_train, x_val, y_val = x_all[:2048], y_all[:2048], x_all[2048:], y_all[2048:]
    net = Network(rng, setup.hidden_bias)
    measured = Measured()
    recorders = Recorders(spec, setup)

    def evaluate(step: int) -> None:
        logits, _, _ = net.forward(x_val)
        loss, _, probs = softmax_cross_entropy(logits, y_val)
        accuracy = float((probs.argmax(axis=1) == y_val).mean())
        recorders.evaluation(step, loss, accuracy)
        measured.eval_loss.append(loss)
        measured.eval_accuracy.append(accuracy)

    try:
        order, cursor = rng.permutation(len(x_train)), 0
        for step in range(STEPS):
            if step % EVAL_EVERY == 0:
                evaluate(step)
            if cursor + BATCH > len(order):
                order, cursor = rng.permutation(len(x_train)), 0
            index = order[cursor : cursor + BATCH]
            cursor += BATCH
            x, y = x_train[index], y_train[index]
            logits, pre, inputs = net.forward(x)
            loss, grad, probs = softmax_cross_entropy(logits, y)
            grads = net.backward(grad, pre, inputs)
            activations = [np.maximum(z, 0.0) for z in pre]
            recorders.step(
                step,
                loss=loss,
                accuracy=float((probs.argmax(axis=1) == y).mean()),
                lr=setup.lr,
                params=net.params,
                grads=grads,
                activations=activations,
                data=(x, y, probs.astype(np.float32)),
            )
            measured.loss.append(loss)
            for layer, value in enumerate(activations, start=1):
                dead = float(1.0 - (value > 0).any(axis=0).mean())
                measured.dead.setdefault(layer, []).append(dead)
            ratios = []
            with np.errstate(over="ignore", invalid="ignore"):
                for name, value in net.params.items():
                    update = setup.lr * grads[name]
                    if name.endswith("weight"):
                        ratios.append(float(np.linalg.norm(update) / np.linalg.norm(value)))
                    value -= update
            measured.update_ratio.append(max(ratios))
        evaluate(STEPS)
    finally:
        recorders.close()
    return measured


Check = tuple[str, Callable[[Measured], float], float | None, float | None]


def run(spec: RunSpec, setup: Setup, *checks: Check) -> None:
    """Train, write the figures beside the traces, raise if a ``(what, measure, low, high)``
    check fails."""
    measured = train(spec, setup)
    figures = {
        "final train loss": measured.final_loss(),
        "final eval loss": measured.eval_loss[-1],
        "final eval accuracy": measured.eval_accuracy[-1],
    }
    failed = []
    for what, measure, low, high in checks:
        value = float(measure(measured))
        figures[what] = value
        if not ((low is None or value >= low) and (high is None or value <= high)):
            failed.append(f"{what} = {value:.4g} (wanted {low} .. {high})")
    # JSON has no NaN or infinity: those are written as the strings "nan", "inf", "-inf".
    readable = {k: v if math.isfinite(v) else str(v) for k, v in figures.items()}
    spec.hook_path.with_name(f"seed{spec.seed}.measured.json").write_text(
        json.dumps(readable, indent=1)
    )
    if failed:
        raise RuntimeError(f"{spec.family}/{spec.scenario} seed {spec.seed}: " + "; ".join(failed))


# Measured (seeds 0/1/2): final train loss 0.0131/0.0219/0.0523; final eval loss
# 0.0114/0.0158/0.0461; final eval accuracy 1/0.998/0.994.
@scenario(
    FAMILY,
    "healthy",
    cause=None,
    description="""
numpy MLP 8-64-64-4 (hand-written backprop, He init) on four Gaussian blobs; plain SGD lr 0.05,
batch 64, 300 steps.""",
)
def healthy(spec: RunSpec) -> None:
    run(
        spec,
        Setup(),
        ("final eval accuracy", lambda m: m.eval_accuracy[-1], 0.9, None),
        ("final eval - train loss", lambda m: m.eval_loss[-1] - m.final_loss(), None, 0.15),
    )


# Measured (seeds 0/1/2): relu1 dead share 0.98/0.994/0.97; relu2 dead share 1/1/1; final train
# loss 1.39/1.39/1.39; final eval accuracy 0.289/0.268/0.242.
@scenario(
    FAMILY,
    "dead-relu",
    cause="DBG201",
    twin="healthy",
    description="""
healthy with both hidden layers' biases initialised to -5 (on standardised inputs the
pre-activations are about N(-5, 1.4²)): almost every ReLU outputs 0 for every sample from the
first step on and the network cannot learn.""",
)
def dead_relu(spec: RunSpec) -> None:
    run(
        spec,
        Setup(hidden_bias=-5.0),
        ("relu1 dead share", lambda m: float(np.mean(m.dead[1])), 0.8, None),
        ("relu2 dead share", lambda m: float(np.mean(m.dead[2])), 0.8, None),
    )


# Measured (seeds 0/1/2): update ratio of the first step 4.1/7.02/4.07; final train loss
# nan/nan/1.41; final eval accuracy 0.236/0.264/0.24.
@scenario(
    FAMILY,
    "high-lr",
    cause="DBG503",
    twin="healthy",
    description="""
healthy at lr 5.0, 100x the twin's (the blobs are so well separated that 20x still trains):
the first step moves the weights by several times their own norm, the loss jumps to about 20,
then overflows to NaN (seeds 0, 1) or every ReLU of the second layer dies (seed 2).""",
)
def high_lr(spec: RunSpec) -> None:
    run(
        spec,
        Setup(lr=5.0),
        ("update ratio of the first step", lambda m: m.update_ratio[0], 1.0, None),
        ("final eval accuracy", lambda m: m.eval_accuracy[-1], None, 0.4),
    )
