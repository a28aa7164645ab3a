"""DBG6xx: the data: class imbalance, inputs not normalised, token ratios, classifier confusion."""

from __future__ import annotations
