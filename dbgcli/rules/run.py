"""DBG8xx: the run itself: stalled training, a model run in the wrong mode, its dropout,
optimizer settings and batch norms."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from dbgcli.errors import RuleConfigError
from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import RuleContext, episodes
from dbgcli.rules._known import (
    eval_mode_training,
    initial_loss,
    mode_note,
    optimizer_groups,
    optimizer_type,
    stayed_above,
)
from dbgcli.rules._registry import Need, rule
from dbgcli.trace import schema


def _timeline(ctx: RuleContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, modes and times of the timeline rows with a finite time, and the filters' mask."""
    timeline = ctx.trace.timeline()
    finite = np.isfinite(timeline.values)
    steps, modes, times = timeline.steps[finite], timeline.modes[finite], timeline.values[finite]
    return steps, modes, times, ctx.keep(steps, modes)


TIMELINE = Need(
    "step timeline with two or more steps (the wall-clock time TraceWriter notes at each new "
    "step; traces written by hand usually have none)",
    lambda ctx: int(_timeline(ctx)[3].sum()) >= 2,
)


@rule(
    "DBG801",
    "stalled-training",
    severity="warning",
    category="run",
    requires=TIMELINE,
    label={
        "stall": "stalled training",
        "step-jump": "step numbering jumped",
        "step-restart": "run resumed from an earlier step",
    },
)
def stalled_training(
    ctx: RuleContext,
    *,
    threshold: float = 600.0,
    factor: float = 100.0,
    across_modes: bool = False,
    jump_factor: float | None = 100.0,
) -> Iterator[Finding]:
    """Training stopped making progress for a while: a long wall-clock gap between steps.

    SageMaker Debugger's StalledTrainingRule watches a live job and fires when no new step
    arrives for ``threshold`` seconds (default 1800). After the fact the trace's timeline
    holds the wall-clock time at which each new (step, mode) was first seen, so the rule
    looks for gaps in it. For consecutive timeline rows, in the order written:

    * ``gap_i = time_i - time_(i-1)``, judged when both rows pass the step and mode filters
      and, unless ``across_modes``, have the same mode: a switch to evaluation and back is a
      planned pause whose length is that of the evaluation pass (so ``--mode train`` does
      not turn evaluation passes into gaps between training steps).
    * The typical step time is the median of the judged gaps. A gap is a **stall** when
      ``gap > max(threshold, factor × median)``: both bars must be exceeded, so that planned
      pauses of fast runs (checkpoints, a reshuffle at an epoch boundary) stay below the
      absolute floor, and runs whose steps take minutes each are held to their own pace. A
      post-hoc floor can be lower than SageMaker Debugger's 30 minutes because nothing waits
      on it.
    * Consecutive stalled gaps form one finding (key ``stall``): it spans from the last step
      before the first gap to the first step after the last gap, and its value is the longest
      gap in seconds; the threshold is the bar in seconds.

    With ``jump_factor`` set, the step numbering is checked as well, per mode and as
    information: key ``step-jump`` for an increment of more than ``jump_factor`` times the
    median increment of the mode (records were lost, or the counter was reset forward), key
    ``step-restart`` for a step lower than the previous one of its mode (the run was resumed
    from an earlier checkpoint; the finding spans the steps that appear twice). Sparse
    recording schedules that change their interval (every step at first, every 100th later)
    stay below the default factor.

    A resumed trace (``TraceWriter(..., resume=True)``) shows the downtime between the crash
    and the restart as a stall.

    Why it matters: a stalled job holds its machines without learning; post hoc, the gaps
    say where the time went and often point to a hang that will recur.

    Typical causes: a data loader waiting on slow or unavailable storage, a deadlock in
    distributed communication (one rank lagging or dead), the host swapping, a very slow
    synchronous checkpoint, the job being preempted and restarted.

    Fix: look at what ran at that step (data loading, checkpointing, evaluation written under
    the train mode); add timeouts to collective operations and data loading; checkpoint
    asynchronously; profile the input pipeline.

    Args:
        threshold: Gap in seconds a stall must exceed whatever the step time.
        factor: Multiple of the median gap between steps a stall must also exceed.
        across_modes: Also judge gaps between rows of different modes (into and out of
            evaluation).
        jump_factor: Report step increments above this multiple of the median increment,
            and steps that go back; None turns the step-numbering check off.
    """
    steps, modes, times, kept = _timeline(ctx)
    yield from _stalls(steps, modes, times, kept, threshold, factor, across_modes)
    if jump_factor is not None:
        for code in np.unique(modes[kept]):
            mine = kept & (modes == code)
            yield from _step_jumps(steps[mine], schema.MODES[int(code)], jump_factor)


