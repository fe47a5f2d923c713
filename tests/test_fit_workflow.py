"""The fitting workflow as a new user meets it (issue 13): the README's commands
run as written, observations the model does not predict are ignored out loud,
VPC bands from the finite replicates, variance intervals on the log scale,
poorly determined estimates flagged and kept out of cohort.toml, fit's help
listing the models its error lists, simulate-data refusing an unknown output
type, and validate telling a fit configuration from a scenario."""
import dataclasses
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.estimate import diagnostics
from pipeline.estimate.data import DataError, make_dataset, write_dataset
from pipeline.estimate.fitconfig import is_fit_config
from pipeline.estimate.likelihood import Observations
from pipeline.estimate.report import (RSE_LIMIT_PERCENT, cohort_toml, estimate_rows,
                                      flag_warning, load_inputs, summary_markdown)
from pipeline.estimate.saem import PopulationSpec, SaemSettings, Z95, fit
from pipeline.estimate.structural import get_structural
from tests.test_saem import (SCENARIO_HEAD, STEIN_DAYS, LinearModel, simulate_stein,
                             simulate_toy)

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 600
FIT = REPO / "configs" / "fit_stein.toml"


def cartcohort(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT)


# -- 1. the README's commands --------------------------------------------------------

def readme_section(title="### Fitting models to data"):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start)
    return text[start:end if end >= 0 else None]


