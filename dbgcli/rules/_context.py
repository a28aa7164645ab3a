"""What a rule sees of a trace: filtered series, tensor views, and episode helpers."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dbgcli.findings import Finding
from dbgcli.trace import schema
from dbgcli.trace.derive import Derivation
from dbgcli.trace.reader import Series, TagInfo, Trace

# Names under which training and validation series are found. A series called "loss" is
# split by mode; the others are taken whole, whatever mode they were recorded under.
LOSS_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("loss", "train_loss", "training_loss", "train/loss", "loss/train"),
    "eval": (
        "loss",
        "val_loss",
        "eval_loss",
        "validation_loss",
        "valid_loss",
        "val/loss",
        "eval/loss",
        "loss/val",
        "loss/eval",
    ),
}
ACCURACY_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("accuracy", "acc", "train_accuracy", "train_acc", "train/accuracy"),
    "eval": (
        "accuracy",
        "acc",
        "val_accuracy",
        "val_acc",
        "eval_accuracy",
        "eval_acc",
        "val/accuracy",
        "eval/accuracy",
    ),
}
_GENERIC_NAMES = {"loss", "accuracy", "acc"}


class RuleContext:
    """A trace seen through the step range and mode filters of one analysis.

    Args:
        trace: The open trace.
        start: First step to consider (inclusive), or None.
        stop: Last step to consider (inclusive), or None.
        mode: Only records of this mode, or None for all.
        focus: Show this one tensor tag only to :meth:`tensors` (the engine's view for rules
            declared ``per_tensor``), or None for all of them.
    """

    def __init__(
        self,
        trace: Trace,
        *,
        start: int | None = None,
        stop: int | None = None,
        mode: str | None = None,
        focus: str | None = None,
    ) -> None:
        self.trace = trace
        self.start = start
        self.stop = stop
        self.mode = mode
        self.focus = focus
        self._views: dict[str, TensorView] = {}

    def focused(self, tag: str) -> RuleContext:
        """This context with :meth:`tensors` narrowed to ``tag``; views are shared."""
        narrowed = RuleContext(
            self.trace, start=self.start, stop=self.stop, mode=self.mode, focus=tag
        )
        narrowed._views = self._views
        return narrowed

    def keep(self, steps: np.ndarray, modes: np.ndarray) -> np.ndarray:
        """Boolean mask of the records that pass the filters."""
        mask = np.ones(len(steps), dtype=bool)
        if self.start is not None:
            mask &= steps >= self.start
        if self.stop is not None:
            mask &= steps <= self.stop
        if self.mode is not None:
            mask &= modes == schema.MODE_CODES[self.mode]
        return mask

    def has_mode(self, mode: str) -> bool:
        """Whether any record of ``mode`` passes the filters."""
        if self.mode is not None and self.mode != mode:
            return False
        timeline = self.trace.timeline()
        if len(timeline):
            return bool(
                (
                    self.keep(timeline.steps, timeline.modes)
                    & (timeline.modes == schema.MODE_CODES[mode])
                ).any()
            )
        code = schema.MODE_CODES[mode]
        for info in self.trace.tags():
            steps, modes = self.trace.index(info.tag)
            if ((modes == code) & self.keep(steps, modes)).any():
                return True
        return False

    def scalar(self, tag: str, mode: str | None = None) -> Series | None:
        """A scalar series after the filters (and of ``mode``), or None when it has no records."""
        if tag not in self.trace or not self.trace.tag(tag).scalar:
            return None
        series = self.trace.scalar(tag)
        keep = self.keep(series.steps, series.modes)
        if mode is not None:
            keep &= series.modes == schema.MODE_CODES[mode]
        if not keep.any():
            return None
        return Series(series.steps[keep], series.values[keep], series.modes[keep])

    def loss(self, mode: Literal["train", "eval"] = "train") -> Series | None:
        """The training or validation loss, found by its conventional names.

        ``loss`` records of the given mode, else the first of ``train_loss``,
        ``training_loss``... (train) or ``val_loss``, ``eval_loss``, ``validation_loss``...
        (eval).
        """
        return self._named(LOSS_NAMES[mode], mode)

    def accuracy(self, mode: Literal["train", "eval"] = "train") -> Series | None:
        """The training or validation accuracy, found by its conventional names."""
        return self._named(ACCURACY_NAMES[mode], mode)

    def loss_tag(self, mode: Literal["train", "eval"] = "train") -> str | None:
        """The name of the series :meth:`loss` returns, or None."""
        return self._named_tag(LOSS_NAMES[mode], mode)

    def accuracy_tag(self, mode: Literal["train", "eval"] = "train") -> str | None:
        """The name of the series :meth:`accuracy` returns, or None."""
        return self._named_tag(ACCURACY_NAMES[mode], mode)

    def _named(self, names: Sequence[str], mode: str) -> Series | None:
        tag = self._named_tag(names, mode)
        return None if tag is None else self.scalar(tag, mode if tag in _GENERIC_NAMES else None)

    def _named_tag(self, names: Sequence[str], mode: str) -> str | None:
        for name in names:
            if self.scalar(name, mode if name in _GENERIC_NAMES else None) is not None:
                return name
        return None

    def tensors(
        self,
        collection: str | Sequence[str] | None = None,
        kind: str | Sequence[str] | None = None,
        pattern: str | None = None,
    ) -> list[TensorView]:
        """Tensor tags with records after the filters, by collection, kind and/or glob."""
        collections = [collection] if isinstance(collection, str) else collection
        kinds = [kind] if isinstance(kind, str) else kind
        views = []
        infos = (
            self.trace.tags(scalar=False) if self.focus is None else [self.trace.tag(self.focus)]
        )
        for info in infos:
            if collections is not None and info.collection not in collections:
                continue
            if kinds is not None and info.kind not in kinds:
                continue
            if pattern is not None and not fnmatch.fnmatchcase(info.tag, pattern):
                continue
            view = self.view(info.tag)
            if len(view.records):
                views.append(view)
        return views

    def view(self, tag: str) -> TensorView:
        """The filtered view of one tensor tag."""
        view = self._views.get(tag)
        if view is None:
            view = self._views[tag] = TensorView(self, self.trace.tag(tag))
        return view


class TensorView:
    """One tensor tag after the filters. Arrays are aligned with :attr:`steps`."""

    def __init__(self, ctx: RuleContext, info: TagInfo) -> None:
        self.ctx = ctx
        self.info = info
        self.tag = info.tag
        all_steps, all_modes = ctx.trace.index(info.tag)
        mask = ctx.keep(all_steps, all_modes)
        self.records = np.flatnonzero(mask)
        # Without filters every record is kept: arrays are then used as they are, not copied.
        self._everything = len(self.records) == len(all_steps)
        self.steps = all_steps if self._everything else all_steps[mask]
        self.modes = all_modes if self._everything else all_modes[mask]
        self._mode_codes: list[int] | None = None

    @property
    def mode_codes(self) -> list[int]:
        """The mode codes present among the kept records, in format order."""
        if self._mode_codes is None:
            self._mode_codes = mode_codes(self.modes)
        return self._mode_codes

    def positions(self, code: int) -> slice | np.ndarray:
        """Where the kept records of mode ``code`` are: a whole slice when every record has
        that mode (the usual trace records one mode per tensor), so indexing copies nothing."""
        if len(self.mode_codes) == 1 and self.mode_codes[0] == code:
            return slice(None)
        return np.flatnonzero(self.modes == code)

    def stat(self, name: str) -> np.ndarray:
        """One statistic (stored or derived, see dbgcli.trace.stats) per kept record."""
        values = self.ctx.trace.stat(self.tag, name).values
        return values if self._everything else values[self.records]

    def units(self) -> np.ndarray | None:
        """Per-unit activation measures ``(records, units)``, or None for non-activations."""
        units = self.ctx.trace.units(self.tag)
        if units is None:
            return None
        return units.values if self._everything else units.values[self.records]

    def derive(self, derivation: Derivation) -> Any:
        """A quantity of the full tensors (unfiltered: index it with :attr:`records`)."""
        return self.ctx.trace.derive(self.tag, [derivation])[0]

    def mode_name(self, index: int) -> str:
        """Name of the mode of kept record ``index``."""
        return schema.MODES[int(self.modes[index])]


def mode_codes(modes: np.ndarray) -> list[int]:
    """The distinct mode codes in ``modes``, ascending (without sorting a one-mode series)."""
    if not len(modes):
        return []
    if modes.min() == modes.max():
        return [int(modes[0])]
    return [int(c) for c in np.unique(modes)]


@dataclass(frozen=True)
class Episode:
    """A run of consecutive violating records: positions ``first..last`` in the arrays."""

    first: int
    last: int
    count: int


def episodes(violating: np.ndarray, max_episodes: int = 5) -> list[Episode]:
    """Runs of consecutive True values; runs past ``max_episodes`` merge into the last one."""
    flags = np.asarray(violating, dtype=bool)
    if not flags.any():
        return []
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    runs = [Episode(int(s), int(e), int(e - s + 1)) for s, e in zip(starts, ends)]
    if len(runs) > max_episodes:
        tail = runs[max_episodes - 1 :]
        merged = Episode(tail[0].first, tail[-1].last, sum(r.count for r in tail))
        runs = [*runs[: max_episodes - 1], merged]
    return runs


def episode_findings(
    *,
    tensor: str,
    steps: np.ndarray,
    values: np.ndarray,
    violating: np.ndarray,
    threshold: float | None,
    key: str,
    message: Callable[[Episode, float], str],
    worst: Literal["max", "min"] = "max",
    modes: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[Finding]:
    """One finding per episode of ``violating`` records of one tensor or series.

    ``value`` is the worst value of the episode (largest or smallest, NaN-aware), passed to
    ``message`` to build the one-line text.
    """
    for episode in episodes(violating):
        window = values[episode.first : episode.last + 1][
            violating[episode.first : episode.last + 1]
        ]
        worst_value = _worst(window, worst)
        mode = None
        if modes is not None:
            codes = np.unique(modes[episode.first : episode.last + 1])
            mode = schema.MODES[int(codes[0])] if len(codes) == 1 else None
        yield Finding(
            message=message(episode, worst_value),
            tensor=tensor,
            first_step=int(steps[episode.first]),
            last_step=int(steps[episode.last]),
            steps=episode.count,
            value=worst_value,
            threshold=threshold,
            mode=mode,
            key=key,
            extra=dict(extra or {}),
        )


def _worst(values: np.ndarray, worst: str) -> float:
    if values.size == 0:
        return float("nan")
    if np.isnan(values).all():
        return float("nan")
    return float(np.nanmax(values) if worst == "max" else np.nanmin(values))


def sustained(flags: np.ndarray, min_steps: int) -> np.ndarray:
    """Keep only runs of at least ``min_steps`` consecutive True values."""
    flags = np.asarray(flags, dtype=bool)
    if min_steps <= 1 or not flags.any():
        return flags
    out = np.zeros_like(flags)
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    for begin, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if end - begin >= min_steps:
            out[begin:end] = True
    return out


def trailing_median(values: np.ndarray, window: int, *, at: np.ndarray | None = None) -> np.ndarray:
    """Median of the previous ``window`` values, ignoring NaN (NaN until ``window`` exist).

    ``at``: positions to compute it at (others stay NaN); default everywhere.
    """
    out = np.full(len(values), np.nan)
    if window < 1 or len(values) <= window:
        return out
    data = np.asarray(values, dtype=np.float64)
    targets = np.arange(window, len(data)) if at is None else at[at >= window]
    if not len(targets):
        return out
    # windows[i] holds the ``window`` values before position i + window.
    windows = np.lib.stride_tricks.sliding_window_view(data, window)[targets - window]
    if not np.isnan(windows).any():
        out[targets] = np.median(windows, axis=1)  # much faster than nanmedian on short axes
        return out
    with warnings.catch_warnings():
        # An all-NaN window has no median; NaN is the right answer there.
        warnings.simplefilter("ignore", RuntimeWarning)
        out[targets] = np.nanmedian(windows, axis=1)
    return out
