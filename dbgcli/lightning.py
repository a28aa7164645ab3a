"""Record a Lightning run into a dbg trace with a ``lightning.pytorch.Callback``.

Importing this module imports lightning and torch (the callback subclasses
``lightning.pytorch.Callback``); ``import dbgcli`` does not.

Example::

    import lightning.pytorch as pl
    from dbgcli.lightning import DbgCallback

    trainer = pl.Trainer(max_epochs=5, callbacks=[DbgCallback("run.h5")])
    trainer.fit(module, train_loader, val_loader)

The step is ``trainer.global_step``: the number of optimizer steps taken, as in the PyTorch
hook. With several optimizers (a GAN's, under manual optimization), whose every step Lightning
counts, it is the number of batches that stepped, as Lightning's own loggers count them: the
parameters are recorded once per batch, and each optimizer's learning rates in their own
series (``lr`` for the first, ``lr/opt<k>`` for the k-th).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from dbgcli.torch._hook import (
    DEFAULT_STATS_EVERY,
    CallbackRecording,
    FailureReporter,
    Patterns,
    TorchHook,
)
from dbgcli.trace.schema import META_GRADIENT_CLIPPING
from dbgcli.trace.writer import TraceWriter

__all__ = ["VALIDATION_PREFIXES", "DbgCallback"]

#: A metric in ``trainer.callback_metrics`` whose name starts with one of these is a validation
#: metric; it is recorded in mode ``eval`` without the prefix (``val_loss`` becomes ``loss``).
VALIDATION_PREFIXES: tuple[str, ...] = (
    "validation_",
    "validation/",
    "valid_",
    "valid/",
    "val_",
    "val/",
    "eval_",
    "eval/",
)


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The loss ``training_step`` returned (a tensor, or a mapping with a ``loss`` key)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    return None


def _gradient_clipping(trainer: Trainer) -> dict[str, Any]:
    """The run metadata that says the gradients are clipped to a total norm after the hook
    records them (Lightning clips after ``on_before_optimizer_step``), if they are."""
    bound = trainer.gradient_clip_val
    if not bound or trainer.gradient_clip_algorithm not in (None, "norm"):
        return {}
    return {META_GRADIENT_CLIPPING: {"max_norm": float(bound)}}


def _early_stopping(trainer: Trainer) -> dict[str, Any]:
    """The run metadata that says early stopping watches the run, if it does."""
    stopping = trainer.early_stopping_callback
    if stopping is None:
        return {}
    return {"early_stopping": {"monitor": stopping.monitor, "patience": stopping.patience}}


class DbgCallback(Callback):
    """Records a Lightning run: the PyTorch recording of the module, the loss and metrics.

    Recorded:

    * everything :func:`dbgcli.torch.attach` records for the LightningModule (weights,
      biases, gradients as ``grad/<name>``, whose per-parameter ``l2`` statistic is the
      gradient norm, activations, pre-activations), with gradients taken in
      ``on_before_optimizer_step``: once accumulated and unscaled by the AMP plugin, before
      gradient clipping and the update;
    * ``lr`` (``lr/group<i>``) from the optimizer's parameter groups at every step;
    * ``loss`` in mode ``train``: the loss ``training_step`` returned, averaged over the
      micro-batches of the step (Lightning divides it by ``accumulate_grad_batches`` before
      backward; the recorded value is undivided);
    * validation metrics from ``trainer.callback_metrics`` whose names start with a
      validation prefix (:data:`VALIDATION_PREFIXES`), in mode ``eval`` at
      ``trainer.global_step``, read in ``on_validation_end`` so that metrics logged in the
      LightningModule's own ``on_validation_epoch_end`` are included. Nothing of the sanity
      check is recorded (``hook`` is None while it runs);
    * ``epoch`` when a training epoch starts;
    * in the metadata, ``early_stopping`` (``monitor`` and ``patience``) when the trainer has
      an ``EarlyStopping`` callback: DBG304 overtraining does not judge the validation
      checks it waits through, nor DBG301 and DBG302 the plateaus and gaps after the least
      value of the loss it monitors.

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
        overwrite: Replace an existing trace file.
        flush_secs: Commit to disk at most this many seconds apart.
        metadata: Free-form run metadata (the module's ``hparams`` are stored as the
            hyperparameters).
        stop_on: ``"error"`` or ``"warning"``: judge the cheap rules in the training process
            and stop training at a finding of that severity or above (see docs/watch.md).

    Raises:
        ValueError: If ``raw_every`` or ``raw_budget`` is given with a writer,
            ``stats_every`` is not a positive integer, or ``raw_every`` is not a multiple of it.
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
        overwrite: bool = False,
        flush_secs: float = 10.0,
        metadata: Mapping[str, Any] | None = None,
        stop_on: str | None = None,
    ) -> None:
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
        # The hook while the sanity check runs, when ``hook`` is None (see on_sanity_check_start).
        self._held_hook: TorchHook | None = None
        self._failures = FailureReporter()
        self._batch_step = 0
        self._loss_total: torch.Tensor | None = None
        self._loss_count = 0
        # With several optimizers: the batches that stepped so far (the trace's step), whether
        # the batch under way stepped, and the step whose parameters are recorded.
        self._several = False
        self._batches = 0
        self._stepped = False
        self._parameters_step: int | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open the trace (the process group exists by now) and attach the PyTorch hook."""
        self._failures.guard("attaching to the module", lambda: self._attach(trainer, pl_module))

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Do not record the sanity check's few validation batches of the untrained model: the
        hook records no forward pass, and ``hook`` is None, so that a ``validation_step``
        that records through it (``if dbg.hook is not None: dbg.hook.record(...)``) records
        nothing either."""
        if self.hook is not None:
            self.hook.enabled = False
            self._held_hook, self.hook = self.hook, None

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record again."""
        self._release_hook()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count batches rather than optimizer steps when there are several optimizers (from
        the count a checkpoint restored)."""
        self._several = len(trainer.optimizers) > 1
        if self._several:
            loop = trainer.fit_loop.epoch_loop
            self._batches = int(getattr(loop, "_batches_that_stepped", trainer.global_step))
            if self.hook is not None:
                self.hook.step = self._batches

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the epoch about to start."""
        if self.hook is not None:
            self.hook.record_scalar(
                "epoch", trainer.current_epoch, mode="train", step=self._step(trainer)
            )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """File the batch's forward pass under the step its gradients will join."""
        self._batch_step = self._step(trainer)
        if self.hook is not None:
            self.hook.step = self._batch_step

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Record weights, gradients and learning rates before the update."""
        if self.hook is None:
            return
        step = self.hook.step = self._step(trainer)
        if not self._several:
            self.hook.record_optimizer_step(optimizer)
            return
        self._stepped = True
        index = next(
            (k for k, held in enumerate(trainer.optimizers) if held is optimizer),
            len(trainer.optimizers),
        )
        self.hook.record_optimizer_step(
            optimizer,
            lr_tag="lr" if index == 0 else f"lr/opt{index}",
            parameters=self._parameters_step != step,
        )
        self._parameters_step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Add the batch's loss; write the step's mean once its optimizer step happened."""
        if self.hook is not None:
            self._failures.guard("recording the loss", lambda: self._add_loss(trainer, outputs))
            # A stop request (dbg watch --stop, stop_on) ends training at this step boundary.
            if self.hook.should_stop:
                trainer.should_stop = True

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """File validation forward passes under the number of optimizer steps taken."""
        if self.hook is not None:
            self.hook.step = self._step(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the validation metrics in mode ``eval``."""
        if self.hook is not None and not trainer.sanity_checking:
            self._failures.guard(
                "recording validation metrics", lambda: self._record_validation(trainer)
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Remove the hook and close the trace if this callback opened it."""
        self._detach()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Keep what was recorded when training fails: close the trace cleanly."""
        self._detach()

    # -- internals ----------------------------------------------------------------------------
    def _attach(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.hook = self.recording.attach(
            pl_module,
            framework="lightning",
            hyperparameters=dict(pl_module.hparams),
            metadata={
                "lightning_version": lightning.__version__,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                **_early_stopping(trainer),
                **_gradient_clipping(trainer),
            },
        )
        self.hook.step = trainer.global_step

    def _step(self, trainer: Trainer) -> int:
        """The trace's step: optimizer steps taken, or with several optimizers the batches
        that stepped."""
        return self._batches if self._several else trainer.global_step

    def _add_loss(self, trainer: Trainer, outputs: Any) -> None:
        loss = _loss_of(outputs)
        if loss is not None:
            undivided = loss.detach() * trainer.accumulate_grad_batches
            self._loss_total = (
                undivided if self._loss_total is None else self._loss_total + undivided
            )
            self._loss_count += 1
        if self._several and self._stepped:
            self._batches += 1
            self._stepped = False
        if self._step(trainer) != self._batch_step:
            self._write_loss()

    def _write_loss(self) -> None:
        if self.hook is not None and self._loss_total is not None:
            mean = float(self._loss_total) / self._loss_count
            self.hook.record_scalar("loss", mean, mode="train", step=self._batch_step)
        self._loss_total = None
        self._loss_count = 0

    def _record_validation(self, trainer: Trainer) -> None:
        assert self.hook is not None
        for key, value in trainer.callback_metrics.items():
            prefix = next((p for p in VALIDATION_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                continue
            if isinstance(value, numbers.Real) or (
                isinstance(value, torch.Tensor) and value.numel() == 1
            ):
                self.hook.record_scalar(
                    key[len(prefix) :], value, mode="eval", step=self._step(trainer)
                )

    def _release_hook(self) -> None:
        if self._held_hook is not None:
            self.hook, self._held_hook = self._held_hook, None
            self.hook.enabled = True

    def _detach(self) -> None:
        self._release_hook()  # a run that failed in its sanity check
        if self.hook is not None:
            self._failures.guard("recording the loss", self._write_loss)
            self.hook.remove()
            self.hook = None
