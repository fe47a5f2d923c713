"""The files of a calibration (``cartcohort calibrate TARGETS --out DIR``).

    fitted.toml          the fitted typical values, as a scenario's
                         [cohort.parameters.<name>] tables (paste into a scenario,
                         or into a model's parameter table)
    targets.csv          per target: value, sd, achieved (plain and smoothed),
                         standardised residual, source
    parameters.csv       per fitted or screened parameter: start and fitted value,
                         sensitivity, SE of ln(typical), most correlated partner,
                         identified or not
    trace.csv            the objective at every cohort simulation
    calibration.png      achieved / target per target, with the target's band
    calibration.md       all of it for people
"""
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.calibration.fit import IDENTIFIED_SE
from pipeline.figures import md_table, pyplot, save


def _targets_frame(result):
    rows = []
    for target, (smooth, plain), res in zip(result.spec.targets, result.stats, result.residuals):
        rows.append({"target": target.name, "statistic": target.describe(),
                     "value": target.value, "sd": target.sd, "scale": target.scale,
                     "achieved": plain, "achieved_smoothed": smooth, "residual": float(res),
                     "source": target.source})
    return pd.DataFrame(rows)


def _parameters_frame(result):
    rows = []
    for name in result.spec.fit + result.spec.screen:
        fitted = name in result.fitted
        partner, corr = result.partner.get(name, (None, np.nan))
        se = result.se_log.get(name, np.nan)
        rows.append({"parameter": name, "role": "fitted" if fitted else "screened",
                     "start": result.start.get(name, result.typical[name]),
                     "value": result.typical[name],
                     "sensitivity": float(np.linalg.norm(result.sensitivity[name])),
                     "se_log": se, "most_correlated": partner, "correlation": corr,
                     "identified": bool(fitted and se <= IDENTIFIED_SE) if fitted else None})
    return pd.DataFrame(rows)


def fitted_toml(result, model):
    """The fitted typical values as [cohort.parameters.<name>] tables."""
    units = {p.name: p.unit for p in model.parameters}
    lines = [f"# cartcohort calibrate {result.spec.source}: objective {result.cost:.4g} "
             f"after {result.evaluations} cohort simulations"]
    for name, value in result.fitted.items():
        lines += ["", f"[cohort.parameters.{name}]", f"typical = {value:.6g}   # {units[name]}"]
    return "\n".join(lines) + "\n"


def _plot(targets, path):
    plt = pyplot()
    n = len(targets)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * n + 1.5))
    y = np.arange(n)[::-1]
    log = targets["scale"] == "log"
    ratio = targets["achieved"] / targets["value"]
    low = np.where(log, np.exp(-targets["sd"]), 1.0 - targets["sd"] / targets["value"])
    high = np.where(log, np.exp(targets["sd"]), 1.0 + targets["sd"] / targets["value"])
    ax.hlines(y, np.maximum(low, 1e-2), high, color="0.7", lw=6, label="target +- sd")
    ax.plot(np.ones(n), y, "|", color="k", ms=14, label="target")
    ax.plot(np.clip(ratio, 1e-2, 1e2), y, "o", color="tab:red", label="achieved")
    ax.set_xscale("log")
    ax.set_yticks(y, targets["target"])
    ax.set_xlabel("achieved / target")
    ax.set_title("Calibration: targets and what the fitted model achieves")
    # below the axis label (0.6 inch under the axes), clear of the rows
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6 / (0.45 * n + 0.5)), ncol=3,
              fontsize=8)
    save(fig, path)


def _combination(vector, names, smallest=0.2):
    """'+0.71 a -0.52 k ...': the larger components of a singular vector, sign
    fixed so that the largest is positive."""
    vector = vector * np.sign(vector[np.argmax(np.abs(vector))])
    order = np.argsort(-np.abs(vector))
    return " ".join(f"{vector[j]:+.2f} {names[j]}" for j in order if abs(vector[j]) >= smallest)


def _markdown(result, targets, parameters):
    identified = parameters[parameters["role"] == "fitted"]
    free = identified[~identified["identified"].astype(bool)]["parameter"].tolist()
    text = [f"# Calibration: {result.spec.source}", "",
            f"Cohort: {result.spec.patients} patients, arm {result.spec.arm!r} of "
            f"{result.spec.scenario_path}. Objective (sum of squared standardised "
            f"residuals): {result.cost:.4g} after {result.evaluations} cohort simulations; "
            f"optimiser: {result.message}", "",
            "## Targets", "",
            md_table(["target", "value", "sd", "achieved", "residual", "source"],
                     [(r.target, f"{r.value:.4g}",
                       f"{r.sd:.3g}{' (ln)' if r.scale == 'log' else ''}",
                       f"{r.achieved:.4g}", f"{r.residual:+.2f}", r.source)
                      for r in targets.itertuples()]),
            "", "## Parameters", "",
            md_table(["parameter", "role", "start", "fitted", "sensitivity", "SE ln",
                      "most correlated", "identified"],
                     [(r.parameter, r.role, f"{r.start:.4g}", f"{r.value:.4g}",
                       f"{r.sensitivity:.3g}",
                       "" if np.isnan(r.se_log) else f"{r.se_log:.3g}",
                       "" if pd.isna(r.most_correlated) else
                       f"{r.most_correlated} ({r.correlation:+.2f})",
                       "" if pd.isna(r.identified) else ("yes" if r.identified else "NO"))
                      for r in parameters.itertuples()]),
            "",
            f"Identified: SE of ln(typical) <= {IDENTIFIED_SE:.2f} (within a factor "
            f"{np.exp(IDENTIFIED_SE):.2g} at one SE). Not identified by these targets: "
            f"{', '.join(free) if free else 'none'}. Sensitivity: the norm of the change "
            f"of the standardised residuals per unit ln(parameter); screened parameters "
            f"were not fitted.", "",
            "What the targets pin (singular value decomposition of the sensitivity "
            "matrix): each combination of ln(typical values) below is known to about "
            "1 / S on the ln scale; components under 0.2 are left out.", "",
            md_table(["S", "1 / S", "combination of ln(typical)"],
                     [(f"{s:.3g}", f"{1 / s:.2g}" if s > 0 else "inf",
                       _combination(v, result.spec.fit))
                      for s, v in zip(result.singular_values, result.combinations.T)]),
            ""]
    return "\n".join(text)


def write_calibration(result, model, out_dir):
    """Write the calibration's files into ``out_dir``; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets, parameters = _targets_frame(result), _parameters_frame(result)
    paths = {name: out / name for name in ("fitted.toml", "targets.csv", "parameters.csv",
                                           "trace.csv", "calibration.png", "calibration.md")}
    paths["fitted.toml"].write_text(fitted_toml(result, model), encoding="utf-8")
    targets.to_csv(paths["targets.csv"], index=False)
    parameters.to_csv(paths["parameters.csv"], index=False)
    pd.DataFrame(result.trace, columns=["evaluation", "objective"]).to_csv(
        paths["trace.csv"], index=False)
    _plot(targets, paths["calibration.png"])
    paths["calibration.md"].write_text(_markdown(result, targets, parameters),
                                       encoding="utf-8")
    return paths
