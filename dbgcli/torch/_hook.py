"""Record a PyTorch model and its optimizer into a dbg trace with one call.

``attach(model, optimizer, "run.h5")`` registers forward hooks on the model and step hooks on
the optimizer (``Optimizer.register_step_pre_hook`` / ``register_step_post_hook``, torch >= 2.0;
nothing is monkey-patched) and returns a :class:`TorchHook`. Per optimizer step it records:

* every selected parameter (collection ``weights``, or ``biases`` when the last part of its
  name starts with ``bias``; tag = parameter name) and its gradient (collection
  ``gradients``, tag ``grad/<name>``), after backward and before the update;
* the learning rate of each parameter group (scalar ``lr`` for group 0, ``lr/group<i>``);
* the output of every activation module (collection ``activations``, tag ``act/<module>``,
  kind = the function) and the input of Tanh and Sigmoid modules (collection
  ``preactivations``, tag ``preact/<module>``);
* the loss, when the model's output carries one or when :meth:`TorchHook.record_loss` is
  called, averaged over the forward passes of the step.

A step is an optimizer step: forward passes between two ``optimizer.step()`` calls (gradient
accumulation) share one step, and every micro-batch's activations are recorded with it. Forward
passes in ``model.eval()`` or under ``torch.no_grad()`` are recorded in mode ``eval`` at the
current step (the number of optimizer steps taken so far).

The hook only reads tensors: it consumes no random numbers, never writes to a parameter or a
gradient, and catches its own failures (they become WARNING messages of the ``dbgcli``
logger), so training with and without it produces bit-identical parameters.
"""

from __future__ import annotations

import collections
import fnmatch
import numbers
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from dbgcli._failures import FailureReporter, log
from dbgcli.errors import TraceWriterError, TrainingStopped
from dbgcli.live_rules import LiveRules, check_stop_on, is_loss, stop_if
from dbgcli.torch._malloc import settle_malloc
from dbgcli.torch._stats import (
    Pending,
    Reducer,
    StackMemory,
    Transfer,
    compute_tables,
    reduce_activations,
)
from dbgcli.torch._zero_grad import CarriedGradientWatch
from dbgcli.trace import schema
from dbgcli.trace.stats import COL
from dbgcli.trace.writer import DEFAULT_RAW_BUDGET, TraceWriter, check_raw_settings

__all__ = [
    "ACTIVATION_KINDS",
    "FailureReporter",
    "TorchHook",
    "attach",
    "distributed_rank",
    "open_writer",
    "rank_path",
    "refuse_existing",
]

#: Activation modules recorded by default, and the ``kind`` their records get. Subclasses count.
ACTIVATION_KINDS: Mapping[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.GELU: "gelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
}
#: Kinds whose input (the pre-activation) is recorded too: the saturation rules read it.
PREACTIVATION_KINDS = frozenset({"tanh", "sigmoid"})

#: Record weights, gradients and activations every this many optimizer steps by default.
DEFAULT_STATS_EVERY = 10
#: Keep full tensors every this many steps when :func:`attach` creates the writer (a
#: multiple of :data:`DEFAULT_STATS_EVERY`, so that full tensors fall on recorded steps).
DEFAULT_RAW_EVERY = 100

#: Activations held for reduction together at the end of a forward pass are reduced earlier
#: once they take more than this many bytes (they are alive for the backward pass anyway,
#: except under no_grad or activation checkpointing).
HELD_ACTIVATION_BYTES = 64 << 20

Patterns = str | Sequence[str] | None
TracePath = str | os.PathLike[str]


def distributed_rank() -> tuple[int, int] | None:
    """``(rank, world_size)`` when a torch.distributed process group is initialised, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def rank_path(path: TracePath, rank: int) -> Path:
    """The trace file of one rank: ``run.h5`` becomes ``run.rank3.h5``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def refuse_existing(trace: TracePath | TraceWriter, overwrite: bool) -> None:
    """Refuse, before training starts, a trace file that exists and may not be overwritten.

    Framework callbacks open their trace when training starts, where an error would be turned
    into a warning and the run would go unrecorded; they call this from their constructor.

    Raises:
        TraceWriterError: If this process's trace file exists and ``overwrite`` is False.
    """
    if isinstance(trace, TraceWriter) or overwrite:
        return
    distributed = distributed_rank()
    path = Path(trace) if distributed is None else rank_path(trace, distributed[0])
    if path.exists():
        raise TraceWriterError(f"{path} already exists; pass overwrite=True to replace it")


