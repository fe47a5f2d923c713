"""Outcome rules (pipeline.outcomes) on hand-made feature values, and the
kernel features they rest on for the cart model."""
from types import SimpleNamespace

import numpy as np

from kernels.dopri5 import Doses, solve
from kernels.models import get_model
from pipeline.outcomes import (FEATURE_COLUMNS, RESPONSES, crs_grade, feature_columns,
                               kernel_features, outcome_columns, response_label)

RULES = SimpleNamespace(response_day=28.0, response_fraction=0.01, relapse_fraction=0.1,
                        crs_il6_thresholds_pg_ml=(100.0, 500.0, 2000.0, 5000.0),
                        severe_crs_grade=3, no_detectable_disease_cells=1e9)


def test_crs_grade_counts_thresholds_reached():
    peaks = np.array([0.0, 99.9, 100.0, 499.0, 2000.0, 4999.0, 5000.0, 1e6, np.nan])
    assert crs_grade(peaks, RULES.crs_il6_thresholds_pg_ml).tolist() == [0, 0, 1, 1, 3, 3, 4, 4, 0]


def test_response_relapse_and_severity_rules():
    """Responder at the landmark, deep response then rebound -> relapse, severity."""
    columns = {
        "tumour_response_day_cells": np.array([5e7, 2e8, 3e6]),
        "tumour_min_cells": np.array([1e6, 2e8, 2e6]),
        "t_rebound_d": np.array([200.0, np.nan, 150.0]),
        "il6_peak_pg_ml": np.array([2500.0, 50.0, 600.0]),
    }
    tumour0 = np.array([1e10, 1e10, 1e8])
    out = outcome_columns(columns, tumour0, RULES)
    assert out["responded"].tolist() == [True, False, False]     # 3e6 > 0.01 * 1e8
    assert out["relapsed"].tolist() == [True, False, False]      # patient 3 never fell to 1e6
    assert np.isnan(out["t_relapse_d"][1:]).all() and out["t_relapse_d"][0] == 200.0
    assert out["severe_crs"].tolist() == [True, False, False]
    assert np.allclose(out["best_response_log10"], [-4.0, np.log10(0.02), np.log10(0.02)])


def test_no_detectable_disease_is_absolute():
    """Tumour at the landmark <= no_detectable_disease_cells, whatever T0: a
    small (debulked) tumour that barely shrank counts, a two-log fall from a
    large one that leaves more than 1e9 cells does not; NaN (a failed patient)
    is False."""
    columns = {
        "tumour_response_day_cells": np.array([8e8, 5e9, 1e9, 1.1e9, np.nan]),
        "tumour_min_cells": np.array([8e8, 5e9, 1e9, 1.1e9, np.nan]),
        "t_rebound_d": np.full(5, np.nan),
        "il6_peak_pg_ml": np.full(5, 10.0),
    }
    tumour0 = np.array([1e9, 1e12, 1e10, 1e12, 1e10])
    out = outcome_columns(columns, tumour0, RULES)
    assert out["no_detectable_disease"].tolist() == [True, False, True, False, False]
    assert out["responded"].tolist() == [False, True, False, True, False]
    assert out["no_detectable_disease"].dtype == bool


def test_response_labels_state_the_rule():
    rules = SimpleNamespace(response_day=90.0, response_fraction=0.01)
    assert response_label("responded", rules) == "response (tumour <= 1% of baseline at day 90)"
    assert response_label("no_detectable_disease", rules) == (
        "response (no detectable disease at day 90)")
    assert response_label("responded") == "response (tumour <= a fraction of baseline)"
    assert set(RESPONSES) == {"responded", "no_detectable_disease"}


def test_cart_features_in_cells_and_consistent():
    """Kernel features for the cart model: cell columns scaled from 1e9-cell units,
    minima no higher than landmark values, a rebound only where the tumour fell
    below the relapse level, and within the horizon."""
    model = get_model("cart")
    n = 200
    rng = np.random.default_rng(2)
    sd = np.array([p.sd_log for p in model.parameters])
    params = model.typical_parameters() * np.exp(sd * rng.standard_normal((n, sd.size)))
    y0 = np.tile(model.typical_initial_state(), (n, 1))
    feats = kernel_features(model, RULES, 365.0)
    sol = solve(model, y0, params, 0.0, 365.0, doses=Doses([0.0], ["E"], np.full((n, 1), 0.1)),
                features=feats)
    cols = feature_columns(model, sol.features, RULES, 365.0)
    assert list(cols)[:len(FEATURE_COLUMNS)] == list(FEATURE_COLUMNS)   # then the model's own
    assert (sol.status == 0).all()
    assert np.all(cols["tumour_min_cells"] <= cols["tumour_response_day_cells"])
    assert np.all(cols["tumour_min_cells"] <= 10.0 * 1e9)
    assert np.all(cols["cart_peak_cells"] >= 0.1 * 1e9)          # at least the dose
    rebound = np.isfinite(cols["t_rebound_d"])
    fell_below = cols["tumour_min_cells"] < RULES.relapse_fraction * y0[:, 0] * 1e9
    assert rebound.any() and np.all(fell_below[rebound])
    assert np.all((cols["t_rebound_d"][rebound] > 0) & (cols["t_rebound_d"][rebound] <= 365.0))
    out = outcome_columns(cols, y0[:, 0] * 1e9, RULES)
    assert out["responded"].any() and (~out["responded"]).any()
