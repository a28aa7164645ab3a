"""Cost of the PyTorch hook on a training step, against the same loop without it, in one run.

Models (``--model``): ``mlp``, a CPU MLP (``--layers`` hidden layers of ``--width`` units with
ReLU, SGD with momentum); ``transformer``, a small ``nn.TransformerEncoder`` (9 layers, d_model
64, GELU modules, AdamW: 111 parameter tensors) classifying token sequences; ``cnn``, two
convolutions with ReLU and pooling and a linear head on 3x32x32 images. All train at batch
``--batch``. The hooked copy records statistics of every weight, bias, gradient and activation
of every ``--stats-every``-th step, the loss and the learning rate every step, and full tensors
every ``--raw-every`` steps. ``--all`` runs the three models at the hook's default settings
(``--stats-every 10`` given explicitly) and then the cost of one recorded step for 200 small
parameter tensors, and prints the figures against their targets.

The machine is shared and its speed drifts within seconds, so the plain and the hooked copy
train side by side on the same batches, one step each in turn (which goes first alternates),
and every step is timed. The overhead is that of the mean step over the run, which includes the
steps that record tensors, those that keep full tensors and the writer's periodic commits; the
first ``--warmup`` steps are left out on both sides, and the hook is flushed after them: the
first commit creates the trace's datasets, a one-off cost (about 0.3 s for the transformer's
940) timed with attaching, not a per-step one. The copy that goes second in a step follows the
other copy, whose tensors fill the caches, where the one that goes first follows itself: that
costs it a few percent of a step (printed as the order's cost), and with an even
``--stats-every`` it would weigh on every recorded step, which the hooked copy always takes
second. It cancels in the mean, and is taken out of each step's extra seconds for what
follows (estimated from the steps that neither record nor follow a record: with
``--stats-every`` 1 or 2 there are none, and it is left in). Medians of those split the
overhead into steps that record tensors (``extra_rec``) and the others (``extra_other``), and
the cost model ``extra_rec / N + extra_other * (N - 1) / N`` (N = ``--stats-every``) predicts
the mean overhead from them. The overhead is also split
by kind of step (what each kind's extra seconds add to it; the parts sum to it): the steps
that record tensors, those that also keep full tensors, the step after each record, and the
rest. Attaching (creating the trace), the first commit and closing (the last commit) are timed
apart, and the writer's commits during the timed steps are counted (a race's clock counts both
copies, so it reaches the commit interval twice as fast per hooked step as a run alone would).
``--repeat`` runs the race that many times and reports each overhead and their median. A
shared machine can switch between two speeds within a race (the plain MLP's two-thread step
on the project's VM: about 3.7 or 5.5 ms): the steps of every race, in blocks of five recording
cycles, are split at the largest gap between their mean plain steps if it is at least 1.2x, and
the overhead, and what the step after a record adds to it, are printed for each speed.

``--hook-only`` records into a writer whose ``add_tensor``, ``add_tensor_stats``,
``add_tensor_stats_rows`` and ``add_scalar`` do nothing, which separates what the hook does on
the training thread (forward and optimizer hooks, torch's statistics) from the writer's
(buffering, HDF5). ``--include`` and ``--exclude`` pass globs to ``attach`` to leave parts
of the recording out (``--include nothing``: the hook's calls with nothing to record).
``--profile`` profiles one hooked run with pyinstrument (``pip install pyinstrument``);
``--breakdown`` times the parts of the hook (reductions of weights and gradients, of
activations, the hand-over to the writer) per recorded step in one hooked run.

Run: ``python bench/bench_hook.py [--all] [--model mlp] [--repeat 3] [--steps 300] [--batch 64]
[--stats-every 1] [--threads N] [--hook-only] [--include GLOB] [--exclude GLOB] [--profile]
[--breakdown] [--small-only]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from dbgcli import TraceWriter
from dbgcli.torch import TorchHook, attach

Batch = tuple[torch.Tensor, torch.Tensor]

#: Targets of issue #15: overhead at the defaults, and one recorded step of 200 small tensors.
OVERHEAD_TARGET = 0.05
SMALL_TENSORS_TARGET_MS = 3.0
DEFAULT_STATS_EVERY = 10
#: The writer's default commit interval.
FLUSH_SECS = float(inspect.signature(TraceWriter).parameters["flush_secs"].default)


class NullWriter(TraceWriter):
    """A trace writer that drops every record: what remains is the hook's own cost."""

    def add_tensor(self, tag: str, value: Any, step: int, **options: Any) -> None:
        """Drop the record."""

    def add_scalar(self, tag: str, value: Any, step: int, **options: Any) -> None:
        """Drop the record."""

    def add_tensor_stats(self, tag: str, stats: Any, step: int, **options: Any) -> None:
        """Drop the record."""

    def add_tensor_stats_rows(self, tags: Any, rows: Any, step: int, **options: Any) -> None:
        """Drop the records (the hook's statistics and full tensors arrive this way)."""


