"""The ``translation`` model (kernels/models/translation.py) and the response
waterfall (pipeline/sections/waterfall.py, configs/translation.toml).

References are independent of the jitted rhs: CARTmath's equations in cells
with its published RAJI values, the model's equations transcribed again from
its docstring, closed forms, and response rates counted directly from a run's
Parquet rows."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp
from small_run import patients as read_patients

from kernels.dopri5 import Doses, solve
from kernels.models import get_model
from kernels.models.translation import CLINICAL, DIFFERENCES, PRECLINICAL
from pipeline.config import Waterfall, load_scenario, with_overrides
from pipeline.runner import run
from pipeline.sections import waterfall as waterfall_section

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "translation.toml"
CELLS = 1e9          # cells per model unit
# CARTmath, RAJI (Barros et al. 2021; docs/references.md#barros-2021), per cell and per day
RAJI = {"r": 0.507, "b": 0.0, "gamma": 3.37e-8, "phi": 0.83, "rho": 0.83, "alpha": 1.25e-8,
        "eps": 1.60, "mu": 6.9e-7, "theta": 2.3e-4}


@pytest.fixture(scope="module")
def model():
    return get_model("translation")


def _params(model, **overrides):
    return model.typical_parameters(**overrides)


def _cartmath(t, y):
    """CARTmath in cells: y = [C_T, C_M, T]."""
    CT, CM, T = y
    p = RAJI
    return [(p["phi"] - p["rho"]) * CT + p["theta"] * T * CM - p["alpha"] * T * CT,
            p["eps"] * CT - p["theta"] * T * CM - p["mu"] * CM,
            p["r"] * T * (1.0 - p["b"] * T) - p["gamma"] * CT * T]


def test_xenograft_setting_without_the_reactivation_cap_is_cartmath(model):
    """Six differences at the xenograft's values, tau = 0, b = 0 (RAJI) and the
    dose put into the effectors: CARTmath's RAJI scenario (1e7 CAR T cells into
    1e8 tumour cells, the 8 days to its day 15), compared in cells."""
    params = _params(model, **PRECLINICAL, tau=0.0, b=0.0)
    T0, C0, days = 1e8, 1e7, np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    y0 = model.typical_initial_state(Tp=T0 / CELLS, Ct=C0 / CELLS)
    kernel = solve(model, y0, params, 0.0, days[-1], rtol=1e-10, atol=1e-18, save_at=days,
                   max_steps=2_000_000)
    assert kernel.status[0] == 0
    ref = solve_ivp(_cartmath, (0.0, days[-1]), [C0, 0.0, T0], method="Radau", rtol=1e-11,
                    atol=1e-6, t_eval=days)
    s = model.state_index
    got = kernel.saved[0][:, [s("Ct"), s("Cm"), s("Tp")]] * CELLS
    np.testing.assert_allclose(got, ref.y.T, rtol=1e-6, atol=1.0)
    # the other states stay empty
    assert np.all(kernel.saved[0][:, [s("Tn"), s("Cb"), s("D")]] == 0.0)


def _equations(p):
    """The module docstring's equations in plain numpy; p a {name: value} dict."""
    def f(t, y):
        Tp, Tn, Cb, Ct, Cm, D, I = y
        N = max(p["n_sink"] * p["sigma"] - D, 0.0)
        L = (Tp + N) / p["sigma"]
        q = 1.0 / (1.0 + p["S"])
        kill = q * p["gamma"] * Ct * Tp / p["sigma"]
        kill_N = q * p["gamma"] * Ct * N / p["sigma"]
        react = p["theta"] * L * Cm / (1.0 + p["tau"] * p["theta"] * L)
        room = max(1.0 - p["crowd"] * (Cb + Ct + Cm) / p["sigma"], 0.0)
        growth = p["r"] * (1.0 - p["b"] * (Tp + Tn) / p["sigma"])
        return [growth * Tp - kill, growth * Tn, -(p["k_tr"] + p["d_b"]) * Cb,
                p["k_tr"] * Cb + (p["phi"] + p["il2"] - p["rho"]) * Ct + react
                - p["alpha"] * L * Ct,
                q * p["eps"] * room * Ct - react - p["mu"] * Cm, kill_N,
                p["s"] * (kill + kill_N) - p["c"] * I]
    return f


