# Two commands set everything up on a fresh machine:
#   make demo   virtual environment, core install, dbg on the bundled sample traces
#   make test   test extras (torch, transformers, xgboost, lightning, ...) and the whole suite
#
# torch==2.13.0 (CPU) is installed explicitly before anything that depends on torch, so pip
# never resolves torch by itself (any other request pulls gigabytes of CUDA wheels).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test install install-test samples bench screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# setup.py builds the optional compiled kernel (dbgcli/torch/_fused.c) in place.
BUILD := pyproject.toml setup.py dbgcli/torch/_fused.c

$(VENV)/.installed: $(BUILD) | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(BUILD) | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# dbg exits 1 when it finds problems (the pathological samples have them); only 2 is a failure.
demo: $(VENV)/.installed
	$(BIN)/dbg info sample_traces/numpy_mlp_healthy.h5
	$(BIN)/dbg analyze sample_traces/ || test $$? -eq 1

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

# Re-record the bundled sample traces (deterministic).
samples: $(VENV)/.installed-test
	$(BIN)/python examples/numpy_mlp.py --scenario healthy sample_traces/numpy_mlp_healthy.h5
	$(BIN)/python examples/numpy_mlp.py --scenario dead-relu sample_traces/numpy_mlp_dead_relu.h5
	$(BIN)/python examples/numpy_mlp.py --scenario high-lr sample_traces/numpy_mlp_high_lr.h5
	$(BIN)/python examples/record_samples.py --out sample_traces

bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench_writer.py
	$(BIN)/python bench/bench_reader.py
	$(BIN)/python bench/bench_rules.py
	$(BIN)/python bench/bench_jobs.py
	$(BIN)/python bench/bench_watch.py
	$(BIN)/python bench/bench_hook.py --all
	$(BIN)/python bench/bench_xgboost.py
	$(BIN)/python bench/bench_schedulers.py
	$(BIN)/python bench/bench_detection.py
	$(BIN)/python bench/bench_html.py

# Re-take the screenshots of two HTML reports in docs/img/ (needs chromium and chromium-driver).
screenshots: $(VENV)/.installed-test
	$(BIN)/python examples/html_screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache bench/out
