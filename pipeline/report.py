"""A run's report: tables (CSV), a Markdown summary and PNG plots.

``build_report(run_dir)`` reads the run's patients dataset, manifest and
``config.toml`` (see :mod:`pipeline.query`) and writes into ``RUN/report/``:

``summary.csv``
    per arm and outcome (:func:`report_outcomes`: the scenario's lead response,
    ``responded`` or ``no_detectable_disease``, then the other one, severe_crs,
    relapsed): n (status ok), events, rate and the Wilson 95% interval
    (:func:`pipeline.aggregate.arm_rates`);
``paired.csv``
    every arm minus the reference arm (the manifest's ``reference_arm``, the first
    arm of the config) on the same patients, with the exact conditional 95%
    interval (:func:`pipeline.aggregate.paired_differences`);
``strata.csv``
    the same rates within tertiles of the baseline tumour burden before any
    debulking, ``tumour_burden_cells`` (:func:`pipeline.aggregate.strata_rates`),
    so a patient is in the same stratum in every arm;
``report.md``
    first "Does the policy beat the reference?": per arm the lead response and
    severe CRS rates, their paired differences from the reference and a verdict
    in words (:mod:`pipeline.verdict`); then the scenario (with both response
    definitions), the per-arm rates, the paired differences, the adaptive
    predictor's error against the full model (when an arm has predictions),
    doses, strata, status counts per arm and links to the plots;
``rates.png``, ``adaptive_doses.png``, ``il6_vs_dose.png``, ``trajectories.png``
    both response rates and the severe CRS rate with their intervals; the dose
    distribution of the adaptive and oracle arms (every arm's when there are
    none); peak IL-6 against dose (at most 20,000 points); sample trajectories
    of tumour and IL-6 per arm (only when the run has a trajectories dataset;
    the report says so otherwise);
sections that apply to the run (:mod:`pipeline.sections`)
    with their own tables and plots, e.g. response by decile of the efficacy
    ratio and of the CAR T AUC (``efficacy_deciles.csv``, ``efficacy_exposure.png``).

Tables, plots and the verdict lead with the scenario's ``[outcomes]
lead_response`` and label each response definition by its rule
(:func:`outcome_labels`); the other definition is shown as "secondary".

:func:`console_summary` is what ``cartcohort run`` and ``cartcohort report``
print: the verdict lines, then :func:`format_arm_table`'s plain-text per-arm
table (rates with intervals, then the paired differences); :func:`arm_tables`
computes that table's inputs from a run.

Only patients whose integration succeeded (status 0) count in rates and
differences (see :mod:`pipeline.aggregate`); the status table shows the others.
"""
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.aggregate import CONFIDENCE, arm_rates, paired_differences, strata_rates
from pipeline.config import Outcomes
from pipeline.figures import DPI, colours, md_table, pyplot
from pipeline.outcomes import RESPONSES, response_label, response_rule
from pipeline.sections import write_sections
from pipeline.tables import percent, text_table
from pipeline.query import has_trajectories, open_patients, open_trajectories, read_manifest
from pipeline.verdict import SEVERE, question, verdict_lines

OTHER_OUTCOMES = (SEVERE, "relapsed")          # counted after the response definitions
LABELS = {SEVERE: "severe CRS", "relapsed": "relapse"}
RESPONSE_COLOURS = ("tab:blue", "lightskyblue")    # rates plot: lead, other definition
STRATUM_COLUMN = "tumour_burden_cells"
N_STRATA = 3
MAX_SCATTER_POINTS = 20_000
MAX_TRAJECTORIES_PER_ARM = 20
REPORT_DIR = "report"
FILES = {"summary": "summary.csv", "paired": "paired.csv", "strata": "strata.csv",
         "report": "report.md", "rates": "rates.png", "adaptive_doses": "adaptive_doses.png",
         "il6_vs_dose": "il6_vs_dose.png", "trajectories": "trajectories.png"}


# -- tables -------------------------------------------------------------------

def _reference(manifest, arms):
    reference = manifest.get("reference_arm")
    if reference in arms:
        return reference
    return arms[0] if arms else None


def lead_response(scenario):
    """The response column the report leads with: the scenario's
    ``lead_response``, or the default when the run's config cannot be read."""
    return scenario.outcomes.lead_response if scenario is not None else Outcomes.lead_response


def report_outcomes(scenario, columns):
    """The outcomes the report counts, in order: the lead response, the other
    response definition (when the dataset's ``columns`` have it: runs written
    before it lack ``no_detectable_disease``), severe CRS and relapse."""
    lead = lead_response(scenario)
    return (lead, *(r for r in RESPONSES if r != lead and r in columns), *OTHER_OUTCOMES)


def outcome_labels(scenario):
    """{outcome: label}: each response definition in words from the scenario's
    rules (:func:`pipeline.outcomes.response_label`), the one the report does
    not lead with marked "secondary"."""
    rules = scenario.outcomes if scenario is not None else None
    lead = lead_response(scenario)
    return {**{r: ("" if r == lead else "secondary ") + response_label(r, rules)
               for r in RESPONSES}, **LABELS}


