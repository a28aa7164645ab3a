"""The Hugging Face Trainer callback, on a tiny randomly initialised BERT (no downloads)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
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
from dbgcli.report.model import RuleStatus
from tests.rules.helpers import analyze_path

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


def tiny_bert(num_labels: int = 2, head: type[Any] = BertForSequenceClassification) -> Any:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=num_labels,
    )
    return head(config)


def dataset(count: int, seed: int, positive_below: int = 20) -> list[dict[str, Any]]:
    """Rows of 8 token ids; the label is 1 when the first id is below ``positive_below`` (half
    the vocabulary by default: balanced classes)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        ids = torch.randint(0, 40, (8,), generator=generator)
        rows.append({"input_ids": ids, "labels": int(ids[0] < positive_below)})
    return rows


def run(
    tmp_path: Path,
    callbacks: list[TrainerCallback],
    *,
    steps: int = STEPS,
    eval_every: int = EVAL_EVERY,
    positive_below: int = 20,
    logging_steps: int = 1,
    save_steps: int | None = None,
    resume_from_checkpoint: str | None = None,
) -> Trainer:
    args = TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_steps=steps,
        learning_rate=1e-3,
        logging_steps=logging_steps,
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="no" if save_steps is None else "steps",
        save_steps=save_steps or 500,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=dataset(64, seed=1, positive_below=positive_below),
        eval_dataset=dataset(32 if steps == STEPS else 320, seed=2, positive_below=positive_below),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def training_only(tmp_path: Path, **settings: Any) -> TrainingArguments:
    """Arguments of a short CPU run that trains without evaluating or saving."""
    return TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **settings,
    )


@pytest.mark.parametrize(
    ("num_labels", "label", "noted"),
    [
        (2, lambda ids: int(ids[0] < 20), {"num_labels": 2}),
        (1, lambda ids: float(ids[0]) / 40, {"task": "regression"}),
        (3, lambda ids: [float(ids[0] < 20), float(ids[1] < 20), 0.0], {}),  # multi-label
    ],
)
def test_the_classification_head_is_noted_once_training_has_told(
    tmp_path: Path, num_labels: int, label: Callable[[torch.Tensor], Any], noted: dict[str, Any]
) -> None:
    """Trainer's forward decides ``problem_type`` from the labels: one class of several gives
    the loss rules their number of classes, one output a regression the class rules leave
    alone, and a multi-label head neither."""
    path = tmp_path / "run.h5"
    rows = [
        {"input_ids": row["input_ids"], "labels": label(row["input_ids"])} for row in dataset(32, 1)
    ]
    Trainer(
        model=tiny_bert(num_labels),
        args=training_only(tmp_path, max_steps=4),
        train_dataset=rows,
        callbacks=[DbgCallback(path)],
    ).train()
    with open_trace(path) as trace:
        head = {key: trace.metadata[key] for key in ("num_labels", "task") if key in trace.metadata}
    assert head == noted


