"""The HTML report (``--format html``): through the real CLI and the public rendering API.

No browser here (tests/test_html_browser.py opens the pages in Chromium): these tests read the
page and the plotly figures in it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.io
import pytest
from plotly.offline import get_plotlyjs

from dbgcli.analysis import Options, analyze
from dbgcli.report.formats import FORMATS
from dbgcli.report.html import render
from dbgcli.report.html.charts import Chart
from dbgcli.report.html.sampling import Columns, thin
from dbgcli.report.html.views import COLUMNS, LINE_POINTS, Missing, trace_views
from dbgcli.report.model import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
DEAD_RELU = SAMPLES / "numpy_mlp_dead_relu.h5"
HEALTHY = SAMPLES / "numpy_mlp_healthy.h5"
XGBOOST = SAMPLES / "xgboost_deep_trees.h5"
_PLOT_CALL = re.compile(r"dbgPlot\('([^']+)', (\{.*?\})\);</script>")


def figures(page: str) -> dict[str, dict]:
    """Every plot of a page by div id, as plotly figure data (validated by plotly)."""
    found = {}
    for plot_id, text in _PLOT_CALL.findall(page):
        figure = json.loads(text)
        plotly.io.from_json(text)  # raises on anything plotly does not accept
        found[plot_id] = figure
    return found


def views_of(path: Path) -> tuple[dict[str, Chart], dict[str, str], list]:
    report = analyze([path], Options())
    trace = report.traces[0]
    views = trace_views(trace)
    charts = {v.key: v for v in views if isinstance(v, Chart)}
    missing = {v.view: v.reason for v in views if isinstance(v, Missing)}
    return charts, missing, trace.findings


def test_format_is_registered(cli) -> None:
    assert "html" in FORMATS
    assert "html" in cli("analyze", "--help").stdout


def test_cli_writes_one_self_contained_page(cli, tmp_path: Path) -> None:
    page_path = tmp_path / "out" / "report.html"
    result = cli("analyze", DEAD_RELU, "--format", f"html:{page_path}")
    assert result.code == EXIT_FINDINGS, result.stderr
    assert result.stderr == ""
    page = page_path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # Opens offline: plotly's script is inside the page, once, and nothing else is fetched.
    assert page.count(get_plotlyjs()) == 1
    ours = page.replace(get_plotlyjs(), "")
    assert not re.search(r"<script[^>]*\ssrc=", ours) and "<link" not in ours
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours)
    # Every figure div has its drawing call, and every call its div.
    drawn = figures(page)
    divs = set(re.findall(r"<div class='plot' id='([^']+)'>", page))
    assert divs == set(drawn) and len(divs) >= 10


def test_plotly_is_embedded_once_with_several_traces(tmp_path: Path, cli) -> None:
    page_path = tmp_path / "many.html"
    traces = [DEAD_RELU, HEALTHY, XGBOOST]
    result = cli("analyze", *traces, "--format", f"html:{page_path}")
    assert result.code == EXIT_FINDINGS
    page = page_path.read_text(encoding="utf-8")
    assert page.count(get_plotlyjs()) == 1
    assert page.count("<script>") == len(figures(page)) + 2  # plotly.js, the helper, one per plot


def test_views_follow_the_data_of_the_trace() -> None:
    charts, missing, _ = views_of(DEAD_RELU)
    assert {
        "curves",
        "gradient-flow",
        "update-ratio",
        "activation-health",
        "distributions-parameters",
        "distributions-gradients",
        "histograms-parameters",
        "embedding",
        "class-balance",
        "confusion",
    } <= set(charts)
    assert "tree-depth" not in charts and "importance" not in charts
    assert "XGBoost" in missing["trees"]

    charts, missing, _ = views_of(XGBOOST)
    assert {"curves", "tree-depth", "importance", "class-balance", "confusion"} <= set(charts)
    for absent in ("gradient-flow", "activation-health", "embedding", "update-ratio"):
        assert absent not in charts
    assert missing["gradient flow"] == "no gradient tensors recorded"
    assert "activation health" in missing and "low-dimensional view" in missing
    importance = charts["importance"].figure
    names = [name for trace in importance.data for name in trace["y"]]
    assert "x0" in names  # features named from the run metadata


def test_the_page_says_which_views_are_missing(tmp_path: Path) -> None:
    page = render(analyze([XGBOOST], Options()))
    note = re.search(r"<p class='missing'>Not shown: (.*?)</p>", page)
    assert note is not None
    assert "gradient flow (no gradient tensors recorded)" in note.group(1)
    assert "trees" not in note.group(1)


def test_the_models_output_layer_is_left_out_of_activation_health(make_trace) -> None:
    """A sigmoid head that the run metadata names as the model's output (``model_outputs``)
    sits at 0 and 1 by design: the saturation rules leave it out, and so does the health
    chart, which shows what the rules judge. Unnamed, the same head is judged and drawn."""
    rng = np.random.default_rng(0)
    hidden = [1 / (1 + np.exp(-rng.normal(size=(32, 8)))) for _ in range(10)]
    head = [(rng.random((32, 6)) > 0.5).astype(np.float64) for _ in range(10)]
    tensors = {
        "act/hidden": {"values": hidden, "collection": "activations", "kind": "sigmoid"},
        "act/head": {"values": head, "collection": "activations", "kind": "sigmoid"},
    }
    drawn = {}
    for named in (True, False):
        metadata = {"model_outputs": ["act/head"]} if named else {}
        charts, _, findings = views_of(make_trace(tensors=tensors, metadata=metadata))
        drawn[named] = {trace["name"] for trace in charts["activation-health"].figure.data}
        saturated = {f.tensor for f in findings if f.rule_id == "DBG203"}
        assert saturated == (set() if named else {"act/head"})
    assert drawn == {True: {"act/hidden"}, False: {"act/hidden", "act/head"}}


def test_activation_health_judges_conv_channels_as_dbg201_does(make_trace) -> None:
    """Channels that fire at one of 144 positions of every third image are alive by DBG201's
    per-sample reading; the chart draws the share the rule judged, not one per value."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(10):
        pre = rng.normal(size=(32, 16, 12, 12)) - 10.0 * (np.arange(16) < 10)[:, None, None]
        pre[::3, :10, 4, 7] = 1.0
        values.append(np.maximum(pre, 0.0).astype(np.float32))
    tensors = {"act/conv": {"values": values, "collection": "activations", "kind": "relu"}}
    charts, _, findings = views_of(make_trace(tensors=tensors))
    assert not [f for f in findings if f.rule_id == "DBG201"]
    (drawn,) = charts["activation-health"].figure.data
    assert max(y for y in drawn["y"] if y == y) == 0.0


