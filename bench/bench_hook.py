"""Cost of the PyTorch hook on a training step, against the same loop without it, in one run.

A CPU MLP (``--layers`` hidden layers of ``--width`` units with ReLU, batch ``--batch``) trains
with SGD. The hooked copy records, at every step, statistics of every weight, bias, gradient
and ReLU output, the loss and the learning rate, and keeps full tensors every ``--raw-every``
steps (the defaults of :func:`dbgcli.torch.attach`; ``--stats-every N`` records tensors every
N steps instead).

The machine is shared and its speed drifts within seconds, so the plain and the hooked copy
train side by side on the same batches, one step each in turn (which goes first alternates),
and every step is timed. The overhead is that of the mean step over the run, which includes
the steps that keep full tensors and the writer's periodic commits; the first ``--warmup``
steps are left out on both sides (the hook's first records create the trace's datasets).
Medians split it into steps that record tensors and steps that only record the loss and the
learning rate, which is what ``stats_every`` trades between. Attaching (creating the trace)
and closing (the last commit) are timed apart. ``--repeat`` runs the race that many times and
reports each overhead and their median.

``--hook-only`` records into a writer whose ``add_tensor``, ``add_tensor_stats`` and
``add_scalar`` do nothing, which separates what the hook does on the training thread (forward
and optimizer hooks, torch's statistics of every tensor) from the writer's (buffering, HDF5).
``--profile`` profiles one hooked run with pyinstrument.

It also times one plain reduction over every weight and gradient: statistics of each of them
at every step cannot cost less than that, which puts a floor under the overhead of
``--stats-every 1`` on small batches.

Run: ``python bench/bench_hook.py [--repeat 3] [--steps 300] [--batch 64] [--stats-every 1]
[--hook-only] [--profile]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from dbgcli import TraceWriter
from dbgcli.torch import TorchHook, attach
from dbgcli.torch._stats import activation_statistics


class NullWriter(TraceWriter):
    """A trace writer that drops every record: what remains is the hook's own cost."""

    def add_tensor(self, tag: str, value: Any, step: int, **options: Any) -> None:
        """Drop the record."""

    def add_scalar(self, tag: str, value: Any, step: int, **options: Any) -> None:
        """Drop the record."""

    def add_tensor_stats(self, tag: str, stats: Any, step: int, **options: Any) -> None:
        """Drop the record."""


class Model(NamedTuple):
    network: nn.Sequential
    optimizer: torch.optim.Optimizer


def make_model(args: argparse.Namespace) -> Model:
    """A fresh model and optimizer, the same for every call (fixed seed)."""
    torch.manual_seed(0)
    modules: list[nn.Module] = []
    for _ in range(args.layers):
        modules += [nn.Linear(args.width, args.width), nn.ReLU()]
    modules.append(nn.Linear(args.width, args.classes))
    network = nn.Sequential(*modules)
    return Model(network, torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9))


def attach_hook(args: argparse.Namespace, model: Model, trace: Path) -> TorchHook:
    if args.hook_only:
        writer = NullWriter(trace, overwrite=True)
        return attach(*model, writer, stats_every=args.stats_every)
    return attach(
        *model, trace, raw_every=args.raw_every, stats_every=args.stats_every, overwrite=True
    )


def train_step(model: Model, x: torch.Tensor, y: torch.Tensor, hook: TorchHook | None) -> float:
    """Seconds of one training step."""
    start = time.perf_counter()
    model.optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model.network(x), y)
    if hook is not None:
        hook.record_loss(loss)
    loss.backward()
    model.optimizer.step()
    return time.perf_counter() - start


class Race(NamedTuple):
    """Per-step seconds of the plain and the hooked copy after the warm-up, which of those
    steps recorded tensors, and the seconds of attaching plus closing."""

    plain: np.ndarray
    hooked: np.ndarray
    recorded: np.ndarray
    once: float

    def overhead(self) -> float:
        return float(self.hooked.mean() / self.plain.mean() - 1)


def race(
    args: argparse.Namespace, data: list[tuple[torch.Tensor, torch.Tensor]], trace: Path
) -> Race:
    """The plain and the hooked copy train on the same batches, one step each in turn."""
    plain, hooked = make_model(args), make_model(args)
    start = time.perf_counter()
    hook = attach_hook(args, hooked, trace)
    once = time.perf_counter() - start
    times = np.empty((len(data), 2))
    for step, (x, y) in enumerate(data):
        if step % 2:
            times[step, 1] = train_step(hooked, x, y, hook)
            times[step, 0] = train_step(plain, x, y, None)
        else:
            times[step, 0] = train_step(plain, x, y, None)
            times[step, 1] = train_step(hooked, x, y, hook)
    start = time.perf_counter()
    hook.remove()
    hook.writer.close()  # a writer passed to attach (the NullWriter) stays open otherwise
    once += time.perf_counter() - start
    steps = np.arange(args.warmup, len(data))
    recorded = steps % args.stats_every == 0
    return Race(times[args.warmup :, 0], times[args.warmup :, 1], recorded, once)