def test_label_smoothing_hides_the_labels_and_the_callback_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Trainer's label smoother pops the labels before the model's forward call: the
    callback cannot record them, and says so rather than leaving the class rules skipped
    without a word."""
    path = tmp_path / "run.h5"
    args = training_only(tmp_path, max_steps=2, logging_steps=1, label_smoothing_factor=0.1)
    with caplog.at_level(logging.WARNING, logger="dbgcli"):
        Trainer(
            model=tiny_bert(),
            args=args,
            train_dataset=dataset(16, 1),
            callbacks=[DbgCallback(path, record_data=True, stats_every=1)],
        ).train()
    warned = [r.getMessage() for r in caplog.get_records("call") if r.name.startswith("dbgcli")]
    assert len(warned) == 1 and "label_smoothing_factor=0.1" in warned[0]
    with open_trace(path) as trace:
        assert "labels" not in trace and "predictions" in trace


class WeightedLossTrainer(Trainer):
    """The usual compensation of an imbalance in Trainer: a compute_loss that takes the labels
    out of the inputs and weighs the cross-entropy by class; it records the labels itself
    when given the callback."""

    def __init__(self, *args: Any, dbg: DbgCallback | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dbg = dbg

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weight = torch.tensor([1.0, 19.0])
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weight)
        if self.dbg is not None and self.dbg.hook is not None:
            self.dbg.hook.record(labels=labels, raw=True)
        return (loss, outputs) if return_outputs else loss


def test_labels_taken_out_of_the_inputs_are_warned_of_and_recorded_by_hand(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A compute_loss that pops the labels hides them from the model's forward call: the
    callback says so once, with the line that records them (not for a model that takes no
    labels, such as a question-answering one). Recorded that way, beside the
    callback's predictions and loss, they let DBG601 read the class weights off the loss
    (5 % positives weighed 19 to 1): the imbalance is compensated."""
    hidden, by_hand = tmp_path / "hidden.h5", tmp_path / "by_hand.h5"

    def train(path: Path, record: bool) -> None:
        dbg = DbgCallback(path, record_data=True, stats_every=1)
        WeightedLossTrainer(
            model=tiny_bert(),
            # 64 steps of 8: the 500 labels DBG601 judges the balance from.
            args=training_only(tmp_path, max_steps=64, logging_steps=1),
            train_dataset=dataset(128, 1, positive_below=2),
            callbacks=[dbg],
            dbg=dbg if record else None,
        ).train()

    with caplog.at_level(logging.WARNING, logger="dbgcli"):
        train(hidden, record=False)
    warned = [r.getMessage() for r in caplog.get_records("call") if r.name.startswith("dbgcli")]
    assert len(warned) == 1 and "the model's forward call got no labels" in warned[0]
    assert "callback.hook.record(labels=labels, raw=True)" in warned[0]
    with open_trace(hidden) as trace:
        assert "labels" not in trace and "predictions" in trace

    # A question-answering model's targets are start and end positions: no labels to miss.
    spans = [
        {"input_ids": row["input_ids"], "start_positions": 1, "end_positions": 3}
        for row in dataset(16, 1)
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dbgcli"):
        Trainer(
            model=tiny_bert(head=BertForQuestionAnswering),
            args=training_only(tmp_path, max_steps=2, logging_steps=1),
            train_dataset=spans,
            callbacks=[DbgCallback(tmp_path / "qa.h5", record_data=True, stats_every=1)],
        ).train()
    assert not [r for r in caplog.get_records("call") if r.name.startswith("dbgcli")]

    train(by_hand, record=True)
    (imbalance,) = analyze_path(by_hand, select=("DBG601",)).findings
    assert imbalance.key == "compensated"
    assert "a cross-entropy weighting its classes 0: 1, 1: 19 (read off the loss)" in (
        imbalance.message
    )


def test_a_run_resumed_from_a_checkpoint_is_noted_as_such(tmp_path: Path) -> None:
    """Trainer resumed from its checkpoint at step 6: the new trace starts there, and its
    metadata says so, so that the loss rules do not take its first loss for an untrained
    model's. The trace of the run from scratch holds no such note."""
    first, resumed = tmp_path / "first.h5", tmp_path / "resumed.h5"
    run(tmp_path, [DbgCallback(first)], steps=12, eval_every=6, save_steps=6)
    checkpoint = str(tmp_path / "out" / "checkpoint-6")
    run(tmp_path, [DbgCallback(resumed)], steps=12, eval_every=6, resume_from_checkpoint=checkpoint)
    with open_trace(first) as trace:
        assert "resumed_from_step" not in trace.metadata
        assert trace.scalar("loss", mode="train").steps[0] == 0
    with open_trace(resumed) as trace:
        assert trace.metadata["resumed_from_step"] == 6
        assert trace.scalar("loss", mode="train").steps.tolist() == list(range(6, 12))


def test_trainer_run_is_recorded(tmp_path: Path, no_dbg_warnings: None) -> None:
    path = tmp_path / "run.h5"
    reference = GradientNorms()
    # One byte a step: only step 0 keeps full tensors, which shows the budget reached the trace.
    callback = DbgCallback(path, raw_every=3, raw_budget=1, stats_every=1)
    trainer = run(tmp_path, [callback, reference])
    model = trainer.model
    steps = list(range(STEPS))
    with open_trace(path) as trace:
        assert trace.metadata["framework"] == "transformers"
        assert trace.metadata["hyperparameters"]["max_steps"] == STEPS
        for name, _ in model.named_parameters():
            assert trace.index(name)[0].tolist() == steps, name
            assert trace.index(f"grad/{name}")[0].tolist() == steps, name
            assert [int(s) for chunk in trace.iter_raw(name) for s in chunk.steps] == [0]
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


def test_an_existing_trace_is_refused_before_training(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    with pytest.raises(TraceWriterError):
        DbgCallback(path)
    with pytest.raises(ValueError, match="stats_every must be a positive integer"):
        DbgCallback(tmp_path / "other.h5", stats_every=0)
    assert not (tmp_path / "other.h5").exists()
    with pytest.raises(ValueError, match="raw_every .3. must be a multiple of stats_every .10."):
        DbgCallback(tmp_path / "other.h5", raw_every=3)
    with pytest.raises(ValueError, match="raw_budget must be >= 0"):
        DbgCallback(tmp_path / "other.h5", raw_budget=-1)
    with pytest.raises(ValueError, match="record_data takes inputs, labels, predictions"):
        DbgCallback(tmp_path / "other.h5", record_data=("logits",))
    assert not (tmp_path / "other.h5").exists()


def test_default_records_tensors_every_tenth_step_and_scalars_every_step(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    path = tmp_path / "run.h5"
    run(tmp_path, [DbgCallback(path)], steps=21, eval_every=10)
    with open_trace(path) as trace:
        assert trace.index(WATCHED)[0].tolist() == [0, 10, 20]
        assert trace.index(f"grad/{WATCHED}")[0].tolist() == [0, 10, 20]
        assert trace.scalar("loss", mode="train").steps.tolist() == list(range(21))
        assert trace.scalar("lr").steps.tolist() == list(range(21))


def test_recorded_data_feeds_the_data_rules_and_flags_an_induced_imbalance(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    balanced, skewed = tmp_path / "balanced.h5", tmp_path / "skewed.h5"
    # Labels 1 for a first token id below 20 of 40 (balanced), or below 2 (5 %: 19 to 1).
    run(tmp_path, [DbgCallback(balanced, record_data=True)], steps=20, eval_every=10)
    run(
        tmp_path, [DbgCallback(skewed, record_data=True)], steps=20, eval_every=10, positive_below=2
    )
    with open_trace(skewed) as trace:
        for name in ("inputs", "labels", "predictions"):
            steps, modes = trace.index(name)
            # Training batches of the recorded steps (0, 10), and every evaluation batch.
            assert sorted(set(steps[modes == 0].tolist())) == [0, 10], name
            assert sorted(set(steps[modes == 1].tolist())) == [10, 20], name
            assert trace.tag(name).raw_records == len(steps), name
        assert np.dtype(trace.tag("inputs").dtype).kind == "i"  # token ids
        assert trace.tag("predictions").shape == (8, 2)  # logits of a training batch
    data_rules = ("DBG601", "DBG603", "DBG604")
    reports = {
        path.name: {r.id: r for r in analyze_path(path, select=data_rules).results}
        for path in (balanced, skewed)
    }
    for results in reports.values():
        for rule_id in data_rules:
            assert results[rule_id].status is not RuleStatus.skipped, results[rule_id].reason
    # 20 steps do not train the model: it mispredicts either way; only the skewed labels are
    # imbalanced (19 to 1 against the threshold of 10).
    imbalanced = {
        name: [f for f in results["DBG601"].findings if f.key == "imbalance"]
        for name, results in reports.items()
    }
    assert imbalanced["balanced.h5"] == []
    assert [f.mode for f in imbalanced["skewed.h5"]] == ["eval"]
    assert imbalanced["skewed.h5"][0].value > 10


def token_rows(count: int, seed: int, pad_label: int) -> list[dict[str, torch.Tensor]]:
    """Rows of 2-4 token ids (1-39) padded with 0 to 16; each token's label is its third of
    the vocabulary (0, 1, 2), and the padding's is ``pad_label``."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        length = int(torch.randint(2, 5, (1,), generator=generator))
        ids = torch.zeros(16, dtype=torch.long)
        ids[:length] = torch.randint(1, 40, (length,), generator=generator)
        labels = torch.full((16,), pad_label)
        labels[:length] = (ids[:length] - 1) // 13
        rows.append({"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": labels})
    return rows


@pytest.mark.parametrize("pad_label", [0, -100])
def test_padding_labelled_as_a_class_is_named_as_the_cause_of_the_imbalance(
    tmp_path: Path, no_dbg_warnings: None, pad_label: int
) -> None:
    """A token classifier whose padding (81 % of the tokens) is labelled 0, the usual "O"
    class, where -100 would leave it out of the loss: the classes look imbalanced (about 14
    to 1), and the padding labelled as a class, not the imbalance, is the cause."""
    from transformers import BertForTokenClassification

    args = TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        max_steps=20,
        learning_rate=1e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    path = tmp_path / "tagger.h5"
    Trainer(
        model=tiny_bert(num_labels=3, head=BertForTokenClassification),
        args=args,
        train_dataset=token_rows(160, seed=1, pad_label=pad_label),
        eval_dataset=token_rows(64, seed=2, pad_label=pad_label),
        callbacks=[DbgCallback(path, record_data=True)],
    ).train()
    report = analyze_path(path)
    labelled = [f for f in report.findings if f.key == "labelled-padding"]
    if pad_label == -100:
        assert labelled == []
        assert not [f for f in report.findings if f.key == "imbalance"]
        return
    (finding,) = labelled
    assert (finding.rule_id, finding.mode, finding.extra["label"]) == ("DBG603", "train", 0)
    assert finding.extra["labelled_share"] == 1.0
    assert 0.7 < finding.extra["share_of_labels"] < 0.9
    top = report.problems[0]
    assert report.findings[top.cause] == finding
    symptoms = [report.findings[i] for i in top.symptoms]
    assert ("DBG601", "imbalance") in {(f.rule_id, f.key) for f in symptoms}


@pytest.mark.parametrize("shifted_by_hand", [True, False])
def test_labels_shifted_before_a_model_that_shifts_them_are_named(
    tmp_path: Path, no_dbg_warnings: None, shifted_by_hand: bool
) -> None:
    """GPT-2 shifts its labels inside its loss: labels already shifted (``input_ids[1:]``)
    train each position on the token after the next."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    )
    ids = torch.randint(0, 40, (32, 12), generator=torch.Generator().manual_seed(3))
    labels = torch.cat([ids[:, 1:], torch.full((32, 1), -100)], 1) if shifted_by_hand else ids
    rows = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels, strict=True)]
    path = tmp_path / "run.h5"
    Trainer(
        model=model,
        args=training_only(tmp_path, max_steps=4, logging_steps=1),
        train_dataset=rows,
        callbacks=[DbgCallback(path, record_data=True, stats_every=1)],
    ).train()
    result = {r.id: r for r in analyze_path(path).results}["DBG607"]
    if not shifted_by_hand:
        assert result.status is RuleStatus.passed
        return
    (finding,) = result.findings
    assert (finding.key, finding.tensor, finding.first_step, finding.last_step) == (
        "shifted-twice",
        "labels",
        0,
        3,
    )
    report = analyze_path(path)
    assert report.findings[report.problems[0].cause].rule_id == "DBG607"


def test_a_causal_language_model_pairs_each_prediction_with_the_next_token(
    tmp_path: Path, no_dbg_warnings: None
) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    )
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 40, (16, 8))]
    args = TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=1,
        logging_steps=1,  # else Trainer logs no loss, and the callback warns of it
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    path = tmp_path / "run.h5"
    callback = DbgCallback(path, record_data=True)
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()
    with open_trace(path) as trace:
        inputs = trace.raw("inputs", 0)
        labels, predictions = trace.raw("labels", 0), trace.raw("predictions", 0)
    # Logits at positions 0..6 predict the tokens at 1..7: argmax ids, beside those labels.
    assert labels.shape == predictions.shape == (8, 7)
    assert inputs.shape == (8, 8)
    np.testing.assert_array_equal(labels, inputs[:, 1:])  # the rows' labels are their ids
    assert np.issubdtype(predictions.dtype, np.integer)
    # Token labels are no classes: the class rules leave them alone.
    with open_trace(path) as trace:
        assert trace.metadata["task"] == "causal-lm"
    for result in analyze_path(path, select=("DBG601", "DBG604")).results:
        assert result.status is RuleStatus.skipped
        assert "tokens of a language model" in result.reason


