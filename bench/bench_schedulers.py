"""GreedyLR against the usual schedules on small real optimisation problems, plus replay speed.

Two problems are trained in closed loop: after every training step the scheduler sees that
step's minibatch loss and sets the learning rate of the next step (the cadence of the GreedyLR
authors' Trainer fork).

* ``nmf``: stochastic non-negative matrix factorisation in numpy. A noisy non-negative
  ``200 x 150`` matrix of rank 8 is factorised as ``W @ H.T`` by projected SGD on minibatches of
  512 entries (gradient step, then clip at 0), 1500 steps. Final loss: mean squared error over
  all entries.
* ``mlp``: a 20-64-64-4 tanh MLP trained with plain SGD (batch 64, 600 steps) on a synthetic
  4-class problem labelled by a random teacher network with 10 % label noise. Final loss:
  cross-entropy over the whole training set (2000 samples).

Schedulers and their fixed settings (every one starts from the same base rate ``lr``):

* ``greedy``: GreedyLR with the reference defaults (factor 0.95, patience 10, no smoothing),
  bounds ``min_lr = lr / 100`` and ``max_lr = 10 lr``.
* ``greedy_smooth``: the same with ``smooth=True`` (window 50).
* ``constant``; ``step`` (x0.1 at 1/3 and 2/3 of the run); ``exponential`` (down to lr / 100
  at the end); ``cosine`` (to 0 at the end); ``plateau`` (torch defaults: factor 0.1,
  patience 10, rel threshold 1e-4, plus the same floor as GreedyLR, ``min_lr = lr / 100``);
  ``onecycle`` (torch defaults, peak ``lr``).

Fairness: the base rate is the only tuned value, tuned the same way for every scheduler: each
one takes the rate from its problem's grid with the lowest mean final loss on two tuning seeds,
which are not among the evaluation seeds. A second protocol gives every scheduler the rate that
is best for ``constant``.

Reported per problem and protocol, over the evaluation seeds: median final loss; how often
GreedyLR ends at an equal or lower final loss than each baseline, "equal" meaning within
``TOLERANCE`` (1 %) relative, i.e. ``L_greedy <= (1 + 0.01) L_baseline``; and the median number
of steps until the full loss first comes within 10 % of the best final loss any scheduler
reached on that seed, and the same for 50 % (checked every ``EVAL_EVERY`` steps; runs that
never get there are counted in the "reached" fraction and left out of the median). A last
table shows what GreedyLR did: median numbers of increases and decreases per run, and the
final rate relative to the base rate.

Replay speed: GreedyLR (``dbgcli.schedulers.simulate``) over 1,000,000 random-walk losses, the
same with the plain ``update`` loop (no fused scan), and the transformers reference over the
first 100,000 losses scaled by 10, all in the same run, each the best of three repeats because
the machine may be shared.

Run: ``python bench/bench_schedulers.py [--seeds N] [--quick] [--problems nmf mlp] [--jobs N]
[--speed-only]`` (``--jobs 2`` trains two runs at a time in separate processes; the results do
not change).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from dbgcli.schedulers import SCHEDULERS, Scheduler, greedy, simulate

TOLERANCE = 0.01
"""Relative tolerance of "equal" final losses."""
WITHIN = (0.10, 0.50)
"""Convergence targets: within 10 % and 50 % of the best final loss on the same seed."""
EVAL_EVERY = 10
TUNING_SEEDS = (1001, 1002)
GREEDY_NAMES = ("greedy", "greedy_smooth")
SCHEDULER_NAMES = (
    *GREEDY_NAMES,
    "constant",
    "step",
    "exponential",
    "cosine",
    "plateau",
    "onecycle",
)


class Run(NamedTuple):
    """One training run."""

    final: float
    """Full loss at the end (``inf`` if training diverged)."""
    curve: list[float]
    """Full loss every ``EVAL_EVERY`` steps."""
    lrs: list[float]
    """Learning rate used by each step."""


@dataclass(frozen=True)
class Problem:
    """A training problem: ``train(seed, scheduler, lr, steps) -> Run``."""

    name: str
    steps: int
    lr_grid: tuple[float, ...]
    train: Callable[[int, Scheduler, float, int], Run]


def scheduler_for(name: str, lr: float, steps: int) -> Scheduler:
    """The scheduler ``name`` with the fixed settings described in the module docstring."""
    settings: dict[str, dict[str, Any]] = {
        "greedy": {"min_lr": lr / 100, "max_lr": 10 * lr},
        "greedy_smooth": {"min_lr": lr / 100, "max_lr": 10 * lr, "smooth": True},
        "constant": {},
        "step": {"step_size": max(1, steps // 3)},
        "exponential": {"gamma": 0.01 ** (1 / steps)},
        "cosine": {"total_steps": steps},
        "plateau": {"min_lr": lr / 100},
        "onecycle": {"total_steps": steps},
    }
    factory = SCHEDULERS["greedy" if name in GREEDY_NAMES else name]
    return factory(**settings[name])


def diverged(curve: list[float], used: list[float], steps: int) -> Run:
    """The run of a rate too large to train with: an infinite loss from here on."""
    return Run(math.inf, curve + [math.inf] * (steps // EVAL_EVERY - len(curve)), used)


def train_nmf(seed: int, scheduler: Scheduler, lr: float, steps: int) -> Run:
    """Projected minibatch SGD on ``||X - W H^T||^2 / (m n)`` with ``W, H >= 0``."""
    rng = np.random.default_rng(seed)
    m, n, rank, batch = 200, 150, 8, 512
    truth = rng.gamma(1.0, 1.0, (m, rank)) @ rng.gamma(1.0, 1.0, (rank, n)) / rank
    data = np.maximum(truth + 0.1 * rng.normal(size=(m, n)), 0.0)
    entries = data.ravel()
    scale = math.sqrt(data.mean() / rank)
    w = rng.uniform(0.0, 2.0 * scale, (m, rank))
    h = rng.uniform(0.0, 2.0 * scale, (n, rank))
    state = scheduler.init([lr])
    curve: list[float] = []
    used: list[float] = []
    for step in range(steps):
        rows = rng.integers(0, m, batch)
        cols = rng.integers(0, n, batch)
        w_rows, h_cols = w[rows], h[cols]
        error = (w_rows * h_cols).sum(axis=1) - entries[rows * n + cols]
        loss = float(error @ error) / batch
        if not math.isfinite(loss) or loss > 1e6:
            return diverged(curve, used, steps)
        weight = (2.0 / batch) * error[:, None]
        grad_w = np.zeros_like(w)
        grad_h = np.zeros_like(h)
        np.add.at(grad_w, rows, weight * h_cols)
        np.add.at(grad_h, cols, weight * w_rows)
        step_lr = state.lrs[0]
        used.append(step_lr)
        w = np.maximum(w - step_lr * grad_w, 0.0)
        h = np.maximum(h - step_lr * grad_h, 0.0)
        state = scheduler.update(state, loss)
        if step % EVAL_EVERY == EVAL_EVERY - 1:
            curve.append(float(np.mean((w @ h.T - data) ** 2)))
    return Run(curve[-1], curve, used)


def train_mlp(seed: int, scheduler: Scheduler, lr: float, steps: int) -> Run:
    """Plain minibatch SGD on a small tanh MLP classifier."""
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    samples, features, classes, batch = 2000, 20, 4, 64
    inputs = torch.randn(samples, features, generator=generator)
    hidden = torch.randn(features, 32, generator=generator)
    readout = torch.randn(32, classes, generator=generator)
    labels = (torch.tanh(inputs @ hidden) @ readout).argmax(dim=1)
    noisy = torch.rand(samples, generator=generator) < 0.1
    labels[noisy] = torch.randint(0, classes, (int(noisy.sum()),), generator=generator)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(features, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, classes),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    state = scheduler.init([lr])
    curve: list[float] = []
    used: list[float] = []
    for step in range(steps):
        index = torch.randint(0, samples, (batch,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(inputs[index]), labels[index])
        if not math.isfinite(loss.item()):
            return diverged(curve, used, steps)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.param_groups[0]["lr"] = state.lrs[0]
        used.append(state.lrs[0])
        optimizer.step()
        state = scheduler.update(state, loss.item())
        if step % EVAL_EVERY == EVAL_EVERY - 1:
            with torch.no_grad():
                curve.append(torch.nn.functional.cross_entropy(model(inputs), labels).item())
    return Run(curve[-1], curve, used)


Key = tuple[str, float, int]
"""(scheduler name, base rate, seed)."""


def train_one(arguments: tuple[Problem, int, Key]) -> Run:
    """Train one run (at module level, so that worker processes can run it)."""
    problem, steps, (name, lr, seed) = arguments
    run = problem.train(seed, scheduler_for(name, lr, steps), lr, steps)
    return run._replace(final=math.inf if math.isnan(run.final) else run.final)


class Runs:
    """The training runs of one problem, memoised (the two protocols share many of them)."""

    def __init__(self, problem: Problem, steps: int, jobs: int) -> None:
        self.problem = problem
        self.steps = steps
        self.jobs = jobs
        self._done: dict[Key, Run] = {}

    def prefetch(self, keys: Iterable[Key]) -> None:
        """Train the runs not done yet, ``jobs`` at a time."""
        todo = sorted(set(keys) - set(self._done))
        arguments = [(self.problem, self.steps, key) for key in todo]
        if self.jobs > 1 and len(todo) > 1:
            with ProcessPoolExecutor(self.jobs) as pool:
                self._done.update(zip(todo, pool.map(train_one, arguments), strict=True))
        else:
            self._done.update(zip(todo, map(train_one, arguments), strict=True))

    def __call__(self, name: str, lr: float, seed: int) -> Run:
        self.prefetch([(name, lr, seed)])
        return self._done[(name, lr, seed)]


def best_rates(runs: Runs) -> dict[str, float]:
    """Each scheduler's base rate from the grid, by mean final loss on the tuning seeds."""
    grid = runs.problem.lr_grid
    runs.prefetch(
        (name, lr, seed) for name in SCHEDULER_NAMES for lr in grid for seed in TUNING_SEEDS
    )

    def mean_final(name: str, lr: float) -> float:
        return statistics.fmean(runs(name, lr, seed).final for seed in TUNING_SEEDS)

    return {name: min(grid, key=functools.partial(mean_final, name)) for name in SCHEDULER_NAMES}


