"""Failures while recording become warnings: a framework hook must never stop training."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from dbgcli.trace.writer import DbgWarning


class FailureReporter:
    """Turns exceptions raised while recording into warnings, one per kind of failure."""

    def __init__(self) -> None:
        self._reported: set[str] = set()

    def guard(self, what: str, action: Callable[[], object]) -> None:
        """Run ``action``; an exception becomes a :class:`DbgWarning` about ``what``."""
        try:
            action()
        except Exception as error:  # noqa: BLE001 - recording must never stop training
            self.warn(what, error)

    def warn(self, what: str, error: BaseException) -> None:
        """Warn that ``what`` failed, unless the same kind of failure was reported before."""
        key = f"{what}:{type(error).__name__}"
        if key in self._reported:
            return
        self._reported.add(key)
        warnings.warn(
            f"dbg: {what} failed ({type(error).__name__}: {error}); training continues, "
            "further failures of this kind are not reported",
            DbgWarning,
            stacklevel=3,
        )
