"""DBG4xx: any tensor: all zero, variance too small, values not changing, non-finite values."""

from __future__ import annotations
