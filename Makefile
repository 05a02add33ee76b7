# Two entry points that do all set-up themselves: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint clean browser

# The venv is rebuilt only when pyproject.toml changes, so repeated runs start at once.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/leafgen run --config configs/demo.yaml

# The report test drives headless Chromium: Debian's packages, installed when missing and we are root.
browser:
	@command -v chromedriver >/dev/null && command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "note: no Chromium (apt-get install chromium chromium-driver); the report browser test skips"

test: $(STAMP) browser
	$(BIN)/python -m pytest --durations=25

lint: $(STAMP)
	$(BIN)/ruff check leafgen tests benchmarks jobs

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis .ruff_cache
