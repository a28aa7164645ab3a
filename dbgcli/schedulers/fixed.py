"""Loss-independent schedules: constant, step, multi-step, exponential, linear, cosine, one-cycle.

Each factory validates its arguments and returns a :data:`~dbgcli.schedulers.Schedule` lifted to
a :class:`~dbgcli.schedulers.Scheduler` that ignores the loss values. The schedules follow the
torch classes named in their docstrings step for step, including torch's recursive arithmetic
(the learning rate is usually computed from the previous one, not from a closed form), so they
match torch 2.13.0 float for float. ``step`` below is torch's ``last_epoch``: 0 in the
constructor, ``t`` after the ``t``-th call to ``step()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dbgcli.errors import ConfigError
from dbgcli.schedulers import _validate as check
from dbgcli.schedulers._base import Schedule, Scheduler, from_schedule


def constant(factor: float = 1.0, total_iters: int = 0) -> Scheduler:
    r"""Constant learning rate, optionally scaled by ``factor`` for the first ``total_iters`` steps.

    Matches ``torch.optim.lr_scheduler.ConstantLR``:

    .. math::

        \eta_0 = \eta_{\text{init}} f, \qquad
        \eta_t = \eta_{t-1} \cdot (1 / f) \text{ if } t = T, \qquad
        \eta_t = \eta_{t-1} \text{ otherwise},

    so :math:`\eta_t = \eta_{\text{init}} f` for :math:`t < T` and (up to rounding, exactly as
    torch rounds) :math:`\eta_{\text{init}}` afterwards. The defaults give a constant rate.

    Args:
        factor: Scale of the first ``total_iters`` steps; in (0, 1].
        total_iters: Number of scaled steps; must be positive unless ``factor`` is 1 (torch
            would apply the factor forever with ``total_iters=0``).

    Returns:
        The scheduler.

    Raises:
        ConfigError: If ``factor`` is outside (0, 1], ``total_iters`` is negative, or
            ``total_iters`` is 0 with a ``factor`` other than 1.

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95]
        >>> simulate(losses, "constant", lr=0.1, factor=0.5, total_iters=3).tolist()
        [0.05, 0.05, 0.1, 0.1, 0.1, 0.1]
    """
    where = "constant"
    factor = check.real(where, "factor", factor, above=0.0, at_most=1.0)
    total_iters = check.integer(where, "total_iters", total_iters, minimum=0)
    if total_iters == 0 and factor != 1.0:
        raise ConfigError(
            f"{where}: total_iters must be >= 1 when factor is not 1 (got factor={factor!r}, "
            "total_iters=0; torch would apply the factor forever)"
        )

    def schedule(step: int, lr: float, base_lr: float) -> float:
        if step == 0:
            return lr * factor
        if step == total_iters:
            return lr * (1.0 / factor)
        return lr

    return from_schedule(where, schedule)


def step_decay(step_size: int, gamma: float = 0.1) -> Scheduler:
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` steps.

    Matches ``torch.optim.lr_scheduler.StepLR``: :math:`\eta_t = \eta_{t-1}\gamma` when ``t`` is
    a positive multiple of ``step_size``, else :math:`\eta_t = \eta_{t-1}` (repeated
    multiplication, so :math:`\approx \eta_{\text{init}}\gamma^{\lfloor t / s \rfloor}`).

    Args:
        step_size: Steps between two decays; at least 1.
        gamma: Multiplier of each decay; positive.

    Returns:
        The scheduler.

    Raises:
        ConfigError: If ``step_size < 1`` or ``gamma <= 0``.

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95]
        >>> simulate(losses, "step", lr=0.1, step_size=2, gamma=0.5).tolist()
        [0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]
    """
    where = "step"
    step_size = check.integer(where, "step_size", step_size, minimum=1)
    gamma = check.real(where, "gamma", gamma, above=0.0)

    def schedule(step: int, lr: float, base_lr: float) -> float:
        if step == 0 or step % step_size != 0:
            return lr
        return lr * gamma

    return from_schedule(where, schedule)