@pytest.mark.parametrize("setting", ["clinical", "preclinical", "plus_heterogeneity"])
def test_kernel_matches_the_equations_integrated_by_scipy(model, setting):
    """Three random subjects per setting, a dose of 1e8 cells into the blood:
    every state at days 1..56 against a tight DOP853 solution."""
    rng = np.random.default_rng(5)
    sets = {"clinical": CLINICAL, "preclinical": PRECLINICAL,
            "plus_heterogeneity": {**PRECLINICAL, "f_neg": CLINICAL["f_neg"]}}
    typical = _params(model, **sets[setting])
    sd = np.array([p.sd_log for p in model.parameters])
    params = typical * np.exp(sd * rng.standard_normal((3, typical.size)))
    burden = 1e10 / CELLS * np.exp(rng.standard_normal(3))
    y0 = model.initial_states(burden, params)
    days = np.array([1.0, 3.0, 7.0, 14.0, 28.0, 56.0])
    kernel = solve(model, y0, params, 0.0, 56.0, rtol=1e-9, atol=1e-14, save_at=days,
                   doses=Doses([0.0], ["Cb"], np.full((3, 1), 0.1)))
    assert np.all(kernel.status == 0)
    for i in range(3):
        start = y0[i].copy()
        start[model.state_index("Cb")] += 0.1
        p = dict(zip(model.parameter_names, params[i]))
        ref = solve_ivp(_equations(p), (0.0, 56.0), start, method="DOP853", rtol=1e-11,
                        atol=1e-16, t_eval=days)
        scale = np.abs(ref.y).max(axis=1)
        np.testing.assert_allclose(kernel.saved[i], ref.y.T, rtol=1e-5, atol=1e-7 * scale.max())


@pytest.mark.parametrize("k_tr", [CLINICAL["k_tr"], PRECLINICAL["k_tr"]])
def test_trafficking_closed_form_without_antigen(model, k_tr):
    """No tumour and no sink: Cb = D exp(-(k + d) t) and
    Ct = D k (exp(g t) - exp(-(k + d) t)) / (g + k + d), g = phi + il2 - rho."""
    params = _params(model, k_tr=k_tr, scale=0.0, n_sink=0.0)
    p = dict(zip(model.parameter_names, params))
    dose, days = 0.1, np.array([0.01, 0.1, 1.0, 5.0, 20.0])
    y0 = model.initial_states(np.array([10.0]), params[None, :])
    kernel = solve(model, y0, params, 0.0, days[-1], rtol=1e-10, atol=1e-16, save_at=days,
                   doses=Doses([0.0], ["Cb"], [[dose]]))
    out = k_tr + p["d_b"]
    g = p["phi"] + p["il2"] - p["rho"]
    blood = dose * np.exp(-out * days)
    tumour_site = dose * k_tr * (np.exp(g * days) - np.exp(-out * days)) / (g + out)
    saved = kernel.saved[0]
    np.testing.assert_allclose(saved[:, model.state_index("Cb")], blood, rtol=1e-7,
                               atol=1e-12 * dose)
    np.testing.assert_allclose(saved[:, model.state_index("Ct")], tumour_site, rtol=1e-7)


def test_antigen_negative_cells_split_off_and_grow_unchecked(model):
    """tumour_split puts scale f_neg of the burden into Tn, which CAR T cells
    never touch: with b = 0, Tn(t) = scale f_neg T0 exp(r t) whatever they do."""
    params = _params(model, b=0.0)[None, :]
    p = dict(zip(model.parameter_names, params[0]))
    y0 = model.initial_states(np.array([20.0]), params)
    Tp0, Tn0 = y0[0, model.state_index("Tp")], y0[0, model.state_index("Tn")]
    assert Tp0 + Tn0 == pytest.approx(20.0 * p["scale"])
    assert Tn0 / (Tp0 + Tn0) == pytest.approx(p["f_neg"])
    days = np.array([7.0, 28.0, 56.0])
    kernel = solve(model, y0, params, 0.0, 56.0, rtol=1e-10, atol=1e-16, save_at=days,
                   doses=Doses([0.0], ["Cb"], [[0.1]]))
    np.testing.assert_allclose(kernel.saved[0][:, model.state_index("Tn")],
                               Tn0 * np.exp(p["r"] * days), rtol=1e-8)
    # ... while the antigen-positive tumour is killed
    assert kernel.saved[0][-1, model.state_index("Tp")] < 1e-3 * Tp0


