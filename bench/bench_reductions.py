"""The reductions of a large tensor: the compiled kernel, torch's operations, and the
alternatives tried.

One recorded step of ``bench_hook.py``'s 4x512 MLP spends much of its time in passes over
four 512x512 weights and their gradients (see docs/benchmarks.md, "PyTorch hook"). This script
times, on four 512x512 float32 tensors, each as microseconds per megabyte-tensor and as a ratio
to what it would replace, measured in the same run:

* everything a weight needs (min, max, sum, sum of squares, the update against the last
  record's copy, and the copy) and everything a gradient needs (min, max, sum, sum of squares,
  absolute sum): by the compiled kernel ``dbgcli.torch._fused`` (one pass), against the torch
  operations of ``dbgcli.torch._stats.reduce_rows``, the path without the kernel;

and, for torch's path, the operations it uses against the alternatives left out:

* min and max: ``aminmax`` (used) against ``amin`` + ``amax``;
* sum and sum of squares: ``sum`` + ``dot`` (used) against ``vector_norm``, one GEMM of the
  stacked tensors and a row of ones with themselves, ``var_mean`` and
  ``batch_norm_update_stats``;
* the update against the last record's copy: ``sub`` + ``dot`` (used) against ``dist`` and
  ``cdist``;
* all of a weight's reductions in 256 KB chunks (to stay in L2 cache) against whole tensors;
* the four weights in one call of the kernel, as the hook makes it, on one thread against two
  threads of torch's OpenMP runtime (where the kernel was built with OpenMP and shares torch's
  runtime; left out otherwise).

"cold" runs each repetition after writing 64 MB elsewhere, so the tensors come from memory as
in a training step; "hot" runs them back to back. It also prints the largest relative error,
against float64, of the sum of squares by the kernel, by ``dot`` and by ``vector_norm`` squared.

Run: ``python bench/bench_reductions.py [--repeat 100] [--quick]`` (one torch thread, except
for the kernel's two threads in the last comparison).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from dbgcli.torch import _fused, _stats
from dbgcli.trace.schema import STAT_COLUMNS

N = 512 * 512
Operation = Callable[[torch.Tensor, torch.Tensor], object]


def norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x)


def weight_pass(x: torch.Tensor, previous: torch.Tensor) -> None:
    """Everything the hook computes of a large weight (as reduce_rows and the copy after)."""
    torch.aminmax(x)
    x.sum()
    torch.dot(x, x)
    difference = torch.sub(x, previous, out=previous)
    torch.dot(difference, difference)
    previous.copy_(x)


def gradient_pass(x: torch.Tensor, scratch: torch.Tensor) -> None:
    """Everything the hook computes of a large gradient (as reduce_rows)."""
    torch.aminmax(x)
    x.sum()
    torch.dot(x, x)
    torch.abs(x, out=scratch).sum()


def kernel(x: torch.Tensor, previous: torch.Tensor | None, l1: bool) -> np.ndarray:
    """One tensor through the compiled kernel: its statistics row (schema.STAT_COLUMNS)."""
    out, done = np.empty((1, len(STAT_COLUMNS))), np.empty(1, dtype=np.uint8)
    copies = None if previous is None else np.array([previous.data_ptr()], dtype=np.uintp)
    pointers, counts = np.array([x.data_ptr()], dtype=np.uintp), np.array([x.numel()])
    _fused.reduce(pointers, copies, counts.astype(np.int64), out, done, l1, False, False, 1)
    return out[0]


def kernel_call(tensors: list[torch.Tensor], copies: list[torch.Tensor], threads: int) -> None:
    """All of ``tensors`` in one call of the compiled kernel, shared out among ``threads``."""
    out, done = np.empty((len(tensors), len(STAT_COLUMNS))), np.empty(len(tensors), np.uint8)
    pointers = np.array([x.data_ptr() for x in tensors], dtype=np.uintp)
    previous = np.array([x.data_ptr() for x in copies], dtype=np.uintp)
    counts = np.array([x.numel() for x in tensors], dtype=np.int64)
    _, team = _fused.reduce(pointers, previous, counts, out, done, False, False, False, threads)
    assert team == threads, f"the kernel ran on {team} threads, not {threads}"


def chunked_weight_pass(x: torch.Tensor, previous: torch.Tensor) -> None:
    for part, before in zip(x.chunk(4), previous.chunk(4)):
        weight_pass(part, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="2 repetitions: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 2
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(N, generator=generator) for _ in range(4)]
    copies = [torch.randn(N, generator=generator) for _ in range(4)]
    stacked = torch.ones(5, N)
    stacked[:4] = torch.stack(tensors)
    flush = torch.empty(16 << 20)
    running = torch.zeros(1), torch.ones(1)
    scratch = torch.empty(N)

    def each(operation: Operation) -> Callable[[], None]:
        def run() -> None:
            for x, previous in zip(tensors, copies):
                operation(x, previous)

        return run

    rows: list[tuple[str, str | None, Callable[[], None]]] = [
        ("a weight, torch", None, each(weight_pass)),
        ("a weight, compiled kernel", "a weight, torch", each(lambda x, p: kernel(x, p, False))),
        ("a gradient, torch", None, each(lambda x, p: gradient_pass(x, scratch))),
        (
            "a gradient, compiled kernel",
            "a gradient, torch",
            each(lambda x, p: kernel(x, None, True)),
        ),
        ("aminmax", None, each(lambda x, p: torch.aminmax(x))),
        ("amin + amax", "aminmax", each(lambda x, p: (x.amin(), x.amax()))),
        ("sum + dot", None, each(lambda x, p: (x.sum(), torch.dot(x, x)))),
        ("sum + vector_norm", "sum + dot", each(lambda x, p: (x.sum(), norm(x)))),
        ("GEMM of [x; 1] (5x5), per tensor", "sum + dot", lambda: stacked @ stacked.T),
        ("var_mean", "sum + dot", each(lambda x, p: torch.var_mean(x, correction=0))),
        (
            "batch_norm_update_stats",
            "sum + dot",
            each(lambda x, p: torch.batch_norm_update_stats(x.view(1, 1, -1), *running, 0.0)),
        ),
        ("sub + dot", None, each(lambda x, p: torch.dot(d := torch.sub(x, p, out=scratch), d))),
        ("dist", "sub + dot", each(lambda x, p: torch.dist(x, p))),
        ("cdist", "sub + dot", each(lambda x, p: torch.cdist(x[None], p[None]))),
        ("in 256 KB chunks", "a weight, torch", each(chunked_weight_pass)),
        ("four weights in one call, 1 thread", None, lambda: kernel_call(tensors, copies, 1)),
    ]
    if _stats._SHARES_TORCH_THREADS:
        rows.append(
            (
                "four weights in one call, 2 threads",
                "four weights in one call, 1 thread",
                lambda: kernel_call(tensors, copies, 2),
            )
        )
    else:
        print("the kernel does not share torch's OpenMP runtime: no two-thread comparison")
    for cold in (True, False):
        times: dict[str, float] = {}
        for name, _, run in rows:
            run()  # warm-up
            total = 0.0
            for _ in range(args.repeat):
                if cold:
                    flush.add_(1.0)
                start = time.perf_counter()
                run()
                total += time.perf_counter() - start
            times[name] = total / args.repeat / len(tensors) * 1e6
        print(f"{'cold' if cold else 'hot'} (us per 512x512 float32 tensor; ratio to the one used)")
        for name, against, _ in rows:
            ratio = f"{times[name] / times[against]:6.2f}x {against}" if against else ""
            print(f"  {name:36s} {times[name]:8.1f}   {ratio}")
    for n in (N, 1 << 20, 4 << 20):
        worst_kernel = worst_dot = worst_norm = 0.0
        for seed in range(5):
            x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.01 + 0.003
            exact = float((x.double() ** 2).sum())
            squares = kernel(x, None, False)[STAT_COLUMNS.index("l2")] ** 2
            worst_kernel = max(worst_kernel, abs(squares - exact) / exact)
            worst_dot = max(worst_dot, abs(float(torch.dot(x, x)) - exact) / exact)
            worst_norm = max(worst_norm, abs(float(norm(x).double()) ** 2 - exact) / exact)
        print(
            f"sum of squares of {n:,} float32 values, largest relative error of 5: "
            f"kernel {worst_kernel:.1e}, dot {worst_dot:.1e}, vector_norm squared {worst_norm:.1e}"
        )


if __name__ == "__main__":
    main()