def test_early_stopping_is_noted_in_the_metadata(tmp_path: Path, no_dbg_warnings: None) -> None:
    from transformers import EarlyStoppingCallback

    stopped = tmp_path / "stopped.h5"
    args = TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=8,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,  # which EarlyStoppingCallback requires
        metric_for_best_model="loss",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callbacks = [DbgCallback(stopped), EarlyStoppingCallback(early_stopping_patience=3)]
    trainer = Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=dataset(64, seed=1),
        eval_dataset=dataset(32, seed=2),
        callbacks=callbacks,
    )
    trainer.train()
    best = trainer.state.best_global_step
    assert isinstance(best, int) and best > 0
    with open_trace(stopped) as trace:
        noted = trace.metadata["early_stopping"]
        assert noted == {"monitor": "loss", "patience": 3, "best_step": best}
        assert "task" not in trace.metadata  # a sequence classifier
    overtraining = analyze_path(stopped, select=("DBG304",)).results[0]
    assert overtraining.status is RuleStatus.skipped
    assert overtraining.reason.startswith("early stopping watched the run")


@pytest.mark.parametrize("logging_steps", [1, 500])
def test_the_trace_says_how_trainer_logged_and_a_run_without_a_train_loss_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, logging_steps: int
) -> None:
    """With Trainer's default ``logging_steps=500``, a 12-step run logs no training loss: the
    loss rules are skipped, the callback says why at the end of training, and the trace's
    metadata keeps how Trainer logged. The timeline has every step either way: the data of
    every 10th step, written at once, does not overtake the steps still queued."""
    path = tmp_path / "run.h5"
    steps = 12
    with caplog.at_level(logging.WARNING, logger="dbgcli"):
        run(
            tmp_path,
            [DbgCallback(path, record_data=True)],
            steps=steps,
            eval_every=6,
            logging_steps=logging_steps,
        )
    warned = [r.getMessage() for r in caplog.get_records("call") if r.name.startswith("dbgcli")]
    with open_trace(path) as trace:
        noted = trace.metadata["trainer_logging"]
        timeline = trace.timeline()
        modes = timeline.modes.tolist()
        assert [s for s, m in zip(timeline.steps.tolist(), modes) if m == 0] == list(range(steps))
        assert [s for s, m in zip(timeline.steps.tolist(), modes) if m == 1] == [6, 12]
        assert "loss" in trace  # the evaluation loss
    assert noted == {
        "logging_strategy": "steps",
        "logging_steps": logging_steps,
        "logging_first_step": False,
        "max_steps": steps,
        "global_step": steps,
        "train_loss_records": steps if logging_steps == 1 else 0,
    }
    loss_rule = {r.id: r for r in analyze_path(path, select=("DBG301",)).results}["DBG301"]
    if logging_steps == 1:
        assert warned == []
        assert loss_rule.status is not RuleStatus.skipped
        return
    assert loss_rule.status is RuleStatus.skipped
    # The analysis says the same: where the loss went, and what to change.
    assert loss_rule.reason.startswith("no train loss series; Trainer logged no training loss")
    assert "logging_steps=500 steps and the run took 12" in loss_rule.reason
    assert len(warned) == 1, warned
    assert "Trainer logged no training loss" in warned[0]
    assert "logging_steps=500 steps and the run took 12" in warned[0]
    assert "set logging_steps=1" in warned[0] and str(path) in warned[0]
