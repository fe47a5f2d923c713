"""Per-arm rates with confidence intervals, and paired differences between arms.

Every arm of a scenario runs on the same virtual patients, so a difference
between two arms is a paired comparison: patient by patient, an outcome either
agrees in both arms or is discordant. Intervals:

* a rate: Wilson score interval (Wilson 1927; Newcombe 1998, Stat Med 17:857,
  method 3), z from the normal quantile of the confidence level;
* a paired difference d = (b - c) / n, where b patients have the event in the
  arm only and c in the reference only: the exact conditional interval. Given
  the m = b + c discordant pairs, b ~ Binomial(m, pi) and d = (m / n)(2 pi - 1);
  the Clopper-Pearson interval for pi (Clopper & Pearson 1934) maps to one for d
  (the interval behind McNemar's exact test). It is conservative: coverage >= the
  confidence level for every pi.

Only patients whose integration succeeded (status 0) count; for a paired
difference, only patients that succeeded in both arms.
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import beta, norm

CONFIDENCE = 0.95


def wilson_interval(events, n, confidence=CONFIDENCE):
    """Wilson score interval for events / n (arrays or scalars); NaN where n == 0."""
    events, n = np.asarray(events, dtype=float), np.asarray(n, dtype=float)
    z = norm.ppf(0.5 + confidence / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = events / n
        denominator = 1.0 + z * z / n
        centre = p + z * z / (2.0 * n)
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
        lower = (centre - half) / denominator
        upper = (centre + half) / denominator
    # exact at the edges (rounding leaves about 1e-17 there): no events -> lower
    # bound 0, all events -> upper bound 1, so an interval always holds its rate
    some = n > 0
    lower = np.where(some & (events == 0), 0.0, np.clip(lower, 0.0, 1.0))
    upper = np.where(some & (events == n), 1.0, np.clip(upper, 0.0, 1.0))
    return lower[()], upper[()]          # numpy scalars for scalar input


def clopper_pearson(events, n, confidence=CONFIDENCE):
    """Exact (Clopper-Pearson) interval for a binomial proportion events / n."""
    events, n = np.asarray(events, dtype=float), np.asarray(n, dtype=float)
    alpha = 1.0 - confidence
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(events > 0, beta.ppf(alpha / 2.0, events, n - events + 1.0), 0.0)
        upper = np.where(events < n, beta.ppf(1.0 - alpha / 2.0, events + 1.0, n - events), 1.0)
    return np.where(n > 0, lower, np.nan), np.where(n > 0, upper, np.nan)


@dataclass(frozen=True)
class PairedDifference:
    """Rate in ``arm`` minus rate in ``reference`` on the same patients."""

    n: int                 # patients counted in both arms
    arm_only: int          # b: event in the arm, not in the reference
    reference_only: int    # c: event in the reference, not in the arm
    difference: float      # (b - c) / n
    lower: float
    upper: float


def paired_difference(in_arm, in_reference, confidence=CONFIDENCE):
    """Paired difference of two boolean outcome vectors over the same patients,
    with the exact conditional interval (see module docstring)."""
    in_arm, in_reference = np.asarray(in_arm, bool), np.asarray(in_reference, bool)
    if in_arm.shape != in_reference.shape:
        raise ValueError("paired outcomes need the same patients in both arms")
    n = in_arm.size
    b = int(np.count_nonzero(in_arm & ~in_reference))
    c = int(np.count_nonzero(~in_arm & in_reference))
    if n == 0:
        return PairedDifference(0, 0, 0, np.nan, np.nan, np.nan)
    m = b + c
    if m == 0:
        return PairedDifference(n, 0, 0, 0.0, 0.0, 0.0)
    lo, hi = clopper_pearson(b, m, confidence)
    scale = m / n
    return PairedDifference(n, b, c, (b - c) / n, float(scale * (2.0 * lo - 1.0)),
                            float(scale * (2.0 * hi - 1.0)))


def arm_rates(patients, outcomes, confidence=CONFIDENCE):
    """Per arm and outcome: n (status ok), events, rate, Wilson interval.

    ``patients``: one row per patient and arm, with columns ``arm``, ``status``
    and the boolean ``outcomes``."""
    ok = patients[patients["status"] == 0]
    rows = []
    for arm, group in ok.groupby("arm", sort=False, observed=True):
        for outcome in outcomes:
            events, n = int(group[outcome].sum()), len(group)
            lower, upper = wilson_interval(events, n, confidence)
            rows.append({"arm": arm, "outcome": outcome, "n": n, "events": events,
                         "rate": events / n if n else np.nan,
                         "lower": float(lower), "upper": float(upper)})
    return pd.DataFrame(rows, columns=["arm", "outcome", "n", "events", "rate", "lower", "upper"])


def paired_differences(patients, reference, outcomes, confidence=CONFIDENCE):
    """Every other arm against ``reference``, outcome by outcome, on the patients
    that succeeded in both arms (matched by ``patient_id``)."""
    ok = patients[patients["status"] == 0]
    base = ok[ok["arm"] == reference].set_index("patient_id")
    rows = []
    for arm in ok["arm"].unique():
        if arm == reference:
            continue
        other = ok[ok["arm"] == arm].set_index("patient_id")
        common = base.index.intersection(other.index)
        for outcome in outcomes:
            d = paired_difference(other.loc[common, outcome].to_numpy(),
                                  base.loc[common, outcome].to_numpy(), confidence)
            rows.append({"arm": arm, "reference": reference, "outcome": outcome, "n": d.n,
                         "arm_only": d.arm_only, "reference_only": d.reference_only,
                         "difference": d.difference, "lower": d.lower, "upper": d.upper})
    return pd.DataFrame(rows, columns=["arm", "reference", "outcome", "n", "arm_only",
                                       "reference_only", "difference", "lower", "upper"])


def strata_rates(patients, column, outcomes, n_strata=3, confidence=CONFIDENCE):
    """Rates per arm within quantile strata of a baseline column (e.g. tumour
    burden): strata are the column's quantiles over all patients, so every arm
    is split at the same cut points. No rows (the columns only) when the column
    has fewer than two distinct values: there is nothing to split."""
    edges = np.unique(np.quantile(patients[column], np.linspace(0.0, 1.0, n_strata + 1)))
    if edges.size < 2:
        return pd.DataFrame(columns=["stratum", *arm_rates(patients.iloc[:0], outcomes).columns])
    labels = pd.cut(patients[column], edges, include_lowest=True)
    frames = []
    for label, group in patients.groupby(labels, observed=True):
        rates = arm_rates(group, outcomes, confidence)
        rates.insert(0, "stratum", str(label))
        frames.append(rates)
    return pd.concat(frames, ignore_index=True)
