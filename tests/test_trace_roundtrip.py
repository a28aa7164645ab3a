"""Writer -> reader round trips: values, statistics, raw tensors, modes and shapes."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dbgcli import TraceWriter, open_trace
from dbgcli.trace import schema
from dbgcli.trace.stats import COL, StatsKernel

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_]


def numpy_stats(x: np.ndarray) -> dict[str, float]:
    """The documented statistics computed the plain numpy way, as the oracle."""
    values = np.asarray(x, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    n = values.size
    out = {
        "count": n,
        "nan_count": int(np.isnan(values).sum()),
        "inf_count": int(np.isinf(values).sum()),
        "zero_frac": float((values == 0).sum() / n) if n else np.nan,
        "pos_frac": float((values > 0).sum() / n) if n else np.nan,
    }
    if finite.size:
        out.update(
            min=finite.min(),
            max=finite.max(),
            mean=finite.mean(),
            std=finite.std(),
            l1=np.abs(finite).sum(),
            l2=np.sqrt((finite**2).sum()),
        )
    else:
        out.update(min=np.nan, max=np.nan, mean=np.nan, std=np.nan, l1=np.nan, l2=np.nan)
    return out


def assert_stats_match(row: np.ndarray, x: np.ndarray) -> None:
    """Documented precision: float32 accumulation for float16/float32/8- and 16-bit ints."""
    expected = numpy_stats(x)
    values = np.asarray(x, dtype=np.float64)
    scale = float(np.max(np.abs(values[np.isfinite(values)]), initial=1.0))
    eps = 1e-6 if x.dtype.itemsize <= 4 and x.dtype != np.int32 else 1e-12
    for name, value in expected.items():
        got = row[COL[name]]
        if np.isnan(value):
            assert np.isnan(got), name
        else:
            atol = eps * scale * max(1, x.size)
            np.testing.assert_allclose(got, value, rtol=10 * eps, atol=atol, err_msg=name)


@st.composite
def records(draw: st.DrawFn) -> list[tuple[int, str, np.ndarray]]:
    dtype = draw(st.sampled_from(DTYPES))
    base_shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    count = draw(st.integers(1, 12))
    dense = draw(st.booleans())
    steps = (
        list(range(count))
        if dense
        else sorted(draw(st.sets(st.integers(0, 10_000), min_size=count, max_size=count)))
    )
    out = []
    for step in steps:
        shape = base_shape
        if base_shape and draw(st.integers(0, 4)) == 0:
            shape = (max(0, base_shape[0] - 1), *base_shape[1:])  # a partial last batch
        if np.dtype(dtype).kind == "f":
            elements = st.floats(
                -1e4, 1e4, width=np.finfo(dtype).bits, allow_nan=False, allow_infinity=False
            ) | st.sampled_from([np.nan, np.inf, -np.inf, 0.0])
        else:
            elements = None
        value = draw(hnp.arrays(dtype, shape, elements=elements))
        out.append((step, draw(st.sampled_from(schema.MODES)), value))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=records(), raw_every=st.sampled_from([0, 1, 3]))
def test_round_trip_matches_numpy(
    tmp_path: Path, data: list[tuple[int, str, np.ndarray]], raw_every: int
) -> None:
    path = tmp_path / "rt.h5"
    with TraceWriter(path, raw_every=raw_every, overwrite=True) as writer:
        for step, mode, value in data:
            writer.add_tensor("t", value, step, mode=mode)
            writer.add_scalar("s", float(step) / 3, step, mode=mode)
    with open_trace(path) as trace:
        assert trace.complete
        info = trace.tag("t")
        assert info.records == len(data)
        steps, modes = trace.index("t")
        assert steps.tolist() == [step for step, _, _ in data]
        assert [schema.MODES[m] for m in modes] == [mode for _, mode, _ in data]
        table = trace.stats("t")
        for row, (_, _, value) in zip(table, data):
            assert_stats_match(row, value)
        kept = [
            i
            for i, (step, _, value) in enumerate(data)
            if raw_every and step % raw_every == 0 and value.size
        ]
        seen = []
        for chunk in trace.iter_raw("t"):
            for record, values in zip(chunk.records, chunk.values):
                seen.append(int(record))
                expected = data[record][2]
                assert values.dtype == expected.dtype
                np.testing.assert_array_equal(values, expected)
        assert sorted(seen) == kept
        scalar = trace.scalar("s")
        assert scalar.steps.tolist() == [step for step, _, _ in data]
        assert scalar.values.tolist() == [step / 3 for step, _, _ in data]


def test_raw_every_and_per_record_override(make_trace) -> None:
    values = [np.full((2, 2), float(i)) for i in range(10)]
    path = make_trace(tensors={"w": {"values": values, "collection": "weights"}}, raw_every=4)
    with open_trace(path) as trace:
        kept = [int(s) for chunk in trace.iter_raw("w") for s in chunk.steps]
        assert kept == [0, 4, 8]
        assert trace.raw("w", 4).tolist() == [[4.0, 4.0], [4.0, 4.0]]
        assert trace.raw("w", 5) is None
    path = Path(str(path).replace(".h5", "_b.h5"))
    with TraceWriter(path, raw_every=0) as writer:
        writer.add_tensor("w", np.ones(3), 0)
        writer.add_tensor("w", np.ones(3), 1, raw=True)
    with open_trace(path) as trace:
        assert [int(s) for chunk in trace.iter_raw("w") for s in chunk.steps] == [1]


def test_metadata_collection_kind_and_units(make_trace) -> None:
    rng = np.random.default_rng(0)
    acts = [np.maximum(rng.normal(size=(16, 5)), 0) for _ in range(4)]
    acts[2][:, 1] = 0.0
    pre = [rng.normal(0, 20, size=(16, 3)) for _ in range(4)]
    path = make_trace(
        tensors={
            "act/relu": {"values": acts, "collection": "activations", "kind": "ReLU"},
            "pre/tanh": {"values": pre, "collection": "preactivations", "kind": "tanh"},
        },
        metadata={"note": "x"},
        hyperparameters={"lr": 0.1},
        framework="numpy",
    )
    with open_trace(path) as trace:
        metadata = dict(trace.metadata)
        assert set(metadata.pop("writer")) == {"pid", "host"}  # for dbg watch's liveness check
        assert metadata == {"note": "x", "hyperparameters": {"lr": 0.1}, "framework": "numpy"}
        relu = trace.tag("act/relu")
        assert (relu.collection, relu.kind, relu.unit_measure, relu.unit_axis) == (
            "activations",
            "relu",
            "active_frac",
            1,
        )
        units = trace.units("act/relu")
        assert units is not None
        np.testing.assert_allclose(
            units.values, np.stack([(a > 0).mean(axis=0) for a in acts]), rtol=1e-6
        )
        assert units.values[2, 1] == 0.0
        tanh = trace.units("pre/tanh")
        assert tanh is not None
        # The band where tanh' >= 0.01 (|z| < 2.993), the textbook notion of saturation.
        edge = schema.SATURATING_BANDS["tanh"][1]
        assert edge == pytest.approx(2.9932, abs=1e-4)
        expected = np.stack([(np.abs(p) < edge).mean(axis=0) for p in pre])
        assert tanh.values.min() < tanh.values.max()
        np.testing.assert_allclose(tanh.values, expected, rtol=1e-6)
        assert trace.tags(collection="activations")[0].tag == "act/relu"
        assert [t.tag for t in trace.tags("pre/*")] == ["pre/tanh"]


def test_update_norm_tracks_weights_only(make_trace) -> None:
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(3, 4)) for _ in range(5)]
    path = make_trace(
        tensors={
            "fc.weight": {"values": weights, "collection": "weights"},
            "grad/fc.weight": {"values": weights, "collection": "gradients"},
        }
    )
    with open_trace(path) as trace:
        update = trace.stat("fc.weight", "update_l2").values
        assert np.isnan(update[0])
        expected = [np.linalg.norm(weights[i] - weights[i - 1]) for i in range(1, 5)]
        np.testing.assert_allclose(update[1:], expected, rtol=1e-12)
        assert np.isnan(trace.stat("grad/fc.weight", "update_l2").values).all()
        np.testing.assert_allclose(
            trace.stat("fc.weight", "abs_mean").values,
            [np.abs(w).mean() for w in weights],
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            trace.stat("fc.weight", "var").values, [w.var() for w in weights], rtol=1e-9
        )


def test_changing_shapes_go_to_separate_raw_segments(make_trace) -> None:
    batches = [
        np.ones((4, 3)),
        np.ones((4, 3)) * 2,
        np.ones((1, 3)) * 3,
        np.ones((4, 3)) * 4,
        np.ones((2, 3)),
    ]
    path = make_trace(tensors={"x": {"values": batches, "collection": "inputs"}})
    with open_trace(path) as trace:
        info = trace.tag("x")
        assert info.shape == (4, 3)
        assert set(info.shapes) == {(4, 3), (1, 3), (2, 3)}
        assert info.raw_records == 5
        rebuilt = {
            int(r): v.copy()
            for chunk in trace.iter_raw("x")
            for r, v in zip(chunk.records, chunk.values)
        }
        for record, batch in enumerate(batches):
            np.testing.assert_array_equal(rebuilt[record], batch)
        np.testing.assert_allclose(trace.stat("x", "mean").values, [1, 2, 3, 4, 1])
        np.testing.assert_allclose(trace.stat("x", "count").values, [12, 12, 3, 12, 6])


def test_accepts_numbers_array_likes_and_torch_tensors(tmp_path: Path) -> None:
    import torch

    class Wrapped:
        def __array__(self, dtype=None, copy=None):
            return np.arange(6.0).reshape(2, 3)

    parameter = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.bfloat16))
    path = tmp_path / "t.h5"
    with TraceWriter(path) as writer:
        writer.add_tensor("number", 3, 0)
        writer.add_tensor("wrapped", Wrapped(), 0)
        writer.add_tensor("param", parameter * 2, 0)
        writer.add_scalar("loss", torch.tensor(0.25, requires_grad=True) * 2, 0)
        writer.add_scalar("np", np.float32(1.5), 0)
    with open_trace(path) as trace:
        assert trace.raw("number", 0).tolist() == 3
        assert trace.raw("wrapped", 0).tolist() == [[0, 1, 2], [3, 4, 5]]
        assert trace.raw("param", 0).dtype == np.float32
        assert trace.raw("param", 0).tolist() == [[2.0, 2.0], [2.0, 2.0]]
        assert trace.scalar("loss").values.tolist() == [0.5]
        assert trace.scalar("np").values.tolist() == [1.5]


def test_values_are_copied_at_record_time(tmp_path: Path) -> None:
    buffer = np.zeros(4)
    with TraceWriter(tmp_path / "t.h5") as writer:
        for step in range(3):
            buffer[:] = step
            writer.add_tensor("w", buffer, step)
    with open_trace(tmp_path / "t.h5") as trace:
        assert [chunk.values[:, 0].tolist() for chunk in trace.iter_raw("w")] == [[0.0, 1.0, 2.0]]


def test_streaming_is_chunked_and_masked(make_trace) -> None:
    values = [np.full(1000, i, dtype=np.float32) for i in range(50)]
    path = make_trace(tensors={"t": {"values": values}})
    with open_trace(path) as trace:
        chunks = list(trace.iter_raw("t", max_bytes=10 * 4000))
        assert len(chunks) >= 5
        assert all(len(c.values) * 4000 <= 10 * 4000 for c in chunks)
        assert np.concatenate([c.records for c in chunks]).tolist() == list(range(50))
        mask = np.zeros(50, dtype=bool)
        mask[[3, 47]] = True
        picked = list(trace.iter_raw("t", mask=mask, max_bytes=10 * 4000))
        assert [int(r) for c in picked for r in c.records] == [3, 47]
        assert [float(v[0]) for c in picked for v in c.values] == [3.0, 47.0]


def test_reader_derives_statistics_from_raw_only_hand_written_trace(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(6, 4, 5)).astype(np.float32)
    raw[2, 0, 0] = np.nan
    path = tmp_path / "hand.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "dbg-trace"
        f.attrs["format_version"] = "1.0"
        group = f.create_group("tensors/weights.fc")
        group.create_dataset("step", data=np.arange(0, 12, 2))
        group.create_dataset("values", data=raw)
        group.attrs["collection"] = "weights"
        f.create_dataset("scalars/loss/step", data=np.arange(3))
        f.create_dataset("scalars/loss/value", data=[3.0, 2.0, 1.0])
    with open_trace(path) as trace:
        assert trace.complete
        assert trace.tag("weights.fc").shape == (4, 5)
        table = trace.stats("weights.fc")
        for row, x in zip(table, raw):
            assert_stats_match(row, x)
        update = trace.stat("weights.fc", "update_l2").values
        assert np.isnan(update[0])
        np.testing.assert_allclose(
            update[1], np.linalg.norm(raw[1].astype(np.float64) - raw[0]), rtol=1e-6
        )
        assert trace.scalar("loss").modes.tolist() == [0, 0, 0]
        assert trace.index("weights.fc")[0].tolist() == [0, 2, 4, 6, 8, 10]


def test_reader_derives_missing_units_from_raw(tmp_path: Path) -> None:
    acts = np.maximum(np.random.default_rng(2).normal(size=(3, 8, 4)), 0)
    path = tmp_path / "hand.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "dbg-trace"
        f.attrs["format_version"] = "1.0"
        group = f.create_group("tensors/act")
        group.create_dataset("step", data=np.arange(3))
        group.create_dataset("values", data=acts)
        group.attrs["kind"] = "relu"
    with open_trace(path) as trace:
        units = trace.units("act")
        assert units is not None
        np.testing.assert_allclose(units.values, (acts > 0).mean(axis=1), rtol=1e-6)


def test_gelu_band_is_stored_and_older_traces_keep_theirs(tmp_path: Path) -> None:
    """A GELU unit in its dip (below 0, above the dead tail) is active from format 1.2 on;
    a 1.1 trace's stored shares counted > 0, and its band says so."""
    dip = np.full((1, 4, 2), -0.15, dtype=np.float32)  # GELU's output near its minimum
    dip[:, :, 1] = -1e-4  # the dead tail's outputs, just below 0
    with TraceWriter(tmp_path / "t.h5") as writer:
        writer.add_tensor("act", dip[0], 0, collection="activations", kind="gelu")
    with open_trace(tmp_path / "t.h5") as trace:
        assert trace.tag("act").band == schema.inactive_band("gelu", "activations")
        units = trace.units("act")
        assert units is not None and units.values.tolist() == [[1.0, 0.0]]
    with h5py.File(tmp_path / "t.h5", "r+") as f:
        f.attrs["format_version"] = "1.1"
        del f["tensors/act"].attrs["band"]
    with open_trace(tmp_path / "t.h5") as trace:
        assert trace.tag("act").band == schema.RELU_INACTIVE_BAND


