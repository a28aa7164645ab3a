"""DBG3xx: the loss and accuracy curves: not decreasing, overfitting, underfitting, overtraining, oscillating, non-finite."""

from __future__ import annotations