def test_findings_are_marked_at_their_steps_and_tensors() -> None:
    charts, _, findings = views_of(DEAD_RELU)
    dead = next(
        i for i, f in enumerate(findings) if f.rule_id == "DBG201" and f.tensor == "act/relu2"
    )
    health = charts["activation-health"]
    assert dead in health.marked
    layout = health.figure.layout
    labels = [a for a in layout["annotations"] if "DBG201" in a["text"]]
    assert labels and any("100 % of 64 units dead" in a["hovertext"] for a in labels)
    spans = [(s["x0"], s["x1"]) for s in layout["shapes"] if s["type"] == "rect"]
    assert (findings[dead].first_step - 0.5, findings[dead].last_step + 0.5) in spans

    # In a heatmap the mark frames the tensor's row.
    flow = charts["gradient-flow"]
    rows = list(flow.figure.data[0]["y"])
    zero = next(
        i for i, f in enumerate(findings) if f.rule_id == "DBG401" and f.tensor == "grad/fc1.weight"
    )
    assert zero in flow.marked
    row = rows.index("grad/fc1.weight")
    assert any(
        s.get("y0") == row - 0.5 and s.get("y1") == row + 0.5 for s in flow.figure.layout["shapes"]
    )

    # XGBoost: trees too deep on the depth plot, overweight features on the importance bars.
    charts, _, findings = views_of(XGBOOST)
    rules = {findings[i].rule_id for i in charts["tree-depth"].marked}
    assert rules == {"DBG701"}
    assert {findings[i].rule_id for i in charts["importance"].marked} == {"DBG702"}


