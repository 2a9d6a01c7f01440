# The two commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= dfg-data
PORT ?= 8080
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: the product on the embedded default (SQLite under ./dfg-data): create the demo
## federation on first run, fill it with signed activity, verify it end to end, then
## serve the consent API on http://127.0.0.1:$(PORT), 8080 unless PORT=... (Ctrl-C stops it).
run: $(STAMP)
	@if [ ! -f $(DATA)/ledger.sqlite ]; then \
		$(BIN)/dfg init --data $(DATA) && \
		$(BIN)/dfg demo populate --data $(DATA) --entries 5000; \
	fi
	$(BIN)/dfg audit verify --data $(DATA)
	$(BIN)/dfg projections status --data $(DATA)
	$(BIN)/dfg serve --data $(DATA) --host 127.0.0.1 --port $(PORT)

## test: the whole suite (PostgreSQL from DFG_TEST_DATABASE_URL; slow tests included).
test: $(STAMP)
	@.ci/ensure-postgres
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/dfg bench ledger --events 100000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
