"""DBG5xx: weights: poor initialisation, updates too small or too large for the weights."""

from __future__ import annotations
