"""The Hugging Face Trainer callback, on a tiny randomly initialised BERT (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from dbgcli import open_trace
from dbgcli.errors import TraceWriterError
from dbgcli.hf import DbgCallback

os.environ["HF_HUB_OFFLINE"] = "1"

STEPS, EVAL_EVERY = 6, 3
WATCHED = "bert.encoder.layer.0.intermediate.dense.weight"


class GradientNorms(TrainerCallback):
    """Reference: the gradient norm Trainer's model holds when the optimizer is about to step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        parameter = kwargs["model"].get_parameter(WATCHED)
        self.norms.append(torch.linalg.vector_norm(parameter.grad).item())


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def dataset(count: int, seed: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        ids = torch.randint(0, 40, (8,), generator=generator)
        rows.append({"input_ids": ids, "labels": int(ids[0] < 20)})
    return rows


def run(tmp_path: Path, callbacks: list[TrainerCallback]) -> Trainer:
    args = TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_steps=STEPS,
        learning_rate=1e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=EVAL_EVERY,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=dataset(64, seed=1),
        eval_dataset=dataset(32, seed=2),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer


def test_trainer_run_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    reference = GradientNorms()
    trainer = run(tmp_path, [DbgCallback(path, raw_every=3), reference])
    model = trainer.model
    steps = list(range(STEPS))
    with open_trace(path) as trace:
        assert trace.metadata["framework"] == "transformers"
        assert trace.metadata["hyperparameters"]["max_steps"] == STEPS
        for name, _ in model.named_parameters():
            assert trace.index(name)[0].tolist() == steps, name
            assert trace.index(f"grad/{name}")[0].tolist() == steps, name
            expected = "biases" if name.endswith("bias") else "weights"
            assert trace.tag(name).collection == expected
        np.testing.assert_allclose(
            trace.stat(f"grad/{WATCHED}", "l2").values, reference.norms, rtol=1e-5
        )

        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        loss = trace.scalar("loss", mode="train")
        assert loss.steps.tolist() == [entry["step"] - 1 for entry in logged] == steps
        np.testing.assert_allclose(loss.values, [entry["loss"] for entry in logged], rtol=1e-6)
        assert trace.scalar("grad_norm").steps.tolist() == steps
        assert trace.scalar("lr").steps.tolist() == steps
        assert "lr/group1" in trace  # Trainer puts parameters without weight decay apart
        assert "learning_rate" not in trace

        evaluated = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
        eval_loss = trace.scalar("loss", mode="eval")
        assert eval_loss.steps.tolist() == [EVAL_EVERY, 2 * EVAL_EVERY]
        np.testing.assert_allclose(eval_loss.values, [entry["eval_loss"] for entry in evaluated])
        assert "runtime" not in trace

        gelu = "act/bert.encoder.layer.0.intermediate.intermediate_act_fn"
        assert trace.tag(gelu).kind == "gelu"
        assert trace.tag("act/bert.pooler.activation").kind == "tanh"
        assert trace.tag("preact/bert.pooler.activation").collection == "preactivations"
        act_steps, act_modes = trace.index(gelu)
        assert act_steps[act_modes == 0].tolist() == steps
        assert sorted(set(act_steps[act_modes == 1].tolist())) == [EVAL_EVERY, 2 * EVAL_EVERY]
        assert trace.complete


def test_an_existing_trace_is_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    with pytest.raises(TraceWriterError):
        DbgCallback(path)
    with pytest.raises(ValueError, match="stats_every must be a positive integer"):
        DbgCallback(tmp_path / "other.h5", stats_every=0)
    assert not (tmp_path / "other.h5").exists()
