"""Hugging Face ``Trainer`` runs: tiny BERT and DistilBERT classifiers and a tiny GPT-2 language
model.

All are built from configs (no downloads) and trained on synthetic token data with the
recipe people use for transformers: AdamW, 10 % linear warmup then linear decay to zero,
weight decay 0.01, gradient clipping at 1.0, a loss logged every step and an evaluation every
20 steps. The hook trace comes from :class:`dbgcli.hf.DbgCallback`; the hand trace from a
user's own ``TrainerCallback`` (:class:`_HandCallback`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from common import Bounds, HandRecorder, RunSpec, scenario, seed_everything, verify
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    EvalPrediction,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.utils import logging as transformers_logging

from dbgcli.hf import DbgCallback
from dbgcli.torch._hook import DEFAULT_STATS_EVERY

# GPT-2's config announces that it has no loss_type, once per run: noise in the corpus log.
transformers_logging.set_verbosity_error()

STEPS = 150
EVAL_EVERY = 20
BATCH = 16


# -- the Trainer recipe shared by both families ------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """The settings a scenario changes; everything else is the shared recipe."""

    lr: float
    label_smoothing: float = 0.0
    bf16: bool = False
    freeze_embeddings: bool = False
    # Pad every batch to this length instead of the longest sequence of the batch.
    pad_to: int | None = None


class _HandCallback(TrainerCallback):
    """What a user writes to log a Trainer run by hand: losses and metrics from the logs, the
    learning rate, weights and gradients from the optimizer step, in their own names."""

    def __init__(self, hand: HandRecorder) -> None:
        self.hand = hand

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.hand.step = state.global_step

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.hand.lr(kwargs["optimizer"].param_groups[0]["lr"], state.global_step)
        self.hand.parameters(kwargs["model"], state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs and "loss" in logs:
            self.hand.loss(logs["loss"], state.global_step)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics:
            self.hand.loss(metrics["eval_loss"], state.global_step, mode="eval")
            self.hand.accuracy(metrics["eval_accuracy"], state.global_step, mode="eval")


class _InputRecorder:
    """Keeps the share of padding of every training batch as the run's measurement, and
    records the batch's input_ids in the hand trace at the steps the callback records them
    (DbgCallback's ``record_data`` records them in the hook trace). With ``outputs``, also
    the batch's labels and predicted classes (the argmax of the logits; for a causal language
    model each position's prediction beside the token it predicts, the labels from the second
    position on), as a user's forward hook would."""

    def __init__(
        self, model: torch.nn.Module, hand: HandRecorder, *, outputs: bool = False
    ) -> None:
        self.hand = hand
        self.pad_shares: list[float] = []
        model.register_forward_pre_hook(self.record, with_kwargs=True)
        if outputs:
            model.register_forward_hook(self.record_outputs, with_kwargs=True)

    def record(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not module.training:
            return
        input_ids = kwargs["input_ids"]
        self.pad_shares.append(float((input_ids == PAD).float().mean()))
        if self.hand.step % self.hand.stats_every == 0:
            self.hand.data(inputs=input_ids, step=self.hand.step)

    def record_outputs(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not module.training or self.hand.step % self.hand.stats_every:
            return
        labels, predicted = kwargs["labels"], output.logits.detach().argmax(-1)
        if predicted.ndim == 2:  # a class per token: a causal language model
            labels, predicted = labels[:, 1:], predicted[:, :-1]
        self.hand.data(labels=labels, predictions=predicted, step=self.hand.step)


def _train(
    spec: RunSpec,
    model: PreTrainedModel,
    train: list[dict[str, Any]],
    valid: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    recipe: Recipe,
    *,
    compute_metrics: Callable[[EvalPrediction], dict[str, float]],
    preprocess_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    record_inputs: bool = False,
    record_data: bool = False,
    task: str | None = None,
) -> dict[str, float]:
    """Train with the shared recipe, recording both traces; returns the run's figures.

    ``record_inputs``: the input_ids of the recorded training batches (the padding figures
    are measured); ``record_data``: their input_ids, labels and predictions (DbgCallback's
    ``record_data=True``). ``task`` is what the hand trace's metadata says the model does
    (``causal-lm``: the labels are tokens), as DbgCallback notes it from the model class."""
    stats_every = spec.stats_every or DEFAULT_STATS_EVERY
    hook = DbgCallback(
        spec.hook_path,
        overwrite=True,
        record_data=True if record_data else ("inputs",) if record_inputs else False,
        stats_every=stats_every,
    )
    hand = HandRecorder(spec, model, stats_every=stats_every)
    if task is not None:
        hand.writer.set_metadata(task=task)
    inputs = (
        _InputRecorder(model, hand, outputs=record_data) if record_inputs or record_data else None
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=64,
            max_steps=STEPS,
            learning_rate=recipe.lr,
            warmup_steps=0.1,  # a float below 1 is a ratio of the total steps
            lr_scheduler_type="linear",
            weight_decay=0.01,
            max_grad_norm=1.0,
            label_smoothing_factor=recipe.label_smoothing,
            bf16=recipe.bf16,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=EVAL_EVERY,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=spec.seed,
            data_seed=spec.seed,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,  # type: ignore[arg-type]
            eval_dataset=valid,  # type: ignore[arg-type]
            data_collator=collate,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=preprocess_logits,
            callbacks=[hook, _HandCallback(hand)],
        )
        # With tqdm off, Trainer prints every log line; the corpus runs 24 of these.
        trainer.remove_callback(PrinterCallback)
        try:
            trainer.train()
        finally:
            hand.close()
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    evaluations = [entry for entry in history if "eval_loss" in entry]
    figures = {
        "train loss, first 10 steps": float(np.mean(losses[:10])),
        "train loss, last 10 steps": float(np.mean(losses[-10:])),
        "train loss, max": float(np.max(losses)),
        "eval loss, final": evaluations[-1]["eval_loss"],
        "eval loss, final / best": evaluations[-1]["eval_loss"]
        / min(entry["eval_loss"] for entry in evaluations),
        "eval accuracy, final": evaluations[-1]["eval_accuracy"],
    }
    if record_inputs and inputs is not None:
        figures["padding share of a batch, min"] = min(inputs.pad_shares)
        figures["padding share of a batch, mean"] = float(np.mean(inputs.pad_shares))
        figures["padding share of a batch, max"] = max(inputs.pad_shares)
    return figures


def _accuracy(prediction: EvalPrediction) -> dict[str, float]:
    predicted = np.asarray(prediction.predictions)
    return {"accuracy": float((predicted == np.asarray(prediction.label_ids)).mean())}


def _argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


# -- hf-bert: sequence classification ----------------------------------------------------------

BERT_VOCAB = 64
PAD, CLS, SEP = 0, 1, 2
# One or two keywords of one kind decide the label; every other content token is noise.
POSITIVE = np.arange(3, 7)
NEGATIVE = np.arange(7, 11)
NEUTRAL = np.arange(11, BERT_VOCAB)
MIN_LENGTH, MAX_LENGTH = 6, 22
LABEL_NOISE = 0.05  # keeps the loss off zero, so label smoothing has something to do
FIXED_LENGTH = 128
BERT_LR = 2e-3


def _bert_rows(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    """``[CLS] tokens [SEP]`` with 6-22 content tokens; the label says whether the keywords
    are positive or negative ones (5 % of labels flipped)."""
    rows = []
    for _ in range(count):
        length = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
        tokens = rng.choice(NEUTRAL, size=length)
        label = int(rng.integers(0, 2))
        places = rng.choice(length, size=int(rng.integers(1, 3)), replace=False)
        tokens[places] = rng.choice(POSITIVE if label else NEGATIVE, size=len(places))
        noisy = label ^ int(rng.random() < LABEL_NOISE)
        rows.append({"input_ids": [CLS, *tokens.tolist(), SEP], "labels": noisy})
    return rows


def _pad_collator(pad_to: int | None) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Pad to the longest sequence of the batch (dynamic padding) or to ``pad_to``."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = pad_to or max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
        return {
            "input_ids": ids,
            "attention_mask": (ids != PAD).long(),
            "labels": torch.tensor([row["labels"] for row in rows]),
        }

    return collate


def _pretrained_embeddings(config: BertConfig, seed: int) -> dict[str, torch.Tensor]:
    """Embeddings learnt by a first, unrecorded run on other data, as pretrained ones would be.
    Frozen random embeddings (std 0.02) barely tell the keywords apart: the run then learnt
    nothing in seed 0 (eval accuracy 0.52) and reached 0.77-0.83 in the others; with only the
    word embeddings frozen it learnt nothing in any seed (0.47-0.52)."""
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rows = _bert_rows(np.random.default_rng(seed + 1000), 100 * BATCH)
    collate = _pad_collator(None)
    model.train()
    for start in range(0, len(rows), BATCH):
        model(**collate(rows[start : start + BATCH])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.bert.embeddings.state_dict()


def _bert(spec: RunSpec, recipe: Recipe) -> dict[str, float]:
    rng = seed_everything(spec.seed)
    config = BertConfig(
        vocab_size=BERT_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=FIXED_LENGTH,
        pad_token_id=PAD,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    if recipe.freeze_embeddings:
        model.bert.embeddings.load_state_dict(_pretrained_embeddings(config, spec.seed))
        for parameter in model.bert.embeddings.parameters():
            parameter.requires_grad = False
    return _train(
        spec,
        model,
        _bert_rows(rng, 1024),
        _bert_rows(rng, 256),
        _pad_collator(recipe.pad_to),
        recipe,
        compute_metrics=_accuracy,
        preprocess_logits=_argmax,
        record_inputs=True,
    )


def _distilbert(spec: RunSpec, recipe: Recipe) -> dict[str, float]:
    """hf-bert's task and data with DistilBERT (its attention projections are ``q_lin``,
    ``k_lin``, ``v_lin``), recording the inputs, labels and predictions."""
    rng = seed_everything(spec.seed)
    config = DistilBertConfig(
        vocab_size=BERT_VOCAB,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=FIXED_LENGTH,
        pad_token_id=PAD,
        num_labels=2,
    )
    return _train(
        spec,
        DistilBertForSequenceClassification(config),
        _bert_rows(rng, 1024),
        _bert_rows(rng, 256),
        _pad_collator(recipe.pad_to),
        recipe,
        compute_metrics=_accuracy,
        preprocess_logits=_argmax,
        record_data=True,
    )


# -- hf-gpt2: causal language modelling --------------------------------------------------------

GPT2_VOCAB = 48
GPT2_LENGTH = 24
FOLLOW = 0.8  # the chance that a token is followed by its successor


def _gpt2_rows(rng: np.random.Generator, successor: np.ndarray, count: int) -> list[dict[str, Any]]:
    """A Markov chain over the vocabulary: each token is followed by its own successor
    (a fixed permutation) with probability 0.8, else by a uniformly random token. The best
    possible next-token accuracy is 0.80 and the loss floor (the entropy) 1.25 nats."""
    ids = np.empty((count, GPT2_LENGTH), dtype=np.int64)
    ids[:, 0] = rng.integers(0, GPT2_VOCAB, size=count)
    for t in range(1, GPT2_LENGTH):
        follow = rng.random(count) < FOLLOW
        ids[:, t] = np.where(follow, successor[ids[:, t - 1]], rng.integers(0, GPT2_VOCAB, count))
    return [{"input_ids": row.tolist()} for row in ids]


def _lm_collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([row["input_ids"] for row in rows])
    return {"input_ids": ids, "labels": ids.clone()}


def _next_token_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    predicted = np.asarray(prediction.predictions)[:, :-1]
    labels = np.asarray(prediction.label_ids)[:, 1:]
    return {"accuracy": float((predicted == labels).mean())}


def _gpt2(spec: RunSpec, recipe: Recipe, *, record_data: bool = False) -> dict[str, float]:
    rng = seed_everything(spec.seed)
    config = GPT2Config(
        vocab_size=GPT2_VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        # GPT-2's own ids (50256) lie outside this vocabulary.
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    successor = rng.permutation(GPT2_VOCAB)
    return _train(
        spec,
        model,
        _gpt2_rows(rng, successor, 1024),
        _gpt2_rows(rng, successor, 256),
        _lm_collate,
        recipe,
        compute_metrics=_next_token_accuracy,
        preprocess_logits=_argmax,
        record_data=record_data,
        task="causal-lm" if record_data else None,
    )


# -- scenarios ---------------------------------------------------------------------------------


def _learns(accuracy: float, eval_loss: float) -> dict[str, Bounds]:
    """A healthy run: reaches ``accuracy`` and ``eval_loss``, and its last evaluation is within
    10 % of its best (no overtraining)."""
    return {
        "eval accuracy, final": (accuracy, None),
        "eval loss, final": (None, eval_loss),
        "eval loss, final / best": (None, 1.1),
    }


# Healthy BERT, seeds 0/1/2: eval accuracy 0.957/0.945/0.949 (5 % of labels are flipped, so
# 0.95 is the ceiling), eval loss 0.18/0.21/0.20, train loss (last 10 steps) 0.29/0.25/0.27,
# batches 31 % padding on average.
BERT_HEALTHY = _learns(0.9, 0.3)


@scenario(
    "hf-bert",
    "healthy",
    cause=None,
    description="""
Tiny BERT (hidden 32, 2 layers, 2 heads) classifying token sequences of 8-24 tokens by the
kind of keyword they hold (5 % label noise); Trainer with AdamW lr 2e-3, 10 % warmup then
linear decay to zero, weight decay 0.01, clipping at 1.0, batch 16, 150 steps, dynamic
padding (pad id 0). The input_ids of every training batch are recorded.""",
)
def bert_healthy(spec: RunSpec) -> None:
    verify(spec, _bert(spec, Recipe(BERT_LR)), BERT_HEALTHY)


# Seeds 0/1/2: eval accuracy 0.957/0.945/0.949, eval loss 0.30/0.32/0.32 (smoothing keeps it
# above the unsmoothed 0.18-0.21).
@scenario(
    "hf-bert",
    "healthy-label-smoothing",
    cause=None,
    description="""
hf-bert healthy with label_smoothing_factor 0.1: the loss levels off higher, at 0.30-0.35.""",
)
def bert_label_smoothing(spec: RunSpec) -> None:
    verify(spec, _bert(spec, Recipe(BERT_LR, label_smoothing=0.1)), _learns(0.9, 0.4))


# bf16=True on CPU runs the forward pass under torch.autocast(bfloat16) (checked: the
# activations are bfloat16). Seeds 0/1/2: eval accuracy 0.957/0.945/0.949, eval loss
# 0.18/0.21/0.20.
@scenario(
    "hf-bert",
    "healthy-bf16",
    cause=None,
    description="""
hf-bert healthy with TrainingArguments(bf16=True) on the CPU: bfloat16 autocast.""",
)
def bert_bf16(spec: RunSpec) -> None:
    verify(spec, _bert(spec, Recipe(BERT_LR, bf16=True)), BERT_HEALTHY)


# Seeds 0/1/2: eval accuracy 0.957/0.945/0.949 from step 40 on, eval loss 0.18/0.21/0.20.
@scenario(
    "hf-bert",
    "healthy-frozen-embeddings",
    cause=None,
    description="""
hf-bert healthy whose embeddings (word, position, token type, LayerNorm) come from a first,
unrecorded 100-step run on other data, as pretrained ones would, and are frozen
(requires_grad False): their weights never change and they have no gradient.""",
)
def bert_frozen_embeddings(spec: RunSpec) -> None:
    verify(spec, _bert(spec, Recipe(BERT_LR, freeze_embeddings=True)), BERT_HEALTHY)


# Seeds 0/1/2: at every evaluation the model predicts one class (eval accuracy 0.47-0.53, the
# share of either class), eval loss between 0.69 and 1.28, ending at ln 2 (0.694/0.693/0.694);
# train loss up to 2.2/1.2/1.1. The twin is at 0.95 accuracy from step 40-80 on.
@scenario(
    "hf-bert",
    "lr-too-high",
    cause="DBG503",
    twin="healthy",
    description="""
hf-bert healthy with AdamW lr 0.1 (50 times the twin's): the model never learns; accuracy stays
at chance and the loss at ln 2, with spikes above it.""",
)
def bert_lr_too_high(spec: RunSpec) -> None:
    verify(
        spec,
        _bert(spec, Recipe(lr=0.1)),
        {
            "eval accuracy, final": (None, 0.6),
            "eval loss, final": (0.68, None),
        },
    )


# Seeds 0/1/2: every batch is 85-90 % padding (87 % on average; the twin's dynamic padding
# gives 18-45 %, 31 % on average); it still learns (eval accuracy 0.957/0.945/0.949).
@scenario(
    "hf-bert",
    "token-ratio",
    cause="DBG603",
    twin="healthy",
    description=f"""
hf-bert healthy with every batch padded to a fixed max_length of {FIXED_LENGTH} (sequences
hold 8-24 tokens): about 87 % of the recorded input_ids are the padding id 0.""",
)
def bert_token_ratio(spec: RunSpec) -> None:
    verify(
        spec,
        _bert(spec, Recipe(BERT_LR, pad_to=FIXED_LENGTH)),
        {
            "padding share of a batch, min": (0.8, None),
        },
    )


# Seeds 0/1/2: eval accuracy 0.957/0.945/0.949 (5 % of labels are flipped), eval loss
# 0.18/0.21/0.20, train loss (last 10 steps) 0.30/0.27/0.27 from 0.69 over the first 10.
@scenario(
    "hf-distilbert",
    "healthy",
    cause=None,
    description="""
hf-bert healthy with a tiny DistilBERT (DistilBertForSequenceClassification: dim 32, 2 layers,
2 heads, attention projections q_lin/k_lin/v_lin, a ReLU pre-classifier) on the same task and
recipe (10 % warmup then linear decay to zero, evaluation every 20 steps, logging_steps=1);
the input_ids, labels and predictions of the recorded training batches and of every evaluation
batch are recorded.""",
)
def distilbert_healthy(spec: RunSpec) -> None:
    verify(spec, _distilbert(spec, Recipe(BERT_LR)), BERT_HEALTHY)


GPT2_LR = 5e-3


# Seeds 0/1/2: eval next-token accuracy 0.81/0.80/0.80 (the chain allows 0.80), eval loss
# 1.28/1.32/1.31 against the entropy floor 1.25 (ln 48 = 3.87 at the start).
@scenario(
    "hf-gpt2",
    "healthy",
    cause=None,
    description="""
Tiny GPT-2 (n_embd 32, 2 layers, 2 heads, vocabulary 48) learning a Markov chain of 24-token
sequences (each token followed by its successor with probability 0.8); Trainer with AdamW
lr 5e-3, 10 % warmup then linear decay to zero, weight decay 0.01, clipping at 1.0, batch 16,
150 steps.""",
)
def gpt2_healthy(spec: RunSpec) -> None:
    verify(spec, _gpt2(spec, Recipe(GPT2_LR)), _learns(0.75, 1.45))


# Seeds 0/1/2: eval next-token accuracy 0.81/0.80/0.80, eval loss 1.28/1.32/1.31 (the
# entropy floor 1.25), train loss (last 10 steps) 1.37/1.38/1.28 from 3.6 over the first 10.
@scenario(
    "hf-gpt2",
    "healthy-data",
    cause=None,
    description="""
hf-gpt2 healthy recording the data too (DbgCallback(record_data=True)): the input_ids, the
token labels and the predicted next tokens of the recorded training batches and of every
evaluation batch; the labels are the 48 tokens of the vocabulary, not classes.""",
)
def gpt2_healthy_data(spec: RunSpec) -> None:
    verify(spec, _gpt2(spec, Recipe(GPT2_LR), record_data=True), _learns(0.75, 1.45))


# Seeds 0/1/2: eval accuracy 0.06/0.04/0.07 (chance 0.02), eval loss 3.52/3.60/3.52 (uniform:
# ln 48 = 3.87), train loss spikes to 5.9/5.1/4.5.
@scenario(
    "hf-gpt2",
    "lr-too-high",
    cause="DBG503",
    twin="healthy",
    description="""
hf-gpt2 healthy with AdamW lr 0.3 (60 times the twin's): the loss spikes above its initial
value and never falls far below ln 48; accuracy stays near chance.""",
)
def gpt2_lr_too_high(spec: RunSpec) -> None:
    verify(
        spec,
        _gpt2(spec, Recipe(lr=0.3)),
        {
            "eval accuracy, final": (None, 0.2),
            "eval loss, final": (3.0, None),
        },
    )
