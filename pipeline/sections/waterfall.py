"""The response gap between two arms, split into single changes (a waterfall).

Applies when the scenario has ``[report.waterfall]`` (``baseline``, ``full``,
``steps``; pipeline/config.py): each step arm is the baseline with one change,
the full arm has them all (``configs/translation.toml``: a xenograft, a
patient, and the xenograft with one patient difference at a time).

Counted: the patients whose integration succeeded (status 0) in every arm of
the waterfall, so that every rate and difference is over the same patients.
For the response outcome (``responded``):

* the baseline's and the full arm's rates, with Wilson 95% intervals;
* each step's contribution, rate(step) - rate(baseline), with the exact paired
  95% interval (:func:`pipeline.aggregate.paired_differences`);
* the total gap, rate(full) - rate(baseline), with its paired interval;
* the interaction remainder, gap - the sum of the contributions: what the
  changes do together beyond the sum of what each does alone in the baseline
  (no interval: it is not a difference of two arms).

So baseline + contributions + remainder = full, exactly. Writes
``waterfall.csv`` (one row per bar) and ``waterfall.png``.
"""
import numpy as np
import pandas as pd

from pipeline.aggregate import arm_rates, paired_differences
from pipeline.figures import md_table, pyplot, save

OUTCOME = "responded"
FILES = {"waterfall_table": "waterfall.csv", "waterfall_plot": "waterfall.png"}
COLUMNS = ["item", "arm", "n", "rate", "rate_lower", "rate_upper",
           "contribution", "lower", "upper", "start", "end"]


def _arms(waterfall):
    return [waterfall.baseline, *waterfall.steps, waterfall.full]


def counted_patients(patients, waterfall):
    """Rows of the waterfall's arms for the patients with status 0 in all of them."""
    arms = _arms(waterfall)
    rows = patients[patients["arm"].isin(arms)]
    ok_arms = (rows["status"] == 0).groupby(rows["patient_id"]).sum()
    return rows[rows["patient_id"].isin(ok_arms.index[ok_arms == len(arms)])]


def waterfall_table(patients, waterfall):
    """One row per bar, in plot order: the baseline, each step, the interaction
    remainder, the full arm (whose ``contribution`` is the total gap). ``start``
    and ``end`` are where each bar begins and ends on the rate axis."""
    counted = counted_patients(patients, waterfall)
    rates = arm_rates(counted, (OUTCOME,)).set_index("arm")
    paired = paired_differences(counted, waterfall.baseline, (OUTCOME,)).set_index("arm")
    baseline = rates.loc[waterfall.baseline, "rate"]

    def arm_row(item, arm, contribution, lower, upper, start, end):
        r = rates.loc[arm]
        return [item, arm, int(r["n"]), r["rate"], r["lower"], r["upper"],
                contribution, lower, upper, start, end]

    rows = [arm_row("baseline", waterfall.baseline, np.nan, np.nan, np.nan, 0.0, baseline)]
    level = baseline
    for arm in waterfall.steps:
        d = paired.loc[arm]
        rows.append(arm_row("step", arm, d["difference"], d["lower"], d["upper"],
                            level, level + d["difference"]))
        level += d["difference"]
    gap = paired.loc[waterfall.full]
    remainder = gap["difference"] - sum(paired.loc[arm, "difference"] for arm in waterfall.steps)
    rows.append(["interaction", "", rows[0][2], np.nan, np.nan, np.nan, remainder,
                 np.nan, np.nan, level, level + remainder])
    rows.append(arm_row("full", waterfall.full, gap["difference"], gap["lower"],
                        gap["upper"], 0.0, rates.loc[waterfall.full, "rate"]))
    return pd.DataFrame(rows, columns=COLUMNS)


