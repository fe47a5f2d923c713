"""The ``cartcohort`` command, run as a user runs it: in a subprocess.

The first command that integrates (``run``, ``simulate-data``, ``fit``) may
compile the kernel (about 30 s on a cold Numba disk cache); later runs load it
from the cache.
"""
import re
from pathlib import Path
import subprocess
import sys

import pytest

from kernels.models import get_model

TIMEOUT = 600   # a cold Numba cache compiles the kernel first
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT = str(CONFIGS / "default.toml")
SMALL_SCENARIO = """
[scenario]
name = "small"
model = "cart"
seed = 5
patients = 100
horizon_days = 365.0

[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8
"""
# a second arm, so that a run prints a comparison with the reference arm
LOW_DOSE_ARM = """
[[arms]]
name = "low"
policy = "fixed"
dose_cells = 3e7
"""


def cartcohort(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    config = tmp_path_factory.mktemp("scenario") / "small.toml"
    config.write_text(SMALL_SCENARIO + LOW_DOSE_ARM)
    return config


def run_200(config, out):
    return cartcohort("run", str(config), "--out", str(out), "--patients", "200",
                      "--shard-size", "100", "--workers", "1")


@pytest.fixture(scope="module")
def small_run(small_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "first"
    return out, run_200(small_config, out)


def test_models_lists_states_and_parameters():
    result = cartcohort("models")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    cart = get_model("cart")
    for p in cart.parameters:
        assert re.search(rf"^{re.escape(p.name)}\s+{re.escape(p.unit)}\s", out, re.M), p.name
    for s in cart.states:
        assert re.search(rf"^{re.escape(s.name)}\s+{re.escape(s.unit)}\s", out, re.M), s.name
    assert "docs/models.md#cart" in out                # sources are shown
    assert "predator_prey_cytokine" in out             # model(cytokine=True) is listed too
    assert re.search(r"^sigma\s", out, re.M) and re.search(r"^gamma\s", out, re.M)


def test_validate_summarises_the_scenario():
    result = cartcohort("validate", DEFAULT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^scenario\s+default ", out, re.M)
    assert re.search(r"^model\s+cart2$", out, re.M)
    assert re.search(r"^patients\s+100000 in 10 shard\(s\) of up to 10000$", out, re.M)
    assert re.search(r"^horizon\s+365 days, rtol 1e-06, atol 1e-09$", out, re.M)
    for arm in ("fixed", "adaptive", "oracle"):
        assert re.search(rf"^arm {arm}\s+\S", out, re.M), arm
    assert re.search(r"^sha256\s+[0-9a-f]{64}$", out, re.M)


def test_run_summary(small_run):
    out_dir, result = small_run
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Does the policy beat the reference?")
    assert re.search(r"^  low: response [-+]\d", out, re.M)
    for label in ("rates per arm", "response (tumour <= 1% of baseline at day 28)",
                  "severe CRS", "relapse", "paired differences vs fixed"):
        assert label in out, label
    # every patient of both arms integrated: 200 ok patients in each arm's rates
    rates = out.split("rates per arm", 1)[1].split("paired differences", 1)[0]
    for arm in ("fixed", "low"):
        row = re.search(rf"^{arm}\s+(\d+)\s+(\d+\.\d)% \[", rates, re.M)
        assert row and int(row[1]) == 200 and 0.0 <= float(row[2]) <= 100.0, arm
    counts = cartcohort("query", str(out_dir), "SELECT arm, status, count(*) AS n FROM "
                        "patients GROUP BY arm, status ORDER BY arm, status")
    assert counts.returncode == 0, counts.stderr
    assert re.findall(r"^(\w+)\s+(\d+)\s+(\d+)$", counts.stdout, re.M) == [
        ("fixed", "0", "200"), ("low", "0", "200")]
    # progress and file names go to stderr, not into the summary
    assert "shards 2/2 (100%)" in result.stderr and "wrote " in result.stderr
    assert "shards" not in out and "wrote " not in out
    assert (out_dir / "report" / "report.md").stat().st_size > 0


def test_run_is_reproducible(small_config, small_run, tmp_path):
    first_dir, first = small_run
    assert first.returncode == 0, first.stderr
    again = run_200(small_config, tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    sql = ("SELECT arm, patient_id, status, il6_peak_pg_ml, tumour_end_cells, cart_auc_cells_d "
           "FROM patients ORDER BY arm, patient_id")
    rows = [cartcohort("query", "--csv", str(run), sql) for run in (first_dir, tmp_path / "again")]
    assert all(r.returncode == 0 for r in rows), [r.stderr for r in rows]
    assert len(rows[0].stdout.splitlines()) == 1 + 400
    assert rows[0].stdout == rows[1].stdout


@pytest.mark.parametrize("args", [
    ("run", DEFAULT, "--patients", "-5"),
    ("run", DEFAULT, "--patients", "many"),
    ("models", "--no-such-option"),
    ("validate",),
    ("no-such-command",),
    (),
])
def test_bad_arguments_exit_2_with_one_line(args):
    result = cartcohort(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], result.stderr


@pytest.mark.parametrize("args", [("--help",), ("models", "--help"), ("run", "--help"),
                                  ("validate", "--help")])
def test_help(args):
    result = cartcohort(*args)
    assert result.returncode == 0
    assert "usage: cartcohort" in result.stdout


def test_version():
    result = cartcohort("--version")
    assert result.returncode == 0 and re.fullmatch(r"cartcohort \S+\n", result.stdout)


_COMMANDS_PROBE = """
import argparse, json
from pipeline.cli import build_parser
def commands(p, prefix):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + [name]
                yield from commands(sub, prefix + [name])
print(json.dumps([[]] + list(commands(build_parser(), []))))
"""
_HELP_PROBE = """
import contextlib, io, json, sys
from pipeline.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:] + ["--help"])
print(json.dumps(sorted(m for m in ("numba", "kernels", "pandas", "dask", "distributed")
                        if m in sys.modules)))
"""


def test_every_help_loads_neither_numba_nor_the_models():
    """--help of the program and of every command (and risk action), each in a
    fresh interpreter, imports no Numba, kernels, pandas or Dask: what keeps it
    fast (timed in no unit test)."""
    import json

    def probe(code, *argv):
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    commands = probe(_COMMANDS_PROBE)
    assert len(commands) > 10
    heavy = {" ".join(argv): probe(_HELP_PROBE, *argv) for argv in commands}
    assert {command: loaded for command, loaded in heavy.items() if loaded} == {}


# -- simulate-data, fit, risk ----------------------------------------------------

def test_simulate_data_writes_a_dataset_the_fitter_reads(tmp_path):
    from pipeline.estimate.data import read_dataset

    config = tmp_path / "small.toml"
    config.write_text(SMALL_SCENARIO)
    out = tmp_path / "data.parquet"
    result = cartcohort("simulate-data", str(config), "--out", str(out), "--days", "1,7,28,90",
                        "--patients", "30", "--loq", "tumour=1e6,cart=1e5,il6=1",
                        "--observations", "tumour,il6")
    assert result.returncode == 0, result.stderr
    data = read_dataset(out)
    assert data.n_individuals == 30 and data.n_observations == 30 * 4 * 2
    assert set(data.name) == {"tumour", "il6"} and "tumour_burden_cells" in data.covariates
    assert result.stdout.startswith("30 patients, 240 observations")
    bad = cartcohort("simulate-data", str(config), "--out", str(out), "--days", "1,x")
    assert bad.returncode == 2 and "--days" in bad.stderr


def test_fit_runs_saem_from_the_command_line(tmp_path):
    from pipeline.estimate.data import write_dataset
    from pipeline.estimate.simulate import simulate_dataset

    days = [1.0, 4.0, 9.0, 14.0, 28.0, 60.0, 90.0, 180.0, 270.0, 365.0]
    data = simulate_dataset("stein", 60, days, sigma=0.3, seed=3)
    path = tmp_path / "stein.csv"
    write_dataset(data, path)
    fit_config = CONFIGS / "fit_stein.toml"
    result = cartcohort("fit", str(path), "--model", "stein", "--config", str(fit_config),
                        "--out", str(tmp_path / "fit"))
    assert result.returncode == 0, result.stderr
    for name in ("estimates.csv", "omega.csv", "individual.csv", "summary.md", "gof.png",
                 "vpc.png", "cohort.toml"):
        assert (tmp_path / "fit" / name).stat().st_size > 0, name
    assert "foldx" in result.stdout
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",", ",-", 1)             # a negative time on file row 4
    path.write_text("\n".join(lines) + "\n")
    bad = cartcohort("fit", str(path), "--model", "stein", "--config", str(fit_config),
                     "--out", str(tmp_path / "fit2"))
    assert bad.returncode == 2 and "row 4" in bad.stderr and len(bad.stderr.splitlines()) == 1
