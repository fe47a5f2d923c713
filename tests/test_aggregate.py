"""Rates, intervals and paired differences (pipeline.aggregate).

Reference values: Newcombe (1998), Stat Med 17:857-872, Table II — Wilson score
(method 3) and Clopper-Pearson exact (method 5) 95% intervals for four examples.
"""
import numpy as np
import pandas as pd
import pytest

from pipeline.aggregate import (arm_rates, clopper_pearson, paired_difference,
                                paired_differences, strata_rates, wilson_interval)

NEWCOMBE_TABLE_II = [  # events, n, Wilson (lo, hi), Clopper-Pearson (lo, hi)
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0579, 0.1617)),
    (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize("events, n, wilson, exact", NEWCOMBE_TABLE_II)
def test_intervals_match_newcombe_table(events, n, wilson, exact):
    """Wilson and Clopper-Pearson 95% intervals reproduce the published table to 4 decimals."""
    assert np.allclose(wilson_interval(events, n), wilson, atol=1.2e-4)
    assert np.allclose(clopper_pearson(events, n), exact, atol=1.2e-4)


def test_paired_difference_counts_and_symmetry():
    """d = (b - c)/n from the discordant pairs; swapping the arms negates it."""
    arm = np.array([1, 1, 1, 0, 0, 1, 0, 0, 1, 1], bool)
    ref = np.array([1, 0, 0, 0, 1, 1, 0, 0, 0, 1], bool)
    d = paired_difference(arm, ref)
    assert (d.n, d.arm_only, d.reference_only) == (10, 3, 1)
    assert d.difference == pytest.approx(0.2)
    assert d.lower < d.difference < d.upper
    swapped = paired_difference(ref, arm)
    assert swapped.difference == pytest.approx(-d.difference)
    assert (swapped.lower, swapped.upper) == pytest.approx((-d.upper, -d.lower))


def test_paired_difference_coverage():
    """Simulated paired trials: the exact conditional interval covers the true
    difference at least 95% of the time (it is conservative by construction)."""
    rng = np.random.default_rng(7)
    n, trials, hits = 200, 2000, 0
    p_arm_only, p_ref_only, p_both = 0.12, 0.05, 0.3
    true_difference = (p_arm_only - p_ref_only) * (1.0 - p_both)
    for _ in range(trials):
        u = rng.random(n)
        arm = u < p_arm_only
        ref = (u >= p_arm_only) & (u < p_arm_only + p_ref_only)
        both = rng.random(n) < p_both     # concordant events, independent of u
        d = paired_difference(arm | both, ref | both)
        hits += d.lower <= true_difference <= d.upper
    assert hits / trials >= 0.95


def test_no_discordant_pairs_gives_zero_difference():
    same = np.array([1, 0, 1, 1], bool)
    d = paired_difference(same, same)
    assert (d.difference, d.lower, d.upper) == (0.0, 0.0, 0.0)


def _table():
    rng = np.random.default_rng(3)
    n = 400
    frames = []
    for arm, p in (("fixed", 0.6), ("adaptive", 0.5)):
        frames.append(pd.DataFrame({
            "patient_id": np.arange(n), "arm": arm, "status": np.where(np.arange(n) == 5, 3, 0),
            "responded": rng.random(n) < p, "severe_crs": rng.random(n) < 0.2,
            "tumour0_cells": np.exp(rng.normal(23, 1, n))}))
    return pd.concat(frames, ignore_index=True)


def test_arm_rates_exclude_failed_patients():
    """Rates count status-ok patients only and carry the Wilson interval."""
    table = _table()
    rates = arm_rates(table, ["responded", "severe_crs"])
    fixed = rates[(rates.arm == "fixed") & (rates.outcome == "responded")].iloc[0]
    ok = table[(table.arm == "fixed") & (table.status == 0)]
    assert fixed.n == 399 and fixed.events == ok.responded.sum()
    assert (fixed.lower, fixed.upper) == pytest.approx(wilson_interval(fixed.events, 399))


def test_paired_differences_match_patients_by_id():
    """The table-level paired difference equals the vector one on matched patients."""
    table = _table()
    diffs = paired_differences(table, "fixed", ["responded"])
    row = diffs.iloc[0]
    a = table[(table.arm == "adaptive") & (table.status == 0)].set_index("patient_id")
    f = table[(table.arm == "fixed") & (table.status == 0)].set_index("patient_id")
    d = paired_difference(a.responded.to_numpy(), f.loc[a.index].responded.to_numpy())
    assert (row.n, row.arm_only, row.reference_only) == (d.n, d.arm_only, d.reference_only)
    assert (row.lower, row.upper) == pytest.approx((d.lower, d.upper))


def test_strata_split_every_arm_at_the_same_cut_points():
    table = _table()
    strata = strata_rates(table, "tumour0_cells", ["responded"], n_strata=3)
    assert strata.stratum.nunique() == 3
    per_arm = strata.groupby("arm").n.sum()
    assert per_arm["fixed"] == 399 and per_arm["adaptive"] == 399


def test_wilson_bounds_are_exact_at_no_and_all_events():
    # the rates 0 and 1 lie inside their own intervals, not 1e-17 outside
    lower, upper = wilson_interval(np.array([0, 7, 7, 0]), np.array([7, 7, 20, 0]))
    assert lower[0] == 0.0 and upper[1] == 1.0
    assert 0.0 < lower[2] < 7 / 20 < upper[2] < 1.0
    assert np.isnan(lower[3]) and np.isnan(upper[3])
