"""Facts about common architectures that rules must know to judge real runs fairly.

Each predicate names a structure whose statistics look pathological by construction, with the
reason; the rules that use them say so in their documentation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from dbgcli.rules._context import RuleContext, TensorView
from dbgcli.trace import schema
from dbgcli.trace.roles import name_words

if TYPE_CHECKING:
    from dbgcli.rules.data import StartingAccuracy

# Embedding tables are looked up, not multiplied: each step only the rows of the tokens in the
# batch get a gradient and an update, so their mean gradient is tiny by construction.
_EMBEDDING_WORDS = frozenset({"embed", "embeds", "embedding", "embeddings", "wte", "wpe"})
# Normalisation layers (LayerNorm, BatchNorm, RMSNorm, GroupNorm; GPT-2's ln_1, ln_f).
_NORM_WORDS = frozenset(
    {"norm", "layernorm", "batchnorm", "rmsnorm", "groupnorm", "ln", "bn", "gn", "lnf"}
)


def is_embedding(tag: str, kind: str | None = None) -> bool:
    """An embedding table (or its gradient): its rows are looked up, not multiplied."""
    return kind == "embedding" or bool(set(name_words(tag)) & _EMBEDDING_WORDS)


# The parameter a layer multiplies its input by, as frameworks name it: torch.nn's ``weight``
# (Linear, Conv, Embedding; ``weight_ih_l0``, ``in_proj_weight``), Keras's and Flax's
# ``kernel``, Haiku's ``w``.
_LAYER_WEIGHT_WORDS = frozenset({"weight", "weights", "kernel", "w"})
# What real models call the parameters they register themselves to add to their activations
# or to scale a residual branch: positional tables (``pos``, timm's ``pos_embed``, HF ViT's
# ``position_embeddings``, CLIP's ``positional_embedding``), tokens (ViT's ``cls_token``,
# DeiT's ``dist_token``, ``reg_token``/``register_tokens``, BEiT's ``mask_token``, BLIP-2's
# ``query_tokens``), layer scales (CaiT's and ConvNeXt's ``gamma``, BEiT's ``lambda_1``,
# ``layer_scale``), ReZero's ``alpha``/``resweight``.
_ADDED_OR_SCALING_WORDS = frozenset(
    {"pos", "position", "positional", "posemb", "token", "tokens", "cls"}
    | {"gamma", "lambda", "layerscale", "scale", "alpha", "resweight"}
)


def added_or_scaling_parameter(tag: str) -> bool:
    """A parameter a model adds to its activations or scales a residual branch with, rather
    than a matrix or kernel a layer multiplies its input by: its own name (the last component
    of the tag: ``pos`` in ``pos``, ``cls_token`` in ``vit.embeddings.cls_token``, ``gamma``
    in ``blocks.0.ls1.gamma``) is one :data:`_ADDED_OR_SCALING_WORDS` lists and not a layer's
    weight (``pos_embedding.weight`` is an ``nn.Embedding`` table).

    Layers name what they multiply by ``weight`` (``kernel``, ``w``); these are registered by
    the model itself, and real models initialise them constant on purpose: ViT's
    ``cls_token`` and ``mask_token`` at zero, learned positional tables at zero or small
    noise, LayerScale at ``1e-5`` or ``1e-6`` times ones (Touvron et al. 2021, "Going
    deeper with image transformers"), ReZero at 0 (Bachlechner et al. 2020). Adding a
    constant to every unit's input, or scaling a branch, leaves the units of the layers
    around it distinct, so the symmetry argument against constant weights does not apply,
    nor has such a parameter a fan-in.
    """
    components = _components(tag)
    if not components:
        return False
    own = set(components[-1])
    return bool(own & _ADDED_OR_SCALING_WORDS) and not own & _LAYER_WEIGHT_WORDS


# Attention modules, by the names real implementations give them (``attention``, BERT's
# ``attention.self``, T5's ``SelfAttention``/``EncDecAttention``, XLM's ``attentions``,
# ``self_attn``, ``attn``, CTRL's ``multi_head_attention``, a user's ``mha``).
_ATTENTION_WORDS = frozenset({"attention", "attentions", "crossattention", "attn", "self", "mha"})
# What a projection that computes queries or keys alone is called: BERT's ``query``/``key``,
# DeBERTa's ``query_proj``, Longformer's ``query_global``, ``q_proj``/``k_proj`` (BART, OPT,
# GPT-J, GPT-Neo, Llama, Mistral, Qwen, Phi, CLIP, ViT), DistilBERT's and XLM's
# ``q_lin``/``k_lin``, T5's and MPNet's ``q``/``k``, Funnel's ``q_head``, CTRL's and Llama's
# reference ``wq``/``wk``, GPT-2's cross-attention ``q_attn``, Reformer's shared ``query_key``,
# torch's ``q_proj_weight``; QK-norm scales (``q_norm``, ``k_norm``) act on them alone too.
_QUERY_WORDS = frozenset({"query", "queries", "q", "wq"})
_KEY_WORDS = frozenset({"key", "keys", "k", "wk"})
_QUERY_KEY_WORDS = frozenset({"qk"})
# Fused projections that compute the values too: GPT-NeoX's, BLOOM's and Falcon's
# ``query_key_value``, timm's ``qkv``, PVT's ``kv``, MPT's ``Wqkv``, CodeGen's ``qkv_proj``.
# (GPT-2's ``c_attn`` and torch's ``in_proj_weight`` name no query or key.)
_VALUE_WORDS = frozenset({"value", "values", "v", "wv", "qkv", "wqkv", "kv", "wkv"})
# The name of a parameter itself, after its module's (torch's ``weight``/``bias``, Keras's
# and Flax's ``kernel``), or of its gradient (``key/grad``, ``key/bias_grad``).
_PARAMETER_WORDS = frozenset(
    {"weight", "weights", "bias", "biases", "kernel", "grad", "grads", "gradient", "gradients"}
)
# The other words such a projection's name may have; a name with any other word is not one
# (diffusers' ``to_q``/``to_k``).
_PROJECTION_WORDS = _PARAMETER_WORDS | frozenset(
    {"proj", "projection", "lin", "linear", "dense", "head", "net", "layer", "fc", "attn"}
    | {"global", "pos", "norm", "to"}
)
# Components that wrap a layer's parameter without being the layer: PEFT's LoRA adapters
# (``q_proj.lora_A.default.weight``) and wrapped base layer (``q_proj.base_layer.weight``),
# torch's parametrizations (``query.parametrizations.weight.original``) and pruning
# (``query.weight_orig``).
_WRAPPER_WORDS = frozenset(
    {"lora", "a", "b", "default", "base", "layer", "parametrizations", "original", "orig"}
)


def _components(tag: str) -> list[list[str]]:
    """The words of each component of a tag (``encoder.layer.0.attention.q_lin.weight``,
    ``attention/key/kernel:0``), components without a word (``0``) left out."""
    parts = (name_words(part) for part in re.split(r"[./:]", tag))
    return [words for words in parts if words]


def _query_key_sides(tag: str) -> frozenset[str]:
    """Which of ``query`` and ``key`` an attention parameter computes, when it computes those
    alone (empty otherwise: not attention, a value or output projection, a fused projection)."""
    words = name_words(tag)
    if not _ATTENTION_WORDS & set(words):
        return frozenset()
    components = _components(tag)
    # The module the parameter belongs to: ``q_lin`` in ``...q_lin.weight``, ``q`` in XLNet's
    # ``rel_attn.q``, ``q_proj_weight`` in torch's MultiheadAttention, ``q_proj`` in
    # ``q_proj.lora_A.default.weight``.
    module = next(
        (c for c in reversed(components) if not set(c) <= _PARAMETER_WORDS | _WRAPPER_WORDS), []
    )
    names = set(module)
    sides = frozenset(
        side
        for side, vocabulary in (("query", _QUERY_WORDS), ("key", _KEY_WORDS))
        if names & (vocabulary | _QUERY_KEY_WORDS)
    )
    allowed = _QUERY_WORDS | _KEY_WORDS | _QUERY_KEY_WORDS | _PROJECTION_WORDS
    if not sides or names & _VALUE_WORDS or not names <= allowed:
        return frozenset()
    return sides


def zero_gradient_by_construction(tag: str) -> bool:
    """The bias of an attention key projection: it adds the same number (query · bias) to
    every logit of a query, softmax ignores a shift shared by every key, so the loss does not
    depend on it and its gradient is zero (up to rounding).

    Matches the key-only projections :func:`attention_query_or_key` knows
    (``...attention.self.key.bias``, ``k_proj.bias``, ``k_lin.bias``, ``Wk.bias``,
    ``key/bias:0``, ``key/bias_grad``), not a fused one (``query_key_value.bias``,
    ``qkv.bias``), whose value and query parts do get a gradient.
    """
    last = _components(tag)[-1:] or [[]]
    return _query_key_sides(tag) == {"key"} and bool({"bias", "biases"} & set(last[0]))


def invariant_biases(ctx: RuleContext) -> frozenset[str]:
    """Gradient tags of biases the loss does not depend on: at every training step, at least
    two, where the gradient of the bias's layer weight (``....weight`` beside ``....bias``)
    is recorded and not zero, the bias's own gradient is exactly zero (steps where both are
    zero, a hinge loss every sample satisfies, say nothing). The bias's gradient is the sum
    over the batch of what its weight's gradient weighs by the inputs; with the one zero at
    every step and the other not, the loss is invariant to shifting that layer's outputs: a
    pairwise or ranking loss (``s(a) - s(b)``), a softmax over outputs that share the shift,
    a normalisation after the layer. (A bias cut off from the graph has no gradient at all; a
    dead layer zeroes both.) Computed once per analysis."""
    return ctx.shared("invariant-biases", lambda: _invariant_biases(ctx.unfocused()))


def _invariant_biases(ctx: RuleContext) -> frozenset[str]:
    train = schema.MODE_CODES["train"]
    found = set()
    for view in ctx.tensors(collection="gradients"):
        trained = view.positions(train)
        pulled = weight_gradient_flows(ctx, view)[trained]
        with np.errstate(invalid="ignore"):
            zero = (view.stat("max") == 0) & (view.stat("min") == 0)
        if pulled.sum() >= 2 and zero[trained][pulled].all():
            found.add(view.tag)
    return frozenset(found)


def weight_gradient_flows(ctx: RuleContext, view: TensorView) -> np.ndarray:
    """Per record of ``view``, a bias's gradient, whether the gradient of its layer's weight
    (``....weight`` beside ``....bias``) is recorded at the same step and mode and is not
    zero: the loss's gradient reached that layer then (the weight's gradient is the batch's
    backpropagated signal weighed by the layer's inputs, the bias's the same signal summed),
    whatever the bias's own. All False for any other tensor."""
    flows = np.zeros(len(view.steps), dtype=bool)
    if not view.tag.endswith("bias"):
        return flows
    weights = ctx.shared(
        "gradient-tags", lambda: {v.tag for v in ctx.unfocused().tensors(collection="gradients")}
    )
    tag = view.tag[: -len("bias")] + "weight"
    if tag not in weights:
        return flows
    weight = ctx.unfocused().view(tag)
    with np.errstate(invalid="ignore"):
        pulled = weight.stat("l2") > 0
    codes = len(schema.MODE_CODES)
    return np.isin(view.steps * codes + view.modes, (weight.steps * codes + weight.modes)[pulled])


