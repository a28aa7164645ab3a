"""Failures while recording are logged: a framework hook must never stop training."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("dbgcli")


class FailureReporter:
    """Turns exceptions raised while recording into log messages, one per kind of failure.

    Logging, not ``warnings``: under ``python -W error`` or pytest's ``filterwarnings = error``
    a warning is raised, and it would be raised inside the user's training loop.
    """

    def __init__(self) -> None:
        self._reported: set[str] = set()

    def guard(self, what: str, action: Callable[[], object]) -> None:
        """Run ``action``; an exception becomes a WARNING on the ``dbgcli`` logger."""
        try:
            action()
        except Exception as error:  # noqa: BLE001 - recording must never stop training
            self.warn(what, error)

    def warn(self, what: str, error: BaseException) -> None:
        """Log that ``what`` failed, unless the same kind of failure was reported before."""
        key = f"{what}:{type(error).__name__}"
        if key in self._reported:
            return
        self._reported.add(key)
        log.warning(
            "dbg: %s failed (%s: %s); training continues, further failures of this kind are "
            "not reported",
            what,
            type(error).__name__,
            error,
        )
