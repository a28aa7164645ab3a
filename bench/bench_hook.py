"""Cost of the PyTorch hook on a training step, against the same loop without it, in one run.

A CPU MLP (``--layers`` hidden layers of ``--width`` units with ReLU, batch ``--batch``) trains
with SGD. The hooked loop records, every step, statistics of every weight, bias, gradient and
ReLU output, the loss and the learning rate, and keeps full tensors every ``--raw-every``
steps (the defaults of :func:`dbgcli.torch.attach`; ``--stats-every N`` records tensors every
N steps instead). The overhead is that of a training step in a long run: only steps after the
first ``--warmup`` are timed, on both sides (the hook's first records create the trace's
datasets, once). Attaching (creating the trace) and closing (the last commit) are timed
apart and reported beside it: a short benchmark would otherwise spread them over too few
steps.

The machine is shared and noisy, so plain and hooked runs alternate and the best of
``--repeat`` runs of each is kept. ``--profile`` then profiles one hooked run with pyinstrument.
``--hook-only`` records into a writer whose ``add_tensor``, ``add_tensor_stats`` and
``add_scalar`` do nothing, which separates what the hook does on the training thread before
handing records over (forward and optimizer hooks, torch's statistics of parameters and
gradients) from the writer's work (numpy statistics of CPU activations, buffering, HDF5).

It also times one plain reduction over every weight and gradient: statistics of each of them
at every step cannot cost less than that, which puts a floor under the overhead of
``--stats-every 1`` on small batches.

Run: ``python bench/bench_hook.py [--repeat 7] [--steps 200] [--batch 64] [--stats-every 1]
[--hook-only] [--profile]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dbgcli import TraceWriter
from dbgcli.torch import attach
from dbgcli.torch._stats import statistics, unit_shares


class NullWriter(TraceWriter):
    """A trace writer that drops every record: what remains is the hook's own cost."""

    def add_tensor(self, tag: str, value: Any, step: int, **options: Any) -> None:
        """Drop the record."""

    def add_scalar(self, tag: str, value: Any, step: int, **options: Any) -> None:
        """Drop the record."""

    def add_tensor_stats(self, tag: str, stats: Any, step: int, **options: Any) -> None:
        """Drop the record."""


def make_model(width: int, layers: int, classes: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(width, width), nn.ReLU()]
    modules.append(nn.Linear(width, classes))
    return nn.Sequential(*modules)


def train(
    args: argparse.Namespace, data: list[tuple[torch.Tensor, torch.Tensor]], trace: Path | None
) -> tuple[float, float]:
    """Seconds per training step after the first ``--warmup`` steps, and seconds of
    attaching and closing, of one run (a fresh model each run, same seed)."""
    torch.manual_seed(0)
    model = make_model(args.width, args.layers, args.classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    hook = None
    if trace is not None and args.hook_only:
        writer = NullWriter(trace, overwrite=True)
        hook = attach(model, optimizer, writer, stats_every=args.stats_every)
    elif trace is not None:
        hook = attach(
            model,
            optimizer,
            trace,
            raw_every=args.raw_every,
            stats_every=args.stats_every,
            overwrite=True,
        )
    attached = warm = time.perf_counter()
    for index, (x, y) in enumerate(data):
        if index == args.warmup:
            warm = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        if hook is not None:
            hook.record_loss(loss)
        loss.backward()
        optimizer.step()
    trained = time.perf_counter()
    if hook is not None:
        hook.remove()
        hook.writer.close()  # a writer passed to attach (the NullWriter) stays open otherwise
    once = attached - start + time.perf_counter() - trained
    return (trained - warm) / (len(data) - args.warmup), once


def activation_kernels(args: argparse.Namespace, folder: Path) -> tuple[float, float]:
    """Seconds per ReLU output of one batch: the writer's numpy statistics (what the hook uses
    on the CPU) against torch's statistics and unit measure (what it uses on other devices)."""
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
            statistics([output], l1=True, signs=True)
            shares = unit_shares(output, "relu", "activations")
            assert shares is not None
            shares.cpu().numpy()
        torch_times.append((time.perf_counter() - start) / records)
    return min(numpy_times), min(torch_times)


def one_read_of_parameters(args: argparse.Namespace) -> float:
    """Seconds for one torch reduction over every weight and gradient of the model: the
    least that statistics of them all can cost, whatever the kernel."""
    torch.manual_seed(0)
    tensors = [p.detach() for p in make_model(args.width, args.layers, args.classes).parameters()]
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
    train(args, data, trace)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--raw-every", type=int, default=100)
    parser.add_argument(
        "--warmup", type=int, default=20, help="steps left out of the per-step time"
    )
    parser.add_argument(
        "--stats-every", type=int, default=1, help="record tensors every this many steps"
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--hook-only", action="store_true", help="record into a writer that drops everything"
    )
    parser.add_argument("--profile", action="store_true", help="profile one hooked run afterwards")
    parser.add_argument("--quick", action="store_true", help="10 steps, 2 repeats: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeat, args.warmup = 10, 2, 2
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
        train(args, data[: args.warmup + 1], None)  # thread pools, allocator, first HDF5 file
        train(args, data[: args.warmup + 1], trace)
        plain, hooked, fixed = [], [], []
        for _ in range(args.repeat):
            plain.append(train(args, data, None)[0])
            per_step, once = train(args, data, trace)
            hooked.append(per_step)
            fixed.append(once)
        trace_bytes = trace.stat().st_size
        best_plain, best_hooked = min(plain), min(hooked)
        overhead = best_hooked / best_plain - 1
        print(
            f"MLP {args.layers}x{args.width}, batch {args.batch}, {args.steps} steps, "
            f"statistics every {args.stats_every}, raw every {args.raw_every}, "
            f"torch threads {torch.get_num_threads()}, "
            f"best of {args.repeat}" + (", hook only (records dropped)" if args.hook_only else "")
        )
        print(f"  without hook  {best_plain * 1e3:8.2f} ms/step")
        print(f"  with hook     {best_hooked * 1e3:8.2f} ms/step")
        ratio = best_hooked / best_plain
        print(f"  overhead      {overhead * 100:8.1f} %   (hooked / plain = {ratio:.3f})")
        print(f"  attach+close  {min(fixed) * 1e3:8.2f} ms once")
        print(f"  trace         {trace_bytes / 1e6:8.2f} MB")
        by_numpy, by_torch = activation_kernels(args, Path(folder))
        print(
            f"  statistics of one {args.batch}x{args.width} ReLU output: writer's numpy "
            f"{by_numpy * 1e6:.0f} us, torch {by_torch * 1e6:.0f} us "
            f"(torch / numpy = {by_torch / by_numpy:.1f})"
        )
        floor = one_read_of_parameters(args)
        print(
            f"  one torch sum over every weight and gradient: {floor * 1e6:.0f} us, "
            f"{floor / best_plain * 100:.1f} % of a plain step (the floor for statistics of "
            "them all every step)"
        )
        if args.profile:
            profile(args, data, trace)


if __name__ == "__main__":
    main()
