"""Size and write time of the HTML report of every bundled sample trace.

Each trace is analysed once; then its report is rendered and written with ``--format
html:FILE``'s own code (``write_report``), ``--repeat`` times, and the median is printed with
the size of the file. The limits (5 MB = 5,000,000 bytes, 2 s) are printed beside them. plotly's
own JavaScript is about 4.8 MB of every file; the rest is the trace's figures and text. The
first write of the process also imports plotly and is printed apart ("cold"). Last, one t-SNE
panel of the low-dimensional view is timed at 64, 150 (the most a panel keeps) and 300 samples
of 64 features, the median of three, and importing scikit-learn's t-SNE (which the view does
without) in a fresh interpreter, where scikit-learn is installed.

Run: ``python bench/bench_html.py [--quick] [--repeat N]``. Exits 1 when a file is over 5 MB
(sizes do not depend on the machine; times do, and are only printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dbgcli.analysis import Options, analyze
from dbgcli.cli.output import write_report
from dbgcli.report.html.embedding import pca, tsne

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 5_000_000
MAX_SECONDS = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Two traces, one write each.")
    parser.add_argument("--repeat", type=int, default=3, help="Writes per trace (median).")
    args = parser.parse_args()
    traces = sorted((ROOT / "sample_traces").glob("*.h5"))
    repeat = args.repeat
    if args.quick:
        traces, repeat = [ROOT / "sample_traces" / "numpy_mlp_dead_relu.h5", traces[-1]], 1
    over = []
    print(f"{'trace':<30} {'size MB':>8} {'write s':>8} {'analyse s':>10}  limits (5 MB, 2 s)")
    with tempfile.TemporaryDirectory() as work:
        page = Path(work) / "report.html"
        cold = None
        for trace in traces:
            started = time.perf_counter()
            report = analyze([trace], Options())
            analysed = time.perf_counter() - started
            times = []
            for _ in range(max(1, repeat)):
                started = time.perf_counter()
                write_report(report, "html", page, quiet=False)
                times.append(time.perf_counter() - started)
            if cold is None:
                cold = times.pop(0) if len(times) > 1 else times[0]
            size = page.stat().st_size
            seconds = statistics.median(times)
            verdict = "ok" if size <= MAX_BYTES and seconds <= MAX_SECONDS else "OVER"
            if size > MAX_BYTES:
                over.append(trace.name)
            print(
                f"{trace.name:<30} {size / 1e6:>8.3f} {seconds:>8.2f} {analysed:>10.2f}  {verdict}"
            )
    print(f"first write of the process (imports plotly): {cold:.2f} s")
    time_tsne(quick=args.quick)
    if over:
        print(f"over {MAX_BYTES} bytes: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


def time_tsne(*, quick: bool) -> None:
    """Seconds of one t-SNE panel by its number of samples, and of importing scikit-learn's."""
    generator = np.random.default_rng(0)
    for samples in (64,) if quick else (64, 150, 300):
        centres = generator.normal(size=(4, 64)) * 4
        values = centres[np.arange(samples) % 4] + generator.normal(size=(samples, 64))
        seconds = []
        for _ in range(1 if quick else 3):
            started = time.perf_counter()
            tsne(values, pca(values)[0])
            seconds.append(time.perf_counter() - started)
        print(f"t-SNE panel of {samples} samples: {statistics.median(seconds):.3f} s")
    if importlib.util.find_spec("sklearn") is not None:
        command = [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); "
            "import sklearn.manifold; print(time.perf_counter() - t)",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        print(f"importing sklearn.manifold in a fresh interpreter: {float(result.stdout):.2f} s")


if __name__ == "__main__":
    sys.exit(main())
