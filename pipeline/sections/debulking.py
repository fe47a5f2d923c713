"""Debulking: toxicity, CAR T phenotype and response against the debulking factor.

Applies when the run's arms have more than one distinct ``debulking_factor``
(the fraction of the baseline tumour left at infusion, ``pipeline.policies``).
Per arm, ordered by debulking factor, over the patients with status 0:

* peak IL-6 (pg/mL): median, 10th-90th and 25th-75th percentiles;
* rates with Wilson 95% intervals (:func:`pipeline.aggregate.arm_rates`): a late
  IL-6 peak, after the CRS window (``t_il6_peak_d`` > ``CRS_WINDOW_DAYS`` = 28
  days; peak IL-6 in the first month is what tracks severe CRS, Teachey et al.
  2016, docs/references.md#teachey-2016), a second wave of killing as the
  tumour regrows, which ``il6_peak_pg_ml`` and the CRS grade count too since they take the
  maximum over the whole horizon; severe CRS; response (relative to the tumour
  at infusion); no detectable disease (an absolute response, which a smaller
  tumour at infusion does not make harder to reach; pipeline/outcomes.py);
  durable response (the cart model's ``durable_response``: responded and not
  relapsed up to the horizon);
* effector-to-target ratio at infusion, dose / tumour at infusion: median;
* memory and exhausted fractions of all CAR T cells at days 28 and 90
  (``memory_fraction_d28`` ...; those the run has): median and 25th-75th
  percentiles.

Writes ``debulking.csv`` (those numbers, one row per arm) and ``debulking.png``
(each against the debulking factor on a log axis; arms that differ only in the
factor are joined by lines).
"""
import dataclasses

import numpy as np
import pandas as pd

from pipeline.aggregate import arm_rates
from pipeline.figures import md_table, pyplot, save

CRS_WINDOW_DAYS = 28.0
LATE_PEAK = "late_il6_peak"
RATES = ((LATE_PEAK, f"IL-6 peak after day {CRS_WINDOW_DAYS:g}"), ("severe_crs", "severe CRS"),
         ("responded", "response"), ("no_detectable_disease", "no detectable disease"),
         ("durable_response", "durable response"))
PHENOTYPE_FRACTIONS = (("memory_fraction_d28", "memory d28"),
                       ("exhausted_fraction_d28", "exhausted d28"),
                       ("memory_fraction_d90", "memory d90"),
                       ("exhausted_fraction_d90", "exhausted d90"))
REQUIRED = ("debulking_factor", "il6_peak_pg_ml", "severe_crs", "responded",
            "effector_to_target")
QUANTILES = (("p10", 0.10), ("p25", 0.25), ("median", 0.50), ("p75", 0.75), ("p90", 0.90))
FILES = {"debulking_table": "debulking.csv", "debulking_plot": "debulking.png"}


def applies(patients):
    """The run has the section's columns and more than one debulking factor."""
    return (all(c in patients.columns for c in REQUIRED)
            and patients["debulking_factor"].nunique() > 1)


def _quantiles(values, prefix):
    q = pd.Series(values, dtype=float).quantile([p for _, p in QUANTILES])
    return {f"{prefix}_{name}": float(v) for (name, _), v in zip(QUANTILES, q)}


def arm_summary(patients):
    """One row per arm (status 0 only), ordered by debulking factor, then first
    appearance: the numbers of the module docstring."""
    ok = patients[patients["status"] == 0]
    if "t_il6_peak_d" in ok.columns:
        ok = ok.assign(**{LATE_PEAK: ok["t_il6_peak_d"] > CRS_WINDOW_DAYS})
    rates = [c for c, _ in RATES if c in ok.columns]
    ci = arm_rates(ok, rates).set_index(["arm", "outcome"])
    rows = []
    for arm, g in ok.groupby("arm", sort=False):
        row = {"arm": arm, "debulking_factor": float(g["debulking_factor"].iloc[0]),
               "n": len(g), "effector_to_target_median": float(g["effector_to_target"].median()),
               **_quantiles(g["il6_peak_pg_ml"], "il6_peak_pg_ml")}
        for column in rates:
            r = ci.loc[(arm, column)]
            row.update({column: r["rate"], f"{column}_lower": r["lower"],
                        f"{column}_upper": r["upper"]})
        for column in (c for c, _ in PHENOTYPE_FRACTIONS if c in g.columns):
            row.update({k: v for k, v in _quantiles(g[column], column).items()
                        if not k.endswith(("p10", "p90"))})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("debulking_factor", kind="stable").reset_index(drop=True)


