"""The HDF5 layout of a dbg trace, format version 1.

This is the only module that spells group, dataset and attribute names; the writer and the
reader import them from here. The layout is documented for humans in ``docs/trace-format.md``;
keep the two in step.

Layout::

    /                       attrs: format, format_version, dbgcli_version, created, closed, metadata
    /timeline/              step (N,) int64, mode (N,) uint8, time (N,) float64
    /scalars/<name>/        step (N,) int64, mode (N,) uint8, value (N,) float64
    /tensors/<name>/        step (N,) int64, mode (N,) uint8, stats (N, K) float64,
                            units (N, U) float32 (activation kinds only),
                            raw/<k>/values (M, *shape), raw/<k>/record (M,) int64

``<name>`` is the tag, percent-encoded so that a tag such as ``grad/fc1.weight`` is one HDF5
link name (``grad%2Ffc1.weight``) instead of a nest of groups.
"""

from __future__ import annotations

import math
from urllib.parse import quote, unquote

FORMAT_NAME = "dbg-trace"
FORMAT_VERSION = (1, 2)
FORMAT_VERSION_STR = f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"

# Root attributes.
ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_DBGCLI_VERSION = "dbgcli_version"
ATTR_CREATED = "created"
ATTR_CLOSED = "closed"
ATTR_METADATA = "metadata"
# JSON object: records the writer dropped, by reason (see docs/trace-format.md). Written at
# commits once a record was dropped; absent when none was.
ATTR_DROPPED = "dropped_records"

# Keys of the run metadata that integrations write and rules read (docs/trace-format.md).
# The optimizer step training resumed at from a checkpoint: records from it on start trained.
META_RESUMED_FROM_STEP = "resumed_from_step"
# How a Hugging Face Trainer logged (the callback's note; see dbgcli.hf).
META_TRAINER_LOGGING = "trainer_logging"
# The first optimizer step the PyTorch hook saw follow a forward pass under model.eval(), and
# the model's modules that compute differently in eval mode.
META_TRAINED_IN_EVAL_MODE = "trained_in_eval_mode"
# The first optimizer step at which the PyTorch hook saw a forward pass without gradients
# while the model was in training mode, and the model's modules that compute differently.
META_EVALUATED_IN_TRAIN_MODE = "evaluated_in_train_mode"
# The optimizer step whose gradient the PyTorch hook found still in the next step's.
META_GRADIENTS_NOT_ZEROED = "gradients_not_zeroed"
# The optimizer's type and the settings of each parameter group (lr, weight_decay, ...).
META_OPTIMIZER = "optimizer"
# The trainable parameters the PyTorch hook found in none of the optimizer's parameter groups.
META_NOT_IN_OPTIMIZER = "parameters_not_in_optimizer"
# The learning-rate series of each trainable parameter's group, by parameter name (the PyTorch
# hook's note, when its optimizers hold more than one group): {"fc.weight": "lr/group1"}.
META_PARAMETER_GROUPS = "parameter_groups"
# The trainable parameters whose gradients the PyTorch hook's include/exclude leaves out.
META_GRADIENTS_NOT_RECORDED = "gradients_not_recorded"
# How the run compensates a class imbalance (XGBoost's scale_pos_weight or sample weights, a
# weighted loss).
META_CLASS_WEIGHTING = "class_weighting"
# XGBoost's intercept after the first round, when it is fitted: {"base_score": [float, ...],
# "fitted": bool}, fitted when XGBoost estimated it from the training labels
# (boost_from_average), which for binary:logistic makes it the labels' weighted mean.
META_XGBOOST_INTERCEPT = "xgboost_intercept"
# The total norm the gradients are clipped to after they are recorded (Lightning's
# gradient_clip_val): {"max_norm": float}.
META_GRADIENT_CLIPPING = "gradient_clipping"

# The modules that drop values in training, by name, with their rate (the PyTorch hook's
# note at attach): {"fc.drop": 0.5}.
META_DROPOUT = "dropout"
# True when the PyTorch hook saw the model's call compiled by torch.compile: its compiled
# passes record no activations.
META_COMPILED = "compiled"
# The fewest values each batch norm in training mode normalised a channel over before the first
# update, the batch times a sequence's or an image's positions (the PyTorch hook's note):
# {"bn1": 64, "layer1.0.bn2": 12544}.
META_BATCH_NORM = "batch_norm"
# The activation tags of the model's output layer (the PyTorch hook's note at the first pass it
# records): the activation module whose output the model returns, and its input.
META_MODEL_OUTPUTS = "model_outputs"

