"""Antigen escape and off-tumour damage, per arm, for runs of models with antigen
subclones (``kernels.models.dual_antigen``: the columns ``escaped``,
``relapse_phenotype``, ``offtumour_damage_A`` and ``offtumour_damage_B``).

Writes
``antigen_rates.csv``      per arm: response, relapse, escape (relapsed with > 50% of
                           the tumour at the horizon unrecognised by the arm's gate)
                           and escape among the relapsed, with Wilson 95% intervals;
``antigen_phenotypes.csv`` per arm: relapses by the subclone that dominates the
                           tumour at the horizon (A+B+, A+B-, A-B+, A-B-);
``antigen_damage.csv``     per arm and normal tissue: median and 90th percentile of
                           the largest fractional loss, and the share of patients
                           above :data:`DAMAGE_THRESHOLD` (Wilson 95% interval);
``antigen_strata.csv``     response, relapse and escape per arm within quintiles of
                           the A+ fraction at infusion (when the run has it);
``antigen_escape.png``     rates with intervals, and the relapse phenotypes as stacked bars;
``antigen_damage.png``     the distribution of off-tumour damage per tissue and arm;
``antigen_by_fraction.png`` escape and response against the A-negative fraction at
                           infusion (quintile medians, log scale).

The model calls its antigens A and B (and its parameter sets ``mono_A``,
``mono_B``, ``or_gate``, ``and_gate``); the tables and plots use the scenario's
names for them (:func:`antigen_names`): a scenario names an antigen through the
arm of its mono-specific design, e.g. ``configs/gbm_egfrviii.toml``'s arm
``egfrviii_mono`` with parameter set ``mono_A`` names A "EGFRvIII" (spelled as
in the scenario's description). An antigen no arm names keeps its letter
(``configs/logic_gates.toml``'s ``mono_A`` names A "A"). The CSV files keep the
model's A/B keys (as the dataset's ``relapse_phenotype`` and
``offtumour_damage_A`` / ``_B``), ``antigen_damage.csv`` with the name in
``antigen``.
"""
import re

import numpy as np
import pandas as pd

from pipeline.aggregate import arm_rates, strata_rates, wilson_interval
from pipeline.figures import colours, md_table, pyplot, save

REQUIRED = ("escaped", "relapse_phenotype", "offtumour_damage_A", "offtumour_damage_B")
PHENOTYPES = ("A+B+", "A+B-", "A-B+", "A-B-")
TISSUES = ("A", "B")
DAMAGE_THRESHOLD = 0.2       # a loss of more than 20% of a normal tissue counts as damage
FRACTION_COLUMN = "antigen_A_fraction0"
N_STRATA = 5
LOG_SCALE_SPAN = 30.0     # a log x axis when the quintile medians span more than this factor
RATES = (("responded", "response"), ("relapsed", "relapse"), ("escaped", "escape"))
LETTERS = {"A": "A", "B": "B"}       # antigen -> its name where the scenario gives none
# words of an arm's name that describe the design, not the antigen
_DESIGN_WORDS = {"mono", "monospecific", "specific", "single", "car", "cart", "arm"}
FILES = {"antigen_rates": "antigen_rates.csv", "antigen_phenotypes": "antigen_phenotypes.csv",
         "antigen_damage": "antigen_damage.csv", "antigen_strata": "antigen_strata.csv",
         "antigen_escape": "antigen_escape.png", "antigen_damage_plot": "antigen_damage.png",
         "antigen_by_fraction": "antigen_by_fraction.png"}


def antigen_names(scenario):
    """{"A": name, "B": name}: each antigen named by the arm of the scenario's
    mono-specific design for it (binder w for that antigen only, OR logic, from
    the arm's parameter set and parameters), from the arm's name less its
    design words (``egfrviii_mono`` -> "egfrviii"), spelled as in the
    scenario's description when it appears there ("EGFRvIII"); an antigen no
    arm names (or two arms name differently), or a run without a scenario,
    keeps its letter."""
    names = dict(LETTERS)
    if scenario is None or scenario.model != "dual_antigen":
        return names
    from kernels.models.dual_antigen import GATES
    found = {}
    for arm in scenario.arms:
        gate = {**GATES.get(arm.parameter_set, {}), **dict(arm.parameters)}
        w_a, w_b, logic = (gate.get(k) for k in ("w_A", "w_B", "or_logic"))
        if logic is not None and logic != 1.0:
            continue
        antigen = "A" if (w_a, w_b) == (1.0, 0.0) else "B" if (w_a, w_b) == (0.0, 1.0) else None
        words = [w for w in re.split(r"[\W_]+", arm.name) if w and w.lower() not in _DESIGN_WORDS]
        if antigen is None or not words:
            continue
        found.setdefault(antigen, set()).add(" ".join(words))
    description = scenario.description or ""
    for antigen, candidates in found.items():
        if len(candidates) != 1:
            continue
        name = candidates.pop()
        spelled = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", description, re.IGNORECASE)
        names[antigen] = spelled.group(0) if spelled else name
    return names


