# The two commands a user needs: `make run` and `make test`.
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# the default scenario (100,000 patients x 3 arms) on a local Dask cluster; run
# again, it keeps the finished dataset and prints the table
run: $(STAMP)
	$(BIN)/cartcohort run configs/default.toml --resume

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.kernel
	$(BIN)/python -m benchmarks.pipeline --sizes 10000,100000

clean:
	rm -rf $(VENV) *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
