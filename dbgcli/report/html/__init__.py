"""The HTML report: one self-contained page with the report and its plots (``--format html``).

The page opens offline: plotly's JavaScript is embedded once, in the head, and every figure is
a ``<div class="plot">`` followed by one call that draws it. For one trace or many: with
several, a summary table (one row per trace: verdict, worst finding) and their loss curves
overlaid come first. Per trace: the verdict, the ranked diagnoses (each linked to the plots
that mark its findings), every finding, then the views the trace has data for (see
:mod:`dbgcli.report.html.views`) and a line saying which views are missing and why.

plotly is an optional dependency (extra ``plot``), imported when a page is rendered;
:func:`require` says in one line how to install it.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np

from dbgcli._version import __version__
from dbgcli.diagnosis import Diagnosis, causes_first
from dbgcli.errors import ConfigError
from dbgcli.findings import Finding, Severity
from dbgcli.report.html.charts import PALETTE, Chart, Figure, line, wants_log
from dbgcli.report.html.sampling import thin
from dbgcli.report.html.views import LINE_POINTS, Missing, trace_views
from dbgcli.report.model import Report, TraceReport
from dbgcli.report.text import counted, run_line

__all__ = ["render", "require"]

_TEMPLATE = "plotly_white"
_PLOT_CONFIG = '{"responsive": true, "displaylogo": false}'
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:1em 2em}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:2em;word-break:break-all}h3{font-size:1.05em}
section.trace{background:#fff;border:1px solid #ddd;border-radius:6px;padding:0.5em 1.5em;margin:1.5em 0}
.verdict{font-size:1.1em;font-weight:600}.meta,.caption,.missing{color:#666;font-size:0.9em}
.error{color:#d62728}.warning{color:#e07000}.info{color:#1f77b4}.healthy{color:#2ca02c}
.badge{display:inline-block;border-radius:3px;padding:0 0.4em;color:#fff;font-size:0.8em;font-weight:600}
.badge.error{background:#d62728;color:#fff}.badge.warning{background:#ff7f0e;color:#fff}
.badge.info{background:#1f77b4;color:#fff}
ol.diagnoses li{margin-bottom:0.8em}.fix,.evidence{color:#444;font-size:0.92em}
table{border-collapse:collapse;font-size:0.88em;width:100%}
td,th{border-bottom:1px solid #e5e5e5;padding:4px 6px;text-align:left;vertical-align:top}
figure{margin:1.5em 0}figcaption{font-weight:600}
.plot{width:100%}
"""


