"""GreedyLR as a torch learning-rate scheduler, driven by :func:`dbgcli.schedulers.greedy`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, SupportsFloat, cast

from dbgcli.errors import ConfigError
from dbgcli.schedulers.greedy import GreedyState, greedy

if TYPE_CHECKING:
    from torch.optim import Optimizer


class GreedyLR:
    """Set an optimizer's learning rates with GreedyLR, one ``step(loss)`` at a time.

    A drop-in replacement for ``transformers.optimization.GreedyLR`` (5.23.0) that produces the
    same learning rates float for float, rejects the parameter values the reference mishandles,
    and shares its maths with :func:`dbgcli.schedulers.greedy`: each ``step`` reads every
    group's current ``lr``, applies the pure ``update`` and writes back the rates that changed.
    Because the current rates are read back on every step, a rate written into
    ``optimizer.param_groups`` by someone else becomes the new base, exactly as in the
    reference; a reset restores the rates the optimizer had when this scheduler was built.

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
        smooth: Compare the running mean of the last ``window_size`` metrics.
        window_size: Length of the smoothing window.
        reset_start: Decrease attempts at the floor before a reset.

    Raises:
        TypeError: If ``optimizer`` is not a ``torch.optim.Optimizer``.
        ConfigError: For the same invalid parameters as :func:`dbgcli.schedulers.greedy`, or
            per-group bounds whose length is not the number of parameter groups.

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

    def __init__(
        self,
        optimizer: Optimizer,
        *,
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
        smooth: bool = False,
        window_size: int = 50,
        reset_start: int = 500,
    ) -> None:
        self._params: dict[str, Any] = {
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
        self._scheduler = greedy(**self._params)
        import torch

        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self._state = cast(GreedyState, self._scheduler.init(self._group_lrs()))
        self._last_lr = list(self._group_lrs())

    @property
    def state(self) -> GreedyState:
        """The pure scheduler state after the last step."""
        return self._state

    def step(self, metrics: SupportsFloat) -> None:
        """Feed one metric value (a float or a 0-d tensor) and update the learning rates.

        Args:
            metrics: The loss (``mode="min"``) or score (``mode="max"``) of the last step.

        Raises:
            ConfigError: If the optimizer's number of parameter groups changed.
        """
        current = self._group_lrs()
        if len(current) != len(self._state.lrs):
            raise ConfigError(
                f"greedy: the optimizer has {len(current)} parameter groups but the scheduler "
                f"was built for {len(self._state.lrs)}"
            )
        state = cast(
            GreedyState, self._scheduler.update(self._state._replace(lrs=current), float(metrics))
        )
        for group, old, new in zip(self.optimizer.param_groups, current, state.lrs, strict=True):
            if new != old:
                _set_lr(group, new)
        self._state = state
        self._last_lr = list(self._group_lrs())

    def get_last_lr(self) -> list[float]:
        """Return each group's learning rate after the last ``step`` (the initial ones before).

        These are the values in the optimizer, as floats: a group that holds its learning rate
        as a float32 tensor reports the rounded value.
        """
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Return the parameters and the state as plain Python values (lists, not tuples)."""
        return {
            "params": _plain(self._params),
            "state": {name: _plain(value) for name, value in self._state._asdict().items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` and write its rates into the optimizer.

        Args:
            state_dict: A dict returned by :meth:`state_dict` of a scheduler with the same
                parameters.

        Raises:
            ConfigError: If the saved parameters differ from this scheduler's, or the saved
                state does not have one learning rate per parameter group.
        """
        saved_params = state_dict["params"]
        if saved_params != _plain(self._params):
            raise ConfigError(
                f"greedy: cannot load a state saved with parameters {saved_params} into a "
                f"scheduler built with {_plain(self._params)}"
            )
        fields: dict[str, Any] = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in state_dict["state"].items()
        }
        state = GreedyState(**fields)
        if len(state.lrs) != len(self.optimizer.param_groups):
            raise ConfigError(
                f"greedy: the saved state has {len(state.lrs)} learning rates but the optimizer "
                f"has {len(self.optimizer.param_groups)} parameter groups"
            )
        for group, lr in zip(self.optimizer.param_groups, state.lrs, strict=True):
            _set_lr(group, lr)
        self._state = state
        self._last_lr = list(self._group_lrs())

    def _group_lrs(self) -> tuple[float, ...]:
        return tuple(float(group["lr"]) for group in self.optimizer.param_groups)


def _set_lr(group: dict[str, Any], lr: float) -> None:
    """Write ``lr`` into a param group, in place if the group holds a tensor (as torch does)."""
    import torch

    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def _plain(value: Any) -> Any:
    """Turn tuples into lists, recursively, so a state dict compares equal after a save/load."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
