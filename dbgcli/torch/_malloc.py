"""glibc's malloc thresholds for a process that trains on the CPU.

glibc hands the free memory at the top of its heap back to the system once it exceeds the trim
threshold, and serves allocations above the mmap threshold with fresh mappings. Both start
small (128 KiB) and rise with the largest mapped chunk the process frees, up to 32 MiB (mmap)
and 64 MiB (trim). A training step on the CPU allocates its gradients and activations and frees
them again; if they come to lie at the top of the heap, every step returns them to the system
and faults them in again, page by page, and whether they do depends on everything else the
process allocated in between. The hook's records (numpy rows, HDF5's buffers) are such
allocations: on ``bench/bench_heap.py``'s MLP, a step then took about a thousand page faults
(4 MB of gradients) where the same loop without the hook took none, and a page fault costs
microseconds in a virtual machine.

So the hook sets both thresholds, once per process, to the ceilings glibc's own adjustment
reaches (a process that ever frees a 32 MiB array, as data loading does, runs with them
anyway): the heap then keeps up to 64 MiB of free memory for the next step instead of
returning it (each of glibc's arenas, one per thread that allocates, up to eight per core, may
keep as much). Nothing is done off Linux and glibc, for a model on a GPU (its tensors are not
in this heap), or where the user chose: ``DBG_MALLOC=system`` leaves glibc's defaults, and so
does any of glibc's own threshold settings in the environment (``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or the same in
``GLIBC_TUNABLES``).
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

# glibc's own settings of the thresholds: where any is given, the user chose.
_GLIBC_SETTINGS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
_GLIBC_TUNABLES = (
    "glibc.malloc.trim_threshold",
    "glibc.malloc.mmap_threshold",
    "glibc.malloc.top_pad",
    "glibc.malloc.mmap_max",
)

_settled = False


def user_chose_malloc() -> bool:
    """Whether the environment sets glibc's thresholds already (or asks dbg to leave them)."""
    if os.environ.get("DBG_MALLOC", "").strip().lower() == "system":
        return True
    if any(name in os.environ for name in _GLIBC_SETTINGS):
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in tunables for name in _GLIBC_TUNABLES)


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # not a GNU libc (musl has no such name)
        return False


def settle_malloc() -> None:
    """Set glibc's mmap and trim thresholds to their ceilings, once per process. Never raises:
    malloc's defaults stand instead."""
    global _settled
    if _settled or sys.platform != "linux" or not _glibc() or user_chose_malloc():
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        _settled = bool(
            mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        pass
