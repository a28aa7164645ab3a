"""The compiled kernel on torch's own OpenMP threads (on Linux ``make install`` builds it with
OpenMP where the compiler takes it, as gcc on CI does: its absence fails here)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from dbgcli.torch import _stats as stats_module
from dbgcli.trace import schema

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel takes OpenMP on Linux only (setup.py)"
)


def test_the_kernel_splits_a_call_among_torchs_threads_to_the_same_bits() -> None:
    """Built with OpenMP, the kernel splits a call's large tensors among torch's own threads
    (its OpenMP runtime is torch's), and every row, flag and kept copy is the same to the bit
    as when one thread reduces them all: with NaN, infinities and the second pass in either
    part of a split tensor, tails that fill no lane or chunk, and three threads as well as
    two."""
    kernel = stats_module._fused
    assert kernel is not None and kernel.OPENMP == 1, "built without OpenMP"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert stats_module.kernel_threads() == 2  # one runtime: the kernel's is torch's
    finally:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(5)
    sizes = (40_000, 3, 70_000, 1, 25_000, 512, 100_003, 65_537, 262_144)
    tensors = [torch.randn(n, generator=generator) for n in sizes]
    tensors[0][17] = math.nan  # in the first part
    tensors[2][69_000] = -math.inf  # in the second
    tensors[4] = 0.5 + tensors[4] * 1e-7  # its variance needs the second pass, unsplit
    tensors[7] = -3.0 + tensors[7] * 1e-7  # and split
    tensors[8][200_000:] = 0.0  # sign counts and extremes from one part only
    pointers = stats_module._addresses(tensors)
    counts = np.array([t.numel() for t in tensors], dtype=np.int64)
    results = []
    for sharing in (1, 2, 3):
        copies = [torch.randn(t.shape, generator=torch.Generator().manual_seed(6)) for t in tensors]
        table = np.empty((len(tensors), len(schema.STAT_COLUMNS)))
        done = np.empty(len(tensors), dtype=np.uint8)
        previous = stats_module._addresses(copies)
        unfinished, team = kernel.reduce(
            pointers, previous, counts, table, done, True, True, False, sharing
        )
        assert team == sharing  # that many threads did reduce the call
        results.append((unfinished, table, done, torch.cat(copies)))
    (one, *alone), *others = results
    assert one == 2  # the NaN and the -inf records take the exact path
    for unfinished, *shared in others:
        assert unfinished == one
        for single, parallel in zip(alone, shared):
            np.testing.assert_array_equal(np.asarray(single), np.asarray(parallel))


def test_tensors_no_larger_than_atens_grain_stay_on_the_calling_thread() -> None:
    """As ATen's element-wise operations do, a tensor of up to 32,768 values is reduced on the
    calling thread, however many there are: only a larger one is split, and only then is the
    OpenMP runtime called."""
    kernel = stats_module._fused
    assert kernel is not None
    for sizes, team in (((30_000, 30_000, 32_768), 1), ((200_000,), 2), ((10, 40_000), 2)):
        tensors = [torch.ones(n) for n in sizes]
        table = np.empty((len(tensors), len(schema.STAT_COLUMNS)))
        done = np.empty(len(tensors), dtype=np.uint8)
        counts = np.array(sizes, dtype=np.int64)
        pointers = stats_module._addresses(tensors)
        assert kernel.reduce(pointers, None, counts, table, done, False, False, False, 2) == (
            0,
            team,
        )
        assert (table[:, schema.STAT_COLUMNS.index("mean")] == 1.0).all()
