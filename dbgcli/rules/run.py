"""DBG8xx: the run itself: stalled training."""

from __future__ import annotations