def arm_tables(run_dir):
    """``(summary, paired)`` for a run: :func:`~pipeline.aggregate.arm_rates` and
    :func:`~pipeline.aggregate.paired_differences` against the reference arm
    for :func:`report_outcomes`, the inputs of :func:`format_arm_table`."""
    patients = open_patients(run_dir)
    outcomes = report_outcomes(_load_config(Path(run_dir)), patients.columns)
    arms = list(patients["arm"].unique())
    reference = _reference(read_manifest(run_dir), arms)
    return (arm_rates(patients, outcomes),
            paired_differences(patients, reference, outcomes))


def read_arm_tables(report_dir):
    """``(summary, paired)`` read back from a report's ``summary.csv`` and ``paired.csv``."""
    report_dir = Path(report_dir)
    text = {"arm": str, "reference": str, "outcome": str}
    return (pd.read_csv(report_dir / FILES["summary"], dtype=text),
            pd.read_csv(report_dir / FILES["paired"], dtype=text))


def _interval_label(label):
    """A stratum label such as "(489348424.714, 6145911450.147]" with its
    numbers to 3 significant digits."""
    return re.sub(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", lambda m: f"{float(m[0]):.3g}",
                  str(label))


def _rate_cell(row, digits=1):
    return (f"{percent(row.rate, digits)}% "
            f"[{percent(row.lower, digits)}, {percent(row.upper, digits)}]")


def _difference_cell(row, digits=2):
    return (f"{percent(row.difference, digits, True)} "
            f"[{percent(row.lower, digits, True)}, {percent(row.upper, digits, True)}]")


def _ordered(frame, column):
    return list(dict.fromkeys(frame[column])) if len(frame) else []


def _arm_rows(table, cell):
    """One row per arm: arm, n, then ``cell(row)`` per outcome ("n/a" if absent)."""
    outcomes = _ordered(table, "outcome")
    rows = []
    for arm in _ordered(table, "arm"):
        group = table[table["arm"] == arm].set_index("outcome")
        cells = [cell(_Row(group.loc[o])) if o in group.index else "n/a" for o in outcomes]
        rows.append([arm, int(group["n"].iloc[0]), *cells])
    return outcomes, rows


def _rate_rows(summary):
    return _arm_rows(summary, _rate_cell)


def _difference_rows(paired):
    return _arm_rows(paired, _difference_cell)


class _Row:
    """Attribute access to a Series' float fields."""

    def __init__(self, series):
        self._s = series

    def __getattr__(self, name):
        return float(self._s[name])


def format_arm_table(summary, paired=None, confidence=CONFIDENCE, labels=None):
    """The per-arm table as plain text: each arm's n (status ok) and its rates
    with Wilson intervals, then each arm's paired difference from the reference
    arm with the exact conditional interval, in percentage points.

    ``summary``: :func:`~pipeline.aggregate.arm_rates`' frame; ``paired``:
    :func:`~pipeline.aggregate.paired_differences`' frame (or None); ``labels``:
    {outcome: column header}, default :func:`outcome_labels` without a scenario."""
    labels = outcome_labels(None) if labels is None else labels
    level = f"{100 * confidence:g}%"
    if len(summary) == 0:
        return "no patient with status ok: no rates"
    outcomes, rows = _rate_rows(summary)
    lines = [f"rates per arm, % [Wilson {level} interval], patients with status ok:",
             text_table(["arm", "n", *(labels.get(o, o) for o in outcomes)], rows)]
    if paired is not None and len(paired):
        reference = paired["reference"].iloc[0]
        outcomes, rows = _difference_rows(paired)
        lines += ["", f"paired differences vs {reference}, percentage points "
                      f"[exact {level} interval], patients ok in both arms:",
                  text_table(["arm", "n", *(labels.get(o, o) for o in outcomes)], rows)]
    elif paired is not None:
        lines += ["", "paired differences: no other arm to compare"]
    return "\n".join(lines)


NONE_OK = ("Cannot say: no patient-arm integrated successfully (status ok), so there is no "
           "rate and no paired difference.")


def _verdict_block(paired, lead, labels, bullet, none_ok=False):
    """The question and one verdict line per arm (:mod:`pipeline.verdict`),
    each line after ``bullet``; ``none_ok``: no patient-arm succeeded."""
    if none_ok:
        return ["Does the policy beat the reference? " + NONE_OK]
    if len(paired) == 0:
        return ["Does the policy beat the reference? No paired differences (a single arm, "
                "or no patient ok in both the arm and the reference)."]
    return [question(paired["reference"].iloc[0], labels[lead]),
            *(bullet + line for line in verdict_lines(paired, lead))]


