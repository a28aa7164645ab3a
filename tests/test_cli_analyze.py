"""``dbg analyze``, ``dbg rules list`` and ``dbg rules explain`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dbgcli.report.model import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK


@pytest.fixture
def vanishing(make_trace) -> Path:
    rng = np.random.default_rng(0)
    grads = [rng.normal(0, 1e-2, size=(8, 8)) for _ in range(30)]
    for step in range(20, 30):
        grads[step] = grads[step] * 1e-9
    return make_trace(
        "vanishing.h5",
        scalars={"loss": list(np.linspace(2.0, 1.0, 30))},
        tensors={"grad/fc.weight": {"values": grads, "collection": "gradients"}},
    )


@pytest.fixture
def healthy(make_trace) -> Path:
    rng = np.random.default_rng(1)
    return make_trace(
        "healthy.h5",
        scalars={"loss": list(np.linspace(2.0, 1.0, 30))},
        tensors={
            "grad/fc.weight": {
                "values": [rng.normal(0, 1e-2, size=(8, 8)) for _ in range(30)],
                "collection": "gradients",
            }
        },
    )


def test_exit_codes(cli, vanishing: Path, healthy: Path) -> None:
    assert cli("analyze", healthy, "--select", "DBG1").code == EXIT_OK
    # A vanishing gradient is a warning: the gate fails on it from --fail-on warning.
    assert cli("analyze", vanishing, "--select", "DBG1").code == EXIT_OK
    dirty = cli("analyze", vanishing, "--select", "DBG1", "--fail-on", "warning")
    assert dirty.code == EXIT_FINDINGS
    assert "vanishing gradients" in dirty.stdout and "grad/fc.weight" in dirty.stdout
    gate = ("--select", "DBG1", "--fail-on", "warning", "--exit-zero")
    assert cli("analyze", vanishing, *gate).code == EXIT_OK
    broken = cli(
        "analyze", vanishing, healthy.with_name("missing.h5"), "--select", "DBG1", "--exit-zero"
    )
    assert broken.code == EXIT_ERROR


def test_an_unreadable_trace_is_named_once_and_wrapped_at_80_columns(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report names the trace once and says why it is unreadable on the same line, as
    for any trace; stderr keeps the whole path in its one line."""
    monkeypatch.setenv("COLUMNS", "80")
    missing = tmp_path / "a_folder_whose_name_takes_up_the_room" / ("run_" * 12 + ".h5")
    result = cli("analyze", missing)
    assert result.code == EXIT_ERROR
    lines = result.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), result.stdout
    # As any trace's path, shortened in the middle to leave room for the verdict.
    (line,) = [line for line in lines if ".h5" in line]
    assert line.endswith(".h5  unreadable: no such file"), result.stdout
    assert result.stderr.strip().splitlines() == [f"dbg: error: {missing}: no such file"]


def test_json_document(cli, vanishing: Path) -> None:
    result = cli(
        "analyze", vanishing, "--select", "DBG101", "--fail-on", "warning", "--format", "json"
    )
    assert result.code == EXIT_FINDINGS
    document = json.loads(result.stdout)
    assert document["version"] == 1
    (trace,) = document["traces"]
    assert trace["path"] == str(vanishing) and trace["complete"] is True
    rule = trace["rules"][0]
    assert {k: rule[k] for k in ("id", "name", "status", "reason")} == {
        "id": "DBG101",
        "name": "vanishing-gradient",
        "status": "violated",
        "reason": "",
    }
    (finding,) = trace["findings"]
    assert {
        k: finding[k]
        for k in (
            "rule_id",
            "rule",
            "severity",
            "tensor",
            "first_step",
            "last_step",
            "steps",
            "threshold",
        )
    } == {
        "rule_id": "DBG101",
        "rule": "vanishing-gradient",
        "severity": "warning",
        "tensor": "grad/fc.weight",
        "first_step": 20,
        "last_step": 29,
        "steps": 10,
        "threshold": 1e-7,
    }
    assert isinstance(finding["value"], float) and isinstance(finding["message"], str)
    assert trace["verdict"] == "unhealthy: vanishing gradients" and trace["healthy"] is False
    (diagnosis,) = trace["diagnoses"]
    assert diagnosis["fix"] and diagnosis["evidence"] == [
        "vanishing gradients in grad/fc.weight from step 20"
    ]
    assert {k: v for k, v in diagnosis.items() if k not in ("fix", "evidence")} == {
        "title": "vanishing gradients",
        "severity": "warning",
        "cause": {
            "rule": "vanishing-gradient",
            "rule_id": "DBG101",
            "severity": "warning",
            "first_step": 20,
            "last_step": 29,
            "tensors": ["grad/fc.weight"],
            "finding": 0,
        },
        "explains": [],
    }


