# The two commands a newcomer needs: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint servers bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the demo pipeline (embedded Modbus simulator -> CSV) for a short while.
run: $(STAMP)
	$(BIN)/flowcollect run pipelines/demo.py --duration 10

## Install the servers the tests use, then run the suite but its slow tests (about 10 minutes).
test: $(STAMP) servers
	$(BIN)/python -m pytest -m "not slow" --durations=25

## The slow tests alone (soak, takeovers, kill -9 runs, a 20,000-node server): CI runs them too.
test-slow: $(STAMP) servers
	$(BIN)/python -m pytest -m slow --durations=10

servers:
	@bash scripts/install-servers.sh

lint: $(STAMP)
	$(BIN)/ruff check flowcollect tests bench pipelines
	$(BIN)/ruff format --check flowcollect tests bench pipelines
	$(BIN)/mypy

bench: $(STAMP) servers
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache out