def _stalls(
    steps: np.ndarray,
    modes: np.ndarray,
    times: np.ndarray,
    kept: np.ndarray,
    threshold: float,
    factor: float,
    across_modes: bool,
) -> Iterator[Finding]:
    gaps = np.diff(times)
    judged = kept[1:] & kept[:-1] & ((modes[1:] == modes[:-1]) | across_modes)
    usable = gaps[judged & (gaps >= 0)]
    if not usable.size:
        return
    median = float(np.median(usable))
    bar = max(threshold, factor * median)
    stalled = judged & (gaps > bar)
    for episode in episodes(stalled):
        # Gap i lies between timeline rows i and i + 1.
        inside = np.flatnonzero(stalled[episode.first : episode.last + 1]) + episode.first
        longest = float(gaps[inside].max())
        span_modes = np.unique(modes[episode.first : episode.last + 2])
        relative = ""
        if median > 0:
            relative = f"{longest / median:.0f}× the median step time of {_duration(median)}, "
        what = "no new step for"
        if inside.size > 1:
            what = f"{inside.size} gaps without a new step, the longest"
        yield Finding(
            message=f"{what} {_duration(longest)} ({relative}> {_duration(bar)})",
            first_step=int(steps[episode.first]),
            last_step=int(steps[episode.last + 1]),
            steps=int(inside.size),
            value=longest,
            threshold=bar,
            mode=schema.MODES[int(span_modes[0])] if span_modes.size == 1 else None,
            key="stall",
            extra={"median_step_seconds": median},
        )


def _step_jumps(steps: np.ndarray, mode: str, jump_factor: float) -> Iterator[Finding]:
    increments = np.diff(steps)
    forward = increments[increments > 0]
    if not forward.size:
        return
    usual = float(np.median(forward))
    checks = (("step-jump", increments > jump_factor * usual), ("step-restart", increments < 0))
    for key, flags in checks:
        for episode in episodes(flags):
            before = steps[episode.first : episode.last + 1]
            after = steps[episode.first + 1 : episode.last + 2]
            leaps = after - before
            if key == "step-jump":
                at = int(np.argmax(leaps))
                message = (
                    f"step numbering jumped by {leaps[at]} (from {before[at]} to {after[at]}; "
                    f"{leaps[at] / usual:.0f}× the usual increment of {usual:g}, "
                    f"> {jump_factor:g}×)"
                )
                threshold = jump_factor * usual
            else:
                at = int(np.argmin(leaps))
                message = (
                    f"step numbering went back from {before[at]} to {after[at]}: steps from "
                    f"{after[at]} on appear twice (resumed from an earlier checkpoint?)"
                )
                threshold = 0.0
            yield Finding(
                message=message,
                first_step=int(min(before.min(), after.min())),
                last_step=int(max(before.max(), after.max())),
                steps=int(flags[episode.first : episode.last + 1].sum()),
                value=float(leaps[at]),
                threshold=threshold,
                mode=mode,
                key=key,
                severity=Severity.info,
            )


def _duration(seconds: float) -> str:
    """A human duration: ``"2 h 03 min"``, ``"12 min 30 s"``, ``"4.2 s"``, ``"35 ms"``."""
    if seconds >= 3600:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours} h {rest // 60:02d} min"
    if seconds >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.0f} ms"


@rule(
    "DBG802",
    "trained-in-eval-mode",
    severity="warning",
    category="run",
    requires=Need.torch_hook_note(schema.META_TRAINED_IN_EVAL_MODE, "the training mode"),
    label={"eval-mode": "model trained in eval mode"},
)
def trained_in_eval_mode(ctx: RuleContext) -> Iterator[Finding]:
    """The model trained in eval mode (``model.eval()`` not undone): dropout off, norms frozen.

    ``model.train()`` was never called, or an evaluation left the model in ``eval()``. The
    PyTorch hook (and the Hugging Face and Lightning callbacks, which use it) watches
    every optimizer step: when one follows a forward pass made under ``model.eval()`` with
    gradients on, and no forward pass in training mode, the model trains in eval mode. The
    hook warns once and notes the step in the run metadata (``trained_in_eval_mode``), with
    the types of the model's modules that compute differently in eval mode: dropout (off), and
    batch norm or instance norm with running statistics (which normalise with those
    statistics instead of the batch's, and are never updated). This rule reports the note: a
    warning when the model has such modules, an info finding when it has none (eval mode then
    changes nothing that the hook can see; dropout applied with ``F.dropout(...,
    training=self.training)`` would still be off). A trace without the hook's watch (no
    ``torch_version`` in its metadata, e.g. written by hand, or XGBoost's) is skipped; note
    ``trained_in_eval_mode`` yourself (``{"step": N, "modules": [...]}``) to have it judged.

    The losses of such a run are recorded as evaluation (the hook tells a training pass from
    an evaluation by the model's mode), so the loss rules are skipped for want of a training
    loss, and say why.

    Why it matters: without dropout the model overfits more than intended; batch norm in eval
    mode normalises with statistics that never learn the data (the initial zeros and ones,
    or a pretrained model's), which can stall or destabilise training, and the trained model
    behaves differently from what was validated.

    Typical causes: an evaluation function that calls ``model.eval()`` and does not call
    ``model.train()`` afterwards; a loop that never calls ``model.train()`` after loading a
    model that was put in eval mode (for instance by ``from_pretrained`` or a checkpoint
    loader); a training step run under an inference helper.

    Fix: call ``model.train()`` at the start of every epoch (or before each training step),
    and ``model.eval()`` only around evaluation.
    """
    note = eval_mode_training(ctx.trace.metadata)
    if note is None:
        return
    if note.modules is None:
        harm = "dropout is off and batch norm uses its running statistics, if the model has them"
    elif note.modules:
        harm = f"its {', '.join(note.modules)} modules computed as in inference"
    else:
        harm = "it has no dropout or batch norm modules, so eval mode changed nothing visible"
    if note.modules is not None:  # the hook's note: it recorded them so
        harm += f"; its training losses from step {note.step} on were recorded as evaluation"
    yield Finding(
        message=(
            f"the model trained in eval mode from optimizer step {note.step} (model.train() "
            f"never called?): {harm}"
        ),
        first_step=note.step,
        value=float(note.step),
        key="eval-mode",
        severity=Severity.info if note.modules == () else None,
        extra={"modules": list(note.modules) if note.modules is not None else None},
    )


