"""DBG1xx: gradients that vanish or explode."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import (
    RuleContext,
    TensorView,
    episode_findings,
    persistent,
    records_spanning,
    trailing_mean,
    trailing_median,
)
from dbgcli.rules._known import (
    LEARNED,
    LEARNING_RATE_BY_UPDATES,
    attention_query_or_key,
    clipped_gradient_norm,
    clipped_text,
    converged,
    gradients_not_zeroed,
    has_normalisation,
    initial_loss,
    is_embedding,
    zero_gradient_by_construction,
)
from dbgcli.rules._registry import Need, rule
from dbgcli.trace import schema

GRADIENTS = Need.tensors(collection="gradients")


def _judged(ctx: RuleContext) -> list[TensorView]:
    """Gradient tensors whose size says something: not embedding tables (sparse by
    construction) nor attention projections that compute queries or keys alone (small by
    construction while attention is uniform; their key biases get no gradient at all)."""
    return [
        view
        for view in ctx.tensors(collection="gradients")
        if not is_embedding(view.tag, view.info.kind)
        and not zero_gradient_by_construction(view.tag)
        and not attention_query_or_key(view.tag)
    ]


@rule(
    "DBG101",
    "vanishing-gradient",
    severity="warning",
    category="gradients",
    requires=GRADIENTS,
    label={"*": "vanishing gradients", "clipped": "gradients clipped to nothing"},
    explains=(
        "DBG301:not-decreasing",
        "DBG303",
        "DBG403",
        "DBG502:too-small",
        "DBG503:too-low",
        "DBG503:clipped",
    ),
)
def vanishing_gradient(
    ctx: RuleContext,
    *,
    threshold: float = 1e-7,
    ratio: float = 1e-3,
    ratio_below: float = 1e-4,
    min_steps: int = 5,
    converged_fraction: float = 0.1,
) -> Iterator[Finding]:
    """Gradients shrink towards zero before the model has learned: its weights stop learning.

    Two conditions, each evaluated per recorded step:

    * **absolute** (SageMaker Debugger's VanishingGradient): a weight gradient's mean absolute
      value ``0 < mean(|g|) < threshold`` (statistic ``abs_mean``). Exactly zero gradients
      are ``all-zero`` (DBG401)'s finding. Only gradients of weight matrices and kernels (two
      or more dimensions) are judged: a bias's gradient follows its layer's, and a bias that
      feeds a BatchNorm gets no gradient at all by construction (the normalisation subtracts
      it again).
    * **across layers** (AutoTrainer's gradient-ratio check, generalised): among the weight
      gradients recorded at one step, a gradient whose ``abs_mean`` is below ``ratio`` times the
      largest *and* below ``ratio_below`` in absolute terms (AutoTrainer's β1 = 1e-3 and
      β2 = 1e-4, there for the first layer against the last: the second bound keeps a blow-up
      of the other layers from passing for vanishing), i.e. signal dies on its way through
      the network. Every such layer is reported, not only the smallest (which can change from
      step to step between the first layers).

    **Persistence**: a condition must hold on consecutive records of a tensor spanning
    ``min_steps`` steps, and on at least two of them (a minibatch the model already fits gives
    one tiny gradient; that is not a vanished layer): ``min_steps`` records when gradients are
    recorded at every step, two records when they are recorded every 10 steps (the hooks'
    default ``stats_every``; see ``dbgcli.rules.persistent``). **Not converged**: as
    AutoTrainer reports vanishing gradients only when training has not converged, a record
    counts only while the training loss (mean of its last 10 records) is above
    ``converged_fraction`` of its first value, and so is the latest evaluation's loss of
    the first evaluation's (a training loss with terms that do not fall with the fit, such
    as a mixture of experts' load-balancing loss, shows the fit in the held-out loss
    only): once a model has fitted its data every gradient is tiny, and rightly so.
    Without a training or evaluation loss every record counts.

    **Not judged**: embedding tables (only the rows of the batch's tokens get a gradient, so
    their mean is tiny by construction); attention projections that compute queries or keys
    alone (their gradient passes through the softmax's derivative, near zero while attention is
    still uniform, so it starts orders of magnitude below the rest; Liu et al. 2020), named as
    real implementations name them inside a module named like attention (``attention``,
    ``attn``, ``self``, ``SelfAttention``, ``mha``): ``query``/``key`` (BERT), ``query_proj``
    (DeBERTa), ``q_proj``/``k_proj`` (BART, GPT-J, Llama, CLIP...), ``q_lin``/``k_lin``
    (DistilBERT, XLM), ``q``/``k`` (T5, MPNet), ``Wq``/``Wk`` (CTRL), ``q_head`` (Funnel),
    ``to_q``/``to_k`` (diffusers), ``query_key`` (Reformer's shared projection), QK-norm's
    ``q_norm``/``k_norm``, and PEFT's LoRA adapters and wrapped base layers of those
    (``q_proj.lora_A.default.weight``); their key biases get no gradient at all (softmax ignores
    a shift shared by every key). A fused projection that computes the values too
    (``query_key_value``, ``qkv``, ``kv``, ``Wqkv``, GPT-2's ``c_attn``, torch's
    ``in_proj_weight``) is judged like any layer: the values' part of its gradient does not pass
    through the softmax's derivative. The across-layer check is left out for models with
    normalisation layers (LayerNorm, BatchNorm...; parameters of kind ``normalisation``, as the
    PyTorch hook records torch.nn's, or named so): they rescale the signal between layers, so
    the layers' gradient scales differ by construction instead of compounding through depth,
    which is what AutoTrainer's check (on plain stacks) looks for.

    **Clipped, not vanishing** (key ``clipped`` instead of ``vanished``): the hooks record
    gradients after clipping, so a ``max_norm`` far below the gradients' own size makes every
    layer's gradient tiny. When the total norm of the recorded gradients is one value at
    every step (see ``learning-rate``, DBG503), the absolute check's findings name that bound
    instead of the network; the across-layer check is unchanged, as clipping scales every
    layer alike.

    One finding per tensor and kind, its episodes merged.

    Why it matters: layers whose gradients vanish keep their initial weights; the loss
    plateaus early, typically well above what the model can reach.

    Typical causes: deep stacks of saturating activations (sigmoid, tanh), poor initialisation,
    missing normalisation or residual connections.

    Fix: ReLU-family activations, He/Xavier initialisation, batch or layer normalisation,
    residual connections, gradient-norm monitoring per layer; gradients clipped at every step
    need a higher clipping bound instead.

    Args:
        threshold: Mean absolute gradient below which a tensor counts as vanished.
        ratio: Smallest-to-largest ``abs_mean`` ratio across weight gradients below which the
            smallest counts as vanished.
        ratio_below: The smallest ``abs_mean`` must also be below this for the ratio check.
        min_steps: Steps a condition must hold on consecutive records (at least two) before
            it is reported.
        converged_fraction: Records where the training loss, or the latest evaluation's,
            is below this fraction of its first value are not judged (the model has fitted
            its data).
    """
    # Weight matrices and kernels: a bias's gradient follows its layer's, and a bias feeding
    # a BatchNorm gets none at all (the normalisation subtracts it again).
    views = [v for v in _judged(ctx) if v.info.shape is not None and len(v.info.shape) >= 2]
    # Normalisation layers rescale the signal between layers, so per-layer gradient scales
    # differ by construction rather than compounding through depth.
    compare = len(views) >= 2 and not has_normalisation(ctx)
    across = _AcrossLayers(views) if compare else None
    clipped = clipped_gradient_norm(ctx) if views else None
    cause = "" if clipped is None else clipped_text(clipped)
    for view in views:
        values = view.stat("abs_mean")
        learning = ~converged(ctx, view.steps, converged_fraction)
        with np.errstate(invalid="ignore"):
            small = (values < threshold) & (values > 0)
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=values,
            violating=persistent(small & learning, view.steps, min_steps),
            threshold=threshold,
            key="vanished" if clipped is None else "clipped",
            worst="min",
            modes=view.modes,
            message=lambda e, v: f"mean |gradient| fell to {v:.3g} (< {threshold:g}){cause}",
        )
        if across is not None:
            across.add(view, values, learning)
    if across is not None:
        yield from across.findings(ratio, ratio_below, min_steps)


class _AcrossLayers:
    """Per step, the largest positive finite ``abs_mean`` among weight gradients, and how many
    there are; then each gradient against it.

    Two passes over the tensors, so that only one tensor's statistics are needed at once.
    """

    def __init__(self, views: list[TensorView]) -> None:
        self.views = views
        first = views[0].steps
        increasing = len(first) < 2 or bool(np.all(np.diff(first) > 0))
        self.aligned = increasing and all(np.array_equal(v.steps, first) for v in views)
        # The usual case: every gradient recorded once at the same steps.
        self.steps = first if self.aligned else np.unique(np.concatenate([v.steps for v in views]))
        self.largest = np.full(len(self.steps), -np.inf)
        self.present = np.zeros(len(self.steps), dtype=np.int64)
        self.learning = np.ones(len(self.steps), dtype=bool)

    def columns(self, view: TensorView) -> slice | np.ndarray:
        return slice(None) if self.aligned else np.searchsorted(self.steps, view.steps)

    def add(self, view: TensorView, values: np.ndarray, learning: np.ndarray) -> None:
        """Fold in the ``abs_mean`` of ``view``; zero or non-finite values do not count.
        ``learning`` marks the records taken while the model had not converged."""
        columns = self.columns(view)
        self.learning[columns] &= learning
        with np.errstate(invalid="ignore"):
            counted = np.isfinite(values) & (values > 0)
        self.largest[columns] = np.fmax(self.largest[columns], np.where(counted, values, -np.inf))
        self.present[columns] += counted

    def findings(self, ratio: float, below: float, min_steps: int) -> Iterator[Finding]:
        for view in self.views:
            positions = self.columns(view)
            values = view.stat("abs_mean")
            with np.errstate(invalid="ignore", divide="ignore"):
                relative = np.where(
                    self.present[positions] >= 2, values / self.largest[positions], np.nan
                )
                mine = (
                    (values > 0) & (relative < ratio) & (values < below) & self.learning[positions]
                )
            yield from episode_findings(
                tensor=view.tag,
                steps=view.steps,
                values=relative,
                violating=persistent(mine, view.steps, min_steps),
                threshold=ratio,
                key="vanished-relative",
                worst="min",
                modes=view.modes,
                message=lambda e, v: f"gradient {v:.3g}x the largest layer's (< {ratio:g})",
            )


_EXPLOSION_EFFECTS = (
    "DBG306",
    "DBG404",
    "DBG305",
    "DBG301:increasing",
    "DBG502:too-large",
    "DBG201",
    "DBG202",
    "DBG203",
    # Huge gradients make huge updates: when they come first, the rate is not to blame.
    "DBG503:too-high",
)


@rule(
    "DBG102",
    "exploding-gradient",
    severity="warning",
    category="gradients",
    requires=GRADIENTS,
    per_tensor=True,
    label={
        "nonfinite": "non-finite gradients",
        "input-spike": "corrupted input batch",
        "*": "exploding gradients",
    },
    explains={"nonfinite": ("DBG306", "DBG404"), "*": _EXPLOSION_EFFECTS},
)
def exploding_gradient(
    ctx: RuleContext,
    *,
    growth: float = 300.0,
    window: int = 10,
    max_abs_mean: float = 1e6,
    input_scale: float = 9.0,
) -> Iterator[Finding]:
    """Gradients blow up: non-finite values, a sudden jump in norm, or huge magnitudes.

    Three conditions per gradient tensor and recorded step, and two on what drives them,
    the loss between gradient records and the inputs:

    * **non-finite** (severity error): any NaN or ±inf element (``nan_count + inf_count >
      0``); SageMaker Debugger's ExplodingTensor restricted to gradients.
    * **growth** (warning): the L2 norm exceeds ``growth`` times the tensor's typical norm:
      the larger of the median of the previous ``window`` records and the median of its first
      ``window`` records. The default of 300 lies halfway, on a log scale, between what healthy
      runs and faults reach on the calibration corpus (seeds 0-2, recorded every step and
      every 10th): once a model fits most of its data, one batch holding a few hard examples
      lifts the gradient of a healthy small BERT up to 131 times over its recent median, while
      a batch corrupted by a factor of 1000 lifts it at least 690 times at its first step (and
      6e5 times or more at the next, once the weights are thrown) and a learning rate that
      makes the loss oscillate at least 1,100 times.
      Both medians take ``window`` records (a robust baseline needs that many samples,
      whatever their spacing). The records of the first ``window`` steps, and at least the
      first three records, are history only and never judged: they would be judged against
      themselves (a run whose first norms are large and fall fast would "jump" at its first
      steps); recorded every 10th step, judging starts at the fourth record (step 30), not
      after 100 steps (until ``window`` records exist the initial median is the baseline).
      Records N steps apart (``stats_every``) see a blow-up only at the recorded steps (the
      first step of the corrupted batches above may be the only one recorded): a corrupted
      batch between two of them shows in the weights' updates and the loss, not here.
      Taking the larger baseline keeps gradients that recover after vanishing for a while
      from counting as an explosion. One jump is enough: a single corrupted batch throws
      the weights as far as a sustained explosion does. Attention projections that compute
      queries or keys alone (named as ``vanishing-gradient`` lists: ``query``, ``q_proj``,
      ``q_lin``, T5's ``q``, their LoRA adapters...) are not judged for growth: their
      gradient starts near zero while attention is uniform and grows by orders of magnitude
      as attention learns (from below the value projection's to above it), and their key
      biases' gradient is rounding noise around zero. Fused query-key-value projections are
      judged: their norm is never below the values' part, which is an ordinary layer's
      gradient from the first step, so attention switching on lifts it only by the factor
      the query and key parts come to exceed the values' part by, not from near zero. No
      floor is needed for other gradients that are zero by construction (a bias feeding a
      BatchNorm): their rounding noise is proportional to the gradients it is computed from,
      so it jumps only when those do.
    * **magnitude** (warning): ``mean(|g|) > max_abs_mean`` (TheDeepChecker's bound).
    * **loss jump** (warning): the blow-up the records miss. At a step where a gradient was
      not recorded, the training loss jumps ``growth`` times over both its previous record
      and the mean of its previous ``window`` records, in one step, and lands above the
      untrained model's loss (DBG303's initial loss; ``ln C`` for a run that started
      trained). A step-to-step rise that steep is no learning rate overshooting (that
      compounds over several steps, each a few times the last, and shows in the recorded
      updates from the start) and no hard batch: a fitted model's hard batches are part of
      its mean (the median leaves them out: batches mostly at 0.002 and one in ten at 0.5
      put a hard one at 2.7 at 1,350 times their median and 52 times their mean), and a
      large batch's stay
      below an untrained model's loss. The batch threw the weights, or its loss did. Recorded
      every 10th step, the corrupted batch of the calibration corpus, whose first step's
      loss can be exactly 0 (a batch so large the softmax saturates on the right class, and
      its gradient with it), shows only here; its loss jumps thousands of times at the next step.
      The finding is the loss's, one per jump at a step with no gradient recorded; the first
      ``window`` loss records are history only. A jump the loss is back from at the very
      next steps (the median of the next three below 80 % of the untrained model's loss,
      DBG303's bar for having learned) is a hard batch: the update it drove threw nothing
      (a regression's outlier targets under a Huber loss, whose gradient is bounded, jumped
      397 times on a real run, and the next three steps' median was below half the
      untrained model's). A model thrown back to chance is not back. A loss that oscillates
      (DBG305) jumps so at every turn, and starting earlier is their cause.
    * **input spike** (warning, key ``input-spike``): the blow-up's trigger, a batch unlike
      the rest. A training record of a float input (not token ids) whose standard deviation
      is more than ``input_scale`` times the median record's, where the training loss of its
      step (the batch's) or of the next (after the update the batch drove) lands above the
      untrained model's loss (as for the loss jump: no fitted model's hard batch does that).
      9 is DBG602's bar on a channel's scale (3) squared, the factor at which DBG602 leaves
      such records out of its moments: even data at the edge of that bar are not this far
      off. A unit conversion applied twice, a batch of raw pixels among normalised ones, a
      join that put the wrong column in: the gradients of that step scale with the inputs,
      yet may rise less than ``growth`` times (a batch scaled by 300 lifted them 150 times on
      a real run, and the updates it drove, 7 times the weights, read as a learning rate far
      too high), so the inputs say what the gradients cannot. The finding is the inputs' and
      spans their spikes; records N steps apart see only the spikes at recorded steps (the
      loss jump sees the others). Only a rise counts: a batch of small scale cannot blow up.

    Why it matters: exploding gradients throw the weights far from any useful region in one
    step; the loss jumps, often to NaN, and training rarely recovers.

    Typical causes: a learning rate far too high, no gradient clipping in recurrent networks,
    poor initialisation (large weights), a loss with a division or log near zero, fp16
    overflow without loss scaling, a corrupted batch.

    Fix: lower the learning rate or use warmup, clip the gradient norm, check the loss for
    unsafe operations, use mixed precision with a gradient scaler; for a corrupted batch, look
    at the input pipeline at the steps named (a conversion applied twice, a skipped
    normalisation) and clip the gradient norm against the next one.

    Args:
        growth: Factor over the trailing median norm that counts as an explosion.
        window: Records of history the medians use; the records of the first ``window``
            steps (at least three) are not judged.
        max_abs_mean: Mean absolute gradient above which a tensor counts as exploded.
        input_scale: Factor over the median input record's standard deviation above which a
            batch counts as unlike the rest.
    """
    for view in ctx.tensors(collection="gradients"):
        nonfinite = view.stat("nan_count") + view.stat("inf_count")
        for finding in episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=nonfinite,
            violating=nonfinite > 0,
            threshold=0.0,
            key="nonfinite",
            modes=view.modes,
            message=lambda e, v: f"{v:.0f} NaN/inf gradient elements",
        ):
            yield replace(finding, severity=Severity.error)
        norms = view.stat("l2")
        unjudged = records_spanning(view.steps, window, least=3)
        # The baseline is the larger of the recent and the initial typical norm, so that
        # gradients recovering from a vanished stretch do not pass for an explosion.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN start has no median
            initial = float(np.nanmedian(norms[:window])) if len(norms) > unjudged else np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            jump = norms / initial
            # The baseline is at least the initial median: only records that jumped over
            # that can have jumped over the recent median, so only they need it.
            possible = np.flatnonzero(~(jump <= growth))
            recent = trailing_median(norms, window, at=possible)
            jump[possible] = norms[possible] / np.fmax(recent[possible], initial)
        jumped = np.isfinite(jump) & (jump > growth)
        jumped[:unjudged] = False
        if attention_query_or_key(view.tag):
            # Starts near zero while attention is uniform; growing out of that is learning.
            jumped[:] = False
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=jump,
            violating=jumped,
            threshold=growth,
            key="norm-growth",
            modes=view.modes,
            message=lambda e, v: (
                f"gradient norm jumped {v:.3g}x over its recent median (> {growth:g}x)"
            ),
        )
        if view.tag == ctx.shared("first-gradient", lambda: _first_gradient_tag(ctx)):
            yield from _loss_jumps_between_records(ctx, growth, window)
            yield from _input_spikes(ctx, input_scale)
        magnitude = view.stat("abs_mean")
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=magnitude,
            violating=magnitude > max_abs_mean,
            threshold=max_abs_mean,
            key="magnitude",
            modes=view.modes,
            message=lambda e, v: f"mean |gradient| reached {v:.3g} (> {max_abs_mean:g})",
        )


def _first_gradient_tag(ctx: RuleContext) -> str:
    return next(iter(ctx.unfocused().tensors(collection="gradients"))).tag


# The steps after a loss jump whose median says whether the model kept what it had learned
# (below LEARNED, DBG303's bar, of the untrained model's loss).
_FOLLOWING_STEPS = 3


def _loss_jumps_between_records(ctx: RuleContext, growth: float, window: int) -> Iterator[Finding]:
    """DBG102's loss jumps: at training steps where no gradient was recorded, found once per
    trace (the rule runs tensor by tensor; they are the loss's)."""
    whole = ctx.unfocused()
    series = whole.loss("train")
    if series is None:
        return
    train = schema.MODE_CODES["train"]
    recorded = np.unique(
        np.concatenate(
            [v.steps[v.modes == train] for v in whole.tensors(collection="gradients")] or [[]]
        )
    ).astype(np.int64)
    keep = np.isfinite(series.values) & (series.modes == train)
    order = np.argsort(series.steps[keep], kind="stable")
    steps, values = series.steps[keep][order], series.values[keep][order]
    if len(values) <= window or not len(recorded):
        return
    # The mean, not the median, of the previous records: a fitted model's minibatch losses
    # are mostly near 0 and now and then a hard batch's, whose share is what the loss is on
    # average, and what a small batch's next record is measured against.
    recent = trailing_mean(values, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        jump = values[1:] / np.fmax(values[:-1], recent[1:])
    jump[: window - 1] = np.nan  # the first ``window`` records are history only
    jumped = 1 + np.flatnonzero(jump > growth)  # a rise from exactly 0 is one too (inf)
    jumped = jumped[~np.isin(steps[jumped], recorded) & (steps[jumped] > recorded[0])]
    if not len(jumped):
        return
    initial = initial_loss(whole)
    if initial is None:
        return
    # Back at the very next steps to what a model that learned scores (the median of the
    # next three below DBG303's bar, 80 % of the untrained loss): the update that batch
    # drove threw nothing (a hard batch under a bounded loss, such as Huber's outliers). A
    # model thrown back to chance is not back.
    after = _FOLLOWING_STEPS
    recovered = np.array(
        [
            at + after < len(values)
            and steps[at + after] == steps[at] + after
            and float(np.median(values[at + 1 : at + after + 1])) <= LEARNED * initial.value
            for at in jumped
        ],
        dtype=bool,
    )
    for at in jumped[(values[jumped] > initial.value) & ~recovered]:
        before, after = recorded[recorded < steps[at]], recorded[recorded > steps[at]]
        between = (
            f"between the gradient records at steps {before[-1]} and {after[0]}"
            if len(after)
            else f"after the last gradient record at step {before[-1]}"
        )
        base = max(float(values[at - 1]), float(recent[at]))
        # From exactly 0 (a loss that underflowed) every rise is infinitely many times it.
        times = f"{jump[at - 1]:.3g}x" if base > 0 else "up from 0,"
        yield Finding(
            message=(
                f"train loss jumped to {values[at]:.3g} in one step at step {steps[at]}, "
                f"{times} the larger of its previous record {values[at - 1]:.3g} "
                f"and its recent mean {recent[at]:.3g} (> {growth:g}x, and above "
                f"{initial.name}), {between}: a blow-up they miss"
            ),
            tensor=whole.loss_tag("train") or "loss",
            first_step=int(steps[at]),
            last_step=int(steps[at]),
            steps=1,
            value=float(jump[at - 1]),
            threshold=growth,
            mode="train",
            key="loss-jump",
        )


def _input_spikes(ctx: RuleContext, scale: float) -> Iterator[Finding]:
    """DBG102's input spikes, found once per trace (the findings are the inputs')."""
    whole = ctx.unfocused()
    loss = whole.loss("train")
    initial = initial_loss(whole)
    if loss is None or initial is None:
        return
    train = schema.MODE_CODES["train"]
    losses: dict[int, float] = {}
    for step, value in zip(loss.steps[loss.modes == train], loss.values[loss.modes == train]):
        losses[int(step)] = max(losses.get(int(step), -np.inf), float(value))
    for view in whole.tensors(collection="inputs"):
        if whole.categorical(view):
            continue
        stds = np.where(view.modes == train, view.stat("std"), np.nan)
        usable = np.isfinite(stds) & (stds > 0)
        if usable.sum() < 3:
            continue
        ratio = stds / float(np.median(stds[usable]))
        # The batch's own loss, or the loss after the update it drove.
        above = np.array(
            [max(losses.get(int(s), -np.inf), losses.get(int(s) + 1, -np.inf)) for s in view.steps]
        )
        with np.errstate(invalid="ignore"):
            spiked = usable & (ratio > scale) & (above > initial.value)
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=ratio,
            violating=spiked,
            threshold=scale,
            key="input-spike",
            modes=view.modes,
            message=lambda e, v: (
                f"training inputs at up to {v:.3g}x the median batch's standard deviation "
                f"(> {scale:g}x), with the loss of their step or the next above {initial.name}: "
                "batches unlike the rest threw the model"
            ),
        )


# -- DBG103 -------------------------------------------------------------------------------------


@rule(
    "DBG103",
    "gradients-not-zeroed",
    severity="error",
    category="gradients",
    requires=Need.torch_hook_note(schema.META_GRADIENTS_NOT_ZEROED, "the optimizer steps"),
    label={"carried": "gradients not zeroed between steps"},
    # Every update follows the sum of all gradients so far: the steps grow, overshoot and
    # swing, the units die, and the loss climbs.
    explains=(
        "DBG102",
        "DBG201",
        "DBG301",
        "DBG302",
        "DBG303",
        "DBG303:held-out-at-chance",
        "DBG305",
        "DBG306",
        *LEARNING_RATE_BY_UPDATES,
        "DBG601",
        "DBG604",
    ),
)
def gradients_not_zeroed_between_steps(ctx: RuleContext) -> Iterator[Finding]:
    """The gradients are not zeroed between optimizer steps: ``zero_grad()`` is missing.

    ``backward()`` adds each gradient to the parameter's ``.grad``; without
    ``optimizer.zero_grad()`` (or ``model.zero_grad()``) between optimizer steps, every update
    follows the sum of all gradients so far, which grows step after step. Gradient
    accumulation over micro-batches zeroes after each optimizer step and is not this.

    The PyTorch hook (also under the Hugging Face and Lightning callbacks) checks at the
    optimizer step after each recorded one whether one parameter's gradient is, in direction,
    the previous step's gradient plus what ``backward()`` brought in since (within rounding,
    ``1 - cos < 1e-10``), and not the new part alone (``1 - cos > 1e-8``), at the first two
    recorded steps and every tenth after. Directions are compared, so clipping, which
    rescales the gradient in place, changes nothing; a GAN whose generator pass flows into
    the discriminator's gradients before the discriminator's ``zero_grad`` is no such case,
    since zeroing removes the old part. Runs under a ``GradScaler`` (the old gradient,
    unscaled, is too small a part of the new, scaled, one) and with half-precision
    gradients (too coarse) are not judged. Two checks in a row must agree before the hook
    warns and notes the step in the run metadata (``gradients_not_zeroed``), which this rule
    reports. A trace without the hook's watch (no ``torch_version`` in its metadata) is
    skipped; note ``gradients_not_zeroed`` (``{"step": N}``) yourself to have it judged.

    Severity is error: the optimizer does not follow the gradient of the loss at all.

    Why it matters: the effective step grows with every update, so training looks like a
    learning rate far too high (exploding updates, a loss that climbs or oscillates, dead
    units), and lowering the learning rate only delays it.

    Typical causes: ``optimizer.zero_grad()`` left out of a hand-written loop, or moved out
    of the loop (once per epoch), or called on another optimizer than the one that steps.

    Fix: call ``optimizer.zero_grad()`` once per optimizer step (before ``backward()``, or
    after ``optimizer.step()``); with gradient accumulation, after each optimizer step.
    """
    note = gradients_not_zeroed(ctx.trace.metadata)
    if note is None:
        return
    step, parameter = note
    seen = f" (seen in the gradient of {parameter})" if parameter else ""
    yield Finding(
        message=(
            f"the gradients are not zeroed between optimizer steps: the gradient of step {step} "
            f"was still part of the next step's{seen}; zero_grad() missing?"
        ),
        first_step=step,
        value=float(step),
        key="carried",
        extra={"parameter": parameter},
    )