def console_summary(run_dir):
    """What ``cartcohort run`` and ``cartcohort report`` print: the verdict
    lines, then :func:`format_arm_table`, from the report's ``summary.csv`` and
    ``paired.csv`` and labelled from the run's config."""
    run = Path(run_dir)
    scenario = _load_config(run)
    summary, paired = read_arm_tables(run / REPORT_DIR)
    labels = outcome_labels(scenario)
    none_ok = len(summary) == 0 or not (summary["n"] > 0).any()
    lines = _verdict_block(paired, lead_response(scenario), labels, "  ", none_ok)
    note = failure_note(open_patients(run, columns=["status"]))
    if note:
        lines += ["", note.replace("**", "")]
    if none_ok:
        return "\n".join(lines + [f"(see the Status table in {run / REPORT_DIR / FILES['report']})"])
    return "\n".join([*lines, "", format_arm_table(summary, paired, labels=labels)])


# -- scenario and run facts ---------------------------------------------------

def _load_config(run):
    """The run's scenario from ``RUN/config.toml``, or None when it is missing
    or does not validate (the report then infers what it can from the data)."""
    from pipeline.config import ConfigError, scenario_from_text

    path = run / "config.toml"
    try:
        return scenario_from_text(path.read_text(encoding="utf-8"), source="config.toml")
    except (OSError, UnicodeDecodeError, ConfigError, KeyError):
        return None


def _policies(scenario, patients):
    """arm -> policy: from the config, else 'adaptive' where the predictor's
    peak IL-6 is present and 'unknown' elsewhere."""
    if scenario is not None:
        policies = {arm.name: arm.policy for arm in scenario.arms}
    else:
        policies = {}
    for arm, group in patients.groupby("arm", sort=False):
        if arm not in policies:
            predicted = group.get("il6_peak_predicted_pg_ml")
            has = predicted is not None and np.isfinite(predicted.to_numpy(float)).any()
            policies[arm] = "adaptive" if has else "unknown"
    return policies


def predictor_error(patients):
    """Per arm with adaptive predictions: the error of the closed-form peak IL-6
    against the full model, r = |ln(predicted / simulated)| over patients with
    status ok and both values positive: n, median r, 90th percentile of r, the
    fraction predicted within a factor 2 (r <= ln 2), and ``not_positive``: the
    patients with status ok whose prediction is not a positive finite number
    (counted, never silently dropped; the superseded ``cart`` model's
    predictor can go negative for small tumours)."""
    rows = []
    columns = ["arm", "n", "median_abs_log_ratio", "p90_abs_log_ratio", "within_2x",
               "not_positive"]
    if "il6_peak_predicted_pg_ml" not in patients:
        return pd.DataFrame(rows, columns=columns)
    for arm, group in patients.groupby("arm", sort=False):
        predicted = group["il6_peak_predicted_pg_ml"].to_numpy(float)
        if not np.isfinite(predicted).any():
            continue
        simulated = group["il6_peak_pg_ml"].to_numpy(float)
        ok = group["status"].to_numpy() == 0
        usable = np.isfinite(predicted) & (predicted > 0)
        keep = ok & usable & np.isfinite(simulated) & (simulated > 0)
        r = np.abs(np.log(predicted[keep] / simulated[keep]))
        n = int(r.size)
        rows.append({"arm": arm, "n": n,
                     "median_abs_log_ratio": float(np.median(r)) if n else np.nan,
                     "p90_abs_log_ratio": float(np.percentile(r, 90)) if n else np.nan,
                     "within_2x": float(np.mean(r <= math.log(2.0))) if n else np.nan,
                     "not_positive": int(np.count_nonzero(ok & ~usable))})
    return pd.DataFrame(rows, columns=columns)


def _status_names():
    try:
        from kernels.status import NAMES
    except ImportError:
        return {}
    return dict(NAMES)


def _model(name):
    try:
        from kernels.models import get_model
        return get_model(name)
    except (ImportError, KeyError):
        return None


# -- plots --------------------------------------------------------------------