def test_diagnoses_link_to_the_plots_of_their_evidence() -> None:
    page = render(analyze([DEAD_RELU], Options()))
    diagnosis = re.search(r"<ol class='diagnoses'>\s*<li>(.*?)</li>", page, re.S)
    assert diagnosis is not None and "dying ReLU" in diagnosis.group(1)
    links = re.findall(r"href='#(t0-[a-z-]+)'", diagnosis.group(1))
    assert "t0-activation-health" in links and "t0-gradient-flow" in links
    for anchor in links:
        assert f"<figure id='{anchor}'>" in page
    # Every finding has a row; the cause's row says where it is marked.
    report = analyze([DEAD_RELU], Options())
    assert page.count("<tr id='t0-f") == len(report.traces[0].findings) == 17


def test_many_traces_get_a_summary_table_and_overlaid_losses() -> None:
    traces = [DEAD_RELU, HEALTHY, XGBOOST]
    report = analyze(traces, Options())
    page = render(report)
    table = re.search(r"<h2 id='summary'>Summary</h2><table>(.*?)</table>", page, re.S)
    assert table is not None
    rows = re.findall(
        r"<tr><td><a href='#(t\d)'>(.*?)</a></td><td class='\w+'>(.*?)</td>", table.group(1)
    )
    assert [(anchor, path) for anchor, path, _ in rows] == [
        (f"t{i}", str(p)) for i, p in enumerate(traces)
    ]
    assert rows[0][2].startswith("unhealthy: dying ReLU")
    assert rows[1][2].startswith("healthy")
    assert "DBG201" in table.group(1)  # the dead run's worst finding
    overview = figures(page)["overview-losses-plot"]
    names = [trace["name"] for trace in overview["data"]]
    assert "numpy_mlp_dead_relu.h5: train loss" in names
    assert "xgboost_deep_trees.h5: eval loss" in names
    assert len({name.split(":")[0] for name in names}) == 3


@pytest.mark.parametrize(("trace", "expected"), [(HEALTHY, EXIT_OK), (DEAD_RELU, EXIT_FINDINGS)])
def test_exit_code_does_not_depend_on_the_format(
    cli, tmp_path: Path, trace: Path, expected: int
) -> None:
    plain = cli("analyze", trace)
    page = cli("analyze", trace, "--format", f"html:{tmp_path / 'r.html'}")
    assert plain.code == page.code == expected
    assert (
        cli("analyze", trace, "--format", "html", "--fail-on", "warning", "--exit-zero").code
        == EXIT_OK
    )