def require() -> None:
    """Check that plotly can be imported; raises ConfigError with the install command."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise ConfigError("the html format needs plotly: pip install 'dbgcli[plot]'") from None


def render(report: Report) -> str:
    """The whole page."""
    require()
    import plotly.io
    from plotly.offline import get_plotlyjs

    counts = report.counts()
    code = report.exit_code()
    title = (
        f"dbg report: {report.traces[0].path}"
        if len(report.traces) == 1
        else f"dbg report: {len(report.traces)} traces"
    )
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>{'failed' if code else 'passed'} (exit {code}, fail on "
        f"{report.fail_on.value}): {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['info']} info in {counted(len(report.traces), 'trace')}"
        + (f"; {report.suppressed} baselined" if report.suppressed else "")
        + f" · dbg {_e(__version__)}</p>",
    ]
    body.extend(f"<p class='error'>{_e(line)}</p>" for line in report.errors)
    if len(report.traces) > 1:
        body.append(_overview(report))
    for index, trace in enumerate(report.traces):
        body.append(_section(f"t{index}", trace))
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style>\n"
        f"<script>{get_plotlyjs()}</script>\n"
        f"<script>var dbgTemplate = {_script_json(plotly.io.templates[_TEMPLATE].layout.to_plotly_json())};\n"
        "function dbgPlot(id, figure){figure.layout.template = {layout: dbgTemplate}; "
        f"Plotly.newPlot(id, figure.data, figure.layout, {_PLOT_CONFIG});}}</script>\n"
        f"</head><body><main>\n{''.join(body)}\n</main></body></html>"
    )


def _overview(report: Report) -> str:
    """One row per trace, then their loss curves on one plot."""
    rows = []
    for index, trace in enumerate(report.traces):
        # The cause the verdict names: diagnoses are ranked, the most severe first.
        findings = trace.findings
        worst = findings[trace.diagnoses[0].cause] if trace.diagnoses else None
        rows.append(
            f"<tr><td><a href='#t{index}'>{_e(trace.path)}</a></td>"
            f"<td class='{_tone(trace)}'>{_e(trace.verdict)}</td>"
            f"<td>{_finding_cell(worst) if worst else '-'}</td></tr>"
        )
    table = (
        "<h2 id='summary'>Summary</h2><table><tr><th>trace</th><th>verdict</th>"
        f"<th>worst finding</th></tr>{''.join(rows)}</table>"
    )
    figure = Figure()
    values: list[np.ndarray] = []
    for index, trace in enumerate(report.traces):
        colour = PALETTE[index % len(PALETTE)]
        for curve in trace.curves:
            if not curve.name.endswith("loss"):
                continue
            steps, ys = np.asarray(curve.steps), np.asarray(curve.values)
            keep = thin(ys, LINE_POINTS)
            name = f"{_short_path(trace.path)}: {curve.name}"
            dash = None if curve.name.startswith("train") else "dot"
            figure.add_trace(line(name, steps[keep], ys[keep], colour=colour, dash=dash))
            values.append(ys)
    if not values:
        return table
    if wants_log(np.concatenate(values)):
        figure.update_yaxes(type="log")
    figure.update_xaxes(title={"text": "step"})
    figure.update_yaxes(title={"text": "loss"})
    figure.update_layout(
        height=420, legend={"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top"}
    )
    chart = Chart("losses", "Loss of every trace", figure, "Solid: train loss; dotted: eval loss.")
    return table + _figure("overview", chart)


def _section(anchor: str, trace: TraceReport) -> str:
    parts = [
        f"<section class='trace' id='{anchor}'><h2>{_e(trace.path)}</h2>",
        f"<p class='verdict {_tone(trace)}'>{_e(trace.verdict)}</p>",
    ]
    if trace.error is not None:
        return "".join(parts) + "</section>"
    parts.append(f"<p class='meta'>{_e(run_line(trace))}</p>")
    views = trace_views(trace)
    charts = [view for view in views if isinstance(view, Chart)]
    missing = [view for view in views if isinstance(view, Missing)]
    findings = trace.findings
    shown_in: dict[int, list[Chart]] = {}
    for chart in charts:
        for index in chart.marked:
            shown_in.setdefault(index, []).append(chart)
    if trace.diagnoses:
        parts.append("<h3>Diagnoses</h3><ol class='diagnoses'>")
        parts.extend(_diagnosis(anchor, d, findings, shown_in) for d in trace.diagnoses)
        parts.append("</ol>")
    if findings:
        parts.append(_findings_table(anchor, trace, shown_in))
    parts.extend(_figure(anchor, chart) for chart in charts)
    if missing:
        parts.append(
            "<p class='missing'>Not shown: "
            + "; ".join(f"{_e(m.view)} ({_e(m.reason)})" for m in missing)
            + ".</p>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _diagnosis(
    anchor: str, diagnosis: Diagnosis, findings: list[Finding], shown_in: dict[int, list[Chart]]
) -> str:
    cause = findings[diagnosis.cause]
    severity = diagnosis.severity.value
    where = " · ".join(part for part in (cause.tensor or "", cause.span) if part)
    charts: dict[str, Chart] = {}
    for index in (diagnosis.cause, *diagnosis.symptoms):
        for chart in shown_in.get(index, []):
            charts.setdefault(chart.key, chart)
    links = ", ".join(f"<a href='#{anchor}-{key}'>{_e(c.title)}</a>" for key, c in charts.items())
    finding_link = (
        f"<a href='#{anchor}-f{diagnosis.cause}'>{_e(cause.rule_id)} {_e(cause.rule)}</a>"
    )
    text = [
        f"<li><span class='badge {severity}'>{severity}</span> <b>{_e(diagnosis.title)}</b> · "
        f"{finding_link}" + (f" · {_e(where)}" if where else ""),
        f"<br>{_e(cause.message)}",
    ]
    if diagnosis.symptoms:
        text.append(
            f"<br><span class='evidence'>explains {counted(len(diagnosis.symptoms), 'finding')}: "
            f"{_e('; '.join(diagnosis.evidence))}</span>"
        )
    if diagnosis.fix:
        text.append(f"<br><span class='fix'>fix: {_e(diagnosis.fix)}</span>")
    if links:
        text.append(f"<br>evidence: {links}")
    return "".join(text) + "</li>"


def _findings_table(anchor: str, trace: TraceReport, shown_in: dict[int, list[Chart]]) -> str:
    findings = trace.findings
    rows = []
    for index, diagnosis in causes_first(trace.diagnoses, len(findings)).items():
        finding = findings[index]
        role = ""
        if diagnosis is not None:
            role = "cause" if diagnosis.cause == index else f"symptom of {diagnosis.title}"
        links = ", ".join(
            f"<a href='#{anchor}-{chart.key}'>{_e(chart.title)}</a>"
            for chart in shown_in.get(index, [])
        )
        rows.append(
            f"<tr id='{anchor}-f{index}'><td>{_finding_cell(finding)}</td><td>{_e(role)}</td>"
            f"<td>{links or '-'}</td></tr>"
        )
    return (
        f"<details><summary>{counted(len(findings), 'finding')}, causes first</summary>"
        "<table><tr><th>finding</th><th>role</th><th>marked on</th></tr>"
        f"{''.join(rows)}</table></details>"
    )


def _finding_cell(finding: Finding) -> str:
    severity = (finding.severity or Severity.info).value
    where = " · ".join(part for part in (finding.tensor or "", finding.span) if part)
    return (
        f"<span class='badge {severity}'>{severity}</span> {_e(finding.rule_id)} "
        f"{_e(finding.rule)}" + (f" · {_e(where)}" if where else "") + f"<br>{_e(finding.message)}"
    )


def _figure(anchor: str, chart: Chart) -> str:
    plot_id = f"{anchor}-{chart.key}-plot"
    data = _script_json(chart.figure)
    caption = f"<p class='caption'>{_e(chart.caption)}</p>" if chart.caption else ""
    return (
        f"<figure id='{anchor}-{chart.key}'><figcaption>{_e(chart.title)}</figcaption>"
        f"<div class='plot' id='{plot_id}'></div>{caption}"
        f"<script>dbgPlot('{plot_id}', {data});</script></figure>"
    )


def _script_json(value: Any) -> str:
    """JSON (a plotly figure, or plain data) safe inside ``<script>``: no ``</script>`` can
    appear in it, whatever the tags and messages say."""
    text = value.to_json() if hasattr(value, "to_json") else json.dumps(value)
    return str(text).replace("<", "\\u003c")


def _tone(trace: TraceReport) -> str:
    if trace.error is not None:
        return "error"
    if trace.healthy:
        return "healthy"
    return trace.problems[0].severity.value


def _short_path(path: str) -> str:
    from dbgcli.report.text import shorten_middle

    return shorten_middle(path.rsplit("/", 1)[-1], 40)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
