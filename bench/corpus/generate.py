"""Train the calibration corpus: every scenario, every seed, recorded two ways.

    python bench/corpus/generate.py                    # everything into bench/out/corpus
    python bench/corpus/generate.py --quick            # the fast subset (seed 0 of a few)
    python bench/corpus/generate.py --only 'torch-mlp/*' --jobs 2 --out /tmp/corpus
    python bench/corpus/generate.py --seeds 3,4,5 --out /tmp/unseen   # seeds the rules never saw
    python bench/corpus/generate.py --stats-every 1 --out /tmp/every  # tensors at every step

Runs are deterministic (fixed seeds, one thread, deterministic algorithms). A run whose traces
exist and whose source files are unchanged is not trained again (``--force`` retrains). The
manifest (``manifest.json`` in the output directory) lists every trace with its scenario,
seed, recording path, naming convention and the rule id of its induced fault (null for healthy
runs); ``bench/bench_detection.py`` reads it.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import SCENARIOS, RunSpec, Scenario, iter_specs, source_fingerprint  # noqa: E402

# Family modules, imported lazily: the quick subset needs neither transformers nor lightning.
FAMILY_MODULES = ("numpy_runs", "torch_runs", "hf_runs", "lightning_runs", "xgboost_runs")
DEFAULT_OUT = HERE.parent / "out" / "corpus"


def load_scenarios(modules: tuple[str, ...] = FAMILY_MODULES) -> dict[str, Path]:
    """Import the family modules (registering their scenarios); returns module -> source path."""
    sources = {}
    for name in modules:
        if not (HERE / f"{name}.py").exists():
            continue
        module = importlib.import_module(name)
        sources[name] = Path(module.__file__ or "")
    return sources


def _module_of(entry: Scenario) -> str:
    return entry.train.__module__


def _run(module: str, key: str, spec: RunSpec) -> tuple[str, int, float, str | None]:
    """Worker: train one run. Returns (scenario key, seed, seconds, error text)."""
    started = time.perf_counter()
    try:
        importlib.import_module(module)
        spec.hook_path.parent.mkdir(parents=True, exist_ok=True)
        SCENARIOS[key].train(spec)
        missing = [p for p in (spec.hook_path, spec.hand_path) if not p.exists()]
        if missing:
            raise RuntimeError(f"the run wrote no {', '.join(p.name for p in missing)}")
        return key, spec.seed, time.perf_counter() - started, None
    except Exception:  # noqa: BLE001 - one broken scenario must not stop the corpus
        return key, spec.seed, time.perf_counter() - started, traceback.format_exc()


def generate(
    out: Path = DEFAULT_OUT,
    *,
    only: list[str] | None = None,
    quick: bool = False,
    jobs: int = 2,
    force: bool = False,
    verbose: bool = True,
    seeds: tuple[int, ...] | None = None,
    stats_every: int | None = None,
) -> dict[str, Any]:
    """Train what is missing or stale and write the manifest; returns it."""
    sources = load_scenarios()
    common = HERE / "common.py"
    scenarios = [
        s
        for s in SCENARIOS.values()
        if (not quick or s.quick) and (not only or any(fnmatch.fnmatch(s.key, p) for p in only))
    ]
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    previous: dict[str, Any] = {}
    if manifest_path.exists():
        previous = {r["run"]: r for r in json.loads(manifest_path.read_text()).get("runs", [])}
    runs, todo = [], []
    for entry, spec in iter_specs(
        out, scenarios, quick=quick, seeds=seeds, stats_every=stats_every
    ):
        module = _module_of(entry)
        fingerprint = source_fingerprint(common, sources[module])
        run_id = f"{entry.key}/seed{spec.seed}"
        record = {
            "run": run_id,
            "family": entry.family,
            "scenario": entry.name,
            "seed": spec.seed,
            "cause": entry.cause,
            "accept": list(entry.accept),
            "twin": entry.twin,
            "description": entry.description,
            "naming": spec.naming,
            "traces": {
                "hook": str(spec.hook_path.relative_to(out)),
                "hand": str(spec.hand_path.relative_to(out)),
            },
            "fingerprint": fingerprint,
            "stats_every": stats_every,
        }
        old = previous.get(run_id)
        fresh = (
            not force
            and old is not None
            and old.get("fingerprint") == fingerprint
            and old.get("stats_every") == stats_every
            and old.get("error") is None
            and spec.hook_path.exists()
            and spec.hand_path.exists()
        )
        if fresh:
            record["seconds"] = old.get("seconds")
        else:
            todo.append((module, entry.key, spec, record))
        runs.append(record)
    started = time.perf_counter()
    by_id = {r["run"]: r for r in runs}
    if todo:
        # Slow families first, so the pool does not end on one long run.
        todo.sort(key=lambda item: (not item[1].startswith(("hf-", "lightning")), item[1]))
        with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(_run, module, key, spec) for module, key, spec, _ in todo]
            for future in as_completed(futures):
                key, seed, seconds, error = future.result()
                record = by_id[f"{key}/seed{seed}"]
                record["seconds"] = round(seconds, 2)
                record["error"] = error
                if verbose:
                    status = "FAILED" if error else "ok"
                    print(f"{status:6} {seconds:6.1f}s  {key} seed {seed}", flush=True)
                    if error:
                        print(error, file=sys.stderr)
    # Runs outside this selection keep their entries, so that partial runs (--only, --quick)
    # never make the next full run retrain what is already there.
    kept = [record for run_id, record in previous.items() if run_id not in by_id]
    manifest_path.write_text(
        json.dumps({"version": 1, "runs": sorted([*runs, *kept], key=lambda r: r["run"])}, indent=1)
    )
    manifest = {"version": 1, "quick": quick, "runs": sorted(runs, key=lambda r: r["run"])}
    if verbose:
        failed = sum(1 for r in runs if r.get("error"))
        print(
            f"{len(runs)} runs ({len(todo)} trained in {time.perf_counter() - started:.0f} s, "
            f"{failed} failed) -> {manifest_path}"
        )
    return manifest


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", action="append", help="glob on family/scenario (repeatable)")
    parser.add_argument("--quick", action="store_true", help="the fast subset, seed 0")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="retrain everything")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--seeds", help="comma-separated seeds instead of the scenarios' own (e.g. 3,4,5)"
    )
    parser.add_argument(
        "--stats-every",
        type=positive_int,
        help="record tensors every N steps instead of the integrations' default (10)",
    )
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    if args.list:
        load_scenarios()
        for entry in SCENARIOS.values():
            print(f"{entry.key:45} {entry.cause or 'healthy':8} {entry.description[:60]}")
        return 0
    manifest = generate(
        args.out,
        only=args.only,
        quick=args.quick,
        jobs=args.jobs,
        force=args.force,
        seeds=seeds,
        stats_every=args.stats_every,
    )
    return 1 if any(r.get("error") for r in manifest["runs"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