def test_unreadable_trace_is_reported_in_the_page(cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not a trace")
    page_path = tmp_path / "r.html"
    result = cli("analyze", HEALTHY, broken, "--format", f"html:{page_path}")
    assert result.code == EXIT_ERROR == cli("analyze", HEALTHY, broken).code
    page = page_path.read_text(encoding="utf-8")
    assert "unreadable: " in page and "not an HDF5 file" in page


def test_compare_report_renders_without_plots(cli, tmp_path: Path) -> None:
    page_path = tmp_path / "compare.html"
    result = cli("compare", HEALTHY, DEAD_RELU, "--format", f"html:{page_path}")
    assert result.code == EXIT_FINDINGS
    page = page_path.read_text(encoding="utf-8")
    assert "the trace cannot be opened again" in page and "diverge" in page.lower()


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_bad_destination_is_one_line_and_exit_2(cli, tmp_path: Path, where: str) -> None:
    destination = tmp_path if where == "directory" else (tmp_path / "file.txt")
    if where == "under-a-file":
        destination.write_text("x")
        destination = destination / "report.html"
    result = cli("analyze", HEALTHY, "--format", f"html:{destination}")
    assert result.code == EXIT_ERROR
    assert result.stderr.count("\n") == 1 and "cannot write the html report" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_plotly_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # A None entry in sys.modules makes ``import plotly`` fail as if it were not installed.
    code = (
        "import sys; sys.modules['plotly'] = None\n"
        "from dbgcli.cli import main\n"
        f"main(['analyze', {str(HEALTHY)!r}, '--format', {'html:' + str(tmp_path / 'r.html')!r}])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == EXIT_ERROR
    assert result.stderr == "dbg: error: the html format needs plotly: pip install 'dbgcli[plot]'\n"
    assert not (tmp_path / "r.html").exists()


def test_long_traces_are_downsampled(make_trace, tmp_path: Path) -> None:
    steps = 20_000
    loss = np.linspace(3.0, 0.5, steps)
    loss[12_345] = 50.0  # a spike thinning must keep
    loss[15_000] = np.nan
    rng = np.random.default_rng(0)
    path = make_trace(
        "long.h5",
        scalars={"loss": list(loss)},
        tensors={
            "grad/fc.weight": {
                "values": rng.normal(0, 1e-2, size=(steps, 4)).astype(np.float32),
                "collection": "gradients",
            }
        },
        raw_every=0,
    )
    report = analyze([path], Options(select=("DBG1",)))
    views = {v.key: v for v in trace_views(report.traces[0]) if isinstance(v, Chart)}
    train = next(t for t in views["curves"].figure.data if t["name"] == "train loss")
    assert len(train["x"]) <= LINE_POINTS + 2
    assert 12_345 in list(train["x"]) and float(np.nanmax(train["y"])) == 50.0
    assert np.isnan(train["y"][list(train["x"]).index(15_000)])
    assert len(views["gradient-flow"].figure.data[0]["x"]) <= COLUMNS
    assert len(render(report)) < 5_000_000


def test_thinning_and_columns() -> None:
    values = np.zeros(10_000)
    values[7_777] = -3.0
    kept = thin(values, 300)
    assert len(kept) <= 300 and {0, 7_777, 9_999} <= set(kept.tolist())
    assert thin(values[:50], 300).tolist() == list(range(50))
    columns = Columns.of(np.arange(0, 1000, 2), 10)
    assert len(columns) == 10 and columns.starts[0] == 0
    steps = np.arange(0, 1000, 2)
    assert columns.reduce(steps, steps.astype(float), "max")[-1] == 998
    assert np.isnan(columns.reduce(steps, np.full(500, np.nan), "mean")).all()


def test_pca_and_tsne_separate_classes_and_colour_by_label(make_trace) -> None:
    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 16)
    direction = rng.normal(size=16)
    batches = [
        np.maximum(
            0,
            np.outer(np.where(labels == 0, 3.0, -3.0), direction)
            + rng.normal(0, 0.1, (32, 16))
            + 5,
        )
        for _ in range(6)
    ]
    path = make_trace(
        "embed.h5",
        scalars={"loss": [1.0 - 0.1 * i for i in range(6)]},
        tensors={
            "act/relu1": {"values": batches, "collection": "activations", "kind": "relu"},
            "labels": {"values": [labels] * 6, "collection": "labels"},
        },
    )
    charts, _, _ = views_of(path)
    chart = charts["embedding"]
    embedding = chart.figure
    titles = [a["text"] for a in embedding.layout["annotations"]]
    # The first, middle and last stored steps: PCA above, t-SNE of the same samples below.
    assert len(titles) == 6
    assert all(" · PCA " in t for t in titles[:3])
    assert all(t.endswith(" · t-SNE perplexity 10.3") for t in titles[3:])  # (32 - 1) / 3
    assert chart.title == "Activations in two dimensions (PCA and t-SNE)"
    first_panel = [t for t in embedding.data if t.get("xaxis", "x") == "x"]
    assert sorted(t["name"] for t in first_panel) == ["class 0", "class 1"]
    zero, one = (t["x"] for t in sorted(first_panel, key=lambda t: t["name"]))
    assert (zero.min() > one.max()) or (one.min() > zero.max())  # PC1 splits the classes
    share = float(re.search(r"PCA (\d+) %", titles[0]).group(1))
    assert share > 90
    tsne_panel = [t for t in embedding.data if t.get("xaxis") == "x4"]  # row 2, column 1
    assert sorted(t["name"] for t in tsne_panel) == ["class 0", "class 1"]
    assert [t["marker"]["color"] for t in tsne_panel] == [t["marker"]["color"] for t in first_panel]
    points = np.concatenate([np.column_stack([t["x"], t["y"]]) for t in tsne_panel])
    classes = np.concatenate([np.full(len(t["x"]), t["name"]) for t in tsne_panel])
    apart = np.sum((points[:, None] - points[None, :]) ** 2, axis=-1)
    np.fill_diagonal(apart, np.inf)
    assert np.all(classes[apart.argmin(axis=1)] == classes)  # each sample's neighbour: its class
    assert embedding.layout["xaxis4"]["showticklabels"] is False  # t-SNE axes have no unit


def test_tsne_panels_of_the_sample_traces() -> None:
    """Every step of both layers has its t-SNE panel where the activations vary; where they do
    not (a dead layer, a run that blew up), the panel or the row is left out and the caption
    says why."""
    charts, _, _ = views_of(HEALTHY)
    chart = charts["embedding"]
    titles = [a["text"] for a in chart.figure.layout["annotations"]]
    assert len(titles) == 12  # two layers, three steps, PCA and t-SNE
    assert sum(t.endswith(" · t-SNE perplexity 21") for t in titles) == 6  # 64 samples
    tsne_panels = {f"x{n}" for n in (4, 5, 6, 10, 11, 12)}
    tsne_traces = [t for t in chart.figure.data if t.get("xaxis") in tsne_panels]
    pca_traces = [t for t in chart.figure.data if t.get("xaxis", "x") not in tsne_panels]
    assert {t["name"] for t in tsne_traces} == {t["name"] for t in pca_traces}
    assert sum(len(t["x"]) for t in tsne_traces) == 6 * 64
    assert "van der Maaten" in chart.caption and "distances between clusters" in chart.caption
    assert "No t-SNE" not in chart.caption and "no t-SNE" not in chart.caption

    # act/relu2 is dead at every step: no t-SNE row for it.
    charts, _, _ = views_of(DEAD_RELU)
    titles = [a["text"] for a in charts["embedding"].figure.layout["annotations"]]
    assert len(titles) == 9
    assert [t for t in titles if "relu2" in t and "t-SNE" in t] == []
    assert "Where the samples do not vary there is no t-SNE" in charts["embedding"].caption

    # The high learning rate kills both layers after step 0: empty t-SNE panels, hidden axes.
    charts, _, _ = views_of(SAMPLES / "numpy_mlp_high_lr.h5")
    figure = charts["embedding"].figure
    titles = [a["text"] for a in figure.layout["annotations"]]
    assert sum(t.endswith(" · no t-SNE (no variance)") for t in titles) == 4
    assert figure.layout["xaxis5"]["visible"] is False  # act/relu1, step 100
    assert not [t for t in figure.data if t.get("xaxis") == "x5"]

    # Every neuron dead: PCA only.
    charts, _, _ = views_of(SAMPLES / "torch_dying_relu.h5")
    assert charts["embedding"].title == "Activations in two dimensions (PCA)"
    assert "No t-SNE: at every step shown the samples do not vary." in charts["embedding"].caption


def test_batches_too_small_for_tsne_get_pca_only(make_trace) -> None:
    rng = np.random.default_rng(4)
    path = make_trace(
        "tiny.h5",
        scalars={"loss": [1.0, 0.9, 0.8]},
        tensors={"act/fc": {"values": rng.normal(size=(3, 4, 8)), "collection": "activations"}},
    )
    charts, _, _ = views_of(path)
    chart = charts["embedding"]
    assert chart.title == "Activations in two dimensions (PCA)"
    assert "the samples are fewer than 5" in chart.caption
    assert all(" · PCA " in a["text"] for a in chart.figure.layout["annotations"])


def test_bench_script_runs() -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_html.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--quick"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "size MB" in result.stdout and "numpy_mlp_dead_relu.h5" in result.stdout


def test_names_cannot_break_out_of_the_page(make_trace) -> None:
    rng = np.random.default_rng(0)
    hostile = "grad/</script><script>alert(1)</script>"
    path = make_trace(
        "hostile.h5",
        scalars={"loss": list(np.linspace(2.0, 1.0, 30))},
        tensors={
            hostile: {
                "values": [rng.normal(0, 1e-2, size=(4, 4)) for _ in range(30)],
                "collection": "gradients",
            }
        },
    )
    page = render(analyze([path], Options()))
    ours = page.replace(get_plotlyjs(), "")
    assert "alert(1)" in ours  # the name is shown...
    assert "<script>alert(1)" not in ours  # ...but never as markup
    assert ours.count("<script>") == len(figures(page)) + 2
    assert hostile in {
        row
        for figure in figures(page).values()
        for t in figure["data"]
        for row in t.get("y", [])
        if isinstance(row, str)
    }