def _series(arms, scenario):
    """arm -> label of its series: arms whose configs differ only in name and
    debulking factor form one series (one line in the plot). Without the
    config, every arm is a series of its own."""
    configs = {a.name: a for a in scenario.arms} if scenario is not None else {}
    return {arm: dataclasses.replace(configs[arm], name="", debulking_factor=1.0).describe()
            if arm in configs else arm for arm in arms}


def _in_percent(summary):
    """The rate columns (and their bounds) in percent."""
    pct = summary.copy()
    for column in (c + suffix for c, _ in RATES for suffix in ("", "_lower", "_upper")):
        if column in pct:
            pct[column] = 100 * pct[column]
    return pct


def _draw(ax, table, y, low, high, band, label, **style):
    """One series of one quantity against the factor: a line when the series has
    several factors; its spread (low..high) as a band or as error bars."""
    x = table["debulking_factor"]
    ax.plot(x, table[y], linestyle="-" if len(table) > 1 else "none", label=label, **style)
    if band and len(table) > 1:
        ax.fill_between(x, table[low], table[high], alpha=0.15, color=style["color"])
    else:
        # clipped: a Wilson bound at 0 events can exceed the rate by rounding (1e-17)
        spread = np.clip([table[y] - table[low], table[high] - table[y]], 0.0, None)
        ax.errorbar(x, table[y], yerr=spread, fmt="none", capsize=3, color=style["color"])


# panel -> [(column, label, colour, spread as a band)]: the median or rate is
# ``column`` (+ "_median" for quantiles), the spread its p25/p75 or Wilson bounds
_PHENOTYPE_COLOURS = dict(zip((c for c, _ in PHENOTYPE_FRACTIONS),
                              ("tab:blue", "tab:red", "tab:cyan", "tab:orange")))
_PANELS = (
    ("peak IL-6, median and IQR", "pg/mL", "log",
     [("il6_peak_pg_ml", "peak IL-6", "tab:purple", True)]),
    (f"IL-6 peak after day {CRS_WINDOW_DAYS:g} (Wilson 95% CI)", "patients (%)", "linear",
     [(LATE_PEAK, "late IL-6 peak", "tab:brown", False)]),
    ("severe CRS (Wilson 95% CI)", "patients (%)", "linear",
     [("severe_crs", "severe CRS", "tab:red", False)]),
    ("response, no detectable disease, durable response (Wilson 95% CI)", "patients (%)",
     "linear",
     [("responded", "response", "tab:blue", False),
      ("no_detectable_disease", "no detectable disease", "tab:cyan", False),
      ("durable_response", "durable response", "tab:green", False)]),
    *((f"{kind} CAR T, median and IQR", "fraction of all CAR T cells", "linear",
       [(c, label, _PHENOTYPE_COLOURS[c], True) for c, label in PHENOTYPE_FRACTIONS
        if label.startswith(kind)])
      for kind in ("memory", "exhausted")),
)


def _columns(table, column):
    """(centre, low, high) column names of a quantity in the summary."""
    if f"{column}_median" in table:
        return f"{column}_median", f"{column}_p25", f"{column}_p75"
    return column, f"{column}_lower", f"{column}_upper"


