"""The ``costim`` model (kernels/models/costim.py) and its fitted construct sets
(pipeline/calibration/costim_fit.py).

The stored sets are checked against their published targets with scipy's
solve_ivp (DOP853, tight tolerances) on a numpy transcription of the model's
equations, independently of the batched kernel the fit uses; re-running the
fit must give the stored numbers; the model's extra columns and the report
section are checked on constructed columns and on a small run."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from kernels.models import costim, get_model
from pipeline.calibration import costim_fit
from pipeline.config import load_scenario, scenario_from_text
from pipeline.sections import costim as costim_section
from pipeline.shard import run_shard

STEIN_TMAX_D, STEIN_HALF_LIFE_D = 9.3, 4.3                 # Stein et al. 2019
ZUMA1 = {7.0: 27.5, 14.0: 9.1, 28.0: 2.1, 90.0: 0.1}       # cells/uL, Kimmel et al. 2021
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "costim.toml"


@pytest.fixture(scope="module")
def model():
    return get_model("costim")


def numpy_rhs(y, p):
    """The module docstring's equations, transcribed: y [S, ...], p [P, ...]."""
    T, E, M, X, I = y
    r, Tcap, k, Kk, Ks, alpha, delta, gamma, mu, nu, dM, dX, s, c = p
    stim = T / (Ks + T)
    kill = k * E * T / (1.0 + T / Kk)
    return np.array([
        r * T * (1.0 - T / Tcap) - kill,
        alpha * stim * E - delta * E - gamma * stim * E - mu * E + nu * stim * M,
        mu * E - dM * M - nu * stim * M,
        gamma * stim * E - dX * X,
        s * kill - c * I,
    ])


def car_t_curve(model, construct, dose_cells, t_end):
    """CAR T cells (whole body) of the fits' typical patient as a function of
    time, from scipy's DOP853 on :func:`numpy_rhs` (dose in E at day 0)."""
    params = model.typical_parameters(**costim.FITTED[construct])
    y0 = model.typical_initial_state(T=costim_fit.TUMOUR0_CELLS / 1e9, E=dose_cells / 1e9)
    sol = solve_ivp(lambda t, y: numpy_rhs(y, params), (0.0, t_end), y0, method="DOP853",
                    rtol=1e-10, atol=1e-14, dense_output=True)
    assert sol.success
    return lambda t: 1e9 * sol.sol(t)[1:4].sum(axis=0)


def test_rhs_matches_the_equations(model):
    """The jitted right-hand side equals the transcription at random states."""
    rng = np.random.default_rng(3)
    n = 7
    y = np.ascontiguousarray(np.exp(rng.normal(0.0, 2.0, (5, n))))
    p = np.ascontiguousarray(model.typical_parameters()[:, None]
                             * np.exp(rng.normal(0.0, 0.5, (14, n))))
    dydt = np.zeros_like(y)
    model.rhs(n, np.zeros(n), y, p, dydt)
    np.testing.assert_allclose(dydt, numpy_rhs(y, p), rtol=1e-12, atol=1e-12)


def test_41bb_set_reproduces_stein_peak_and_contraction(model):
    """The 4-1BB set, typical patient at 1e8 cells: the CAR T peak lies within
    2 days of Stein's Tmax 9.3 d, and the time from the peak to half the peak
    within 30% of the contraction half-life 4.3 d."""
    curve = car_t_curve(model, "41bb", 1e8, 60.0)
    grid = np.arange(0.0, 60.0, 0.01)
    level = curve(grid)
    i = int(np.argmax(level))
    peak_day = grid[i]
    half_life = brentq(lambda t: curve(t) - level[i] / 2.0, peak_day, 60.0) - peak_day
    assert abs(peak_day - STEIN_TMAX_D) <= 2.0, peak_day
    assert abs(half_life / STEIN_HALF_LIFE_D - 1.0) <= 0.3, half_life


def test_cd28_set_reproduces_zuma1_medians(model):
    """The CD28 set, typical patient at 2e6 cells/kg x 75 kg: each ZUMA-1
    median blood level (days 7, 14, 28, 90) within a factor 2."""
    curve = car_t_curve(model, "cd28", 2e6 * 75.0, 90.0)
    for day, median in ZUMA1.items():
        ratio = costim.blood_cells_per_ul(curve(day)) / median
        assert 0.5 <= ratio <= 2.0, (day, ratio)


def test_cd28_proliferates_and_contracts_faster():
    cd28, bb = costim.FITTED["cd28"], costim.FITTED["41bb"]
    assert cd28["alpha"] > bb["alpha"]
    assert cd28["delta"] > bb["delta"]


