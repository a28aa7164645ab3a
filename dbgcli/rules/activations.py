"""DBG2xx: activation functions that saturate or die."""

from __future__ import annotations