def phenotype_label(phenotype, names):
    """"A+B-" in the antigens' names: "EGFRvIII+ B-" (unchanged for A/B)."""
    if names == LETTERS:
        return phenotype
    return f"{names['A']}{phenotype[1]} {names['B']}{phenotype[3]}"


def _cell(events, n):
    if n == 0:
        return "n/a"
    lo, hi = wilson_interval(events, n)
    return f"{100 * events / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def escape_rates(ok):
    """Per arm: response, relapse and escape over all patients, escape among
    the relapsed, each with its Wilson interval (rows of arm_rates' shape)."""
    rates = arm_rates(ok, [c for c, _ in RATES])
    relapsed = ok[ok["relapsed"].astype(bool)]
    among = arm_rates(relapsed, ["escaped"]).assign(outcome="escaped_among_relapsed")
    return pd.concat([rates, among], ignore_index=True)


def phenotype_counts(ok):
    """Relapses per arm (rows) and dominant subclone at the horizon (columns)."""
    relapsed = ok[ok["relapsed"].astype(bool)]
    counts = pd.crosstab(relapsed["arm"], relapsed["relapse_phenotype"])
    arms = list(dict.fromkeys(ok["arm"]))
    return counts.reindex(index=arms, columns=list(PHENOTYPES), fill_value=0)


def damage_summary(ok, names=LETTERS):
    """Per arm and tissue: median, 90th percentile and share above
    DAMAGE_THRESHOLD; ``antigen``: the tissue's antigen by name."""
    rows = []
    for arm, group in ok.groupby("arm", sort=False):
        for tissue in TISSUES:
            damage = group[f"offtumour_damage_{tissue}"].to_numpy(float)
            events, n = int(np.count_nonzero(damage > DAMAGE_THRESHOLD)), damage.size
            lo, hi = wilson_interval(events, n)
            rows.append({"arm": arm, "tissue": tissue, "antigen": names[tissue], "n": n,
                         "median": float(np.median(damage)),
                         "p90": float(np.quantile(damage, 0.9)),
                         "above_threshold": events / n, "lower": float(lo),
                         "upper": float(hi)})
    return pd.DataFrame(rows)


def fraction_strata(ok):
    """Rates per arm within quintiles of the A+ fraction at infusion, with each
    stratum's median A-negative fraction 1 - f_A."""
    rates = strata_rates(ok, FRACTION_COLUMN, [c for c, _ in RATES], N_STRATA)
    edges = np.unique(np.quantile(ok[FRACTION_COLUMN], np.linspace(0.0, 1.0, N_STRATA + 1)))
    bins = pd.cut(ok[FRACTION_COLUMN], edges, include_lowest=True).astype(str)
    negative = (1.0 - ok[FRACTION_COLUMN]).groupby(bins).median()
    rates.insert(1, "median_negative_fraction", rates["stratum"].map(negative).astype(float))
    return rates


def _error_bars(table):
    """Lower and upper error bars in percentage points (rounding at 0 and 1 clipped)."""
    return [np.clip(100 * (table["rate"] - table["lower"]), 0.0, None),
            np.clip(100 * (table["upper"] - table["rate"]), 0.0, None)]