@rule(
    "DBG803",
    "evaluated-in-train-mode",
    severity="warning",
    category="run",
    requires=Need.torch_hook_note(schema.META_EVALUATED_IN_TRAIN_MODE, "the evaluation mode"),
    label={"train-mode": "model evaluated in training mode"},
    # Dropout left on raises the held-out loss: a gap, or a rise, that is the evaluation's; a
    # batch norm normalised by each evaluation batch can leave it at chance.
    explains=("DBG302", "DBG304", "DBG303:held-out-at-chance"),
)
def evaluated_in_train_mode(ctx: RuleContext) -> Iterator[Finding]:
    """The model was evaluated in training mode (``model.eval()`` not called before it).

    The PyTorch hook (and the Hugging Face and Lightning callbacks, which use it) watches every
    call of the model: a forward pass without gradients (``torch.no_grad()``,
    ``torch.inference_mode()``) after the first optimizer step, while the model is in training
    mode, is an evaluation that did not call ``model.eval()``. When the model has modules that
    compute differently in eval mode (dropout; batch or instance norm with running
    statistics), the hook warns once and notes the step and those modules in the run metadata
    (``evaluated_in_train_mode``); this rule reports the note. A model without such modules
    computes the same in both modes and gets no note. Passes before the first update are not
    watched: a data-dependent initialisation runs them so on purpose. Records of such passes
    are evaluation records (the hook tells them by the missing gradients), so the held-out
    curves show what this evaluation computed. A trace without the hook's watch (no
    ``torch_version`` in its metadata) is skipped; note ``evaluated_in_train_mode`` yourself
    (``{"step": N, "modules": [...]}``) to have it judged.

    Also noted: a model run under ``torch.no_grad()`` in training mode on purpose, as a GAN's
    generator with batch norm may sample, Monte Carlo dropout, or pseudo-labels computed
    with the training model; ignore the rule there. Recomputing batch norm statistics
    (``torch.optim.swa_utils.update_bn``, which sets the norms' momentum to None) is not
    noted.

    Why it matters: with dropout on, the evaluation scores a thinned, noisy model (the loss is
    higher and varies from one evaluation to the next); batch norm in training mode normalises
    each evaluation batch by its own statistics (results depend on the batch size and
    composition) and folds the evaluation data into its running statistics, which the model
    then trains and is deployed with. Early stopping and model selection act on these numbers.

    Typical causes: an evaluation function that relies on the caller to switch modes; a
    validation loop added beside a training loop that sets ``model.train()`` once; a helper
    that calls ``model.train()`` at its end and is run before the evaluation.

    Fix: call ``model.eval()`` before each evaluation and ``model.train()`` after it (and keep
    ``torch.no_grad()``: it saves memory but does not switch modes).
    """
    note = mode_note(ctx.trace.metadata, schema.META_EVALUATED_IN_TRAIN_MODE)
    if note is None:
        return
    names = note.modules or ("Dropout", "BatchNorm")
    effects = [
        effect
        for effect, present in (
            ("random units dropped", any("Norm" not in name for name in names)),
            ("norms using each batch's own statistics", any("Norm" in name for name in names)),
        )
        if present
    ]
    modules = f"its {', '.join(note.modules)} modules" if note.modules else "its modules"
    yield Finding(
        message=(
            f"the model was evaluated in training mode from optimizer step {note.step} "
            f"(model.eval() not called?): a forward pass without gradients ran with {modules} "
            f"computing as in training ({' and '.join(effects)}), so the evaluation's numbers "
            "are not the trained model's"
        ),
        first_step=note.step,
        value=float(note.step),
        key="train-mode",
        extra={"modules": list(note.modules) if note.modules is not None else None},
    )