def multistep_decay(milestones: Sequence[int], gamma: float = 0.1) -> Scheduler:
    r"""Multiply the learning rate by ``gamma`` at each milestone step.

    Matches ``torch.optim.lr_scheduler.MultiStepLR``: :math:`\eta_t = \eta_{t-1}\gamma` if
    :math:`t` is a milestone, else :math:`\eta_t = \eta_{t-1}`.

    Args:
        milestones: Strictly increasing steps (each at least 1) at which to decay.
        gamma: Multiplier of each decay; positive.

    Returns:
        The scheduler.

    Raises:
        ConfigError: If ``milestones`` is empty, not strictly increasing, or holds a step
            below 1, or if ``gamma <= 0``.

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95]
        >>> simulate(losses, "multistep", lr=0.1, milestones=[2, 5], gamma=0.5).tolist()
        [0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
    """
    where = "multistep"
    if (
        isinstance(milestones, (str, bytes))
        or not isinstance(milestones, Sequence)
        or not milestones
    ):
        raise ConfigError(
            f"{where}: milestones must be a non-empty list of steps, got {milestones!r}"
        )
    steps = [
        check.integer(where, f"milestones[{i}]", m, minimum=1) for i, m in enumerate(milestones)
    ]
    if any(later <= earlier for earlier, later in zip(steps, steps[1:], strict=False)):
        raise ConfigError(
            f"{where}: milestones must be strictly increasing, got {list(milestones)!r}"
        )
    gamma = check.real(where, "gamma", gamma, above=0.0)
    decay_steps = frozenset(steps)

    def schedule(step: int, lr: float, base_lr: float) -> float:
        return lr * gamma if step in decay_steps else lr

    return from_schedule(where, schedule)


def exponential_decay(gamma: float) -> Scheduler:
    r"""Multiply the learning rate by ``gamma`` at every step.

    Matches ``torch.optim.lr_scheduler.ExponentialLR``: :math:`\eta_t = \eta_{t-1}\gamma` for
    :math:`t \ge 1` (repeated multiplication, not :math:`\eta_{\text{init}}\gamma^t`).

    Args:
        gamma: Multiplier of each step; positive.

    Returns:
        The scheduler.

    Raises:
        ConfigError: If ``gamma <= 0``.

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95]
        >>> simulate(losses, "exponential", lr=0.1, gamma=0.5).tolist()
        [0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625]
    """
    where = "exponential"
    gamma = check.real(where, "gamma", gamma, above=0.0)

    def schedule(step: int, lr: float, base_lr: float) -> float:
        return lr if step == 0 else lr * gamma

    return from_schedule(where, schedule)