def _plot_escape(rates, phenotypes, path, names=LETTERS):
    plt = pyplot()
    arms = list(phenotypes.index)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    outcomes = [c for c, _ in RATES] + ["escaped_among_relapsed"]
    labels = [label for _, label in RATES] + ["escape among\nrelapsed"]   # clear of "escape"
    width = 0.8 / len(arms)
    colour = colours(arms)
    for i, arm in enumerate(arms):
        t = rates[rates["arm"] == arm].set_index("outcome").reindex(outcomes)
        x = np.arange(len(outcomes)) + (i - (len(arms) - 1) / 2) * width
        left.bar(x, 100 * t["rate"], width, color=colour[arm], label=arm,
                 yerr=_error_bars(t), capsize=3)
    left.set_xticks(np.arange(len(outcomes)), labels)
    left.set_ylabel("% of patients (Wilson 95% CI)")
    left.set_ylim(0, 105)
    left.legend(fontsize=8)
    left.set_title("Response, relapse and antigen escape")
    total = rates[rates["outcome"] == "responded"].set_index("arm")["n"].reindex(arms)
    bottom = np.zeros(len(arms))
    shades = colours(PHENOTYPES)
    for phenotype in PHENOTYPES:
        share = 100 * phenotypes[phenotype].to_numpy() / total.to_numpy()
        right.bar(arms, share, 0.6, bottom=bottom, color=shades[phenotype],
                  label=phenotype_label(phenotype, names))
        bottom += share
    right.set_ylim(0, max(5.0, 1.1 * bottom.max()))
    right.set_ylabel("relapsed, % of patients")
    right.set_title("Dominant subclone at the horizon among relapses")
    right.legend(title="phenotype", fontsize=8)
    save(fig, path)


