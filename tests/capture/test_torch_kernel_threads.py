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


def test_the_kernel_shares_a_call_out_among_torchs_threads_to_the_same_bits() -> None:
    """Built with OpenMP, the kernel shares a call's tensors out among torch's own threads
    (its OpenMP runtime is torch's), and every row, flag and kept copy is the same to the bit
    as when one thread reduces them all."""
    kernel = stats_module._fused
    assert kernel is not None and kernel.OPENMP == 1, "built without OpenMP"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert stats_module.kernel_threads() == 2  # one runtime: the kernel's is torch's
    finally:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(5)
    tensors = [torch.randn(n, generator=generator) for n in (40_000, 3, 70_000, 1, 25_000, 512)]
    tensors[0][17] = math.nan
    tensors[2][5] = -math.inf
    tensors[4] = 0.5 + tensors[4] * 1e-7  # its variance needs the second pass
    pointers = stats_module._addresses(tensors)
    counts = np.array([t.numel() for t in tensors], dtype=np.int64)
    results = []
    for sharing in (1, 2):
        copies = [torch.randn(t.shape, generator=torch.Generator().manual_seed(6)) for t in tensors]
        table = np.empty((len(tensors), len(schema.STAT_COLUMNS)))
        done = np.empty(len(tensors), dtype=np.uint8)
        previous = stats_module._addresses(copies)
        unfinished, team = kernel.reduce(
            pointers, previous, counts, table, done, True, True, False, sharing
        )
        assert team == sharing  # two threads did reduce the call
        results.append((unfinished, table, done, torch.cat(copies)))
    (one, *alone), (two, *shared) = results
    assert one == two == 2  # the NaN and the -inf records take the exact path
    for single, parallel in zip(alone, shared):
        np.testing.assert_array_equal(np.asarray(single), np.asarray(parallel))


def test_a_small_call_stays_on_the_calling_thread() -> None:
    """Below 65,536 values in all, or with one tensor, starting threads costs more than it
    saves: the call runs on the calling thread whatever it may use."""
    kernel = stats_module._fused
    assert kernel is not None
    for sizes in ((30_000, 30_000), (200_000,)):
        tensors = [torch.ones(n) for n in sizes]
        table = np.empty((len(tensors), len(schema.STAT_COLUMNS)))
        done = np.empty(len(tensors), dtype=np.uint8)
        counts = np.array(sizes, dtype=np.int64)
        pointers = stats_module._addresses(tensors)
        assert kernel.reduce(pointers, None, counts, table, done, False, False, False, 2) == (0, 1)
        assert (table[:, schema.STAT_COLUMNS.index("mean")] == 1.0).all()