def attention_query_or_key(tag: str) -> bool:
    """A parameter of attention that computes queries or keys alone (``attention.self.query``,
    ``q_proj``, ``k_lin``, T5's ``SelfAttention.q``, ``Wk``, Reformer's shared ``query_key``,
    the QK-norm scales ``q_norm``/``k_norm``), inside a module named like attention
    (``attention``, ``attn``, ``self``, ``mha``: ``mlp.k`` or a DQN's ``q_head`` is not one).

    Its gradient passes through the softmax's derivative alone, which is near zero while
    attention is still uniform, so it starts orders of magnitude below the other layers' and
    grows by as much once attention sharpens (Liu et al. 2020, "Understanding the difficulty
    of training transformers").

    A fused projection that computes the values too (GPT-NeoX's ``query_key_value``, timm's
    ``qkv``, PVT's ``kv``, MPT's ``Wqkv``; GPT-2's ``c_attn`` and torch's ``in_proj_weight``
    say nothing of queries) is not one: its gradient holds the values' block, which does not
    pass through the softmax's derivative, so its norm is at least an ordinary layer's from
    the first step, and it grows only by the factor by which the query and key blocks come
    to exceed the value block, not from near zero.
    """
    return bool(_query_key_sides(tag))


def is_normalisation(tag: str, kind: str | None = None) -> bool:
    """A normalisation layer's parameter (LayerNorm, BatchNorm, RMSNorm, GroupNorm): recorded
    with kind ``normalisation`` (the PyTorch hook knows torch.nn's from their type), or named
    like one."""
    if kind == "normalisation":
        return True
    words = name_words(tag)
    return bool(set(words) & _NORM_WORDS) or any(
        a in ("layer", "batch", "group", "rms") and b == "norm" for a, b in zip(words, words[1:])
    )