def steps_to_reach(curve: list[float], target: float) -> int | None:
    """First step at which the evaluated full loss is at or below ``target``."""
    first = next((k for k, value in enumerate(curve) if value <= target), None)
    return None if first is None else (first + 1) * EVAL_EVERY


def evaluate(runs: Runs, rates: dict[str, float], seeds: Sequence[int]) -> dict[str, int]:
    """Print the comparison table of one protocol, then what GreedyLR did in it.

    Returns:
        For each GreedyLR variant, the number of (baseline, seed) pairs in which it ended at an
        equal or lower final loss than the baseline.
    """
    runs.prefetch((name, rates[name], seed) for name in SCHEDULER_NAMES for seed in seeds)
    result = {name: [runs(name, rates[name], seed) for seed in seeds] for name in SCHEDULER_NAMES}
    best_final = [min(result[name][i].final for name in SCHEDULER_NAMES) for i in range(len(seeds))]
    print(
        "| scheduler | lr | median final loss | steps to 1.1 x best | steps to 1.5 x best |"
        + "".join(f" {name} <= it |" for name in GREEDY_NAMES)
    )
    print("|---|---|---|---|---|" + "---|" * len(GREEDY_NAMES))
    totals = dict.fromkeys(GREEDY_NAMES, 0)
    for name in SCHEDULER_NAMES:
        speeds = []
        for within in WITHIN:
            reached = [
                steps_to_reach(run.curve, best * (1 + within))
                for run, best in zip(result[name], best_final, strict=True)
            ]
            hits = [steps for steps in reached if steps is not None]
            fraction = f"({len(hits)}/{len(seeds)})"
            speeds.append(f"{statistics.median(hits):.0f} {fraction}" if hits else f"- {fraction}")
        wins = []
        for greedy_name in GREEDY_NAMES:
            pairs = zip(result[greedy_name], result[name], strict=True)
            count = sum(g.final <= b.final * (1 + TOLERANCE) for g, b in pairs)
            wins.append("-" if name == greedy_name else f"{count}/{len(seeds)}")
            if name not in GREEDY_NAMES:
                totals[greedy_name] += count
        median_final = statistics.median(run.final for run in result[name])
        print(
            f"| {name} | {rates[name]:g} | {median_final:.4g} | {speeds[0]} | {speeds[1]} |"
            + "".join(f" {win} |" for win in wins)
        )
    print()
    print("| GreedyLR variant | increases per run | decreases per run | final lr / base lr |")
    print("|---|---|---|---|")
    for name in GREEDY_NAMES:
        used = [run.lrs for run in result[name]]
        ups = [sum(b > a for a, b in zip(lrs, lrs[1:], strict=False)) for lrs in used]
        downs = [sum(b < a for a, b in zip(lrs, lrs[1:], strict=False)) for lrs in used]
        ratios = [lrs[-1] / rates[name] for lrs in used]
        print(
            f"| {name} | {statistics.median(ups):g} | {statistics.median(downs):g} |"
            f" {statistics.median(ratios):.3g} |"
        )
    print()
    return totals


