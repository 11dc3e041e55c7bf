# Both targets bootstrap .venv from the project's own files (pyproject.toml), nothing hand-installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/serverlab demo

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.bench_sim
	$(BIN)/python -m benchmarks.bench_servers
	$(BIN)/python -m benchmarks.bench_loadgen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