# Groups under the root.
TIMELINE = "timeline"
SCALARS = "scalars"
TENSORS = "tensors"

# Per-series datasets and attributes.
DS_STEP = "step"
DS_MODE = "mode"
DS_VALUE = "value"
DS_TIME = "time"
DS_STATS = "stats"
DS_UNITS = "units"
DS_VALUES = "values"  # dense raw tensors directly under a tensor group (hand-written traces)
GROUP_RAW = "raw"
DS_RECORD = "record"

ATTR_TAG = "tag"
ATTR_COLLECTION = "collection"
ATTR_KIND = "kind"
ATTR_DTYPE = "dtype"
ATTR_SHAPE = "shape"
ATTR_RECORDS = "records"
ATTR_COLUMNS = "columns"
ATTR_UNIT_AXIS = "unit_axis"
ATTR_UNIT_MEASURE = "unit_measure"
ATTR_ROLE = "role"  # 1.1: the role the writer took the tensor for (dbgcli.trace.roles)
ATTR_BAND = "band"  # 1.1: the band ``unsaturated_frac`` counts values inside, as stored values

# Modes are stored as small integers; the index is part of the format.
MODES: tuple[str, ...] = ("train", "eval", "predict")
MODE_CODES: dict[str, int] = {name: code for code, name in enumerate(MODES)}

# Statistic columns of ``stats``, in storage order. Definitions live in dbgcli.trace.stats.
STAT_COLUMNS: tuple[str, ...] = (
    "count",
    "nan_count",
    "inf_count",
    "min",
    "max",
    "mean",
    "std",
    "l1",
    "l2",
    "zero_frac",
    "pos_frac",
    "update_l2",
)

# Roles (dbgcli.trace.roles) whose records are parameters of the model, so a step-to-step
# update is meaningful.
UPDATE_TRACKED_ROLES = frozenset({"weights", "biases"})

# Activation kinds for which the writer records a per-unit measure (``units``).
#
# relu-like: the share of a unit's values outside its inactive band ("active", see
# inactive_band below): > 0 for ReLU, beyond the tail where the derivative vanishes for GELU.
RELU_KINDS = frozenset({"relu", "relu6", "leaky_relu", "gelu", "elu", "selu", "silu", "mish"})
# Saturating kinds: the share of a unit's values inside the non-saturated band, where the
# derivative of the function is at least SATURATION_DERIVATIVE. 0.01 is the textbook notion of
# a saturated unit (tanh'(z) < 0.01 for |z| > 2.99, sigmoid'(z) < 0.01 for |z| > 4.58, close to
# DeepDiagnosis's |z| >= 5); the band is expressed on the input (pre-activations) and mapped
# through the function for outputs.
SATURATION_DERIVATIVE = 0.01
_TANH_EDGE = math.atanh(math.sqrt(1.0 - SATURATION_DERIVATIVE))
_SIGMOID_OUTPUT_LOW = (1.0 - math.sqrt(1.0 - 4.0 * SATURATION_DERIVATIVE)) / 2.0
_SIGMOID_EDGE = -math.log(_SIGMOID_OUTPUT_LOW / (1.0 - _SIGMOID_OUTPUT_LOW))
SATURATING_BANDS: dict[str, tuple[float, float]] = {
    "tanh": (-_TANH_EDGE, _TANH_EDGE),
    "sigmoid": (-_SIGMOID_EDGE, _SIGMOID_EDGE),
}
# Format 1.0 traces (no ``band`` attribute) used SageMaker Debugger's SaturatedActivation
# bounds, where the derivative falls below about 1e-7.
LEGACY_SATURATING_BANDS: dict[str, tuple[float, float]] = {
    "tanh": (-9.4999, 9.4999),
    "sigmoid": (-23.0, 16.99999),
}
UNIT_MEASURE_ACTIVE = "active_frac"
UNIT_MEASURE_UNSATURATED = "unsaturated_frac"

# ReLU-like kinds: a value is inactive where the function's derivative is below
# SATURATION_DERIVATIVE, the bar of the saturating kinds. ReLU and ReLU6 are flat below 0;
# LeakyReLU is linear there (a unit that never leaves it adds no non-linearity), so 0 too.
# The smooth kinds keep a curved, live response below 0, down to the input where their
# derivative falls under 0.01 for good (solved numerically; a test checks them).
INACTIVE_INPUT_EDGES: dict[str, float] = {
    "gelu": -3.0674,
    "silu": -6.2614,
    "mish": -6.2640,
    "elu": -4.6052,
    "selu": -5.1694,
}
# Kinds whose output is not monotonic: the inactive tail maps to (f(edge), 0], just below the
# dip's right-hand side, while the outputs below f(edge) come from the live dip.
_DIPPING_KINDS = frozenset({"gelu", "silu", "mish"})
# Also the band of every ReLU-like kind in format 1.1 and earlier (active meant > 0).
RELU_INACTIVE_BAND = (-math.inf, 0.0)


