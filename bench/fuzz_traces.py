"""Fuzz the reader and the CLI with corrupted traces: no hang, no blow-up, no traceback.

Each case takes a bundled sample trace and breaks it, either in its bytes (zeroed runs, random
runs, bit flips, truncation, a copied block) or in its schema (a dataset of the wrong type or
rank, a huge declared extent with no storage, odd attributes, links that leave the file, a
virtual dataset, deep JSON, missing parts, ...), then runs ``dbg info`` and ``dbg analyze`` on
it in this process, as a user's shell would (the CLI's own worker processes do the reading).

Every run must end within the per-trace limit plus a margin, with exit code 0, 1 or 2; an exit
2 must print exactly one line on stderr and never an ``internal error``; and no process may
grow above 1 GiB (the largest resident set of any worker, over the whole run).

    python bench/fuzz_traces.py --cases 10000 --jobs 2 # the long run (figures in docs)
    python bench/fuzz_traces.py --cases 200 --seed 7   # a quick look
    python bench/fuzz_traces.py --keep out/            # keep the files that broke a rule

The fast part of this suite runs in ``make test`` (tests/test_fuzz.py, the same mutations
drawn by hypothesis).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample_traces").glob("*.h5"))
#: Seconds each trace may take in the CLI (``--timeout``); a run may take this plus MARGIN.
LIMIT = 10.0
MARGIN = 20.0
#: What a worker may add to what it inherited (``--memory-limit``), and the bar for the
#: largest resident set of any worker.
MEMORY_MB = 768
MEMORY_BYTES = 1 << 30


# -- byte mutations ------------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random byte-level corruption of ``data``; returns the bytes and what was done."""
    buffer = bytearray(data)
    size = len(buffer)
    # Half the cases hit the first 16 KiB, where the superblock and root metadata live.
    offset = (
        int(rng.integers(0, min(size, 16384))) if rng.random() < 0.5 else int(rng.integers(0, size))
    )
    kind = rng.choice(["zero", "random", "flip", "truncate", "copy", "ones"])
    length = int(rng.choice([1, 4, 8, 16, 64, 256, 4096]))
    end = min(size, offset + length)
    if kind == "zero":
        buffer[offset:end] = bytes(end - offset)
    elif kind == "ones":
        buffer[offset:end] = b"\xff" * (end - offset)
    elif kind == "random":
        buffer[offset:end] = rng.bytes(end - offset)
    elif kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            at = int(rng.integers(0, size))
            buffer[at] ^= 1 << int(rng.integers(0, 8))
        return bytes(buffer), "flip bits"
    elif kind == "truncate":
        return bytes(buffer[:offset]), f"truncate at {offset}"
    else:
        source = int(rng.integers(0, size))
        block = buffer[source : source + length]
        buffer[offset : offset + len(block)] = block
    return bytes(buffer), f"{kind} {length} bytes at {offset}"


# -- schema mutations ----------------------------------------------------------------------------


def _datasets(handle: h5py.File) -> list[str]:
    found: list[str] = []
    handle.visititems(
        lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None
    )
    return found


def _groups(handle: h5py.File) -> list[str]:
    found = ["/"]
    handle.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Group) else None)
    return found


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(0, len(items)))]


def _replace(handle: h5py.File, name: str, **create: object) -> None:
    del handle[name]
    handle.create_dataset(name, **create)


def _wrong_dtype(handle: h5py.File, rng: np.random.Generator) -> str:
    name = _pick(rng, _datasets(handle))
    rows = handle[name].shape[0] if handle[name].shape else 1
    choices: list[tuple[str, Callable[[], object]]] = [
        ("strings", lambda: np.array([b"x"] * rows)),
        ("floats with nan", lambda: np.full(rows, np.nan)),
        ("complex", lambda: np.ones(rows, dtype=np.complex128)),
        ("bool", lambda: np.ones(rows, dtype=bool)),
        ("compound", lambda: np.zeros(rows, dtype=[("a", "i4"), ("b", "f8")])),
        ("huge ints", lambda: np.full(rows, np.iinfo(np.uint64).max, dtype=np.uint64)),
        ("negative", lambda: np.full(rows, -(2**62), dtype=np.int64)),
        ("inf", lambda: np.full(rows, np.inf)),
        ("float16", lambda: np.ones(rows, dtype=np.float16)),
    ]
    label, make = choices[int(rng.integers(0, len(choices)))]
    _replace(handle, name, data=make())
    return f"{name} as {label}"


def _wrong_rank(handle: h5py.File, rng: np.random.Generator) -> str:
    name = _pick(rng, _datasets(handle))
    shape = [(), (3, 3), (2, 2, 2), (0,), (1,), (5, 0)][int(rng.integers(0, 6))]
    _replace(handle, name, data=np.zeros(shape))
    return f"{name} with shape {shape}"


