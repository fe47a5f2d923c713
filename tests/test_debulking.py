"""Debulking: peak IL-6 against the debulking factor (the default scenario's
model, cart2), the cart model's CAR T phenotype and durable-response columns,
and the report section pipeline/sections/debulking.py.

What is tested for peak IL-6: per patient, the peak over the first three weeks
(the first IL-6 wave, the CRS window) never rises as the factor falls from 1 to
0.001. In cart2 less tumour engages fewer effectors and activates fewer myeloid
cells. The superseded cart model broke this over the year: a heavily debulked
tumour stimulated its CAR T too little, regrew and met the surviving CAR T in a
second, later wave.
"""
import numpy as np
import pandas as pd
import pytest
from scipy_reference import cart_rhs, relative_error, solve_dense

from kernels import features as F
from kernels.dopri5 import Doses, solve
from kernels.models import get_model
from pipeline.aggregate import wilson_interval
from pipeline.cohort import sample_shard
from pipeline.config import Outcomes, load_scenario, scenario_from_text, with_overrides
from pipeline.outcomes import feature_columns, kernel_features, outcome_columns
from pipeline.sections import debulking
from pipeline.shard import run_shard

DEFAULT = "configs/default.toml"
FACTORS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001)
CRS_WINDOW_DAYS = 21.0
DOSE = 0.1                      # 1e8 cells, the default fixed dose, in 1e9 cells


@pytest.fixture(scope="module")
def default_patients(request):
    """(model, 400 virtual patients) of configs/default.toml (its model, seed,
    cohort and shard 0)."""
    path = request.config.rootpath / DEFAULT
    scenario = with_overrides(load_scenario(path), patients=400, shard_size=400)
    return get_model(scenario.model), sample_shard(scenario.cohort, scenario.seed, 0,
                                                   scenario.shard_size, scenario.patients)


def test_debulking_lowers_peak_il6_monotonically(default_patients):
    """Per patient, the peak IL-6 of the first three weeks after a 1e8-cell dose
    is non-increasing as the debulking factor falls from 1 to 0.001 (module
    docstring: why the window). Not vacuous: the peak falls strictly from factor
    1 to 0.1 for every patient whose IL-6 rises above its baseline."""
    model, shard = default_patients
    n = len(shard)
    peaks = []
    for factor in FACTORS:
        y0 = model.initial_states(shard.covariates["tumour_burden_cells"] * factor / 1e9,
                                  shard.params)
        sol = solve(model, y0, shard.params, 0.0, CRS_WINDOW_DAYS,
                    doses=Doses([0.0], ["E"], np.full((n, 1), DOSE)),
                    features=[F.maximum("I")])
        assert np.all(sol.status == 0)
        peaks.append(sol.features[:, 0])
    peaks = np.array(peaks)                                     # [factor, patient]
    rises = peaks[1:] > peaks[:-1]
    assert not rises.any(), (
        f"{rises.sum()} rises, e.g. patient {np.nonzero(rises)[1][0]}: "
        f"{peaks[:, np.nonzero(rises)[1][0]]}")
    baseline = model.typical_initial_state()[model.state_index("I")]
    reacting = peaks[0] > baseline * (1 + 1e-9)
    assert reacting.mean() > 0.9
    one_log = FACTORS.index(0.1)
    assert np.all(peaks[one_log, reacting] < peaks[0, reacting])


# ------------------------------------------------------------ cart columns

RULES = Outcomes(response_day=28.0, response_fraction=0.01, relapse_fraction=0.1,
                 crs_il6_thresholds_pg_ml=(100.0, 500.0, 1500.0, 5000.0), severe_crs_grade=3)


def test_phenotype_columns_match_scipy(cart, cart_patients):
    """Memory, exhausted and all CAR T cells at days 28 and 90 and their
    fractions, against a tight DOP853 solution (kernel rtol 1e-8: within 1e-5
    relative; floor 1e-9, i.e. one cell)."""
    cohort = cart_patients(12, 31)
    sol = solve(cart, cohort.y0, cohort.params, 0.0, 120.0, rtol=1e-8, atol=1e-12,
                doses=cohort.doses, features=kernel_features(cart, RULES, 120.0))
    columns = feature_columns(cart, sol.features, RULES, 120.0)
    columns.update(outcome_columns(columns, cohort.y0[:, 0] * 1e9, RULES))
    extra = cart.extra_outcomes(columns, cohort.params)
    index = {s: cart.state_index(s) for s in ("E", "M", "X")}
    for day in (28, 90):
        exact = np.array([solve_dense(cart_rhs(p), y, 0.0, day).y[:, -1]
                          for p, y in zip(cohort.params, cohort.y0_dosed)])
        memory, exhausted = exact[:, index["M"]], exact[:, index["X"]]
        total = memory + exhausted + exact[:, index["E"]]
        for column, value in ((f"cart_d{day}_cells", total),
                              (f"cart_memory_d{day}_cells", memory),
                              (f"cart_exhausted_d{day}_cells", exhausted)):
            assert np.all(relative_error(columns[column] / 1e9, value, 1e-9) <= 1e-5), column
        for column, value in ((f"memory_fraction_d{day}", memory / total),
                              (f"exhausted_fraction_d{day}", exhausted / total)):
            assert np.all(np.abs(extra[column] - value) <= 1e-5), column
    assert np.all(extra["memory_fraction_d90"] + extra["exhausted_fraction_d90"] <= 1.0)