def open_writer(
    trace: TracePath | TraceWriter,
    *,
    framework: str,
    raw_every: int | None = None,
    raw_budget: int | None = None,
    overwrite: bool = False,
    flush_secs: float = 10.0,
    hyperparameters: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[TraceWriter, bool]:
    """The writer to record into, and whether the caller owns (and must close) it.

    A path gets a new :class:`TraceWriter`; under torch.distributed each rank writes its own
    file (``<stem>.rank<k><suffix>``) and the metadata names ``rank`` and ``world_size``. A
    writer passed in is used as it is (its ``raw_every`` and ``raw_budget`` apply) and gets
    the same metadata.

    Raises:
        ValueError: If ``raw_every`` or ``raw_budget`` is given together with a writer: set it
            on the writer.
        TraceWriterError: If the file exists and ``overwrite`` is False, or cannot be created.
    """
    distributed = distributed_rank()
    run_metadata: dict[str, Any] = dict(metadata or {})
    if distributed is not None:
        run_metadata["rank"], run_metadata["world_size"] = distributed
    check_raw_settings(trace, raw_every=raw_every, raw_budget=raw_budget)
    if isinstance(trace, TraceWriter):
        extra: dict[str, Any] = dict(run_metadata)
        if hyperparameters is not None:
            extra["hyperparameters"] = dict(hyperparameters)
        extra.setdefault("framework", trace.metadata.get("framework", framework))
        trace.set_metadata(**extra)
        return trace, False
    path = Path(trace) if distributed is None else rank_path(trace, distributed[0])
    writer = TraceWriter(
        path,
        raw_every=DEFAULT_RAW_EVERY if raw_every is None else raw_every,
        raw_budget=DEFAULT_RAW_BUDGET if raw_budget is None else raw_budget,
        flush_secs=flush_secs,
        overwrite=overwrite,
        metadata=run_metadata,
        hyperparameters=hyperparameters,
        framework=framework,
    )
    return writer, True


def _as_patterns(patterns: Patterns) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


class _Selector:
    """Include/exclude globs, matched against a tensor's name and its tag."""

    def __init__(self, include: Patterns, exclude: Patterns) -> None:
        self.include = _as_patterns(include)
        self.exclude = _as_patterns(exclude)
        self._answers: dict[tuple[str, ...], bool] = {}  # asked every step for loss and lr

    def __call__(self, *names: str) -> bool:
        answer = self._answers.get(names)
        if answer is None:
            answer = self._answers[names] = self._match(names)
        return answer

    def _match(self, names: tuple[str, ...]) -> bool:
        def matches(patterns: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(name, p) for p in patterns for name in names)

        if self.include and not matches(self.include):
            return False
        return not matches(self.exclude)


@dataclass(frozen=True)
class _Parameter:
    name: str
    parameter: nn.Parameter
    collection: str
    record_weight: bool
    grad_tag: str | None  # None: the gradient is excluded
    kind: str | None  # see _parameter_kind


@dataclass
class _QueuedTensors:
    """Tensor records of one step and mode whose statistics are on their way to the host."""

    step: int
    mode: str
    kind: str | None
    pending: Pending
    tags: list[str]
    collections: list[str]
    tensors: list[tuple[tuple[int, ...], np.dtype]]  # shape and numpy dtype of each
    # Full tensors: copies, or the live tensors if ``raws_live`` (to be copied unless they
    # are written before the training step goes on, see TorchHook._send).
    raws: list[torch.Tensor] | None
    units: list[Callable[[], np.ndarray]] | None = None  # each record's per-unit measure
    raws_live: bool = False

    def keep_raws(self) -> None:
        """Copy the full tensors, if still live: they are about to change."""
        if self.raws is not None and self.raws_live:
            self.raws = [raw.clone() for raw in self.raws]  # detached: no graph to record
            self.raws_live = False

    def write(self, writer: TraceWriter, live: LiveRules | None) -> None:
        table = self.pending.table()
        if live is not None:
            for tag, collection, row in zip(self.tags, self.collections, table):
                if collection == "gradients":
                    nonfinite = row[COL["nan_count"]] + row[COL["inf_count"]]
                    stop_if(writer, live.gradient(tag, nonfinite, row[COL["l2"]], self.step))
        writer.add_tensor_stats_rows(
            self.tags,
            table,
            self.step,
            shapes=[shape for shape, _ in self.tensors],
            dtypes=[dtype for _, dtype in self.tensors],
            collections=self.collections,
            kind=self.kind,
            mode=self.mode,
            units=None if self.units is None else [units() for units in self.units],
            values=self.raws,
        )


@dataclass
class _HeldActivation:
    """An activation record waiting for the end of its forward pass to be reduced."""

    tag: str
    values: torch.Tensor  # detached
    version: int  # of ``values`` when its module returned it
    collection: str
    kind: str
    mode: str
    step: int
    raw: torch.Tensor | None  # a copy made then, on ``raw_every`` steps


# Where a device tensor added to a transfer will be once the transfer is on the host.
_InTransfer = tuple[Transfer, torch.device, int]


@dataclass(slots=True)
class _Loss:
    """The losses of one step and mode, summed (on the device for a device tensor: no sync per
    batch) while the step runs, then queued: their mean reaches the host with the next
    transfer."""

    step: int
    mode: str
    # A float or a detached tensor; once queued, where the transfer will hold a device tensor.
    total: float | torch.Tensor | _InTransfer
    count: int

    def write(self, writer: TraceWriter, live: LiveRules | None) -> None:
        mean = float(_on_host(self.total)) / self.count
        writer.add_scalar("loss", mean, self.step, mode=self.mode)
        if live is not None and self.mode == "train":
            stop_if(writer, live.loss(mean, self.step))


@dataclass(slots=True)
class _QueuedScalar:
    """A scalar of a step, written with the step's other records: a learning rate (one writer
    call in a row of them costs a fraction of one between training operations), or a number
    the caller recorded (:meth:`TorchHook.record_scalar`) while records of other steps or
    modes were still queued, so that it does not overtake them (see
    :meth:`TorchHook._others_waiting`)."""

    tag: str
    value: Any  # a number: nothing the caller can change in place afterwards
    step: int
    mode: str = "train"

    def write(self, writer: TraceWriter, live: LiveRules | None) -> None:
        writer.add_scalar(self.tag, self.value, self.step, mode=self.mode)


@dataclass(slots=True)
class _CarriedVerdict:
    """The zero_grad check of one step (see :mod:`dbgcli.torch._zero_grad`), written with the
    records it was queued among: a tensor in host memory is read then, one on a device
    reaches the host with the next transfer."""

    step: int
    carried: torch.Tensor | _InTransfer
    watch: CarriedGradientWatch

    def write(self, writer: TraceWriter, live: LiveRules | None) -> None:
        self.watch.confirm(self.step, bool(_on_host(self.carried)))


_Queued = _QueuedTensors | _Loss | _QueuedScalar | _CarriedVerdict


def _deferred(transfer: Transfer, tensor: torch.Tensor) -> torch.Tensor | _InTransfer:
    """A tensor in host memory as it is; one on a device added to ``transfer``, so that
    reading it waits for the transfer rather than for the device (see :func:`_on_host`)."""
    return tensor if tensor.is_cpu else (transfer, *transfer.add(tensor))


def _on_host(value: Any) -> Any:
    """A value queued by :func:`_deferred`, read once its transfer is on the host."""
    if isinstance(value, tuple):
        transfer, device, offset = value
        return transfer.values(device)[offset]
    return value


_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {}


_Function = TypeVar("_Function", bound=Callable[..., Any])


def _eager(function: _Function) -> _Function:
    """``function``, run eagerly when torch.compile traces a call of it (a graph break)."""
    return cast(_Function, torch.compiler.disable(function))  # type: ignore[no-untyped-call]


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    """The numpy dtype a tensor's values are stored as (bfloat16 is widened to float32)."""
    dtype = _NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        name = "float32" if tensor.dtype == torch.bfloat16 else str(tensor.dtype)
        dtype = _NUMPY_DTYPES[tensor.dtype] = np.dtype(name.removeprefix("torch."))
    return dtype


def _check_stats_every(value: object, raw_every: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"stats_every must be a positive integer, got {value!r}")
    # Full tensors are only kept at recorded steps: any other raw_every silently thins them.
    if raw_every and raw_every % value:
        raise ValueError(
            f"raw_every ({raw_every}) must be a multiple of stats_every ({value}): full tensors "
            "are kept only at steps whose statistics are recorded"
        )


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, so names lack ``module.``."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _wrapper_prefix(model: nn.Module) -> str:
    """What wrappers put before the names of the model they hold: ``torch.compile``'s
    ``_orig_mod.``, and a data-parallel wrapper's ``module.`` inside it
    (``torch.compile(DistributedDataParallel(model))``, as PyTorch documents)."""
    prefix = ""
    while True:
        children = vars(model).get("_modules", {})
        if isinstance(children.get("_orig_mod"), nn.Module):
            prefix, model = prefix + "_orig_mod.", children["_orig_mod"]
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            prefix, model = prefix + "module.", model.module
        else:
            return prefix


def _unwrapped_name(name: str, prefix: str = "") -> str:
    """A parameter's or module's name as the model has it unwrapped and uncompiled: without
    the wrappers' ``prefix`` (see :func:`_wrapper_prefix`) and the ``_orig_mod`` of every
    submodule compiled apart, so that a compiled run's trace compares with an uncompiled
    one's."""
    name = name.removeprefix(prefix)
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _compiled(module: nn.Module) -> bool:
    """Whether ``module`` runs compiled code of torch.compile: a wrapper of it, compiled in
    place (``module.compile()``), or with a compiled ``forward`` (as Lightning compiles).

    Looked up in the instance's and its class's attributes: a missing attribute goes through
    ``nn.Module.__getattr__``, whose AttributeError costs about a microsecond, and this runs
    over every module of the model."""
    attributes = vars(module)
    forward = attributes.get("forward", getattr(type(module), "forward", None))
    return (
        "_orig_mod" in attributes.get("_modules", ())
        or attributes.get("_compiled_call_impl") is not None
        or attributes.get("_compiler_ctx") is not None
        or (forward is not None and hasattr(forward, "_torchdynamo_orig_callable"))
    )


def _activation_kind(module: nn.Module, kinds: Mapping[type[nn.Module], str]) -> str | None:
    for module_type, kind in kinds.items():
        if isinstance(module, module_type):
            return kind
    return None


# torch.nn's normalisation layers with parameters: BatchNorm, InstanceNorm and SyncBatchNorm
# (_NormBase), LayerNorm, GroupNorm, RMSNorm.
_NORMALISATIONS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


def _parameter_kind(module: nn.Module) -> str | None:
    """The kind the parameters of ``module`` are recorded with: ``embedding`` for the table of
    an ``nn.Embedding`` or ``nn.EmbeddingBag``, ``normalisation`` for a normalisation layer's
    scale and shift, else None (a layer's)."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, _NORMALISATIONS):
        return "normalisation"
    return None


def _dropout_rate(module: nn.Module) -> float:
    """The share of values ``module`` drops in training: a dropout module's ``p``, a recurrent
    layer's or attention's ``dropout``; 0 for any other module."""
    if isinstance(module, nn.modules.dropout._DropoutNd | nn.RNNBase | nn.MultiheadAttention):
        return float(getattr(module, "p", getattr(module, "dropout", 0.0)))
    return 0.0


def _dropout_rates(model: nn.Module) -> dict[str, float]:
    """Each module that drops values in training, by name (as the trace names parameters),
    with its rate."""
    prefix = _wrapper_prefix(model)
    return {
        _unwrapped_name(name, prefix): rate
        for name, module in model.named_modules()
        if (rate := _dropout_rate(module)) > 0
    }


def _mode_dependent_modules(model: nn.Module) -> list[str]:
    """Type names of the modules that compute differently under ``train()`` and ``eval()``:
    dropout of a non-zero rate (its own module, or inside a recurrent layer or attention),
    RReLU's random slopes, and normalisation that keeps running statistics (batch norm;
    instance norm with ``track_running_stats``), which eval mode uses instead of the batch's
    and never updates."""

    def differs(module: nn.Module) -> bool:
        if _dropout_rate(module) > 0:
            return True
        if isinstance(module, nn.modules.batchnorm._NormBase):
            return bool(module.track_running_stats)
        return isinstance(module, nn.RReLU)

    return sorted({type(module).__name__ for module in model.modules() if differs(module)})


def _parameter_collection(name: str) -> str:
    return "biases" if name.rsplit(".", 1)[-1].startswith("bias") else "weights"


def _find_loss(output: Any) -> torch.Tensor | None:
    """The scalar loss a model returned, if any (a Hugging Face ModelOutput, a dict, ...)."""
    if isinstance(output, torch.Tensor):
        return None
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    return None


def _returned_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors a model returned: the output itself, or the members of a tuple, list or
    mapping (a Hugging Face ModelOutput is one)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        output = list(output.values())
    if not isinstance(output, tuple | list):
        return []
    return [member for member in output if isinstance(member, torch.Tensor)]


def _shapes(tensors: Iterable[torch.Tensor]) -> collections.Counter[tuple[tuple[int, ...], str]]:
    """How many tensors there are of each shape and dtype."""
    return collections.Counter((tuple(t.shape), str(t.dtype)) for t in tensors)


def _group_settings(group: dict[str, Any]) -> dict[str, Any]:
    """A parameter group's settings that JSON holds (numbers, flags, names, pairs of numbers
    such as Adam's betas), without its parameters; a tensor learning rate as its value."""
    settings: dict[str, Any] = {}
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (tuple, list)):
            if all(isinstance(v, (int, float)) for v in value):
                settings[key] = list(value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            settings[key] = value
    return settings


def _in_backward() -> bool:
    """Whether the autograd engine is running a backward pass on this thread, as it is while
    activation checkpointing recomputes a segment (the id torch.utils.checkpoint asks)."""
    return bool(torch._C._current_graph_task_id() != -1)


def _forward_mode(module: nn.Module) -> str:
    return "train" if module.training and torch.is_grad_enabled() else "eval"


class TorchHook:
    """Records a model and its optimizer into a trace; create it with :func:`attach`.

    Steps: ``hook.step`` is the number of optimizer steps taken since the hook was attached
    (or the value a framework callback set). Records of a training forward pass, its loss, the
    gradients and weights before the update all carry the same step; the post-step hook then
    advances it. Driven by a framework instead (``optimizer=None``), the caller sets
    :attr:`step` and calls :meth:`record_optimizer_step` after backward and before the update.

    Mixed precision: with ``torch.amp.GradScaler`` the recorded gradients are unscaled. The
    scaler unscales the gradients before it calls ``optimizer.step()`` (in ``scaler.step`` or
    an earlier ``scaler.unscale_``); optimizers that unscale inside their fused kernel get the
    scale as ``optimizer.grad_scale`` instead, and the hook divides by it. An update the scaler
    skips (non-finite gradients) is no optimizer step: nothing is recorded for it and the step
    does not advance.

    Args:
        model: The module to record (a DistributedDataParallel/DataParallel wrapper is looked
            through, so names lack the ``module.`` prefix).
        optimizer: Records are made around each ``optimizer.step()``; None to drive the hook
            yourself (framework callbacks do).
        writer: The writer to record into.
        include: Glob(s) a tensor's name or tag must match (parameter names such as
            ``"encoder.*"``, module names, or tags such as ``"grad/*"``); default: all.
        exclude: Glob(s) of names or tags to leave out, e.g. ``["act/*", "preact/*"]``.
        capture_loss: Record the loss the model's forward returns (``output.loss`` or
            ``output["loss"]``, as Hugging Face models do when given labels).
        activation_kinds: More activation module types to record (or other kinds for the
            default ones), e.g. ``{MyGELU: "gelu"}``; they take precedence over
            :data:`ACTIVATION_KINDS`.
        owns_writer: Close the writer in :meth:`remove`.
        track_updates: Record ``update_l2`` of weights (keeps a float32 copy of them).
        stats_every: Record weights, gradients and activations of training steps that are a
            multiple of this (default 10; 1: every step); see :func:`attach`.
        stop_on: Judge the cheap rules in this process and ask the run to stop at a finding
            of this severity or above (``"error"`` or ``"warning"``; see dbgcli.live_rules).
        raise_on_stop: Raise :class:`~dbgcli.errors.TrainingStopped` from ``optimizer.step()``
            once the run is asked to stop (by ``stop_on`` or ``dbg watch --stop``).

    Attributes:
        enabled: While False, forward passes are not recorded (Lightning's sanity check sets
            it); explicit ``record_*`` calls and optimizer steps still are.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer | None,
        writer: TraceWriter,
        *,
        include: Patterns = None,
        exclude: Patterns = None,
        capture_loss: bool = True,
        activation_kinds: Mapping[type[nn.Module], str] | None = None,
        owns_writer: bool = False,
        track_updates: bool = True,
        stats_every: int = DEFAULT_STATS_EVERY,
        stop_on: str | None = None,
        raise_on_stop: bool = False,
    ) -> None:
        _check_stats_every(stats_every)
        check_stop_on(stop_on)
        self.model = _unwrap(model)
        # See _toggle_activation_hooks, which also finds compiled modules and other threads.
        self._toggles_activation_hooks = not isinstance(model, nn.DataParallel)
        self._noted_compiled = False
        self._noted_model_outputs = False
        self._thread = threading.get_ident()
        self._arming = threading.Lock()
        self.enabled = True
        # The caller's types first, so that a subclass of a default type gets the caller's kind.
        extra = dict(activation_kinds or {})
        self._activation_kinds = {
            **extra,
            **{t: kind for t, kind in ACTIVATION_KINDS.items() if t not in extra},
        }
        self.optimizer = optimizer
        self.writer = writer
        self.capture_loss = capture_loss
        self._owns_writer = owns_writer
        self._step = 0
        self._selected = _Selector(include, exclude)
        self._records_loss = self._selected("loss")
        self._parameters = self._select_parameters()
        if any(entry.parameter.is_cpu for entry in self._parameters):
            settle_malloc()  # see dbgcli.torch._malloc: else a step may fault its memory in
        self._handles: list[RemovableHandle] = []
        # Activation hooks, registered only while a pass that records tensors runs (see
        # _toggle_activation_hooks); the handles of those registered now.
        self._activation_hooks: list[tuple[nn.Module, Callable[..., None]]] = []
        self._armed: list[RemovableHandle] = []
        self._removed = False
        self._failures = FailureReporter()
        self._forward_depth = 0
        self._root_mode = "train"
        self._last_mode = "train"
        self._last_train_forward_step: int | None = None
        # The step of the latest forward pass under model.eval() with autograd on: followed by
        # an optimizer step and no training pass, the model trains in eval mode.
        self._graded_eval_step: int | None = None
        self._noted_eval_training = False
        self._noted_train_mode_eval = False
        self._recorded_optimizer_step: int | None = None
        self._pending_loss: dict[str, _Loss] = {}  # by mode
        # Per lr tag, per parameter group: the tag of its rate, None if not selected.
        self._lr_tags: dict[str, list[str | None]] = {}
        self._skipping_update = False
        # The zero_grad checks, one per optimizer (by id(); None: no optimizer), each with the
        # record period (step // stats_every) it was last armed in.
        self._carried: dict[int | None, tuple[CarriedGradientWatch, int]] = {}
        self._trainable = [
            (entry.name, entry.parameter)
            for entry in self._parameters
            if entry.parameter.requires_grad
        ]
        # The parameters the zero_grad check may probe: those an optimizer holds, once known.
        self._probe_candidates = self._trainable
        self._optimizers_seen: set[int] = set()
        self._batch_norm_probes: list[RemovableHandle] = []
        self._batch_norm_counts: dict[str, int] = {}
        self._batch_norm_traced = False
        self._held_by_optimizers: set[int] = set()
        self._optimizer_settings: list[tuple[str, list[dict[str, Any]]]] = []
        # The learning-rate series of each parameter's group, by parameter id.
        self._rate_tags: dict[int, str] = {}
        self.track_updates = track_updates
        self.stats_every = stats_every
        self._weights = Reducer(updates=track_updates)
        self._gradients = Reducer(l1=True)
        # Records reduced on the device and queued for the next transfer; the (mode, step) of
        # its tensor records; transfers started and not yet handed to the writer, oldest first.
        self._queue: list[_Queued] = []
        self._transfer = Transfer()
        self._queued_pass: tuple[str, int] | None = None
        self._in_flight: list[tuple[Transfer, list[_Queued]]] = []
        self._sent_at = time.monotonic()
        # When each (step, mode) not handed over yet started: the writer's timeline gets that
        # time, not the hand-over's (see TraceWriter.late_records).
        self._started: dict[tuple[int, str], float] = {}
        # Activations of the current pass not reduced yet, their bytes, and the memory their
        # blocks are stacked into.
        self._held: list[_HeldActivation] = []
        self._held_bytes = 0
        self._activation_memory = StackMemory()
        self._live = LiveRules(stop_on) if stop_on is not None else None
        self.raise_on_stop = raise_on_stop
        # Parameters that require no gradient, kept up to date at recorded steps
        # (see _note_frozen).
        self._frozen = dict.fromkeys(
            p.name for p in self._parameters if not p.parameter.requires_grad
        )
        writer.set_metadata(frozen_parameters=list(self._frozen))
        # Trainable parameters whose gradients include/exclude leaves out: their missing
        # gradient records say nothing of whether a gradient reaches them.
        unrecorded = [
            p.name for p in self._parameters if p.parameter.requires_grad and p.grad_tag is None
        ]
        if unrecorded:
            writer.set_metadata(**{schema.META_GRADIENTS_NOT_RECORDED: unrecorded})
        dropout = _dropout_rates(self.model)
        if dropout:
            writer.set_metadata(**{schema.META_DROPOUT: dropout})
        self._register_model_hooks()
        if optimizer is not None:
            if not hasattr(optimizer, "register_step_pre_hook"):
                raise TypeError(
                    f"{type(optimizer).__name__} has no register_step_pre_hook: pass a "
                    "torch.optim.Optimizer (torch >= 2.0), or None and drive the hook yourself"
                )
            self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))

    # -- public API ---------------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        """True once the run was asked to stop (``dbg watch --stop`` or ``stop_on``): end
        training at the next step boundary. The request is in ``hook.writer.stop_requested``."""
        return self.writer.stop_requested is not None

    @property
    def step(self) -> int:
        """The step records are made at: optimizer steps taken so far."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = int(value)

    def record_optimizer_step(
        self,
        optimizer: Optimizer | None = None,
        *,
        lr_tag: str = "lr",
        parameters: bool = True,
    ) -> None:
        """Record weights, biases, gradients and learning rates at the current step.

        Called automatically before each ``optimizer.step()`` when the hook was attached with
        an optimizer. Framework callbacks call it after backward and before the update, and
        the forgotten ``zero_grad()`` check runs here as there (a Lightning module under
        manual optimization zeroes its gradients itself, or not).

        Args:
            optimizer: Whose parameter groups give the learning rates (default: the attached
                optimizer; none are recorded without one).
            lr_tag: The tag of the first parameter group's learning rate; the others get
                ``<lr_tag>/group<i>``. A second optimizer of one step takes its own
                (``lr/opt1``), so that the rates of two optimizers do not alternate in one
                series.
            parameters: False records the learning rates (and notes the optimizer) only:
                for a second optimizer of a step whose parameters are recorded already.
        """

        def record() -> None:
            stepping = optimizer if optimizer is not None else self.optimizer
            self._check_carried_gradients(stepping)
            self._record_parameters(optimizer, None, lr_tag, parameters)
            self._arm_carried_gradients(stepping)

        self._guard("recording the optimizer step", record)

    def record_loss(self, loss: Any, *, mode: str | None = None, step: int | None = None) -> None:
        """Record a loss; the losses of one step and mode are averaged into one record.

        Args:
            loss: A scalar tensor (one value) or number; a tensor is detached, never modified.
            mode: ``train``, ``eval`` or ``predict`` (default: the mode of the latest forward
                pass of the model).
            step: Default: for a training loss, the step of the latest training forward pass
                (so calling it after ``optimizer.step()`` still files the loss under the step
                it belongs to); otherwise the current step.

        A training loss is written at its optimizer step (or at once if that step was already
        recorded); an evaluation loss when training resumes, at :meth:`flush` or
        :meth:`remove`. The average is the plain mean of the recorded values.
        """
        try:
            self._add_loss(loss, *self._where(mode, step))
        except Exception as error:  # noqa: BLE001 - recording must never stop training
            self._warn("recording the loss", error)

    def record(
        self,
        *,
        labels: Any = None,
        predictions: Any = None,
        inputs: Any = None,
        mode: str | None = None,
        step: int | None = None,
        raw: bool | None = None,
    ) -> None:
        """Record labels, predictions and/or model inputs (collections and tags of those names).

        Mode and step default as in :meth:`record_loss`. Predictions are whatever the model
        outputs (logits or probabilities, classes on the last axis). ``raw`` forces (True) or
        suppresses (False) keeping the full tensors; the data rules (class imbalance, input
        normalisation) judge full tensors and want several hundred samples of them.

        The tensors are written at once, after the records of other steps and modes the hook
        still holds (the losses and learning rates of the steps since the last recorded one,
        statistics on their way from a device): a record must not overtake those of earlier
        steps, or the trace's timeline would lose them. On a GPU, handing those over waits
        for their copy, as copying these tensors to the host would anyway.
        """

        def write() -> None:
            at_mode, at_step = self._where(mode, step)
            wanted = [
                (name, value)
                for name, value in (
                    ("labels", labels),
                    ("predictions", predictions),
                    ("inputs", inputs),
                )
                if value is not None and self._selected(name)
            ]
            if wanted:
                self._catch_up(at_mode, at_step)
            for name, value in wanted:
                self.writer.add_tensor(name, value, at_step, collection=name, mode=at_mode, raw=raw)

        self._guard("recording labels, predictions or inputs", write)

    def record_tensor(
        self,
        tag: str,
        value: Any,
        *,
        collection: str | None = None,
        kind: str | None = None,
        mode: str | None = None,
        step: int | None = None,
        raw: bool | None = None,
    ) -> None:
        """Record any tensor under ``tag`` (statistics always, values every ``raw_every``).

        Mode and step default as in :meth:`record_loss`; ``collection``, ``kind`` and ``raw``
        are passed to :meth:`TraceWriter.add_tensor`.
        """

        def write() -> None:
            at_mode, at_step = self._where(mode, step)
            self._catch_up(at_mode, at_step)
            self.writer.add_tensor(
                tag, value, at_step, collection=collection, kind=kind, mode=at_mode, raw=raw
            )

        self._guard(f"recording {tag!r}", write)

    def record_scalar(
        self, tag: str, value: Any, *, mode: str | None = None, step: int | None = None
    ) -> None:
        """Record a scalar (a metric, a hyperparameter that changes) under ``tag``.

        Mode and step default as in :meth:`record_loss`. The value reaches the writer after
        the records of earlier steps the hook still holds (a number waits for them, a tensor
        is written once they are: see :meth:`record`).
        """

        def write() -> None:
            at_mode, at_step = self._where(mode, step)
            self._queue_finished_losses(at_step)
            if isinstance(value, numbers.Number) and self._others_waiting(at_mode, at_step):
                # Behind them in the queue: no waiting for a device, and the order is kept.
                self._queue.append(_QueuedScalar(tag, value, at_step, at_mode))
            else:
                self._catch_up(at_mode, at_step)
                self.writer.add_scalar(tag, value, at_step, mode=at_mode)
            if self._live is not None and at_mode == "train" and is_loss(tag):
                stop_if(self.writer, self._live.loss(float(value), at_step))

        self._guard(f"recording {tag!r}", write)

    def flush(self) -> None:
        """Write the averaged losses still pending and commit the trace to disk."""
        self._guard("flushing", self._flush)

    def remove(self) -> None:
        """Remove every hook, write what is pending and close the trace if the hook opened it.

        The model and optimizer are left exactly as they were before :func:`attach`. Idempotent.
        """
        if self._removed:
            return
        self._removed = True
        for handle in [*self._handles, *self._armed]:
            handle.remove()
        self._handles.clear()
        self._armed.clear()
        for watch, _ in self._carried.values():
            watch.remove()
        self._guard("closing the trace", self._close)

    def __enter__(self) -> TorchHook:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    # -- setup --------------------------------------------------------------------------------
    def _select_parameters(self) -> list[_Parameter]:
        # Tables of lookups and normalisation layers, whatever their names (``emb``, ``e1.1``
        # for a BatchNorm in a Sequential): the rules judge a lookup's scale and gradient
        # differently from a layer's, and a network with normalisation layers differently.
        kinds: dict[int, str] = {}
        for module in self.model.modules():
            kind = _parameter_kind(module)
            if kind is not None:
                kinds.update(dict.fromkeys(map(id, module.parameters(recurse=False)), kind))
        selected = []
        prefix = _wrapper_prefix(self.model)
        for full_name, parameter in self.model.named_parameters():
            name = _unwrapped_name(full_name, prefix)
            collection = _parameter_collection(name)
            grad_tag = f"grad/{name}"
            record_weight = self._selected(name)
            record_grad = parameter.requires_grad and self._selected(name, grad_tag)
            if record_weight or record_grad:
                selected.append(
                    _Parameter(
                        name,
                        parameter,
                        collection,
                        record_weight,
                        grad_tag if record_grad else None,
                        kinds.get(id(parameter)),
                    )
                )
        return selected

    def _register_model_hooks(self) -> None:
        """Register the model's hooks. Traced by torch.compile, they would read the hook's
        step and state, and dynamo would guard on them and recompile the model at every step
        until its recompile limit, then leave it uncompiled. So the model's own hooks run
        eagerly (``torch.compiler.disable``: a graph break before and after its call), the
        activation hooks are nothing in a compiled graph (see :meth:`_activation_hook`), and
        the probe that tells the hook it runs compiled reads nothing."""
        model = self.model
        self._handles.append(model.register_forward_pre_hook(self._compile_probe))
        self._handles.append(model.register_forward_pre_hook(_eager(self._before_model_forward)))
        self._handles.append(
            model.register_forward_hook(_eager(self._after_model_forward), always_call=True)
        )
        prefix = _wrapper_prefix(model)
        for full_name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                probe = self._batch_norm_probe(_unwrapped_name(full_name, prefix))
                self._batch_norm_probes.append(module.register_forward_pre_hook(probe))
                self._handles.append(self._batch_norm_probes[-1])
            kind = _activation_kind(module, self._activation_kinds)
            if kind is None:
                continue
            name = _unwrapped_name(full_name, prefix)
            act_tag = f"act/{name}" if self._selected(name, f"act/{name}") else None
            preact_tag = None
            if kind in PREACTIVATION_KINDS and self._selected(name, f"preact/{name}"):
                preact_tag = f"preact/{name}"
            if act_tag or preact_tag:
                self._activation_hooks.append(
                    (module, self._activation_hook(kind, act_tag, preact_tag))
                )
        # Until the model is called as a whole, its activation hooks are what marks a pass.
        self._arm_activation_hooks(True)

    def _batch_norm_probe(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        """A batch norm's pre-hook, until the first update: how many values its training
        input holds per channel (the batch, times the positions of a sequence or an image),
        the fewest seen. A batch norm in eval mode (frozen) normalises with its running
        statistics and is not counted, nor is a compiled pass. The run metadata's
        ``batch_norm`` gets the counts."""

        def probe(module: nn.Module, args: tuple[Any, ...]) -> None:
            if torch.compiler.is_compiling():
                self._batch_norm_traced = True
                return
            if not (module.training and torch.is_grad_enabled()):
                return
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1] > 0:
                count = x.numel() // x.shape[1]
                seen = self._batch_norm_counts.get(name, count)
                self._batch_norm_counts[name] = min(seen, count)

        return probe

    def _arm_activation_hooks(self, armed: bool) -> None:
        """Register the activation hooks (each before any other forward hook of its module, so
        that it sees the module's own output), or remove them. A module with a forward hook
        takes torch's slow call path, which costs microseconds per call even for a hook that
        returns at once: removed between the passes that record tensors, they cost nothing."""
        with self._arming:
            if armed and not self._armed:
                self._armed = [
                    module.register_forward_hook(hook, prepend=True)
                    for module, hook in self._activation_hooks
                ]
            elif not armed and self._armed:
                for handle in self._armed:
                    handle.remove()
                self._armed = []

    def _toggle_activation_hooks(self, module: nn.Module, due: bool) -> None:
        """Arm the activation hooks for a pass that records tensors (``due``), disarm them for
        another; or keep them armed for good once the model is seen compiled (a compiled model
        keeps the hooks it was compiled with, whatever is registered later) or run by replicas
        of nn.DataParallel or another thread (which would see the hooks change under them).
        Called where the hooks would change, so that those checks cost nothing in between."""
        if (
            vars(module).get("_is_replica", False)  # getattr would raise inside first
            or threading.get_ident() != self._thread
        ):
            self._keep_activation_hooks()
        elif not due and any(_compiled(each) for each in self.model.modules()):
            self._seen_compiled()  # found once, when the hooks would first be removed
        else:
            self._arm_activation_hooks(due)

    def _keep_activation_hooks(self) -> None:
        self._toggles_activation_hooks = False
        self._arm_activation_hooks(True)

    # -- hooks --------------------------------------------------------------------------------
    def _compile_probe(self, module: nn.Module, args: Any) -> None:
        """Traced when dynamo compiles the model's call: from then on the activation hooks
        stay registered (a compiled model keeps the hooks it was compiled with). Eager calls
        find nothing to do."""
        if torch.compiler.is_compiling():
            self._seen_compiled()

    @_eager
    def _seen_compiled(self) -> None:
        if self._toggles_activation_hooks:
            self._keep_activation_hooks()
        if not self._noted_compiled:
            self._noted_compiled = True
            self._guard(
                "noting the compiled model",
                lambda: self.writer.set_metadata(**{schema.META_COMPILED: True}),
            )

    def _before_model_forward(self, module: nn.Module, args: Any) -> None:
        self._forward_depth += 1
        if self._forward_depth == 1 and self.enabled:
            # The mode of the whole pass is decided here, so that activation checkpointing
            # (which runs segments under no_grad) does not turn training records into eval.
            mode = self._root_mode = _forward_mode(module)
            if mode == "eval":
                if torch.is_grad_enabled():
                    self._graded_eval_step = self._step
                elif module.training and self._step > 0 and not self._noted_train_mode_eval:
                    self._guard(
                        "noting an evaluation in training mode", self._note_train_mode_evaluation
                    )
            due = self._tensors_due(mode)
            if self._toggles_activation_hooks and due != bool(self._armed):
                try:
                    self._toggle_activation_hooks(module, due)
                except Exception as error:  # noqa: BLE001 - recording must never stop training
                    self._warn("registering the activation hooks", error)
            try:
                self._note_forward(mode)
            except Exception as error:  # noqa: BLE001 - recording must never stop training
                self._warn("starting a forward pass", error)

    def _after_model_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._forward_depth = max(0, self._forward_depth - 1)
        if self._forward_depth == 0 and self.enabled:
            if self._held:
                if not self._noted_model_outputs:
                    self._guard("noting the model's outputs", lambda: self._note_outputs(output))
                self._guard("recording activations", self._reduce_held)
            if self.capture_loss and not isinstance(output, torch.Tensor):
                try:
                    loss = _find_loss(output)
                    if loss is not None:
                        mode = self._root_mode
                        self._add_loss(loss, mode, self._default_step(mode))
                except Exception as error:  # noqa: BLE001 - recording must never stop training
                    self._warn("capturing the loss", error)

    def _note_outputs(self, output: Any) -> None:
        """Note, at the first pass that records activations, those of the model's output
        layer: an activation module whose output the model returns (a multi-label head's
        Sigmoid, a generator's Tanh) is pushed to its bounds by a confident model, by design,
        and the saturation rules leave it out."""
        self._noted_model_outputs = True
        returned = [
            (tensor.data_ptr(), tensor.numel())
            for tensor in _returned_tensors(output)
            if tensor.numel()
        ]
        names = {
            held.tag.partition("/")[2]
            for held in self._held
            if held.collection == "activations"
            and (held.values.data_ptr(), held.values.numel()) in returned
        }
        tags = sorted(held.tag for held in self._held if held.tag.partition("/")[2] in names)
        if tags:
            self.writer.set_metadata(**{schema.META_MODEL_OUTPUTS: tags})

    def _activation_hook(
        self, kind: str, act_tag: str | None, preact_tag: str | None
    ) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # Traced into a compiled graph, the hook is nothing: reading the hook's step
            # there made dynamo recompile at every step, and running it eagerly (a graph
            # break) makes a loop over the model's layers, as nn.Sequential's, fall back to
            # eager whole. A compiled pass records no activations (noted in the metadata).
            if torch.compiler.is_compiling() or not self.enabled:
                return
            try:
                mode = self._root_mode if self._forward_depth else _forward_mode(module)
                if not self._forward_depth:
                    if _in_backward():
                        # Activation checkpointing recomputing a segment: already recorded.
                        return
                    # A submodule called on its own (a LightningModule's training_step, a
                    # loop calling model.encoder then model.head): this call marks the pass.
                    self._note_forward(mode)
                if not self._tensors_due(mode):
                    return
                records = []
                if act_tag is not None and isinstance(output, torch.Tensor):
                    records.append((act_tag, output, "activations"))
                if preact_tag is not None and args and isinstance(args[0], torch.Tensor):
                    records.append((preact_tag, args[0], "preactivations"))
                if records:
                    self._record_activations(records, kind, mode)
            except Exception as error:  # noqa: BLE001 - recording must never stop training
                self._warn(f"recording activations ({act_tag or preact_tag})", error)

        return hook

    def _before_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        try:
            # Set by GradScaler.step only for optimizers that unscale inside a fused kernel.
            scale = getattr(optimizer, "grad_scale", None)
            found_inf = getattr(optimizer, "found_inf", None)
            self._skipping_update = isinstance(found_inf, torch.Tensor) and bool(found_inf.item())
            if not self._skipping_update:
                self._check_carried_gradients(optimizer)
                self._record_parameters(optimizer, scale)
                self._arm_carried_gradients(optimizer)
        except Exception as error:  # noqa: BLE001 - recording must never stop training
            self._warn("recording the optimizer step", error)

    def _after_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._skipping_update:
            self._skipping_update = False
            return
        self._step += 1
        request = self.writer.stop_requested
        if self.raise_on_stop and request is not None:
            raise TrainingStopped(request)

    # -- recording ----------------------------------------------------------------------------
    def _note_optimizer(self, optimizer: Optimizer, rate_tags: Sequence[str | None]) -> None:
        """Note each optimizer's type and its groups' settings (weight decay, momentum...), at
        its first update, with the learning-rate series (``rate_tags``, one per group) each
        parameter's group records when there are several groups; the trainable parameters
        that none of the optimizers seen so far holds (an optimizer built before the model
        was replaced, a layer left out by mistake), which stay out of the zero_grad check: no
        zero_grad() of theirs clears them; and, at the first, how many values the batch
        norms normalised each channel over (see :meth:`_batch_norm_probe`).

        An optimizer that holds none of the model's parameters and tensors of other shapes
        or dtypes keeps copies by design (fp32 master weights, flat shards): it says nothing
        of which parameters are trained. One that holds tensors of the very shapes and dtypes
        is an optimizer of another instance of the model."""
        self._optimizers_seen.add(id(optimizer))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        held = {id(p) for p in params}
        trainable = self._trainable
        holds_copies = not any(id(p) in held for _, p in trainable) and _shapes(params) != _shapes(
            p for _, p in trainable
        )
        if not holds_copies:
            self._held_by_optimizers |= held
            self._probe_candidates = [c for c in trainable if id(c[1]) in self._held_by_optimizers]
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the real one
        self._optimizer_settings.append(
            (type(inner).__name__, [_group_settings(group) for group in optimizer.param_groups])
        )
        names = list(dict.fromkeys(name for name, _ in self._optimizer_settings))
        noted: dict[str, Any] = {
            schema.META_OPTIMIZER: {
                "type": ", ".join(names),
                "groups": [g for _, groups in self._optimizer_settings for g in groups],
            }
        }
        for group, tag in zip(optimizer.param_groups, rate_tags, strict=True):
            if tag is not None:
                self._rate_tags.update((id(p), tag) for p in group["params"])
        if len(set(self._rate_tags.values())) > 1:
            noted[schema.META_PARAMETER_GROUPS] = {
                name: self._rate_tags[id(p)] for name, p in trainable if id(p) in self._rate_tags
            }
        if self._held_by_optimizers or not holds_copies:
            noted[schema.META_NOT_IN_OPTIMIZER] = [
                name for name, p in trainable if id(p) not in self._held_by_optimizers
            ]
        if self._batch_norm_probes:
            # A compiled model keeps the hooks it was compiled with: removing them would
            # recompile it, and there they do nothing.
            if not self._batch_norm_traced:
                for handle in self._batch_norm_probes:
                    handle.remove()
            self._batch_norm_probes = []
            if self._batch_norm_counts:
                noted[schema.META_BATCH_NORM] = dict(self._batch_norm_counts)
        self.writer.set_metadata(**noted)

    def _record_parameters(
        self,
        optimizer: Optimizer | None,
        scale: Any,
        lr_tag: str = "lr",
        parameters: bool = True,
    ) -> None:
        step = self._step
        if self._pending_loss:
            self._write_pending_loss(lambda mode, pending: mode != "train" or pending.step <= step)
        writer = self.writer
        optimizer = optimizer if optimizer is not None else self.optimizer
        tags: list[str | None] = []
        if optimizer is not None:
            groups = optimizer.param_groups
            tags = self._lr_tags.get(lr_tag, [])
            if len(tags) != len(groups):
                names = [lr_tag if i == 0 else f"{lr_tag}/group{i}" for i in range(len(groups))]
                tags = self._lr_tags[lr_tag] = [n if self._selected(n) else None for n in names]
            for tag, group in zip(tags, groups):
                if tag is not None:
                    rate = group["lr"]
                    if isinstance(rate, torch.Tensor):
                        rate = rate.item()  # a scheduler may change it in place
                    self._queue.append(_QueuedScalar(tag, rate, step))
        if (
            self._graded_eval_step == step
            and self._last_train_forward_step != step
            and not self._noted_eval_training
        ):
            self._note_eval_training(step)
        if optimizer is not None and id(optimizer) not in self._optimizers_seen:
            self._guard("noting the optimizer", lambda: self._note_optimizer(optimizer, tags))
        if self._recorded_optimizer_step is None and step > 1:
            # The first update is not the run's: training resumed from a checkpoint (or the
            # caller set the step to continue a run), so the trace starts from a trained model.
            # (A first step of 1 is a count from 1, not a checkpoint of one update.)
            writer.set_metadata(**{schema.META_RESUMED_FROM_STEP: step})
        self._recorded_optimizer_step = step
        if not parameters or step % self.stats_every:  # no tensors at this step
            if time.monotonic() - self._sent_at >= writer.flush_secs:
                self._send()  # the scalars reach the writer at least once a commit interval
            elif self._in_flight:
                self._hand_over(wait=False)
            return
        # The memory the last recorded step's statistics were stacked into is reused now.
        self._hand_over(wait=True)
        keep_raw = writer.raw_due(step)
        weights = [
            (entry.name, entry.parameter, entry.collection, entry.kind)
            for entry in self._parameters
            if entry.record_weight
        ]
        grads: list[tuple[str, torch.Tensor, str, str | None]] = []
        for entry in self._parameters:
            self._note_frozen(entry.name, not entry.parameter.requires_grad)
            grad = entry.parameter.grad
            if entry.grad_tag is not None and grad is not None:
                if grad.layout != torch.strided:
                    # nn.Embedding(sparse=True): its statistics count the rows not looked up.
                    grad = grad.to_dense()
                if scale is not None:
                    with torch.no_grad():
                        grad = grad / scale
                grads.append((entry.grad_tag, grad, "gradients", entry.kind))
        # Statistics are computed where the tensors are (float32 ones in host memory by the
        # compiled kernel) and reach the host with the step's activations and losses in one
        # transfer.
        try:
            for reducer, records in ((self._weights, weights), (self._gradients, grads)):
                # A kind is the writer's per call: embedding tables are reduced apart.
                for kind in dict.fromkeys(kind for *_, kind in records):
                    chosen = [record for record in records if record[3] == kind]
                    names = [name for name, *_ in chosen]
                    tensors: list[torch.Tensor] = [tensor for _, tensor, *_ in chosen]
                    collections = [collection for _, _, collection, _ in chosen]
                    for members, pending in reducer.reduce(tensors, names, self._transfer):
                        self._queue_tensors(
                            members, names, tensors, collections, pending, keep_raw, kind
                        )
        finally:
            # Also after a failure: the records queued so far leave with their full tensors
            # written or copied before the optimizer changes them.
            self._send()

    def _note_frozen(self, name: str, frozen: bool) -> None:
        """Keep the metadata's ``frozen_parameters`` to the parameters that require no
        gradient now (a backbone frozen after the head warmed up, a GAN's discriminator
        switched off around the generator's step)."""
        if frozen == (name in self._frozen):
            return
        if frozen:
            self._frozen[name] = None
        else:
            del self._frozen[name]
        self.writer.set_metadata(frozen_parameters=list(self._frozen))

    def _note_eval_training(self, step: int) -> None:
        """The optimizer steps after a forward pass under ``model.eval()`` with autograd on and
        no training pass: the model trains in eval mode (``model.train()`` never called, or an
        evaluation left it so). Its passes, losses among them, are recorded as evaluation;
        say so once, in the log and in the run metadata (the loss rules' skip reason reads
        it)."""
        self._noted_eval_training = True
        modules = _mode_dependent_modules(self.model)
        self.writer.set_metadata(
            **{schema.META_TRAINED_IN_EVAL_MODE: {"step": step, "modules": modules}}
        )
        log.warning(
            "dbg: %s: the model is in eval mode while it trains (optimizer step %d followed a "
            "forward pass under model.eval() with gradients on): %s, and its losses are "
            "recorded as evaluation; call model.train() before training steps",
            self.writer.path,
            step,
            f"its {', '.join(modules)} modules compute as in inference"
            if modules
            else "it has no dropout or batch norm modules",
        )

    def _note_train_mode_evaluation(self) -> None:
        """A forward pass without gradients after training began, with the model in training
        mode: an evaluation that did not call ``model.eval()``. When the model has modules
        that compute differently in eval mode, its dropout was on and its batch norms used
        (and updated their running statistics with) the evaluation batches: say so once, in
        the log and in the run metadata. (Passes before the first update are left alone: a
        data-dependent initialisation runs them so on purpose; so are passes while a batch
        norm's momentum is None, as ``torch.optim.swa_utils.update_bn`` sets it to recompute
        the running statistics.)"""
        if any(
            isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is None
            for module in self.model.modules()
        ):
            return
        self._noted_train_mode_eval = True
        modules = _mode_dependent_modules(self.model)
        if not modules:
            return
        step = self._step
        self.writer.set_metadata(
            **{schema.META_EVALUATED_IN_TRAIN_MODE: {"step": step, "modules": modules}}
        )
        log.warning(
            "dbg: %s: a forward pass without gradients at optimizer step %d ran with the model "
            "in training mode: its %s modules computed as in training; call model.eval() "
            "before evaluating (and model.train() after)",
            self.writer.path,
            step,
            ", ".join(modules),
        )

    def _arm_carried_gradients(self, optimizer: Optimizer | None) -> None:
        """Arm ``optimizer``'s zero_grad check at its first step of a record period, on a
        parameter it holds: each optimizer of a loop zeroes its own gradients, or forgets to,
        and steps at steps of its own (two that alternate never share a recorded step)."""
        key = id(optimizer) if optimizer is not None else None
        watch, armed_in = self._carried.get(key, (None, -1))
        period = self._step // self.stats_every
        if period == armed_in:
            return
        if watch is None:
            watch = CarriedGradientWatch(self._note_carried_gradients)
        self._carried[key] = (watch, period)
        candidates = self._probe_candidates
        if optimizer is not None:
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            candidates = [c for c in candidates if id(c[1]) in held]
        watch.arm(self._step, candidates)

    def _check_carried_gradients(self, optimizer: Optimizer | None) -> None:
        # Only the probe's own optimizer's next step says whether its gradient was zeroed: a
        # GAN's generator steps between two of its discriminator's, whose gradient the
        # generator's loss reaches, and zeroes only its own.
        entry = self._carried.get(id(optimizer) if optimizer is not None else None)
        if entry is None:
            return
        watch = entry[0]
        verdict = watch.check()
        if verdict is None:
            return
        step, carried = verdict
        deferred = _deferred(self._transfer, carried.double().reshape(1))
        self._queue.append(_CarriedVerdict(step, deferred, watch))

    def _note_carried_gradients(self, step: int, parameter: str) -> None:
        """The gradients were not zeroed between optimizer steps (see
        :mod:`dbgcli.torch._zero_grad`): say so once, in the log and in the run metadata."""
        if self.writer.metadata.get(schema.META_GRADIENTS_NOT_ZEROED):
            return  # another optimizer's check said so already
        self.writer.set_metadata(
            **{schema.META_GRADIENTS_NOT_ZEROED: {"step": step, "parameter": parameter}}
        )
        log.warning(
            "dbg: %s: the gradients are not zeroed between optimizer steps: the gradient of %s "
            "at step %d was still part of the next step's (optimizer.zero_grad() missing?); "
            "each update follows the sum of every gradient so far",
            self.writer.path,
            parameter,
            step,
        )

    def _tensors_due(self, mode: str) -> bool:
        """Whether tensors of this pass are recorded: every evaluation pass, and training
        steps that are a multiple of ``stats_every``."""
        return mode != "train" or self._step % self.stats_every == 0

    def _record_activations(
        self, records: list[tuple[str, torch.Tensor, str]], kind: str, mode: str
    ) -> None:
        """Hold activations until the forward pass ends (or :data:`HELD_ACTIVATION_BYTES`
        are held), when those of one shape are stacked and reduced together: the tensors are
        alive until then anyway, for the backward pass. Full tensors, on ``raw_every`` steps,
        are copied at once, since the values may change afterwards."""
        keep_raw = self.writer.raw_due(self._step)
        for tag, tensor, collection in records:
            values = tensor.detach()  # and its clone: no graph either way
            raw = values.clone() if keep_raw else None
            held = _HeldActivation(
                tag, values, values._version, collection, kind, mode, self._step, raw
            )
            self._held.append(held)
            self._held_bytes += values.nbytes
        self._queued_pass = (mode, self._step)
        if self._held_bytes > HELD_ACTIVATION_BYTES:
            self._reduce_held()

    def _reduce_held(self) -> None:
        """Queue the statistics of the held activations, one reduction per shape."""
        if not self._held:
            return
        held, self._held, self._held_bytes = self._held, [], 0
        groups: dict[tuple[Any, ...], list[_HeldActivation]] = {}
        for record in held:
            if record.values._version != record.version:
                self._warn(
                    f"recording {record.tag}",
                    RuntimeError(
                        "the tensor was changed in place after its module returned it; this "
                        "record is left out"
                    ),
                )
                continue
            values = record.values
            key = (
                record.mode,
                record.step,
                record.kind,
                record.collection,
                values.shape,
                values.dtype,
                values.device,
            )
            groups.setdefault(key, []).append(record)
        for (mode, step, kind, collection, *_), members in groups.items():
            pending, units = reduce_activations(
                [m.values for m in members],
                kind,
                collection,
                self._transfer,
                memory=self._activation_memory,
            )
            raws = [m.raw for m in members if m.raw is not None]
            self._queue.append(
                _QueuedTensors(
                    step,
                    mode,
                    kind,
                    pending,
                    [m.tag for m in members],
                    [collection] * len(members),
                    [(tuple(m.values.shape), _numpy_dtype(m.values)) for m in members],
                    raws or None,  # all or none: the members share their step
                    units,
                )
            )
        self._activation_memory.release_unused()

    def _queue_tensors(
        self,
        members: list[int],
        tags: list[str],
        tensors: list[torch.Tensor],
        collections: list[str],
        pending: Pending,
        keep_raw: bool,
        kind: str | None,
    ) -> None:
        """Queue the parameter records of ``tensors[i]`` for ``i`` in ``members`` (one reduced
        block, of one ``kind``)."""
        raws = [tensors[i].detach() for i in members] if keep_raw else None
        self._queued_pass = ("train", self._step)
        self._queue.append(
            _QueuedTensors(
                self._step,
                "train",
                kind,
                pending,
                [tags[i] for i in members],
                [collections[i] for i in members],
                [(tuple(tensors[i].shape), _numpy_dtype(tensors[i])) for i in members],
                raws,
                raws_live=True,
            )
        )

    def _send(self) -> None:
        """Start the transfer of everything queued, and hand over what has landed."""
        try:
            self._reduce_held()
            self._start_transfer()
            self._hand_over(wait=False)
        finally:
            # Weights and gradients change once the hook returns: full tensors not written yet
            # (a GPU transfer under way, a failure) are copied now. On the CPU they were
            # written already, without a copy.
            for records in [self._queue, *(queued for _, queued in self._in_flight)]:
                for record in records:
                    if isinstance(record, _QueuedTensors):
                        record.keep_raws()

    def _start_transfer(self) -> None:
        """Send the records queued (the held activations stay held)."""
        self._sent_at = time.monotonic()
        if self._queue:
            self._transfer.start()
            self._in_flight.append((self._transfer, self._queue))
            self._transfer, self._queue, self._queued_pass = Transfer(), [], None

    def _others_waiting(self, mode: str, step: int) -> bool:
        """Whether the hook holds records of another step or mode than ``(mode, step)`` that
        the writer has not seen: queued, on their way from a device, or held activations.

        The writer's timeline gets a row for each step of a mode as it first sees it, and none
        for a record handed over late whose step is older than the newest it saw of that mode
        (TraceWriter.late_records): a record the caller writes at once must not overtake
        those, or their steps are lost from the timeline (and a mode seen in between would
        get a second row for its step). Records of ``(mode, step)`` itself may wait: the
        step's row is made by whichever comes first."""
        for records in (self._queue, *(queued for _, queued in self._in_flight)):
            for record in records:
                if isinstance(record, _CarriedVerdict):
                    continue  # no record of the trace
                if record.step != step or record.mode != mode:
                    return True
        return self._others_held(mode, step)

    def _others_held(self, mode: str, step: int) -> bool:
        return any(held.step != step or held.mode != mode for held in self._held)

    def _queue_finished_losses(self, step: int) -> None:
        """Queue the losses still averaged over steps before ``step``: their passes are over."""
        if self._pending_loss:
            self._write_pending_loss(lambda _, pending: pending.step < step)

    def _catch_up(self, mode: str, step: int) -> None:
        """Hand every record of another step or mode over to the writer, before the caller
        writes one at ``(mode, step)`` at once (see :meth:`_others_waiting`). Waits for a
        device's transfer: the caller's tensor, copied to the host next, would wait as long.
        Held activations stay held while all are of ``(mode, step)``, the pass under way;
        once one is of another pass, all are reduced and handed over."""
        try:
            self._queue_finished_losses(step)
            if not self._others_waiting(mode, step):
                return
            if self._others_held(mode, step):
                self._reduce_held()
            self._start_transfer()
            self._hand_over(wait=True)
        except Exception as error:  # noqa: BLE001 - the caller's record is written all the same
            self._warn("handing over the records of earlier steps", error)

    def _hand_over(self, *, wait: bool) -> None:
        """Write the records of the transfers that have landed (all of them if ``wait``), in
        the order they were made."""
        while self._in_flight:
            transfer, records = self._in_flight[0]
            if not (wait or transfer.ready()):
                return
            del self._in_flight[0]
            compute_tables([r.pending for r in records if isinstance(r, _QueuedTensors)])
            with self.writer.late_records(self._started):
                for record in records:
                    record.write(self.writer, self._live)
            self._forget_starts()

    def _forget_starts(self) -> None:
        """Drop the start times of steps whose records have all been handed over."""
        oldest = self._step
        for records in [self._queue, *(queued for _, queued in self._in_flight)]:
            if records:
                oldest = min(oldest, records[0].step)
        for pending in self._pending_loss.values():
            oldest = min(oldest, pending.step)
        for key in [key for key in self._started if key[0] < oldest]:
            del self._started[key]

    def _note_forward(self, mode: str) -> None:
        self._last_mode = mode
        if (self._step, mode) not in self._started:
            self._started[self._step, mode] = time.time()
        if mode == "train":
            self._last_train_forward_step = self._step
            if self._pending_loss:
                # A training pass ends the evaluation pass before it.
                self._write_pending_loss(lambda pending_mode, _: pending_mode != "train")
        queued = self._queued_pass
        if queued is not None and queued != (mode, self._step):
            # The pass whose tensors are queued is over (an evaluation, or a training step
            # no optimizer step recorded): send them rather than hold their sources.
            self._send()
        elif self._in_flight:
            self._hand_over(wait=False)

    def _default_step(self, mode: str) -> int:
        if mode == "train" and self._last_train_forward_step is not None:
            return self._last_train_forward_step
        return self._step

    def _where(self, mode: str | None, step: int | None) -> tuple[str, int]:
        at_mode = mode if mode is not None else self._last_mode
        return at_mode, self._default_step(at_mode) if step is None else int(step)

    def _add_loss(self, loss: Any, mode: str, step: int) -> None:
        if not self._records_loss:
            return
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"a loss has one value, got a tensor of shape {tuple(loss.shape)}")
            value: Any = loss.detach()
        else:
            value = float(loss)
        pending = self._pending_loss.get(mode)
        if pending is not None and pending.step != step:
            self._write_pending_loss(lambda pending_mode, _: pending_mode == mode)
            pending = None
        if pending is None:
            pending = self._pending_loss[mode] = _Loss(step, mode, value, 1)
        else:
            pending.total = pending.total + value
            pending.count += 1
        recorded = self._recorded_optimizer_step
        if mode == "train" and recorded is not None and step <= recorded:
            # The step's gradients are already written: no more micro-batches can join it.
            self._write_pending_loss(lambda pending_mode, _: pending_mode == "train")

    def _write_pending_loss(self, which: Callable[[str, _Loss], bool]) -> None:
        """Queue the losses ``which`` selects: a loss tensor on a device reaches the host with
        the next transfer, so that recording it never waits for the device; one in host memory
        is read when it is written."""
        for mode, pending in list(self._pending_loss.items()):
            if which(mode, pending):
                del self._pending_loss[mode]
                if isinstance(pending.total, torch.Tensor):
                    pending.total = _deferred(self._transfer, pending.total)
                self._queue.append(pending)

    def _write_everything(self) -> None:
        self._write_pending_loss(lambda mode, pending: True)
        self._send()
        self._hand_over(wait=True)

    def _flush(self) -> None:
        self._write_everything()
        self.writer.flush()

    def _close(self) -> None:
        self._write_everything()
        if self._owns_writer:
            self.writer.close()
        else:
            self.writer.flush()

    # -- failure handling ---------------------------------------------------------------------
    def _guard(self, what: str, action: Callable[[], object]) -> None:
        self._failures.guard(what, action)

    def _warn(self, what: str, error: BaseException) -> None:
        self._failures.warn(what, error)


