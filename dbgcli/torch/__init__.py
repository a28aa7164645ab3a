"""PyTorch integration: objects that plug dbg into a torch training loop.

Importing this package does not import torch; torch is imported when one of these objects is
first used, so ``import dbgcli.torch`` stays cheap.
"""

from __future__ import annotations

from dbgcli.torch._scheduler import GreedyLR

__all__ = ["GreedyLR"]
