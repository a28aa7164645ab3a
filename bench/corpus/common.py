"""Shared machinery of the calibration corpus: scenarios, naming conventions, hand recording.

A *scenario* is one training configuration: a healthy run, or a run with one induced fault
whose healthy *twin* differs from it in one setting. Every scenario is trained once per seed,
and every training run is recorded two ways at the same time:

* ``hook``: through the integration a user of that framework would use
  (``dbgcli.torch.attach``, the Hugging Face, Lightning or XGBoost callback);
* ``hand``: through plain :class:`dbgcli.TraceWriter` calls in the user's own loop, with the
  names people really use (one of the :data:`NAMINGS` conventions, rotated by seed).

A scenario's training function receives a :class:`RunSpec` and writes both traces. Scenarios
register themselves with :func:`scenario`; ``generate.py`` imports the family modules, runs
every scenario and seed in worker processes and writes ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# -- scenarios ----------------------------------------------------------------------------------

SEEDS = (0, 1, 2)
RECORDINGS = ("hook", "hand")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a scenario: where to write its two traces, and how to name things."""

    family: str
    scenario: str
    seed: int
    hook_path: Path
    hand_path: Path
    naming: str
    #: Record weights, gradients and activations every this many steps (None: the
    #: integrations' default); a recipe that sets its own keeps it.
    stats_every: int | None = None

    @property
    def names(self) -> Naming:
        """The naming convention of the hand-written trace."""
        return NAMINGS[self.naming]


@dataclass(frozen=True)
class Scenario:
    """A registered training configuration.

    Attributes:
        family: Model family and framework, e.g. ``torch-mlp``, ``hf-bert``, ``xgboost``.
        name: Scenario name within the family, e.g. ``healthy-sgd`` or ``dying-relu``.
        cause: Id of the rule whose problem is induced (None: a healthy run).
        description: What was done, in one or two sentences (what the fault is, how it is made).
        train: ``train(spec)`` trains and writes ``spec.hook_path`` and ``spec.hand_path``.
        twin: The healthy scenario of the same family this one differs from in one setting.
        accept: Other rule ids that also name the injected fault correctly as the first
            diagnosis (a schedule that decays the learning rate to nothing by step 40 is both
            "loss not decreasing" and "learning rate too low").
        quick: Part of the fast subset the test suite generates.
    """

    family: str
    name: str
    cause: str | None
    description: str
    train: Callable[[RunSpec], None]
    twin: str | None = None
    accept: tuple[str, ...] = ()
    quick: bool = False
    seeds: tuple[int, ...] = SEEDS

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name}"


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    family: str,
    name: str,
    *,
    cause: str | None,
    description: str,
    twin: str | None = None,
    accept: tuple[str, ...] = (),
    quick: bool = False,
) -> Callable[[Callable[[RunSpec], None]], Callable[[RunSpec], None]]:
    """Register a training function as a scenario (returns it unchanged)."""

    def register(train: Callable[[RunSpec], None]) -> Callable[[RunSpec], None]:
        entry = Scenario(family, name, cause, description.strip(), train, twin, accept, quick)
        if entry.key in SCENARIOS:
            raise ValueError(f"scenario {entry.key} registered twice")
        SCENARIOS[entry.key] = entry
        return train

    return register