def has_normalisation(ctx: RuleContext) -> bool:
    """Whether the model has normalisation layers (parameters of that kind, or named so)."""
    return any(
        is_normalisation(v.tag, v.info.kind)
        for v in ctx.tensors(collection=("weights", "biases", "gradients"))
    )


def first_update_step(ctx: RuleContext) -> int | None:
    """The first step whose recorded learning rate is above 0 (None without one): before its
    update, zero-initialised parameters are still zero by design (a warmup starting at 0
    leaves the first records as initialised)."""
    series = ctx.lr()
    if series is None:
        return None
    moving = series.steps[series.values > 0]
    return int(moving.min()) if len(moving) else None


# A learning rate below this fraction of its peak asks for no learning at all: updates four
# orders of magnitude smaller than the ones the run was tuned for. Warmups start there and
# decays to zero end there, for a sliver of the run; a schedule that stays there starves it.
STARVED_LR = 1e-4


def lr_fraction(ctx: RuleContext, steps: np.ndarray) -> np.ndarray | None:
    """The recorded learning rate at each step as a fraction of its largest value (None when
    no learning rate is recorded)."""
    series = ctx.lr()
    if series is None or not np.isfinite(series.values).any():
        return None
    peak = float(np.nanmax(series.values))
    if not peak > 0:
        return None
    order = np.argsort(series.steps, kind="stable")
    lr_steps, lr_values = series.steps[order], series.values[order]
    where = np.searchsorted(lr_steps, steps, side="right") - 1
    return np.where(where >= 0, lr_values[np.maximum(where, 0)] / peak, np.nan)


def lr_raised(
    ctx: RuleContext, begins: np.ndarray, ends: np.ndarray, at: np.ndarray, factor: float = 2.0
) -> np.ndarray:
    """Per window ``(begins[i], ends[i]]``: the recorded learning rate at step ``at[i]`` is at
    least ``factor`` times the lowest it was in the window, so a schedule raised it since
    (False where unknown, and without a recorded rate)."""
    raised = np.zeros(len(at), dtype=bool)
    series = ctx.lr()
    if series is None:
        return raised
    keep = np.isfinite(series.values)
    order = np.argsort(series.steps[keep], kind="stable")
    steps, values = series.steps[keep][order], series.values[keep][order]
    now = np.searchsorted(steps, at, side="right") - 1
    first = np.searchsorted(steps, begins, side="right")
    last = np.searchsorted(steps, ends, side="right")
    for index, (begin, end, current) in enumerate(zip(first, last, now, strict=True)):
        if current >= 0 and end > begin and values[current] > 0:
            raised[index] = values[current] >= factor * values[begin:end].min()
    return raised