def test_tags_with_slashes_and_odd_characters(tmp_path: Path) -> None:
    tags = ["grad/fc1.weight", "a%b", ".", "..", "space name", "ü/ñ"]
    with TraceWriter(tmp_path / "t.h5") as writer:
        for tag in tags:
            writer.add_scalar(tag, 1.0, 0)
    with open_trace(tmp_path / "t.h5") as trace:
        assert sorted(t.tag for t in trace.tags()) == sorted(tags)
    with h5py.File(tmp_path / "t.h5") as f:
        assert "grad%2Ffc1.weight" in f["scalars"]


def test_resume_appends_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    with TraceWriter(path, hyperparameters={"lr": 1}) as writer:
        for step in range(3):
            writer.add_scalar("loss", float(step), step)
            writer.add_tensor("w", np.full(2, float(step)), step, collection="weights")
    with TraceWriter(path, resume=True) as writer:
        for step in range(3, 5):
            writer.add_scalar("loss", float(step), step)
            writer.add_tensor("w", np.full(2, float(step)), step, collection="weights")
    with open_trace(path) as trace:
        assert trace.scalar("loss").values.tolist() == [0, 1, 2, 3, 4]
        assert trace.index("w")[0].tolist() == [0, 1, 2, 3, 4]
        assert trace.metadata["hyperparameters"] == {"lr": 1}
        assert [float(v[0]) for c in trace.iter_raw("w") for v in c.values] == [0, 1, 2, 3, 4]
        assert trace.timeline().steps.tolist() == [0, 1, 2, 3, 4]