@dataclass
class CallbackRecording:
    """How a framework callback records: checked when the callback is made, used at train start.

    Hugging Face and Lightning callbacks are created before training starts (and before the
    process group of a distributed run exists); this holds their settings and attaches the
    :class:`TorchHook` when the framework hands over the model.
    """

    trace: TracePath | TraceWriter
    raw_every: int | None = None
    raw_budget: int | None = None
    include: Patterns = None
    exclude: Patterns = None
    stats_every: int = DEFAULT_STATS_EVERY
    overwrite: bool = False
    flush_secs: float = 10.0
    metadata: Mapping[str, Any] | None = None
    stop_on: str | None = None

    def __post_init__(self) -> None:
        _check_stats_every(self.stats_every, self.raw_every)
        check_stop_on(self.stop_on)
        check_raw_settings(self.trace, raw_every=self.raw_every, raw_budget=self.raw_budget)
        refuse_existing(self.trace, self.overwrite)

    def attach(
        self,
        model: nn.Module,
        *,
        framework: str,
        hyperparameters: Mapping[str, Any],
        metadata: Mapping[str, Any],
        activation_kinds: Mapping[type[nn.Module], str] | None = None,
    ) -> TorchHook:
        """Open the trace and attach a hook driven by the callback (no optimizer hooks)."""
        writer, owned = open_writer(
            self.trace,
            framework=framework,
            raw_every=self.raw_every,
            raw_budget=self.raw_budget,
            overwrite=self.overwrite,
            flush_secs=self.flush_secs,
            hyperparameters=hyperparameters,
            metadata={**(self.metadata or {}), "torch_version": torch.__version__, **metadata},
        )
        try:
            return TorchHook(
                model,
                None,
                writer,
                include=self.include,
                exclude=self.exclude,
                capture_loss=False,
                activation_kinds=activation_kinds,
                owns_writer=owned,
                stats_every=self.stats_every,
                stop_on=self.stop_on,
            )
        except BaseException:
            if owned:
                writer.close()
            raise