def lr_below(ctx: RuleContext, steps: np.ndarray, fraction: float) -> np.ndarray:
    """Per step: the recorded learning rate is below ``fraction`` of its peak, as a warmup's
    first steps or a decay's last ones are (False where unknown, and without a recorded rate)."""
    lr = lr_fraction(ctx, steps)
    if lr is None:
        return np.zeros(len(steps), dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(lr < fraction)


# A total gradient norm this steady, record after record, is a clipping bound: gradients of
# real batches vary by far more.
_PINNED = 1e-3


def clipped_gradient_norm(ctx: RuleContext) -> float | None:
    """The total norm the training gradients were clipped to at nine in ten of at least 5
    recorded steps (``clip_grad_norm_``'s ``max_norm``, the Trainer's ``max_grad_norm``,
    Lightning's ``gradient_clip_val``), or None. The PyTorch hook and the Hugging Face
    callback record gradients after clipping: there the norm over every gradient tensor of a
    step is one value, within 0.1 %, as no real batches' gradients are unless clipping cuts
    every one of them. Lightning's callback records them before and notes the bound (run
    metadata ``gradient_clipping``): there the recorded norm is at least the bound. Computed
    once per analysis, for every rule that asks."""
    return ctx.shared("clipped-gradient-norm", lambda: _clipped_gradient_norm(ctx.unfocused()))


def _clipped_gradient_norm(ctx: RuleContext) -> float | None:
    views = ctx.tensors(collection="gradients")
    if not views:
        return None
    steps, squares = [], []
    for view in views:
        train = view.positions(schema.MODE_CODES["train"])
        steps.append(view.steps[train])
        squares.append(view.stat("l2")[train].astype(np.float64) ** 2)
    recorded, where = np.unique(np.concatenate(steps), return_inverse=True)
    tensors = np.bincount(where, minlength=len(recorded))
    total = np.sqrt(np.bincount(where, np.concatenate(squares), minlength=len(recorded)))
    total = total[(tensors == len(views)) & np.isfinite(total)]
    if len(total) < 5:
        return None
    noted = ctx.trace.metadata.get(schema.META_GRADIENT_CLIPPING)
    if isinstance(noted, Mapping) and isinstance(noted.get("max_norm"), (int, float)):
        bound = float(noted["max_norm"])
        return bound if bound > 0 and np.mean(total >= bound) >= 0.9 else None
    norm = float(np.median(total))
    if not norm > 0 or np.mean(np.abs(total / norm - 1) < _PINNED) < 0.9:
        return None
    return norm


def clipped_text(norm: float) -> str:
    """What a finding adds when the gradients were clipped to ``norm`` at every step."""
    return (
        f"; the gradients' total norm is {norm:.3g} at every step: clipped to it (raise "
        "clip_grad_norm_'s max_norm, or the Trainer's max_grad_norm, until it cuts only spikes)"
    )


#: DBG303's bar: a training loss that has come down below this share of its start has learned
#: something; one above it has not even fallen by a fifth.
LEARNED = 0.8

#: The share of its start a loss has come down to once the model has fitted its data: a flat
#: loss there is convergence, whatever the learning rate does (DBG101's default bar).
FITTED = 0.1


def converged(
    ctx: RuleContext, steps: np.ndarray, fraction: float, *, latest: bool = True
) -> np.ndarray:
    """Per step: the training loss has come down to ``fraction`` of its start or below, so
    the model has fitted its data (False where unknown, and without a training loss). Either
    the mean of its last 10 records or, with ``latest``, the latest record itself: a gradient
    is the one of its own step's loss, which is tiny where that batch is fitted, however a
    spike a few steps before lifts the mean (a question about the run, such as what a
    schedule starved, asks the mean: one lucky batch is no fitted model). Or the latest
    evaluation's loss is at ``fraction`` of the first
    evaluation's or below (of the training loss's start where that is lower: an untrained
    model in eval mode can score far above it, its batch norms' running statistics not yet
    those of the data): the model predicts held-out data that much better, so it has fitted
    its data whatever terms the training loss adds that do not fall with the fit (an
    auxiliary load-balancing loss, a penalty, a KL term)."""
    recent = loss_fraction(ctx, steps)
    single = loss_fraction(ctx, steps, window=1) if latest else None
    held_out = _held_out_fraction(ctx, steps)
    fitted = np.zeros(len(steps), dtype=bool)
    with np.errstate(invalid="ignore"):
        if recent is not None:
            fitted |= recent <= fraction
        if single is not None:
            fitted |= single <= fraction
        if held_out is not None:
            fitted |= held_out <= fraction
    return fitted


def _held_out_fraction(ctx: RuleContext, steps: np.ndarray) -> np.ndarray | None:
    """At each of ``steps``: the loss of the latest evaluation up to that step over the first
    evaluation's, or over the training loss's start where that is lower (NaN before the
    first evaluation); None without an eval loss whose first value is positive."""
    series = ctx.loss("eval")
    if series is None:
        return None
    keep = np.isfinite(series.values)
    order = np.argsort(series.steps[keep], kind="stable")
    eval_steps = series.steps[keep][order]
    values = series.values[keep][order].astype(np.float64)
    if not len(values) or not values[0] > 0:
        return None
    start = initial_loss(ctx)
    reference = values[0] if start is None or not start.value > 0 else min(values[0], start.value)
    latest = np.searchsorted(eval_steps, steps, side="right") - 1
    fraction: np.ndarray = np.where(latest >= 0, values[np.maximum(latest, 0)] / reference, np.nan)
    return fraction


def loss_fraction(ctx: RuleContext, steps: np.ndarray, window: int = 10) -> np.ndarray | None:
    """At each of ``steps``: the mean of the last ``window`` finite training losses up to that
    step, divided by the untrained model's loss (:func:`initial_loss`; None where it is
    unknown or not positive).

    Steps before the first loss record get NaN. It says how far training has come: near 1 the
    model has learned nothing yet; near 0 it has fitted its training data.
    """
    series = ctx.loss("train")
    if series is None:
        return None
    keep = np.isfinite(series.values)
    loss_steps = series.steps[keep]
    values = series.values[keep].astype(np.float64)
    order = np.argsort(loss_steps, kind="stable")
    loss_steps, values = loss_steps[order], values[order]
    initial = initial_loss(ctx)
    if initial is None or not initial.value > 0:
        return None
    sums = np.concatenate(([0.0], np.cumsum(values)))
    ends = np.searchsorted(loss_steps, steps, side="right")
    begins = np.maximum(ends - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums[ends] - sums[begins]) / (ends - begins)
    fraction: np.ndarray = np.where(ends > 0, means / initial.value, np.nan)
    return fraction


#: Records from a bad one whose median must stay bad for a loss to have blown up: one
#: heavy-tailed batch, back at the loss's level at the next, is no blow-up.
STAYED_RECORDS = 10


def stayed_above(values: np.ndarray, bar: float) -> np.ndarray:
    """Per record of a series in step order: whether it is above ``bar`` and the series
    stayed there, non-finite records counting as above any bar: the median of it and the
    next ``STAYED_RECORDS - 1`` is above ``bar``; near the end of the series, where fewer
    follow, it and every record after it are, three at least (one or two last records are
    too few to tell a blow-up from a bad batch)."""
    high = np.where(np.isfinite(values), values, np.inf)
    above = high > bar
    stayed = np.zeros(len(high), dtype=bool)
    full = len(high) - STAYED_RECORDS + 1
    if full > 0:
        windows = np.lib.stride_tricks.sliding_window_view(high, STAYED_RECORDS)
        stayed[:full] = np.median(windows, axis=1) > bar
    to_the_end = np.logical_and.accumulate(above[::-1])[::-1]
    tail = np.arange(max(full, 0), len(high))
    stayed[tail] = to_the_end[tail] & (len(high) - tail >= 3)
    result: np.ndarray = above & stayed
    return result


#: The learning-rate findings that updates out of scale make (DBG503's keys judged by the
#: update ratios), as rules upstream of them name them: the keys that read the recorded
#: schedule itself (decayed, still rising, restarted, raised until the loss diverged) are the
#: user's schedule, which nothing in the data or the model explains.
LEARNING_RATE_BY_UPDATES = ("DBG503:too-high", "DBG503:too-low", "DBG503:clipped")

#: Values of the run metadata key ``task`` whose labels are the tokens of a text, not classes.
LANGUAGE_MODELLING = frozenset({"causal-lm", "masked-lm", "seq2seq-lm"})
#: Values of ``task`` whose labels are quantities or orders, not classes.
NOT_CLASSIFICATION = frozenset({"regression", "ranking"})


def unclassed_labels(ctx: RuleContext) -> str | None:
    """What the labels are when they are no classes: a language model's tokens or the targets
    of a regression or ranking, as the run metadata's ``task`` says (whole-number targets,
    counts or prices, would otherwise read as class ids); labels that repeat the input ids,
    or hold them one position on (a causal language model); floats that are not whole
    numbers, outside ``[0, 1]`` or of many values (a regression's targets, see
    :func:`dbgcli.rules.data.regression_targets`); or ``0 .. B-1`` once each in every batch
    (a contrastive loss's in-batch targets, see :func:`dbgcli.rules.data.batch_indices`)."""
    task = ctx.trace.metadata.get("task")
    if isinstance(task, str) and task in LANGUAGE_MODELLING:
        return f"the tokens of a language model (metadata task {task!r})"
    if isinstance(task, str) and task in NOT_CLASSIFICATION:
        return f"the targets of a {task} (metadata task {task!r})"
    if labels_are_the_inputs(ctx):
        return (
            "the tokens of a language model (the labels are the input ids, as Hugging Face's "
            "causal language models take them and shift them inside)"
        )
    if labels_are_the_next_inputs(ctx):
        return (
            "the tokens of a language model (each sequence's labels are its input ids one "
            "position on: the next token)"
        )
    # Imported here: the data rules build on this module.
    from dbgcli.rules.data import batch_indices, regression_targets

    if ctx.shared("regression-targets", lambda: regression_targets(ctx)):
        return "the targets of a regression (floats that are not whole numbers)"
    if ctx.shared("batch-indices", lambda: batch_indices(ctx)):
        return (
            "the indices of each sample's match within its batch (every batch's labels are "
            "0 .. B-1 once each: a contrastive loss's targets)"
        )
    return None


# The statistics two records of one tensor share when they hold the same values.
_IDENTITY_COLUMNS = ("count", "min", "max", "mean", "std")


def language_tokens(ctx: RuleContext) -> bool:
    """Whether the labels are a language model's tokens: the run metadata's ``task`` says so,
    or they are the input ids (see :func:`labels_are_the_inputs`) or the next ones (see
    :func:`labels_are_the_next_inputs`)."""
    task = ctx.trace.metadata.get("task")
    return (
        (isinstance(task, str) and task in LANGUAGE_MODELLING)
        or labels_are_the_inputs(ctx)
        or labels_are_the_next_inputs(ctx)
    )


def labels_are_the_inputs(ctx: RuleContext) -> bool:
    """Whether a labels tensor repeats an integer inputs tensor record for record: same
    shape and the same statistics at each of at least 3 shared steps. A causal language model
    in Hugging Face's convention takes ``labels = input_ids`` and shifts them itself; no
    classifier's labels are its inputs. Computed once per analysis: every class rule asks."""
    return ctx.shared("labels-are-the-inputs", lambda: _labels_are_the_inputs(ctx.unfocused()))


def _labels_are_the_inputs(ctx: RuleContext) -> bool:
    inputs = [
        v
        for v in ctx.tensors(collection="inputs")
        if v.info.dtype is not None and np.dtype(v.info.dtype).kind in "iu"
    ]
    for labels in ctx.tensors(collection="labels"):
        alike = [tokens for tokens in inputs if tokens.info.shape == labels.info.shape]
        if not alike:
            continue
        mine = _stat_rows(labels)
        for tokens in alike:
            theirs = _stat_rows(tokens)
            shared = mine.keys() & theirs.keys()
            if len(shared) >= 3 and all(mine[k] == theirs[k] for k in shared):
                return True
    return False


# Steps compared, at most, and the least that must agree.
_SHIFT_STEPS = 3
_SHIFT_AGREEING = 2


def labels_are_the_next_inputs(ctx: RuleContext) -> bool:
    """Whether a labels tensor of sequences ``(batch, length)`` holds the next token of an
    integer inputs tensor of the same shape: ``labels[:, :-1] == inputs[:, 1:]`` wherever the
    label is not an ignore marker (negative), at each of the first ``3`` steps (at least
    ``2``) whose full tensors both keep, with at least two distinct tokens compared. A causal
    language model trained on ``x = seq[:, :-1]``, ``y = seq[:, 1:]``; no classifier's or
    tagger's labels are its inputs one position on. Computed once per analysis."""
    return ctx.shared(
        "labels-are-next-inputs", lambda: _labels_are_the_next_inputs(ctx.unfocused())
    )


def _labels_are_the_next_inputs(ctx: RuleContext) -> bool:
    return any(
        labels.info.shape == tokens.info.shape and tokens_ahead(ctx, labels, tokens, 1)
        for labels, tokens in token_labels(ctx)
    )


def token_labels(ctx: RuleContext) -> list[tuple[TensorView, TensorView]]:
    """Pairs of a labels tensor and an integer inputs tensor of sequences ``(batch, length)``
    whose labels are ``(batch, length)`` too, or one position shorter (a language model's
    next tokens, as the Hugging Face callback records them)."""

    def length(view: TensorView) -> int | None:
        shape = view.info.shape
        return shape[1] if shape is not None and len(shape) == 2 else None

    inputs = [
        (v, width)
        for v in ctx.tensors(collection="inputs")
        if v.info.dtype is not None
        and np.dtype(v.info.dtype).kind in "iu"
        and (width := length(v)) is not None
        and width >= 2
    ]
    return [
        (labels, tokens)
        for labels in ctx.tensors(collection="labels")
        if (width := length(labels)) is not None
        for tokens, token_width in inputs
        if 0 <= token_width - width <= 1
    ]


def tokens_ahead(ctx: RuleContext, labels: TensorView, tokens: TensorView, ahead: int) -> bool:
    """Whether each sequence's labels are its tokens ``ahead`` positions on: ``labels[:, t]
    == tokens[:, t + ahead]`` wherever both exist and the label is not an ignore marker
    (negative), at each of the first ``3`` steps (at least ``2``) whose full tensors both
    keep, with at least two distinct tokens compared."""
    shared = sorted(
        (int(step), mode)
        for mode, code in schema.MODE_CODES.items()
        for step in np.intersect1d(
            kept_steps(ctx, labels.tag, code), kept_steps(ctx, tokens.tag, code)
        )
    )
    agreeing = 0
    for step, mode in shared[:_SHIFT_STEPS]:
        mine = ctx.trace.raw(labels.tag, step, mode)
        theirs = ctx.trace.raw(tokens.tag, step, mode)
        # A tag may change shape between records.
        if mine is None or theirs is None or mine.ndim != 2 or mine.shape[0] != theirs.shape[0]:
            return False
        width = min(mine.shape[1], theirs.shape[1] - ahead)
        if width < 1:
            return False
        following, given = mine[:, :width], theirs[:, ahead : ahead + width]
        marked = following >= 0
        if len(np.unique(following[marked])) < 2:
            return False
        if not np.array_equal(following[marked], given[marked]):
            return False
        agreeing += 1
    return agreeing >= _SHIFT_AGREEING


def kept_steps(ctx: RuleContext, tag: str, mode: int) -> np.ndarray:
    """Steps of ``tag``'s records of ``mode`` (a code of ``schema.MODE_CODES``) whose full
    tensor is stored."""
    steps, modes = ctx.trace.index(tag)
    kept = ctx.trace.raw_records(tag)
    chosen: np.ndarray = steps[kept][modes[kept] == mode]
    return chosen


def _stat_rows(view: TensorView) -> dict[tuple[int, int], tuple[float, ...]]:
    columns = [view.stat(name) for name in _IDENTITY_COLUMNS]
    return {
        (int(step), int(mode)): tuple(float(c[i]) for c in columns)
        for i, (step, mode) in enumerate(zip(view.steps, view.modes, strict=True))
    }


def trainer_logged_no_loss(logging: object) -> str | None:
    """Why a Hugging Face ``Trainer`` run has no training loss, from the run metadata's
    ``trainer_logging`` (the callback records it): Trainer logs the loss every
    ``logging_steps`` (500 by default), so a shorter run logs none. None when it logged one,
    or the metadata does not say."""
    if not isinstance(logging, Mapping) or logging.get("train_loss_records") != 0:
        return None
    steps = logging.get("global_step")
    if not isinstance(steps, int) or steps <= 0:
        return None
    strategy = logging.get("logging_strategy")
    if strategy == "steps":
        every = logging.get("logging_steps")
        why = f"it logs every logging_steps={every} steps and the run took {steps}"
    else:
        why = f"logging_strategy={strategy!r}"
    return (
        f"Trainer logged no training loss ({why}): set logging_steps=1 in TrainingArguments "
        "(or any value well below the number of steps) to record it"
    )


_CLASS_KEYS = ("num_classes", "num_labels", "n_classes")


def class_count(ctx: RuleContext, *, from_weights: bool = True) -> int | None:
    """The number of classes of a classifier (None when unknown or below 2, and when the run
    metadata's ``task`` says the labels are no classes: a language model, a regression): from
    the run metadata (``num_classes``, ``num_labels``, ``n_classes``, also among the
    hyperparameters), else the width of the predictions' class axis, else the largest class
    id among the labels plus one, else (``from_weights``, a guess) the output width of the
    last weight matrix recorded, read as ``(outputs, inputs)`` as PyTorch stores it."""
    if unclassed_labels(ctx) is not None:
        return None
    metadata = ctx.trace.metadata
    for source in (metadata, metadata.get("hyperparameters")):
        if isinstance(source, dict):
            for key in _CLASS_KEYS:
                value = source.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
                    return value
    for view in ctx.tensors(collection="predictions"):
        shape = view.info.shape
        if shape is not None and len(shape) == 2 and shape[-1] >= 2:
            return int(shape[-1])
    for view in ctx.tensors(collection="labels"):
        if not ctx.categorical(view):
            continue
        highest = float(np.nanmax(view.stat("max")))
        if np.isfinite(highest) and highest >= 1 and highest == round(highest):
            return int(highest) + 1
    if not from_weights:
        return None
    matrices = [
        v for v in ctx.tensors(collection="weights") if v.info.shape and len(v.info.shape) == 2
    ]
    if matrices and matrices[-1].info.shape and matrices[-1].info.shape[0] >= 2:
        return int(matrices[-1].info.shape[0])
    return None


def resumed_without_start(ctx: RuleContext, mode: Literal["train", "eval"] = "train") -> int | None:
    """The step training resumed at (run metadata ``resumed_from_step``: the PyTorch hook
    notes it when its first optimizer step is past step 1, as the Hugging Face and Lightning
    integrations set it from their trainer's global step) when the ``mode`` loss holds no
    finite record from before it: its first record is then a trained model's. None
    otherwise, also for a trace the earlier run wrote too (``resume=True``)."""
    resumed = ctx.trace.metadata.get(schema.META_RESUMED_FROM_STEP)
    if isinstance(resumed, float) and resumed.is_integer():
        resumed = int(resumed)  # as JSON written by hand may hold it
    if not isinstance(resumed, int) or isinstance(resumed, bool) or resumed <= 0:
        return None
    series = ctx.loss(mode)
    if series is not None:
        finite = series.steps[np.isfinite(series.values)]
        if len(finite) and int(finite.min()) < resumed:
            return None
    return resumed


class InitialLoss(NamedTuple):
    """The loss of the untrained model, and how the rules' messages name it (with its value)."""

    value: float
    name: str


# A first loss at or below this share of ln C is a trained classifier's: an untrained one
# sits at ln C, and halving the starting loss is what the loss rules count as having learned.
_TRAINED_LOSS = 0.5


def initial_loss(ctx: RuleContext, mode: Literal["train", "eval"] = "train") -> InitialLoss | None:
    """The loss of the untrained model, the scale the loss rules judge a run by: the first
    finite loss of ``mode`` (in step order); for an XGBoost ``binary:logistic`` run, the
    training loss of the intercept it boosts from (see :func:`_intercept_loss`).

    Unless the trace starts from a trained model: a run that resumed from a checkpoint (see
    :func:`resumed_without_start`), or a classifier whose first loss is already at most half
    of ``ln C`` while its first training predictions are right more often than chance allows
    (see :func:`dbgcli.rules.data.trained_at_start`: a fine-tune of a trained classifier, a
    hook attached after some training; a random model's predictions can beat a constant
    guess on inputs that tell the classes apart, but not with a low loss as well), and, where
    the kept tensors give it, those predictions' own cross-entropy is as low (a loss divided
    by the batch size twice is low while its untrained model's predictions are not). For a
    classifier whose number of classes ``C`` the metadata, predictions or labels give, the
    scale is then ``ln C``, the loss of predicting every class with probability ``1/C``, as
    an untrained classifier does; a resumed run needs its first loss on that scale (at most
    ``ln C / 0.9``: a trained classifier sits below chance; a summed loss or another task's
    does not), or it has no scale (None). Also None without a finite loss."""
    # A fact of the run, read once per analysis and alike from every tensor's focus.
    whole = ctx.unfocused()
    return whole.shared(("initial-loss", mode), lambda: _initial_loss(whole, mode))


def _initial_loss(ctx: RuleContext, mode: Literal["train", "eval"]) -> InitialLoss | None:
    # Imported here: the data rules build on this module.
    from dbgcli.rules.data import trained_at_start

    resumed = resumed_without_start(ctx, mode)
    first = _first_finite_loss(ctx, mode)
    if first is None:
        return None
    as_recorded = InitialLoss(first, f"the initial loss {first:.4g}")
    classes = class_count(ctx, from_weights=False)
    chance = float(np.log(classes)) if classes is not None else None
    if resumed is not None:
        # Above ln C / 0.9 the loss is no classifier's cross-entropy (a summed loss, another task).
        if chance is None or first > chance / 0.9:
            return None
        why = f"the run resumed at step {resumed}"
    else:
        # The intercept's loss is the training labels'; a held-out set's rate may differ.
        prior = _intercept_loss(ctx, first) if mode == "train" else None
        if prior is not None:
            return prior
        if chance is None or not 0 <= first <= _TRAINED_LOSS * chance:
            return as_recorded
        trained = trained_at_start(ctx)
        if trained is None or not _predicted_low(ctx, trained, chance):
            return as_recorded
        why = (
            f"the model's first predictions were {trained.right} of {trained.samples} right "
            f"at step {trained.step}, against {trained.constant:.0%} for a constant guess: "
            "it was trained before the trace began"
        )
    return InitialLoss(
        chance, f"ln {classes} = {chance:.4g}, an untrained classifier's loss ({why})"
    )


def _xgboost_part(ctx: RuleContext, part: str) -> str | None:
    """The name of one part of an XGBoost run's learner (``objective``, ``gradient_booster``)
    in the configuration its callback stores (run metadata ``xgboost_config``), or None."""
    config = ctx.trace.metadata.get("xgboost_config")
    learner = config.get("learner") if isinstance(config, Mapping) else None
    found = learner.get(part) if isinstance(learner, Mapping) else None
    name = found.get("name") if isinstance(found, Mapping) else None
    return name if isinstance(name, str) else None


def xgboost_objective(ctx: RuleContext) -> str | None:
    """The objective of an XGBoost run (``binary:logistic``...), or None."""
    return _xgboost_part(ctx, "objective")


def linear_booster(ctx: RuleContext) -> bool:
    """Whether the run boosts a linear model (XGBoost's ``gblinear``): its coordinate descent
    minimises a loss convex in the weights, so where the loss stops falling is the best
    linear model, however high (whether a linear model suits the data is DBG303's question)."""
    return _xgboost_part(ctx, "gradient_booster") == "gblinear"


def loss_metric(
    ctx: RuleContext,
    families: tuple[str, ...] = ("poisson-nloglik", "gamma-nloglik", "tweedie-nloglik"),
) -> str | None:
    """Which of XGBoost's metrics of ``families`` the training loss is (by default the
    likelihoods that keep terms of the labels alone, see
    :func:`dbgcli.rules.data.saturated_loss`: ``poisson-nloglik``, ``gamma-nloglik``,
    ``tweedie-nloglik@1.5``...), by its name or as the ``loss`` copy the XGBoost callback
    makes of it; None for any other loss."""
    tag, loss = ctx.loss_tag("train"), ctx.loss("train")
    if tag is None or loss is None:
        return None
    for family in families:
        for info in ctx.trace.tags(f"*{family}*", scalar=True):
            metric = info.tag[info.tag.index(family) :]
            if info.tag == tag:
                return metric
            series = ctx.scalar(info.tag, "train")
            if (
                series is not None
                and np.array_equal(series.steps, loss.steps)
                and np.array_equal(series.values, loss.values)
            ):
                return metric
    return None


def _intercept_loss(ctx: RuleContext, first: float) -> InitialLoss | None:
    """The training log loss of the intercept a ``binary:logistic`` booster started from, in
    a trace whose first training loss is XGBoost's ``logloss`` after round 0 (one tree in,
    as XGBoost reports a round's metrics after its tree; the callback notes the intercept,
    see :data:`dbgcli.trace.schema.META_XGBOOST_INTERCEPT`). A fitted intercept is the
    training labels' weighted mean ``p``, whose loss is their entropy ``H(p)``; one given
    as 0.5 scores ``ln 2`` whatever the labels. A linear booster or a high ``eta`` takes most
    of the way down in its first round (0.693 to 0.564 in one exploration run whose
    optimum was 0.483), so the first recorded loss is no untrained model's. None otherwise:
    other objectives, an intercept given as anything else, a booster trained on."""
    intercept = ctx.trace.metadata.get(schema.META_XGBOOST_INTERCEPT)
    if not isinstance(intercept, Mapping):
        return None
    objective = xgboost_objective(ctx)
    base = intercept.get("base_score")
    series = ctx.loss("train")
    if (
        objective != "binary:logistic"
        or not isinstance(base, list)
        or len(base) != 1
        or not isinstance(base[0], int | float)
        or not 0 < base[0] < 1
        or series is None
        or int(series.steps.min()) != 0
        or loss_metric(ctx, ("logloss",)) is None
    ):
        return None
    p = float(base[0])
    if intercept.get("fitted") is True:
        prior = float(-(p * np.log(p) + (1 - p) * np.log1p(-p)))
        why = f"the entropy of the training labels' mean {p:.3g}"
    elif p == 0.5:
        prior, why = float(np.log(2)), "ln 2, a probability of 0.5 for every sample"
    else:
        return None
    if prior <= first:
        return None
    return InitialLoss(
        prior,
        f"the loss of the intercept XGBoost boosts from, {prior:.4g} ({why}; the first "
        f"round's {first:.4g} comes after one tree)",
    )


def _predicted_low(ctx: RuleContext, trained: StartingAccuracy, chance: float) -> bool:
    """Whether the first predictions that beat chance score a low cross-entropy themselves
    (at most ``_TRAINED_LOSS`` of ``ln C``), as a trained model's do, where the kept tensors
    give it: a recorded loss that is low while its predictions' is not is a scaled one (divided
    by the batch size twice), and the model behind it untrained."""
    # Imported here: the loss rules build on this module.
    from dbgcli.rules.loss import step_cross_entropy

    read = step_cross_entropy(
        ctx, trained.labels, trained.predictions, trained.step, labels_are_the_inputs(ctx)
    )
    return read is None or read.labelled <= _TRAINED_LOSS * chance


def _first_finite_loss(ctx: RuleContext, mode: Literal["train", "eval"]) -> float | None:
    """The first finite record of the ``mode`` loss, in step order."""
    series = ctx.loss(mode)
    if series is None:
        return None
    keep = np.isfinite(series.values)
    if not keep.any():
        return None
    return float(series.values[keep][np.argmin(series.steps[keep])])


class ModeNote(NamedTuple):
    """A model that ran in the wrong mode, as the PyTorch hook notes it: trained in eval mode
    (run metadata ``trained_in_eval_mode``) or evaluated in training mode
    (``evaluated_in_train_mode``).

    Attributes:
        step: The first optimizer step it was seen at.
        modules: Type names of its modules that compute differently in eval mode (dropout,
            batch norm); None when not noted (a plain step number, or a note by hand).
    """

    step: int
    modules: tuple[str, ...] | None


def _step_note(metadata: Mapping[str, object], key: str) -> tuple[int, Mapping[str, object]] | None:
    """A note the PyTorch hook writes under ``key``: ``{"step": N, ...}``, or a plain step
    number (an earlier version's, or one written by hand). The step and the note's other
    fields, or None without such a note."""
    note = metadata.get(key)
    fields: Mapping[str, object] = note if isinstance(note, Mapping) else {}
    step = fields.get("step") if isinstance(note, Mapping) else note
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return step, fields


def mode_note(metadata: Mapping[str, object], key: str) -> ModeNote | None:
    """The run metadata's note under ``key`` that the model ran in the wrong mode, or None."""
    note = _step_note(metadata, key)
    if note is None:
        return None
    step, fields = note
    modules = fields.get("modules")
    return ModeNote(step, tuple(str(m) for m in modules) if isinstance(modules, list) else None)


def eval_mode_training(metadata: Mapping[str, object]) -> ModeNote | None:
    """The run metadata's note that the model trained in eval mode, or None."""
    return mode_note(metadata, schema.META_TRAINED_IN_EVAL_MODE)


def gradients_not_zeroed(metadata: Mapping[str, object]) -> tuple[int, str | None] | None:
    """The run metadata's note that the gradients were not zeroed between optimizer steps:
    the step whose gradient was carried into the next, and the parameter it was seen in."""
    note = _step_note(metadata, schema.META_GRADIENTS_NOT_ZEROED)
    if note is None:
        return None
    step, fields = note
    parameter = fields.get("parameter")
    return step, str(parameter) if parameter is not None else None


def optimizer_groups(metadata: Mapping[str, object]) -> list[Mapping[str, object]]:
    """The optimizer's parameter groups' settings as the PyTorch hook notes them (run metadata
    ``optimizer``: ``{"type": ..., "groups": [{"lr": ..., "eps": ...}, ...]}``); empty
    without the note."""
    note = metadata.get(schema.META_OPTIMIZER)
    groups = note.get("groups") if isinstance(note, Mapping) else None
    if not isinstance(groups, list):
        return []
    return [group for group in groups if isinstance(group, Mapping)]


def optimizer_type(metadata: Mapping[str, object]) -> str | None:
    """The optimizer's class name as the PyTorch hook notes it (several: comma-separated)."""
    note = metadata.get(schema.META_OPTIMIZER)
    kind = note.get("type") if isinstance(note, Mapping) else None
    return kind if isinstance(kind, str) and kind else None


def weight_decay(metadata: Mapping[str, object]) -> float | None:
    """The largest ``weight_decay`` among the optimizer's parameter groups, as the PyTorch hook
    notes them (run metadata ``optimizer``); None without the note."""
    decays = [
        float(decay)
        for group in optimizer_groups(metadata)
        if isinstance(decay := group.get("weight_decay"), (int, float))
    ]
    return max(decays) if decays else None
