"""Page faults of a training step on the CPU, with and without the hook, each run alone.

bench_hook.py races a plain and a hooked copy in one process, so both share one heap and
what the hook's allocations do to it falls on both. Here each run is a process of its own: the
4x512 MLP of bench_hook.py at batch 64 trains ``--steps`` steps without the hook, with it, and
with it under ``DBG_MALLOC=system`` (glibc's own malloc thresholds, see
dbgcli/torch/_malloc.py). Each prints the minor page faults of its steps after the first 50
(mean per step, all threads) and its mean step time. Faults are counted exactly; the times
come from different processes, minutes apart on a shared machine, so only a large difference
between them means anything. ``--runs`` repeats each configuration: where a step's memory
lands in the heap differs from run to run.

Run: ``python bench/bench_heap.py [--steps 400] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CONFIGURATIONS = {
    "without the hook": {},
    "with the hook": {},
    "with the hook, DBG_MALLOC=system": {"DBG_MALLOC": "system"},
}
SETTLE_STEPS = 50


def train(steps: int, hooked: bool) -> dict[str, float]:
    """Train the MLP in this process; the page faults and seconds of its steps."""
    import torch
    from torch import nn

    from dbgcli.torch import attach

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 512), torch.randint(0, 10, (64,))
    with tempfile.TemporaryDirectory() as folder:
        hook = attach(model, optimizer, os.path.join(folder, "run.h5")) if hooked else None
        faults = seconds = 0.0
        for step in range(steps):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            if hook is not None:
                hook.record_loss(loss)
            loss.backward()
            optimizer.step()
            if step >= SETTLE_STEPS:
                seconds += time.perf_counter() - start
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        if hook is not None:
            hook.remove()
            hook.writer.close()
    measured = steps - SETTLE_STEPS
    return {"faults": faults / measured, "ms": seconds / measured * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "hooked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= SETTLE_STEPS:
        parser.error(f"--steps must be above {SETTLE_STEPS}")
    if args.child:
        print(json.dumps(train(args.steps, args.child == "hooked")))
        return
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_")
        and name not in ("DBG_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")
    }
    print(
        f"MLP 4x512, batch 64, {args.steps} steps (first {SETTLE_STEPS} left out), "
        f"each run a process of its own"
    )
    for label, environment in CONFIGURATIONS.items():
        child = "plain" if label == "without the hook" else "hooked"
        results = []
        for _ in range(args.runs):
            output = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--child", child],
                capture_output=True,
                text=True,
                check=True,
                env={**base, **environment},
            ).stdout
            results.append(json.loads(output.splitlines()[-1]))
        faults = ", ".join(f"{r['faults']:.0f}" for r in results)
        times = ", ".join(f"{r['ms']:.2f}" for r in results)
        print(f"  {label:34s} page faults per step: {faults}   ms per step: {times}")


if __name__ == "__main__":
    main()
