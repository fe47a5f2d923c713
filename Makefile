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
	$(BIN)/python -m pip install -qq -c constraints.txt -e '.[test]'  # -qq: no setuptools notice on editable installs
	touch $(STAMP)

# the benchmarks' compiled peer (numbalsoda) builds from source with a Fortran
# compiler: installed here when this user may, else the benchmark runs without it
BENCH_STAMP := $(VENV)/.installed-bench
FORTRAN := command -v gfortran >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq gfortran >/dev/null; } || true
$(BENCH_STAMP): $(STAMP)
	@$(FORTRAN)
	@if command -v gfortran >/dev/null; then \
		$(BIN)/python -m pip install -qq -c constraints.txt -e '.[test,bench]' && touch $(BENCH_STAMP); \
	else \
		echo "make bench: no Fortran compiler, so the DOP853 peer (numbalsoda) is left out;" \
		     "install gfortran (apt-get install gfortran, dnf install gcc-gfortran or" \
		     "brew install gcc) and run make bench again"; \
	fi

# the default scenario (100,000 patients x 3 arms) on a local Dask cluster; run
# again, it keeps the finished dataset and prints the table
run: $(STAMP)
	$(BIN)/cartcohort run configs/default.toml --resume

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.kernel
	$(BIN)/python -m benchmarks.pipeline --sizes 10000,100000

# newest releases in a scratch environment; constraints.txt rewritten only if
# the suite passes on them (then `make test` reinstalls .venv from it)
UPGRADE := .venv-upgrade
upgrade:
	@$(FORTRAN)
	@command -v gfortran >/dev/null || { echo "make upgrade: the bench extra needs gfortran"; exit 2; }
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
