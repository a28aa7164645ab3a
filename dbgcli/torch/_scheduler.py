"""GreedyLR as a torch learning-rate scheduler, driven by :func:`dbgcli.schedulers.greedy`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, SupportsFloat, TypeVar, cast, overload

from dbgcli.errors import ConfigError
from dbgcli.schedulers import _validate as check
from dbgcli.schedulers._base import improvement_test
from dbgcli.schedulers.greedy import GreedyState, greedy

if TYPE_CHECKING:
    from torch.optim import Optimizer

_WHERE = "greedy"

_PARAMETERS = {
    "mode": "mode",
    "factor": "factor",
    "patience": "patience",
    "threshold": "threshold",
    "threshold_mode": "threshold_mode",
    "cooldown": "cooldown",
    "warmup": "warmup",
    "min_lrs": "min_lr",
    "max_lrs": "max_lr",
    "eps": "eps",
    "smooth": "smooth",
    "window_size": "window_size",
    "reset_start_original": "reset_start",
}
"""The reference's attribute for each parameter of :func:`greedy`."""

_COUNTERS = {
    "num_good_epochs": "good_steps",
    "num_bad_epochs": "bad_steps",
    "cooldown_counter": "cooldown_left",
    "warmup_counter": "warmup_left",
    "reset_start": "resets_left",
}
"""The reference's attribute for each counter of :class:`GreedyState`."""

_STATE_DICT_KEYS = (
    "factor",
    "min_lrs",
    "max_lrs",
    "patience",
    "verbose",
    "cooldown",
    "warmup",
    "cooldown_counter",
    "warmup_counter",
    "mode",
    "threshold",
    "threshold_mode",
    "best",
    "num_bad_epochs",
    "num_good_epochs",
    "eps",
    "last_epoch",
    "smooth",
    "window_size",
    "reset_start",
    "reset_start_original",
    "_last_lr",
    "_init_lrs",
)
"""The keys of the reference's ``state_dict()``, in its order (plus ``_streaming_avg``)."""

T = TypeVar("T")


class _Synced(Generic[T]):
    """One of the reference's attributes, stored in the scheduler's parameters or state.

    Reading it reads them; assigning it goes through :meth:`GreedyLR.load_state_dict`, so a
    value is checked as a loaded one is and the two views can never disagree.
    """

    name: str

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, scheduler: None, owner: type) -> _Synced[T]: ...

    @overload
    def __get__(self, scheduler: GreedyLR, owner: type) -> T: ...

    def __get__(self, scheduler: GreedyLR | None, owner: type) -> _Synced[T] | T:
        if scheduler is None:
            return self
        return cast(T, scheduler._attribute(self.name))

    def __set__(self, scheduler: GreedyLR, value: T) -> None:
        scheduler.load_state_dict({self.name: value})


@dataclass(frozen=True)
class SmoothingWindow:
    """What the reference keeps in its ``StreamingAverage``: a snapshot of the smoothing window."""

    window_size: int
    """Length of the window."""
    values: list[float]
    """The last raw metrics, oldest first."""
    sum: float
    """Their running sum, updated incrementally as the reference does (it drifts)."""

    def state_dict(self) -> dict[str, Any]:
        """Return the window as the reference's ``StreamingAverage.state_dict()`` does."""
        return {"window_size": self.window_size, "values": list(self.values), "sum": self.sum}