def test_timeline_records_each_new_step_once(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t.h5") as writer:
        for step in range(4):
            writer.add_scalar("a", 1.0, step)
            writer.add_scalar("b", 1.0, step)
        writer.add_scalar("val", 1.0, 3, mode="eval")
    with open_trace(tmp_path / "t.h5") as trace:
        timeline = trace.timeline()
        assert timeline.steps.tolist() == [0, 1, 2, 3, 3]
        assert timeline.mode_names() == ["train", "eval"]
        assert np.all(np.diff(timeline.values) >= 0)


def test_late_records_carry_the_times_their_steps_started(tmp_path: Path) -> None:
    """An integration that hands steps over in a batch gives the time each started: the
    timeline keeps those, and the hand-over's time only for a step it was not told about."""
    with TraceWriter(tmp_path / "t.h5") as writer:
        writer.add_scalar("loss", 1.0, 0)
        before = time.time()
        with writer.late_records({(1, "train"): 100.0, (2, "train"): 200.0, (2, "eval"): 250.0}):
            for step in (1, 2, 3):
                writer.add_scalar("loss", 1.0, step)
            writer.add_scalar("val", 1.0, 2, mode="eval")
        writer.add_scalar("loss", 1.0, 4)
    with open_trace(tmp_path / "t.h5") as trace:
        timeline = trace.timeline()
        assert timeline.steps.tolist() == [0, 1, 2, 3, 2, 4]
        times = timeline.values.tolist()
        assert times[1:3] == [100.0, 200.0] and times[4] == 250.0
        assert times[0] <= before <= times[3] <= times[5]


def test_commits_mid_block_keep_every_row(tmp_path: Path) -> None:
    # Commits at odd points leave partial chunks; later whole-chunk writes must realign.
    rng = np.random.default_rng(5)
    rows = [rng.standard_normal(3000).astype(np.float32) for _ in range(400)]
    path = tmp_path / "t.h5"
    with TraceWriter(path, flush_secs=3600) as writer:
        for step, row in enumerate(rows):
            writer.add_tensor("g", row, step, collection="gradients")
            if step in (6, 90, 91, 250):
                writer.flush()
    with open_trace(path) as trace:
        got = np.concatenate([chunk.values for chunk in trace.iter_raw("g")])
        np.testing.assert_array_equal(got, np.stack(rows))
        np.testing.assert_allclose(
            trace.stat("g", "l2").values, [np.linalg.norm(r) for r in rows], rtol=1e-5
        )


def kept_steps(path: Path, tag: str) -> list[int]:
    with open_trace(path) as trace:
        return [int(step) for chunk in trace.iter_raw(tag) for step in chunk.steps]


def test_raw_budget_spaces_the_full_tensors_of_a_large_step_further_apart(
    tmp_path: Path,
) -> None:
    """Two 2,000-byte tensors a step: at 100 bytes a step, the 4,000 bytes of a kept step are
    paid off 40 steps later, so one in four of the steps raw_every picks keeps its full
    tensors, and every tensor of a kept step keeps it (through both ways of recording)."""
    path = tmp_path / "budget.h5"
    shape, dtype = (250,), np.dtype(np.float64)
    with TraceWriter(path, raw_every=10, raw_budget=100) as writer:
        for step in range(130):
            writer.add_tensor("w", np.full(shape, float(step)), step)
            value = np.full(shape, -float(step))
            row = StatsKernel().compute(value[None])
            writer.add_tensor_stats_rows(
                ["g"],
                row,
                step,
                shapes=[shape],
                dtypes=[dtype],
                collections=["gradients"],
                values=[value] if writer.raw_due(step) else None,
            )
    assert kept_steps(path, "w") == kept_steps(path, "g") == [0, 40, 80, 120]
    with open_trace(path) as trace:
        assert trace.raw("w", 80).tolist() == [80.0] * 250
        assert trace.raw("g", 120).tolist() == [-120.0] * 250


def test_full_tensors_forced_with_raw_are_kept_and_count_only_at_a_kept_step(
    tmp_path: Path,
) -> None:
    path = tmp_path / "forced.h5"
    with TraceWriter(path, raw_every=10, raw_budget=100) as writer:
        for step in range(60):
            writer.add_tensor("w", np.zeros(250), step)
            writer.add_tensor("labels", np.zeros(250), step, raw=step in (0, 5))
    # 2,000 bytes of each at step 0, which the budget keeps: the next step kept is 40, not
    # 20; the 2,000 forced at step 5 would have pushed it past 59.
    assert kept_steps(path, "w") == [0, 40]
    assert kept_steps(path, "labels") == [0, 5]


def test_a_step_the_budget_kept_stays_kept_when_records_come_back_to_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "back.h5"
    with TraceWriter(path, raw_every=10, raw_budget=100) as writer:
        writer.add_tensor("w", np.zeros(250), 0)
        writer.add_tensor("a", np.zeros(250), 20)  # 2,000 bytes by step 20: kept
        writer.add_tensor("a", np.zeros(250), 30)  # 4,000 > 3,000: not kept
        writer.add_tensor("a", np.zeros(250), 40)  # 4,000 by step 40: kept
        writer.add_tensor("w", np.zeros(250), 20)  # a late record of step 20: kept with it
    assert kept_steps(path, "w") == [0, 20]
    assert kept_steps(path, "a") == [20, 40]


def test_raw_budget_zero_is_no_limit_and_a_negative_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unlimited.h5"
    with TraceWriter(path, raw_every=10) as writer:
        assert writer.raw_budget == 0
        for step in range(30):
            writer.add_tensor("w", np.zeros(100_000), step)
    assert kept_steps(path, "w") == [0, 10, 20]
    with pytest.raises(ValueError, match="raw_budget must be >= 0"):
        TraceWriter(tmp_path / "negative.h5", raw_budget=-1)
    assert not (tmp_path / "negative.h5").exists()