def linear(
    start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Scheduler:
    r"""Scale the learning rate linearly from ``start_factor`` to ``end_factor`` times its start.

    Matches ``torch.optim.lr_scheduler.LinearLR`` (same defaults), which reaches
    :math:`\eta_{\text{init}}\,(s + (e - s)\min(t, T)/T)` through the recursion

    .. math::

        \eta_0 = \eta_{\text{init}}\,s, \qquad
        \eta_t = \eta_{t-1}\left(1 + \frac{e - s}{T s + (t - 1)(e - s)}\right) \ (1 \le t \le T),
        \qquad \eta_t = \eta_{t-1} \ (t > T).

    Args:
        start_factor: Scale at step 0; in (0, 1].
        end_factor: Scale from step ``total_iters`` on; in [0, 1].
        total_iters: Length of the ramp; at least 1.

    Returns:
        The scheduler.

    Raises:
        ConfigError: If a factor is out of range or ``total_iters < 1``.

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95]
        >>> simulate(losses, "linear", lr=0.1, start_factor=0.25, total_iters=3).round(6).tolist()
        [0.05, 0.075, 0.1, 0.1, 0.1, 0.1]
    """
    where = "linear"
    start_factor = check.real(where, "start_factor", start_factor, above=0.0, at_most=1.0)
    end_factor = check.real(where, "end_factor", end_factor, at_least=0.0, at_most=1.0)
    total_iters = check.integer(where, "total_iters", total_iters, minimum=1)
    return from_schedule(where, _linear_ramp(start_factor, end_factor, total_iters))


def _linear_ramp(start_factor: float, end_factor: float, total_iters: int) -> Schedule:
    """LinearLR's recursion (see :func:`linear`), shared with the warmup of :func:`cosine`."""

    def schedule(step: int, lr: float, base_lr: float) -> float:
        if step == 0:
            return lr * start_factor
        if step > total_iters:
            return lr
        return lr * (
            1.0
            + (end_factor - start_factor)
            / (total_iters * start_factor + (step - 1) * (end_factor - start_factor))
        )

    return schedule


def cosine(
    total_steps: int,
    eta_min: float = 0.0,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.1,
) -> Scheduler:
    r"""Cosine annealing from the initial rate down to ``eta_min``, after an optional linear warmup.

    Without warmup this matches ``torch.optim.lr_scheduler.CosineAnnealingLR`` with
    ``T_max = total_steps``, which approximates
    :math:`\eta_t = \eta_{\min} + \tfrac12(\eta_{\text{init}} - \eta_{\min})(1 + \cos(\pi t / T))`
    through the recursion

    .. math::

        \eta_t = \eta_{\min} + (\eta_{t-1} - \eta_{\min})
                 \frac{1 + \cos(\pi t / T)}{1 + \cos(\pi (t - 1) / T)}

    (with torch's special case at :math:`t - 1 - T \equiv 0 \pmod{2T}`, where the denominator
    vanishes). Past ``total_steps`` the cosine continues, so the rate rises again, as in torch.

    With ``warmup_steps = W > 0`` it matches ``SequentialLR([LinearLR(start_factor=
    warmup_start_factor, total_iters=W), CosineAnnealingLR(T_max=total_steps - W)],
    milestones=[W])``: a linear ramp from ``warmup_start_factor`` times the initial rate (which
    stops one step short of the full rate), the initial rate at step ``W``, then the cosine.

    Args:
        total_steps: Length of warmup plus annealing; greater than ``warmup_steps``.
        eta_min: Final learning rate; non-negative.
        warmup_steps: Length of the linear warmup; 0 for none.
        warmup_start_factor: Scale of the first warmup step; in (0, 1].

    Returns:
        The scheduler.

    Raises:
        ConfigError: If ``total_steps <= warmup_steps``, ``warmup_steps`` or ``eta_min`` is
            negative, or ``warmup_start_factor`` is outside (0, 1].

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95]
        >>> simulate(losses, "cosine", lr=0.1, total_steps=4).round(6).tolist()
        [0.085355, 0.05, 0.014645, 0.0, 0.014645, 0.05]
    """
    where = "cosine"
    warmup_steps = check.integer(where, "warmup_steps", warmup_steps, minimum=0)
    total_steps = check.integer(where, "total_steps", total_steps, minimum=warmup_steps + 1)
    eta_min = check.real(where, "eta_min", eta_min, at_least=0.0)
    warmup_start_factor = check.real(
        where, "warmup_start_factor", warmup_start_factor, above=0.0, at_most=1.0
    )
    t_max = total_steps - warmup_steps
    warmup = _linear_ramp(warmup_start_factor, 1.0, warmup_steps) if warmup_steps else None

    def annealed(step: int, lr: float, base_lr: float) -> float:
        if step == 0:
            return lr
        if (step - 1 - t_max) % (2 * t_max) == 0:
            return lr + (base_lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        return (1 + math.cos(math.pi * step / t_max)) / (
            1 + math.cos(math.pi * (step - 1) / t_max)
        ) * (lr - eta_min) + eta_min

    def schedule(step: int, lr: float, base_lr: float) -> float:
        if warmup is None:
            return annealed(step, lr, base_lr)
        if step < warmup_steps:
            return warmup(step, lr, base_lr)
        if step == warmup_steps:
            # SequentialLR switches with CosineAnnealingLR's closed form at epoch 0, where
            # (1 + cos 0) / 2 is exactly 1.
            return eta_min + (base_lr - eta_min)
        return annealed(step - warmup_steps, lr, base_lr)

    return from_schedule(where, schedule)


def one_cycle(
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Scheduler:
    r"""The 1cycle policy: ramp up to the initial learning rate, then anneal far below it.

    Matches ``torch.optim.lr_scheduler.OneCycleLR`` with ``max_lr`` set to each group's initial
    learning rate :math:`\eta_{\max}` (so the rate passed to ``simulate`` is the peak, and the
    cycle starts at :math:`\eta_{\max} / d`). The rate is a closed form of the step: with
    phases ending at steps :math:`e_1 = p\,N - 1` and :math:`e_2 = N - 1` (or, with
    ``three_phase``, :math:`e_1 = pN - 1`, :math:`e_2 = 2pN - 2`, :math:`e_3 = N - 1`), the
    phase containing :math:`t` interpolates from its start value :math:`a` to its end value
    :math:`b` at :math:`u = (t - e_{j-1}) / (e_j - e_{j-1})`:

    .. math::

        \eta_t = b + \frac{a - b}{2}\,(1 + \cos \pi u) \ (\text{cos}), \qquad
        \eta_t = (b - a)\,u + a \ (\text{linear}),

    going :math:`\eta_{\max}/d \to \eta_{\max} \to \eta_{\max}/(d\,d_f)` (two phases) or
    :math:`\eta_{\max}/d \to \eta_{\max} \to \eta_{\max}/d \to \eta_{\max}/(d\,d_f)`
    (three phases). The minimum is reached at update ``total_steps - 1``; like torch, one more
    update is allowed (it already lies past the last phase) and any further one raises, so a
    replay of ``n`` losses that should end at the minimum needs ``total_steps = n + 1``.

    Args:
        total_steps: Number of updates in the cycle; at least 1.
        pct_start: Fraction of the cycle spent increasing; in [0, 1].
        anneal_strategy: ``"cos"`` or ``"linear"``.
        div_factor: :math:`d`, the initial rate is the peak divided by it; positive.
        final_div_factor: :math:`d_f`, the final rate is the initial one divided by it; positive.
        three_phase: Go back to the initial rate before the final annihilation.

    Returns:
        The scheduler. Its ``update`` raises ConfigError after ``total_steps`` updates.

    Raises:
        ConfigError: If a value is out of range or a phase would have zero length (torch
            would divide by zero).

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.85, 0.9, 0.95]
        >>> simulate(losses, "onecycle", lr=0.1, total_steps=7, pct_start=0.4).round(6).tolist()
        [0.060335, 0.099442, 0.081175, 0.046264, 0.013348, 0.0]
    """
    where = "onecycle"
    total_steps = check.integer(where, "total_steps", total_steps, minimum=1)
    pct_start = check.real(where, "pct_start", pct_start, at_least=0.0, at_most=1.0)
    anneal_strategy = check.choice(where, "anneal_strategy", anneal_strategy, ("cos", "linear"))
    div_factor = check.real(where, "div_factor", div_factor, above=0.0)
    final_div_factor = check.real(where, "final_div_factor", final_div_factor, above=0.0)
    if not isinstance(three_phase, bool):
        raise ConfigError(f"{where}: three_phase must be True or False, got {three_phase!r}")

    # (last step of the phase, value at its start, value at its end), as in OneCycleLR.
    phases: list[tuple[float, str, str]]
    if three_phase:
        phases = [
            (float(pct_start * total_steps) - 1, "initial", "max"),
            (float(2 * pct_start * total_steps) - 2, "max", "initial"),
            (total_steps - 1, "initial", "min"),
        ]
    else:
        phases = [
            (float(pct_start * total_steps) - 1, "initial", "max"),
            (total_steps - 1, "max", "min"),
        ]
    if phases[0][0] == 0.0 or phases[-1][0] == phases[-2][0]:
        raise ConfigError(
            f"{where}: pct_start={pct_start!r} with total_steps={total_steps} gives a phase of "
            "zero length; change either"
        )

    def annealed(start: float, end: float, pct: float) -> float:
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def schedule(step: int, lr: float, base_lr: float) -> float:
        if step > total_steps:
            raise ConfigError(
                f"{where}: update {step} is past the end of the cycle (total_steps={total_steps})"
            )
        initial = base_lr / div_factor
        value = {"initial": initial, "max": base_lr, "min": initial / final_div_factor}
        phase_start = 0.0
        for phase_end, start, end in phases[:-1]:
            if step <= phase_end:
                return annealed(
                    value[start], value[end], (step - phase_start) / (phase_end - phase_start)
                )
            phase_start = phase_end
        phase_end, start, end = phases[-1]
        return annealed(value[start], value[end], (step - phase_start) / (phase_end - phase_start))

    return from_schedule(where, schedule)