def _first_training_step(ctx: RuleContext) -> int:
    """The first step of the training loss, where a setting that holds for the whole run is
    reported (0 without a training loss)."""
    train = ctx.loss("train")
    return int(train.steps.min()) if train is not None and len(train.steps) else 0


def _per_module(ctx: RuleContext, key: str, valid: Callable[[Any], bool]) -> dict[str, Any]:
    """A run metadata note of a number per module (``{"fc.drop": 0.5}``): its valid numbers
    (never a bool)."""
    noted = ctx.trace.metadata.get(key)
    if not isinstance(noted, dict):
        return {}
    return {
        str(name): value
        for name, value in noted.items()
        if not isinstance(value, bool) and valid(value)
    }


def _listed(names: list[str], most: int = 3) -> str:
    """The first ``most`` names, and how many more there are."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _dropout_note(ctx: RuleContext) -> dict[str, float]:
    """The run metadata's ``dropout``: module name -> rate (valid rates only)."""
    valid = _per_module(
        ctx, schema.META_DROPOUT, lambda r: isinstance(r, int | float) and 0 <= r <= 1
    )
    return {name: float(rate) for name, rate in valid.items()}


@rule(
    "DBG804",
    "dropout-too-strong",
    severity="info",
    category="run",
    requires=Need(
        "dropout rates of the modules (run metadata dropout, noted by the PyTorch hook)",
        lambda ctx: bool(_dropout_note(ctx)),
    ),
    label="dropout too strong",
    # A model that trains on a few of its units fits slowly and stays unsure: the loss stays
    # high, and its predictions are often wrong.
    explains={"strong": ("DBG303", "DBG301:not-decreasing", "DBG601:mispredicted", "DBG604")},
)
def dropout_too_strong(
    ctx: RuleContext, *, max_rate: float = 0.5, harmful_rate: float = 0.6
) -> Iterator[Finding]:
    """Dropout drops more than half of a layer's values in training.

    The PyTorch hook (and the Hugging Face and Lightning callbacks, which use it) notes every
    module that drops values in training with its rate (run metadata ``dropout``: dropout
    modules' ``p``, recurrent layers' and attention's ``dropout``). Srivastava et al. (2014),
    who introduced dropout, keep hidden units with probability 0.5 to 0.8 (a dropout rate of
    0.2 to 0.5) and inputs with 0.8; the test error they measured is flat while 0.4 to 0.8 of
    the units are kept and rises steeply as fewer are. So a rate above ``max_rate`` is a note
    (key ``above-range``): beyond the recommended range, and possibly chosen on purpose (a
    wide layer, an input or embedding dropout of 0.6). A rate above ``harmful_rate`` (fewer
    than 0.4 kept) is a note too (key ``strong``), and the cause of the run's failure to fit
    when the loss stays high (DBG303, DBG301) or the predictions stay wrong (DBG601, DBG604);
    a milder one leaves those to their own causes (a learning rate too low, say). A model
    trained in eval mode (DBG802) drops nothing and is not judged.

    Why it matters: a layer that keeps a tenth of its units trains ten thinned networks'
    worth of noise into every step; the model fits slowly, its training loss stays far above
    what it could reach, and its predictions stay unsure.

    Typical causes: a keep probability passed where PyTorch wants the drop probability
    (TensorFlow 1's ``keep_prob=0.9`` is ``nn.Dropout(p=0.1)``); a config's dropout meant for
    a much wider model; a hyperparameter search that wandered out of range.

    Fix: use a dropout rate of 0.1 to 0.5 (``p`` is the share dropped, not kept); raise it only
    while the model overfits.

    Args:
        max_rate: The largest dropout rate taken as in range.
        harmful_rate: The rate above which dropout explains a model that does not fit.
    """
    if not 0 < max_rate <= harmful_rate < 1:
        raise RuleConfigError(
            f"DBG804 needs 0 < max_rate <= harmful_rate < 1, got {max_rate:g} and {harmful_rate:g}"
        )
    if eval_mode_training(ctx.trace.metadata) is not None:
        return
    strong = {name: rate for name, rate in _dropout_note(ctx).items() if rate > max_rate}
    if not strong:
        return
    rate = max(strong.values())
    names = sorted(strong, key=lambda name: (-strong[name], name))
    listed = _listed(names)
    first = _first_training_step(ctx)
    yield Finding(
        message=(
            f"dropout drops {rate:.0%} of the values in {len(strong)} module"
            f"{'s' if len(strong) != 1 else ''} ({listed}; > {max_rate:.0%}; p is the share "
            "dropped, not kept)"
        ),
        first_step=first,
        value=rate,
        threshold=harmful_rate if rate > harmful_rate else max_rate,
        key="strong" if rate > harmful_rate else "above-range",
        extra={"modules": strong},
    )


