"""What a rule sees of a trace: filtered series, tensor views, and episode helpers."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from dbgcli.findings import Finding
from dbgcli.trace import roles, schema
from dbgcli.trace.derive import Derivation
from dbgcli.trace.reader import Series, TagInfo, Trace

T = TypeVar("T")

# Run metadata key (and ``[tool.dbg]`` configuration key) that names the loss series when
# its name does not say so: a tag, or ``{"train": tag, "eval": tag}``.
LOSS_KEY = "loss"


@dataclass(frozen=True)
class Found:
    """A scalar series found by meaning: its tag, and the mode of the records that are it
    (None: every record, when the name itself says train or eval)."""

    tag: str
    mode: str | None


class RuleContext:
    """A trace seen through the step range and mode filters of one analysis.

    Args:
        trace: The open trace.
        start: First step to consider (inclusive), or None.
        stop: Last step to consider (inclusive), or None.
        mode: Only records of this mode, or None for all.
        focus: Show this one tensor tag only to :meth:`tensors` (the engine's view for rules
            declared ``per_tensor``), or None for all of them.
        loss: The loss series named by the user's configuration (a tag, or a mapping of
            ``train``/``eval`` to tags); it wins over the trace's metadata and over names.
    """

    def __init__(
        self,
        trace: Trace,
        *,
        start: int | None = None,
        stop: int | None = None,
        mode: str | None = None,
        focus: str | None = None,
        loss: str | Mapping[str, str] | None = None,
    ) -> None:
        self.trace = trace
        self.start = start
        self.stop = stop
        self.mode = mode
        self.focus = focus
        self.designated_loss = loss
        self._views: dict[str, TensorView] = {}
        self._found: dict[tuple[str, str], Found | None] = {}
        self._categorical: dict[str, bool] = {}
        self._shared: dict[Any, Any] = {}

    def focused(self, tag: str) -> RuleContext:
        """This context with :meth:`tensors` narrowed to ``tag``; views are shared."""
        narrowed = RuleContext(
            self.trace,
            start=self.start,
            stop=self.stop,
            mode=self.mode,
            focus=tag,
            loss=self.designated_loss,
        )
        narrowed._views = self._views
        narrowed._found = self._found
        narrowed._categorical = self._categorical
        narrowed._shared = self._shared
        return narrowed

    def shared(self, key: Any, compute: Callable[[], T]) -> T:
        """A quantity several rules derive from the same statistics, computed once per
        analysis (``key`` names it and its parameters)."""
        if key not in self._shared:
            self._shared[key] = compute()
        value: T = self._shared[key]
        return value

    def unfocused(self) -> RuleContext:
        """This context seeing every tensor again (a per-tensor rule that must look at other
        tensors, such as a weight's gradient); views are shared."""
        if self.focus is None:
            return self
        wide = self.focused(self.focus)
        wide.focus = None
        return wide

    def categorical(self, view: TensorView) -> bool:
        """Whether a tensor holds ids, not quantities: labels; predictions that are class ids
        (integers, or floats that are whole numbers); inputs that are token ids (integers other
        than uint8 images, or whole-number floats whose name says ids: ``input_ids``,
        ``tokens``). Floats are judged on their first stored full tensor."""
        known = self._categorical.get(view.tag)
        if known is None:
            known = self._categorical[view.tag] = _holds_ids(self.trace, view.info)
        return known

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
        """The training or validation loss, found by meaning (see :meth:`find`)."""
        return self._series(self.find("loss", mode))

    def accuracy(self, mode: Literal["train", "eval"] = "train") -> Series | None:
        """The training or validation accuracy, found by meaning (see :meth:`find`)."""
        return self._series(self.find("accuracy", mode))

    def lr(self) -> Series | None:
        """The recorded learning rate (of the first parameter group), found by meaning."""
        return self._series(self.find("lr", "train"))

    def loss_tag(self, mode: Literal["train", "eval"] = "train") -> str | None:
        """The tag of the series :meth:`loss` returns, or None."""
        found = self.find("loss", mode)
        return None if found is None else found.tag

    def accuracy_tag(self, mode: Literal["train", "eval"] = "train") -> str | None:
        """The tag of the series :meth:`accuracy` returns, or None."""
        found = self.find("accuracy", mode)
        return None if found is None else found.tag

    def lr_tag(self) -> str | None:
        """The tag of the series :meth:`lr` returns, or None."""
        found = self.find("lr", "train")
        return None if found is None else found.tag

    def find(self, quantity: roles.JudgedQuantity, mode: str) -> Found | None:
        """The scalar series that is the ``quantity`` (loss, accuracy, lr) of ``mode``.

        In order: the loss the configuration names (``loss`` key), the loss the trace's
        metadata names (``TraceWriter(..., metadata={"loss": "nll"})``); then every scalar
        series whose name means the quantity (:func:`dbgcli.trace.roles.scalar_meaning`),
        taking all its records when its name says the mode (``val_loss`` is validation loss
        in whatever mode it was recorded) and its records of ``mode`` otherwise. Among
        several, the plainest name wins (``loss`` before ``kl_loss`` before ``logloss``), then
        the one with more records. XGBoost's ``validation_N-<metric>`` names count as
        validation, except ``validation_0`` when a ``validation_1`` exists and no series is
        named for training: the scikit-learn API's convention is ``eval_set=[train, valid]``.
        """
        key = (quantity, mode)
        if key not in self._found:
            self._found[key] = self._find(quantity, mode)
        return self._found[key]

    def _find(self, quantity: roles.JudgedQuantity, mode: str) -> Found | None:
        if quantity == "loss":
            for designation in (self.designated_loss, self.trace.metadata.get(LOSS_KEY)):
                tag = designation.get(mode) if isinstance(designation, Mapping) else designation
                if isinstance(tag, str) and tag in self.trace and self.trace.tag(tag).scalar:
                    named = isinstance(designation, Mapping)
                    found = Found(tag, None if named else mode)
                    if self._series(found) is not None:
                        return found
        scalars = self.trace.tags(scalar=True)
        eval_sets = {roles.xgboost_eval_set(info.tag) for info in scalars} - {None}
        candidates = []
        for info in scalars:
            meaning = roles.scalar_meaning(info.tag)
            if meaning.quantity != quantity:
                continue
            said = meaning.mode
            eval_set = roles.xgboost_eval_set(info.tag)
            if eval_set == 0 and 1 in eval_sets:
                trained = any(
                    roles.scalar_meaning(other.tag).mode == "train"
                    and roles.scalar_meaning(other.tag).quantity == quantity
                    for other in scalars
                )
                said = "eval" if trained else "train"
            if said is not None and said != mode:
                continue
            found = Found(info.tag, None if said is not None else mode)
            series = self._series(found)
            if series is not None:
                candidates.append((meaning.rank, -len(series), info.tag, found))
        return min(candidates)[3] if candidates else None

    def _series(self, found: Found | None) -> Series | None:
        return None if found is None else self.scalar(found.tag, found.mode)

    def tensors(
        self,
        collection: str | Sequence[str] | None = None,
        kind: str | Sequence[str] | None = None,
        pattern: str | None = None,
    ) -> list[TensorView]:
        """Tensor tags with records after the filters, by role, kind and/or glob.

        ``collection`` names roles (:data:`dbgcli.trace.roles.ROLES`): what a tensor is, as
        :func:`dbgcli.trace.roles.tensor_role` resolves it from its recorded collection,
        kind and tag, so ``grads/fc1`` with no collection is among the ``gradients``.
        """
        collections = [collection] if isinstance(collection, str) else collection
        kinds = [kind] if isinstance(kind, str) else kind
        views = []
        infos = (
            self.trace.tags(scalar=False) if self.focus is None else [self.trace.tag(self.focus)]
        )
        for info in infos:
            if collections is not None and info.role not in collections:
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


def _holds_ids(trace: Trace, info: TagInfo) -> bool:
    if info.role == "labels":
        return True
    if info.role not in ("predictions", "inputs"):
        return False
    kind = _dtype_kind(info)
    if kind == "b":
        return True
    if kind in "iu":
        return not (info.role == "inputs" and np.dtype(info.dtype or "u1") == np.uint8)
    if kind != "f" or (info.role == "inputs" and not roles.says_ids(info.tag)):
        return False
    for chunk in trace.iter_raw(info.tag, max_bytes=1):
        values = chunk.values[0]
        finite = values[np.isfinite(values)]
        return bool(finite.size) and bool(np.all(finite == np.round(finite)))
    return False


def _dtype_kind(info: TagInfo) -> str:
    """numpy kind of a tensor's values ("f", "i", "u", "b"), or "" when unknown."""
    if info.dtype:
        try:
            return np.dtype(info.dtype).kind
        except TypeError:
            pass
    return info.segments[0].dtype.kind if info.segments else ""


def mode_codes(modes: np.ndarray) -> list[int]:
    """The distinct mode codes in ``modes``, ascending (without sorting a one-mode series)."""
    if not len(modes):
        return []
    if modes.min() == modes.max():
        return [int(modes[0])]
    # Mode codes are a few small integers: counting beats numpy's hashing unique by far.
    return np.flatnonzero(np.bincount(modes.astype(np.intp))).tolist()


@dataclass(frozen=True)
class Episode:
    """A run of consecutive violating records: positions ``first..last`` in the arrays."""

    first: int
    last: int
    count: int


def covered(firsts: np.ndarray, lasts: np.ndarray, size: int) -> np.ndarray:
    """Flags of the ``size`` positions that lie in any span ``[first, last]``."""
    marks = np.zeros(size + 1, dtype=np.int64)
    np.add.at(marks, firsts, 1)
    np.add.at(marks, lasts + 1, -1)
    inside: np.ndarray = np.cumsum(marks[:-1]) > 0
    return inside


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


def hysteresis(violating: np.ndarray, holding: np.ndarray) -> np.ndarray:
    """Episodes that start where ``violating`` holds and last while ``holding`` does.

    A measure that hovers around its threshold (a saturated share of 48 %, 52 %, 49 %, 53 %
    against 50 %) is one episode, not many: it enters at the threshold and leaves only when it
    falls clear of it (``holding`` is the looser condition, say above 80 % of the threshold).
    """
    flags = np.asarray(violating, dtype=bool)
    mark = flags | np.asarray(holding, dtype=bool)
    if not flags.any():
        return flags
    index = np.arange(len(mark))
    run_start = mark & ~np.concatenate(([False], mark[:-1]))
    latest_start = np.maximum.accumulate(np.where(run_start, index, -1))
    latest_violation = np.maximum.accumulate(np.where(flags, index, -1))
    held: np.ndarray = mark & (latest_violation >= latest_start)
    return held


def episode_findings(
    *,
    tensor: str | None,
    steps: np.ndarray,
    values: np.ndarray,
    violating: np.ndarray,
    threshold: float | None,
    key: str,
    message: Callable[[Episode, float], str],
    worst: Literal["max", "min"] = "max",
    modes: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
    holding: np.ndarray | None = None,
) -> Iterator[Finding]:
    """The finding of ``violating`` records of one tensor or series (none if none violate).

    All episodes (runs of consecutive violating records) are merged into one finding: it
    spans from the first episode's first step to the last one's last step, counts the
    violating records and the episodes, and its ``value`` is the worst value over them
    (largest or smallest, NaN-aware), passed to ``message`` with the merged span as an
    :class:`Episode` to build the one-line text. With ``holding`` (a looser condition), an
    episode lasts as long as ``holding`` does after ``violating`` started it (see
    :func:`hysteresis`).
    """
    flags = np.asarray(violating, dtype=bool)
    if holding is not None:
        flags = hysteresis(flags, holding)
    runs = episodes(flags, max_episodes=len(flags) or 1)
    if not runs:
        return
    worst_value = _worst(values[flags], worst)
    span = Episode(runs[0].first, runs[-1].last, sum(r.count for r in runs))
    mode = None
    if modes is not None:
        codes = mode_codes(modes[flags])
        mode = schema.MODES[codes[0]] if len(codes) == 1 else None
    yield Finding(
        message=message(span, worst_value),
        tensor=tensor,
        first_step=int(steps[span.first]),
        last_step=int(steps[span.last]),
        steps=span.count,
        value=worst_value,
        threshold=threshold,
        mode=mode,
        key=key,
        extra=dict(extra or {}),
        episodes=len(runs),
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


#: Fewest records a persistent condition needs when it must last two or more steps: one
#: record is one minibatch, and a single minibatch is the fluke persistence guards against.
MIN_PERSISTENT_RECORDS = 2


def record_interval(steps: np.ndarray) -> int:
    """The usual step distance between records (the median of the positive differences of
    ``steps``): 1 for a tensor recorded at every step, 10 with ``stats_every=10``."""
    increments = np.diff(steps)
    if (increments < 0).any():  # records are in step order but for late ones
        increments = np.diff(np.sort(steps))
    increments = increments[increments > 0]
    return max(1, int(np.median(increments))) if len(increments) else 1


def records_spanning(steps: np.ndarray, span: int, *, least: int = 1) -> int:
    """How many consecutive records of a tensor recorded at ``steps`` cover ``span`` steps:
    ``ceil(span / interval)``, each record standing for the steps up to the next one (``span``
    records when recorded at every step, ``ceil(span / 10)`` when every 10th), and at least
    ``min(least, span)``."""
    if span < 1:
        return span
    return max(min(least, span), -(-span // record_interval(steps)))


def persistent(flags: np.ndarray, steps: np.ndarray, min_steps: int) -> np.ndarray:
    """Keep only runs of consecutive True records that last ``min_steps`` steps.

    :func:`sustained` over :func:`records_spanning` records, at least
    :data:`MIN_PERSISTENT_RECORDS`: recorded at every step, ``min_steps`` records; recorded
    every 10th step, a condition that must last 5 steps needs 2 records (20 steps), not 5
    (50 steps), and never a single record.
    """
    return sustained(flags, records_spanning(steps, min_steps, least=MIN_PERSISTENT_RECORDS))


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the previous ``window`` values (NaN until ``window`` exist)."""
    out = np.full(len(values), np.nan)
    if window < 1 or len(values) <= window:
        return out
    sums = np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
    out[window:] = (sums[window:-1] - sums[: len(values) - window]) / window
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
