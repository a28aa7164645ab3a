"""Shared fixtures: build real traces in tmp_path and run the real CLI entry point."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from dbgcli import TraceWriter
from dbgcli.cli import main


class CliResult(NamedTuple):
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``dbg`` in-process through its console-script entry point."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 0
        else:  # pragma: no cover - main always exits
            code = 0
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def _series_records(spec: Any) -> list[tuple[int, Any, str]]:
    """Normalise a series spec to ``(step, value, mode)`` records.

    A spec is a list of values (steps 0..n-1, train), a dict with ``values`` and optional
    ``steps`` and ``mode``/``modes``, or a list of such dicts.
    """
    if isinstance(spec, Mapping):
        values = spec["values"]
        steps = spec.get("steps", range(len(values)))
        modes = spec.get("modes", [spec.get("mode", "train")] * len(values))
        return list(zip(steps, values, modes))
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], Mapping):
        return [record for part in spec for record in _series_records(part)]
    return [(step, value, "train") for step, value in enumerate(spec)]


@pytest.fixture
def make_trace(tmp_path: Path) -> Callable[..., Path]:
    """Write a trace with the real writer from a compact description.

    ``make_trace(scalars={"loss": [1.0, 0.5]}, tensors={"grad/fc": {"values": arr,
    "collection": "gradients"}})``; tensor values are a sequence of per-step arrays (or an
    array with the step axis first). Records are written in step order across tags.
    """
    counter = iter(range(10_000))

    def build(
        name: str | None = None,
        *,
        scalars: Mapping[str, Any] | None = None,
        tensors: Mapping[str, Mapping[str, Any]] | None = None,
        raw_every: int = 1,
        **writer_options: Any,
    ) -> Path:
        path = tmp_path / (name or f"trace{next(counter)}.h5")
        records: list[tuple[int, int, Callable[[TraceWriter], None]]] = []
        for order, (tag, spec) in enumerate((scalars or {}).items()):
            for step, value, mode in _series_records(spec):
                records.append(
                    (
                        step,
                        order,
                        lambda w, t=tag, v=value, s=step, m=mode: w.add_scalar(t, v, s, mode=m),
                    )
                )
        for order, (tag, spec) in enumerate((tensors or {}).items(), start=len(scalars or {})):
            first = spec[0] if isinstance(spec, (list, tuple)) else spec
            options = {
                k: v
                for k, v in first.items()
                if k in ("collection", "kind", "unit_axis", "track_updates")
            }
            for step, value, mode in _series_records(spec):
                records.append(
                    (
                        step,
                        order,
                        lambda w, t=tag, v=value, s=step, m=mode, o=options: w.add_tensor(
                            t, np.asarray(v), s, mode=m, **o
                        ),
                    )
                )
        records.sort(key=lambda r: (r[0], r[1]))
        with TraceWriter(path, raw_every=raw_every, overwrite=True, **writer_options) as writer:
            for _, _, write in records:
                write(writer)
        return path

    return build