def best_of(repeats: int, work: Callable[[], object]) -> float:
    """Shortest wall time of ``repeats`` calls to ``work``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def replay_speed(quick: bool) -> None:
    """Time GreedyLR replays: fused ``simulate``, the plain ``update`` loop, the reference."""
    import torch
    from transformers.optimization import GreedyLR

    n = 200_000 if quick else 1_000_000
    losses = (5.0 + np.cumsum(np.random.default_rng(0).normal(0.0, 0.01, n))).tolist()
    head = losses[: n // 10]

    def run_fused(params: dict[str, Any]) -> None:
        simulate(losses, "greedy", lr=0.1, **params)

    def run_update_loop(params: dict[str, Any]) -> None:
        plain = greedy(**params)
        simulate(head, Scheduler(plain.init, plain.update), lr=0.1)

    def run_reference(params: dict[str, Any]) -> None:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        reference = GreedyLR(optimizer, **params)
        for loss in head:
            reference.step(loss)
            reference.get_last_lr()

    settings: list[dict[str, Any]] = [{}, {"smooth": True}]
    fused = [best_of(3, functools.partial(run_fused, params)) for params in settings]
    unfused = [10 * best_of(3, functools.partial(run_update_loop, params)) for params in settings]
    ref = [10 * best_of(3, functools.partial(run_reference, params)) for params in settings]
    label = f"({len(head):,} losses x 10)"
    print(f"| GreedyLR over {n:,} losses, seconds (best of 3) | defaults | smooth=True |")
    print("|---|---|---|")
    print(f"| `dbgcli.schedulers.simulate` (fused scan) | {fused[0]:.2f} | {fused[1]:.2f} |")
    print(f"| plain `update` loop {label} | {unfused[0]:.2f} | {unfused[1]:.2f} |")
    print(f"| transformers `GreedyLR` + SGD {label} | {ref[0]:.2f} | {ref[1]:.2f} |")
    print(f"| reference / simulate | {ref[0] / fused[0]:.1f}x | {ref[1] / fused[1]:.1f}x |\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="evaluation seeds (default 10)")
    parser.add_argument("--quick", action="store_true", help="short runs, 3 seeds, one protocol")
    parser.add_argument("--problems", nargs="+", default=["nmf", "mlp"], choices=["nmf", "mlp"])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel (default 1)")
    parser.add_argument("--speed-only", action="store_true", help="only the replay timings")
    args = parser.parse_args()

    problems = {
        "nmf": Problem("nmf", 1500, (3.0, 10.0, 30.0, 100.0, 300.0), train_nmf),
        "mlp": Problem("mlp", 600, (0.1, 0.3, 1.0, 3.0, 10.0), train_mlp),
    }
    seeds = list(range(min(args.seeds, 3) if args.quick else args.seeds))
    per_protocol = len(seeds) * (len(SCHEDULER_NAMES) - len(GREEDY_NAMES))
    wins: dict[tuple[str, str], int] = {}
    started = time.perf_counter()
    replay_speed(args.quick)
    for key in [] if args.speed_only else args.problems:
        problem = problems[key]
        runs = Runs(problem, problem.steps // 4 if args.quick else problem.steps, args.jobs)
        rates = best_rates(runs)
        print(f"## {problem.name}: {runs.steps} steps, {len(seeds)} seeds, tuned base rates\n")
        for name, count in evaluate(runs, rates, seeds).items():
            wins[(name, "tuned")] = wins.get((name, "tuned"), 0) + count
        if not args.quick:
            print(
                f"## {problem.name}: {runs.steps} steps, {len(seeds)} seeds, every scheduler at "
                f"constant's best rate ({rates['constant']:g})\n"
            )
            same = dict.fromkeys(SCHEDULER_NAMES, rates["constant"])
            for name, count in evaluate(runs, same, seeds).items():
                wins[(name, "same")] = wins.get((name, "same"), 0) + count
    problems_run = 0 if args.speed_only else len(args.problems)
    if problems_run:
        protocols = ("tuned",) if args.quick else ("tuned", "same")
        print("## GreedyLR equal or better (within 1 %) than a baseline, all problems\n")
        labels = {"tuned": "tuned rates", "same": "constant's rate for all"}
        print("| variant |" + "".join(f" {labels[p]} |" for p in protocols) + " all |")
        print("|---|" + "---|" * (len(protocols) + 1))
        for name in GREEDY_NAMES:
            counts = [wins[(name, p)] for p in protocols]
            cells = [f"{c}/{per_protocol * problems_run}" for c in counts]
            total = f"{sum(counts)}/{per_protocol * problems_run * len(protocols)}"
            print(f"| {name} |" + "".join(f" {cell} |" for cell in cells) + f" {total} |")
        print()
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