def test_phenotype_days_beyond_the_horizon_are_left_out(cart):
    """A 60-day horizon has the day-28 columns only; a 20-day one none; the
    fractions follow the feature columns present."""
    names = {h: [c for c, _, _ in cart.extra_features(RULES, h)] for h in (20.0, 60.0, 90.0)}
    assert names[20.0] == []
    assert names[60.0] == ["cart_d28_cells", "cart_memory_d28_cells", "cart_exhausted_d28_cells"]
    assert names[90.0][3:] == ["cart_d90_cells", "cart_memory_d90_cells", "cart_exhausted_d90_cells"]
    columns = {c: np.array([2.0]) for c in names[60.0]}
    columns.update(responded=np.array([True]), relapsed=np.array([False]))
    assert set(cart.extra_outcomes(columns, None)) == {
        "memory_fraction_d28", "exhausted_fraction_d28", "durable_response"}


def test_durable_response_is_response_without_relapse(cart):
    """durable_response = responded and not relapsed, for the four combinations."""
    columns = {"responded": np.array([True, True, False, False]),
               "relapsed": np.array([False, True, False, True])}
    np.testing.assert_array_equal(cart.extra_outcomes(columns, None)["durable_response"],
                                  [True, False, False, False])


# ------------------------------------------------------------ report section

SECTION_SCENARIO = """
[scenario]
name = "debulking_small"
model = "cart"
seed = 5
patients = 150
shard_size = 150
horizon_days = 120.0

[[arms]]
name = "debulk_0_1"
policy = "fixed"
dose_cells = 1e8
debulking_factor = 0.1

[[arms]]
name = "debulk_1"
policy = "fixed"
dose_cells = 1e8

[[arms]]
name = "debulk_0_01"
policy = "fixed"
dose_cells = 1e8
debulking_factor = 0.01

[[arms]]
name = "adaptive_debulk_0_1"
policy = "adaptive"
target_il6_pg_ml = 1000.0
min_dose_cells = 1e7
max_dose_cells = 1e9
debulking_factor = 0.1

[outcomes]
response_day = 90.0
"""


@pytest.fixture(scope="module")
def small_run():
    """A real shard of four arms (factors 0.1, 1, 0.01 and an adaptive 0.1) as the
    report's DataFrame, with one patient marked failed."""
    scenario = scenario_from_text(SECTION_SCENARIO)
    tables = run_shard(scenario, 0)
    frame = pd.concat([t.to_pandas().assign(arm=arm) for arm, (t, _) in tables.items()],
                      ignore_index=True)
    frame.loc[0, "status"] = 3
    return scenario, frame


def test_debulking_section_table(small_run, tmp_path):
    """The section's per-arm numbers against pandas on the status-0 patients:
    arms ordered by debulking factor (config order among equal factors), peak
    IL-6 quantiles, late-peak share, median E:T, rates with the Wilson interval
    (pipeline.aggregate, tested in tests/test_aggregate.py), phenotype medians;
    the CSV holds the same table."""
    scenario, frame = small_run
    result = debulking.section(frame, scenario, tmp_path)
    table = pd.read_csv(tmp_path / debulking.FILES["debulking_table"])
    assert list(table["arm"]) == ["debulk_0_01", "debulk_0_1", "adaptive_debulk_0_1", "debulk_1"]
    ok = frame[frame["status"] == 0]
    for _, row in table.iterrows():
        g = ok[ok["arm"] == row["arm"]]
        assert row["n"] == len(g) and row["debulking_factor"] == g["debulking_factor"].iloc[0]
        peak = g["il6_peak_pg_ml"].to_numpy()
        for name, q in (("p10", 10), ("median", 50), ("p90", 90)):
            assert row[f"il6_peak_pg_ml_{name}"] == pytest.approx(np.percentile(peak, q), rel=1e-12)
        assert row["late_il6_peak"] == pytest.approx(np.mean(g["t_il6_peak_d"] > 28.0))
        assert row["effector_to_target_median"] == pytest.approx(
            np.median(g["dose_cells"] / g["tumour0_cells"]), rel=1e-12)
        for column in ("severe_crs", "responded", "no_detectable_disease", "durable_response"):
            events = int(g[column].sum())
            lower, upper = (float(b) for b in wilson_interval(events, len(g)))
            assert row[column] == pytest.approx(events / len(g))
            assert (row[f"{column}_lower"], row[f"{column}_upper"]) == pytest.approx((lower, upper))
        for column in ("memory_fraction_d28", "exhausted_fraction_d90"):
            assert row[f"{column}_median"] == pytest.approx(np.median(g[column]), rel=1e-12)
    assert result.title == "Debulking"
    assert result.markdown.index("| debulk_0_01 |") < result.markdown.index("| debulk_1 |")


def test_debulking_section_files_and_when_it_applies(small_run, tmp_path):
    """It writes and links a CSV and a PNG, with or without the config; it does
    not apply to a run with one debulking factor or without the columns."""
    scenario, frame = small_run
    for config in (scenario, None):
        out = tmp_path / ("with" if config else "without")
        out.mkdir()
        result = debulking.section(frame, config, out)
        assert set(result.files) == set(debulking.FILES)
        for key, name in debulking.FILES.items():
            assert result.files[key] == out / name and f"({name})" in result.markdown
        assert (out / "debulking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = frame[frame["debulking_factor"] == 0.1]
    assert debulking.section(single, scenario, tmp_path) is None
    assert debulking.section(frame.drop(columns="effector_to_target"), scenario, tmp_path) is None
