"""Exceptions raised by dbgcli.

Every exception derives from :class:`DbgError` and, where one fits, from the matching built-in
(h5py style), so callers can catch either ``DbgError`` or the built-in they already know. The
CLI turns any ``DbgError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class DbgError(Exception):
    """Base class of every error dbgcli raises on purpose."""


class TraceNotFoundError(DbgError, FileNotFoundError):
    """The trace path does not exist or is not a regular file."""


class TraceFormatError(DbgError, ValueError):
    """The file is not a readable dbg trace (not HDF5, truncated, wrong layout)."""


class TraceVersionError(TraceFormatError):
    """The trace was written with a newer major format version than this reader understands."""


class TraceWriterError(DbgError, OSError):
    """The writer could not be set up (for example the target exists and would be overwritten)."""


class OutputError(DbgError, OSError):
    """A report could not be written where it was asked to go."""


class ConfigError(DbgError, ValueError):
    """A parameter, option or configuration value is invalid."""


class RuleConfigError(ConfigError):
    """A rule selection or rule parameter is invalid (unknown rule, key or value)."""


class RuleSkipped(DbgError):
    """Raised by a rule that finds, once it has read its data, that it cannot judge the trace.

    Not a finding and not a failure: the engine reports the rule as skipped with this reason
    (for example "only 384 labels, fewer than the 500 needed").
    """


class RuleCrashed(DbgError):
    """A rule raised an exception while it ran; the run reports it and exits 2."""

    def __init__(self, rule_id: str, error: BaseException) -> None:
        super().__init__(f"rule {rule_id} crashed: {type(error).__name__}: {error}")
        self.rule_id = rule_id
        self.error = error


class MissingDataError(DbgError, KeyError):
    """A tag, statistic or record asked for is not in the trace."""

    def __str__(self) -> str:
        # KeyError would quote the message.
        return str(self.args[0]) if self.args else ""


class TrainingStopped(DbgError):
    """Raised into the training loop, when asked for (``attach(..., raise_on_stop=True)``),
    at the step boundary after the run was asked to stop by ``dbg watch --stop`` or by
    ``stop_on``. :attr:`request` says who asked, when and why."""

    def __init__(self, request: object) -> None:
        super().__init__(f"training stopped: {getattr(request, 'reason', request)}")
        self.request = request