def attach(
    model: nn.Module,
    optimizer: Optimizer | None,
    trace: TracePath | TraceWriter,
    *,
    raw_every: int | None = None,
    raw_budget: int | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    capture_loss: bool = True,
    activation_kinds: Mapping[type[nn.Module], str] | None = None,
    track_updates: bool = True,
    stats_every: int = DEFAULT_STATS_EVERY,
    overwrite: bool = False,
    flush_secs: float = 10.0,
    hyperparameters: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    stop_on: str | None = None,
    raise_on_stop: bool = False,
) -> TorchHook:
    """Record ``model`` and ``optimizer`` into a trace; returns the hook (remove it when done).

    Example::

        with attach(model, optimizer, "run.h5") as hook:
            for x, y in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                hook.record_loss(loss)
                loss.backward()
                optimizer.step()

    Args:
        model: The module to record.
        optimizer: The optimizer whose steps define the steps of the trace, or None to drive
            the hook yourself (set ``hook.step``, call ``hook.record_optimizer_step()``).
        trace: A path (a new trace; ``run.rank<k>.h5`` per rank under torch.distributed) or
            an open :class:`TraceWriter`, which stays open after :meth:`TorchHook.remove`.
        raw_every: Keep full tensors every this many steps (default 100), a multiple of
            ``stats_every``. Only for a path: a writer keeps its own setting.
        raw_budget: Bytes of full tensors per step, on average, beyond which the steps
            ``raw_every`` picks are spaced further apart (default 1 MiB, about 1 GiB per 1,000
            steps; 0: no limit). Only for a path. See :class:`TraceWriter`.
        include: Glob(s) on parameter and module names or on tags; default: everything.
        exclude: Glob(s) on names or tags to leave out.
        capture_loss: Record the loss found in the model's output (see :class:`TorchHook`).
        activation_kinds: More activation module types to record, e.g. ``{MyGELU: "gelu"}``.
        track_updates: Record ``update_l2`` (the norm of each weight's change per step), which
            keeps a float32 copy of the recorded weights; turn off for models whose weights
            do not fit twice in memory.
        stats_every: Record weights, gradients and activations only at training steps that
            are a multiple of this (default 10; ``stats_every=1`` records every step); the
            loss, metrics, learning rates and evaluation passes are recorded every time. Tools
            users know sample as sparsely or more (SageMaker Debugger's default collections
            every 500 steps, ``wandb.watch`` every 1,000, Lightning's logger every 50); the
            rules count persistence in steps and read ``update_l2`` per step, so 10 keeps
            them dense enough (see docs/capture.md). ``update_l2`` is the change since the
            previous recorded step.
        overwrite: Replace an existing trace file.
        flush_secs: Commit to disk at most this many seconds apart.
        hyperparameters: Stored in the trace's metadata.
        metadata: Free-form run metadata.
        stop_on: ``"error"`` or ``"warning"``: judge the cheap rules (non-finite loss and
            gradients, exploding gradients, loss not decreasing) in this process and ask the
            run to stop at a finding of that severity or above (see docs/watch.md). Leave the
            loop when ``hook.should_stop`` is True, which ``dbg watch --stop`` sets as well.
        raise_on_stop: Raise :class:`~dbgcli.errors.TrainingStopped` from ``optimizer.step()``
            once the run is asked to stop, instead of checking ``hook.should_stop``.

    Raises:
        TypeError: If ``optimizer`` has no step hooks.
        ValueError: If ``raw_every`` or ``raw_budget`` is given with a writer, ``stats_every``
            is not a positive integer, or ``raw_every`` is not a multiple of it.
        TraceWriterError: If the trace cannot be created (exists and not ``overwrite``, ...).
    """
    _check_stats_every(stats_every, raw_every)  # before the trace file is created
    check_stop_on(stop_on)
    writer, owned = open_writer(
        trace,
        framework="pytorch",
        raw_every=raw_every,
        raw_budget=raw_budget,
        overwrite=overwrite,
        flush_secs=flush_secs,
        hyperparameters=hyperparameters,
        metadata={"torch_version": torch.__version__, **(metadata or {})},
    )
    try:
        return TorchHook(
            model,
            optimizer,
            writer,
            include=include,
            exclude=exclude,
            capture_loss=capture_loss,
            activation_kinds=activation_kinds,
            owns_writer=owned,
            track_updates=track_updates,
            stats_every=stats_every,
            stop_on=stop_on,
            raise_on_stop=raise_on_stop,
        )
    except BaseException:
        if owned:
            writer.close()
        raise