def _plot(table, path, title):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(table) + 2.5, 4.8))
    x = np.arange(len(table))
    colour = {"baseline": "tab:blue", "full": "tab:purple", "interaction": "tab:grey"}
    for i, row in table.iterrows():
        bottom, top = 100 * row["start"], 100 * row["end"]
        shade = colour.get(row["item"], "tab:red" if top < bottom else "tab:green")
        ax.bar(i, top - bottom, bottom=bottom, color=shade, width=0.7, edgecolor="black",
               linewidth=0.5)
        if row["item"] in ("baseline", "full"):
            low, high, label = row["rate_lower"], row["rate_upper"], f"{top:.1f}%"
        else:
            low = row["start"] + row["lower"]
            high = row["start"] + row["upper"]
            label = f"{100 * row['contribution']:+.1f}"
        if np.isfinite(low):
            # clipped at 0: rounding when the interval ends at the estimate
            yerr = np.maximum([[top - 100 * low], [100 * high - top]], 0.0)
            ax.errorbar(i, top, yerr=yerr, color="black", capsize=3, linewidth=1)
        ax.annotate(label, (i, max(top, bottom)), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=8)
        if i + 1 < len(table):
            ax.plot([i + 0.35, i + 0.65], [top, top], color="black", linewidth=0.6,
                    linestyle=":")
    ax.set_xticks(x)
    ax.set_xticklabels([row["arm"] or "interaction" for _, row in table.iterrows()],
                       rotation=30, ha="right", fontsize=8)
    lowest = 100 * min(table["start"].min(), table["end"].min())
    ax.set_ylim(min(0.0, lowest - 8.0), 110)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("response %; steps: change in points")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def _rate_cell(row):
    return (f"{100 * row['rate']:.1f} [{100 * row['rate_lower']:.1f}, "
            f"{100 * row['rate_upper']:.1f}]")


def _change_cell(row):
    value = f"{100 * row['contribution']:+.1f}"
    if not np.isfinite(row["lower"]):
        return value
    return f"{value} [{100 * row['lower']:+.1f}, {100 * row['upper']:+.1f}]"


def _markdown_rows(table):
    cells = {"baseline": lambda row: ["baseline", row["arm"], _rate_cell(row), ""],
             "step": lambda row: ["step", row["arm"], _rate_cell(row), _change_cell(row)],
             "interaction": lambda row: ["interaction remainder", "", "", _change_cell(row)],
             "full": lambda row: ["full", row["arm"], _rate_cell(row), _change_cell(row)]}
    return [cells[row["item"]](row) for _, row in table.iterrows()]


def section(patients, scenario, out_dir):
    from pipeline.sections import Section
    waterfall = getattr(getattr(scenario, "report", None), "waterfall", None)
    if waterfall is None or OUTCOME not in patients.columns:
        return None
    if (not set(_arms(waterfall)) <= set(patients["arm"])
            or counted_patients(patients, waterfall).empty):
        return None
    table = waterfall_table(patients, waterfall)
    paths = {key: out_dir / name for key, name in FILES.items()}
    table.to_csv(paths["waterfall_table"], index=False)
    n = int(table.loc[0, "n"])
    _plot(table, paths["waterfall_plot"],
          f"Response gap {waterfall.baseline} -> {waterfall.full}, one change at a time "
          f"({n:,} patients)")
    text = "\n".join([
        (f"The response gap between `{waterfall.baseline}` and `{waterfall.full}`, split into "
         f"single changes: each step arm is `{waterfall.baseline}` with one change, its "
         "contribution is its response rate minus the baseline's (exact paired 95% interval), "
         "and the interaction remainder is the gap minus the sum of the contributions: what "
         "the changes do together beyond the sum of what each does alone. Baseline + "
         "contributions + remainder = full. Counted: "
         f"{n:,} patients with status 0 in all {len(_arms(waterfall))} arms."),
        "",
        md_table(["bar", "arm", "response % [Wilson 95% CI]",
                  "change vs baseline, points [paired 95% CI]"], _markdown_rows(table)),
        "",
        f"Table [{FILES['waterfall_table']}]({FILES['waterfall_table']}).",
        "",
        f"![Response waterfall]({FILES['waterfall_plot']})",
    ])
    return Section("Response waterfall", text, paths)