def _relu_like(kind: str, x: float) -> float:
    if kind == "gelu":
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if kind == "silu":
        return x / (1.0 + math.exp(-x))
    if kind == "mish":
        return x * math.tanh(math.log1p(math.exp(x)))
    if kind == "elu":
        return math.expm1(x)
    assert kind == "selu", kind
    return 1.0507009873554805 * 1.6732632423543772 * math.expm1(x)


def inactive_band(kind: str, role: str | None) -> tuple[float, float]:
    """The ``(low, high]`` band of values where a unit of a ReLU-like kind is inactive (its
    derivative is below 0.01): ``active_frac`` counts the values outside it. At most 0 for
    ReLU, ReLU6 and LeakyReLU; for the smooth kinds, at most their edge on the input (role
    ``preactivations``), mapped through the function for outputs."""
    edge = INACTIVE_INPUT_EDGES.get(kind)
    if edge is None:
        return RELU_INACTIVE_BAND
    if role == "preactivations":
        return (-math.inf, edge)
    if kind in _DIPPING_KINDS:
        return (_relu_like(kind, edge), 0.0)
    return (-math.inf, _relu_like(kind, edge))


def _through(kind: str, band: tuple[float, float]) -> tuple[float, float]:
    lo, hi = band
    if kind == "tanh":
        return math.tanh(lo), math.tanh(hi)
    return 1.0 / (1.0 + math.exp(-lo)), 1.0 / (1.0 + math.exp(-hi))


def output_band(kind: str) -> tuple[float, float]:
    """The non-saturated band of a saturating kind, mapped to the function's output."""
    return _through(kind, SATURATING_BANDS[kind])


def unsaturated_band(kind: str, role: str | None) -> tuple[float, float]:
    """The band ``unsaturated_frac`` counts values strictly inside: the kind's input band for
    pre-activations (role ``preactivations``), that band mapped through the function for its
    outputs."""
    return SATURATING_BANDS[kind] if role == "preactivations" else output_band(kind)


def legacy_band(kind: str, role: str | None) -> tuple[float, float]:
    """The band a format 1.0 writer used (see LEGACY_SATURATING_BANDS)."""
    band = LEGACY_SATURATING_BANDS[kind]
    return band if role == "preactivations" else _through(kind, band)


def unit_band(kind: str | None, role: str | None) -> tuple[float, float] | None:
    """The band a kind's unit measure is counted against: the inactive band of a ReLU-like
    kind, the non-saturated band of a saturating one, None for other kinds."""
    measure = unit_measure(kind)
    if kind is None or measure is None:
        return None
    kind = kind.lower()
    if measure == UNIT_MEASURE_ACTIVE:
        return inactive_band(kind, role)
    return unsaturated_band(kind, role)


def unit_measure(kind: str | None) -> str | None:
    """The per-unit measure recorded for an activation kind, or None if it has none."""
    if kind is None:
        return None
    kind = kind.lower()
    if kind in RELU_KINDS:
        return UNIT_MEASURE_ACTIVE
    if kind in SATURATING_BANDS:
        return UNIT_MEASURE_UNSATURATED
    return None


def default_unit_axis(ndim: int) -> int | None:
    """Axis that indexes units: features for (B, F) and (B, T, F), channels for (B, C, ...)."""
    if ndim < 2:
        return None
    return 1 if ndim >= 4 else ndim - 1


def encode_tag(tag: str) -> str:
    """Turn a tag into one HDF5 link name (``/`` and ``%`` are percent-encoded)."""
    if not tag:
        raise ValueError("a tag must be a non-empty string")
    encoded = quote(tag, safe="!$&'()*+,;=:@-._~ ")
    # "." and ".." are path components in HDF5, not names.
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def decode_tag(name: str) -> str:
    """Inverse of :func:`encode_tag`."""
    return unquote(name)


def parse_version(text: str) -> tuple[int, int]:
    """Parse ``"MAJOR.MINOR"``; raises ValueError on anything else."""
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def chunk_rows(row_bytes: int, target_bytes: int = 1 << 20, max_rows: int = 65536) -> int:
    """Rows per HDF5 chunk so that a chunk holds about ``target_bytes`` (h5py's cache size)."""
    return int(max(1, min(max_rows, target_bytes // max(1, row_bytes))))
