"""PyTorch integration: record a training loop, and train with GreedyLR.

* :func:`attach` records a model and its optimizer into a trace (see docs/capture.md).
* :class:`GreedyLR` is the GreedyLR learning-rate scheduler, sharing its maths with
  :func:`dbgcli.schedulers.greedy`.

Importing this package does not import torch; torch is imported when one of these objects is
first used, so ``import dbgcli.torch`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbgcli.torch._scheduler import GreedyLR

if TYPE_CHECKING:
    from dbgcli.torch._hook import ACTIVATION_KINDS, TorchHook, attach

__all__ = ["ACTIVATION_KINDS", "GreedyLR", "TorchHook", "attach"]

_HOOK_NAMES = frozenset({"ACTIVATION_KINDS", "TorchHook", "attach"})


def __getattr__(name: str) -> Any:
    if name in _HOOK_NAMES:
        from dbgcli.torch import _hook

        return getattr(_hook, name)
    raise AttributeError(f"module 'dbgcli.torch' has no attribute {name!r}")
