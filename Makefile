# The two commands a user needs: `make run` and `make test`.
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench upgrade clean

# installed from constraints.txt: the versions the suite passed with
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -qq -c constraints.txt -e '.[test,bench]'  # -qq: no setuptools notice on editable installs
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

# newest releases in a scratch environment; constraints.txt rewritten only if
# the suite passes on them (then `make test` reinstalls .venv from it)
UPGRADE := .venv-upgrade
upgrade:
	rm -rf $(UPGRADE) && $(PYTHON) -m venv $(UPGRADE)
	$(UPGRADE)/bin/python -m pip install --quiet --upgrade pip
	$(UPGRADE)/bin/python -m pip install --quiet -e '.[test,bench]'
	$(UPGRADE)/bin/python -m pytest -q
	{ sed -n '/^#/p' constraints.txt; $(UPGRADE)/bin/python -m pip freeze --exclude-editable; } \
		> constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf $(UPGRADE)

clean:
	rm -rf $(VENV) $(UPGRADE) *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