def _plot(summary, series, scenario, path):
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15.0, 8.6))
    pct = _in_percent(summary)
    labels = list(dict.fromkeys(series[a] for a in summary["arm"]))
    markers = {label: "oD^vsP*X"[i % 8] for i, label in enumerate(labels)}
    factors = sorted(summary["debulking_factor"].unique())
    for ax, (title, ylabel, yscale, quantities) in zip(axes.ravel(), _PANELS):
        for i, label in enumerate(labels):
            table = pct[pct["arm"].map(series) == label]
            for column, text, colour, band in quantities:
                centre, low, high = _columns(table, column)
                if centre in table:
                    _draw(ax, table, centre, low, high, band, text if i == 0 else None,
                          color=colour, marker=markers[label])
        ax.set_xscale("log")
        ax.set_xticks(factors, [f"{f:g}" for f in factors])
        ax.minorticks_off()
        ax.set_yscale(yscale)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("debulking factor (fraction of the tumour left)", fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(quantities) > 1 and ax.has_data():
            ax.legend(fontsize=8)
    if scenario is not None:
        outcomes = scenario.outcomes
        level = outcomes.crs_il6_thresholds_pg_ml[outcomes.severe_crs_grade - 1]
        axes[0, 0].axhline(level, color="grey", linestyle="--", linewidth=1.0)
        axes[0, 0].annotate(f"severe CRS from {level:g} pg/mL", (0.02, level),
                            xycoords=("axes fraction", "data"), va="bottom", fontsize=8,
                            color="grey")
    handles = [plt.Line2D([], [], color="black", marker=markers[label], label=label,
                          linestyle="-" if list(series.values()).count(label) > 1 else "none")
               for label in labels]
    # the arms' markers in the late-peak panel, whose upper right stays empty
    axes[0, 1].legend(handles=handles, loc="upper right", fontsize=7, title="arms",
                      title_fontsize=8)
    fig.suptitle("Outcomes against the debulking factor")
    save(fig, path)


def _cell(row, column, digits=1):
    return (f"{100 * row[column]:.{digits}f} [{100 * row[f'{column}_lower']:.{digits}f}, "
            f"{100 * row[f'{column}_upper']:.{digits}f}]")


def _quantile_cell(row, column, low, high, spec):
    """'median (low-high)' of a quantity's quantile columns."""
    return (f"{row[f'{column}_median']:{spec}} ({row[f'{column}_{low}']:{spec}}-"
            f"{row[f'{column}_{high}']:{spec}})")


PHENOTYPE_CAPTION = ("Memory and exhausted CAR T as fractions of all CAR T cells, median "
                     "(25th-75th percentile):")
INTRODUCTION = (
    "Arms ordered by debulking factor, the fraction of the baseline tumour left at infusion "
    "(response is measured against that tumour; no detectable disease is an absolute "
    "threshold in cells, the same for every factor). Patients with status ok. E:T = dose / "
    "tumour at infusion. Durable response = response and no relapse up to the horizon. Peak "
    "IL-6 and the CRS grade are taken over the whole horizon; an IL-6 peak after day "
    f"{CRS_WINDOW_DAYS:g} is a second wave of killing as the tumour regrows, outside the "
    "first-month window in which peak IL-6 tracks severe CRS (Teachey et al. 2016).")


def _tables(summary):
    """The Markdown tables: outcomes, then phenotype (when the run has it)."""
    rates = [(c, label) for c, label in RATES if c in summary]
    headers = ["arm", "debulking factor", "n", "median E:T at infusion",
               "peak IL-6 pg/mL, median (10th-90th)", *(f"{label} % [95% CI]" for _, label in rates)]
    rows = [[r["arm"], f"{r['debulking_factor']:g}", f"{int(r['n']):,}",
             f"{r['effector_to_target_median']:.3g}",
             _quantile_cell(r, "il6_peak_pg_ml", "p10", "p90", ".3g"),
             *(_cell(r, c) for c, _ in rates)]
            for _, r in summary.iterrows()]
    text = [md_table(headers, rows)]
    fractions = [(c, label) for c, label in PHENOTYPE_FRACTIONS if f"{c}_median" in summary]
    if fractions:
        rows = [[r["arm"], f"{r['debulking_factor']:g}",
                 *(_quantile_cell(r, c, "p25", "p75", ".3f") for c, _ in fractions)]
                for _, r in summary.iterrows()]
        text += ["", PHENOTYPE_CAPTION, "",
                 md_table(["arm", "debulking factor", *(label for _, label in fractions)], rows)]
    return "\n".join(text)


def section(patients, scenario, out_dir):
    from pipeline.sections import Section
    if not applies(patients):
        return None
    summary = arm_summary(patients)
    if summary.empty:
        return None
    paths = {key: out_dir / name for key, name in FILES.items()}
    summary.to_csv(paths["debulking_table"], index=False)
    _plot(summary, _series(summary["arm"], scenario), scenario, paths["debulking_plot"])
    text = "\n".join([
        INTRODUCTION,
        "",
        _tables(summary),
        "",
        f"Numbers per arm: [{FILES['debulking_table']}]({FILES['debulking_table']}).",
        "",
        f"![Outcomes against the debulking factor]({FILES['debulking_plot']})",
    ])
    return Section("Debulking", text, paths)