# float16's smallest subnormal is 2**-24: anything at most half of it rounds to zero.
_FLOAT16_ZERO = 2.0**-25


class _AdaptiveGroup(NamedTuple):
    number: int
    eps: float
    lr: float | None
    # The second moment's decay: Adam's beta2, RMSprop's alpha.
    decay: float | None
    # The first moment's: Adam's beta1 (None for RMSprop).
    momentum: float | None

    @property
    def square_floor(self) -> float | None:
        """The gradient below which the second moment's increment ``(1 - decay) · g²`` is 0
        in float16."""
        if self.decay is None or not 0 <= self.decay < 1:
            return None
        return float(np.sqrt(_FLOAT16_ZERO / (1 - self.decay)))


def _adaptive_groups(ctx: RuleContext) -> list[_AdaptiveGroup]:
    """The noted parameter groups of an optimizer that divides by the root of a second moment
    plus ``eps``: Adam and its kin (``betas``) and RMSprop (``alpha``). Adagrad's denominator
    is a growing sum and Adadelta's ``eps`` sets its unit, so neither is among them."""
    groups = []
    for index, group in enumerate(optimizer_groups(ctx.trace.metadata)):
        eps, lr = group.get("eps"), group.get("lr")
        betas, alpha = group.get("betas"), group.get("alpha")
        if not (isinstance(eps, int | float) and (betas is not None or alpha is not None)):
            continue
        pair = betas if isinstance(betas, list) and len(betas) == 2 else None
        decay = pair[1] if pair is not None else alpha
        momentum = pair[0] if pair is not None else None
        groups.append(
            _AdaptiveGroup(
                index,
                float(eps),
                float(lr) if isinstance(lr, int | float) else None,
                float(decay) if isinstance(decay, int | float) else None,
                float(momentum) if isinstance(momentum, int | float) else None,
            )
        )
    return groups


class _FirstGradient(NamedTuple):
    tag: str
    size: float


def _first_gradients(ctx: RuleContext) -> list[_FirstGradient]:
    """Each gradient tensor's typical element size at its first training record, before
    updates could change the model: ``sum(g²) / sum(|g|)``, the mean of ``|g|`` weighted by
    ``|g|``. Elements without a gradient (an embedding's rows no sample of the batch used),
    which Adam does not update whatever ``eps``, count for nothing in it; for dense Gaussian
    gradients it is 1.25 times their root mean square. Tensors whose gradient is zero there,
    which the loss does not depend on, are left out. Later gradients say less about the
    settings: a converging run's shrink, and a diverging run's grow, or vanish, as a
    consequence of those very settings."""
    found = []
    for view in ctx.tensors(collection="gradients"):
        train = np.flatnonzero(view.modes == schema.MODE_CODES["train"])
        if not len(train):
            continue
        first = train[np.argmin(view.steps[train])]
        l2, l1 = float(view.stat("l2")[first]), float(view.stat("l1")[first])
        if np.isfinite(l2) and np.isfinite(l1) and l1 > 0:
            found.append(_FirstGradient(view.tag, l2 * l2 / l1))
    return found


def _float16_weights(ctx: RuleContext) -> list[str]:
    """Weight and bias tensors stored in float16 that the optimizer itself holds (the hook
    notes ``parameters_not_in_optimizer`` only when the optimizer holds the model's own
    parameters, not float32 master copies of them)."""
    outside = ctx.trace.metadata.get(schema.META_NOT_IN_OPTIMIZER)
    if not isinstance(outside, list):
        return []
    return [
        view.tag
        for view in ctx.tensors(collection=("weights", "biases"))
        if view.info.dtype and np.dtype(view.info.dtype) == np.float16 and view.tag not in outside
    ]


def _went_non_finite(ctx: RuleContext) -> bool:
    """Whether the training loss or a recorded weight turned NaN or infinite."""
    loss = ctx.loss("train")
    if loss is not None and not np.isfinite(loss.values).all():
        return True
    return any(
        (view.stat("nan_count") + view.stat("inf_count")).any()
        for view in ctx.tensors(collection=("weights", "biases"))
    )


def _blew_up(ctx: RuleContext) -> bool:
    """Whether the training loss, once down to half the untrained model's, rose above that
    loss again, or turned non-finite, and stayed there (:func:`stayed_above`: not one bad
    batch): steps out of scale, whatever the data."""
    loss = ctx.loss("train")
    initial = initial_loss(ctx)
    if loss is None or initial is None or not initial.value > 0:
        return False
    values = loss.values[np.argsort(loss.steps, kind="stable")].astype(np.float64)
    down = np.flatnonzero(np.isfinite(values) & (values <= initial.value / 2))
    return bool(len(down)) and bool(stayed_above(values[down[0] :], initial.value).any())