class GreedyLR:
    """Set an optimizer's learning rates with GreedyLR, one ``step(loss)`` at a time.

    A drop-in replacement for ``transformers.optimization.GreedyLR`` (5.23.0 to 5.25.0): the
    same constructor (positional arguments included), the same public attributes, the same
    learning rates float for float, and state dicts that each class loads from the other. It
    shares its maths with :func:`dbgcli.schedulers.greedy` and rejects the parameter values the
    reference accepts but mishandles (see ``docs/schedulers.md``). Each ``step`` reads every
    group's current ``lr``, applies the pure ``update`` and writes back the rates that changed,
    so a rate written into ``optimizer.param_groups`` by someone else becomes the new base,
    exactly as in the reference; a reset restores the rates the optimizer had when this
    scheduler was built.

    The reference's attributes (``mode``, ``factor``, ``patience``, ``threshold``,
    ``threshold_mode``, ``cooldown``, ``warmup``, ``min_lrs``, ``max_lrs``, ``eps``, ``smooth``,
    ``window_size``, ``reset_start_original``, ``best``, ``num_good_epochs``,
    ``num_bad_epochs``, ``cooldown_counter``, ``warmup_counter``, ``reset_start``, the counter
    of decrease attempts left at the floor, and ``_init_lrs``) read and write this scheduler's
    parameters and :attr:`state`; assigning one is checked like a loaded state dict.

    Args:
        optimizer: The optimizer whose ``param_groups[i]["lr"]`` to set.
        mode: ``"min"`` if a lower metric is better, ``"max"`` if a higher one is.
        factor: Multiplier of a decrease (an increase divides by it); in (0, 1).
        patience: A change happens on the ``patience + 1``-th consecutive good or bad step.
        threshold: Margin an improvement must beat (strictly).
        threshold_mode: ``"abs"`` or ``"rel"``.
        cooldown: Hold steps after a decrease.
        warmup: Hold steps after an increase.
        min_lr: Floor of decreases, one float or one per group.
        max_lr: Ceiling of increases, one float or one per group.
        eps: A new rate is written only if it differs from the old one by more than this.
        verbose: Print a line for each change of a group's rate and for each reset, as the
            reference does.
        smooth: Compare the running mean of the last ``window_size`` metrics.
        window_size: Length of the smoothing window.
        reset_start: Decrease attempts at the floor before a reset.

    Raises:
        TypeError: If ``optimizer`` is not a ``torch.optim.Optimizer``.
        ConfigError: (a ``ValueError``) for the same invalid parameters as
            :func:`dbgcli.schedulers.greedy`, a ``verbose`` that is not a bool, or per-group
            bounds whose length is not the number of parameter groups.

    Example:
        >>> import torch
        >>> from dbgcli.torch import GreedyLR
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> scheduler = GreedyLR(optimizer, factor=0.5, patience=1)
        >>> for loss in [1.0, 0.9, 0.8, 0.7, 0.9, 0.95]:
        ...     scheduler.step(loss)
        >>> scheduler.get_last_lr()
        [0.2]
    """

    mode: _Synced[str] = _Synced()
    factor: _Synced[float] = _Synced()
    patience: _Synced[int] = _Synced()
    threshold: _Synced[float] = _Synced()
    threshold_mode: _Synced[str] = _Synced()
    cooldown: _Synced[int] = _Synced()
    warmup: _Synced[int] = _Synced()
    min_lrs: _Synced[list[float]] = _Synced()
    max_lrs: _Synced[list[float]] = _Synced()
    eps: _Synced[float] = _Synced()
    smooth: _Synced[bool] = _Synced()
    window_size: _Synced[int] = _Synced()
    reset_start_original: _Synced[int] = _Synced()
    best: _Synced[float] = _Synced()
    num_good_epochs: _Synced[int] = _Synced()
    num_bad_epochs: _Synced[int] = _Synced()
    cooldown_counter: _Synced[int] = _Synced()
    warmup_counter: _Synced[int] = _Synced()
    reset_start: _Synced[int] = _Synced()
    _init_lrs: _Synced[list[float]] = _Synced()

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.95,
        patience: int = 10,
        threshold: float = 1e-6,
        threshold_mode: str = "abs",
        cooldown: int = 0,
        warmup: int = 0,
        min_lr: float | Sequence[float] = 1e-3,
        max_lr: float | Sequence[float] = 1.0,
        eps: float = 1e-8,
        verbose: bool = False,
        smooth: bool = False,
        window_size: int = 50,
        reset_start: int = 500,
    ) -> None:
        params: dict[str, Any] = {
            "mode": mode,
            "factor": factor,
            "patience": patience,
            "threshold": threshold,
            "threshold_mode": threshold_mode,
            "cooldown": cooldown,
            "warmup": warmup,
            "min_lr": min_lr,
            "max_lr": max_lr,
            "eps": eps,
            "smooth": smooth,
            "window_size": window_size,
            "reset_start": reset_start,
        }
        self._scheduler = greedy(**params)
        self._params = params
        if not isinstance(verbose, bool):
            raise ConfigError(f"{_WHERE}: verbose must be True or False, got {verbose!r}")
        import torch

        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.verbose = verbose
        self.last_epoch = 0
        self._state = cast(GreedyState, self._scheduler.init(self._group_lrs()))
        self._last_lr = list(self._group_lrs())

    @property
    def state(self) -> GreedyState:
        """The pure scheduler state after the last step."""
        return self._state

    @property
    def _streaming_avg(self) -> SmoothingWindow | None:
        """The smoothing window as the reference exposes it, or ``None`` without ``smooth``."""
        if not self.smooth:
            return None
        return SmoothingWindow(
            self._params["window_size"], list(self._state.window), self._state.window_sum
        )

    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:
        """Feed one metric value (a float or a 0-d tensor) and update the learning rates.

        Args:
            metrics: The loss (``mode="min"``) or score (``mode="max"``) of the last step.
            epoch: Stored as :attr:`last_epoch` (and printed with ``verbose``); it does not
                affect the learning rates. By default ``last_epoch + 1``.

        Raises:
            ConfigError: If the optimizer's number of parameter groups changed.
        """
        current = self._group_lrs()
        if len(current) != len(self._state.lrs):
            raise ConfigError(
                f"{_WHERE}: the optimizer has {len(current)} parameter groups but the scheduler "
                f"was built for {len(self._state.lrs)}"
            )
        metric = float(metrics)
        before = self._state._replace(lrs=current)
        state = cast(GreedyState, self._scheduler.update(before, metric))
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        reset = state.resets != before.resets
        if self.verbose:
            self._print_changes(before, state, metric, reset)
        # A reset writes every group's initial rate, as the reference does, even an equal one.
        for group, old, new in zip(self.optimizer.param_groups, current, state.lrs, strict=True):
            if reset or new != old:
                _set_lr(group, new)
        self._state = state
        self._last_lr = list(self._group_lrs())

    def _print_changes(
        self, before: GreedyState, after: GreedyState, metric: float, reset: bool
    ) -> None:
        """Print what the reference prints for this step: each rate moved, then any reset."""
        moved = after.lrs
        if reset:
            # The decrease that used up the last attempt moved rates before the reset restored
            # them; the same step with attempts to spare (one to use, one left) shows where.
            spared = before._replace(resets_left=2)
            moved = cast(GreedyState, self._scheduler.update(spared, metric)).lrs
        for i, (old, new) in enumerate(zip(before.lrs, moved, strict=True)):
            if new != old:
                direction = "reducing" if new < old else "increasing"
                print(
                    f"Epoch {self.last_epoch}: {direction} learning rate of group {i} to {new:.4e}."
                )
        if reset:
            print("Scheduler reset to initial state.")

    def is_better(self, current: float, best: float) -> bool:
        """Return whether ``current`` improves on ``best`` (strictly, beyond the threshold)."""
        improvement = check.improvement(
            _WHERE, self.mode, self.threshold_mode, self.threshold, native=True
        )
        return improvement_test(*improvement)(current, best)

    def get_last_lr(self) -> list[float]:
        """Return each group's learning rate after the last ``step`` (the initial ones before).

        These are the values the optimizer holds (a Python float, or the numpy scalar a numpy
        ``factor`` produced); a group that holds its learning rate as a tensor reports it as a
        float.
        """
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Return the state as ``transformers.optimization.GreedyLR.state_dict()`` does.

        The same keys and values as the reference's after the same steps, so either class loads
        it; ``_streaming_avg`` is there only with ``smooth``.
        """
        state = {key: _copy(getattr(self, key)) for key in _STATE_DICT_KEYS}
        window = self._streaming_avg
        if window is not None:
            state["_streaming_avg"] = window.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state saved by this class or by the reference; missing keys keep their values.

        Loaded parameters replace this scheduler's (as in the reference) after the same checks
        as the constructor's; a saved ``_last_lr`` is written into the optimizer.

        Args:
            state_dict: A dict from :meth:`state_dict` or from the reference's, or a part of one.

        Raises:
            ConfigError: If no key is one of a state dict's, or a value is invalid (a parameter
                the constructor would reject, a negative counter, a NaN ``best``, rates whose
                number is not the number of parameter groups); the scheduler is then unchanged.
        """
        known = set(_STATE_DICT_KEYS) | {"_streaming_avg"}
        if state_dict and known.isdisjoint(state_dict):
            raise ConfigError(
                f"{_WHERE}: not a GreedyLR state dict (its keys are {sorted(state_dict)})"
            )
        params = dict(self._params)
        for name, key in _PARAMETERS.items():
            if name in state_dict:
                params[key] = _copy(state_dict[name])
        fields: dict[str, Any] = {}
        for name, field in _COUNTERS.items():
            if name in state_dict:
                fields[field] = check.integer(_WHERE, name, state_dict[name], minimum=0)
        if "best" in state_dict:
            fields["best"] = check.real(_WHERE, "best", state_dict["best"], allow_inf=True)
        if "_init_lrs" in state_dict:
            fields["init_lrs"] = self._per_group("_init_lrs", state_dict["_init_lrs"])
        if "_streaming_avg" in state_dict:
            window = state_dict["_streaming_avg"]
            fields["window"] = tuple(float(value) for value in window.get("values", []))
            fields["window_sum"] = float(window.get("sum", 0.0))
        last_lr = None
        if "_last_lr" in state_dict:
            last_lr = self._per_group("_last_lr", state_dict["_last_lr"])
            fields["lrs"] = last_lr
        verbose = state_dict.get("verbose", self.verbose)
        if not isinstance(verbose, bool):
            raise ConfigError(f"{_WHERE}: verbose must be True or False, got {verbose!r}")
        state = self._state._replace(**fields)
        scheduler = self._scheduler
        if params != self._params:
            scheduler = greedy(**params)
            scheduler.init(state.init_lrs)  # checks per-group bounds against the groups
        self._params, self._scheduler, self._state = params, scheduler, state
        self.verbose = verbose
        self.last_epoch = state_dict.get("last_epoch", self.last_epoch)
        if last_lr is not None:
            for group, lr in zip(self.optimizer.param_groups, last_lr, strict=True):
                _set_lr(group, lr)
            self._last_lr = list(self._group_lrs())

    def _attribute(self, name: str) -> Any:
        """Return the reference's attribute ``name`` from the parameters or the state."""
        if name in ("min_lrs", "max_lrs"):
            bound = self._params[_PARAMETERS[name]]
            return (
                list(bound) if isinstance(bound, (list, tuple)) else [bound] * len(self._state.lrs)
            )
        if name in _PARAMETERS:
            return self._params[_PARAMETERS[name]]
        if name == "_init_lrs":
            return list(self._state.init_lrs)
        return getattr(self._state, _COUNTERS.get(name, name))

    def _per_group(self, name: str, lrs: Sequence[float]) -> tuple[float, ...]:
        """Check saved learning rates: valid, and one per parameter group."""
        lrs = check.learning_rates(_WHERE, lrs, native=True)
        if len(lrs) != len(self.optimizer.param_groups):
            raise ConfigError(
                f"{_WHERE}: the saved {name} has {len(lrs)} learning rates but the optimizer has "
                f"{len(self.optimizer.param_groups)} parameter groups"
            )
        return lrs

    def _group_lrs(self) -> tuple[float, ...]:
        """Each group's rate as the reference compares it: the object held, a tensor as a float."""
        import torch

        return tuple(
            float(lr) if isinstance(lr, torch.Tensor) else lr
            for lr in (group["lr"] for group in self.optimizer.param_groups)
        )

    def __getstate__(self) -> dict[str, Any]:
        # The pure scheduler is made of closures, which do not pickle; its parameters do.
        state = dict(self.__dict__)
        del state["_scheduler"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scheduler = greedy(**self._params)


def _set_lr(group: dict[str, Any], lr: float) -> None:
    """Write ``lr`` into a param group, in place if the group holds a tensor (as torch does)."""
    import torch

    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def _copy(value: Any) -> Any:
    """A list for a list or tuple (so a saved dict does not share the scheduler's lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value