def plot_rates(summary, path, title, labels):
    """The response rates (lead definition, then the other) and the severe CRS
    rate per arm, with their Wilson intervals; ``labels``: {outcome: label}."""
    plt = pyplot()
    arms = _ordered(summary, "arm")
    shown = [o for o in _ordered(summary, "outcome") if o in (*RESPONSES, SEVERE)]
    responses = [o for o in shown if o in RESPONSES]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(arms) + 2.5), 5.2))
    width = 0.8 / max(1, len(shown))
    colours = {**dict(zip(responses, RESPONSE_COLOURS)), SEVERE: "tab:red"}
    top = 0.0
    for k, outcome in enumerate(shown):
        rows = summary[summary["outcome"] == outcome].set_index("arm").reindex(arms)
        x = np.arange(len(arms)) + (k - (len(shown) - 1) / 2) * width
        rate, lower, upper = (100 * rows[c].to_numpy(float) for c in ("rate", "lower", "upper"))
        ax.bar(x, rate, width * 0.9, color=colours.get(outcome), alpha=0.35,
               edgecolor=colours.get(outcome))
        ax.errorbar(x, rate, yerr=[rate - lower, upper - rate], fmt="o", capsize=5,
                    color=colours.get(outcome), label=f"{labels[outcome]} (Wilson 95% CI)")
        for xi, r, u in zip(x, rate, upper):
            if np.isfinite(r):
                ax.annotate(f"{r:.1f}%", (xi, u), textcoords="offset points", xytext=(0, 4),
                            ha="center", fontsize=9)
        top = max(top, np.nanmax(upper) if np.isfinite(upper).any() else 0.0)
    ax.set_xticks(np.arange(len(arms)), arms)
    ax.set_ylabel("patients (%)")
    ax.set_ylim(0, min(108.0, top * 1.15 + 3.0) if top > 0 else 1.0)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=1, fontsize=9,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_doses(patients, policies, scenario, path):
    """Histogram of log10 dose for the adaptive and oracle arms, with each fixed
    arm's dose as a dashed line; every arm's histogram when none is adaptive."""
    plt = pyplot()
    arms = list(dict.fromkeys(patients["arm"]))
    colour = colours(arms)
    chosen = [a for a in arms if policies.get(a) in ("adaptive", "oracle")]
    others = [a for a in arms if a not in chosen]
    histogram = chosen or arms
    logdose = {}
    for arm in arms:
        dose = patients.loc[patients["arm"] == arm, "dose_cells"].to_numpy(float)
        logdose[arm] = np.log10(dose[np.isfinite(dose) & (dose > 0)])
    values = np.concatenate([logdose[a] for a in histogram] or [np.array([])])
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if values.size:
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        bins = np.linspace(low, high, 41)
        for arm in histogram:
            d = logdose[arm]
            if d.size == 0:
                continue
            label = (f"{arm} ({policies.get(arm, '?')}): median {10 ** np.median(d):.3g} "
                     f"cells, n={d.size}")
            ax.hist(d, bins=bins, color=colour[arm], alpha=0.35, label=label)
            ax.hist(d, bins=bins, color=colour[arm], histtype="step", linewidth=1.4)
        if chosen:
            for arm in others:
                d = logdose[arm]
                if d.size and np.ptp(d) < 1e-9:
                    ax.axvline(d[0], color=colour[arm], linestyle="--", linewidth=1.4,
                               label=f"{arm} ({policies.get(arm, '?')}): {10 ** d[0]:.3g} cells")
        if scenario is not None:
            bounds = {(a.min_dose_cells, a.max_dose_cells) for a in scenario.arms
                      if a.name in chosen and a.min_dose_cells is not None}
            for k, (lo, hi) in enumerate(sorted(bounds)):
                for edge in (lo, hi):
                    ax.axvline(math.log10(edge), color="grey", linestyle=":", linewidth=1.0,
                               label="dose range (config)" if k == 0 and edge == lo else None)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.4)          # room for the legend
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no positive dose", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("log10 dose (CAR T cells)")
    ax.set_ylabel("patients")
    what = "adaptive and oracle arms" if chosen else "all arms (no adaptive or oracle arm)"
    ax.set_title(f"Dose distribution: {what}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_il6_vs_dose(patients, scenario, path, max_points=MAX_SCATTER_POINTS, seed=0):
    """Peak IL-6 against dose, log-log, one colour per arm, patients with status
    ok; at most ``max_points`` points, split evenly between the arms."""
    plt = pyplot()
    arms = list(dict.fromkeys(patients["arm"]))
    colour = colours(arms)
    dose = patients["dose_cells"].to_numpy(float)
    il6 = patients["il6_peak_pg_ml"].to_numpy(float)
    ok = ((patients["status"].to_numpy() == 0) & np.isfinite(dose) & np.isfinite(il6)
          & (dose > 0) & (il6 > 0))
    rng = np.random.default_rng(seed)
    per_arm = max(1, max_points // max(1, len(arms)))
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    shown = total = 0
    for arm in arms:
        index = np.flatnonzero(ok & (patients["arm"].to_numpy() == arm))
        total += index.size
        if index.size > per_arm:
            index = np.sort(rng.choice(index, per_arm, replace=False))
        shown += index.size
        if index.size:
            ax.scatter(dose[index], il6[index], s=5, alpha=0.35, color=colour[arm],
                       edgecolors="none", label=f"{arm} ({index.size} shown)", rasterized=True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if scenario is not None:
        thresholds = scenario.outcomes.crs_il6_thresholds_pg_ml
        severe = scenario.outcomes.severe_crs_grade
        for grade, level in enumerate(thresholds, start=1):
            ax.axhline(level, color="black" if grade == severe else "grey",
                       linestyle="--" if grade == severe else ":", linewidth=1.0)
            ax.annotate(f"CRS grade {grade}" + (" (severe)" if grade == severe else ""),
                        (1.0, level), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=8, color="black" if grade == severe else "grey")
    ax.set_xlabel("dose (CAR T cells)")
    ax.set_ylabel("peak IL-6 (pg/mL)")
    ax.set_title(f"Peak IL-6 vs dose ({shown:,} of {total:,} patients with status ok)")
    ax.grid(alpha=0.3, which="major")
    if shown:
        ax.legend(fontsize=8, markerscale=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


TUMOUR_FLOOR_CELLS = 1.0        # trajectory plots: nothing drawn below one tumour cell
IL6_FLOOR_PG_ML = 0.1            # ... nor below 0.1 pg/mL of IL-6 (under any assay's limit)
CART_FLOOR_CELLS = 1e3           # ... nor below 1e3 CAR T cells (whole body; far under a qPCR's limit)


def _trajectory_quantities(model, columns):
    """[(label, states summed, scale, axis floor)] for the tumour, CAR T and IL-6
    panels (those whose states the trajectories hold)."""
    if model is not None:
        roles = model.roles
        units = {s.name: s.unit for s in model.states}
        out = []
        if "tumour" in roles and all(s in columns for s in roles["tumour"]):
            out.append(("tumour (cells)", roles["tumour"], model.cells_per_unit,
                        TUMOUR_FLOOR_CELLS))
        if "car_t" in roles and all(s in columns for s in roles["car_t"]):
            out.append(("CAR T (cells)", roles["car_t"], model.cells_per_unit,
                        CART_FLOOR_CELLS))
        if "il6" in roles and all(s in columns for s in roles["il6"]):
            unit = units.get(roles["il6"][0], "pg/mL")
            out.append((f"IL-6 ({unit})", roles["il6"], 1.0, IL6_FLOOR_PG_ML))
        if out:
            return out
    fallback = []
    if "T" in columns:
        fallback.append(("tumour T (cells)", ("T",), 1e9, TUMOUR_FLOOR_CELLS))
    if "I" in columns:
        fallback.append(("IL-6 I (pg/mL)", ("I",), 1.0, IL6_FLOOR_PG_ML))
    return fallback


def intervention_times(patients, scenario):
    """{(arm, patient_id): [(intervention, day)]} from the ``t_<name>_d`` column
    of each of the scenario's interventions (NaN: not given)."""
    names = [] if scenario is None else list(dict.fromkeys(
        i.name for arm in scenario.arms for i in arm.interventions))
    events = {}
    for name in names:
        column = f"t_{name}_d"
        if column not in patients:
            continue
        given = patients[np.isfinite(patients[column].to_numpy(float))]
        for arm, pid, day in zip(given["arm"], given["patient_id"], given[column]):
            events.setdefault((arm, pid), []).append((name, float(day)))
    return events


def plot_trajectories(trajectories, model, arms, path,
                      per_arm=MAX_TRAJECTORIES_PER_ARM, events=None):
    """Tumour, CAR T and IL-6 against time for up to ``per_arm`` sampled patients
    per arm (the same patients in every arm where possible, one colour each).
    ``events``: {(arm, patient_id): [(name, day)]}, the interventions that fired,
    marked on every panel in the patient's colour (x)."""
    plt = pyplot()
    from matplotlib import colormaps

    quantities = _trajectory_quantities(model, trajectories.columns)
    if not quantities:
        raise ValueError("trajectories have neither tumour nor IL-6 columns")
    arms = [a for a in arms if (trajectories["arm"] == a).any()]
    ids = list(dict.fromkeys(trajectories["patient_id"]))[:per_arm]
    cmap = colormaps["tab20"]
    colour = {pid: cmap(i % 20) for i, pid in enumerate(ids)}
    fig, axes = plt.subplots(len(quantities), len(arms), squeeze=False, sharex=True,
                             sharey="row", figsize=(3.6 * len(arms) + 1.0,
                                                    2.9 * len(quantities) + 0.8))
    horizon = float(trajectories["t_d"].max())
    for j, arm in enumerate(arms):
        data = trajectories[trajectories["arm"] == arm]
        chosen = [p for p in ids if p in set(data["patient_id"])]
        if not chosen:
            chosen = list(dict.fromkeys(data["patient_id"]))[:per_arm]
        for pid in chosen:
            one = data[data["patient_id"] == pid].sort_values("t_d")
            t = one["t_d"].to_numpy(float)
            fired = (events or {}).get((arm, pid), [])
            for i, (_, states, scale, floor) in enumerate(quantities):
                y = one[list(states)].to_numpy(float).sum(axis=1) * scale
                axes[i, j].plot(t, np.where(y >= floor, y, np.nan),
                                color=colour.get(pid, "grey"), linewidth=1.0, alpha=0.8)
                for _, day in fired:
                    at = np.interp(day, t, y) if t.size else np.nan
                    if np.isfinite(at) and at >= floor:
                        axes[i, j].plot([day], [at], marker="x", markersize=6, color=colour.get(
                            pid, "grey"), linestyle="none")
        axes[0, j].set_title(f"{arm} ({len(chosen)} patient{'s' if len(chosen) != 1 else ''})")
        for i, (label, _, _, _) in enumerate(quantities):
            ax = axes[i, j]
            ax.set_yscale("log")
            ax.set_xscale("symlog", linthresh=min(30.0, horizon) if horizon > 0 else 1.0,
                          linscale=1.5)
            ticks = [d for d in (0, 7, 14, 21, 28, 60, 180, 365, 730) if d <= horizon]
            ax.set_xticks(ticks, [str(d) for d in ticks])
            ax.set_xticks([], minor=True)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(label)
            if i == len(quantities) - 1:
                ax.set_xlabel("days after infusion")
    names = sorted({name for fired in (events or {}).values() for name, _ in fired})
    marks = f"; x: {', '.join(names)} given" if names else ""
    fig.suptitle("Sample trajectories\n(time linear to day 30, logarithmic after; not drawn "
                 f"below {TUMOUR_FLOOR_CELLS:g} tumour cell, {CART_FLOOR_CELLS:g} CAR T "
                 f"cells, {IL6_FLOOR_PG_ML:g} pg/mL IL-6{marks})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# -- Markdown -----------------------------------------------------------------

def _md_rates(summary, policies, outcomes, labels):
    rows = []
    for arm in _ordered(summary, "arm"):
        group = summary[summary["arm"] == arm].set_index("outcome")
        cells = []
        for o in outcomes:
            if o in group.index:
                row = group.loc[o]
                cells.append(f"{_rate_cell(_Row(row))} ({int(row['events'])}/{int(row['n'])})")
            else:
                cells.append("n/a")
        rows.append([arm, policies.get(arm, "?"), int(group["n"].iloc[0]), *cells])
    return md_table(["arm", "policy", "n ok", *(f"{labels.get(o, o)} % [95% CI] (events/n)"
                                                 for o in outcomes)], rows)


def _md_paired(paired, outcomes, labels):
    rows = []
    for row in paired.itertuples(index=False):
        if row.outcome not in outcomes:
            continue
        rows.append([row.arm, labels.get(row.outcome, row.outcome), row.n, row.arm_only,
                     row.reference_only, _difference_cell(row)])
    return md_table(["arm", "outcome", "n (ok in both)", "arm only", "reference only",
                      "difference, points [exact 95% CI]"], rows)


def _md_question(summary, paired, policies, reference, lead, labels):
    """The report's first section: per arm the lead response and severe CRS
    rates, their paired differences from the reference, and the verdicts."""
    headline = (lead, SEVERE)
    _, rates = _rate_rows(summary[summary["outcome"].isin(headline)])
    _, differences = _difference_rows(paired[paired["outcome"].isin(headline)])
    against = {arm: cells for arm, _, *cells in differences}      # every arm but the reference
    rows = [[arm, policies.get(arm, "?"), n, *cells,
             *against.get(arm, ["reference"] * len(headline))] for arm, n, *cells in rates]
    versus = f"vs `{reference}`, points [exact 95% CI]"
    table = md_table(["arm", "policy", "n ok", f"{labels[lead]} % [95% CI]",
                      f"{labels[SEVERE]} % [95% CI]", f"response {versus}",
                      f"severe CRS {versus}"], rows)
    return "\n".join([
        f"Reference: `{reference}`, the first arm of the config. Rates: patients with status "
        "ok, Wilson 95% intervals. Differences: each arm minus the reference on the same "
        "virtual patients (ok in both arms), exact paired 95% intervals.", "",
        table, "", *_verdict_block(paired, lead, labels, "- ")])


def _quantiles(values):
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ("n/a",) * 3
    return tuple(f"{v:.3g}" for v in np.percentile(values, [50, 10, 90]))


def _markdown(facts, summary, paired, strata, predictor, patients, policies, scenario,
              written, trajectories_note, sections):
    outcomes = report_outcomes(scenario, patients.columns)
    lead, labels = outcomes[0], outcome_labels(scenario)
    none_ok = not (patients["status"] == 0).any()
    lines = [f"# cartcohort report: {facts['scenario']}", "",
             "## Does the policy beat the reference?", ""]
    if none_ok:
        lines += [NONE_OK, ""]
    else:
        lines += [_md_question(summary, paired, policies, facts["reference"], lead, labels), ""]
    note = failure_note(patients)
    if note:
        lines += [note, ""]
    lines += _md_scenario(facts, scenario, outcomes, lead, labels)
    if none_ok:
        lines += ["## Not computed", "", "Rates, paired differences, strata, doses, the "
                  "scenario's sections and the plots: every one needs patients with status ok.",
                  ""]
    else:
        lines += _md_body(facts, summary, paired, strata, predictor, patients, policies,
                          outcomes, labels, sections)
    lines += _md_status(patients, facts["arms"])
    if not none_ok:
        lines += _md_plots(written, trajectories_note)
    return "\n".join(lines)


def failure_note(patients):
    """One sentence when some patient-arms failed integration (how many, by
    status), else None."""
    status = patients["status"].to_numpy()
    failed = int(np.count_nonzero(status != 0))
    if failed == 0:
        return None
    names = _status_names()
    counts = pd.Series(status[status != 0]).value_counts().sort_index()
    detail = ", ".join(f"{int(n):,} {names.get(int(code), f'status {int(code)}')}"
                       for code, n in counts.items())
    return (f"**{failed:,} of {len(status):,} patient-arms failed integration** ({detail}) and "
            f"are left out of every rate and difference; see Status. A failure in many "
            f"patients points at the solver settings (scenario.rtol, scenario.atol, "
            f"scenario.max_steps) or at the cohort's parameters.")


def _md_scenario(facts, scenario, outcomes, lead, labels):
    name = facts["scenario"]
    lines = ["## Scenario", ""]
    if scenario is not None and scenario.description:
        lines += [scenario.description, ""]
    info = [("scenario", name), ("model", facts.get("model", "?"))]
    for key in ("seed", "version", "config_sha256"):
        if facts.get(key) is not None:
            info.append((key.replace("_", " "), f"`{facts[key]}`" if key == "config_sha256"
                         else facts[key]))
    info.append(("patients", f"{facts['patients']:,} virtual patients x {facts['n_arms']} "
                              f"arm(s) = {facts['rows']:,} rows"))
    if facts.get("shards"):
        info.append(("shards", facts["shards"]))
    if scenario is not None:
        info.append(("horizon", f"{scenario.horizon_days:g} days"))
        o = scenario.outcomes
        info += [(labels[r], response_rule(r, o) + ("; the report leads with it" if r == lead
                                                     else ""))
                 for r in outcomes if r in RESPONSES]
        info.append(("relapse", f"tumour back above {o.relapse_fraction:g} x baseline "
                                f"after its minimum"))
        info.append(("severe CRS", f"grade >= {o.severe_crs_grade}, grade = number of peak "
                                   f"IL-6 thresholds reached "
                                   f"({', '.join(f'{v:g}' for v in o.crs_il6_thresholds_pg_ml)}"
                                   f" pg/mL)"))
        for arm in scenario.arms:
            info.append((f"arm `{arm.name}`", arm.describe()))
    info.append(("reference arm", facts["reference"]))
    return lines + [md_table(["", ""], info), ""]


def _md_body(facts, summary, paired, strata, predictor, patients, policies, outcomes, labels,
             sections):
    outcomes_md = (outcomes[0], SEVERE)
    lines = ["## Rates per arm", "",
              "Patients whose integration succeeded (status 0); Wilson 95% intervals.", "",
              _md_rates(summary, policies, outcomes, labels), ""]

    lines += ["## Paired differences", ""]
    if len(paired):
        lines += [f"Each arm minus `{facts['reference']}` on the same virtual patients "
                  "(ok in both arms); exact conditional 95% intervals (McNemar-type, from "
                  "the discordant pairs). \"arm only\": event in the arm and not in the "
                  "reference; \"reference only\": the reverse.", "",
                  _md_paired(paired, outcomes, labels), ""]
    else:
        lines += ["No paired difference (a single arm, or no patient ok in both an arm and "
                  "the reference).", ""]

    if len(predictor):                 # only where an arm has closed-form predictions
        lines += ["## Adaptive predictor", ""]

        def ratio(r):
            return f"{r:.3f} (x{math.exp(r):.2f})" if math.isfinite(r) else "n/a"

        rows = [[r.arm, r.n, ratio(r.median_abs_log_ratio), ratio(r.p90_abs_log_ratio),
                 f"{percent(r.within_2x)}%", r.not_positive]
                for r in predictor.itertuples(index=False)]
        lines += ["Closed-form peak IL-6 prediction against the full model, "
                  "r = |ln(predicted / simulated peak IL-6)|, patients with status ok "
                  "(in brackets: the same as a factor); \"not positive\": patients "
                  "whose prediction is not a positive finite number, left out of r.", "",
                  md_table(["arm", "n", "median r", "90th percentile r",
                             "within 2x", "not positive"], rows), ""]

    lines += ["## Doses", "", "CAR T cells per patient (all patients).", ""]
    rows = []
    for arm in facts["arms"]:
        dose = patients.loc[patients["arm"] == arm, "dose_cells"].to_numpy(float)
        rows.append([arm, policies.get(arm, "?"), *_quantiles(dose)])
    lines += [md_table(["arm", "policy", "median", "10th percentile", "90th percentile"],
                        rows), ""]

    lines += ["## Strata", ""]
    if len(strata):
        lines += [f"Rates within tertiles of `{STRATUM_COLUMN}` (baseline tumour burden, cells), "
                  "cut at the same points for every arm; full table in "
                  f"[{FILES['strata']}]({FILES['strata']}).", ""]
        rows = []
        for (stratum, arm), group in strata.groupby(["stratum", "arm"], sort=False):
            g = group.set_index("outcome")
            rows.append([_interval_label(stratum), arm, int(g["n"].iloc[0]),
                         *(_rate_cell(_Row(g.loc[o])) if o in g.index else "n/a"
                           for o in outcomes_md)])
        lines += [md_table(["stratum (cells)", "arm", "n ok",
                             *(f"{labels[o]} % [95% CI]" for o in outcomes_md)], rows), ""]
    else:
        lines += ["No strata (fewer than two distinct finite baseline tumour burdens).", ""]

    for section in sections:
        lines += [f"## {section.title}", "", section.markdown, ""]
    return lines


def _md_status(patients, arms):
    lines = ["## Status", "", "Integration status per arm (0 = ok; others are left out of "
             "rates and differences).", ""]
    names = _status_names()
    counts = patients.groupby(["arm", "status"], sort=False).size().unstack(fill_value=0)
    codes = sorted(int(c) for c in counts.columns)
    headers = ["arm", *(f"{c} {names.get(c, '')}".strip() for c in codes), "total"]
    rows = [[arm, *(int(counts.loc[arm, c]) if arm in counts.index else 0 for c in codes),
             int(counts.loc[arm].sum()) if arm in counts.index else 0] for arm in arms]
    return lines + [md_table(headers, rows), ""]


def _md_plots(written, trajectories_note):
    lines = ["## Plots", ""]
    captions = {"rates": "Response (both definitions) and severe-CRS rates with Wilson 95% "
                         "intervals",
                "adaptive_doses": "Dose distribution",
                "il6_vs_dose": "Peak IL-6 vs dose",
                "trajectories": "Sample trajectories"}
    for key, caption in captions.items():
        if key in written:
            lines += [f"### {caption}", "", f"![{caption}]({FILES[key]})", ""]
    if trajectories_note:
        lines += [f"### {captions['trajectories']}", "", trajectories_note, ""]
    lines += ["Tables: " + ", ".join(f"[{FILES[k]}]({FILES[k]})"
                                     for k in ("summary", "paired", "strata")), ""]
    return lines


# -- the report ---------------------------------------------------------------

def build_report(run_dir):
    """Write the report of a run into ``RUN/report/``; returns {name: path}
    for every file written (names as in :data:`FILES`)."""
    run = Path(run_dir)
    patients = open_patients(run)
    manifest = read_manifest(run)
    scenario = _load_config(run)
    arms = list(dict.fromkeys(patients["arm"]))
    reference = _reference(manifest, arms)
    policies = _policies(scenario, patients)
    model_name = manifest.get("model") or (scenario.model if scenario is not None else None)

    out = run / REPORT_DIR
    out.mkdir(exist_ok=True)
    paths = {key: out / name for key, name in FILES.items()}
    written = {}

    outcomes = report_outcomes(scenario, patients.columns)
    summary = arm_rates(patients, outcomes)
    paired = paired_differences(patients, reference, outcomes)
    finite = patients[np.isfinite(patients[STRATUM_COLUMN].to_numpy(float))]
    if len(finite):
        strata = strata_rates(finite, STRATUM_COLUMN, outcomes, N_STRATA)
    else:
        strata = pd.DataFrame(columns=["stratum", *summary.columns])
    for key, frame in (("summary", summary), ("paired", paired), ("strata", strata)):
        frame.to_csv(paths[key], index=False)
        written[key] = paths[key]

    name = manifest.get("scenario") or (scenario.name if scenario is not None else run.name)
    n_patients = int(patients["patient_id"].nunique())
    any_ok = bool((patients["status"] == 0).any())
    for key in ("rates", "adaptive_doses", "il6_vs_dose", "trajectories"):
        if paths[key].exists():                     # a stale plot from an earlier report
            paths[key].unlink()
    note = None
    if any_ok:                                      # else nothing to plot: the report says so
        plot_rates(summary, paths["rates"],
                   f"{name}: rates per arm ({n_patients:,} patients, status ok counted)",
                   outcome_labels(scenario))
        written["rates"] = paths["rates"]
        doses = patients["dose_cells"].to_numpy(float)
        if any(np.ptp(doses[(patients["arm"] == arm).to_numpy()]) > 0 for arm in arms):
            plot_doses(patients, policies, scenario, paths["adaptive_doses"])
            written["adaptive_doses"] = paths["adaptive_doses"]
        if np.unique(doses[np.isfinite(doses)]).size > 1:
            plot_il6_vs_dose(patients, scenario, paths["il6_vs_dose"])
            written["il6_vs_dose"] = paths["il6_vs_dose"]
        if has_trajectories(run):
            plot_trajectories(open_trajectories(run),
                              _model(model_name) if model_name else None, arms,
                              paths["trajectories"], events=intervention_times(patients, scenario))
            written["trajectories"] = paths["trajectories"]
        else:
            note = ("Not drawn: this run has no trajectories dataset (`trajectories/`); "
                    "the runner writes one only for a sample of patients when asked to.")

    shards = manifest.get("shards")
    facts = {"scenario": name, "model": model_name or "?", "seed": manifest.get("seed"),
             "version": manifest.get("version"),
             "config_sha256": manifest.get("config_sha256"),
             "patients": n_patients, "rows": len(patients), "n_arms": len(arms),
             "arms": arms, "reference": reference,
             "shards": (f"{sum(v == 'done' for v in shards.values())} of {len(shards)} done"
                        if isinstance(shards, dict) and shards else None)}
    if facts["seed"] is None and scenario is not None:
        facts["seed"] = scenario.seed
    predictor = predictor_error(patients)
    sections = write_sections(patients, scenario, out) if any_ok else []
    text = _markdown(facts, summary, paired, strata, predictor, patients, policies, scenario,
                     written, note, sections)
    paths["report"].write_text(text, encoding="utf-8")
    written["report"] = paths["report"]
    files = {key: written[key] for key in FILES if key in written}
    for section in sections:
        files.update(section.files)
    return files
