"""Statistics computed by torch on the tensors' device equal the trace format's definitions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from dbgcli.torch import _stats as stats_module
from dbgcli.torch._stats import (
    STACK_BELOW,
    Reducer,
    Transfer,
    activation_statistics,
    statistics,
)
from dbgcli.trace import schema
from dbgcli.trace.stats import COL, StatsKernel, unit_measure


@pytest.fixture(autouse=True)
def both_paths(reduction_path: str) -> None:
    """Every test here runs on the compiled kernel and on torch's operations alone."""


def reference(x: np.ndarray) -> dict[str, float]:
    values = x.astype(np.float64).ravel()
    finite = values[np.isfinite(values)]
    return {
        "count": values.size,
        "nan_count": int(np.isnan(values).sum()),
        "inf_count": int(np.isinf(values).sum()),
        "min": finite.min(),
        "max": finite.max(),
        "mean": finite.mean(),
        "std": finite.std(),
        "l1": np.abs(finite).sum(),
        "l2": np.sqrt((finite**2).sum()),
        "zero_frac": (values == 0).mean(),
        "pos_frac": (values > 0).mean(),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_statistics_match_numpy(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    tensors = [
        torch.randn(64, 33).to(dtype),
        torch.relu(torch.randn(500)).to(dtype),
        torch.full((7,), 3.0, dtype=dtype),
    ]
    for tensor, got in zip(tensors, statistics(tensors, l1=True)):
        expected = reference(tensor.float().numpy())
        for name, value in expected.items():
            if name in got:
                assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
        assert {"min", "max", "mean", "std", "l1", "l2"} <= set(got)
    constant = statistics([tensors[2]])[0]
    assert constant["std"] == 0.0 and constant["pos_frac"] == 1.0 and constant["zero_frac"] == 0.0


def test_uncomputed_columns_are_left_out() -> None:
    mixed = torch.tensor([-1.0, 0.0, 2.0])
    got = statistics([mixed, torch.zeros(4), -torch.ones(3)])
    assert "l1" not in got[0] and "zero_frac" not in got[0] and "pos_frac" not in got[0]
    assert (got[1]["zero_frac"], got[1]["pos_frac"]) == (1.0, 0.0)
    assert (got[2]["zero_frac"], got[2]["pos_frac"]) == (0.0, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "values",
    [
        [0.5, -1.5, 0.0, 2.0, 0.0, -0.25],  # mixed signs with zeros
        [0.0, 1.0, 0.0, 3.0],  # a ReLU output
        [0.0, -1.0, -2.0, 0.0],  # nothing positive, some zeros
        [-1.0, -2.0],
        [0.25, 4.0],
        [0.0, 0.0, 0.0],
    ],
)
@pytest.mark.parametrize("kind", ["relu", "gelu", "tanh"])
def test_activation_statistics_give_every_column(
    values: list[float], dtype: torch.dtype, kind: str
) -> None:
    """Whatever the signs, activations get every column, each equal to its definition."""
    x = torch.tensor(values, dtype=dtype).repeat(3, 1)
    got, _ = activation_statistics(x, kind, "activations")
    expected = reference(x.float().numpy())
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_non_finite_values_take_the_exact_path() -> None:
    x = torch.tensor([1.0, float("nan"), -2.0, float("inf"), 0.0])
    (got,) = statistics([x], l1=True)
    assert (got["nan_count"], got["inf_count"]) == (1.0, 1.0)
    assert (got["min"], got["max"], got["l1"]) == (-2.0, 1.0, 3.0)
    assert got["mean"] == pytest.approx(-1.0 / 3)
    assert got["zero_frac"] == 0.2 and got["pos_frac"] == 0.4
    activation, units = activation_statistics(x.reshape(1, 5), "relu", "activations")
    assert {k: activation[k] for k in got} == got
    assert units is not None and units.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_update_norm_against_the_previous_value() -> None:
    """update_l2 is the change since the last reduction of the same names, stacked or not."""
    small, large = torch.randn(10, 10), torch.randn(STACK_BELOW)
    reducer = Reducer(updates=True)

    def update_norms() -> list[float]:
        transfer = Transfer()
        blocks = reducer.reduce([small, large], ["small", "large"], transfer)
        transfer.start()
        norms = [math.nan, math.nan]
        for indices, pending in blocks:
            for row, index in enumerate(indices):
                norms[index] = pending.table()[row, COL["update_l2"]]
        return norms

    assert np.isnan(update_norms()).all()  # nothing to compare with yet
    small += 0.5
    large -= 0.25
    assert update_norms() == pytest.approx([5.0, 0.25 * STACK_BELOW**0.5], rel=1e-6)
    assert update_norms() == [0.0, 0.0]


def test_empty_and_precise_variance() -> None:
    got = statistics([torch.empty(0), torch.tensor([1e4 + 1e-3, 1e4 - 1e-3], dtype=torch.float64)])
    assert got[0] == {"count": 0.0, "nan_count": 0.0, "inf_count": 0.0}
    assert got[1]["std"] == pytest.approx(1e-3, rel=1e-6)  # two-pass where one-pass loses digits
    assert not math.isnan(got[1]["mean"])


@pytest.mark.parametrize("shape", [(32, 7), (4, 9, 7), (3, 7, 5, 5)])
@pytest.mark.parametrize(
    ("kind", "collection"),
    [
        ("relu", "activations"),
        ("gelu", "activations"),
        ("gelu", "preactivations"),
        ("silu", "activations"),
        ("elu", "activations"),
        ("tanh", "activations"),
        ("tanh", "preactivations"),
        ("sigmoid", "activations"),
        ("sigmoid", "preactivations"),
    ],
)
def test_unit_measure_equals_the_writers(
    reduction_path: str, shape: tuple[int, ...], kind: str, collection: str
) -> None:
    """The hook's per-unit measure is the one the writer computes from the full tensor, on
    both sides of every band: GELU's live dip and dead tail, tanh's saturation."""
    torch.manual_seed(0)
    x = torch.randn(shape) * 20  # the saturating bands are wide: |x| up to 9.5 or more
    if collection == "activations":
        x = getattr(torch.nn.functional, kind)(x)
    _, got = activation_statistics(x, kind, collection)
    assert got is not None and got.dtype == np.float32
    measure = schema.unit_measure(kind)
    axis = schema.default_unit_axis(len(shape))
    assert measure is not None and axis is not None
    band = schema.unit_band(kind, collection)
    expected = unit_measure(x.numpy()[None], measure, band, axis)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert 0 < got.mean() < 1  # the data spans both sides of the band


@pytest.mark.parametrize("kind", sorted(schema.INACTIVE_INPUT_EDGES))
def test_smooth_relu_like_kinds_go_inactive_where_their_derivative_falls_below_the_bar(
    kind: str,
) -> None:
    """The inactive edge of each smooth kind is where its derivative falls to 0.01 for good,
    the bar of the saturating kinds; GELU's dip just above the edge is live, the tail dead."""
    function = getattr(torch.nn.functional, kind)
    edge = schema.INACTIVE_INPUT_EDGES[kind]
    x = torch.tensor([edge - 1.0, edge, edge + 0.5], dtype=torch.float64, requires_grad=True)
    function(x).sum().backward()
    assert x.grad is not None
    slope = x.grad.abs()
    assert slope[0] < schema.SATURATION_DERIVATIVE < slope[2]
    assert slope[1].item() == pytest.approx(schema.SATURATION_DERIVATIVE, rel=1e-3)
    # Below the edge, inactive; above it (in GELU's dip, below 0), and above 0, active.
    inputs = torch.tensor([edge - 1.0, edge + 0.5, 1.0])
    for collection, values in (("preactivations", inputs), ("activations", function(inputs))):
        band = schema.inactive_band(kind, collection)
        records = values.numpy().reshape(1, 1, 3)
        active = unit_measure(records, schema.UNIT_MEASURE_ACTIVE, band, 0)[0, 0]
        assert active == pytest.approx(2 / 3), collection


def test_unit_measure_only_for_kinds_with_one() -> None:
    assert activation_statistics(torch.randn(4, 3), "softmax", "activations")[1] is None
    assert activation_statistics(torch.randn(5), "relu", "activations")[1] is None  # no unit axis


def mixed_tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    """Tensors of many shapes: several of one shape (stacked into one block), one large
    enough to be reduced alone, a 0-d one, an empty one, and NaN or inf in some of each."""
    generator = torch.Generator().manual_seed(3)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    nan_row, inf_row, both = normal(4, 8), normal(4, 8), normal(4, 8)
    nan_row[1, 2] = math.nan
    inf_row[0, 0] = -math.inf
    both[2, 3], both[3, 3] = math.nan, math.inf
    large, large_nan = normal(STACK_BELOW), normal(STACK_BELOW)
    large_nan[7] = math.nan
    return [
        normal(4, 8),
        nan_row,
        torch.relu(normal(4, 8)),
        inf_row,
        both,
        torch.full((4, 8), math.nan, dtype=dtype),  # nothing finite
        normal(32),  # same numel as the 4x8 tensors, other shape: its own block
        torch.zeros(32, dtype=dtype),
        torch.full((3, 7), 0.1, dtype=dtype),  # constant, but its float mean is not 0.1
        normal(3, 5, 7) + 40,  # far from zero: the variance must keep its digits
        torch.tensor(2.5, dtype=dtype),  # 0-d
        torch.empty(0, 3, dtype=dtype),
        large,
        large_nan,
        1 + normal(STACK_BELOW) / 1000,  # large and far from zero: the variance needs two passes
        -torch.ones(5, dtype=dtype),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_batched_statistics_equal_the_writers_kernel(dtype: torch.dtype) -> None:
    """Every column the batched reduction gives equals the writer's own numpy kernel on the
    same values, NaN and inf included, for any mix of shapes and sizes."""
    tensors = mixed_tensors(dtype)
    got = statistics(tensors, l1=True, signs=True)
    for index, (tensor, stats) in enumerate(zip(tensors, got)):
        values = tensor.float().numpy() if dtype == torch.bfloat16 else tensor.numpy()
        expected = StatsKernel().compute(values[None])[0]
        computed = {name for name in schema.STAT_COLUMNS if not np.isnan(expected[COL[name]])}
        assert set(stats) == computed, index  # update_l2 is left NaN by both
        if expected[COL["std"]] == 0:
            assert stats["std"] == 0.0, index  # a constant, exactly (its float mean may not be)
        for name in computed:
            assert stats[name] == pytest.approx(expected[COL[name]], rel=1e-5, abs=1e-6), (
                f"{index} {name}"
            )


@pytest.mark.parametrize("l1", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weights_and_gradients_leave_out_only_what_their_range_leaves_open(
    dtype: torch.dtype, l1: bool
) -> None:
    """Without the sign counts (as weights and gradients are reduced), every column given
    equals the writer's kernel, and those left out are only what min and max leave open."""
    tensors = mixed_tensors(dtype)
    for tensor, stats in zip(tensors, statistics(tensors, l1=l1)):
        values = tensor.float().numpy()
        expected = StatsKernel().compute(values[None])[0]
        for name, value in stats.items():
            assert value == pytest.approx(expected[COL[name]], rel=1e-5, abs=1e-6), name
        finite = tensor[torch.isfinite(tensor)].float()
        if tensor.numel() and torch.isfinite(tensor).all():
            assert ("l1" in stats) == l1
            decided = finite.min() > 0 or finite.max() < 0 or not finite.any()
            assert ("pos_frac" in stats) == bool(decided)


def test_the_compiled_kernel_reduces_float32_host_tensors_in_one_call(
    reduction_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every float32 tensor in host memory, of any shape or size, goes through one call of
    the compiled kernel; other dtypes and non-contiguous tensors take torch's path."""
    calls: list[int] = []
    if reduction_path == "compiled":
        compiled = stats_module._fused

        class Counted:
            @staticmethod
            def reduce(pointers: Any, *args: Any) -> int:
                calls.append(len(pointers))
                return compiled.reduce(pointers, *args)

        monkeypatch.setattr(stats_module, "_fused", Counted)
    tensors = [t for t in mixed_tensors(torch.float32) if t.numel()]
    tensors += [torch.randn(6, 4).t(), torch.randn(9, dtype=torch.float64)]
    got = statistics(tensors, l1=True)
    assert calls == ([len(tensors) - 2] if reduction_path == "compiled" else [])
    for tensor, stats in zip(tensors, got):
        expected = StatsKernel().compute(tensor.numpy()[None])[0]
        for name, value in stats.items():
            assert value == pytest.approx(expected[COL[name]], rel=1e-5, abs=1e-6), name


def test_a_reused_copy_is_not_read_as_an_older_records_values() -> None:
    """The exact path of a record reads the copy its update norm was computed against; once
    a later reduction has overwritten that copy, the older record must not take its values."""
    weight = torch.randn(STACK_BELOW)
    weight[3] = math.nan
    reducer = Reducer(updates=True)
    first, second = Transfer(), Transfer()
    ((_, older),) = reducer.reduce([weight], ["w"], first)
    weight[3] = 100.0
    reducer.reduce([weight], ["w"], second)
    first.start()
    stats = older.statistics()[0]
    assert stats.get("max") != 100.0 and stats.get("nan_count") != 0.0
    assert stats["count"] == STACK_BELOW


@pytest.mark.parametrize("size", [768, 4096, 1 << 16])
@pytest.mark.parametrize("centre", [0.3, 0.7, 3.0])
def test_near_constant_tensors_keep_their_spread(
    reduction_path: str, size: int, centre: float
) -> None:
    """A tensor whose spread is a few float32 steps of its mean (a LayerNorm weight barely
    trained): its std is within a thousandth of float64's on both paths, and exact on the
    compiled one (its second pass corrects the mean the first pass rounded)."""
    x = centre + 1e-6 * torch.randn(size, generator=torch.Generator().manual_seed(size))
    (got,) = statistics([x])
    exact = x.double()
    assert got["mean"] == pytest.approx(float(exact.mean()), rel=1e-7)
    tolerance = 1e-9 if reduction_path == "compiled" else 1e-2
    assert got["std"] == pytest.approx(float(exact.std(unbiased=False)), rel=tolerance)
    assert got["l2"] == pytest.approx(float(exact.norm()), rel=1e-7)
