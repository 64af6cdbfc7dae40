# The README's two commands: `make run` (the whole pipeline on the synthetic sample) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND := tensorflow

.PHONY: install chromium run test test-fast lint format bench clean stack-up stack-down stack-status readme-results

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show
	@echo
	@echo "Metrics:  reports/metrics/*.json     (dvc metrics show)"
	@echo "Plots:    reports/plots/<model>/      (dvc plots show -> dvc_plots/index.html)"
	@echo "Models:   models/<model>/model.json"
	@echo "MLflow:   $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000"

# The UI tests drive Debian's chromium (never a downloaded browser): install it when missing.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the UI tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

test: $(STAMP) chromium
	$(BIN)/pytest -q

# The edit-test loop: unit tests only (no training, servers or CLI subprocesses), a few minutes.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not integration"

# The README's results table, copied from the committed report (tests/test_readme_results.py checks it).
readme-results: $(STAMP)
	$(BIN)/python -c 'import sys; from melanoma.report.summary import main; sys.exit(main(sys.argv[1:]))' README.md reports/README.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_resize.py
	$(BIN)/python benchmarks/bench_download.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_remote.py

# The local S3 (SeaweedFS) + MLflow server on 127.0.0.1 (README "Local stack"); `make run` never needs it.
STACK_DIR ?= .stack
stack-up: $(STAMP)
	$(BIN)/melanoma stack up --dir $(STACK_DIR)

stack-down: $(STAMP)
	$(BIN)/melanoma stack down --dir $(STACK_DIR)

stack-status: $(STAMP)
	$(BIN)/melanoma stack status --dir $(STACK_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dvc_plots