class Model(NamedTuple):
    network: nn.Module
    optimizer: torch.optim.Optimizer


class TokenClassifier(nn.Module):
    """Embedding, a TransformerEncoder whose activations are GELU modules, mean pool, head."""

    def __init__(self, vocabulary: int, width: int, layers: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        layer = nn.TransformerEncoderLayer(
            width, 4, 2 * width, dropout=0.0, activation=nn.GELU(), batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.encoder(self.embed(tokens))
        logits: torch.Tensor = self.head(hidden.mean(dim=1))
        return logits


VOCABULARY, SEQUENCE = 1000, 32


def make_network(args: argparse.Namespace) -> nn.Module:
    if args.model == "transformer":
        return TokenClassifier(VOCABULARY, 64, 9, args.classes)
    if args.model == "cnn":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, args.classes),
        )
    modules: list[nn.Module] = []
    for _ in range(args.layers):
        modules += [nn.Linear(args.width, args.width), nn.ReLU()]
    modules.append(nn.Linear(args.width, args.classes))
    return nn.Sequential(*modules)


def make_model(args: argparse.Namespace) -> Model:
    """A fresh model and optimizer, the same for every call (fixed seed)."""
    torch.manual_seed(0)
    network = make_network(args)
    if args.model == "transformer":
        return Model(network, torch.optim.AdamW(network.parameters(), lr=1e-3))
    return Model(network, torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9))


def make_data(args: argparse.Namespace) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)

    def inputs() -> torch.Tensor:
        if args.model == "transformer":
            return torch.randint(0, VOCABULARY, (args.batch, SEQUENCE), generator=generator)
        if args.model == "cnn":
            return torch.randn(args.batch, 3, 32, 32, generator=generator)
        return torch.randn(args.batch, args.width, generator=generator)

    return [
        (inputs(), torch.randint(0, args.classes, (args.batch,), generator=generator))
        for _ in range(args.steps)
    ]


def describe(args: argparse.Namespace) -> str:
    network = make_network(args)
    tensors = sum(1 for _ in network.parameters())
    values = sum(p.numel() for p in network.parameters())
    name = f"MLP {args.layers}x{args.width}" if args.model == "mlp" else args.model
    return f"{name} ({tensors} parameter tensors, {values:,} values)"


