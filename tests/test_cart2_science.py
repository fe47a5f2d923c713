"""The clinical associations of the reference model ``cart2`` on the shipped
scenarios' first 3,000 patients (one shard through the pipeline's own
:func:`pipeline.shard.run_shard`): they must come out of the model, not out of
a scenario tuned around it. The 100,000-patient figures are in the configs'
comments and the README; these checks are the direction and rough size."""
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_scenario, with_overrides
from pipeline.shard import run_shard

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PATIENTS = 3000


def arms(config):
    """{arm: {column: numpy array}} of the config's first PATIENTS patients."""
    scenario = with_overrides(load_scenario(CONFIGS / config), patients=PATIENTS,
                              shard_size=PATIENTS)
    tables = run_shard(scenario, 0)
    out = {}
    for name, (table, _) in tables.items():
        columns = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
        assert np.all(columns["status"] == 0), name
        out[name] = columns
    return out


@pytest.fixture(scope="module")
def dose_response():
    return arms("dose_response.toml")


@pytest.fixture(scope="module")
def debulking():
    return arms("debulking.toml")


def test_severe_crs_and_peak_il6_rise_with_dose(dose_response):
    """3e7 -> 1e8 -> 3e8 -> 1e9 cells on the same patients: the severe CRS rate
    and the median peak IL-6 rise at every step (the superseded cart model
    lowered both), and so does response."""
    order = sorted(dose_response, key=lambda a: dose_response[a]["dose_cells"][0])
    severe = [dose_response[a]["severe_crs"].mean() for a in order]
    peak = [np.median(dose_response[a]["il6_peak_pg_ml"]) for a in order]
    response = [dose_response[a]["no_detectable_disease"].mean() for a in order]
    assert np.all(np.diff(severe) > 0), severe
    assert np.all(np.diff(peak) > 0), peak
    assert np.all(np.diff(response) > 0), response
    # per patient, too: a tenfold higher dose never lowers peak IL-6 by more than 5%
    ratio = dose_response["dose_3e8"]["il6_peak_pg_ml"] / dose_response["dose_3e7"]["il6_peak_pg_ml"]
    assert np.mean(ratio >= 0.95) > 0.99


def test_burden_lowers_response_and_raises_severe_crs(dose_response):
    """Fixed 1e8 cells, tertiles of baseline burden: response at least 10 points
    lower and severe CRS at least 10 points higher in the top tertile."""
    arm = dose_response["dose_1e8"]
    edges = np.quantile(arm["tumour0_cells"], [1 / 3, 2 / 3])
    tertile = np.searchsorted(edges, arm["tumour0_cells"])
    low, high = tertile == 0, tertile == 2
    for response in ("no_detectable_disease", "responded"):
        assert arm[response][low].mean() - arm[response][high].mean() >= 0.10, response
    assert arm["severe_crs"][high].mean() - arm["severe_crs"][low].mean() >= 0.10


def test_debulking_lowers_crs_keeps_response_and_favours_memory(debulking):
    """Tenfold debulking: severe CRS at most half, lead response (no detectable
    disease) no more than 5 points lower, memory fraction at day 28 higher and
    exhausted fraction lower than without debulking."""
    full, tenth = debulking["debulk_1"], debulking["debulk_0_1"]
    assert tenth["severe_crs"].mean() <= 0.5 * full["severe_crs"].mean()
    assert tenth["no_detectable_disease"].mean() >= full["no_detectable_disease"].mean() - 0.05
    assert np.median(tenth["memory_fraction_d28"]) > np.median(full["memory_fraction_d28"])
    assert np.median(tenth["exhausted_fraction_d28"]) < np.median(full["exhausted_fraction_d28"])


def test_kinetics_of_the_fixed_arm(dose_response):
    """Median CAR T peak day in 7-14; contraction ratios to day 7 within a
    factor 3 (days 14, 28) and 5 (day 90) of ZUMA-1's medians 0.33, 0.076 and
    0.0036 (Kimmel et al. 2021)."""
    arm = dose_response["dose_1e8"]
    assert 7.0 <= np.median(arm["t_cart_peak_d"]) <= 14.0
    for day, zuma, factor in ((14, 0.33, 3.0), (28, 0.076, 3.0), (90, 0.0036, 5.0)):
        ratio = np.median(arm[f"cart_d{day}_cells"] / arm["cart_d7_cells"])
        assert zuma / factor <= ratio <= zuma * factor, (day, ratio)
