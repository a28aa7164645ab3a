"""Record a Hugging Face ``Trainer`` run into a dbg trace with a ``TrainerCallback``.

Importing this module imports transformers and torch (the callback subclasses
``transformers.TrainerCallback``); ``import dbgcli`` does not.

Example::

    from transformers import Trainer, TrainingArguments
    from dbgcli.hf import DbgCallback

    args = TrainingArguments("out", logging_steps=1, eval_strategy="steps", eval_steps=50)
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=valid,
                      callbacks=[DbgCallback("run.h5")])
    trainer.train()

The step is ``state.global_step``: the number of optimizer steps taken, as in the PyTorch hook.
``DbgCallback("run.h5", record_data=True)`` also records each batch's token ids, labels and
predictions, so that the data rules (class imbalance, token ratio, confusion) run on the trace.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Collection, Mapping
from typing import Any

import torch
import transformers
from torch.utils.hooks import RemovableHandle
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
)
from transformers.utils.generic import find_labels

from dbgcli.rules._known import trainer_logged_no_loss
from dbgcli.torch._hook import (
    DEFAULT_STATS_EVERY,
    CallbackRecording,
    FailureReporter,
    Patterns,
    TorchHook,
)
from dbgcli.trace import schema
from dbgcli.trace.writer import TraceWriter

__all__ = ["DbgCallback", "transformers_activation_kinds"]

log = logging.getLogger("dbgcli")

# Logged by Trainer but not training metrics: the learning rate is recorded from the optimizer
# at every step instead, eval_* metrics arrive through on_evaluate, the rest is the run summary.
_SKIPPED_LOGS = frozenset(
    {
        "learning_rate",
        "epoch",
        "train_loss",
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "total_flos",
    }
)
_SKIPPED_EVAL_METRICS = frozenset({"runtime", "samples_per_second", "steps_per_second", "epoch"})
_EVAL_PREFIX = "eval_"
#: What ``record_data`` can ask for.
DATA = ("inputs", "labels", "predictions")
# The keyword argument of a transformers model that holds its input, by modality: token ids,
# images, raw audio, audio features.
_INPUT_KEYS = ("input_ids", "pixel_values", "input_values", "input_features")
# Language models by class, as the run metadata's ``task`` names them (the class rules do not
# judge their token labels). Causal ones predict the next token: their logits at position t go
# with the label at t + 1 (the model shifts the labels inside its loss).
# A class in several mappings (BART's ForConditionalGeneration is a masked and a seq2seq LM)
# takes the later one's task.
_LANGUAGE_MODEL_TASKS = {
    **dict.fromkeys(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values(), "masked-lm"),
    **dict.fromkeys(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values(), "seq2seq-lm"),
    **dict.fromkeys(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values(), "causal-lm"),
}
# Models with a classification head (a sequence's, each token's, an image's, a clip's), whose
# config's num_labels is the number of classes; a mapping may name several classes at once.
_CLASSIFIERS = frozenset(
    name
    for mapping in (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
    )
    for names in mapping.values()
    for name in ((names,) if isinstance(names, str) else names)
)
# Transformers' own activation modules (not subclasses of torch's), looked up by name so that
# a class a future release renames is skipped rather than breaking the import.
_TRANSFORMERS_ACTIVATIONS = {
    "GELUActivation": "gelu",
    "FastGELUActivation": "gelu",
    "NewGELUActivation": "gelu",
    "GELUTanh": "gelu",
    "AccurateGELUActivation": "gelu",
    "QuickGELUActivation": "gelu",
    "ClippedGELUActivation": "gelu",
    "SiLUActivation": "silu",
    "MishActivation": "mish",
}


def transformers_activation_kinds() -> dict[type[torch.nn.Module], str]:
    """Kinds of the activation modules transformers defines (GELU variants, SiLU, Mish)."""
    from transformers import activations

    kinds: dict[type[torch.nn.Module], str] = {}
    for name, kind in _TRANSFORMERS_ACTIVATIONS.items():
        module_type = getattr(activations, name, None)
        if isinstance(module_type, type) and issubclass(module_type, torch.nn.Module):
            kinds[module_type] = kind
    return kinds


class DbgCallback(TrainerCallback):
    """Records a ``Trainer`` run: the PyTorch recording of the model, the loss and metrics.

    Recorded:

    * everything :func:`dbgcli.torch.attach` records for the model (weights, biases,
      gradients as ``grad/<name>``, whose per-parameter ``l2`` statistic is the gradient norm,
      activations, pre-activations; transformers' own GELU, SiLU and Mish modules count as
      activations of those kinds), with gradients taken in ``on_pre_optimizer_step``: after
      gradient clipping and after the AMP scaler unscaled them, before ``optimizer.step()``;
    * ``lr`` (``lr/group<i>``) from the optimizer's parameter groups at every step;
    * what Trainer logs (``on_log``) in mode ``train``: ``loss``, ``grad_norm`` and any other
      number logged during training, at the step the logged window ends with (``loss`` logged
      at ``global_step`` 10 covers optimizer steps up to 9 and is recorded at step 9). Trainer
      logs every ``logging_steps`` (500 by default); set ``logging_steps=1`` for a per-step
      loss curve. A run shorter than that logs no training loss, and the rules that judge
      the loss are skipped ("no train loss series", and the reason says why and what to
      change, from the metadata below): the callback then logs a WARNING on the
      ``dbgcli`` logger at the end of training, and notes in the run metadata, under
      ``trainer_logging``, how Trainer logged (``logging_strategy``, ``logging_steps``,
      ``logging_first_step``, ``max_steps``, ``global_step``) and how many training losses
      it recorded (``train_loss_records``);
    * evaluation metrics (``on_evaluate``) in mode ``eval`` at ``global_step``, without their
      ``eval_`` prefix (``eval_loss`` becomes ``loss``);
    * ``epoch`` when an epoch begins;
    * in the metadata, ``task`` (``causal-lm``, ``masked-lm`` or ``seq2seq-lm``) for a language
      model, whose token labels the class rules (DBG601, DBG604, DBG605) do not judge, and
      ``early_stopping`` (``monitor``, ``patience`` and, at the end, the best checkpoint's
      ``best_step``) when an ``EarlyStoppingCallback`` watches the run, whose patience
      DBG304 overtraining and DBG302 overfit do not judge; for a classification head, at
      the end, ``num_labels`` (one class of several) or ``task`` ``regression`` (one output);
    * with ``record_data``, the full tensors of each batch the model sees (every evaluation
      batch, and the training batches of the steps whose statistics are recorded, every
      ``stats_every``), taken from the model's forward call: ``inputs`` (the first of
      ``input_ids``, ``pixel_values``, ``input_values``, ``input_features``), ``labels`` (the
      ``labels`` argument) and ``predictions``, the model's ``logits``, reduced to class ids
      with argmax when they score every token (a vocabulary's worth of floats per token would
      dwarf the rest of the trace) and, for a causal language model, shifted to pair each
      prediction with the token it predicts (the labels from the second position on).

    The loss the model returns is not captured from its forward pass: with gradient
    accumulation Trainer may normalise each micro-batch's loss by the token count of the whole
    batch, so only the logged value is the loss of the step.

    Args:
        trace: A path (a new trace, ``<stem>.rank<k><suffix>`` per process under
            torch.distributed) or an open :class:`TraceWriter` (left open after training).
        raw_every: Keep full tensors every this many steps (default 100; only for a path).
        raw_budget: Bytes of full tensors per step, on average, beyond which those steps are
            spaced further apart (default 1 MiB; 0: no limit; only for a path; see
            :func:`dbgcli.torch.attach`).
        include: Glob(s) on parameter and module names or on tags; default: everything.
        exclude: Glob(s) on names or tags to leave out, e.g. ``["act/*", "preact/*"]``.
        stats_every: Record weights, gradients and activations every this many optimizer
            steps (default 10; 1: every step; see :func:`dbgcli.torch.attach`).
        record_data: Record each batch's inputs, labels and predictions (True), or those of
            them named (e.g. ``("labels", "predictions")``); default: none.
        overwrite: Replace an existing trace file.
        flush_secs: Commit to disk at most this many seconds apart.
        metadata: Free-form run metadata (the TrainingArguments are stored as the
            hyperparameters).
        stop_on: ``"error"`` or ``"warning"``: judge the cheap rules in the training process
            and stop training at a finding of that severity or above (see docs/watch.md).

    Raises:
        ValueError: If ``raw_every`` or ``raw_budget`` is given with a writer,
            ``stats_every`` is not a positive integer, ``raw_every`` is not a multiple of
            it, or ``record_data`` names something other than inputs, labels and
            predictions.
        TraceWriterError: If the trace file exists and ``overwrite`` is False.
    """

    def __init__(
        self,
        trace: str | os.PathLike[str] | TraceWriter,
        *,
        raw_every: int | None = None,
        raw_budget: int | None = None,
        include: Patterns = None,
        exclude: Patterns = None,
        stats_every: int = DEFAULT_STATS_EVERY,
        record_data: bool | Collection[str] = False,
        overwrite: bool = False,
        flush_secs: float = 10.0,
        metadata: Mapping[str, Any] | None = None,
        stop_on: str | None = None,
    ) -> None:
        self.record_data = _data_wanted(record_data)
        self.recording = CallbackRecording(
            trace,
            raw_every=raw_every,
            raw_budget=raw_budget,
            include=include,
            exclude=exclude,
            stats_every=stats_every,
            overwrite=overwrite,
            flush_secs=flush_secs,
            metadata=metadata,
            stop_on=stop_on,
        )
        self.hook: TorchHook | None = None
        self._failures = FailureReporter()
        self._data_handle: RemovableHandle | None = None
        self._causal_lm = False
        self._labels_missing_told = False
        self._train_losses = 0  # training losses Trainer logged and the trace got

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Open the trace and attach the PyTorch hook to the model."""
        self._train_losses = 0
        model = kwargs.get("model")
        if model is None:
            self._failures.warn("attaching to the model", ValueError("Trainer passed no model"))
            return
        self._failures.guard("attaching to the model", lambda: self._attach(model, args, state))

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Record the epoch about to start."""
        hook = self.hook
        if hook is not None:
            epoch = math.floor(state.epoch or 0.0)
            hook.record_scalar("epoch", epoch, mode="train", step=state.global_step)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """File the step's forward passes under ``global_step``."""
        if self.hook is not None:
            self.hook.step = state.global_step

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Record weights, gradients and learning rates before the update."""
        if self.hook is not None:
            self.hook.step = state.global_step
            self.hook.record_optimizer_step(kwargs.get("optimizer"))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Evaluations that follow the step are at the new ``global_step``; a stop request
        (``dbg watch --stop``, ``stop_on``) ends training here."""
        if self.hook is not None:
            self.hook.step = state.global_step
            if self.hook.should_stop:
                control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record training values Trainer logged (loss, grad_norm, custom ones)."""
        hook = self.hook
        if hook is None or not logs:
            return
        step = max(state.global_step - 1, 0)
        for name, value in logs.items():
            if name in _SKIPPED_LOGS or name.startswith(("eval_", "test_", "predict_")):
                continue
            if isinstance(value, numbers.Real) or (
                isinstance(value, torch.Tensor) and value.numel() == 1
            ):
                hook.record_scalar(name, value, mode="train", step=step)
                if name == "loss":
                    self._train_losses += 1

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record evaluation metrics in mode ``eval`` at ``global_step``."""
        hook = self.hook
        if hook is None or not metrics:
            return
        for key, value in metrics.items():
            name = key[len(_EVAL_PREFIX) :] if key.startswith(_EVAL_PREFIX) else key
            if name not in _SKIPPED_EVAL_METRICS and isinstance(value, numbers.Real):
                hook.record_scalar(name, value, mode="eval", step=state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Note how Trainer logged (and warn if it logged no training loss), remove the hook
        and close the trace if this callback opened it."""
        if self._data_handle is not None:
            self._data_handle.remove()
            self._data_handle = None
        if self.hook is not None:
            hook = self.hook
            self._failures.guard(
                "noting how Trainer logged", lambda: self._note_logging(hook, args, state)
            )
            self._failures.guard(
                "noting early stopping's optimum", lambda: _note_best(hook, args, state)
            )
            model = kwargs.get("model")
            self._failures.guard("noting the model's head", lambda: _note_head(hook, model))
            hook.remove()
            self.hook = None

    def _note_logging(self, hook: TorchHook, args: TrainingArguments, state: TrainerState) -> None:
        """Store Trainer's logging settings and the training losses recorded in the metadata;
        without any, say why the loss rules will be skipped and what to change."""
        strategy = getattr(args.logging_strategy, "value", args.logging_strategy)
        every = getattr(state, "logging_steps", None)  # a ratio of the run resolved to steps
        every = args.logging_steps if every is None else every
        if isinstance(every, float) and every.is_integer():
            every = int(every)
        logging_settings = {
            "logging_strategy": str(strategy),
            "logging_steps": every,
            "logging_first_step": bool(args.logging_first_step),
            "max_steps": state.max_steps,
            "global_step": state.global_step,
            "train_loss_records": self._train_losses,
        }
        hook.writer.set_metadata(**{schema.META_TRAINER_LOGGING: logging_settings})
        advice = trainer_logged_no_loss(logging_settings)
        if advice is not None:
            log.warning(
                "dbg: %s has no train loss series, so the rules that judge the loss will be "
                "skipped: %s",
                hook.writer.path,
                advice,
            )

    def _attach(self, model: torch.nn.Module, args: TrainingArguments, state: TrainerState) -> None:
        task = _LANGUAGE_MODEL_TASKS.get(type(model).__name__)
        self.hook = self.recording.attach(
            model,
            framework="transformers",
            hyperparameters=args.to_dict(),  # type: ignore[no-untyped-call]
            metadata={
                "transformers_version": transformers.__version__,
                "model_class": type(model).__name__,
                **({"task": task} if task else {}),
                **_early_stopping(args, state),
            },
            activation_kinds=transformers_activation_kinds(),
        )
        self.hook.step = state.global_step
        if self.record_data:
            self._causal_lm = task == "causal-lm"
            self._data_handle = model.register_forward_hook(self._on_forward, with_kwargs=True)
            # Only a model that takes `labels` can have them taken away (a question-answering
            # model's targets are start and end positions, a bare encoder's are none).
            label_names = args.label_names or find_labels(type(model))  # type: ignore[no-untyped-call]
            self._labels_missing_told = (
                bool(args.label_smoothing_factor) or "labels" not in label_names
            )
            if "labels" in self.record_data and args.label_smoothing_factor:
                # Trainer's label smoother pops the labels before the model's forward call.
                log.warning(
                    "dbg: with label_smoothing_factor=%g Trainer does not pass the labels to "
                    "the model, so record_data cannot record them and the class rules "
                    "(DBG601, DBG604, DBG605) will be skipped for %s",
                    args.label_smoothing_factor,
                    self.hook.writer.path,
                )

    def _on_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        hook = self.hook
        if hook is None:
            return
        training = module.training and torch.is_grad_enabled()
        if training and hook.step % hook.stats_every:
            return
        mode = "train" if training else "eval"
        self._failures.guard(
            "recording the batch's data", lambda: self._record_batch(kwargs, output, mode)
        )

    def _record_batch(self, kwargs: Mapping[str, Any], output: Any, mode: str) -> None:
        """Inputs, labels and predictions of one forward call, as ``hook.record`` takes them."""
        assert self.hook is not None
        found: dict[str, Any] = {}
        if "inputs" in self.record_data:
            found["inputs"] = next(
                (kwargs[key] for key in _INPUT_KEYS if kwargs.get(key) is not None), None
            )
        labels = kwargs.get("labels")
        logits = (
            output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        )
        if isinstance(logits, torch.Tensor):
            logits = logits.detach()
            if logits.ndim >= 3:
                logits = logits.argmax(-1)
            if self._causal_lm and logits.ndim >= 2:
                logits = logits[:, :-1]
                labels = labels[:, 1:] if isinstance(labels, torch.Tensor) else labels
        else:
            logits = None
        if "labels" in self.record_data:
            found["labels"] = labels
            if labels is None and mode == "train" and not self._labels_missing_told:
                self._labels_missing_told = True
                log.warning(
                    "dbg: the model's forward call got no labels (a compute_loss or "
                    "compute_loss_func that takes them out of the inputs), so record_data "
                    "cannot record them and the class rules (DBG601, DBG604, DBG605) will be "
                    "skipped for %s; record them where the loss is computed: "
                    "`if callback.hook is not None: callback.hook.record(labels=labels, "
                    "raw=True)`",
                    self.hook.writer.path,
                )
        if "predictions" in self.record_data:
            found["predictions"] = logits
        self.hook.record(**found, mode=mode, step=self.hook.step, raw=True)


def _early_stopping(args: TrainingArguments, state: TrainerState) -> dict[str, Any]:
    """The run metadata that says Trainer's EarlyStoppingCallback watches the run, if it does
    (Trainer keeps its settings among the state's stateful callbacks)."""
    # A dict by then (TrainerState.__post_init__), typed as the list it is built from.
    kept: Any = state.stateful_callbacks
    stopping = kept.get("EarlyStoppingCallback") if isinstance(kept, Mapping) else None
    if isinstance(stopping, list):
        stopping = stopping[0]
    if not isinstance(stopping, Mapping):
        return {}
    patience = stopping.get("args", {}).get("early_stopping_patience")
    return {"early_stopping": {"monitor": args.metric_for_best_model, "patience": patience}}


def _note_head(hook: TorchHook, model: Any) -> None:
    """Note what a classification head predicts, once training has told (its forward sets
    ``problem_type`` from the labels): ``num_labels`` for one class among several, which
    the loss rules take an untrained classifier's loss from (ln C), or ``task`` regression
    for ``num_labels=1``, whose targets the class rules do not judge. A multi-label head
    (a binary cross-entropy per label) is noted as neither."""
    config = getattr(model, "config", None)
    if config is None or not any(c.__name__ in _CLASSIFIERS for c in type(model).__mro__):
        return
    problem, classes = getattr(config, "problem_type", None), getattr(config, "num_labels", None)
    if problem == "regression":
        hook.writer.set_metadata(task="regression")
    elif problem in (None, "single_label_classification") and isinstance(classes, int):
        if classes >= 2:  # one output without a problem type is a head never trained
            hook.writer.set_metadata(num_labels=classes)


def _note_best(hook: TorchHook, args: TrainingArguments, state: TrainerState) -> None:
    """Add the step of the best checkpoint to ``early_stopping`` (Trainer knows it at the end)."""
    noted = _early_stopping(args, state)
    best = state.best_global_step
    if noted and isinstance(best, int):
        hook.writer.set_metadata(early_stopping={**noted["early_stopping"], "best_step": best})


def _data_wanted(record_data: bool | Collection[str]) -> frozenset[str]:
    if isinstance(record_data, bool):
        return frozenset(DATA) if record_data else frozenset()
    if isinstance(record_data, str):
        record_data = (record_data,)
    unknown = sorted(set(record_data) - set(DATA))
    if unknown:
        raise ValueError(
            f"record_data takes {', '.join(DATA)}; got {', '.join(map(repr, unknown))}"
        )
    return frozenset(record_data)