def attach_hook(args: argparse.Namespace, model: Model, trace: Path) -> TorchHook:
    chosen = {"stats_every": args.stats_every, "include": args.include, "exclude": args.exclude}
    if args.hook_only:
        writer = NullWriter(trace, overwrite=True, raw_every=args.raw_every)
        return attach(*model, writer, **chosen)
    return attach(*model, trace, raw_every=args.raw_every, overwrite=True, **chosen)


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
    steps recorded tensors, which kept full tensors and in which the hooked copy went first,
    and the seconds of attaching, the first commit and closing."""

    plain: np.ndarray
    hooked: np.ndarray
    recorded: np.ndarray
    raw: np.ndarray
    hooked_first: np.ndarray
    once: float
    commits: tuple[float, ...]  # seconds of each of the writer's commits during those steps

    def overhead(self) -> float:
        return float(self.hooked.mean() / self.plain.mean() - 1)

    def after_record(self) -> np.ndarray:
        """Which steps follow a step that recorded tensors."""
        after = np.zeros_like(self.recorded)
        after[1:] = self.recorded[:-1]
        return after & ~self.recorded

    def order_cost(self) -> float | None:
        """Seconds a step costs the copy that goes second: it follows the other copy, whose
        tensors fill the caches, where the one that goes first follows itself (the order
        alternates). Half the gap between the median extra seconds of the two orders, over
        the steps that neither record tensors nor follow a record; None without such steps
        of both orders (``--stats-every`` 1 or 2)."""
        extra = self.hooked - self.plain
        usual = ~self.recorded & ~self.after_record()
        second, first = usual & ~self.hooked_first, usual & self.hooked_first
        if not (second.any() and first.any()):
            return None
        return float(np.median(extra[second]) - np.median(extra[first])) / 2

    def extras(self) -> np.ndarray:
        """Per step, the hooked copy's extra seconds with the order of the race taken out.
        With an even ``--stats-every`` every recorded step is one where the hooked copy goes
        second, and the step after one where it goes first: without this, the medians of
        both would carry the order's cost, in opposite directions. (Over as many steps of each
        order, as the default 280, their sum is that of the raw differences.)"""
        order = self.order_cost()
        extra = self.hooked - self.plain
        if order is None:
            return extra
        return np.where(self.hooked_first, extra + order, extra - order)

    def extra(self, chosen: np.ndarray) -> float:
        """Median extra seconds of the chosen steps (0 if none)."""
        if not chosen.any():
            return 0.0
        return float(np.median(self.extras()[chosen]))

    def share(self, chosen: np.ndarray) -> float:
        """What the chosen steps add to the overhead: their extra seconds over all plain ones
        (the shares of a partition of the steps sum to the overhead)."""
        return float(self.extras()[chosen].sum() / self.plain.sum())

    def predicted(self, every: int) -> float:
        """The cost model: extra per recorded step / N + extra per other step * (N - 1) / N,
        over the plain mean step."""
        model = self.extra(self.recorded) / every
        model += self.extra(~self.recorded) * (every - 1) / every
        return model / float(self.plain.mean())


#: A gap of at least this ratio between the sorted mean plain steps of the blocks of steps
#: splits them into two speeds of the machine (see ``machine_speeds``).
SPEED_GAP = 1.2


class Speed(NamedTuple):
    """The blocks of steps in which the machine ran at one speed."""

    blocks: int
    plain: float  # mean plain step, seconds
    overhead: float
    after_record: float  # what the steps after a record add to the overhead


def machine_speeds(races: list[Race], block: int) -> list[Speed]:
    """The blocks of ``block`` consecutive steps of every race, split at the largest gap
    between their mean plain steps when it is at least :data:`SPEED_GAP` and each side holds
    a tenth of the blocks; else one group. A shared machine (a VM whose two vCPUs the host
    sometimes runs slower together) can switch within a race between two speeds, at which the
    hook does not cost the same, and the share of each in a run decides its figure."""
    rows = []  # (mean plain step, plain seconds, extra seconds, extra after a record)
    for r in races:
        extras, after = r.extras(), r.after_record()
        for start in range(0, len(r.plain) - block + 1, block):
            part = slice(start, start + block)
            rows.append(
                (
                    float(r.plain[part].mean()),
                    float(r.plain[part].sum()),
                    float(extras[part].sum()),
                    float(extras[part][after[part]].sum()),
                )
            )
    if not rows:
        return []
    table = np.array(sorted(rows))
    groups = [table]
    if len(table) >= 10:
        ratios = table[1:, 0] / table[:-1, 0]
        low = len(table) // 10
        cut = int(np.argmax(ratios[max(low - 1, 0) : len(ratios) - low])) + max(low - 1, 0)
        if ratios[cut] >= SPEED_GAP:
            groups = [table[: cut + 1], table[cut + 1 :]]
    return [
        Speed(
            len(g),
            float(g[:, 0].mean()),
            g[:, 2].sum() / g[:, 1].sum(),
            g[:, 3].sum() / g[:, 1].sum(),
        )
        for g in groups
    ]


def race(args: argparse.Namespace, data: list[Batch], trace: Path) -> Race:
    """The plain and the hooked copy train on the same batches, one step each in turn."""
    plain, hooked = make_model(args), make_model(args)
    start = time.perf_counter()
    hook = attach_hook(args, hooked, trace)
    once = time.perf_counter() - start
    commits: list[float] = []
    commit = hook.writer._commit

    def timed_commit() -> None:
        start = time.perf_counter()
        try:
            commit()
        finally:
            commits.append(time.perf_counter() - start)

    hook.writer._commit = timed_commit  # type: ignore[method-assign]
    times = np.empty((len(data), 2))
    for step, (x, y) in enumerate(data):
        if step == args.warmup:
            start = time.perf_counter()
            hook.flush()
            once += time.perf_counter() - start
            commits.clear()
        if step % 2:
            times[step, 1] = train_step(hooked, x, y, hook)
            times[step, 0] = train_step(plain, x, y, None)
        else:
            times[step, 0] = train_step(plain, x, y, None)
            times[step, 1] = train_step(hooked, x, y, hook)
    in_window = tuple(commits)
    steps = np.arange(args.warmup, len(data))
    recorded = steps % args.stats_every == 0
    # Asked again, the writer gives the answer it gave the hook at each recorded step (the
    # steps it kept stay kept; the bytes that refused the others only grow), so that a model
    # large enough for raw_budget to skip steps is split right.
    raw = recorded & np.array([hook.writer.raw_due(int(step)) for step in steps], dtype=bool)
    start = time.perf_counter()
    hook.remove()
    hook.writer.close()  # a writer passed to attach (the NullWriter) stays open otherwise
    once += time.perf_counter() - start
    hooked_first = steps % 2 == 1
    return Race(
        times[args.warmup :, 0],
        times[args.warmup :, 1],
        recorded,
        raw,
        hooked_first,
        once,
        in_window,
    )


def profile(args: argparse.Namespace, data: list[Batch], trace: Path) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    race(args, data, trace)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


#: The parts of the hook's work ``--breakdown`` times: (label, owner, method name).
PARTS = (
    ("reductions of weights and gradients", "Reducer", "reduce"),
    ("reductions of activations", "TorchHook", "_reduce_held"),
    ("hand-over to the writer", "TorchHook", "_hand_over"),
    ("all of the optimizer-step hook", "TorchHook", "_before_optimizer_step"),
)


def breakdown(args: argparse.Namespace, data: list[Batch], trace: Path) -> None:
    """Time each part of the hook's work in one hooked run, per recorded step."""
    from dbgcli.torch import _hook, _stats

    owners = {"Reducer": _stats.Reducer, "TorchHook": _hook.TorchHook}
    spent = dict.fromkeys((label for label, *_ in PARTS), 0.0)
    originals = []
    for label, owner, name in PARTS:
        original = getattr(owners[owner], name)
        originals.append((owners[owner], name, original))

        def timed(*a: Any, _original: Any = original, _label: str = label, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - start

        setattr(owners[owner], name, timed)
    try:
        model = make_model(args)
        hook = attach_hook(args, model, trace)
        for step, (x, y) in enumerate(data):
            if step == args.warmup:
                spent.update(dict.fromkeys(spent, 0.0))
            train_step(model, x, y, hook)
        hook.remove()
        hook.writer.close()
    finally:
        for owner_class, name, original in originals:
            setattr(owner_class, name, original)
    recorded = sum(1 for step in range(args.warmup, len(data)) if step % args.stats_every == 0)
    print(f"  where the hook's time goes, per recorded step ({recorded} recorded steps):")
    for label, milliseconds in spent.items():
        print(f"    {label:38s} {milliseconds / recorded * 1e3:6.2f} ms")


def report(args: argparse.Namespace, races: list[Race]) -> Race:
    """Print the overheads of all races and the details of the median one; return it."""
    races = sorted(races, key=Race.overhead)
    middle = races[len(races) // 2]
    print(
        f"{describe(args)}, batch {args.batch}, {args.steps} steps "
        f"(first {args.warmup} left out), statistics every {args.stats_every}, "
        f"raw every {args.raw_every}, torch threads {torch.get_num_threads()}, "
        f"{len(races)} races"
        + (", hook only (records dropped)" if args.hook_only else "")
        + (f", include {args.include}" if args.include else "")
        + (f", exclude {args.exclude}" if args.exclude else "")
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
            print(
                f"    {label:18s} {middle.extra(chosen) * 1e3:+6.2f} ms/step (median, "
                f"{chosen.sum()} steps; plain {np.median(middle.plain[chosen]) * 1e3:.2f} ms)"
            )
    predicted = [r.predicted(args.stats_every) * 100 for r in races]
    print(
        f"  cost model    {middle.extra(middle.recorded) * 1e3:.2f} ms / {args.stats_every} + "
        f"{middle.extra(~middle.recorded) * 1e3:.2f} ms = "
        f"{middle.predicted(args.stats_every) * middle.plain.mean() * 1e3:.2f} ms/step, "
        f"{middle.predicted(args.stats_every) * 100:+.1f} % of a plain step "
        f"(races: {', '.join(f'{p:+.1f}' for p in sorted(predicted))} %)"
    )
    after = middle.after_record()
    kinds = (
        ("recording tensors", middle.recorded & ~middle.raw),
        ("keeping full tensors", middle.raw),
        ("the step after a record", after),
        ("other steps", ~middle.recorded & ~after),
    )
    print(
        "  overhead by kind of step  "
        + ", ".join(f"{label} {middle.share(chosen) * 100:+.1f}" for label, chosen in kinds)
        + " %"
    )
    order = middle.order_cost()
    print(
        "  order of the race   "
        + (
            "not estimated (every step records tensors or follows a record)"
            if order is None
            else f"the copy going second pays {order * 1e3:+.2f} ms/step"
        )
    )
    block = 5 * args.stats_every
    speeds = machine_speeds(races, block)
    if len(speeds) == 2:
        fast, slow = speeds
        print(
            f"  machine speed two, in blocks of {block} steps: plain step "
            f"{fast.plain * 1e3:.2f} ms ({fast.blocks} blocks) and {slow.plain * 1e3:.2f} ms "
            f"({slow.blocks}); overhead {fast.overhead * 100:+.1f} and {slow.overhead * 100:+.1f} "
            f"%, the step after a record {fast.after_record * 100:+.1f} and "
            f"{slow.after_record * 100:+.1f} of it"
        )
    elif speeds:
        print(f"  machine speed one, in blocks of {block} steps (no gap of {SPEED_GAP}x)")
    print(f"  attach, first commit, close {middle.once * 1e3:8.2f} ms once")
    counts = ", ".join(str(len(r.commits)) for r in races)
    spent = [c for r in races for c in r.commits]
    share = sum(sum(r.commits) / r.plain.sum() for r in races) / len(races)
    seconds = float(np.median([r.plain.sum() + r.hooked.sum() for r in races]))
    print(
        f"  commits       {counts} during the races' timed steps ({seconds:.1f} s each; the "
        f"writer commits every {FLUSH_SECS:.0f} s)"
        + (
            f", {np.median(spent) * 1e3:.1f} ms each (median), {share * 100:+.1f} % of a plain "
            "step on average"
            if spent
            else ""
        )
    )
    return middle


def run_model(args: argparse.Namespace, folder: Path) -> Race:
    data = make_data(args)
    trace = folder / f"bench-{args.model}.h5"
    race(args, data[: args.warmup + 1], trace)  # thread pools, allocator, first HDF5 file
    middle = report(args, [race(args, data, trace) for _ in range(args.repeat)])
    if not args.hook_only:
        print(f"  trace         {trace.stat().st_size / 1e6:8.2f} MB")
    if args.breakdown:
        breakdown(args, data, trace)
    if args.profile:
        profile(args, data, trace)
    return middle


def small_tensors_step(args: argparse.Namespace, folder: Path) -> tuple[float, float, float]:
    """Milliseconds of one recorded step (weights, biases and gradients) of 100 Linear(16, 16)
    layers, 200 parameter tensors: median wall time, median CPU time of the training thread,
    and the 90th percentile of the wall time."""
    torch.manual_seed(0)
    network = nn.Sequential(*[nn.Linear(16, 16) for _ in range(100)])
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
    network(torch.randn(8, 16)).sum().backward()
    calls = max(args.steps, 40)
    wall, cpu = np.empty(calls), np.empty(calls)
    with attach(network, None, folder / "small.h5", raw_every=0, stats_every=1) as hook:
        for step in range(calls + 20):
            hook.step = step
            start, start_cpu = time.perf_counter(), time.thread_time()
            hook.record_optimizer_step(optimizer)
            if step >= 20:  # the first records create the trace's datasets
                wall[step - 20] = time.perf_counter() - start
                cpu[step - 20] = time.thread_time() - start_cpu
    return (
        float(np.median(wall) * 1e3),
        float(np.median(cpu) * 1e3),
        float(np.percentile(wall, 90) * 1e3),
    )


def run_all(args: argparse.Namespace, folder: Path) -> None:
    rows: list[tuple[str, Race, int]] = []
    for model in ("mlp", "transformer", "cnn"):
        setup = argparse.Namespace(**vars(args))
        setup.model = model
        setup.stats_every = DEFAULT_STATS_EVERY if args.stats_every == 1 else args.stats_every
        if model == "transformer":
            setup.batch = 32
        middle = run_model(setup, folder)
        rows.append((describe(setup) + f", batch {setup.batch}", middle, setup.stats_every))
        print()
    wall, cpu, p90 = small_tensors_step(args, folder)
    print("Summary (targets of issue #15)")
    for name, middle, every in rows:
        verdict = "met" if middle.overhead() < OVERHEAD_TARGET else "NOT met"
        print(
            f"  {name}, statistics every {every}: {middle.overhead() * 100:+.1f} % "
            f"(cost model {middle.predicted(every) * 100:+.1f} %; target < "
            f"{OVERHEAD_TARGET * 100:.0f} %: {verdict})"
        )
    verdict = "met" if wall <= SMALL_TENSORS_TARGET_MS else "NOT met"
    print(
        f"  one recorded step of 200 small parameter tensors (weights and gradients): "
        f"{wall:.2f} ms median wall ({cpu:.2f} ms CPU of the training thread, 90th percentile "
        f"{p90:.2f} ms; target <= {SMALL_TENSORS_TARGET_MS:.0f} ms: {verdict})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--all", action="store_true", help="every model at the defaults")
    parser.add_argument("--model", choices=("mlp", "transformer", "cnn"), default="mlp")
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
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--hook-only", action="store_true", help="record into a writer that drops everything"
    )
    for option in ("include", "exclude"):
        parser.add_argument(
            f"--{option}",
            action="append",
            metavar="GLOB",
            help=f"passed to attach's {option}= (repeatable): what each part of the recording "
            "costs; --include nothing leaves only the hook's calls",
        )
    parser.add_argument("--profile", action="store_true", help="profile one hooked run afterwards")
    parser.add_argument(
        "--breakdown", action="store_true", help="time the parts of the hook in one hooked run"
    )
    parser.add_argument(
        "--small-only",
        action="store_true",
        help="only the recorded step of 200 small tensors, in a fresh process, three times",
    )
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 race: a smoke run")
    args = parser.parse_args()
    if args.profile and importlib.util.find_spec("pyinstrument") is None:
        parser.error("--profile needs pyinstrument: pip install pyinstrument")  # before the races
    if args.quick:
        args.steps, args.repeat, args.warmup = 20, 1, 2
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 0 and less than --steps")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        if args.small_only:
            for run in range(3):
                (Path(folder) / str(run)).mkdir()
                wall, cpu, p90 = small_tensors_step(args, Path(folder) / str(run))
                print(
                    f"one recorded step of 200 small parameter tensors: {wall:.2f} ms median "
                    f"wall ({cpu:.2f} ms CPU, 90th percentile {p90:.2f} ms)"
                )
            return
        runner: Callable[[argparse.Namespace, Path], Any] = run_all if args.all else run_model
        runner(args, Path(folder))


if __name__ == "__main__":
    main()
