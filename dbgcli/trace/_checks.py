"""Checks the writer runs on every record when it is added, before anything reaches the file.

A record that fails one is dropped and counted under the check's reason (``Rejected.reason``);
the reasons are the keys of the trace's ``dropped_records`` attribute. Values that are finite or
not are data, never a reason: NaN and infinities are recorded as they are.
"""

from __future__ import annotations

import json
import numbers
import operator
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dbgcli.trace import schema

# HDF5 datasets have at most 32 dimensions and a full tensor is stored with one more (records).
MAX_TENSOR_RANK = 31
MAX_STEP = 2**63 - 1  # steps are stored as int64
# Nesting of the run metadata JSON: deep enough for any configuration, shallow enough for any
# JSON parser (Python's own stops near 1,000).
MAX_METADATA_DEPTH = 64
_STORABLE_KINDS = "biuf"  # bool, signed and unsigned integers, floats


class Rejected(ValueError):
    """A record, or a metadata key, the writer will not store; ``reason`` names the check."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def tag(value: Any) -> str:
    return text(value, "tag", optional=False)  # type: ignore[return-value]


def text(value: Any, reason: str, *, optional: bool = True) -> str | None:
    """A tag, collection or kind: a non-empty string HDF5 can store (UTF-8, no NUL)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise Rejected(reason, f"{reason} must be a non-empty string, got {describe(value)}")
    if "\x00" in value:
        raise Rejected(reason, f"{reason} {describe(value)} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(reason, f"{reason} {describe(value)} is not valid Unicode text") from None
    return str(value)


def step(value: Any) -> int:
    """A step: an integer (or an integral float) in int64's range, not negative."""
    if isinstance(value, (bool, np.bool_)):
        raise Rejected("step", f"step must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        if not (isinstance(value, (float, np.floating)) and float(value).is_integer()):
            raise Rejected("step", f"step must be an integer, got {describe(value)}") from None
        number = int(value)
    if not 0 <= number <= MAX_STEP:
        raise Rejected("step", f"step must be between 0 and 2**63 - 1, got {number}")
    return number


def mode(value: Any) -> int:
    code = schema.MODE_CODES.get(value) if type(value) is str else None
    if code is None:
        raise Rejected(
            "mode", f"mode must be one of {', '.join(schema.MODES)}, got {describe(value)}"
        )
    return code


def scalar(value: Any) -> float:
    """A number: Python and numpy numbers, and one-element arrays or tensors of numbers."""
    if type(value) is float:
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, np.generic):
        try:
            return float(value)
        except (OverflowError, TypeError, ValueError) as error:
            raise Rejected(
                "value", f"{describe(value)} is not a float: {describe_error(error)}"
            ) from None
    array = to_numpy(value)
    if array.size != 1 or array.dtype.kind not in _STORABLE_KINDS:
        raise Rejected(
            "value", f"a scalar must be one real number, got {array.dtype} of shape {array.shape}"
        )
    return float(array.reshape(()))


def to_numpy(value: Any) -> np.ndarray:
    """numpy arrays, Python numbers and array-likes (torch tensors included) as numpy.

    Torch is never imported: a tensor is recognised by its ``detach``/``cpu`` methods.
    """
    if isinstance(value, np.ndarray):
        return value
    try:
        if hasattr(value, "detach") and hasattr(value, "cpu"):
            tensor = value.detach()
            if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
                tensor = tensor.float()
            return np.asarray(tensor.cpu().numpy())
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - whatever the object raises, it is not data
        raise Rejected(
            "value", f"cannot convert {describe(value)}: {describe_error(error)}"
        ) from None


def array(value: Any) -> np.ndarray:
    """A tensor of bool, integers or floats, of a rank HDF5 can store."""
    result = value if type(value) is np.ndarray else to_numpy(value)
    if result.dtype.kind not in _STORABLE_KINDS or result.dtype.itemsize > 8:
        dtype_check(result.dtype)
    if result.ndim > MAX_TENSOR_RANK:
        raise Rejected(
            "rank", f"a tensor has at most {MAX_TENSOR_RANK} dimensions, got {result.ndim}"
        )
    return result


def dtype_check(dtype: Any) -> np.dtype:
    try:
        result: np.dtype = np.dtype(dtype)
    except Exception:  # noqa: BLE001
        raise Rejected("dtype", f"not a dtype: {describe(dtype)}") from None
    if result.kind not in _STORABLE_KINDS or result.itemsize > 8:
        raise Rejected("dtype", f"unsupported dtype {result} (bool, integers and floats only)")
    return result


def shape(value: Any) -> tuple[int, ...]:
    try:
        dims = tuple(operator.index(d) for d in value)
    except TypeError:
        raise Rejected(
            "shape", f"shape must be a tuple of integers, got {describe(value)}"
        ) from None
    if len(dims) > MAX_TENSOR_RANK or any(d < 0 or d > MAX_STEP for d in dims):
        raise Rejected("shape", f"not a storable shape: {dims}")
    return dims


def unit_axis(value: Any, ndim: int) -> int | None:
    """An axis of the record (negative counts from the end), as a non-negative axis."""
    if value is None:
        return None
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        axis = operator.index(value)
    except TypeError:
        raise Rejected(
            "unit_axis", f"unit_axis must be an integer, got {describe(value)}"
        ) from None
    if not -ndim <= axis < ndim:
        raise Rejected("unit_axis", f"unit_axis {axis} is not an axis of a {ndim}-D tensor")
    return axis % ndim


def flag(value: Any, reason: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or (type(value) is int and value in (0, 1)):
        return bool(value)
    raise Rejected(reason, f"{reason} must be True, False or None, got {describe(value)}")


def statistics(values: Mapping[str, Any] | np.ndarray, columns: Mapping[str, int]) -> np.ndarray:
    """A statistics row in ``STAT_COLUMNS`` order, from a mapping of names to numbers or from
    such a row already made (the PyTorch hook's batched statistics)."""
    if isinstance(values, np.ndarray):
        if values.shape != (len(schema.STAT_COLUMNS),) or values.dtype.kind not in "iuf":
            raise Rejected(
                "stats",
                f"a statistics row must hold {len(schema.STAT_COLUMNS)} numbers, "
                f"got shape {values.shape} of {values.dtype}",
            )
        return values.astype(np.float64, copy=False)
    row = np.full(len(schema.STAT_COLUMNS), np.nan)
    try:
        items = list(values.items())
    except Exception:  # noqa: BLE001
        raise Rejected("stats", f"stats must be a mapping, got {describe(values)}") from None
    for name, number in items:
        if name not in columns:
            raise Rejected("stats", f"unknown statistic {describe(name)}")
        row[columns[name]] = scalar(number)
    return row


def metadata_json(values: Mapping[str, Any]) -> str:
    """The metadata as JSON text; raises Rejected when it cannot be stored and read back."""
    try:
        encoded = json.dumps(values, default=_json_default, allow_nan=True)
    except Exception as error:  # noqa: BLE001 - cycles (ValueError), depth (RecursionError), ...
        raise Rejected(
            "metadata", f"not JSON-serialisable: {type(error).__name__}: {describe_error(error)}"
        ) from None
    if _depth(encoded) > MAX_METADATA_DEPTH:
        raise Rejected("metadata", f"nested more than {MAX_METADATA_DEPTH} levels deep")
    return encoded


def _depth(text: str) -> int:
    structure = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    depth = deepest = 0
    for char in structure:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def describe(value: Any) -> str:
    """A short description of a value (its repr may be huge, or raise)."""
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= 60 else f"{shown[:57]}..."


def describe_error(error: BaseException) -> str:
    """An exception's message, whatever its ``__str__`` does."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001
        text = type(error).__name__
    return text if len(text) <= 300 else f"{text[:297]}..."