def activation_kernels(args: argparse.Namespace, folder: Path) -> tuple[float, float]:
    """Seconds per ReLU output of one batch: the writer's numpy statistics and unit measure
    (of tensors recorded with ``add_tensor``) against torch's (what the hook uses)."""
    generator = torch.Generator().manual_seed(1)
    output = torch.relu(torch.randn(args.batch, args.width, generator=generator))
    records = max(args.steps, 20)
    numpy_times, torch_times = [], []
    for _ in range(args.repeat):
        with TraceWriter(folder / "kernels.h5", raw_every=0, overwrite=True) as writer:
            start = time.perf_counter()
            for step in range(records):
                writer.add_tensor("act", output, step, collection="activations", kind="relu")
            writer.flush()  # statistics of a block are computed when it is finished
            numpy_times.append((time.perf_counter() - start) / records)
        start = time.perf_counter()
        for _ in range(records):
            _, shares = activation_statistics(output, "relu", "activations")
            assert shares is not None
            shares.cpu().numpy()
        torch_times.append((time.perf_counter() - start) / records)
    return min(numpy_times), min(torch_times)


def one_read_of_parameters(args: argparse.Namespace) -> float:
    """Seconds for one torch reduction over every weight and gradient of the model: the
    least that statistics of them all can cost, whatever the kernel."""
    tensors = [p.detach() for p in make_model(args).network.parameters()]
    tensors += [torch.randn_like(t) for t in tensors]
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for _ in range(args.steps):
            torch.stack([t.sum() for t in tensors]).tolist()
        times.append((time.perf_counter() - start) / args.steps)
    return min(times)


def profile(
    args: argparse.Namespace, data: list[tuple[torch.Tensor, torch.Tensor]], trace: Path
) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    race(args, data, trace)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def report(args: argparse.Namespace, races: list[Race]) -> Race:
    """Print the overheads of all races and the details of the median one; return it."""
    races = sorted(races, key=Race.overhead)
    middle = races[len(races) // 2]
    print(
        f"MLP {args.layers}x{args.width}, batch {args.batch}, {args.steps} steps "
        f"(first {args.warmup} left out), statistics every {args.stats_every}, "
        f"raw every {args.raw_every}, torch threads {torch.get_num_threads()}, "
        f"{len(races)} races" + (", hook only (records dropped)" if args.hook_only else "")
    )
    each = ", ".join(f"{r.overhead() * 100:+.1f}" for r in races)
    print(f"  overhead      {middle.overhead() * 100:+8.1f} %   (mean step; races: {each} %)")
    print(f"  without hook  {middle.plain.mean() * 1e3:8.2f} ms/step (mean)")
    print(f"  with hook     {middle.hooked.mean() * 1e3:8.2f} ms/step (mean)")
    for label, chosen in (
        ("recording tensors", middle.recorded),
        ("other steps", ~middle.recorded),
    ):
        if chosen.any():
            extra = np.median(middle.hooked[chosen]) - np.median(middle.plain[chosen])
            print(
                f"    {label:18s} {extra * 1e3:+6.2f} ms/step (median, {chosen.sum()} steps; "
                f"plain {np.median(middle.plain[chosen]) * 1e3:.2f} ms)"
            )
    print(f"  attach+close  {middle.once * 1e3:8.2f} ms once")
    return middle


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--raw-every", type=int, default=100)
    parser.add_argument(
        "--warmup", type=int, default=20, help="steps left out of the per-step time"
    )
    parser.add_argument(
        "--stats-every", type=int, default=1, help="record tensors every this many steps"
    )
    parser.add_argument("--repeat", type=int, default=3, help="races to run")
    parser.add_argument(
        "--hook-only", action="store_true", help="record into a writer that drops everything"
    )
    parser.add_argument("--profile", action="store_true", help="profile one hooked run afterwards")
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 race: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeat, args.warmup = 10, 1, 2
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 0 and less than --steps")

    generator = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(args.batch, args.width, generator=generator),
            torch.randint(0, args.classes, (args.batch,), generator=generator),
        )
        for _ in range(args.steps)
    ]
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "bench.h5"
        race(args, data[: args.warmup + 1], trace)  # thread pools, allocator, first HDF5 file
        middle = report(args, [race(args, data, trace) for _ in range(args.repeat)])
        print(f"  trace         {trace.stat().st_size / 1e6:8.2f} MB")
        by_numpy, by_torch = activation_kernels(args, Path(folder))
        print(
            f"  statistics of one {args.batch}x{args.width} ReLU output: writer's numpy "
            f"{by_numpy * 1e6:.0f} us, the hook's torch {by_torch * 1e6:.0f} us "
            f"(torch / numpy = {by_torch / by_numpy:.1f})"
        )
        floor = one_read_of_parameters(args)
        print(
            f"  one torch sum over every weight and gradient: {floor * 1e6:.0f} us, "
            f"{floor / middle.plain.mean() * 100:.1f} % of a plain step (the floor for "
            "statistics of them all every step)"
        )
        if args.profile:
            profile(args, data, trace)


if __name__ == "__main__":
    main()