def test_spread_a_body_sigma_times_larger_with_everything_sigma_times_more(model):
    """Encounters depend on cells per mouse volume: multiplying sigma, the
    tumour, the dose and IL-6 by lam multiplies every state by lam."""
    lam = 7.0
    base = _params(model)
    scaled = _params(model, sigma=lam * base[model.parameter_index("sigma")])
    days = np.array([2.0, 7.0, 14.0, 28.0, 56.0])
    states = []
    for factor, params in ((1.0, base), (lam, scaled)):
        y0 = model.initial_states(np.array([10.0 * factor]), params[None, :])
        y0[:, model.state_index("I")] *= factor
        sol = solve(model, y0, params, 0.0, 56.0, rtol=1e-10, atol=1e-16, save_at=days,
                    doses=Doses([0.0], ["Cb"], [[0.1 * factor]]))
        states.append(sol.saved[0])
    np.testing.assert_allclose(states[1], lam * states[0], rtol=1e-6,
                               atol=1e-9 * np.abs(states[1]).max())


def test_config_steps_switch_exactly_one_difference_each(model):
    """Baseline = the xenograft set, full = the patient set, and each step is
    the xenograft with one difference (all its parameters) at the patient's values."""
    scenario = load_scenario(CONFIG)
    assert set(PRECLINICAL) == {name for group in DIFFERENCES.values() for name in group}
    assert CLINICAL == {name: model.parameters[model.parameter_index(name)].typical
                        for name in PRECLINICAL}
    arms = {arm.name: arm.typical_values(model) for arm in scenario.arms}
    plan = scenario.report.waterfall
    assert arms[plan.baseline] == PRECLINICAL and arms[plan.full] == CLINICAL
    switched = []
    for step in plan.steps:
        changed = {name for name, value in arms[step].items() if value != PRECLINICAL[name]}
        group = [g for g, names in DIFFERENCES.items() if set(names) == changed]
        assert len(group) == 1, (step, changed)
        assert all(arms[step][name] == CLINICAL[name] for name in changed)
        switched += group
    assert sorted(switched) == sorted(DIFFERENCES)


def test_waterfall_table_arithmetic_and_exclusions():
    """Four patients, a baseline, two steps and the full arm; patient 3 failed
    in one step, so it is left out of every arm."""
    responded = {"base": [1, 1, 1, 0], "a": [0, 1, 1, 1], "b": [1, 0, 0, 0],
                 "full": [0, 0, 1, 1]}
    rows = [{"arm": arm, "patient_id": i, "responded": bool(v), "status": 0}
            for arm, values in responded.items() for i, v in enumerate(values)]
    frame = pd.DataFrame(rows)
    frame.loc[(frame["arm"] == "a") & (frame["patient_id"] == 3), "status"] = 1
    table = waterfall_section.waterfall_table(frame, Waterfall("base", "full", ("a", "b")))
    # counted: patients 0, 1, 2
    assert list(table["item"]) == ["baseline", "step", "step", "interaction", "full"]
    assert (table["n"] == 3).all()
    np.testing.assert_allclose(table["rate"].to_numpy()[[0, 1, 2, 4]], [1.0, 2 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(table["contribution"].to_numpy()[1:],
                               [-1 / 3, -2 / 3, 1 / 3, -2 / 3])
    np.testing.assert_allclose(table["end"], [1.0, 2 / 3, 0.0, 1 / 3, 1 / 3], atol=1e-15)
    assert table["start"].iloc[1] == table["end"].iloc[0]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """configs/translation.toml on 600 subjects, through the runner."""
    scenario = with_overrides(load_scenario(CONFIG), patients=600, shard_size=300)
    run_dir = tmp_path_factory.mktemp("translation") / "run"
    run(scenario, run_dir, workers=1)
    return scenario, read_patients(run_dir)


def test_waterfall_of_a_run_adds_up_to_the_gap(small_run, tmp_path):
    scenario, patients = small_run
    plan = scenario.report.waterfall
    section = waterfall_section.section(patients, scenario, tmp_path)
    assert section is not None and section.files["waterfall_plot"].stat().st_size > 0
    table = pd.read_csv(section.files["waterfall_table"]).set_index("item")
    steps = table.loc["step"]
    gap = table.loc["full", "contribution"]
    assert steps["contribution"].sum() + table.loc["interaction", "contribution"] \
        == pytest.approx(gap, abs=1e-12)
    assert (patients["status"] == 0).all()
    rate = patients.groupby("arm")["responded"].mean()
    for _, row in steps.iterrows():
        assert row["contribution"] == pytest.approx(rate[row["arm"]] - rate[plan.baseline],
                                                    abs=1e-12)
    assert gap == pytest.approx(rate[plan.full] - rate[plan.baseline], abs=1e-12)
    # a real gap: the xenograft responds, the patient much less
    assert rate[plan.baseline] > 0.8 and rate[plan.full] < rate[plan.baseline] - 0.3
