"""Train a small PyTorch model with GreedyLR and record the run, then replay it with dbg lr.

    python examples/greedylr_torch.py run.h5
    dbg lr run.h5 --metric loss --mode train --scheduler greedy:factor=0.8,patience=3,min_lr=1e-3

GreedyLR raises the learning rate after ``patience + 1`` consecutive improvements of the loss
and lowers it after as many steps without one. Here it is stepped with every training loss, as
in the GreedyLR authors' Hugging Face Trainer; the hook records the rate each step used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from dbgcli.torch import GreedyLR, attach


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="trace file to write")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    torch.manual_seed(0)
    inputs = torch.randn(2048, 16)
    labels = (inputs[:, :4].sum(dim=1) > 0).long() + 2 * (inputs[:, 4] > 0).long()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = GreedyLR(optimizer, factor=0.8, patience=3, min_lr=1e-3, max_lr=0.5)

    with attach(
        model, optimizer, args.output, overwrite=True, hyperparameters={"lr": 0.05}
    ) as hook:
        for _step in range(args.steps):
            batch = torch.randint(0, len(inputs), (64,))
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
            scheduler.step(loss.item())
    print(f"wrote {args.output}; final learning rate {scheduler.get_last_lr()[0]:.4g}")


if __name__ == "__main__":
    main()
