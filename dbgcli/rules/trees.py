"""DBG7xx: decision-tree ensembles: trees too deep, feature importance concentrated on few features."""

from __future__ import annotations
