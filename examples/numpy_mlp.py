"""Train a small MLP written in plain numpy (hand-written backprop) and record a dbg trace.

Deterministic: the same command writes the same values. Scenarios reproduce classic failures:

    python examples/numpy_mlp.py sample_traces/numpy_mlp_healthy.h5
    python examples/numpy_mlp.py --scenario dead-relu sample_traces/numpy_mlp_dead_relu.h5
    python examples/numpy_mlp.py --scenario high-lr sample_traces/numpy_mlp_high_lr.h5

healthy:   He-initialised 2x64 ReLU network on a 4-class Gaussian-blob problem (inputs
           standardised with the training set's mean and deviation), SGD lr 0.05.
dead-relu: the same network with hidden biases initialised to -4, so almost every ReLU is off
           from the first step and the network cannot learn.
high-lr:   lr 50: updates explode within a few steps and the loss becomes non-finite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dbgcli import TraceWriter

SCENARIOS = ("healthy", "dead-relu", "high-lr")


def make_data(
    rng: np.random.Generator, n: int, classes: int = 4, features: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(0.0, 2.5, size=(classes, features))
    labels = rng.integers(0, classes, size=n)
    inputs = centres[labels] + rng.normal(0.0, 1.0, size=(n, features))
    return inputs.astype(np.float32), labels


def softmax_cross_entropy(
    logits: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())
    grad = probs.copy()
    grad[np.arange(len(labels)), labels] -= 1.0
    return loss, grad / len(labels), probs


def train(path: Path, scenario: str, steps: int, raw_every: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(rng, 2048)
    x_val, y_val = x_train[1536:], y_train[1536:]
    x_train, y_train = x_train[:1536], y_train[:1536]
    # Unscaled blobs (centres spread 2.5) would start the network's logits at a few units:
    # an untrained loss of three times ln 4 (DBG310).
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    sizes = [x_train.shape[1], 64, 64, 4]
    params: dict[str, np.ndarray] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"fc{i}.weight"] = (
            rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_out, fan_in))
        ).astype(np.float32)
        bias = -4.0 if scenario == "dead-relu" and i < len(sizes) - 1 else 0.0
        params[f"fc{i}.bias"] = np.full(fan_out, bias, dtype=np.float32)
    lr = 50.0 if scenario == "high-lr" else 0.05
    batch = 64
    hyper = {"lr": lr, "batch_size": batch, "layers": sizes, "optimizer": "sgd", "seed": seed}

    def forward(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        pre, acts = [], [x]
        h = x
        for i in range(1, len(sizes)):
            z = h @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
            pre.append(z)
            h = np.maximum(z, 0.0) if i < len(sizes) - 1 else z
            acts.append(h)
        return h, pre, acts

    with TraceWriter(
        path,
        overwrite=True,
        raw_every=raw_every,
        hyperparameters=hyper,
        framework="numpy",
        metadata={"scenario": scenario, "script": "examples/numpy_mlp.py"},
    ) as trace:
        order = rng.permutation(len(x_train))
        cursor = 0
        for step in range(steps):
            if cursor + batch > len(order):
                order, cursor = rng.permutation(len(x_train)), 0
                trace.add_scalar("epoch", step * batch // len(x_train), step)
            idx = order[cursor : cursor + batch]
            cursor += batch
            x, y = x_train[idx], y_train[idx]
            logits, pre, acts = forward(x)
            loss, grad, probs = softmax_cross_entropy(logits, y)
            grads: dict[str, np.ndarray] = {}
            with np.errstate(over="ignore", invalid="ignore"):
                for i in range(len(sizes) - 1, 0, -1):
                    grads[f"fc{i}.weight"] = grad.T @ acts[i - 1]
                    grads[f"fc{i}.bias"] = grad.sum(axis=0)
                    if i > 1:
                        grad = (grad @ params[f"fc{i}.weight"]) * (pre[i - 2] > 0)
            trace.add_scalar("loss", loss, step)
            trace.add_scalar("accuracy", float((probs.argmax(axis=1) == y).mean()), step)
            trace.add_scalar("lr", lr, step)
            for name, value in params.items():
                collection = "weights" if name.endswith("weight") else "biases"
                trace.add_tensor(name, value, step, collection=collection)
                trace.add_tensor(f"grad/{name}", grads[name], step, collection="gradients")
            for i, z in enumerate(pre[:-1], start=1):
                trace.add_tensor(
                    f"act/relu{i}", np.maximum(z, 0.0), step, collection="activations", kind="relu"
                )
            trace.add_tensor("inputs", x, step, collection="inputs")
            trace.add_tensor("labels", y, step, collection="labels")
            trace.add_tensor(
                "predictions", probs.astype(np.float32), step, collection="predictions"
            )
            with np.errstate(over="ignore", invalid="ignore"):
                for name, value in params.items():
                    value -= lr * grads[name]
            if step % 25 == 0 or step == steps - 1:
                val_logits, _, _ = forward(x_val)
                val_loss, _, val_probs = softmax_cross_entropy(val_logits, y_val)
                trace.add_scalar("loss", val_loss, step, mode="eval")
                trace.add_scalar(
                    "accuracy", float((val_probs.argmax(axis=1) == y_val).mean()), step, mode="eval"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="trace file to write")
    parser.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--raw-every", type=int, default=50, help="keep full tensors every N steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.output, args.scenario, args.steps, args.raw_every, args.seed)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