def _huge_extent(handle: h5py.File, rng: np.random.Generator) -> str:
    name = _pick(rng, _datasets(handle))
    old = handle[name]
    rows = int(2 ** int(rng.choice([20, 28, 40, 50, 60])))
    shape = (rows, *old.shape[1:]) if old.shape else (rows,)
    dtype = old.dtype if old.dtype.kind in "iuf" else np.float64
    del handle[name]
    handle.create_dataset(name, shape=shape, dtype=dtype, chunks=True, maxshape=(None, *shape[1:]))
    return f"{name} declared with {rows} rows and no storage"


def _odd_attribute(handle: h5py.File, rng: np.random.Generator) -> str:
    where = _pick(rng, _groups(handle) + _datasets(handle))
    obj = handle[where]
    names = list(obj.attrs) or ["records"]
    attr = _pick(rng, names + ["records", "closed", "metadata", "shape", "columns", "band"])
    deep = "[" * 100000 + "]" * 100000
    values: list[object] = [
        np.array([1, 2, 3]),
        np.nan,
        np.inf,
        -1,
        2**63 - 1,
        np.array([[1.5]]),
        deep,
        "{not json",
        b"\xff\xfe",
        np.zeros((1000, 10)),
        "",
        np.array([b"a", b"b"]),
    ]
    value = values[int(rng.integers(0, len(values)))]
    obj.attrs[attr] = value
    return f"attribute {where}@{attr} = {str(value)[:30]!r}"