def test_params_select_and_errors(cli, healthy: Path) -> None:
    tuned = cli(
        "analyze",
        healthy,
        "--select",
        "vanishing-gradient",
        "-p",
        "DBG101.threshold=1",
        "--fail-on",
        "warning",
        "-f",
        "json",
    )
    assert tuned.code == EXIT_FINDINGS
    bad_value = cli("analyze", healthy, "-p", "DBG101.threshold=tiny")
    assert bad_value.code == EXIT_ERROR and bad_value.stderr.count("\n") == 1
    assert "bad value for DBG101.threshold (float)" in bad_value.stderr
    bad_name = cli("analyze", healthy, "-p", "DBG101.treshold=1")
    assert "parameters: threshold, ratio, ratio_below, min_steps" in bad_name.stderr
    assert cli("analyze", healthy, "-p", "nonsense").code == EXIT_ERROR
    unknown = cli("analyze", healthy, "--select", "DBG9999")
    assert (
        unknown.code == EXIT_ERROR
        and "matches no rule" in unknown.stderr
        and unknown.stderr.count("\n") == 1
    )
    assert cli("analyze", healthy, "--fail-on", "fatal").code == EXIT_ERROR


def test_fail_on_levels(cli, vanishing: Path, tmp_path: Path) -> None:
    assert cli("analyze", vanishing, "--select", "DBG101").code == EXIT_OK
    assert (
        cli("analyze", vanishing, "--select", "DBG101", "--fail-on", "warning").code
        == EXIT_FINDINGS
    )
    config = tmp_path / "dbg.toml"
    config.write_text('[severity]\nDBG101 = "error"\n')
    assert cli("analyze", vanishing, "--select", "DBG101", "--config", config).code == EXIT_FINDINGS


def test_configuration_is_found_upwards_and_cli_wins(
    cli, vanishing: Path, tmp_path: Path, monkeypatch
) -> None:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.dbg]\nselect = ["DBG101"]\nfail-on = "info"\n[tool.dbg.rules.vanishing-gradient]\nthreshold = 1e-12\n'
    )
    monkeypatch.chdir(project / "sub")
    assert (
        cli("analyze", vanishing, "-f", "json").code == EXIT_OK
    )  # threshold from the file hides it
    assert cli("analyze", vanishing, "-p", "DBG101.threshold=1e-7").code == EXIT_FINDINGS
    (project / "pyproject.toml").write_text('[tool.dbg]\nselct = ["DBG101"]\n')
    typo = cli("analyze", vanishing)
    assert typo.code == EXIT_ERROR and "unknown key 'selct'" in typo.stderr


def test_several_formats_in_one_run(cli, vanishing: Path, tmp_path: Path) -> None:
    report_json = tmp_path / "r.json"
    report_txt = tmp_path / "r.txt"
    result = cli(
        "analyze",
        vanishing,
        "--select",
        "DBG1",
        "--fail-on",
        "warning",
        "--format",
        f"json:{report_json}",
        "--format",
        f"human:{report_txt}",
    )
    assert result.code == EXIT_FINDINGS and result.stdout == ""
    assert json.loads(report_json.read_text())["traces"][0]["findings"]
    text = report_txt.read_text()
    assert "vanishing gradients" in text and "\x1b[" not in text
    clash = cli("analyze", vanishing, "--format", "json", "--format", "human")
    assert clash.code == EXIT_ERROR and "only one report can go to stdout" in clash.stderr
    uneven = cli(
        "analyze", vanishing, "--format", "json", "--format", "sarif:x.sarif", "--output", "y"
    )
    assert uneven.code == EXIT_ERROR and "2 --format but 1 --output" in uneven.stderr
    twice = cli("analyze", vanishing, "--format", "sarif:x.sarif", "--output", "y")
    assert twice.code == EXIT_ERROR and "already names a file" in twice.stderr
    assert "unknown format 'yaml'" in cli("analyze", vanishing, "--format", "yaml").stderr
    single = tmp_path / "single.json"
    gate = ("--select", "DBG1", "--fail-on", "warning")
    assert cli("analyze", vanishing, *gate, "-f", "json", "-o", single).code == EXIT_FINDINGS
    assert json.loads(single.read_text())["version"] == 1
    paired_sarif, paired_log = tmp_path / "p.sarif", tmp_path / "p.txt"
    paired = cli(
        *("analyze", vanishing, *gate),
        *("--format", "sarif", "--output", paired_sarif, "--format", "human", "-o", paired_log),
    )
    assert paired.code == EXIT_FINDINGS and paired.stdout == ""
    assert json.loads(paired_sarif.read_text())["version"] == "2.1.0"
    assert "vanishing gradients" in paired_log.read_text()


def test_directories_are_searched(cli, vanishing: Path, healthy: Path) -> None:
    result = cli("analyze", vanishing.parent, "--select", "DBG1", "-f", "json")
    paths = [t["path"] for t in json.loads(result.stdout)["traces"]]
    assert set(paths) >= {str(vanishing), str(healthy)}


