"""Dosing policies (pipeline.policies): the policy table, the adaptive doses of
the cart and cart2 models against their predictors and the full model, and the
oracle against independent full-model solves."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from kernels import features as kf
from kernels.dopri5 import Doses, solve
from kernels.models import get_model
from pipeline import config, policies, predictors
from pipeline.config import Arm, ConfigError, scenario_from_text
from pipeline.cohort import sample_shard
from pipeline.shard import arm_doses, arm_problem, run_shard

CART = get_model("cart")
CART2 = get_model("cart2")
ARM = SimpleNamespace(name="a", policy="adaptive", debulking_factor=0.5, dose_cells=None,
                      dose_cells_per_kg=2e6, target_il6_pg_ml=1000.0, min_dose_cells=1e7,
                      max_dose_cells=1e9)
# the full model's settings for the oracle (a scenario's horizon, tolerances, outcomes)
SETTINGS = SimpleNamespace(horizon_days=365.0, rtol=1e-6, atol=1e-9, max_steps=100_000,
                           outcomes=SimpleNamespace(response_day=90.0))


def sample_patients(model, n, seed, tumour_median_cells, tumour_sd_log=1.2):
    """(y0, params, tumour0 in cells): every parameter log-normal around its typical
    value with its own sd_log, the tumour log-normal, the rest at typical values."""
    rng = np.random.default_rng(seed)
    sd = np.array([p.sd_log for p in model.parameters])
    params = model.typical_parameters() * np.exp(sd * rng.standard_normal((n, sd.size)))
    tumour0 = tumour_median_cells * np.exp(tumour_sd_log * rng.standard_normal(n))
    return model.initial_states(tumour0 / model.cells_per_unit, params), params, tumour0


def full_peak_il6(model, y0, params, dose_cells):
    """Peak IL-6 of the full model, an independent solve (not the policies' own)."""
    doses = Doses([0.0], ["E"], (np.asarray(dose_cells, float) / model.cells_per_unit)[:, None])
    return solve(model, y0, params, 0.0, 365.0, doses=doses,
                 features=[kf.maximum("I"), kf.argmax("I")]).features.T


def typical_cohort(model, tumour0_cells):
    params = np.tile(model.typical_parameters(), (len(tumour0_cells), 1))
    return model.initial_states(np.asarray(tumour0_cells) / model.cells_per_unit, params), params


# -- the table ------------------------------------------------------------------

def test_the_table_holds_each_policy_once_with_its_own_code():
    assert list(policies.POLICIES) == ["fixed", "adaptive", "oracle"]
    assert config.POLICIES == tuple(policies.POLICIES)
    assert len({id(p.dose) for p in policies.POLICIES.values()}) == len(policies.POLICIES)
    fields = {f.name for f in dataclasses.fields(Arm)}
    for entry in policies.POLICIES.values():       # config builds an Arm from the keys
        assert set(entry.keys) <= fields


def test_an_unknown_policy_raises_instead_of_falling_through():
    with pytest.raises(KeyError, match="unknown policy 'smart'; policies are fixed, adaptive"):
        policies.policy("smart")
    shard = SimpleNamespace(covariates={"weight_kg": np.array([70.0])})
    y0, params = typical_cohort(CART2, [1e10])
    with pytest.raises(KeyError, match="unknown policy"):
        arm_doses(CART2, SETTINGS, SimpleNamespace(policy="smart"), shard, y0, params)


def test_arm_doses_dispatch_through_the_table(monkeypatch):
    """A policy added to the table is dosed by shard.arm_doses with no other change."""
    seen = []

    def probe(patients):
        seen.append(patients)
        return policies.Dosing(np.full(1, 3e8), np.full(1, np.nan), np.ones(1, bool))

    monkeypatch.setitem(policies.POLICIES, "probe", policies.Policy(
        {}, lambda values: None, lambda model: None, probe, lambda arm: "probe"))
    shard = SimpleNamespace(covariates={"weight_kg": np.array([70.0])})
    y0, params = typical_cohort(CART2, [2e10])
    dosing = arm_doses(CART2, SETTINGS, SimpleNamespace(policy="probe"), shard, y0, params)
    assert dosing.dose_cells.tolist() == [3e8]
    assert seen[0].tumour0_cells.tolist() == pytest.approx([2e10])
    assert seen[0].weight_kg.tolist() == [70.0]


SCENARIO = """\
[scenario]
name = "t"
model = "{model}"
seed = 1
patients = 20
shard_size = 20
horizon_days = 120.0

{arms}
[outcomes]
response_day = 90.0
"""
ARM_KEYS = {"fixed": 'policy = "fixed"\ndose_cells = 1e8\n',
            "adaptive": ('policy = "adaptive"\ntarget_il6_pg_ml = 1000.0\n'
                         "min_dose_cells = 1e7\nmax_dose_cells = 1e9\n"),
            "oracle": ('policy = "oracle"\ntarget_il6_pg_ml = 1000.0\n'
                       "min_dose_cells = 1e7\nmax_dose_cells = 1e9\n")}


def scenario_text(model, *arms):
    """A scenario of ``model`` with one arm per (name, keys)."""
    tables = "".join(f'[[arms]]\nname = "{name}"\n{keys}\n' for name, keys in arms)
    return SCENARIO.format(model=model, arms=tables)


def test_config_accepts_exactly_the_table_policies():
    assert set(ARM_KEYS) == set(policies.POLICIES)
    for name, keys in ARM_KEYS.items():
        arm = scenario_from_text(scenario_text("cart2", (name, keys))).arms[0]
        assert arm.policy == name
        assert arm.describe().startswith(f"{name}: ")
    with pytest.raises(ConfigError) as error:
        scenario_from_text(scenario_text("cart2", ("a", 'policy = "smart"\ndose_cells = 1e8\n')))
    assert error.value.key == "arms[0].policy"


def test_a_model_without_a_predictor_cannot_use_the_adaptive_policy():
    """One line naming arms[0].policy; the oracle needs only IL-6."""
    with pytest.raises(ConfigError) as error:
        scenario_from_text(scenario_text("costim", ("a", ARM_KEYS["adaptive"])))
    assert error.value.key == "arms[0].policy"
    assert "no peak IL-6 predictor for model 'costim'" in str(error.value)
    assert "\n" not in str(error.value)
    scenario_from_text(scenario_text("costim", ("a", ARM_KEYS["oracle"])))


def test_a_shard_records_doses_predictions_and_whether_the_target_is_met():
    """cart2 through run_shard: the predictor's column for the adaptive arm only,
    dose_meets_target False for the fixed arm, and the oracle's full-model judgement."""
    scenario = scenario_from_text(scenario_text("cart2", *ARM_KEYS.items()))
    tables = {arm: t[0].to_pandas() for arm, t in run_shard(scenario, 0).items()}
    assert tables["fixed"]["il6_peak_predicted_pg_ml"].isna().all()
    assert not tables["fixed"]["dose_meets_target"].any()
    adaptive = tables["adaptive"]
    assert np.isfinite(adaptive["il6_peak_predicted_pg_ml"]).all()
    predicted = adaptive["il6_peak_predicted_pg_ml"][adaptive["dose_meets_target"]]
    assert (predicted <= 1000.0 * (1 + 1e-9)).all()
    oracle = tables["oracle"]
    met = oracle["dose_meets_target"]
    assert (oracle["il6_peak_pg_ml"][met] <= 1000.0).all()
    assert (oracle["dose_cells"][~met] == 1e7).all()


# -- fixed ------------------------------------------------------------------------

def test_fixed_and_debulking():
    """Per-kg doses scale with weight; debulking multiplies the baseline tumour."""
    weight = np.array([50.0, 100.0])
    assert policies.fixed_dose(ARM, weight).tolist() == [1e8, 2e8]
    flat = SimpleNamespace(dose_cells=3e8, dose_cells_per_kg=None)
    assert policies.fixed_dose(flat, weight).tolist() == [3e8, 3e8]
    assert policies.tumour_at_infusion(ARM, [1e10]).tolist() == [5e9]


# -- adaptive -----------------------------------------------------------------------

@pytest.mark.parametrize("model", [CART, CART2], ids=lambda m: m.name)
def test_adaptive_dose_inverts_the_predictor(model):
    """Where the dose is not capped, the predictor gives exactly the target; the
    dose is in range and meets the target exactly where it is above the minimum."""
    typical = model.typical_parameters()
    tumour0 = np.geomspace(1e8, 1e13, 200)
    params = np.tile(typical, (tumour0.size, 1))
    wide = SimpleNamespace(target_il6_pg_ml=1000.0, min_dose_cells=1e6, max_dose_cells=1e10)
    dosing = policies.adaptive_dose(model, typical, wide, tumour0, params)
    dose = dosing.dose_cells
    inside = (dose > wide.min_dose_cells) & (dose < wide.max_dose_cells)
    assert inside.sum() > 10
    assert np.allclose(dosing.predicted_il6_pg_ml[inside], 1000.0, rtol=1e-9)
    assert np.all((dose >= wide.min_dose_cells) & (dose <= wide.max_dose_cells))
    assert np.array_equal(dosing.meets_target, dosing.predicted_il6_pg_ml <= 1000.0 * (1 + 1e-9))


def test_cart2_adaptive_escalates_small_and_de_escalates_large_tumours():
    """With the target the prediction at (1e11 cells, 1e8 cells), a smaller tumour
    gets more than 1e8 cells and a larger one less, within the range; the smallest
    tumours get the largest dose and are predicted below the target."""
    typical = CART2.typical_parameters()
    target = predictors.predicted_peak_il6(CART2, typical, [1e8], [1e11], None)[0]
    arm = SimpleNamespace(target_il6_pg_ml=target, min_dose_cells=1e6, max_dose_cells=1e10)
    tumour0 = np.array([1e7, 1e10, 1e11, 1e12, 1e13])
    dosing = policies.adaptive_dose(CART2, typical, arm, tumour0, None)
    dose = dosing.dose_cells
    assert dose[0] == arm.max_dose_cells and dosing.predicted_il6_pg_ml[0] < target
    assert dose[1] > 1e8 > dose[3] >= dose[4] >= arm.min_dose_cells
    assert dose[2] == pytest.approx(1e8, rel=1e-9)


def test_cart2_adaptive_doses_meet_the_target_on_the_full_model_for_the_typical_patient():
    """For the typical patient the adaptive dose gives the full model a peak IL-6
    within a factor e**0.5 of the target wherever the dose is not capped (measured:
    within e**0.3, T0 1e10-1e13 cells) -- an independent check of predictor and inverse."""
    typical = CART2.typical_parameters()
    tumour0 = np.geomspace(1e10, 1e13, 40)
    arm = SimpleNamespace(target_il6_pg_ml=1000.0, min_dose_cells=1e6, max_dose_cells=1e10)
    dose = policies.adaptive_dose(CART2, typical, arm, tumour0, None).dose_cells
    inside = (dose > arm.min_dose_cells) & (dose < arm.max_dose_cells)
    assert inside.sum() >= 10
    y0, params = typical_cohort(CART2, tumour0[inside])
    peak, _ = full_peak_il6(CART2, y0, params, dose[inside])
    assert np.all(np.abs(np.log(peak / 1000.0)) < 0.5)


# -- the oracle ---------------------------------------------------------------------

def test_oracle_grid_choice_on_a_planted_non_monotone_case():
    """Peak IL-6 and tumour both non-monotone in dose (five grid doses, target 1000)."""
    peak = np.array([[100, 2000, 500, 900, 3000],      # feasible 0, 2, 3
                     [100, 2000, 500, 900, 3000],
                     [1500, 1200, 1100, 2000, 3000],   # nothing feasible
                     [100, np.nan, 100, 100, 100],     # a failed solve is infeasible
                     [100, 100, 100, 100, 100]])
    tumour = np.array([[10, 1, 5, 2, 0.1],             # best feasible at 3, 4 infeasible
                       [10, 1, 0.5, 2, 0.1],           # best feasible at 2, 3 feasible
                       [1, 1, 1, 1, 1],
                       [5, 0.1, 5, np.nan, 6],         # NaN tumour is the worst: 0 or 2
                       [3, 1, 1, 1, 2]])               # ties go to the largest dose
    index, feasible, refine = policies.oracle_grid_choice(peak, tumour, 1000.0)
    assert index.tolist() == [3, 2, 0, 2, 3]
    assert feasible.tolist() == [True, True, False, True, True]
    assert refine.tolist() == [True, False, False, False, False]


@pytest.fixture(scope="module")
def oracle_run():
    """An oracle arm on 120 sampled cart2 patients with a wide tumour spread, and
    independent full-model solves at each of its grid doses."""
    y0, params, _ = sample_patients(CART2, 120, 3, 1e11, 1.5)
    arm = SimpleNamespace(target_il6_pg_ml=1000.0, min_dose_cells=1e7, max_dose_cells=1e9)
    dosing = policies.oracle_dose(CART2, arm, SETTINGS, y0, params)
    grid = np.geomspace(arm.min_dose_cells, arm.max_dose_cells, policies.ORACLE_GRID_DOSES)
    on_grid = [outcomes_at(y0, params, np.full(len(y0), d)) for d in grid]
    return y0, params, arm, dosing, grid, on_grid


def outcomes_at(y0, params, dose_cells):
    """(peak IL-6, tumour at day 90 floored at one cell, failed), one independent solve."""
    doses = Doses([0.0], ["E"], (dose_cells / CART2.cells_per_unit)[:, None])
    sol = solve(CART2, y0, params, 0.0, 365.0, doses=doses,
                features=[kf.maximum("I"), kf.value_at("T", 90.0)])
    return sol.features[:, 0], np.maximum(sol.features[:, 1], 1e-9), sol.status != 0


def test_oracle_meets_the_target_wherever_a_grid_dose_does(oracle_run):
    y0, params, arm, dosing, grid, on_grid = oracle_run
    any_feasible = np.any([peak <= arm.target_il6_pg_ml for peak, _, _ in on_grid], axis=0)
    assert any_feasible.any() and not any_feasible.all()     # both cases are tested
    assert np.array_equal(dosing.meets_target, any_feasible)
    dose = dosing.dose_cells
    assert np.all((dose >= arm.min_dose_cells) & (dose <= arm.max_dose_cells))
    peak, _, _ = outcomes_at(y0, params, dose)
    assert np.all(peak[any_feasible] <= arm.target_il6_pg_ml)
    assert np.all(dose[~any_feasible] == arm.min_dose_cells)


def test_oracle_is_never_worse_than_the_minimum_dose_or_its_grid(oracle_run):
    """The chosen dose's tumour at the response day is at most that of every
    feasible grid dose (so of the minimum dose where it is feasible)."""
    y0, params, arm, dosing, grid, on_grid = oracle_run
    _, tumour, _ = outcomes_at(y0, params, dosing.dose_cells)
    for peak_g, tumour_g, _ in on_grid:
        feasible = peak_g <= arm.target_il6_pg_ml
        assert np.all(tumour[feasible] <= tumour_g[feasible] * (1 + 1e-6))


def test_oracle_refines_the_feasible_edge(oracle_run):
    """Where the chosen dose lies strictly between grid doses (refined), it is the
    largest feasible one there: 1% more exceeds the target."""
    y0, params, arm, dosing, grid, on_grid = oracle_run
    peak = np.stack([p for p, _, _ in on_grid], axis=1)
    tumour = np.stack([t for _, t, _ in on_grid], axis=1)
    _, _, at_edge = policies.oracle_grid_choice(peak, tumour, arm.target_il6_pg_ml)
    refined = at_edge & ~np.isin(dosing.dose_cells, grid)
    assert refined.sum() >= 5
    peak, _, _ = outcomes_at(y0[refined], params[refined], dosing.dose_cells[refined] * 1.01)
    assert np.all(peak > arm.target_il6_pg_ml)


def test_oracle_window_search_gives_the_full_horizon_answer(oracle_run):
    """The oracle searches up to the response day and checks the horizon after;
    its doses are those of the same search on the full horizon, within its
    log-dose tolerance (twice: each search has its own)."""
    y0, params, arm, dosing, _, _ = oracle_run
    full, feasible = policies.oracle_search(CART2, arm, SETTINGS, y0, params, None)
    assert np.array_equal(feasible, dosing.meets_target)
    gap = np.abs(np.log(dosing.dose_cells / full))
    assert np.all(gap <= 2 * policies.ORACLE_LOG_DOSE_TOLERANCE), gap.max()


def test_feasible_edge_finds_a_known_root_in_few_steps():
    """Illinois on brackets of (x - r)(1 + x), a smooth monotone excess with a known
    root per bracket - closes every bracket to the tolerance, with the feasible
    end within it of the root, in far fewer evaluations than bisection's 12."""
    roots = np.linspace(0.1, 0.9, 50)
    calls = []

    def excess(rows, x):
        calls.append(rows.size)
        return (x - roots[rows]) * (1 + x)

    lo, steps = policies.feasible_edge(excess, np.zeros(50), np.ones(50), -roots * 1.0,
                                       (1 - roots) * 2.0, 1e-4, 20)
    assert np.all((lo <= roots + 1e-12) & (roots - lo <= 1e-4))   # 1e-12: rounding at the root
    assert len(steps) <= 8


def test_oracle_agrees_with_a_dense_dose_grid():
    """Acceptance: on 1,000 patients of the default scenario, the oracle against
    a brute-force grid of 200 log-spaced doses on the full horizon. Where the
    grid has a feasible dose the oracle meets the target, and its tumour at the
    response day is no larger than the grid's best (1e-3: the solver's rtol
    times the tumour's sensitivity); where the grid has none, nor does it."""
    scenario = config.with_overrides(config.load_scenario("configs/default.toml"),
                                     patients=1000)
    shard = sample_shard(scenario.cohort, scenario.seed, 0, 1000, 1000)
    arm = next(a for a in scenario.arms if a.policy == "oracle")
    problem = arm_problem(CART2, scenario, arm, shard)
    y0, params, n = problem.y0, problem.params, len(problem)
    dosing = policies.oracle_dose(CART2, arm, scenario, y0, params)
    grid = np.geomspace(arm.min_dose_cells, arm.max_dose_cells, 200)
    doses = Doses([0.0], ["E"], (np.tile(grid, n) / CART2.cells_per_unit)[:, None])
    sol = solve(CART2, np.repeat(y0, grid.size, 0), np.repeat(params, grid.size, 0), 0.0,
                scenario.horizon_days, rtol=scenario.rtol, atol=scenario.atol, doses=doses,
                features=[kf.maximum("I"), kf.value_at("T", scenario.outcomes.response_day)])
    assert np.all(sol.status == 0)
    peak = sol.features[:, 0].reshape(n, -1)
    tumour = np.maximum(sol.features[:, 1], 1e-9).reshape(n, -1)
    feasible = peak <= arm.target_il6_pg_ml
    grid_best = np.where(feasible, tumour, np.inf).min(axis=1)
    assert np.array_equal(dosing.meets_target, feasible.any(axis=1))
    assert 0 < feasible.any(axis=1).sum() < n
    sol = solve(CART2, y0, params, 0.0, scenario.horizon_days, rtol=scenario.rtol,
                atol=scenario.atol,
                doses=Doses([0.0], ["E"], (dosing.dose_cells / CART2.cells_per_unit)[:, None]),
                features=[kf.maximum("I"), kf.value_at("T", scenario.outcomes.response_day)])
    ok = dosing.meets_target
    assert np.all(sol.features[ok, 0] <= arm.target_il6_pg_ml)
    oracle_tumour = np.maximum(sol.features[:, 1], 1e-9)
    ratio = oracle_tumour[ok] / grid_best[ok]
    assert np.all(ratio <= 1 + 1e-3), np.sort(ratio)[-5:]