def _plot_damage(ok, path, names=LETTERS):
    plt = pyplot()
    arms = list(dict.fromkeys(ok["arm"]))
    colour = colours(arms)
    fig, axes = plt.subplots(1, len(TISSUES), figsize=(11, 4.2), sharey=True)
    for ax, tissue in zip(axes, TISSUES):
        for arm in arms:
            damage = np.sort(ok.loc[ok["arm"] == arm, f"offtumour_damage_{tissue}"].to_numpy(float))
            survival = 1.0 - np.arange(damage.size) / damage.size
            ax.step(100 * damage, 100 * survival, where="post", color=colour[arm], label=arm)
        ax.axvline(100 * DAMAGE_THRESHOLD, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(-2, 102)
        ax.set_xlabel(f"largest loss of normal tissue {names[tissue]} (% of baseline)")
        ax.set_title(f"Normal tissue expressing only {names[tissue]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of patients with at least this loss")
    axes[0].legend(fontsize=8)
    save(fig, path)


def _plot_by_fraction(strata, path, names=LETTERS):
    plt = pyplot()
    arms = list(dict.fromkeys(strata["arm"]))
    colour = colours(arms)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, outcome, label in zip(axes, ("escaped", "responded"), ("escape", "response")):
        for arm in arms:
            t = strata[(strata["arm"] == arm) & (strata["outcome"] == outcome)]
            t = t.sort_values("median_negative_fraction")
            ax.errorbar(t["median_negative_fraction"], 100 * t["rate"],
                        yerr=_error_bars(t), marker="o", capsize=3, color=colour[arm], label=arm)
        if strata["median_negative_fraction"].max() > LOG_SCALE_SPAN * strata[
                "median_negative_fraction"].min():
            ax.set_xscale("log")
        ax.set_ylim(-2, 102)
        ax.set_xlabel(f"{names['A']}-negative fraction at infusion, 1 - f_A (quintile median)")
        ax.set_title(f"{label} by {_antigen(names['A'])} heterogeneity")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of patients (Wilson 95% CI)")
    axes[0].legend(fontsize=8)
    save(fig, path)


def _antigen(name):
    """'antigen-A' for a letter, the name itself ('EGFRvIII') otherwise."""
    return f"antigen-{name}" if name in LETTERS else name


def _rate_rows(rates, arms):
    outcomes = [c for c, _ in RATES] + ["escaped_among_relapsed"]
    table = rates.set_index(["arm", "outcome"])
    rows = []
    for arm in arms:
        cells = [_cell(int(table.loc[(arm, o), "events"]), int(table.loc[(arm, o), "n"]))
                 if (arm, o) in table.index else "n/a" for o in outcomes]
        rows.append([arm, f"{int(table.loc[(arm, 'responded'), 'n']):,}", *cells])
    return rows


def _phenotype_rows(phenotypes, ok):
    median_day = ok[ok["relapsed"].astype(bool)].groupby("arm")["t_relapse_d"].median()
    rows = []
    for arm, counts in phenotypes.iterrows():
        total = int(counts.sum())
        cells = [f"{int(c):,} ({100 * c / total:.0f}%)" if total else "0" for c in counts]
        day = median_day.get(arm, np.nan)
        rows.append([arm, f"{total:,}", *cells, f"{day:.0f}" if np.isfinite(day) else "n/a"])
    return rows


def _damage_rows(damage):
    return [[r.arm, r.antigen, f"{100 * r.median:.1f}", f"{100 * r.p90:.1f}",
             f"{100 * r.above_threshold:.1f} [{100 * r.lower:.1f}, {100 * r.upper:.1f}]"]
            for r in damage.itertuples()]


def section(patients, scenario, out_dir):
    from pipeline.sections import Section
    if not all(c in patients.columns for c in REQUIRED):
        return None
    ok = patients[patients["status"] == 0]
    if ok.empty:
        return None
    arms = list(dict.fromkeys(ok["arm"]))
    paths = {key: out_dir / name for key, name in FILES.items()}
    names = antigen_names(scenario)
    rates, phenotypes, damage = escape_rates(ok), phenotype_counts(ok), damage_summary(ok, names)
    rates.to_csv(paths["antigen_rates"], index=False)
    phenotypes.rename_axis("arm").reset_index().to_csv(paths["antigen_phenotypes"], index=False)
    damage.to_csv(paths["antigen_damage"], index=False)
    _plot_escape(rates, phenotypes, paths["antigen_escape"], names)
    _plot_damage(ok, paths["antigen_damage_plot"], names)
    lines = [
        ("Escape: relapsed, and more than half of the tumour at the horizon is made of cells "
         "the arm's gate does not recognise (column `escaped`). Rates in % [Wilson 95% CI] "
         "over all patients (status ok); the last column over the relapsed only:"),
        "",
        md_table(["arm", "n", "response", "relapse", "escape", "escape among relapsed"],
                 _rate_rows(rates, arms)),
        "",
        ("Antigen phenotype at relapse: the subclone that dominates the tumour at the "
         "horizon, among relapsed patients (count and share of the arm's relapses), and "
         "the median day of relapse:"),
        "",
        md_table(["arm", "relapses", *(phenotype_label(p, names) for p in PHENOTYPES),
                  "median relapse day"],
                 _phenotype_rows(phenotypes, ok)),
        "",
        f"![Escape and relapse phenotypes]({FILES['antigen_escape']})",
        "",
        ("Off-tumour damage: the largest fractional loss of the normal tissue expressing "
         f"only {names['A']} or only {names['B']} (%), and the share of patients losing "
         f"more than {100 * DAMAGE_THRESHOLD:.0f}% of it:"),
        "",
        md_table(["arm", "tissue", "median", "90th percentile",
                  f"> {100 * DAMAGE_THRESHOLD:.0f}% loss"], _damage_rows(damage)),
        "",
        f"![Off-tumour damage]({FILES['antigen_damage_plot']})",
    ]
    written = [key for key in ("antigen_rates", "antigen_phenotypes", "antigen_damage",
                               "antigen_escape", "antigen_damage_plot")]
    if FRACTION_COLUMN in ok.columns:
        strata = fraction_strata(ok)
        strata.to_csv(paths["antigen_strata"], index=False)
        _plot_by_fraction(strata, paths["antigen_by_fraction"], names)
        written += ["antigen_strata", "antigen_by_fraction"]
        lines += ["", (f"Escape and response by the {names['A']}-negative fraction of the "
                       f"tumour at infusion (quintiles of f_A, cut at the same points for every "
                       f"arm; table [{FILES['antigen_strata']}]({FILES['antigen_strata']})):"), "",
                  f"![Escape by antigen heterogeneity]({FILES['antigen_by_fraction']})"]
    tables = (f"Tables: [{FILES['antigen_rates']}]({FILES['antigen_rates']}), "
              f"[{FILES['antigen_phenotypes']}]({FILES['antigen_phenotypes']}), "
              f"[{FILES['antigen_damage']}]({FILES['antigen_damage']}).")
    lines += ["", tables]
    return Section("Antigen escape and off-tumour damage", "\n".join(lines),
                   {key: paths[key] for key in written})