def test_model_carries_the_stored_sets(model):
    """parameter_sets are the stored fits; the typical values are the 4-1BB set."""
    for construct, values in costim.FITTED.items():
        assert model.parameter_set(construct) == values
    for name, value in costim.FITTED["41bb"].items():
        assert model.typical_parameters()[model.parameter_index(name)] == value


@pytest.mark.parametrize("construct", sorted(costim.FITTED))
def test_fit_reproduces_stored_values(construct, model):
    """Re-running the fit from its fixed starting point gives the stored
    numbers (stored to 4 significant digits)."""
    fit = costim_fit.fit_construct(construct, model)
    fitted = costim_fit.rounded(fit.values)
    for name, stored in costim.FITTED[construct].items():
        assert fitted[name] == pytest.approx(stored, rel=1e-3), name


def test_extra_outcomes_thresholds(model):
    """Tumour control is T(day) <= 1% of T(0); persistence is a blood level
    >= 0.1 cells/uL; the memory fraction is M / (E + M + X)."""
    persist = costim.PERSISTENCE_CELLS
    assert costim.blood_cells_per_ul(persist) == pytest.approx(0.1)
    columns = {"tumour_d0_cells": np.array([1e10, 1e10, 2e9]),
               "tumour_d90_cells": np.array([1e8, 1.01e8, 2e7]),
               "cart_d90_cells": np.array([persist, 0.99 * persist, 4e9]),
               "cart_memory_d90_cells": np.array([0.0, 1e5, 1e9])}
    out = model.extra_outcomes(columns, None)
    assert out["tumour_control_d90"].tolist() == [True, False, True]
    assert out["cart_persisting_d90"].tolist() == [True, False, True]
    np.testing.assert_allclose(out["memory_fraction_d90"], [0.0, 1e5 / (0.99 * persist), 0.25])
    assert "tumour_control_d365" not in out
    names = [name for name, _, _ in model.extra_features(None, 100.0)]
    assert "cart_d90_cells" in names and "cart_d365_cells" not in names


@pytest.fixture(scope="module")
def small_run():
    """(patients DataFrame, scenario) of the costim scenario, one shard of 60."""
    text = CONFIG.read_text().replace("patients = 20000", "patients = 60").replace(
        "shard_size = 5000", "shard_size = 60")
    scenario = scenario_from_text(text)
    tables = run_shard(scenario, 0)
    frames = [table.to_pandas().assign(arm=arm) for arm, (table, _) in tables.items()]
    return pd.concat(frames, ignore_index=True), scenario


def test_scenario_arms_use_both_sets():
    scenario = load_scenario(CONFIG)
    assert scenario.model == "costim"
    assert {arm.parameter_set for arm in scenario.arms} == {"cd28", "41bb"}
    assert len({(arm.dose_cells, arm.dose_cells_per_kg) for arm in scenario.arms}) == 1


def test_tumour_control_at_response_day_is_the_response(small_run):
    """configs/costim.toml reads response at day 90 with the same two-log rule,
    so the model's tumour control on day 90 is the pipeline's response."""
    patients, scenario = small_run
    assert scenario.outcomes.response_day == 90.0
    assert scenario.outcomes.response_fraction == costim.TUMOUR_CONTROL_FRACTION
    ok = patients[patients["status"] == 0]
    assert len(ok) == len(patients)
    np.testing.assert_array_equal(ok["tumour_control_d90"], ok["responded"])
    np.testing.assert_allclose(ok["tumour_d0_cells"], ok["tumour0_cells"], rtol=1e-12)


def test_section_writes_tables_and_plot(small_run, tmp_path):
    patients, scenario = small_run
    result = costim_section.section(patients, scenario, tmp_path)
    assert result is not None
    for path in result.files.values():
        assert path.exists() and path.stat().st_size > 0
    rates = pd.read_csv(result.files["costim_rates"])
    control = rates[(rates["outcome"] == "tumour_control_d365") & rates["rate"].notna()]
    assert set(control["arm"]) == {"41bb", "cd28"}
    for _, row in control.iterrows():
        events = patients[(patients["arm"] == row["arm"])]["tumour_control_d365"].sum()
        assert row["events"] == events
    assert "tumour control day 365" in result.markdown
    without = patients.drop(columns=[c for c in patients if c.startswith("tumour_control")])
    assert costim_section.section(without, scenario, tmp_path) is None


def test_stein_reference_rule():
    """The diagnostics' peak-to-half rule on Stein's own curve: peak on day
    9.3 and ~4.4 d to half (ln 2 / 0.16 = 4.33 d, plus the persisting phase)."""
    peak, half = costim_fit.stein_reference()
    assert peak == pytest.approx(STEIN_TMAX_D, abs=0.011)
    assert half == pytest.approx(math.log(2) / 0.16, rel=0.02)