def naming_for(key: str, seed: int) -> str:
    """The naming convention of a scenario's hand-written trace: rotated over scenario and seed,
    so that every scenario is seen under several conventions."""
    names = list(NAMINGS)
    return names[(zlib.crc32(key.encode()) + seed) % len(names)]


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (if imported) and return a numpy generator; one CPU thread, deterministic."""
    try:
        import torch
    except ImportError:  # the numpy family needs no torch
        pass
    else:
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
    return np.random.default_rng(seed)


# -- naming conventions -------------------------------------------------------------------------


def _layer(parameter: str) -> tuple[str, str]:
    """``"encoder.fc1.weight"`` -> ``("encoder.fc1", "weight")``."""
    layer, _, leaf = parameter.rpartition(".")
    return (layer or leaf), leaf


@dataclass(frozen=True)
class Naming:
    """How a user names what they record by hand. Each method returns ``(tag, collection)``
    (plus ``kind`` for activations); a collection or kind of None means the user gave none.

    Scalars: ``train_loss``/``eval_loss`` are ``(tag, mode)``: several conventions record the
    validation loss under its own name in the default mode, as TensorBoard and Keras users do.
    """

    name: str
    train_loss: tuple[str, str]
    eval_loss: tuple[str, str]
    train_accuracy: tuple[str, str]
    eval_accuracy: tuple[str, str]
    lr: str
    parameter: Callable[[str], tuple[str, str | None]]
    gradient: Callable[[str], tuple[str, str | None]]
    activation: Callable[[str, str], tuple[str, str | None, str | None]]
    preactivation: Callable[[str, str], tuple[str, str | None, str | None]]
    inputs: tuple[str, str | None]
    labels: tuple[str, str | None]
    predictions: tuple[str, str | None]
    tree_depth: tuple[str, str | None]
    importance: Callable[[str], tuple[str, str | None, str | None]]
    metric: Callable[[str, str], tuple[str, str]] = field(default=lambda name, mode: (name, mode))

    def loss(self, mode: str) -> tuple[str, str]:
        return self.train_loss if mode == "train" else self.eval_loss

    def accuracy(self, mode: str) -> tuple[str, str]:
        return self.train_accuracy if mode == "train" else self.eval_accuracy


def _keras_parameter(parameter: str) -> tuple[str, str | None]:
    layer, leaf = _layer(parameter)
    return f"{layer}/{'kernel' if leaf == 'weight' else leaf}:0", "weights"


def _plain_gradient(parameter: str) -> tuple[str, str | None]:
    layer, leaf = _layer(parameter)
    return (f"{layer}/grad" if leaf == "weight" else f"{layer}/{leaf}_grad"), "grads"


NAMINGS: dict[str, Naming] = {
    # dbg's own documented conventions, written by hand.
    "dbg": Naming(
        name="dbg",
        train_loss=("loss", "train"),
        eval_loss=("loss", "eval"),
        train_accuracy=("accuracy", "train"),
        eval_accuracy=("accuracy", "eval"),
        lr="lr",
        parameter=lambda p: (p, "biases" if _layer(p)[1] == "bias" else "weights"),
        gradient=lambda p: (f"grad/{p}", "gradients"),
        activation=lambda m, kind: (f"act/{m}", "activations", kind),
        preactivation=lambda m, kind: (f"preact/{m}", "preactivations", kind),
        inputs=("inputs", "inputs"),
        labels=("labels", "labels"),
        predictions=("predictions", "predictions"),
        tree_depth=("trees/depth", "trees"),
        importance=lambda t: (f"feature_importance/{t}", "feature_importance", t),
    ),
    # SageMaker Debugger's names: <Module>_output_0, gradient/<param>, collections by regex name.
    "sagemaker": Naming(
        name="sagemaker",
        train_loss=("CrossEntropyLoss_output_0", "train"),
        eval_loss=("CrossEntropyLoss_output_0", "eval"),
        train_accuracy=("accuracy", "train"),
        eval_accuracy=("accuracy", "eval"),
        lr="lr",
        parameter=lambda p: (p, "weights" if _layer(p)[1] == "weight" else "biases"),
        gradient=lambda p: (f"gradient/{p}", "gradients"),
        activation=lambda m, kind: (f"{m}_output_0", f"{kind}_output", None),
        preactivation=lambda m, kind: (f"{m}_input_0", f"{kind}_input", None),
        inputs=("Net_input_0", "inputs"),
        labels=("labels", "labels"),
        predictions=("predictions", "predictions"),
        tree_depth=("trees/depth", "trees"),
        importance=lambda t: (f"feature_importance/{t}", "feature_importance", None),
    ),
    # TensorBoard habits: slash-separated names, no collections, validation in the same mode.
    "tensorboard": Naming(
        name="tensorboard",
        train_loss=("train/loss", "train"),
        eval_loss=("val/loss", "train"),
        train_accuracy=("train/accuracy", "train"),
        eval_accuracy=("val/accuracy", "train"),
        lr="train/lr",
        parameter=lambda p: (f"weights/{p}", None),
        gradient=lambda p: (f"grads/{p}", None),
        activation=lambda m, kind: (f"activations/{m}", None, None),
        preactivation=lambda m, kind: (f"preactivations/{m}", None, None),
        inputs=("input/x", None),
        labels=("labels", None),
        predictions=("predictions", None),
        tree_depth=("trees/tree_depth", None),
        importance=lambda t: (f"feature_importance/{t}", None, None),
        metric=lambda name, mode: (f"{'val' if mode == 'eval' else 'train'}/{name}", "train"),
    ),
    # Keras habits: loss / val_loss in one mode, layer/kernel:0 names, biases among weights.
    "keras": Naming(
        name="keras",
        train_loss=("loss", "train"),
        eval_loss=("val_loss", "train"),
        train_accuracy=("accuracy", "train"),
        eval_accuracy=("val_accuracy", "train"),
        lr="learning_rate",
        parameter=_keras_parameter,
        gradient=lambda p: (f"gradients/{_keras_parameter(p)[0]}", "gradients"),
        activation=lambda m, kind: (f"{m}/activation", "activations", kind),
        preactivation=lambda m, kind: (f"{m}/preactivation", "activations", kind),
        inputs=("input_1", "inputs"),
        labels=("y_true", "labels"),
        predictions=("y_pred", "predictions"),
        tree_depth=("tree_depth", "trees"),
        importance=lambda t: (f"importance_{t}", "feature_importance", None),
        metric=lambda name, mode: (f"val_{name}" if mode == "eval" else name, "train"),
    ),
    # A user's own short names and collections.
    "plain": Naming(
        name="plain",
        train_loss=("train_loss", "train"),
        eval_loss=("valid_loss", "eval"),
        train_accuracy=("train_acc", "train"),
        eval_accuracy=("valid_acc", "eval"),
        lr="lr",
        parameter=lambda p: (f"{_layer(p)[0]}/{_layer(p)[1]}", "params"),
        gradient=_plain_gradient,
        activation=lambda m, kind: (f"{m}/out", "acts", kind.capitalize()),
        preactivation=lambda m, kind: (f"{m}/in", "preacts", kind.capitalize()),
        inputs=("x", "inputs"),
        labels=("y", "targets"),
        predictions=("y_hat", "preds"),
        tree_depth=("tree_depth", "trees"),
        importance=lambda t: (f"importance/{t}", "importance", t),
    ),
}


# -- hand-written recording of a PyTorch model --------------------------------------------------

# Activation modules a user's own forward hooks would watch, and the kind they name them by.
_TORCH_ACTIVATIONS = {
    "ReLU": "relu",
    "LeakyReLU": "leaky_relu",
    "GELU": "gelu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "ELU": "elu",
    "SiLU": "silu",
}


class HandRecorder:
    """What a user writes around their own PyTorch loop: TraceWriter calls with their own names.

    Activations are caught with forward hooks on the activation modules (outputs, and inputs of
    tanh and sigmoid), labelled ``<kind><n>`` in module order (``relu1``, ``tanh2``), as a
    person would name them. Parameters and gradients are written by :meth:`parameters`, to be
    called after ``backward()`` and before ``optimizer.step()``.

    Args:
        spec: The run (its hand path and naming convention).
        model: The model, or None (XGBoost and numpy runs record through the writer only).
        raw_every: Full tensors every this many steps.
        stats_every: Record activations, weights and gradients only at steps that are a
            multiple of this, as a user guards their records with ``if step % every == 0``
            (the hooks' default, so that both traces sample the same steps).
        preactivations: Also record the inputs of tanh and sigmoid modules.
        loss_name: The loss module's class name, for SageMaker's ``<Loss>_output_0``.
    """

    def __init__(
        self,
        spec: RunSpec,
        model: Any = None,
        *,
        raw_every: int = 50,
        stats_every: int = 1,
        preactivations: bool = True,
        loss_name: str = "CrossEntropyLoss",
        activations: bool = True,
    ) -> None:
        from dbgcli import TraceWriter

        self.names = spec.names
        self.loss_name = loss_name
        self.writer = TraceWriter(spec.hand_path, raw_every=raw_every, overwrite=True)
        self.step = 0
        self.stats_every = stats_every
        self._handles: list[Any] = []
        if model is not None and activations:
            self._watch(model, preactivations)

    def _watch(self, model: Any, preactivations: bool) -> None:
        counts: dict[str, int] = {}
        for _, module in model.named_modules():
            kind = _TORCH_ACTIVATIONS.get(type(module).__name__)
            if kind is None:
                continue
            counts[kind] = counts.get(kind, 0) + 1
            label = f"{kind}{counts[kind]}"
            want_input = preactivations and kind in ("tanh", "sigmoid")
            self._handles.append(module.register_forward_hook(self._hook(label, kind, want_input)))

    def _hook(self, label: str, kind: str, want_input: bool) -> Callable[..., None]:
        def record(module: Any, args: tuple[Any, ...], output: Any) -> None:
            import torch

            if not (module.training and torch.is_grad_enabled()) or self.step % self.stats_every:
                return
            tag, collection, tag_kind = self.names.activation(label, kind)
            self.writer.add_tensor(tag, output, self.step, collection=collection, kind=tag_kind)
            if want_input and args:
                tag, collection, tag_kind = self.names.preactivation(label, kind)
                self.writer.add_tensor(
                    tag, args[0], self.step, collection=collection, kind=tag_kind
                )

        return record

    def parameters(self, model: Any, step: int | None = None) -> None:
        """Weights and gradients of every parameter (gradients only where one exists)."""
        at = self.step if step is None else step
        if at % self.stats_every:
            return
        for name, parameter in model.named_parameters():
            tag, collection = self.names.parameter(name)
            self.writer.add_tensor(tag, parameter.detach(), at, collection=collection)
            if parameter.grad is not None:
                tag, collection = self.names.gradient(name)
                self.writer.add_tensor(tag, parameter.grad, at, collection=collection)

    def loss(self, value: float, step: int | None = None, mode: str = "train") -> None:
        tag, at_mode = self.names.loss(mode)
        if tag == "CrossEntropyLoss_output_0":
            tag = f"{self.loss_name}_output_0"
        self.writer.add_scalar(tag, value, self.step if step is None else step, mode=at_mode)

    def accuracy(self, value: float, step: int | None = None, mode: str = "train") -> None:
        tag, at_mode = self.names.accuracy(mode)
        self.writer.add_scalar(tag, value, self.step if step is None else step, mode=at_mode)

    def metric(self, name: str, value: float, step: int | None = None, mode: str = "train") -> None:
        tag, at_mode = self.names.metric(name, mode)
        self.writer.add_scalar(tag, value, self.step if step is None else step, mode=at_mode)

    def lr(self, value: float, step: int | None = None) -> None:
        self.writer.add_scalar(self.names.lr, value, self.step if step is None else step)

    def data(
        self,
        *,
        inputs: Any = None,
        labels: Any = None,
        predictions: Any = None,
        step: int | None = None,
        mode: str = "train",
        raw: bool | None = True,
    ) -> None:
        """Inputs, labels and predictions of a batch (full tensors by default: the data rules
        read them)."""
        at = self.step if step is None else step
        for value, (tag, collection) in (
            (inputs, self.names.inputs),
            (labels, self.names.labels),
            (predictions, self.names.predictions),
        ):
            if value is not None:
                self.writer.add_tensor(tag, value, at, collection=collection, mode=mode, raw=raw)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.writer.close()

    def __enter__(self) -> HandRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- verification -------------------------------------------------------------------------------

Bounds = tuple[float | None, float | None]


class NotAsClaimed(RuntimeError):
    """A run does not show its induced fault, or a healthy run is not healthy."""


def verify(spec: RunSpec, figures: Mapping[str, float], bounds: Mapping[str, Bounds]) -> None:
    """Write a run's measured figures beside its traces (``seed<n>.measured.json``) and raise
    :class:`NotAsClaimed` if a figure named in ``bounds`` is outside its ``(low, high)``."""
    path = spec.hook_path.with_name(f"seed{spec.seed}.measured.json")
    path.write_text(json.dumps({name: float(value) for name, value in figures.items()}, indent=1))
    failed = [
        f"{name} = {figures[name]:.4g} (wanted {low} .. {high})"
        for name, (low, high) in bounds.items()
        if (low is not None and figures[name] < low) or (high is not None and figures[name] > high)
    ]
    if failed:
        raise NotAsClaimed(f"{spec.family}/{spec.scenario} seed {spec.seed}: " + "; ".join(failed))


# -- manifest -----------------------------------------------------------------------------------


def source_fingerprint(*paths: Path) -> str:
    """Hash of the given source files: a run is regenerated when its code changes."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def iter_specs(
    out: Path,
    scenarios: list[Scenario],
    *,
    quick: bool = False,
    seeds: tuple[int, ...] | None = None,
    stats_every: int | None = None,
) -> Iterator[tuple[Scenario, RunSpec]]:
    """Every (scenario, seed) run with its trace paths (the quick subset: the first seed
    only; ``seeds`` replaces the scenarios' own, to train a fresh set of runs to check
    calibrated rules against; ``stats_every`` replaces the integrations' default)."""
    for entry in scenarios:
        chosen = seeds or entry.seeds
        for seed in chosen[:1] if quick else chosen:
            base = out / entry.family / entry.name
            yield (
                entry,
                RunSpec(
                    family=entry.family,
                    scenario=entry.name,
                    seed=seed,
                    hook_path=base / f"seed{seed}.hook.h5",
                    hand_path=base / f"seed{seed}.hand.h5",
                    naming=naming_for(entry.key, seed),
                    stats_every=stats_every,
                ),
            )
