"""The ``cartcohort`` command, run as a user runs it: in a subprocess.

The first run of ``demo`` may compile the kernel (about 30 s on a cold Numba
disk cache); later runs load it from the cache.
"""
import re
from pathlib import Path
import subprocess
import sys

import pytest

from kernels.models import get_model

TIMEOUT = 600   # a cold Numba cache compiles the kernel first
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
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


def cartcohort(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def demo_200():
    return cartcohort("demo", "--patients", "200", "--threads", "1")


def test_models_lists_states_and_parameters():
    result = cartcohort("models")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    cart = get_model("cart")
    for p in cart.parameters:
        assert re.search(rf"^{re.escape(p.name)}\s+{re.escape(p.unit)}\s", out, re.M), p.name
    for s in cart.states:
        assert re.search(rf"^{re.escape(s.name)}\s+{re.escape(s.unit)}\s", out, re.M), s.name
    assert "DESIGN.md s3" in out                       # sources are shown
    assert "predator_prey_cytokine" in out             # model(cytokine=True) is listed too
    assert re.search(r"^sigma\s", out, re.M) and re.search(r"^gamma\s", out, re.M)


def test_demo_summary(demo_200):
    assert demo_200.returncode == 0, demo_200.stderr
    out = demo_200.stdout
    assert re.search(r"^patients\s+200$", out, re.M)
    counts = {m[0]: int(m[1]) for m in re.findall(r"^status (\w+)\s+(\d+)$", out, re.M)}
    assert set(counts) >= {"ok", "max_steps", "step_underflow", "non_finite"}
    assert sum(counts.values()) == 200
    for label in ("peak IL-6 (pg/mL)", "time of IL-6 peak (days)", "CAR T AUC",
                  "tumour minimum (cells)", "tumour at day 28 (cells)",
                  "tumour at day 365 (cells)", "crude response indicator", "patients/s"):
        assert label in out, label
    median = float(re.search(r"^time of IL-6 peak \(days\)\s+(\S+)", out, re.M)[1])
    assert 0.0 < median < 365.0
    # progress and timing go to stderr, not into the summary
    assert "integrated 200/200 patients" in demo_200.stderr
    assert "integrated" not in out


def test_demo_is_reproducible(demo_200):
    again = cartcohort("demo", "--patients", "200", "--threads", "1")
    assert again.returncode == 0, again.stderr
    strip = lambda text: re.sub(r"^throughput:.*$", "", text, flags=re.M)  # noqa: E731
    assert strip(again.stdout) == strip(demo_200.stdout)


@pytest.mark.parametrize("args", [
    ("demo", "--patients", "-5"),
    ("demo", "--patients", "many"),
    ("demo", "--no-such-option"),
    ("no-such-command",),
    (),
])
def test_bad_arguments_exit_2_with_one_line(args):
    result = cartcohort(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], result.stderr


@pytest.mark.parametrize("args", [("--help",), ("models", "--help"), ("demo", "--help")])
def test_help(args):
    result = cartcohort(*args)
    assert result.returncode == 0
    assert "usage: cartcohort" in result.stdout


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