# What updates out of scale bring: swings and blow-ups, then NaN and infinite weights and
# everything they touch.
_OUT_OF_SCALE = (
    "DBG102",
    "DBG201",
    "DBG301",
    "DBG303",
    "DBG305",
    "DBG306",
    "DBG404",
    "DBG503:too-high",
)


@rule(
    "DBG805",
    "optimizer-settings",
    severity="warning",
    category="run",
    requires=Need(
        "adaptive optimizer settings (run metadata optimizer with an Adam-like or RMSprop "
        "group's eps, noted by the PyTorch hook)",
        lambda ctx: bool(_adaptive_groups(ctx)),
    ),
    label={
        "eps-dominates": "optimizer eps too large",
        "float16-eps": "Adam's v underflows in float16",
        "betas": "Adam's betas outside its convergence condition",
    },
    explains={
        # Steps of lr·m/eps: the model trains at a fraction of its rate.
        "eps-dominates": (
            "DBG301:not-decreasing",
            "DBG303",
            "DBG403",
            "DBG502:too-small",
            "DBG503:too-low",
            "DBG601:mispredicted",
            "DBG604",
        ),
        # Steps of lr·m/eps, or m/0.
        "float16-eps": _OUT_OF_SCALE,
        # m / sqrt(v) grows without bound once the gradients shrink: steps far above lr.
        "betas": _OUT_OF_SCALE,
    },
)
def optimizer_settings(ctx: RuleContext, *, dominance: float = 1.0) -> Iterator[Finding]:
    """An adaptive optimizer's ``eps`` outweighs the gradients, its second moment underflows in float16, or its betas break Adam's condition.

    Adam (and AdamW, NAdam, RAdam, Adamax) steps each weight by ``lr · m / (sqrt(v) + eps)``,
    RMSprop by ``lr · g / (sqrt(v) + eps)``: ``m`` is the running mean of the gradient and
    ``v`` of its square, so ``sqrt(v)`` is the gradient's root mean square and each step is
    about ``lr`` whatever the gradients' scale. ``eps`` (1e-8 by default, Kingma and Ba 2015)
    is there only to keep the division finite. The PyTorch hook notes every parameter
    group's settings (run metadata ``optimizer``); the rule reads the groups that have ``eps``
    with ``betas`` or RMSprop's ``alpha``.

    * **eps dominates** (key ``eps-dominates``, a note): ``eps`` is at least ``dominance`` times
      the gradients' size as the run starts (of each gradient tensor at its first training
      record, ``sum(g²) / sum(|g|)``, the mean of ``|g|`` weighted by ``|g|``, for which an
      embedding's rows a batch did not use count for nothing; the median tensor; later, a
      diverged run's gradients can vanish, and ``eps`` then dominates as a consequence). The
      denominator is then mostly ``eps``: a step is at most half what Adam means to take, and at
      ``eps`` far above the gradients it is ``lr · m / eps``, plain SGD with momentum at the
      rate ``lr / eps``. It is the cause when the run fails to fit (a learning rate too low by
      its updates, DBG503; a loss that stays high, DBG301 and DBG303). A large ``eps`` can be
      chosen on purpose, with the learning rate raised to match (TensorFlow's documentation
      suggests 1.0 or 0.1 for Inception on ImageNet), so on its own it is a note.
    * **the second moment underflows in float16** (key ``float16-eps``): parameters stored in
      float16 that the optimizer updates in place (``model.half()`` without float32 master
      weights; the hook's note ``parameters_not_in_optimizer`` tells that the optimizer holds
      the model's own tensors), whose state PyTorch keeps in their dtype, fused or not. ``v``
      grows by ``(1 - beta2) · g²``, which is 0 in float16 (below ``2**-25``) for a gradient
      element under ``sqrt(2**-25 / (1 - beta2))``, 0.0055 at Adam's 0.999: such an element
      keeps ``v = 0`` and steps ``lr · m / eps``. Reported when ``eps`` itself is 0 in float16
      (at most ``2**-25``: 1e-8 is), where that step is ``m / 0``, infinite or NaN; or when some
      gradient tensor's size as the run starts (as above) is below that bound, so that its
      typical elements step as SGD at ``lr / eps``. An error when the loss or a weight went NaN
      or infinite in the run, else a note, and the cause of updates out of scale (DBG503) or a
      loss that stays high.
    * **betas outside Adam's convergence condition** (key ``betas``): an Adam-like group's
      ``betas = (beta1, beta2)`` with ``beta1² / sqrt(beta2) >= 1``. Kingma and Ba's
      convergence theorem (2015, Theorem 4.1) assumes ``gamma = beta1² / sqrt(beta2) < 1``:
      the first moment must forget no slower than the root of the second. At the defaults
      (0.9, 0.999) gamma is 0.81, at (0.9, 0.95) 0.83; swapped, (0.999, 0.9), it is 1.05. The
      first moment then averages the gradients of about ``1 / (1 - beta1)`` steps, the second
      of far fewer, so when the gradients shrink (a batch fitted, a plateau) ``sqrt(v)``
      falls long before ``m`` does and ``m / sqrt(v)`` steps far above ``lr``. The condition
      is sufficient for the proof, not necessary for a run: a warning, and the cause of
      updates out of scale and what they bring, when the training loss, once down to half
      its start, rose above its start again, or turned non-finite, and stayed there (the
      median of ten records, not one bad batch); else a note.

    Why it matters: a dominating ``eps`` turns the adaptive optimizer into SGD at a rate
    tuned for Adam, thousands of times too small; in float16, an ``eps`` too small for the
    gradients that underflow turns the first updates into steps thousands of times too large,
    or into NaN weights.

    Typical causes: ``eps=1`` copied from a setup that scaled the learning rate with it;
    ``model.half()`` with a plain ``torch.optim.Adam``; ``betas=(0.999, 0.9)``, the pair
    written the wrong way round.

    Fix: keep ``eps`` well below the gradients' size (1e-8 to 1e-6) and tune the learning
    rate with it.

    Fix (key ``float16-eps``): train with ``torch.autocast`` and a ``GradScaler`` (float32
    weights and optimizer state), or raise ``eps`` to at least 1e-4 where the weights must be
    float16.

    Fix (key ``betas``): keep ``beta1`` below ``beta2``, (0.9, 0.999) unless tuned; a shorter
    second-moment horizon, such as 0.95, with beta1 at 0.9.

    Args:
        dominance: ``eps`` over the gradients' typical size at or above which ``eps``
            dominates the denominator.
    """
    if not dominance > 0:
        raise RuleConfigError(f"DBG805 dominance must be positive, got {dominance:g}")
    groups = _adaptive_groups(ctx)
    kind = optimizer_type(ctx.trace.metadata) or "the optimizer"
    first = _first_training_step(ctx)
    gradients = _first_gradients(ctx)
    size = float(np.median([g.size for g in gradients])) if gradients else None
    dominating = [g for g in groups if size is not None and g.eps >= dominance * size]
    if dominating and size is not None:
        group = max(dominating, key=lambda g: g.eps)
        rate = f", plain SGD at lr / eps = {group.lr / group.eps:.3g}" if group.lr else ""
        yield Finding(
            message=(
                f"{kind}'s eps {group.eps:g} is {group.eps / size:.3g}x the gradients' size "
                f"({size:.3g} as the run starts, median tensor; >= {dominance:g}x): it "
                f"outweighs sqrt(v) in lr·m/(sqrt(v) + eps), so each step is about "
                f"lr·m/eps{rate}"
            ),
            first_step=first,
            value=group.eps / size,
            threshold=dominance,
            key="eps-dominates",
            severity=Severity.info,
            extra={"eps": group.eps, "gradient_size": size, "group": group.number},
        )
    yield from _betas_outside_the_condition(ctx, groups, kind, first)
    half = _float16_weights(ctx)
    smallest = min(gradients, key=lambda g: g.size) if gradients else None
    underflowing = [
        g
        for g in groups
        if half
        and (floor := g.square_floor) is not None
        and (g.eps <= _FLOAT16_ZERO or (smallest is not None and smallest.size < floor))
    ]
    if underflowing:
        group = min(underflowing, key=lambda g: g.eps)
        floor = group.square_floor or 0.0
        broke = _went_non_finite(ctx)
        if group.eps <= _FLOAT16_ZERO or smallest is None:
            harm = f"eps {group.eps:g} is 0 in float16, so its update m/0 is non-finite"
        else:
            sgd = f" = {group.lr / group.eps:.3g}" if group.lr else ""
            harm = (
                f"{smallest.tag}'s elements are {smallest.size:.2g} in size as the run "
                f"starts: they step lr·m/eps, as SGD at lr / eps{sgd}"
            )
        tensors = ", ".join(half[:3]) + (", ..." if len(half) > 3 else "")
        yield Finding(
            message=(
                f"{len(half)} parameter tensor{'s' if len(half) != 1 else ''} ({tensors}) "
                f"{'are' if len(half) != 1 else 'is'} float16, and so is {kind}'s state: "
                f"a gradient element below {floor:.2g} adds (1 - beta2)·g² = 0 to v, which "
                f"stays 0; {harm}" + ("; the run went non-finite" if broke else "")
            ),
            first_step=first,
            value=group.eps,
            key="float16-eps",
            severity=Severity.error if broke else Severity.info,
            extra={"eps": group.eps, "tensors": half, "square_floor": floor},
        )


