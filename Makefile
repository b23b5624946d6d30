# The README's two commands: `make demo` and `make test`. Everything they need is set up here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench bench-quick clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

## make demo: a sandbox PostgreSQL with BIG SKIES sample data is backed up, listed, verified and restored
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## make test: install what the suite needs (root + apt), then run the whole suite against real services
test: $(STAMP)
	sh scripts/install-test-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -p no:cacheprovider -q -n 2 --dist loadfile --no-loadscope-reorder tests

bench: $(STAMP)
	sh scripts/install-test-deps.sh
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache
