"""DBG101 vanishing-gradient and DBG102 exploding-gradient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dbgcli.report.model import RuleStatus

from .helpers import analyze_path, keyed, run_rule


def gradients(scales: list[float], steps: int = 40, shape=(16, 8), seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        f"grad/layer{i}.weight": {
            "values": [rng.normal(0, scale, size=shape).astype(np.float32) for _ in range(steps)],
            "collection": "gradients",
        }
        for i, scale in enumerate(scales)
    }


def test_vanishing_fires_at_the_first_vanished_step(make_trace) -> None:
    tensors = gradients([1e-2, 1e-2])
    for step in range(25, 40):
        tensors["grad/layer0.weight"]["values"][step] *= 1e-7
    result = run_rule(make_trace(tensors=tensors), "DBG101")
    (finding,) = keyed(result, "vanished")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "grad/layer0.weight",
        25,
        39,
        15,
    )
    assert finding.value is not None and finding.value < 1e-7 and finding.threshold == 1e-7
    # A vanished gradient is a warning: only non-finite values and dead layers are errors.
    assert finding.severity is not None and finding.severity.value == "warning"


def test_vanishing_not_judged_once_the_model_has_fitted_its_data(make_trace) -> None:
    """Tiny gradients of a model whose loss fell below a tenth of its start are convergence."""
    tensors = gradients([1e-2, 1e-2])
    for step in range(25, 40):
        tensors["grad/layer0.weight"]["values"][step] *= 1e-7
    fitted = [2.0 * 0.7**step for step in range(40)]
    stuck = list(np.linspace(2.0, 1.9, 40))
    assert run_rule(make_trace(scalars={"loss": fitted}, tensors=tensors), "DBG101").status is (
        RuleStatus.passed
    )
    assert keyed(
        run_rule(make_trace(scalars={"loss": stuck}, tensors=tensors), "DBG101"), "vanished"
    )
    # A fitted batch's loss of exactly 0 between blow-ups (Adam's steps out of scale): the
    # spikes lift the mean of the last records, but each tiny gradient is the one of its own
    # step's loss, which is 0.
    spiking = [*np.linspace(2.0, 1.9, 25), *[0.0] * 15]
    for step in (25, 33):
        spiking[step] = 40.0
        tensors["grad/layer0.weight"]["values"][step] /= 1e-7
    assert run_rule(make_trace(scalars={"loss": spiking}, tensors=tensors), "DBG101").status is (
        RuleStatus.passed
    )


def test_vanishing_not_judged_once_the_held_out_loss_shows_the_fit(make_trace) -> None:
    """A mixture of experts whose training loss adds a load-balancing term of weight 0.5: the
    total falls from 2.8 to 0.5, the term's floor, while the held-out cross-entropy falls to
    2 % of its first value. The experts' tiny gradients are those of a fitted model. The
    same training loss with a held-out loss that stays high is still judged."""
    tensors = gradients([1e-2, 1e-2])
    for step in range(25, 40):
        tensors["grad/layer0.weight"]["values"][step] *= 1e-7
    with_floor = list(0.5 + 2.3 * 0.8 ** np.arange(40))
    for held_out, judged in ((2.2 * 0.8 ** np.arange(0, 40, 5), False), (np.full(8, 2.2), True)):
        scalars = {
            "loss": [
                {"values": with_floor},
                {"values": list(held_out), "steps": range(0, 40, 5), "mode": "eval"},
            ]
        }
        result = run_rule(make_trace(scalars=scalars, tensors=tensors), "DBG101")
        assert bool(keyed(result, "vanished")) is judged
    # An untrained model in eval mode can score far above its training loss's start (batch
    # norms not yet adapted): a held-out loss that falls from 25 to chance, 2.3, with the
    # training loss flat there, has fitted nothing.
    stuck = list(np.full(40, np.log(10)))
    inflated = [25.0, *np.full(7, np.log(10))]
    scalars = {
        "loss": [
            {"values": stuck},
            {"values": inflated, "steps": range(0, 40, 5), "mode": "eval"},
        ]
    }
    assert keyed(run_rule(make_trace(scalars=scalars, tensors=tensors), "DBG101"), "vanished")


def test_vanishing_leaves_attention_projections_biases_and_embeddings_alone(make_trace) -> None:
    """Softmax ignores a key bias (its gradient is zero by construction) and the query/key
    projections get small gradients wherever attention is near uniform; an embedding table
    gets a gradient in the rows of the batch's tokens only; a bias is not a weight matrix.
    A dense weight matrix as small is judged."""
    rng = np.random.default_rng(1)
    tiny = [rng.normal(0, 1e-12, size=(32,)) for _ in range(20)]
    tiny_matrix = [rng.normal(0, 1e-12, size=(32, 32)) for _ in range(20)]
    sparse = [np.where(rng.random((500, 16)) < 0.001, 1e-4, 0.0) for _ in range(20)]
    layer = "grad/bert.encoder.layer.0"
    tensors = {
        f"{layer}.attention.self.key.bias": {"values": tiny, "collection": "gradients"},
        f"{layer}.attention.self.query.bias": {"values": tiny, "collection": "gradients"},
        f"{layer}.attention.self.query.weight": {"values": tiny_matrix, "collection": "gradients"},
        "grad/bert.embeddings.word_embeddings.weight": {
            "values": sparse,
            "collection": "gradients",
        },
        f"{layer}.output.dense.weight": {"values": tiny_matrix, "collection": "gradients"},
    }
    result = run_rule(make_trace(tensors=tensors), "DBG101")
    assert [f.tensor for f in result.findings] == [f"{layer}.output.dense.weight"]


def test_vanishing_quiet_on_healthy_gradients_and_tunable(make_trace) -> None:
    path = make_trace(tensors=gradients([1e-3, 5e-3, 1e-2]))
    assert run_rule(path, "vanishing-gradient").status is RuleStatus.passed
    tuned = run_rule(path, "vanishing-gradient", threshold=1.0)
    assert len(keyed(tuned, "vanished")) == 3


def test_vanishing_across_layers(make_trace) -> None:
    path = make_trace(tensors=gradients([1e-6, 1e-2, 1e-2]))
    result = run_rule(path, "DBG101")
    (finding,) = keyed(result, "vanished-relative")
    assert finding.tensor == "grad/layer0.weight" and finding.steps == 40
    assert finding.value is not None and finding.value < 1e-3
    assert not keyed(run_rule(path, "DBG101", ratio=1e-5), "vanished-relative")


def test_a_network_with_normalisation_layers_is_not_compared_across_layers(make_trace) -> None:
    """A BatchNorm in a Sequential is named ``b.4``: recorded with kind ``normalisation``, it
    tells the rule the network rescales its signal between layers, like one named so."""
    for tag, kind in (("b.4.weight", "normalisation"), ("bn1.weight", None)):
        tensors = gradients([1e-6, 1e-2, 1e-2])
        tensors[tag] = {"values": np.ones((40, 16), np.float32), "collection": "weights"}
        if kind is not None:
            tensors[tag]["kind"] = kind
        assert not keyed(run_rule(make_trace(tensors=tensors), "DBG101"), "vanished-relative")


def test_vanishing_across_layers_reports_every_starved_layer(make_trace) -> None:
    """The first layers of a deep sigmoid stack take turns being the smallest; each of them is
    reported for the whole run, not in fragments."""
    rng = np.random.default_rng(2)
    tensors = gradients([1e-6, 1e-6, 1e-2], steps=40)
    for step in range(40):
        # Which of the first two layers is smaller changes from step to step.
        tensors["grad/layer0.weight"]["values"][step] *= rng.uniform(0.5, 2.0)
    result = run_rule(make_trace(tensors=tensors), "DBG101")
    found = {f.tensor: f for f in keyed(result, "vanished-relative")}
    assert set(found) == {"grad/layer0.weight", "grad/layer1.weight"}
    assert all((f.first_step, f.last_step, f.episodes) == (0, 39, 1) for f in found.values())


def test_vanishing_needs_persistence(make_trace) -> None:
    """One minibatch the model already fits gives one tiny gradient: not a vanished layer."""
    tensors = gradients([1e-2])
    for step in (10, 20, 21, 22):
        tensors["grad/layer0.weight"]["values"][step] *= 1e-7
    path = make_trace(tensors=tensors)
    assert run_rule(path, "DBG101").status is RuleStatus.passed
    assert keyed(run_rule(path, "DBG101", min_steps=1), "vanished")[0].first_step == 10


def test_exploding_nonfinite_growth_and_magnitude(make_trace) -> None:
    tensors = gradients([1e-2, 1e-2], steps=60)
    values = tensors["grad/layer0.weight"]["values"]
    values[30] = values[30] * 1e4
    values[50][0, 0] = np.nan
    tensors["grad/layer1.weight"]["values"][45] += 1e7
    result = run_rule(make_trace(tensors=tensors), "DBG102")
    (nan,) = keyed(result, "nonfinite")
    assert (nan.tensor, nan.first_step, nan.value) == ("grad/layer0.weight", 50, 1.0)
    assert nan.severity is not None and nan.severity.value == "error"
    growth = {f.tensor: f for f in keyed(result, "norm-growth")}
    assert growth["grad/layer0.weight"].first_step == 30
    assert (
        growth["grad/layer0.weight"].value is not None and growth["grad/layer0.weight"].value > 1000
    )
    (huge,) = keyed(result, "magnitude")
    assert (huge.tensor, huge.first_step) == ("grad/layer1.weight", 45)
    assert {f.severity.value for f in result.findings if f.key != "nonfinite"} == {"warning"}


def test_exploding_lies_between_a_hard_batch_and_a_corrupted_one(make_trace) -> None:
    """A healthy model's hardest batches lift its gradient up to about 130 times; a batch
    scaled by 1000, seen at its first step, about 700 times (the calibration corpus)."""
    for jump, found in ((150.0, False), (700.0, True)):
        tensors = gradients([1e-2], steps=60)
        tensors["grad/layer0.weight"]["values"][40] *= jump
        result = keyed(run_rule(make_trace(tensors=tensors), "DBG102"), "norm-growth")
        assert bool(result) is found, jump


def test_exploding_never_judges_the_first_window_against_itself(make_trace) -> None:
    """A run whose first gradient norms are large and fall fast did not "jump" at its start."""
    tensors = gradients([1e-2], steps=40)
    values = tensors["grad/layer0.weight"]["values"]
    for step in range(3):
        values[step] = values[step] * 1e8
    assert run_rule(make_trace(tensors=tensors), "DBG102").status is RuleStatus.passed


def test_exploding_quiet_on_healthy_noisy_gradients(make_trace) -> None:
    tensors = gradients([1e-2, 1e-1], steps=200)
    rng = np.random.default_rng(3)
    for spec in tensors.values():
        spec["values"] = [v * rng.uniform(0.2, 5) for v in spec["values"]]
    assert run_rule(make_trace(tensors=tensors), "DBG102").status is RuleStatus.passed


def test_gradient_rules_skip_without_gradients(make_trace) -> None:
    path = make_trace(scalars={"loss": [1.0, 0.5]})
    for rule in ("DBG101", "DBG102"):
        result = run_rule(path, rule)
        assert result.status is RuleStatus.skipped
        assert result.reason == "no tensors of role 'gradients'"


def test_gradients_found_by_meaning_whatever_the_names(make_trace) -> None:
    """TensorBoard-style names without a collection, SageMaker's and Keras' names."""
    for tag, collection in (
        ("grads/fc1.weight", None),
        ("gradient/fc1.weight", "gradients"),
        ("gradients/dense/kernel:0", "gradients"),
        ("fc1/grad", "grads"),
    ):
        tensors = gradients([1e-2])
        spec = tensors.pop("grad/layer0.weight")
        spec["values"] = [v * 1e-9 for v in spec["values"]]
        if collection is None:
            del spec["collection"]
        else:
            spec["collection"] = collection
        result = run_rule(make_trace(tensors={tag: spec}), "DBG101")
        assert [f.tensor for f in keyed(result, "vanished")] == [tag], tag


def test_trailing_median_at_positions_matches_the_full_series() -> None:
    """The exploding rule asks for the trailing median only where a jump is possible."""
    from dbgcli.rules import trailing_median

    rng = np.random.default_rng(3)
    values = rng.lognormal(size=300)
    values[[20, 21, 150]] = np.nan
    full = trailing_median(values, 10)
    at = np.array([0, 5, 10, 11, 25, 151, 299])
    partial = trailing_median(values, 10, at=at)
    np.testing.assert_array_equal(partial[at], full[at])
    assert np.isnan(np.delete(partial, at)).all()
    # Spot check against the definition (NaN ignored).
    assert full[30] == np.nanmedian(values[20:30])
    assert np.isnan(full[:10]).all()


def sparse(tensors: dict, every: int = 10) -> dict:
    """The same records taken every ``every`` steps: record i at step i * every."""
    for spec in tensors.values():
        spec["steps"] = [i * every for i in range(len(spec["values"]))]
    return tensors


def test_vanishing_persistence_is_counted_in_steps_with_two_records_at_least(make_trace) -> None:
    """min_steps=5 is 5 records at every step, 2 records 10 steps apart, never one record."""
    tensors = sparse(gradients([1e-2]))
    values = tensors["grad/layer0.weight"]["values"]
    values[10] = values[10] * 1e-7  # one record: one minibatch
    for index in (20, 21):  # two records: steps 200 and 210
        values[index] = values[index] * 1e-7
    (finding,) = keyed(run_rule(make_trace(tensors=tensors), "DBG101"), "vanished")
    assert (finding.first_step, finding.last_step, finding.steps) == (200, 210, 2)
    # Five steps' worth of records is all it takes: 30 steps need three.
    assert not run_rule(make_trace(tensors=tensors), "DBG101", min_steps=30).findings


def test_exploding_judges_sparse_records_after_the_first_window_of_steps(make_trace) -> None:
    """Records 10 steps apart: the first window of 10 steps is three records, not ten."""
    tensors = sparse(gradients([1e-2], steps=40))
    values = tensors["grad/layer0.weight"]["values"]
    values[5] = values[5] * 1e4  # step 50: judged (after records 0, 10, 20)
    (finding,) = keyed(run_rule(make_trace(tensors=tensors), "DBG102"), "norm-growth")
    assert finding.first_step == 50
    values[5] = values[5] / 1e4
    values[2] = values[2] * 1e4  # step 20: still history
    assert not keyed(run_rule(make_trace(tensors=tensors), "DBG102"), "norm-growth")


def settled_loss(steps: int = 400, seed: int = 0) -> list[float]:
    """A training loss falling from 1.4 (ln 4) to about 0.05, with minibatch noise."""
    rng = np.random.default_rng(seed)
    return list(0.05 + 1.35 * np.exp(-np.arange(steps) / 40) * rng.uniform(0.5, 1.5, steps))


def test_exploding_sees_a_loss_jump_between_gradient_records(make_trace) -> None:
    """A corrupted batch at a step no gradient was recorded at: the loss jumps 2,000 times in
    one step, far above the untrained model's, and stays up: that is the blow-up; at a
    recorded step it is the gradient's norm that tells; a fitted model's hard batch (ten
    times its level, below the untrained loss) and the first records (history) are no
    blow-up."""
    tensors = sparse(gradients([1e-2], steps=40))
    loss = settled_loss()
    loss[255:258] = [100.0, 40.0, 9.0]  # the weights thrown: the loss comes back slowly
    (jump,) = keyed(
        run_rule(make_trace(scalars={"loss": loss}, tensors=tensors), "DBG102"), "loss-jump"
    )
    assert (jump.tensor, jump.first_step, jump.mode) == ("loss", 255, "train")
    assert jump.value is not None and jump.value > 300
    assert "between the gradient records at steps 250 and 260" in jump.message
    # From a loss of exactly 0 (a fitted batch stream), any jump that high is one.
    fitted = settled_loss()
    fitted[230:255] = [0.0] * 25
    fitted[255:258] = [100.0, 40.0, 9.0]
    trace = make_trace(scalars={"loss": fitted}, tensors=sparse(gradients([1e-2], steps=40)))
    (from_zero,) = keyed(run_rule(trace, "DBG102"), "loss-jump")
    assert from_zero.first_step == 255
    # No "infx": a rise from 0 is no multiple of it.
    assert "jumped to 100 in one step at step 255, up from 0, the larger" in from_zero.message
    # Batches of 4 near convergence: most at 0.002, a hard one now and then. A hard batch
    # above the untrained loss is 1,350 times their median but 52 times their mean.
    small = settled_loss()
    small[100:] = [0.5 if step % 10 == 3 else 0.002 for step in range(100, 400)]
    small[255] = 2.7
    trace = make_trace(scalars={"loss": small}, tensors=sparse(gradients([1e-2], steps=40)))
    assert not keyed(run_rule(trace, "DBG102"), "loss-jump")
    # A batch whose loss jumps as high, the loss back within its recent records at the next
    # step: the update it drove threw nothing (a bounded loss's outlier targets).
    hard = settled_loss()
    hard[255] = 100.0
    trace = make_trace(scalars={"loss": hard}, tensors=sparse(gradients([1e-2], steps=40)))
    assert not keyed(run_rule(trace, "DBG102"), "loss-jump")
    # Thrown back to chance (below the untrained loss, above what a model that learned
    # scores) is no hard batch.
    chance = settled_loss()
    chance[255:] = [100.0] + [0.95 * chance[0]] * 144
    trace = make_trace(scalars={"loss": chance}, tensors=sparse(gradients([1e-2], steps=40)))
    assert keyed(run_rule(trace, "DBG102"), "loss-jump")
    for step, value in ((250, 100.0), (255, 1.0), (3, 1e3)):
        loss = settled_loss()
        loss[step] = value
        trace = make_trace(scalars={"loss": loss}, tensors=sparse(gradients([1e-2], steps=40)))
        assert not keyed(run_rule(trace, "DBG102"), "loss-jump"), (step, value)


def glitched_run(
    path: Path, scale: float, steps: tuple[int, ...], *, momentum: float = 0.0, data: bool = False
) -> Path:
    """A four-class MLP trained 300 steps with SGD at lr 0.05, recorded every 10th step (and
    its inputs, labels and predictions with ``data``), whose batches at ``steps`` are
    multiplied by ``scale``: a glitch in the input pipeline."""
    import torch

    from dbgcli.torch import attach

    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    y = (x[:, :4].argmax(dim=1)).long()
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 4),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    with attach(model, optimizer, path) as hook:
        for step in range(300):
            rows = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
            batch = x[rows] * (scale if step in steps else 1.0)
            optimizer.zero_grad()
            output = model(batch)
            loss = torch.nn.functional.cross_entropy(output, y[rows])
            hook.record_loss(loss)
            if data and step % 10 == 0:
                hook.record(inputs=batch, labels=y[rows], predictions=output.detach())
            loss.backward()
            optimizer.step()
    return path


def test_a_corrupted_batch_between_gradient_records_is_named_as_the_explosion(tmp_path) -> None:
    """A real run recorded every 10th step: two batches scaled by 1,000 at steps 155 and 156
    throw the weights between the gradient records at 150 and 160. The report names exploding
    gradients first, not the learning rate that trained the model well for 150 steps."""
    pytest.importorskip("torch")
    report = analyze_path(glitched_run(tmp_path / "glitch.h5", 1000.0, (155, 156)))
    cause = report.findings[report.problems[0].cause]
    # The first scaled batch can cost nothing (a softmax saturated on the right classes):
    # the loss jumps at one of the two.
    assert (cause.rule_id, cause.key) == ("DBG102", "loss-jump")
    assert cause.first_step in (155, 156)


def spiked_inputs(scale: float, at: int = 20, records: int = 40) -> dict:
    """Standardised input batches recorded every 10th step, the one of record ``at`` scaled."""
    rng = np.random.default_rng(1)
    values = [rng.normal(0, 1, size=(64, 8)).astype(np.float32) for _ in range(records)]
    values[at] = values[at] * np.float32(scale)
    return {"inputs": {"values": values, "collection": "inputs"}}


def test_exploding_names_an_input_batch_far_off_scale_that_threw_the_model(make_trace) -> None:
    """A batch 300 times the others' scale at a recorded step whose loss, or the next step's,
    lands above the untrained model's is the blow-up's trigger, found on the inputs; a batch
    as far off that the model took in its stride (the loss stays low), one of small scale,
    or a spike under the bar is none."""
    loss = settled_loss()
    loss[200] = 50.0
    after = settled_loss()
    after[201] = 50.0

    def spikes(scale: float, losses: list[float], **params: float) -> list:
        tensors = sparse({**gradients([1e-2], steps=40), **spiked_inputs(scale)})
        trace = make_trace(scalars={"loss": losses}, tensors=tensors)
        return keyed(run_rule(trace, "DBG102", **params), "input-spike")

    (spike,) = spikes(300.0, loss)
    assert (spike.tensor, spike.first_step, spike.last_step, spike.mode) == (
        "inputs",
        200,
        200,
        "train",
    )
    assert spike.value is not None and 250 < spike.value < 350 and spike.threshold == 9.0
    assert "above the initial loss" in spike.message
    assert [f.first_step for f in spikes(300.0, after)] == [200]
    late = settled_loss()
    late[202] = 50.0
    assert not spikes(300.0, late)
    assert not spikes(300.0, settled_loss())
    assert not spikes(1 / 300, loss)
    assert not spikes(8.0, loss)
    assert spikes(8.0, loss, input_scale=7.0)


def test_a_corrupted_input_batch_at_a_recorded_step_is_named_as_the_cause(tmp_path) -> None:
    """A real run recorded every 10th step, its inputs with it: the batch of step 150 scaled
    by 100 lifts the gradients about 120 times, under DBG102's 300x bar, and the loss of the
    next steps to 55, which read as a learning rate too high. The report names the corrupted
    batch first, under DBG102."""
    pytest.importorskip("torch")
    path = glitched_run(tmp_path / "glitch.h5", 100.0, (150,), momentum=0.9, data=True)
    report = analyze_path(path)
    cause = report.findings[report.problems[0].cause]
    assert (cause.rule_id, cause.key, cause.tensor, cause.first_step) == (
        "DBG102",
        "input-spike",
        "inputs",
        150,
    )
    assert report.problems[0].title == "corrupted input batch"


def attention_switching_on(steps: int = 40, seed: int = 4) -> tuple[list, list, list]:
    """Per-step gradients of one attention layer shaped as a healthy DistilBERT fine-tune
    records them every 10th step (as in the corpus's hf-distilbert/healthy): the query/key
    gradient starts
    25 times below the value gradient and rises about 4,000 times as attention switches on,
    to a few times the value gradient; the key bias's is rounding noise 1e-8 times the key
    weight's. Returns the query/key, value and key-bias gradients."""
    rng = np.random.default_rng(seed)
    rise = np.clip(np.arange(steps) - 20, 0, 5) / 5  # records 20..25 switch attention on
    query_key = [rng.normal(0, 2.5e-8 * 4000**r, size=(32, 32)) for r in rise]
    value = [rng.normal(0, 1e-6 * 40**r, size=(32, 32)) for r in rise]
    key_bias = [rng.normal(0, 1e-8 * np.abs(g).mean(), size=32) for g in query_key]
    return query_key, value, key_bias


# Query and key projections as real implementations name them (transformers 5.25 models built
# from their configs, torch's nn.MultiheadAttention, Keras's MultiHeadAttention).
QUERY_KEY_NAMES = [
    ("transformer.layer.0.attention.q_lin", "transformer.layer.0.attention.k_lin"),  # DistilBERT
    ("transformer.attentions.0.q_lin", "transformer.attentions.0.k_lin"),  # XLM, FlauBERT
    ("encoder.block.0.layer.0.SelfAttention.q", "encoder.block.0.layer.0.SelfAttention.k"),
    ("h.0.multi_head_attention.Wq", "h.0.multi_head_attention.Wk"),  # CTRL
    ("encoder.layer.0.attention.attn.q", "encoder.layer.0.attention.attn.k"),  # MPNet
    ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"),  # Llama, BART
    ("encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key"),  # BERT
]


@pytest.mark.parametrize(("query", "key"), QUERY_KEY_NAMES)
def test_exploding_leaves_query_and_key_projections_growing_alone(
    make_trace, query: str, key: str
) -> None:
    """Attention switching on lifts the query/key gradients 1,000 times over their median:
    that is learning, whatever the implementation calls the projections; the key bias's
    rounding noise rises with them. A dense layer's gradient jumping as much is reported."""
    query_key, value, key_bias = attention_switching_on()
    value_tag = key.rsplit(".", 1)[0] + ".v"
    tensors = {
        f"grad/{query}.weight": {"values": query_key, "collection": "gradients"},
        f"grad/{key}.weight": {"values": query_key, "collection": "gradients"},
        f"grad/{key}.bias": {"values": key_bias, "collection": "gradients"},
        f"grad/{value_tag}.weight": {"values": value, "collection": "gradients"},
        "grad/classifier.weight": {"values": query_key, "collection": "gradients"},
    }
    result = run_rule(make_trace(tensors=sparse(tensors)), "DBG102")
    assert {f.tensor for f in keyed(result, "norm-growth")} == {"grad/classifier.weight"}


def test_exploding_judges_fused_query_key_value_projections(make_trace) -> None:
    """A fused projection's gradient holds the values' part, an ordinary layer's gradient from
    the first step: attention switching on lifts it by the factor the query and key parts
    come to exceed it by, not 1,000 times, and a jump as large as that is reported."""
    query_key, value, _ = attention_switching_on()
    switching = [np.concatenate([q, q, v]) for q, v in zip(query_key, value)]
    exploding = [g * (1e4 if record >= 35 else 1.0) for record, g in enumerate(value)]
    for name in (
        "gpt_neox.layers.0.attention.query_key_value",
        "blocks.0.attn.qkv",
        "transformer.blocks.0.attn.Wqkv",
    ):
        tensors = {
            f"grad/{name}.weight": {"values": switching, "collection": "gradients"},
            "grad/out.weight": {"values": value, "collection": "gradients"},
        }
        assert not run_rule(make_trace(tensors=sparse(tensors)), "DBG102").findings, name
        tensors[f"grad/{name}.weight"]["values"] = [
            np.concatenate([q, q, v]) for q, v in zip(query_key, exploding)
        ]
        result = run_rule(make_trace(tensors=sparse(tensors)), "DBG102")
        assert [f.tensor for f in keyed(result, "norm-growth")] == [f"grad/{name}.weight"], name


def test_vanishing_leaves_query_and_key_projections_of_every_naming_alone(make_trace) -> None:
    """Tiny query/key gradients are not vanished whatever the naming; a fused projection as
    tiny is (its values' part is no smaller than any layer's by construction)."""
    rng = np.random.default_rng(5)
    tiny = [rng.normal(0, 1e-12, size=(32, 32)) for _ in range(20)]
    tensors = {
        f"grad/{name}.weight": {"values": tiny, "collection": "gradients"}
        for pair in QUERY_KEY_NAMES
        for name in pair
    }
    tensors["grad/h.0.self_attention.query_key_value.weight"] = {
        "values": tiny,
        "collection": "gradients",
    }
    result = run_rule(make_trace(tensors=tensors), "DBG101")
    assert {f.tensor for f in keyed(result, "vanished")} == {
        "grad/h.0.self_attention.query_key_value.weight"
    }
