"""What a tensor or scalar series is, whatever its recorder called it (dbgcli.trace.roles)."""

from __future__ import annotations

import pytest

from dbgcli.trace.roles import (
    activation_kind,
    says_ids,
    scalar_meaning,
    tensor_role,
    xgboost_eval_set,
)


@pytest.mark.parametrize(
    ("tag", "collection", "kind", "role", "resolved"),
    [
        # dbg's hooks
        ("grad/fc1.weight", "gradients", None, "gradients", None),
        ("fc1.bias", "weights", None, "biases", None),
        ("act/relu1", "activations", "relu", "activations", "relu"),
        ("preact/act1", "preactivations", "tanh", "preactivations", "tanh"),
        # SageMaker Debugger: <module>_output_0 in collection <kind>_output
        ("relu1_output_0", "relu_output", None, "activations", "relu"),
        ("tanh1_input_0", "tanh_input", None, "preactivations", "tanh"),
        ("gradient/fc1.weight", "gradients", None, "gradients", None),
        # TensorBoard habits: no collection, the words of the tag decide
        ("grads/fc1", None, None, "gradients", None),
        ("weights/fc1.bias", None, None, "biases", None),
        ("activations/relu1", None, None, "activations", "relu"),
        # Keras names: kernel:0, collections in other words
        ("gradients/fc1/kernel:0", None, None, "gradients", None),
        ("fc1/kernel:0", "weights", None, "weights", None),
        # plain: layer1/grad, layer1/bias_grad, a pre-activation by its tag
        ("layer1/grad", "grads", None, "gradients", None),
        ("layer1/bias_grad", "grads", None, "gradients", None),
        ("layer1/pre_activation", "activations", "sigmoid", "preactivations", "sigmoid"),
        # kinds through their aliases, one word or two
        ("block/act", "activations", "LeakyReLU", "activations", "leaky_relu"),
        ("out", "activations", "logistic", "activations", "sigmoid"),
        # data and trees under other names
        ("trees/depth", "trees", None, "trees", None),
        ("tree_depth", "trees", None, "trees", None),
    ],
)
def test_tensor_roles_under_naming_conventions(
    tag: str, collection: str | None, kind: str | None, role: str, resolved: str | None
) -> None:
    meaning = tensor_role(tag, collection, kind)
    assert (meaning.role, meaning.kind) == (role, resolved)


def test_an_unknown_tensor_has_no_role() -> None:
    assert tensor_role("misc/thing", None).role is None
    # A kind is an activation's only: a weight keeps what it was given, unaliased.
    assert tensor_role("fc1.weight", "weights", "Linear").kind == "linear"


@pytest.mark.parametrize(
    ("tag", "quantity", "mode"),
    [
        ("loss", "loss", None),
        ("val_loss", "loss", "eval"),
        ("train/loss", "loss", "train"),
        ("CrossEntropyLoss_output_0", "loss", None),
        ("validation_0-logloss", "loss", "eval"),
        ("eval/rmse", "loss", "eval"),
        ("nll", "loss", None),
        ("loss_scale", "loss_scale", None),  # mixed precision's scale, not a loss
        ("multi_scale_loss", "loss", None),
        ("val_accuracy", "accuracy", "eval"),
        ("train/acc", "accuracy", "train"),
        ("lr", "lr", None),
        ("learning_rate", "lr", None),
        ("lr-SGD", "lr", None),
        # What Trainer, Lightning and dbg's callbacks log besides: known, judged by no rule.
        ("epoch", "progress", None),
        ("global_step", "progress", None),
        ("num_input_tokens_seen", "progress", None),
        ("grad_norm", "gradient_norm", None),
        ("grad_2.0_norm_total", "gradient_norm", None),
        ("train_runtime", "throughput", "train"),
        ("eval_samples_per_second", "throughput", "eval"),
        ("total_flos", "throughput", None),
        # Evaluation metrics no rule judges: XGBoost's own, and compute_metrics' usual names.
        ("validation_0-auc", "metric", "eval"),
        ("valid-aucpr", "metric", "eval"),
        ("train-ndcg@5", "metric", "train"),
        ("map@10", "metric", None),
        ("error@0.7", "metric", None),
        ("merror", "metric", None),
        ("eval_f1", "metric", "eval"),
        ("eval_precision", "metric", "eval"),
        ("rouge1", "metric", None),
        ("gamma-deviance", "loss", None),
        # An error that is no XGBoost metric, and a name with f and 1 apart, stay unknown.
        ("reconstruction_error", None, None),
        ("f_1", None, None),
        ("objective", None, None),
    ],
)
def test_scalar_meanings(tag: str, quantity: str | None, mode: str | None) -> None:
    meaning = scalar_meaning(tag)
    assert (meaning.quantity, meaning.mode) == (quantity, mode)


def test_the_plainest_loss_name_ranks_first() -> None:
    ranks = {tag: scalar_meaning(tag).rank for tag in ("loss", "kl_loss", "logloss")}
    assert ranks["loss"] < ranks["kl_loss"] < ranks["logloss"]


def test_ids_and_xgboost_eval_sets() -> None:
    assert says_ids("input_ids") and says_ids("tokens") and not says_ids("inputs")
    assert xgboost_eval_set("validation_1-logloss") == 1
    assert xgboost_eval_set("validation_0/error") == 0
    assert xgboost_eval_set("train-logloss") is None


def test_activation_kinds_written_as_one_word_or_with_a_digit() -> None:
    # ReLU6 dies like a ReLU (its clip at 6 is not a saturation band dbg judges).
    assert activation_kind(None, "relu6_output") == "relu"
    assert activation_kind(None, "block/LeakyReLU") == "leaky_relu"
    assert activation_kind("Tanh") == "tanh"
