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

## make bench: install the system packages it needs (PostgreSQL 15, OpenSSH, Debian's pgcopydb: the same
## script as make test), then measure ours against the guide's commands, bare pg_restore, Heroku's pipe
## and pgcopydb (README, "make bench"); results in bench/results/latest.{md,json}
bench: $(STAMP)
	sh scripts/install-test-deps.sh
	$(BIN)/python bench/run.py

## make bench-quick: every row and check on a small database (a smoke run); bench/run.py names any
## missing tool and the package that installs it
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache
