"""CD28 vs 4-1BB: long-term outcomes and CAR T kinetics per arm (``costim`` runs).

Applies when the run has the ``costim`` model's landmark columns
(``tumour_control_d<day>``, ``cart_persisting_d<day>``; kernels/models/costim.py).
Over the patients with status 0, per arm:

* rates with Wilson 95% intervals (:func:`pipeline.aggregate.arm_rates`):
  tumour control at each landmark day (tumour <= 1% of its baseline), CAR T
  persistence (blood level >= 0.1 cells/uL), relapse and severe CRS; and every
  arm minus the scenario's first arm on the same patients, with the exact
  conditional 95% interval (:func:`pipeline.aggregate.paired_differences`);
* CAR T kinetics from the feature columns: median and 25th-75th percentiles of
  all CAR T cells at infusion (``dose_cells``), at the peak (``cart_peak_cells``,
  drawn at the median ``t_cart_peak_d``) and on each landmark day
  (``cart_d<day>_cells``), and of the persisting (memory) fraction.

Writes ``costim_rates.csv``, ``costim_kinetics.csv`` and ``costim.png`` (rates
with their intervals; median CAR T against time with the interquartile band
and the persistence threshold).
"""
import re

import numpy as np
import pandas as pd

from kernels.models.costim import (PERSISTENCE_CELLS, PERSISTENCE_CELLS_PER_UL,
                                   TUMOUR_CONTROL_FRACTION)
from pipeline.aggregate import arm_rates, paired_differences
from pipeline.figures import colours, md_table, pyplot, save

FILES = {"costim_rates": "costim_rates.csv", "costim_kinetics": "costim_kinetics.csv",
         "costim_plot": "costim.png"}
_LANDMARK = re.compile(r"^tumour_control_d(\d+)$")


def landmark_days(patients):
    """The landmark days the run has columns for, ascending."""
    days = (int(m.group(1)) for m in map(_LANDMARK.match, patients.columns) if m)
    return sorted(d for d in days if f"cart_persisting_d{d}" in patients.columns)


def outcome_labels(days):
    """[(column, label)] of the rates, in table order."""
    return ([(f"tumour_control_d{d}", f"tumour control day {d}") for d in days]
            + [(f"cart_persisting_d{d}", f"CAR T persisting day {d}") for d in days]
            + [("relapsed", "relapse"), ("severe_crs", "severe CRS")])


def kinetics_table(patients, days):
    """Per arm: median and quartiles of CAR T cells at infusion, peak and
    landmark days, the median peak day and the memory fractions."""
    ok = patients[patients["status"] == 0]
    points = ([("dose_cells", "infusion"), ("cart_peak_cells", "peak")]
              + [(f"cart_d{d}_cells", f"day {d}") for d in days])
    rows = []
    for arm, g in ok.groupby("arm", sort=False, observed=True):
        row = {"arm": arm, "n": len(g), "t_cart_peak_d_median": float(g["t_cart_peak_d"].median())}
        for column, _ in points + [(f"memory_fraction_d{d}", "") for d in days]:
            q25, q50, q75 = g[column].quantile([0.25, 0.5, 0.75])
            row.update({f"{column}_p25": q25, f"{column}_median": q50, f"{column}_p75": q75})
        rows.append(row)
    return pd.DataFrame(rows), points


def arm_order(arms, scenario):
    """The arms present, in the scenario's order when it is known (its first
    arm is the reference of the differences), else in order of appearance."""
    present = list(dict.fromkeys(arms))
    if scenario is None:
        return present
    return [arm.name for arm in scenario.arms if arm.name in present]


def _cell(rate, lower, upper):
    return f"{100 * rate:.1f} [{100 * lower:.1f}, {100 * upper:.1f}]"


def _rates_markdown(rates, paired, labels, arms):
    reference = arms[0]
    others = arms[1:]
    headers = ["outcome", *(f"{arm} % [95% CI]" for arm in arms),
               *(f"{arm} - {reference} (points) [95% CI]" for arm in others)]
    by = rates.set_index(["outcome", "arm"])
    diff = paired.set_index(["outcome", "arm"]) if not paired.empty else None
    rows = []
    for column, label in labels:
        cells = [_cell(*by.loc[(column, arm), ["rate", "lower", "upper"]]) for arm in arms]
        cells += [_cell(*diff.loc[(column, arm), ["difference", "lower", "upper"]])
                  for arm in others]
        rows.append([label, *cells])
    return md_table(headers, rows)


def _kinetics_markdown(table, points, days):
    headers = ["arm", *(f"CAR T {label} (cells)" for _, label in points), "peak day",
               *(f"memory fraction day {d}" for d in days)]
    rows = []
    for _, r in table.iterrows():
        rows.append([r["arm"],
                     *(f"{r[f'{c}_median']:.3g} [{r[f'{c}_p25']:.2g}, {r[f'{c}_p75']:.2g}]"
                       for c, _ in points),
                     f"{r['t_cart_peak_d_median']:.1f}",
                     *(f"{r[f'memory_fraction_d{d}_median']:.2f}" for d in days)])
    return md_table(headers, rows)


def _plot(rates, labels, table, points, days, path):
    plt = pyplot()
    arms = list(table["arm"])
    colour = colours(arms)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13.0, 4.8),
                                      gridspec_kw={"width_ratios": [1.5, 1.0]})
    width = 0.8 / len(arms)
    x = np.arange(len(labels))
    for k, arm in enumerate(arms):
        r = rates[rates["arm"] == arm].set_index("outcome").loc[[c for c, _ in labels]]
        rate, lower, upper = (100 * r[c].to_numpy(float) for c in ("rate", "lower", "upper"))
        xs = x + (k - (len(arms) - 1) / 2) * width
        left.bar(xs, rate, width * 0.9, color=colour[arm], alpha=0.4, edgecolor=colour[arm])
        left.errorbar(xs, rate, yerr=[rate - lower, upper - rate], fmt="o", capsize=3,
                      color=colour[arm], label=arm, markersize=3)
    left.set_xticks(x, [label for _, label in labels], rotation=30, ha="right", fontsize=8)
    left.set_ylabel("patients % (Wilson 95% CI)")
    left.set_ylim(0, 105)
    left.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8)
    left.set_title("Outcomes per arm")
    for arm in arms:
        r = table[table["arm"] == arm].iloc[0]
        t = [0.0, r["t_cart_peak_d_median"], *map(float, days)]
        median = [r[f"{c}_median"] for c, _ in points]
        right.plot(t, median, marker="o", color=colour[arm], label=f"{arm} median")
        right.fill_between(t, [r[f"{c}_p25"] for c, _ in points],
                           [r[f"{c}_p75"] for c, _ in points], color=colour[arm], alpha=0.15)
    right.axhline(PERSISTENCE_CELLS, color="grey", linestyle="--", linewidth=1,
                  label=f"persistence ({PERSISTENCE_CELLS_PER_UL:g} cells/uL blood)")
    right.set_yscale("log")
    right.set_xlabel("day after infusion")
    right.set_ylabel("CAR T cells, whole body")
    right.set_title("CAR T: infusion, peak, landmarks (median, IQR)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    save(fig, path)


def section(patients, scenario, out_dir):
    from pipeline.sections import Section
    days = landmark_days(patients)
    if not days:
        return None
    labels = outcome_labels(days)
    rates = arm_rates(patients, [c for c, _ in labels])
    arms = arm_order(rates["arm"], scenario)
    paired = paired_differences(patients, arms[0], [c for c, _ in labels])
    table, points = kinetics_table(patients, days)
    table = table.set_index("arm").loc[arms].reset_index()
    paths = {key: out_dir / name for key, name in FILES.items()}
    pd.concat([rates, paired], ignore_index=True).to_csv(paths["costim_rates"], index=False)
    table.to_csv(paths["costim_kinetics"], index=False)
    _plot(rates, labels, table, points, days, paths["costim_plot"])
    text = "\n".join([
        "Long-term outcomes per arm, patients with status 0 (kernels/models/costim.py): "
        f"tumour control = tumour at most {100 * TUMOUR_CONTROL_FRACTION:g}% of its baseline "
        "on that day; CAR T persisting "
        f"= blood level at least {PERSISTENCE_CELLS_PER_UL:g} cells/uL (the ZUMA-1 median "
        "at day 90); relapse and severe CRS as in the summary. Differences are paired "
        f"(same patients) against {arms[0]}, with exact conditional 95% intervals.",
        "",
        _rates_markdown(rates, paired, labels, arms),
        "",
        "CAR T cells (whole body), median [25th, 75th percentile]; the peak day is the "
        "median day of each patient's peak:",
        "",
        _kinetics_markdown(table, points, days),
        "",
        f"Tables: [{FILES['costim_rates']}]({FILES['costim_rates']}), "
        f"[{FILES['costim_kinetics']}]({FILES['costim_kinetics']}).",
        "",
        f"![CD28 vs 4-1BB]({FILES['costim_plot']})",
    ])
    return Section("CD28 vs 4-1BB: long-term outcomes", text, paths)