def shell_commands(section):
    """The commands of the section's ```sh blocks, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_fitting_commands_run_as_written(tmp_path):
    """Every command of the section, run as written in a fresh folder (the
    repository's configs/ linked in, ``cartcohort`` this tree's), exits 0 and
    leaves the files the section promises; fit says in one line which
    observations it ignored."""
    section = readme_section()
    commands = shell_commands(section)
    assert [c.split()[:2] for c in commands] == [["cartcohort", "simulate-data"],
                                                 ["cartcohort", "fit"]]
    (tmp_path / "configs").symlink_to(REPO / "configs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "cartcohort"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pipeline.cli "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    results = [subprocess.run(["sh", "-c", c], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT) for c in commands]
    for command, result in zip(commands, results):
        assert result.returncode == 0, f"{command}\n{result.stderr}"
    data_file = re.search(r"--out (\S+)", commands[0])[1]
    out_dir = tmp_path / re.search(r"--out (\S+)", commands[1])[1]
    promised = re.search(r"`fit` writes(.*?)(?:, the fitted|\.\s)", section, re.S)[1]
    files = re.findall(r"`([\w.]+\.\w+)`", promised)
    assert {"estimates.csv", "summary.md", "vpc.png", "cohort.toml"} <= set(files)
    assert (tmp_path / data_file).stat().st_size > 0
    for name in files:
        assert (out_dir / name).stat().st_size > 0, name
    ignored = [line for line in results[1].stderr.splitlines() if "ignoring" in line]
    assert len(ignored) == 1 and "tumour" in ignored[0] and "il6" in ignored[0], \
        results[1].stderr


# -- 1. observations the model does not predict ----------------------------------------

def test_fit_ignores_the_observations_the_model_does_not_predict(tmp_path):
    """cart and il6 rows for the stein model (which predicts cart): the il6 rows
    are left out, one note names them and their count, and an individual with
    only il6 rows goes with them; data with no cart row at all are refused."""
    cart = simulate_stein(4, np.random.default_rng(1))
    n_il6 = 5 * STEIN_DAYS.size
    data = make_dataset(
        np.arange(5), np.concatenate([cart.individual, np.repeat(np.arange(5), STEIN_DAYS.size)]),
        np.concatenate([cart.time, np.tile(STEIN_DAYS, 5)]),
        np.concatenate([cart.name, np.full(n_il6, "il6", object)]),
        np.concatenate([cart.value, np.ones(n_il6)]))
    write_dataset(data, tmp_path / "mixed.csv")
    structural, kept, _, notes = load_inputs(tmp_path / "mixed.csv", "stein", FIT)
    assert set(kept.name) == {"cart"} and kept.n_observations == cart.n_observations
    assert kept.n_individuals == 4 and list(kept.ids) == [0, 1, 2, 3]
    (note,) = notes
    assert (f"model 'stein' predicts cart; ignoring the observations of il6 ({n_il6} rows) "
            f"and 1 individuals left with none") in note
    only_il6 = dataclasses.replace(cart, name=np.full(cart.n_observations, "il6", object))
    write_dataset(only_il6, tmp_path / "il6.csv")
    with pytest.raises(DataError, match=r"il6\.csv: row 2, column name"):
        load_inputs(tmp_path / "il6.csv", "stein", FIT)


# -- 2. VPC bands ------------------------------------------------------------------------

def test_vpc_bands_come_from_the_finite_replicates():
    """A population whose FB reaches 1 (Stein's bound, predicted NaN) in some
    simulated individuals: the note counts them and says why, and every VPC
    band, median and NPD is finite; np.percentile would make every band NaN."""
    data = simulate_stein(40, np.random.default_rng(3))
    structural = get_structural("stein")
    observations = Observations.bind(structural, data, "lognormal",
                                     structural.parameter_names, {})
    typical = np.log([3900.0, 9.3, 24000.0, 0.16, 0.1, 0.0032])        # FB 0.1
    omega = np.diag([0.5, 0.1, 0.3, 0.3, 1.5, 0.3])                    # FB >= 1: 3%
    population = np.tile(typical, (40, 1))
    result = types.SimpleNamespace(observations=observations, coef=None, omega=omega,
                                   sigma=np.array([0.3]), mode=population,
                                   design=types.SimpleNamespace(mean=lambda coef: population))
    checks = diagnostics.diagnose(result, 50, np.random.default_rng(4))
    bad = ~np.isfinite(checks.simulated)
    assert 0 < bad.sum() and bad.any(axis=1).mean() > 0.5      # most replicates hit
    match = re.fullmatch(r"VPC: (\d+) of 20,000 simulated values are not finite, in (\d+) of "
                         r"2,000 simulated individuals and (\d+) of 50 replicates \((\d+) with "
                         r"FB >= 1 \(beyond the model's bound\)\); NPDs and VPC bands use the "
                         r"finite values", checks.nonfinite)
    assert match, checks.nonfinite
    assert int(match[1]) == bad.sum() and int(match[3]) == bad.any(axis=1).sum()
    assert int(match[2]) == int(match[4]) == int(match[1]) // STEIN_DAYS.size
    assert np.isfinite(checks.npd).all()
    (bins,) = diagnostics.vpc_bins(result, checks, 0)
    assert np.isfinite(bins.band).all() and np.isfinite(bins.median).all()
    assert np.all(bins.band[:, :, 0] <= bins.band[:, :, 1])


# -- 3. intervals, flags, cohort.toml -------------------------------------------------------

@pytest.fixture(scope="module")
def toy_result():
    """A quick fit of two parameters (k, a: the cart model's names) of the
    linear toy model, full Omega and a continuous covariate effect."""
    rng = np.random.default_rng(6)
    model = LinearModel(("k", "a"))
    n = 100
    tumour = 1e10 * np.exp(rng.standard_normal(n))
    population = np.column_stack([np.log(0.15) + 0.3 * np.log(tumour / 1e10),
                                  np.full(n, np.log(0.8))])
    data = simulate_toy(model, population, np.array([[0.3, 0.1], [0.1, 0.2]]), 0.3, rng,
                        {"tumour_burden_cells": tumour})
    from pipeline.estimate.population import Effect
    spec = PopulationSpec(("k", "a"), {"k": 0.2, "a": 1.0}, {"k": 1.0, "a": 1.0},
                          full_omega=True,
                          effects=(Effect("k", "tumour_burden_cells", "continuous", 1e10),),
                          residual="additive", sigma_initial=1.0)
    return fit(model, data, spec, SaemSettings(k1=40, k2=30, fim_iterations=20,
                                               importance_samples=20, mode_iterations=2))


def _with_se(result, se):
    """The result with the standard errors {label: se} (others kept), covariances 0."""
    current = dict(zip(result.labels, result.standard_errors))
    current.update(se)
    return dataclasses.replace(result, covariance=np.diag([current[label] ** 2
                                                           for label in result.labels]))


def test_variance_intervals_are_on_the_log_scale(toy_result):
    """omega2 and sigma: exp(log v +- 1.96 SE / v), > 0 even where the Wald
    interval v +- 1.96 SE would go below 0 (omega2 0.30 with SE 0.30)."""
    omega = toy_result.omega[0, 0]
    result = _with_se(toy_result, {"omega2_k": omega})
    rows = {r["parameter"]: r for r in estimate_rows(result)}
    assert omega - Z95 * omega < 0                                   # Wald would be
    assert np.isclose(rows["omega2_k"]["ci_low"], omega * np.exp(-Z95))
    assert np.isclose(rows["omega2_k"]["ci_high"], omega * np.exp(Z95))
    sigma, se_sigma = rows["sigma_y"]["estimate"], rows["sigma_y"]["se"]
    assert np.isclose(rows["sigma_y"]["ci_low"], sigma * np.exp(-Z95 * se_sigma / sigma))
    for row in rows.values():
        if row["parameter"].startswith(("omega2_", "sigma_")):
            assert 0 < row["ci_low"] < row["estimate"] < row["ci_high"], row


def _cohort(text):
    from pipeline.config import scenario_from_text

    return scenario_from_text(SCENARIO_HEAD.format(model="cart") + text).cohort


def test_poorly_determined_estimates_are_flagged_and_kept_out_of_cohort_toml(toy_result):
    """k's typical value at RSE 236% (its sd_log goes with it), omega2_a alone
    at 80%, the effect at 120%, a covariance at 90%: each flagged in the table
    and summary.md, named in the one-line warning, and left out of cohort.toml
    with a comment; the scenario reader then takes the model's values."""
    beta = "beta_k_tumour_burden_cells"
    coef = dict(zip(toy_result.design.labels, toy_result.coef))
    result = _with_se(toy_result, {"k": 2.36, "omega2_a": 0.8 * toy_result.omega[1, 1],
                                   beta: 1.2 * abs(coef[beta]),
                                   "omega_a_k": 0.9 * abs(toy_result.omega[1, 0])})
    rows = {r["parameter"]: r for r in estimate_rows(result)}
    assert np.isclose(rows["k"]["rse_percent"], 236.0)
    flagged = {label for label, row in rows.items() if row["flag"]}
    assert flagged == {"k", "omega2_a", beta}      # omega.csv carries the covariance
    assert rows["k"]["flag"] == f"RSE > {RSE_LIMIT_PERCENT:g}%"
    warning = flag_warning(result)
    assert "\n" not in warning and "k (236%)" in warning and "omega2_a (80%)" in warning
    summary = summary_markdown(result, "cart", "data.csv", [warning])
    assert f"RSE above {RSE_LIMIT_PERCENT:g}%" in summary and warning in summary
    assert re.search(r"^\| k \|.*\*\*RSE > 50%\*\* \|$", summary, re.M)
    text = cohort_toml(result, "cart")
    assert "# typical and sd_log left out: typical k = " in text
    assert "# sd_log left out: " in text and "# effect left out: " + beta in text
    cohort = _cohort(text)
    from kernels.models import get_model

    model = {p.name: p for p in get_model("cart").parameters}
    by_name = {p.name: p for p in cohort.parameters}
    assert by_name["k"].typical == model["k"].typical and by_name["k"].sd_log == model["k"].sd_log
    assert np.isclose(by_name["a"].typical, result.typical["a"], rtol=1e-5)
    assert by_name["a"].sd_log == model["a"].sd_log
    assert not cohort.effects


def test_a_flagged_covariance_leaves_the_correlation_out(toy_result):
    result = _with_se(toy_result, {"omega_a_k": 0.9 * abs(toy_result.omega[1, 0])})
    assert "omega_a_k" in flag_warning(result)
    text = cohort_toml(result, "cart")
    assert "[cohort.correlation]\n" not in text and "# [cohort.correlation] left out" in text
    assert _cohort(text).correlation is None
    assert "(**RSE > 50%** on the covariance)" in summary_markdown(result, "cart", "d.csv")
    assert "[cohort.correlation]\n" in cohort_toml(toy_result, "cart")   # when not flagged


def test_no_standard_errors_flags_every_estimate(toy_result):
    """A Fisher information that is not positive definite gives no SE: every
    estimate flagged "no SE", one line saying so and naming the direction of
    negative curvature, nothing estimated in cohort.toml."""
    information = np.diag(np.arange(1.0, len(toy_result.labels) + 1))
    information[2, 2] = -5.0
    result = dataclasses.replace(toy_result, information=information,
                                 covariance=np.full(information.shape, np.nan))
    assert all(r["flag"] == "no SE" for r in estimate_rows(result))
    warning = flag_warning(result)
    assert warning.startswith("no standard errors: the observed Fisher information is not "
                              "positive definite (negative curvature -5, mostly along "
                              f"{toy_result.labels[2]})")
    text = cohort_toml(result, "cart")
    assert "typical =" not in text and "sd_log =" not in text.split("[cohort.covariates")[0]


# -- 4. fit --help ----------------------------------------------------------------------

def test_fit_help_and_error_agree_on_the_models():
    """fit --help names the kinds of model without loading the model library
    (an unknown --model lists every name, from structural_names alone)."""
    from pipeline.estimate.structural import structural_names

    listed = ", ".join(structural_names())
    helped = cartcohort("fit", "--help")
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "stein, stein_ode or a kernel model; an unknown --model lists them" in text
    assert "individual WLS" not in text
    refused = cartcohort("fit", "data.csv", "--model", "nope", "--config", str(FIT),
                         "--out", "never")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"cartcohort fit: error: unknown model 'nope'; models "
                                      f"are {listed}")
    assert {"stein", "stein_ode", "cart2"} <= set(structural_names())


# -- 5. simulate-data --out ----------------------------------------------------------------

def test_simulate_data_refuses_an_unknown_output_type_before_computing(tmp_path):
    out = tmp_path / "x.xlsx"
    result = cartcohort("simulate-data", "configs/default.toml", "--out", str(out),
                        "--days", "1,7", "--patients", "100000")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"cartcohort simulate-data: error: {out}: unknown data "
                                      f"file type '.xlsx'; data files are .csv, .parquet, .pq")
    assert not out.exists()
    with pytest.raises(DataError, match=r"x\.txt: unknown data file type '\.txt'"):
        write_dataset(simulate_stein(1, np.random.default_rng(0)), tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()


# -- 6. validate a fit configuration ------------------------------------------------------------

def test_validate_says_a_fit_configuration_is_not_a_scenario():
    assert is_fit_config(FIT) and not is_fit_config(REPO / "configs" / "default.toml")
    result = cartcohort("validate", "configs/fit_stein.toml")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == ("cartcohort validate: error: configs/fit_stein.toml: this "
                                      "is a fit configuration (for cartcohort fit --config), "
                                      "not a scenario")
