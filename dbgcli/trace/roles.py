"""What a recorded tensor or scalar series *is*, whatever its recorder called it.

Rules ask for data by meaning: "the gradients", "the ReLU outputs", "the validation loss".
Recorders name things their own way: dbg's hooks write ``grad/fc1.weight`` in collection
``gradients``; SageMaker Debugger users write ``relu1_output_0`` in collection
``relu_output``; TensorBoard users write ``grads/fc1`` with no collection at all, and Keras
users log ``val_loss`` in the training mode. This module is the one place that maps all of
them to canonical *roles*, so that the writer (which picks the saturation band of an
activation by what it is) and the rules agree.

**Tensor roles** (:data:`ROLES`): ``weights``, ``biases``, ``gradients``, ``activations``,
``preactivations``, ``inputs``, ``labels``, ``predictions``, ``outputs``, ``trees``,
``feature_importance``. :func:`tensor_role` decides, in order:

1. the collection, through :data:`COLLECTION_ALIASES` (case, ``-`` and a trailing ``s`` do
   not matter; ``<kind>_output`` / ``<kind>_input`` are SageMaker Debugger's activation
   collections and also give the kind);
2. without a known collection, the words of the tag (split at anything that is not a letter
   or digit, digits stripped: ``gradients/fc1/kernel:0`` is ``gradients fc kernel``), see
   :data:`TAG_WORDS`, the first role in that table with a matching word wins;
3. refinements whatever the collection: a parameter named ``bias`` is a bias; an activation
   whose tag says input (``preact``, ``pre_activation``, ``_input``, ``/in``) is a
   pre-activation.

**Activation kinds** (:func:`activation_kind`): the recorded kind through
:data:`KIND_ALIASES` (``ReLU``, ``LeakyReLU``, ``logistic``...), else a kind word in the
collection or the tag (``relu1_output_0`` is a ReLU).

**Scalars** (:func:`scalar_meaning`): a series is a *loss* if its name has the word ``loss``
(``CrossEntropyLoss_output_0``, ``train/loss``, ``val_loss``, ``validation_0-logloss``), is
one of XGBoost's lower-is-better metrics (:data:`LOSS_METRICS`) or names a loss function
(``NaiveCrossEntropy_output_0``, ``nll``, ``mse``); an *accuracy* if a word is
``acc``/``accuracy``; a *learning rate* if it is ``lr``, ``learning_rate`` or starts with
``lr``. Its mode comes from its name when the name says so (``val``, ``valid``,
``validation``, ``eval``, ``test``, ``dev`` mean eval; ``train``, ``training`` mean train),
else from the mode it was recorded in. What Trainer, Lightning and dbg's callbacks log besides
is known too, and judged by no rule: *progress* (``epoch``, ``step``, ``global_step``,
``num_input_tokens_seen``), a *gradient norm* (``grad_norm``, ``grad_2.0_norm_total``), the
mixed-precision *loss scale* and *throughput* (``train_runtime``, ``samples_per_second``,
``total_flos``), and other evaluation *metrics* (XGBoost's ``auc``, ``aucpr``, ``ndcg@5``,
``map``, ``pre``, ``error`` and ``merror``; ``f1``, ``precision``, ``recall``, ``mcc``,
``bleu``, ``rouge``, ``perplexity``); a skipped rule names only the series whose meaning is
unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROLES = (
    "weights",
    "biases",
    "gradients",
    "activations",
    "preactivations",
    "inputs",
    "labels",
    "predictions",
    "outputs",
    "trees",
    "feature_importance",
)

#: Collection names (normalised: lower case, ``-`` as ``_``, no trailing ``s``) -> role.
COLLECTION_ALIASES: dict[str, str] = {
    **dict.fromkeys(("weight", "kernel", "param", "parameter", "variable"), "weights"),
    **dict.fromkeys(("bias",), "biases"),
    **dict.fromkeys(("gradient", "grad", "gradient_of_weight", "weight_gradient"), "gradients"),
    **dict.fromkeys(("activation", "act", "layer_output", "hidden", "feature_map"), "activations"),
    **dict.fromkeys(
        ("preactivation", "pre_activation", "preact", "pre_act", "layer_input"),
        "preactivations",
    ),
    **dict.fromkeys(("input", "feature", "image", "input_id", "token", "data"), "inputs"),
    **dict.fromkeys(("label", "target", "y", "y_true", "ground_truth"), "labels"),
    **dict.fromkeys(
        ("prediction", "pred", "y_pred", "y_hat", "logit", "probability", "score"),
        "predictions",
    ),
    **dict.fromkeys(("output",), "outputs"),
    **dict.fromkeys(("tree",), "trees"),
    **dict.fromkeys(
        ("feature_importance", "importance", "feature_importances"), "feature_importance"
    ),
}

#: Words of an activation kind -> the kind (case-insensitive; ``LeakyReLU`` is split first).
KIND_ALIASES: dict[str, str] = {
    "relu": "relu",
    "relu6": "relu6",
    "leaky_relu": "leaky_relu",
    "leakyrelu": "leaky_relu",
    "lrelu": "leaky_relu",
    "prelu": "leaky_relu",
    "gelu": "gelu",
    "gelu_new": "gelu",
    "quick_gelu": "gelu",
    "elu": "elu",
    "selu": "selu",
    "silu": "silu",
    "swish": "silu",
    "mish": "mish",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "logistic": "sigmoid",
    "softsign": "softsign",
}

# Tag words per role, in priority order: the first role with a matching word wins, so that
# ``grads/fc1.weight`` is a gradient (not a weight) and ``weights/fc1.bias`` a bias.
TAG_WORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("gradients", frozenset({"grad", "grads", "gradient", "gradients", "dw", "db"})),
    ("feature_importance", frozenset({"importance", "importances"})),
    ("trees", frozenset({"tree", "trees"})),
    (
        "preactivations",
        frozenset({"preact", "preacts", "preactivation", "preactivations"}),
    ),
    ("activations", frozenset({"act", "acts", "activation", "activations", "hidden"})),
    (
        "predictions",
        frozenset(
            {"prediction", "predictions", "pred", "preds", "yhat", "ypred", "logits", "probs"}
        ),
    ),
    ("labels", frozenset({"label", "labels", "target", "targets", "y", "ytrue"})),
    ("inputs", frozenset({"input", "inputs", "x", "features", "images", "ids", "tokens"})),
    ("biases", frozenset({"bias", "biases"})),
    ("weights", frozenset({"weight", "weights", "kernel", "w", "param", "params"})),
)

# Words that mark a tensor as the input of an activation function.
_INPUT_WORDS = frozenset({"input", "in", "preact", "preactivation", "pre"})
_OUTPUT_WORDS = frozenset({"output", "out"})
_EVAL_WORDS = frozenset({"val", "valid", "validation", "eval", "evaluation", "test", "dev"})
_TRAIN_WORDS = frozenset({"train", "training"})

#: XGBoost metrics (and common short names) that are losses: lower is better.
LOSS_METRICS = frozenset(
    {
        "logloss",
        "mlogloss",
        "rmse",
        "rmsle",
        "mae",
        "mape",
        "mphe",
        "mse",
        "nll",
        "nloglik",
        "cross_entropy",
        "crossentropy",
        "huber",
        "deviance",
    }
)
_LR_NAMES = frozenset({"lr", "learning_rate", "learningrate", "eta"})
# Words that name a loss function even without the word "loss" (a SageMaker Debugger user's
# custom NaiveCrossEntropy module is recorded as NaiveCrossEntropy_output_0).
_LOSS_FUNCTION_WORDS = frozenset({"crossentropy", "nll", "bce", "mse", "hinge", "huber"})

# Series the frameworks dbg integrates with (and dbg's own callbacks) log besides losses and
# metrics: known, so that a report does not ask the user to rename them, and judged by no rule.
_PROGRESS_NAMES = frozenset(
    {"epoch", "step", "globalstep", "iteration", "iter", "numinputtokensseen", "tokensseen"}
)
_GRADIENT_WORDS = frozenset({"grad", "grads", "gradient", "gradients"})
_THROUGHPUT_WORDS = frozenset({"runtime", "flos", "flops", "throughput"})
# Evaluation metrics that are neither a loss nor an accuracy: XGBoost's scores and error rates
# (whole names, with a data set's and a cut-off's marks: validation_0-error@0.7, map@10) and
# the usual names of a compute_metrics function.
_METRIC_NAMES = frozenset({"error", "merror", "pre", "map"})
_METRIC_WORDS = frozenset(
    {"auc", "aucpr", "auroc", "ndcg", "precision", "recall", "mcc", "bleu", "rouge", "perplexity"}
)

#: What rules look series up by (:meth:`RuleContext.find`).
JudgedQuantity = Literal["loss", "accuracy", "lr"]
Quantity = (
    JudgedQuantity | Literal["progress", "gradient_norm", "loss_scale", "throughput", "metric"]
)


def name_words(text: str) -> list[str]:
    """Lower-case words of a name: split at non-alphanumerics and camelCase, digits dropped.

    ``CrossEntropyLoss_output_0`` -> ``cross entropy loss output``; ``relu1_output_0`` ->
    ``relu output``; ``gradients/fc1/kernel:0`` -> ``gradients fc kernel``.
    """
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    words = []
    for part in re.split(r"[^A-Za-z0-9]+", spaced):
        word = part.lower().rstrip("0123456789")
        if word:
            words.append(word)
    return words


def _word_set(text: str) -> set[str]:
    """The words of a name and each pair of neighbours joined (``y_hat`` gives ``yhat``)."""
    words = name_words(text)
    return {*words, *(a + b for a, b in zip(words, words[1:]))}


def _normal(collection: str) -> str:
    name = collection.strip().lower().replace("-", "_").replace(" ", "_")
    return name[:-1] if name.endswith("s") and len(name) > 2 else name


def activation_kind(kind: str | None, *names: str | None) -> str | None:
    """The canonical activation kind from a recorded ``kind``, else from words of ``names``
    (a collection such as ``relu_output``, or the tag)."""
    if kind:
        key = kind.strip().lower().replace("-", "_")
        if key in KIND_ALIASES:
            return KIND_ALIASES[key]
        joined = "_".join(name_words(kind))
        if joined in KIND_ALIASES:
            return KIND_ALIASES[joined]
        return key
    for name in names:
        if not name:
            continue
        raw = name.lower()
        for word in name_words(name):
            if word in KIND_ALIASES:
                return KIND_ALIASES[word]
        # LeakyReLU written as one word, relu6 before its digit is stripped.
        for alias in ("leakyrelu", "leaky_relu", "relu6"):
            if alias in raw:
                return KIND_ALIASES[alias]
    return None


@dataclass(frozen=True)
class TensorMeaning:
    """What a tensor tag is: its role (None: unknown) and activation kind (or None)."""

    role: str | None
    kind: str | None


ACTIVATION_ROLES = frozenset({"activations", "preactivations"})


def tensor_role(tag: str, collection: str | None, kind: str | None = None) -> TensorMeaning:
    """The role and kind of a tensor tag (see the module docstring for the order of evidence)."""
    role: str | None = None
    sagemaker_kind: str | None = None
    if collection:
        normal = _normal(collection)
        role = COLLECTION_ALIASES.get(normal)
        if role is None:
            # SageMaker Debugger's activation collections: relu_output, tanh_input, ...
            head, _, tail = normal.rpartition("_")
            found = activation_kind(None, head) if head else None
            if found is not None and tail in ("output", "input"):
                role = "activations" if tail == "output" else "preactivations"
                sagemaker_kind = found
    words = _word_set(tag)
    if role is None:
        for candidate, vocabulary in TAG_WORDS:
            if words & vocabulary:
                role = candidate
                break
        if role is None and (
            activation_kind(None, tag) is not None
            or (kind and activation_kind(kind) in KIND_ALIASES.values())
        ):
            role = "activations"
    resolved_kind = activation_kind(kind, sagemaker_kind, collection, tag)
    if role in ("weights", "biases") and words & {"bias", "biases"} and "grad" not in words:
        role = "biases"
    if role == "activations" and resolved_kind is not None:
        if words & _INPUT_WORDS and not words & _OUTPUT_WORDS:
            role = "preactivations"
    if role not in ACTIVATION_ROLES:
        resolved_kind = kind.strip().lower() if kind else None
    return TensorMeaning(role, resolved_kind)


@dataclass(frozen=True)
class ScalarMeaning:
    """What a scalar series is.

    Attributes:
        quantity: ``loss``, ``accuracy`` or ``lr``, which rules judge; ``progress``,
            ``gradient_norm``, ``loss_scale``, ``throughput`` or ``metric``, which they do
            not; or None
            (unknown).
        mode: ``train`` or ``eval`` when the name says so, else None (the recorded mode
            decides).
        rank: How plainly the name says it (0: a conventional name such as ``loss`` or
            ``val_loss``; higher: a component such as ``kl_loss`` or a metric such as
            ``logloss``); the plainest candidate is chosen.
    """

    quantity: Quantity | None
    mode: Literal["train", "eval"] | None
    rank: int


def scalar_meaning(tag: str) -> ScalarMeaning:
    """Classify a scalar series by its name (see the module docstring)."""
    words = name_words(tag)
    mode: Literal["train", "eval"] | None = None
    if set(words) & _EVAL_WORDS:
        mode = "eval"
    elif set(words) & _TRAIN_WORDS:
        mode = "train"
    rest = [w for w in words if w not in _EVAL_WORDS | _TRAIN_WORDS]
    lowered = tag.strip().lower()
    if lowered in _LR_NAMES or (rest and rest[0] in ("lr", "learning")):
        return ScalarMeaning("lr", mode, 0)
    pairs = {a + b for a, b in zip(rest, rest[1:])}
    if "lossscale" in pairs or "lossscaler" in pairs:  # mixed precision's, not a loss
        return ScalarMeaning("loss_scale", mode, 0)
    if "loss" in rest:
        # Extra words (kl_loss, CrossEntropyLoss_output_0) make a name less plainly "the loss".
        return ScalarMeaning("loss", mode, len(rest) - 1)
    xgboost_metric = lowered.rpartition("-")[2] if "-" in lowered else lowered
    if xgboost_metric in LOSS_METRICS or (rest and rest[-1] in LOSS_METRICS):
        return ScalarMeaning("loss", mode, 5 + len(rest))
    joined = pairs | set(rest)
    if joined & _LOSS_FUNCTION_WORDS:
        return ScalarMeaning("loss", mode, 5 + len(rest))
    if set(rest) & {"acc", "accuracy"}:
        return ScalarMeaning("accuracy", mode, len(rest) - 1)
    if "".join(rest) in _PROGRESS_NAMES:
        return ScalarMeaning("progress", mode, 0)
    if "norm" in rest and set(rest) & _GRADIENT_WORDS:  # grad_norm, grad_2.0_norm_total
        return ScalarMeaning("gradient_norm", mode, 0)
    if set(rest) & _THROUGHPUT_WORDS or "persecond" in joined:  # samples_per_second
        return ScalarMeaning("throughput", mode, 0)
    f1 = rest == ["f"] and "f1" in lowered
    if f1 or "".join(rest) in _METRIC_NAMES or set(rest) & _METRIC_WORDS:
        return ScalarMeaning("metric", mode, 0)
    return ScalarMeaning(None, mode, 0)


_ID_WORDS = frozenset({"id", "ids", "token", "tokens", "inputids", "tokenids", "seq", "sequence"})


def says_ids(tag: str) -> bool:
    """Whether a name says its values are ids (``input_ids``, ``tokens``, ``token_ids``)."""
    return bool(_word_set(tag) & _ID_WORDS)


def xgboost_eval_set(tag: str) -> int | None:
    """The index N of XGBoost's ``validation_N-<metric>`` (or ``validation_N/<metric>``)
    names, or None."""
    match = re.match(r"^validation_(\d+)[-/]", tag.strip().lower())
    return int(match.group(1)) if match else None
