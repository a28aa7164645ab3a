"""Whether gradients are zeroed between optimizer steps: ``optimizer.zero_grad()`` forgotten.

Without it, ``backward()`` adds each step's gradient to the last: the optimizer steps along
the sum of every gradient so far. The watch compares one small parameter's gradient at an
optimizer step with the one the previous step used plus everything ``backward()`` brought in
between (a tensor hook on that parameter, armed for one step after each recorded step): when
the gradient is that sum, nothing zeroed it. Directions are compared, not values, so
gradient clipping, which rescales the gradient in place, changes nothing. Under a
``GradScaler`` the old gradient (unscaled) is a part of the new one (scaled) too small to tell
apart, so such runs are not judged. Two loops that legitimately look alike at one step (a
GAN's generator pass flowing into the discriminator's gradients before its ``zero_grad``)
differ in what zeroing removes: the old gradient then is no part of the next one. The verdict
is computed where the gradient is and reaches the host with the hook's next transfer, so a
GPU step never waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# A probe this large rarely has its old and new gradients point the same way by chance.
_PROBE_ELEMENTS = 64
# 1 - cos: the gradient is the old one plus the new within rounding (float32 sums in another
# order leave about 1e-14), and measurably not the new alone (which autograd sums in the
# order the hook does: 0 within 1e-15). Half-precision gradients round too coarsely to tell.
_SAME_DIRECTION = 1e-10
_OTHER_DIRECTION = 1e-8
# Consecutive checks that must agree before the run is said to carry its gradients over.
_CONFIRMATIONS = 2
# The recorded steps that arm a check: the first two (a forgotten zero_grad is there from the
# start), then every tenth (one moved out of the loop, once per epoch), so that the step after
# a record rarely pays for it.
_FIRST_CHECKS = 2
_CHECK_EVERY = 10


def _carried_verdict(grad: torch.Tensor, old: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    """Whether ``grad`` points along ``old + incoming`` and measurably not along ``incoming``
    alone (a boolean tensor on their device), from their Gram matrix in float64."""
    rows = torch.stack([grad.flatten(), (old + incoming).flatten(), incoming.flatten()]).double()
    gram = rows @ rows.T
    norms = gram.diagonal().sqrt()
    cosines = gram[0, 1:] / (norms[0] * norms[1:]).clamp_min(1e-300)
    return (1 - cosines[0] < _SAME_DIRECTION) & (1 - cosines[1] > _OTHER_DIRECTION)


class CarriedGradientWatch:
    """Watches one parameter's gradient across optimizer steps; calls ``note(step, name)``
    once, when two checks in a row found a step's gradient still in the next step's (``step``
    the first of them, ``name`` the parameter's)."""

    def __init__(self, note: Callable[[int, str], None]) -> None:
        self._note = note
        self._noted = False
        self._probe: tuple[str, nn.Parameter] | None = None
        self._old: torch.Tensor | None = None
        self._incoming: torch.Tensor | None = None
        self._handle: RemovableHandle | None = None
        self._armed_at: int | None = None
        self._carried_since: int | None = None
        self._confirmed = 0
        self._recorded = 0

    def arm(self, step: int, parameters: Sequence[tuple[str, nn.Parameter]]) -> None:
        """At a recorded optimizer step, before the update: keep the probe's gradient and
        collect what ``backward()`` adds to it until the next step."""
        self._disarm()
        self._recorded += 1
        if self._noted or (self._recorded > _FIRST_CHECKS and self._recorded % _CHECK_EVERY):
            return
        probe = self._choose(parameters)
        if probe is None:
            return
        parameter = probe[1]
        assert parameter.grad is not None
        self._probe = probe
        self._old = parameter.grad.detach().clone()
        self._incoming = None
        self._armed_at = step
        self._handle = parameter.register_hook(self._collect)  # type: ignore[no-untyped-call]

    def check(self) -> tuple[int, torch.Tensor] | None:
        """At the next optimizer step, before the update: is its gradient the old one plus
        what came in? The armed step and the verdict (a boolean tensor where the gradient
        is), for :meth:`confirm` once it is on the host; None when there is nothing to tell."""
        handle, probe, old, incoming = self._handle, self._probe, self._old, self._incoming
        step = self._armed_at
        self._disarm()
        if handle is None or probe is None or old is None or step is None:
            return None
        grad = probe[1].grad
        if incoming is None or grad is None or grad.shape != old.shape:
            return None  # no backward reached the probe, or a gradient of another shape
        with torch.no_grad():
            return step, _carried_verdict(grad.detach(), old, incoming)

    def confirm(self, step: int, carried: bool) -> None:
        """A verdict of :meth:`check` on the host: two in a row make the note."""
        if self._noted:
            return
        if not carried:
            self._confirmed = 0
            return
        if self._confirmed == 0:
            self._carried_since = step
        self._confirmed += 1
        if self._confirmed >= _CONFIRMATIONS and self._probe is not None:
            self._noted = True
            assert self._carried_since is not None
            self._note(self._carried_since, self._probe[0])

    def remove(self) -> None:
        self._disarm()

    def _collect(self, grad: torch.Tensor) -> None:
        # Runs inside the user's backward(): it must not raise there.
        try:
            grad = grad.detach()
            self._incoming = grad.clone() if self._incoming is None else self._incoming + grad
        except Exception:  # noqa: BLE001 - a failed check is no verdict
            self._incoming = None
            self._armed_at = None

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._old = self._incoming = None

    def _choose(
        self, parameters: Sequence[tuple[str, nn.Parameter]]
    ) -> tuple[str, nn.Parameter] | None:
        """The probe: the last one while it has a gradient, else the smallest parameter with
        a dense gradient of at least ``_PROBE_ELEMENTS`` values (the largest when none is)."""
        if self._probe is not None and self._probe[1].grad is not None:
            return self._probe
        graded = [
            (name, p)
            for name, p in parameters
            if p.requires_grad and p.grad is not None and p.grad.layout == torch.strided
        ]
        if not graded:
            return None
        large = [entry for entry in graded if entry[1].numel() >= _PROBE_ELEMENTS]
        if large:
            return min(large, key=lambda entry: entry[1].numel())
        return max(graded, key=lambda entry: entry[1].numel())
