# The compiled kernel (_fused.c); any contiguous buffer is accepted (collections.abc.Buffer
# from Python 3.12: pointers come as a stdlib array, the rest as numpy arrays).
from typing import Any

import numpy as np

Buffer = Any

INTERFACE: int
OPENMP: int

def reduce(
    pointers: Buffer,
    previous: Buffer | None,
    lengths: np.ndarray,
    out: np.ndarray,
    done: np.ndarray,
    l1: bool,
    signs: bool,
    nonnegative: bool,
    threads: int,
    /,
) -> tuple[int, int]: ...
def openmp_address() -> int: ...
def count_units(
    pointers: Buffer,
    outer: int,
    units: int,
    inner: int,
    low: float,
    high: float,
    outside: bool,
    out: np.ndarray,
    /,
) -> None: ...
