# The compiled kernel (_fused.c); any contiguous buffer is accepted, dbgcli passes numpy arrays.
import numpy as np

def reduce(
    pointers: np.ndarray,
    previous: np.ndarray | None,
    lengths: np.ndarray,
    out: np.ndarray,
    done: np.ndarray,
    l1: bool,
    signs: bool,
    nonnegative: bool,
    /,
) -> int: ...
def count_units(
    pointers: np.ndarray,
    outer: int,
    units: int,
    inner: int,
    low: float,
    high: float,
    out: np.ndarray,
    /,
) -> None: ...