def test_rules_list_and_explain(cli) -> None:
    listing = cli("rules", "list", "--format", "json")
    rules = json.loads(listing.stdout)
    ids = [r["id"] for r in rules]
    assert ids == sorted(ids) and "DBG101" in ids
    vanishing = next(r for r in rules if r["id"] == "DBG101")
    assert vanishing["requires"] == ["tensors of role 'gradients'"]
    threshold = vanishing["params"][0]
    assert (threshold["name"], threshold["type"], threshold["default"]) == (
        "threshold",
        "float",
        1e-7,
    )
    assert threshold["help"].startswith("Mean absolute gradient")
    human = cli("rules", "list")
    assert human.code == EXIT_OK and "vanishing-gradient" in human.stdout
    explained = cli("rules", "explain", "vanishing-gradient")
    assert explained.code == EXIT_OK
    assert "Why it matters" in explained.stdout and "ratio_below" in explained.stdout
    missing = cli("rules", "explain", "DBG999")
    assert missing.code == EXIT_ERROR and "unknown rule 'DBG999'" in missing.stderr


def test_rules_file_option(cli, healthy: Path, tmp_path: Path) -> None:
    path = tmp_path / "team_rules.py"
    path.write_text(
        "from dbgcli.rules import Finding, Need, rule\n\n"
        "@rule('TEAM001', 'always-note', severity='info', category='team', requires=Need.loss(), default_enabled=False)\n"
        "def always_note(ctx):\n"
        "    '''Notes the final loss.'''\n"
        "    loss = ctx.loss()\n"
        "    yield Finding(f'final loss {loss.values[-1]:g}', tensor='loss', value=float(loss.values[-1]))\n"
    )
    # An info finding is a note: its message is in the verbose report.
    result = cli(
        "analyze",
        healthy,
        "--rules-file",
        path,
        "--select",
        "TEAM001",
        "--fail-on",
        "info",
        "--verbose",
    )
    assert result.code == EXIT_FINDINGS and "final loss 1" in result.stdout
    assert "TEAM001" in cli("rules", "list", "--rules-file", path).stdout


def test_a_skipped_rule_names_only_the_series_dbg_cannot_place(cli, make_trace) -> None:
    # A Trainer run without evaluation: the overfitting rules look for an eval loss and find
    # the epoch, the gradient norm and the runtime Trainer logs, which are no near misses.
    steps = 20
    logged = {
        "loss": list(np.linspace(2.0, 1.0, steps)),
        "epoch": [step / 10 for step in range(steps)],
        "grad_norm": [1.0] * steps,
        "train_runtime": [3.0] * steps,
    }
    trainer_run = cli("analyze", make_trace(scalars=logged))
    assert trainer_run.code == EXIT_OK
    assert "unknown" not in trainer_run.stdout

    custom = make_trace(scalars={**logged, "objective": [0.5] * steps})
    assert "unknown 'objective': rules that need them were skipped" in cli("analyze", custom).stdout
    document = cli("analyze", custom, "--format", "json")
    assert "no eval loss series (found 'objective', whose meaning dbg cannot tell)" in (
        document.stdout
    )


def test_long_tags_and_paths_keep_what_tells_them_apart(
    cli, make_trace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Gradients of one transformer are all zero; their tags share a 34-character prefix and
    # differ in the layer, the module and the parameter near their end, which an 80-column
    # report keeps, after the collection prefix; the trace paths keep their file names.
    monkeypatch.setenv("COLUMNS", "80")
    prefix = "grad/distilbert.transformer.layer."
    tags = [f"{prefix}{layer}.attention.{module}_lin.weight" for layer in (0, 1) for module in "qk"]
    tags.append(f"{prefix}1.ffn.lin1.weight")
    # Two tags that differ only far from their end: their ends would print alike.
    tags += [f"grad/t5.encoder.block.{block}.layer.0.SelfAttention.relative_bias" for block in "01"]
    zeros = {"values": [np.zeros((4, 4))] * 5, "collection": "gradients"}
    name = "transformer_encoder_with_learned_position_embedding.h5"
    folder = tmp_path / "a_folder_whose_name_takes_up_the_room"
    (folder / "runs").mkdir(parents=True)
    run = make_trace(f"{folder.name}/runs/{name}", tensors=dict.fromkeys(tags, zeros))
    twin = make_trace(f"{folder.name}/{name}", tensors=dict.fromkeys(tags[:1], zeros))

    result = cli("analyze", run, twin, "--select", "DBG401", "--verbose")
    lines = result.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), result.stdout
    table = [line for line in lines if line.startswith("error   DBG401 all-zero")]
    shown = [line.removeprefix("error   DBG401 all-zero").split(" · ")[0].strip() for line in table]
    assert len(shown) == len(tags) + 1, result.stdout  # the twin's finding last
    assert shown[-1] == "grad/…layer.0.attention.q_lin.weight"
    assert len(set(shown)) == len(tags), shown  # no two tags print alike
    for short in shown:
        head, cut, tail = short.partition("…")
        assert cut and head == "grad/", short
        owner = [tag for tag in tags if tag.endswith(tail)]
        assert len(owner) == 1 and short != owner[0], short
        # The layer's (or block's) index with its name, then the module and the parameter.
        assert tail.startswith(("layer.", "block.")), short
    # Both traces keep their file name, and one the folder that tells them apart.
    paths = [line.split()[1] for line in lines if line.startswith(("✗ ", "✓ "))]
    assert paths == [f"…/runs/{name}", f"…/{name}"], result.stdout
    assert f"…/runs/{name}" in lines and f"…/{name}" in lines  # the titles