def _betas_outside_the_condition(
    ctx: RuleContext, groups: list[_AdaptiveGroup], kind: str, first: int | None
) -> Iterator[Finding]:
    """DBG805's ``betas`` finding: the group whose ``beta1² / sqrt(beta2)`` is largest, at 1
    or above."""
    gammas = [
        (g.momentum**2 / np.sqrt(g.decay), g)
        for g in groups
        if g.momentum is not None and g.decay is not None and 0 < g.decay < 1
    ]
    if not gammas:
        return
    gamma, group = max(gammas, key=lambda item: item[0])
    if gamma < 1:
        return
    beta1, beta2 = group.momentum or 0.0, group.decay or 0.0
    broke = _blew_up(ctx)
    yield Finding(
        message=(
            f"{kind}'s betas ({beta1:g}, {beta2:g}) give beta1²/sqrt(beta2) = {gamma:.4g} (>= "
            f"1, the bound of Adam's convergence theorem): m averages about "
            f"{1 / (1 - beta1):,.0f} steps' gradients and v {1 / (1 - beta2):,.0f}, so when the "
            "gradients shrink m/sqrt(v) steps far above lr (the two written the wrong way "
            "round?)" + ("; the loss came down and blew up again" if broke else "")
        ),
        first_step=first,
        value=float(gamma),
        threshold=1.0,
        key="betas",
        severity=None if broke else Severity.info,
        extra={"betas": [beta1, beta2], "group": group.number},
    )


