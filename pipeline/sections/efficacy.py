"""Efficacy and exposure: how the initial efficacy ratio k E0 / r_T and the CAR T
exposure (AUC) relate to response across the cohort.

Writes ``efficacy_deciles.csv`` (response rate with its Wilson 95% interval per
arm within deciles of each quantity, cut at the same points for every arm) and
``efficacy_exposure.png`` (those rates against each decile's median value).
The efficacy condition k E0 > r_T says the tumour shrinks at infusion
(``kernels.models.predator_prey``); the exposure identity T(inf)/T0 =
exp(-k AUC_E) ties the tumour's fall to the AUC when the tumour does not grow.
"""
import numpy as np
import pandas as pd

from pipeline.aggregate import strata_rates, wilson_interval
from pipeline.figures import colours, md_table, pyplot, save

N_BINS = 10
MAX_TICKS = 6             # labelled x ticks per panel at most (labels like "2e10" fit)
# mantissas of the labelled log-axis ticks, finest first: the finest that gives
# at most MAX_TICKS ticks is used, then every 2nd, 3rd ... decade
TICK_MANTISSAS = ((1, 2, 3, 5), (1, 2, 5), (1, 3), (1,))
QUANTITIES = (("efficacy_ratio", "initial efficacy ratio k E0 / r_T"),
              ("cart_auc_cells_d", "CAR T AUC (cells x day)"))
FILES = {"efficacy_deciles": "efficacy_deciles.csv", "efficacy_exposure": "efficacy_exposure.png"}


def decile_rates(patients, column, n_bins=N_BINS):
    """Response per arm within quantile bins of ``column`` (patients with
    status 0 and a finite positive value), with each bin's median value."""
    ok = patients[(patients["status"] == 0) & np.isfinite(patients[column])
                  & (patients[column] > 0)]
    if ok[column].nunique() < 2:           # nothing to split (no patients, or all equal)
        return pd.DataFrame()
    rates = strata_rates(ok, column, ("responded",), n_bins)
    edges = np.unique(np.quantile(ok[column], np.linspace(0.0, 1.0, n_bins + 1)))
    bins = pd.cut(ok[column], edges, include_lowest=True).astype(str)
    medians = ok.groupby(bins)[column].median()
    rates.insert(1, "median_value", rates["stratum"].map(medians).astype(float))
    rates.insert(0, "quantity", column)
    return rates


def tick_label(value):
    """A log-axis tick label: '0.3', '2', '1500', '2e10', '5e-5'."""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def log_ticks(low, high, max_ticks=MAX_TICKS):
    """At most ``max_ticks`` tick values in [low, high] (0 < low < high) for a
    log axis: m x 10^k for the finest mantissas of TICK_MANTISSAS that fit,
    else every n-th decade; at least two ticks in a range too narrow for those
    (mantissas 1..9, then in steps of 0.5 and 0.1, else two rounded values)."""
    first, last = int(np.floor(np.log10(low))), int(np.ceil(np.log10(high)))

    def inside(mantissas):
        return [m * 10.0 ** k for k in range(first, last + 1) for m in mantissas
                if low <= m * 10.0 ** k <= high]

    for mantissas in TICK_MANTISSAS:
        ticks = inside(mantissas)
        if 2 <= len(ticks) <= max_ticks:
            return ticks
        if len(ticks) < 2:               # a narrow range: finer than 1-2-3-5
            for step in (1.0, 0.5, 0.1):
                ticks = inside(np.round(np.arange(1.0, 10.0, step), 1))
                if 2 <= len(ticks) <= max_ticks:
                    return ticks
            return [float(f"{t:.3g}") for t in np.geomspace(low, high, 4)[1:3]]
    decades = inside((1,))               # more than max_ticks decades
    return decades[::int(np.ceil(len(decades) / max_ticks))]


def _label_log_axis(ax):
    """Replace matplotlib's log-axis labels, which label minor ticks too when
    the axis spans about a decade and then overlap ('3x10^-1' over
    '4x10^-1'), by at most MAX_TICKS compact labels; minor ticks unlabelled."""
    from matplotlib.ticker import FixedLocator, NullFormatter
    low, high = ax.get_xlim()
    ax.set_xlim(low, high)               # fix the limits the data set
    ticks = log_ticks(low, high)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticks(ticks, [tick_label(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _plot(tables, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4.2), squeeze=False)
    for ax, (label, table) in zip(axes[0], tables):
        arms = list(dict.fromkeys(table["arm"]))
        colour = colours(arms)
        for arm in arms:
            t = table[table["arm"] == arm].sort_values("median_value")
            ax.errorbar(t["median_value"], 100 * t["rate"],
                        yerr=[100 * (t["rate"] - t["lower"]), 100 * (t["upper"] - t["rate"])],
                        marker="o", capsize=3, label=arm, color=colour[arm])
        ax.set_xscale("log")
        ax.set_ylim(-2, 102)
        ax.set_xlabel(f"{label} (decile median)")
        ax.set_ylabel("response % (Wilson 95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if label.startswith("initial efficacy"):
            ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        _label_log_axis(ax)
    fig.suptitle("Response by decile of efficacy ratio and of CAR T exposure")
    save(fig, path)


def _condition_rows(patients):
    """Per arm: share meeting k E0 > r_T and response with and without it."""
    ok = patients[patients["status"] == 0]
    rows = []
    for arm, g in ok.groupby("arm", sort=False):
        met = g["efficacy_ratio"] > 1.0
        cells = []
        for subset in (g[met], g[~met]):
            events, n = int(subset["responded"].sum()), len(subset)
            lo, hi = wilson_interval(events, n)
            cells.append(f"{100 * events / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n {n:,})"
                         if n else "n/a")
        rows.append([arm, f"{100 * met.mean():.1f}%",
                     f"{np.median(g['cart_auc_cells_d']):.3g}", *cells])
    return rows


def section(patients, scenario, out_dir):
    from pipeline.sections import Section
    present = [(c, label) for c, label in QUANTITIES if c in patients.columns]
    if "efficacy_ratio" not in patients.columns:
        return None
    tables = [(label, decile_rates(patients, c)) for c, label in present]
    tables = [(label, t) for label, t in tables if not t.empty]
    if not tables:
        return None
    paths = {key: out_dir / name for key, name in FILES.items()}
    pd.concat([t for _, t in tables], ignore_index=True).to_csv(paths["efficacy_deciles"],
                                                                 index=False)
    _plot(tables, paths["efficacy_exposure"])
    text = "\n".join([
        "The initial efficacy condition k E0 > r_T (the tumour shrinks at infusion; E0 is "
        "the dose in model units) and the CAR T exposure (AUC of the CAR T cells over the "
        "horizon) per patient are columns `efficacy_ratio` and `cart_auc_cells_d`. "
        "Response (% [Wilson 95% CI]) among patients who meet the condition and who do not:",
        "",
        md_table(["arm", "meet k E0 > r_T", "median CAR T AUC (cells x day)",
                  "response if met", "response if not"], _condition_rows(patients)),
        "",
        f"Response rate by decile of each quantity (cut at the same points for every arm; "
        f"table [{FILES['efficacy_deciles']}]({FILES['efficacy_deciles']})):",
        "",
        f"![Response by decile]({FILES['efficacy_exposure']})",
    ])
    return Section("Efficacy and exposure", text, paths)
