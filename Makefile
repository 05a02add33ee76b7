# Two entry points that do all set-up themselves: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint clean

# The venv is rebuilt only when pyproject.toml changes, so repeated runs start at once.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/leafgen run --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest --durations=25

lint: $(STAMP)
	$(BIN)/ruff check leafgen tests benchmarks jobs

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis .ruff_cache