def _batch_norms(ctx: RuleContext) -> dict[str, int]:
    """The run metadata's ``batch_norm``: batch norm modules in training mode, each with the
    fewest values it normalised a channel over in a training batch."""
    return _per_module(ctx, schema.META_BATCH_NORM, lambda n: isinstance(n, int) and n > 0)


@rule(
    "DBG806",
    "batch-norm-small-batch",
    severity="warning",
    category="run",
    requires=Need(
        "batch norm modules in training mode with the values they normalise each channel over "
        "(run metadata batch_norm, noted by the PyTorch hook)",
        lambda ctx: bool(_batch_norms(ctx)),
    ),
    label="batch norm over tiny batches",
    # Statistics of a few values: noisy normalisation in training, and running statistics
    # that do not match it in evaluation.
    explains=(
        "DBG101",
        "DBG102",
        "DBG201",
        "DBG301:not-decreasing",
        "DBG302",
        "DBG303",
        "DBG303:held-out-at-chance",
        "DBG305",
        "DBG503:too-high",
        "DBG601:mispredicted",
        "DBG604",
    ),
)
def batch_norm_small_batch(ctx: RuleContext, *, min_values: int = 8) -> Iterator[Finding]:
    """Batch norm normalises each channel over fewer than ``min_values`` values per batch.

    In training mode a batch norm layer normalises each channel by the mean and variance of
    the current batch: over the batch's samples, times the positions of a sequence or an
    image. Estimated from a few values, they are noisy, and they differ from the running
    averages the layer uses in evaluation; from two values every normalised value is exactly
    -1 or +1 (each is one standard deviation from their mean), so the layer passes on only
    which was larger. Wu and He (2018, Group Normalization) measured batch norm's error flat
    from 32 to 16 images per GPU and rising from 8 down; batch renormalisation (Ioffe 2017)
    was made for the same problem. The PyTorch hook counts, over the forward passes before
    the first update, the fewest values each batch norm in training mode normalised a
    channel over (run metadata ``batch_norm``, ``{"bn1": 2}``; a frozen one in eval mode is
    not counted), per process: what each sees without ``SyncBatchNorm``. A convolution's
    positions count, so an image model at 2 images per batch normalises over hundreds of
    values and is not reported, although they are correlated and Wu and He's ImageNet model
    lost 11 points there: only the count is certain.

    Why it matters: the model trains on noise its evaluation does not have; training is
    unstable, and the evaluation loss sits above the training loss for reasons that are no
    overfitting.

    Typical causes: a batch lowered to fit memory (a large input, a 3D model); a batch norm
    on pooled features of a few samples; gradient accumulation, which does not enlarge the
    batch a batch norm sees.

    Fix: a larger batch per process (or ``SyncBatchNorm`` across GPUs); GroupNorm or LayerNorm
    in place of batch norm; batch norms frozen in eval mode with pretrained statistics, as
    detection models do.

    Args:
        min_values: The fewest values per channel a batch norm normalises a batch over well.
    """
    if min_values < 2:
        raise RuleConfigError(f"DBG806 min_values must be at least 2, got {min_values}")
    few = {name: count for name, count in _batch_norms(ctx).items() if count < min_values}
    if not few:
        return
    count = min(few.values())
    names = sorted(few, key=lambda name: (few[name], name))
    listed = _listed(names)
    yield Finding(
        message=(
            f"{len(few)} batch norm module{'s' if len(few) != 1 else ''} ({listed}) "
            f"normalise{'s' if len(few) == 1 else ''} each channel over {count} values per "
            f"training batch (< {min_values}): its mean and variance are noise, and not what "
            "evaluation normalises with"
            + (" (from 2 values every normalised value is -1 or +1)" if count == 2 else "")
        ),
        first_step=_first_training_step(ctx),
        value=float(count),
        threshold=float(min_values),
        key="small-batch",
        extra={"modules": few},
    )
