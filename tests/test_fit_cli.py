"""run_fit end to end (pipeline.estimate.report): a small censored dataset of
Stein 2019's kinetic model in, estimates, individual estimates, plots, summary
and a scenario cohort out; input errors as one-line messages."""
import csv
import dataclasses
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.estimate.data import DataError, write_dataset
from pipeline.estimate.report import run_fit
from tests.test_saem import kinetics_cohort, simulate_stein

FIT = """
[parameters.foldx]
initial = 2000.0
[parameters.Tmax]
initial = 12.0
[parameters.Cmax]
initial = 20000.0
[parameters.alpha]
initial = 0.2
[parameters.FB]
initial = 0.01
[parameters.beta]
initial = 0.004

[[covariates]]
parameter = "foldx"
covariate = "tumour_burden_cells"
kind = "continuous"
reference = 1e10

[residual]
model = "lognormal"
sigma = 1.0

[saem]
seed = 3
k1 = 60
k2 = 30
kernels = [1, 1, 1]

[standard_errors]
iterations = 30

[likelihood]
importance_samples = 50

[individual]
iterations = 5

[diagnostics]
vpc_simulations = 50
"""
LIMIT = 20.0       # copies/ug


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    rng = np.random.default_rng(9)
    data = simulate_stein(60, rng)
    blq = data.value < LIMIT
    data = dataclasses.replace(
        data, value=np.where(blq, LIMIT, data.value), blq=blq,
        covariates={"tumour_burden_cells": 1e10 * np.exp(rng.standard_normal(60))})
    write_dataset(data, folder / "data.csv")
    (folder / "fit.toml").write_text(FIT)
    return folder, data


@pytest.fixture(scope="module")
def outputs(inputs):
    folder, _ = inputs
    return run_fit(folder / "data.csv", "stein", folder / "fit.toml", folder / "out")


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_run_fit_writes_every_output(outputs, inputs):
    _, data = inputs
    assert set(outputs) == {"estimates", "omega", "individual", "summary", "gof", "vpc",
                            "convergence", "cohort"}
    estimates = {r["parameter"]: r for r in _rows(outputs["estimates"])}
    assert list(estimates) == ["foldx", "Tmax", "Cmax", "alpha", "FB", "beta",
                               "beta_foldx_tumour_burden_cells",
                               *(f"omega2_{p}" for p in ("foldx", "Tmax", "Cmax", "alpha",
                                                         "FB", "beta")), "sigma_cart"]
    for row in estimates.values():
        low, value, high = (float(row[k]) for k in ("ci_low", "estimate", "ci_high"))
        assert low < value < high and float(row["se"]) > 0
    assert 0 <= float(estimates["beta_foldx_tumour_burden_cells"]["p_value"]) <= 1
    assert 0.3 < float(estimates["sigma_cart"]["estimate"]) < 0.9
    assert len(_rows(outputs["omega"])) == 6
    individual = _rows(outputs["individual"])
    assert [r["id"] for r in individual] == [str(i) for i in data.ids]
    assert all(float(r["foldx"]) > 0 for r in individual)
    summary = Path(outputs["summary"]).read_text()
    for text in ("-2 log-likelihood", "AIC", "BIC", f"{int(data.blq.sum())} below the limit"):
        assert text in summary
    for key in ("gof", "vpc", "convergence"):
        image = matplotlib.image.imread(outputs[key])
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01


def test_run_fit_cohort_is_a_kinetics_cohort(outputs):
    cohort = kinetics_cohort(Path(outputs["cohort"]).read_text())
    (effect,) = cohort.effects
    assert (effect.parameter, effect.covariate) == ("foldx", "tumour_burden_cells")


def test_run_fit_reports_input_errors_in_one_line(inputs, tmp_path):
    folder, data = inputs
    bad = tmp_path / "bad.toml"
    bad.write_text(FIT.replace('covariate = "tumour_burden_cells"', 'covariate = "weight"'))
    with pytest.raises(ConfigError, match=r"bad\.toml: covariates\[0\]\.covariate: 'weight' "
                                          r"is not a covariate of the data"):
        run_fit(folder / "data.csv", "stein", bad, tmp_path / "out")
    bad.write_text(FIT.replace("[parameters.beta]", "[parameters.gamma]"))
    with pytest.raises(ConfigError, match=r"parameters\.gamma: not a parameter of the model"):
        run_fit(folder / "data.csv", "stein", bad, tmp_path / "out")
    other = dataclasses.replace(data, name=np.full(data.name.size, "il6", object))
    write_dataset(other, tmp_path / "il6.csv")
    with pytest.raises(DataError, match=r"il6\.csv: row 2, column name"):
        run_fit(tmp_path / "il6.csv", "stein", folder / "fit.toml", tmp_path / "out")
