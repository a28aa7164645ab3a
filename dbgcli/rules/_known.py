"""Facts about common architectures that rules must know to judge real runs fairly.

Each predicate names a structure whose statistics look pathological by construction, with the
reason; the rules that use them say so in their documentation.
"""

from __future__ import annotations

import numpy as np

from dbgcli.rules._context import RuleContext
from dbgcli.trace.roles import name_words

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


def zero_gradient_by_construction(tag: str) -> bool:
    """The bias of an attention key projection: softmax ignores a shift that is the same for
    every key, so the loss does not depend on it and its gradient is zero (up to rounding).

    Matches names such as ``...attention.self.key.bias`` (BERT, ViT) and ``...k_proj.bias``.
    """
    words = name_words(tag)
    if "bias" not in words:
        return False
    attention = bool({"attention", "attn", "self"} & set(words))
    key = "key" in words or any(a == "k" and b == "proj" for a, b in zip(words, words[1:]))
    return attention and key


def attention_query_or_key(tag: str) -> bool:
    """A query or key projection of attention (``attention.self.query.weight``,
    ``q_proj.weight``): its gradient passes through the softmax's derivative, which is near
    zero while attention is still uniform, so it starts orders of magnitude below the other
    layers' (Liu et al. 2020, "Understanding the difficulty of training transformers")."""
    words = name_words(tag)
    attention = bool({"attention", "attn", "self"} & set(words))
    pairs = set(zip(words, words[1:]))
    projection = bool({"query", "key"} & set(words)) or bool({("q", "proj"), ("k", "proj")} & pairs)
    return attention and projection


def is_normalisation(tag: str) -> bool:
    """A normalisation layer's parameter (LayerNorm, BatchNorm, RMSNorm, GroupNorm)."""
    words = name_words(tag)
    return bool(set(words) & _NORM_WORDS) or any(
        a in ("layer", "batch", "group", "rms") and b == "norm" for a, b in zip(words, words[1:])
    )


def has_normalisation(ctx: RuleContext) -> bool:
    """Whether the model has normalisation layers (parameters named like them)."""
    return any(is_normalisation(v.tag) for v in ctx.tensors(collection=("weights", "biases")))


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


def lr_below(ctx: RuleContext, steps: np.ndarray, fraction: float) -> np.ndarray:
    """Per step: the recorded learning rate is below ``fraction`` of its peak, as a warmup's
    first steps or a decay's last ones are (False where unknown, and without a recorded rate)."""
    lr = lr_fraction(ctx, steps)
    if lr is None:
        return np.zeros(len(steps), dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(lr < fraction)


def converged(ctx: RuleContext, steps: np.ndarray, fraction: float) -> np.ndarray:
    """Per step: the training loss has come down to ``fraction`` of its start or below, so
    the model has fitted its data (False where unknown, and without a training loss)."""
    loss = loss_fraction(ctx, steps)
    if loss is None:
        return np.zeros(len(steps), dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(loss <= fraction)


def loss_fraction(ctx: RuleContext, steps: np.ndarray, window: int = 10) -> np.ndarray | None:
    """At each of ``steps``: the mean of the last ``window`` finite training losses up to that
    step, divided by the first finite training loss (None without a positive initial loss).

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
    if not len(values) or not values[0] > 0:
        return None
    sums = np.concatenate(([0.0], np.cumsum(values)))
    ends = np.searchsorted(loss_steps, steps, side="right")
    begins = np.maximum(ends - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums[ends] - sums[begins]) / (ends - begins)
    fraction: np.ndarray = np.where(ends > 0, means / values[0], np.nan)
    return fraction