def _remove(handle: h5py.File, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        name = _pick(rng, _datasets(handle) + _groups(handle)[1:])
        del handle[name]
        return f"removed {name}"
    where = _pick(rng, _groups(handle) + _datasets(handle))
    names = list(handle[where].attrs)
    if not names:
        return "nothing removed"
    attr = _pick(rng, names)
    del handle[where].attrs[attr]
    return f"removed attribute {where}@{attr}"


def _links(handle: h5py.File, rng: np.random.Generator) -> str:
    name = _pick(rng, _datasets(handle))
    del handle[name]
    choice = int(rng.integers(0, 4))
    if choice == 0:
        handle[name] = h5py.ExternalLink("/etc/passwd", "/x")
        return f"{name} as an external link"
    if choice == 1:
        handle[name] = h5py.SoftLink("/nowhere")
        return f"{name} as a dangling soft link"
    if choice == 2:
        layout = h5py.VirtualLayout(shape=(10,), dtype="f8")
        layout[:] = h5py.VirtualSource("/etc/hostname", "x", shape=(10,))
        handle.create_virtual_dataset(name, layout, fillvalue=0)
        return f"{name} as a virtual dataset"
    handle.create_dataset(name, shape=(10,), dtype="f8", external=[("/etc/hostname", 0, 80)])
    return f"{name} with external storage"


def _steps(handle: h5py.File, rng: np.random.Generator) -> str:
    names = [n for n in _datasets(handle) if n.endswith(("step", "record", "mode"))]
    name = _pick(rng, names)
    data = handle[name][()]
    kind = int(rng.integers(0, 5))
    if kind == 0:
        data = data[::-1].copy()
        label = "reversed"
    elif kind == 1:
        data = np.zeros_like(data)
        label = "all zero"
    elif kind == 2:
        data = np.full_like(data, np.iinfo(data.dtype).max if data.dtype.kind in "iu" else 1e300)
        label = "all max"
    elif kind == 3:
        data = data.astype(np.float64)
        data[len(data) // 2 :] = np.nan
        label = "nan"
    else:
        data = data[: len(data) // 2]
        label = "half as long"
    _replace(handle, name, data=data)
    return f"{name} {label}"


SCHEMA_MUTATIONS: dict[str, Callable[[h5py.File, np.random.Generator], str]] = {
    "dtype": _wrong_dtype,
    "rank": _wrong_rank,
    "extent": _huge_extent,
    "attribute": _odd_attribute,
    "remove": _remove,
    "links": _links,
    "steps": _steps,
}


def mutate_schema(source: Path, target: Path, rng: np.random.Generator) -> str:
    """Copy ``source`` to ``target`` and break one thing in its HDF5 structure."""
    shutil.copyfile(source, target)
    kind = _pick(rng, sorted(SCHEMA_MUTATIONS))
    with h5py.File(target, "r+") as handle:
        return f"{kind}: {SCHEMA_MUTATIONS[kind](handle, rng)}"


def make_case(seed: int, directory: Path) -> tuple[Path, str]:
    """The corrupted trace of case ``seed`` (deterministic) and what was done to it."""
    rng = np.random.default_rng(seed)
    source = SAMPLES[int(rng.integers(0, len(SAMPLES)))]
    target = directory / f"case{seed}.h5"
    if rng.random() < 0.5:
        data, what = mutate_bytes(source.read_bytes(), rng)
        target.write_bytes(data)
    else:
        try:
            what = mutate_schema(source, target, rng)
        except (OSError, ValueError, KeyError, TypeError) as error:
            # h5py refused the mutation (a name HDF5 will not take, say): corrupt bytes instead.
            data, what = mutate_bytes(source.read_bytes(), rng)
            target.write_bytes(data)
            what = f"{what} (schema mutation refused: {type(error).__name__})"
    return target, f"{source.name}: {what}"


# -- running the CLI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    command: str
    code: int
    stderr: str
    seconds: float

    def problems(self) -> list[str]:
        """What this run did wrong, by the bars in the module docstring."""
        found = []
        lines = self.stderr.splitlines()
        if self.code not in (0, 1, 2):
            found.append(f"exit {self.code}")
        if self.code == 2 and len(lines) != 1:
            found.append(f"exit 2 with {len(lines)} stderr lines")
        if "internal error" in self.stderr:
            found.append("internal error")
        if "Traceback" in self.stderr:
            found.append("traceback")
        if self.seconds > LIMIT + MARGIN:
            found.append(f"took {self.seconds:.0f} s")
        return found


def run_cli(*args: str) -> Run:
    """``dbg ARGS`` in this process, as the console script runs it."""
    from dbgcli.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 2
    return Run(" ".join(args[:1]), code, err.getvalue(), time.monotonic() - started)


def check_case(path: Path) -> list[Run]:
    """``dbg info`` and ``dbg analyze`` on one file."""
    limits = ("--timeout", str(LIMIT), "--memory-limit", str(MEMORY_MB))
    return [
        run_cli("info", str(path), *limits),
        run_cli("analyze", str(path), *limits, "-q"),
    ]


def peak_worker_bytes() -> int:
    """The largest resident set of any finished child process so far (Linux: KiB units)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


@dataclass
class Tally:
    """What a range of cases did."""

    outcomes: Counter[str]
    failures: list[str]
    limit_hits: int
    peak_bytes: int


def run_cases(first: int, count: int, keep: Path | None = None) -> Tally:
    """Cases ``first .. first + count - 1``, each corrupted, run and checked in turn."""
    tally = Tally(Counter(), [], 0, 0)
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(first, first + count):
            path, what = make_case(seed, Path(scratch))
            for run in check_case(path):
                tally.outcomes[f"{run.command} exit {run.code}"] += 1
                tally.limit_hits += "gave up after" in run.stderr
                problems = run.problems()
                if problems:
                    tally.failures.append(
                        f"case {seed} ({what}) {run.command}: {', '.join(problems)}: "
                        f"{run.stderr.strip()[:300]}"
                    )
                    if keep:
                        keep.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, keep / path.name)
            path.unlink()
    tally.peak_bytes = peak_worker_bytes()
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="first case number")
    parser.add_argument("--jobs", type=int, default=1, help="cases checked side by side")
    parser.add_argument("--keep", type=Path, help="copy files that broke a bar here")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    started = time.monotonic()
    batch = 50
    starts = list(range(args.seed, args.seed + args.cases, batch))
    counts = [min(batch, args.seed + args.cases - s) for s in starts]
    total = Tally(Counter(), [], 0, 0)
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for done, tally in enumerate(
            pool.imap(_run_batch, [(s, c, args.keep) for s, c in zip(starts, counts)]), 1
        ):
            total.outcomes.update(tally.outcomes)
            total.failures.extend(tally.failures)
            total.limit_hits += tally.limit_hits
            total.peak_bytes = max(total.peak_bytes, tally.peak_bytes)
            print(
                f"{sum(counts[:done])} cases, {len(total.failures)} failures, "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
    figures = {
        "cases": args.cases,
        "runs": sum(total.outcomes.values()),
        "failures": len(total.failures),
        "internal_errors": sum("internal error" in f for f in total.failures),
        "over_time": sum("took" in f for f in total.failures),
        "limit_reached": total.limit_hits,
        "peak_worker_mib": round(total.peak_bytes / 2**20),
        "outcomes": dict(sorted(total.outcomes.items())),
        "seconds": round(time.monotonic() - started),
    }
    for line in total.failures[:50]:
        print(line)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if total.failures or total.peak_bytes > MEMORY_BYTES else 0


def _run_batch(arguments: tuple[int, int, Path | None]) -> Tally:
    return run_cases(*arguments)


if __name__ == "__main__":
    sys.exit(main())
