"""Interventions (tocilizumab, corticosteroids...): who got them and when.

Applies when the run's scenario has interventions (``[[arms.interventions]]``
in pipeline/config.py); their ``t_<name>_d`` columns hold the day each was
given, NaN when never. Per
arm and intervention: the share of patients treated with its Wilson 95%
interval, the median (10th-90th percentile) day given, and the severe CRS and
response rates among the treated and the untreated. Writes ``interventions.csv``.
"""
import numpy as np
import pandas as pd

from pipeline.aggregate import wilson_interval
from pipeline.figures import md_table

FILES = {"interventions": "interventions.csv"}


def _rate(events, n):
    if n == 0:
        return np.nan, np.nan, np.nan
    lo, hi = wilson_interval(events, n)
    return events / n, float(lo), float(hi)


def intervention_table(patients, pairs):
    """One row per (arm, intervention name) pair in ``pairs`` (patients with status 0)."""
    ok = patients[patients["status"] == 0]
    rows = []
    for arm, name in pairs:
        group = ok[ok["arm"] == arm]
        day = group[f"t_{name}_d"].to_numpy(float)
        given = np.isfinite(day)
        share, lo, hi = _rate(int(given.sum()), len(group))
        q = np.percentile(day[given], [50, 10, 90]) if given.any() else [np.nan] * 3
        rows.append({"arm": arm, "intervention": name, "n": len(group),
                     "treated": int(given.sum()), "share": share, "lower": lo, "upper": hi,
                     "day_median": q[0], "day_p10": q[1], "day_p90": q[2],
                     "severe_crs_treated": group.loc[given, "severe_crs"].mean(),
                     "severe_crs_untreated": group.loc[~given, "severe_crs"].mean(),
                     "response_treated": group.loc[given, "responded"].mean(),
                     "response_untreated": group.loc[~given, "responded"].mean()})
    return pd.DataFrame(rows)


def _pct(value):
    return "n/a" if not np.isfinite(value) else f"{100 * value:.1f}"


def _days(row):
    if not np.isfinite(row.day_median):
        return "n/a"
    return f"{row.day_median:.2f} ({row.day_p10:.2f}-{row.day_p90:.2f})"


def section(patients, scenario, out_dir):
    from pipeline.sections import Section
    if scenario is None:
        return None
    pairs = [(arm.name, i.name) for arm in scenario.arms for i in arm.interventions]
    if not pairs or any(f"t_{name}_d" not in patients.columns for _, name in pairs):
        return None
    table = intervention_table(patients, pairs)
    path = out_dir / FILES["interventions"]
    table.to_csv(path, index=False)
    rows = [[r.arm, r.intervention, f"{_pct(r.share)} [{_pct(r.lower)}, {_pct(r.upper)}]",
             _days(r),
             _pct(r.severe_crs_treated), _pct(r.severe_crs_untreated),
             _pct(r.response_treated), _pct(r.response_untreated)]
            for r in table.itertuples(index=False)]
    text = "\n".join([
        "Patients with status ok. An intervention given at a day or when IL-6 first reaches "
        "a level changes the patient's parameters from then on (kernel events); the day is "
        "in `t_<name>_d` (NaN: never given). Rates in %, share treated with its Wilson 95% "
        f"interval; table [{FILES['interventions']}]({FILES['interventions']}).", "",
        md_table(["arm", "intervention", "treated %", "day given, median (10th-90th)",
                  "severe CRS % if treated", "if not", "response % if treated", "if not"],
                 rows)])
    return Section("Interventions", text, {"interventions": path})
