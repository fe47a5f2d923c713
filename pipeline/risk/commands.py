"""The risk workflow on a run directory: fit, score, decide (the CLI's layer).

* :func:`risk_fit` fits a :class:`pipeline.risk.model.RiskModel` on the
  training patients of one arm and evaluates it on the held-out test patients:
  ``risk_model.json``, ``risk_metrics.json``, ``risk_calibration.csv``,
  ``risk_fit.md`` and the plots ``risk_score_by_grade.png``, ``risk_roc.png``,
  ``risk_calibration.png``.
* :func:`risk_score` applies a saved model to a run (any run: e.g. an
  independent cohort with another seed): ``risk_scores.parquet`` (one row per
  patient and arm) and ``risk_score_metrics.csv`` (per arm, with
  ``training_check``: whether the arm's dosing policy and doses are those the
  model was trained on); one warning line on stderr names the training arm and
  every scored arm of another policy or outside the trained dose range (a model
  fitted under a fixed dose ranked an adaptive arm worse than chance), or says
  that a model saved before its training arm was recorded cannot be checked.
* :func:`risk_decide` turns utilities into the threshold tau and compares the
  policies on the test patients: ``risk_policies.csv``, ``risk_decision_curve.csv``,
  ``risk_decision.json``, ``risk_decide.md`` and ``risk_decision_curve.png``.

Each returns {file key: path} of what it wrote. :func:`fit_files` and
:func:`decide_files` do the same from a patients DataFrame (the report section).

The grading model's references are those of the run's model, read from the
run's scenario (``RUN/config.toml``) as the report section reads it; a saved
model records the model of the run it was fitted on (``run_model``), and
:func:`risk_score` and :func:`risk_decide` refuse a run of another model (its
grades would be on the wrong references).
"""
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.aggregate import CONFIDENCE
from pipeline.figures import md_table
from pipeline.query import open_patients
from pipeline.risk import plots
from pipeline.risk.calibration import (
    auc_interval,
    brier,
    calibration_line,
    calibration_table,
)
from pipeline.risk.features import SOURCE_COLUMNS, risk_frame
from pipeline.risk.model import DEFAULT_OPTIONS, RiskModel, dose_range_label, fit
from pipeline.risk.score import r_squared
from pipeline.risk.utility import DEFAULT_UTILITIES, decision_curve, policy_table

SPLITS = ("test", "all")
THRESHOLDS = np.round(np.arange(0.01, 0.81, 0.01), 2)   # decision-curve grid


def run_scenario(run_dir):
    """The run's scenario from its ``config.toml`` (ValueError when unreadable)."""
    from pipeline.config import ConfigError, scenario_from_text
    path = Path(run_dir) / "config.toml"
    try:
        return scenario_from_text(path.read_text(encoding="utf-8"), source=str(path))
    except (OSError, UnicodeDecodeError, ConfigError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read the run's scenario: {exc}") from None


def outcome_rules(run_dir):
    """(IL-6 thresholds in pg/mL, severe grade, model) from the run's ``config.toml``."""
    scenario = run_scenario(run_dir)
    rules = scenario.outcomes
    return (tuple(rules.crs_il6_thresholds_pg_ml), int(rules.severe_crs_grade),
            str(scenario.model))


def check_run_model(model, run_model):
    """ValueError unless a :class:`RiskModel` fitted on a run of ``model.run_model``
    applies to a run of ``run_model`` (old files without a run model: any)."""
    if model.run_model is not None and model.run_model != run_model:
        raise ValueError(f"the risk model was fitted on a {model.run_model!r} run and grades "
                         f"with that model's references; this run is of {run_model!r}")


def evaluate(scored, confidence=CONFIDENCE):
    """Metrics of scored patients (:meth:`RiskModel.apply` rows): per score its
    R^2 against the grade and its AUC for severe CRS; per probability its AUC,
    Brier score, calibration intercept and slope. Returns (metrics dict,
    calibration table by decile with a ``probability`` column)."""
    severe = scored["severe"].to_numpy()
    metrics = {"n": len(scored), "severe": int(severe.sum()),
               "severe_rate": float(severe.mean()), "scores": {}, "probabilities": {}}
    tables = []
    for column in [c for c in scored.columns if c.startswith("R_")]:
        value, lower, upper = auc_interval(scored[column], severe, confidence)
        metrics["scores"][column[2:]] = {
            "r_squared": r_squared(scored["grade"], scored[column]),
            "auc": value, "auc_lower": lower, "auc_upper": upper}
    for column in [c for c in scored.columns if c.startswith("p_")]:
        p = scored[column].to_numpy()
        value, lower, upper = auc_interval(p, severe, confidence)
        intercept, slope = calibration_line(p, severe)
        metrics["probabilities"][column[2:]] = {
            "auc": value, "auc_lower": lower, "auc_upper": upper, "brier": brier(p, severe),
            "mean_p": float(p.mean()), "calibration_intercept": intercept,
            "calibration_slope": slope}
        tables.append(calibration_table(p, severe, confidence=confidence)
                      .assign(probability=column))
    return metrics, pd.concat(tables, ignore_index=True)


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _select(scored, split):
    """The held-out patients (``split = "test"``) or all of them (``"all"``)."""
    _check_split(split)
    return scored[scored["test"]] if split == "test" else scored


def _paths(out_dir, names):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {key: out / name for key, name in names.items()}


def _write_json(path, data):
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _g(value):
    """1e10 -> '1e10' (not '1e+10')."""
    return f"{value:g}".replace("e+", "e")


def _ci(m, key="auc", digits=3):
    return f"{m[key]:.{digits}f} [{m[f'{key}_lower']:.{digits}f}, {m[f'{key}_upper']:.{digits}f}]"


def _policy_text(model):
    """'fixed: 1e+08 cells; doses 1e+08 cells': what ``risk score`` checks a run against."""
    t = model.training_arm
    return f"{t['description'] or 'policy not recorded'}; doses {dose_range_label(t['dose_cells'])}"


def _fit_markdown(model, metrics, excluded):
    g = model.grading
    score_rows = [[s.label(), f"{metrics['scores'][t]['r_squared']:.3f}",
                   _ci(metrics["scores"][t])] for t, s in model.scores.items()]
    p_rows = [[name, _ci(m), f"{m['brier']:.4f}", f"{m['calibration_intercept']:.3f}",
               f"{m['calibration_slope']:.3f}", f"{m['mean_p']:.3f}"]
              for name, m in metrics["probabilities"].items()]
    return "\n".join([
        f"Arm `{model.arm}` ({_policy_text(model)}): {model.training['n']:,} training and "
        f"{metrics['n']:,} test "
        f"patients (split seed {model.seed}, test fraction {model.test_fraction}); "
        f"{excluded:,} left out (failed integration or non-positive features).",
        "",
        f"Observed grades from the grading model (references of the `{model.run_model}` "
        f"model) z = log10 {g.il6_ref_pg_ml:g} + {g.il6:g} "
        f"log10(L_max / {g.il6_ref_pg_ml:g}) + {g.expansion:g} "
        f"log10(C_max / {_g(g.expansion_ref_cells)} cells) + {g.tumour:g} "
        f"log10(T0 / {_g(g.tumour_ref_cells)} cells) + {g.noise_sd:g} eps ({g.noise}), cut at "
        f"{', '.join(f'{c:.3f}' for c in g.cuts)}. Severe CRS = grade >= {model.severe_grade}: "
        f"{model.training['severe']:,} training and {metrics['severe']:,} test events "
        f"({100 * metrics['severe_rate']:.1f}% of the test cohort).",
        "",
        "OLS risk scores (fitted on the training cohort; R^2 and AUC for severe CRS "
        "[DeLong 95% CI] on the test cohort):",
        "",
        md_table(["score", "test R^2", "test AUC"], score_rows),
        "",
        "Probabilities of severe CRS on the test cohort (calibration intercept 0 and "
        "slope 1 when calibrated):",
        "",
        md_table(["p", "AUC", "Brier", "cal. intercept", "cal. slope", "mean p"], p_rows),
    ])


def risk_fit(run_dir, out_dir, options=DEFAULT_OPTIONS, confidence=CONFIDENCE):
    """Fit the risk model on a run and evaluate it on its test patients, with
    the grading references of the run's model."""
    thresholds, severe_grade, model = outcome_rules(run_dir)
    return fit_files(open_patients(run_dir, SOURCE_COLUMNS), thresholds, severe_grade, out_dir,
                     options, confidence, model=model, arms=run_scenario(run_dir).arms)


def _scenario_arm(arms, name):
    """The scenario's Arm called ``name`` (None without arms or without that one)."""
    return next((a for a in arms or () if a.name == name), None)


def fit_files(patients, thresholds, severe_grade, out_dir, options=DEFAULT_OPTIONS,
              confidence=CONFIDENCE, *, model, arms=None):
    """:func:`risk_fit` on a patients DataFrame, with the scenario's IL-6
    thresholds (pg/mL), severe grade and model (its name, e.g. "cart2");
    ``arms``: the scenario's arms, whose policy the model records for the arm
    it is fitted on (None: the doses only)."""
    paths = _paths(out_dir, {"model": "risk_model.json", "metrics": "risk_metrics.json",
                             "calibration": "risk_calibration.csv", "summary": "risk_fit.md",
                             "score_by_grade": "risk_score_by_grade.png",
                             "roc": "risk_roc.png", "calibration_plot": "risk_calibration.png"})
    frame, excluded = risk_frame(patients, options.arm)
    arm = _scenario_arm(arms, str(frame["arm"].iloc[0])) if len(frame) else None
    model = fit(frame, thresholds, severe_grade, options, model=model, arm=arm)
    scored = model.apply(frame)
    test = scored[scored["test"]]
    metrics, tables = evaluate(test, confidence)
    model.save(paths["model"])
    _write_json(paths["metrics"], {"excluded": excluded, "test": metrics})
    tables.to_csv(paths["calibration"], index=False)
    paths["summary"].write_text(_fit_markdown(model, metrics, excluded) + "\n", encoding="utf-8")
    plots.score_by_grade(test, paths["score_by_grade"])
    plots.roc(test, metrics, paths["roc"])
    plots.calibration(tables, paths["calibration_plot"])
    return paths


def training_checks(model, frames, arms):
    """{arm: (label, problems)} for each scored arm: its label for people
    ("'adaptive' (adaptive: ...; doses 1e+07-1e+09 cells)") and
    :meth:`RiskModel.transfer_problems` (None: cannot be checked), from its
    risk frame (``frames``: {arm: frame}) and the scenario's ``arms``."""
    checks = {}
    for name, frame in frames.items():
        arm = _scenario_arm(arms, name)
        description = None if arm is None else arm.describe()
        doses = frame["dose_cells"].to_numpy(dtype=float)
        label = (f"{name!r} ({description or 'policy unknown'}; doses "
                 f"{dose_range_label([doses.min(), doses.max()]) if doses.size else 'none'})")
        checks[name] = (label, model.transfer_problems(description, doses))
    return checks


def training_check_notes(model, checks):
    """({arm: note for the metrics file}, the one warning line or None)."""
    trained = model.training_label()
    if model.training_arm is None:
        note = (f"cannot be checked: the model (fitted on arm {model.arm!r}) was saved "
                f"before its training policy and dose range were recorded")
        return ({name: note for name in checks},
                f"warning: the risk model was saved before its training arm's policy and dose "
                f"range were recorded (fitted on arm {model.arm!r}): cannot check that it "
                f"applies to arms {', '.join(repr(n) for n in checks)} of this run")
    notes, differing = {}, []
    for name, (label, problems) in checks.items():
        if problems:
            notes[name] = f"{'; '.join(problems)}: arm {label}, trained on arm {trained}"
            differing.append(f"arm {label}: {', '.join(problems)}")
        else:
            notes[name] = "ok"
    if not differing:
        return notes, None
    return notes, (f"warning: the risk model was fitted on arm {trained}; it scores "
                   f"{'; '.join(differing)}: its scores and probabilities need not hold "
                   f"there (fit on the arm to be scored: `cartcohort risk fit --arm`)")


def risk_score(run_dir, model_path, out_dir, split="test", confidence=CONFIDENCE, log=None):
    """Score every arm of a run with a saved model; metrics per arm on the
    ``split`` patients ("test": held out by the model's split; "all": every
    patient, for a run the model was not fitted on). One warning line to
    ``log`` (default stderr) when an arm's dosing policy or doses are not those
    the model was trained on, or when the model does not record them."""
    model = RiskModel.load(model_path)
    _check_split(split)
    try:
        scenario = run_scenario(run_dir)
    except ValueError:
        if model.run_model is not None:
            raise
        scenario = None                 # an old model on a run without a readable scenario
    if model.run_model is not None:
        check_run_model(model, scenario.model)
    arms = None if scenario is None else scenario.arms
    paths = _paths(out_dir, {"scores": "risk_scores.parquet",
                             "metrics": "risk_score_metrics.csv"})
    patients = open_patients(run_dir, SOURCE_COLUMNS)
    frames = {arm: risk_frame(patients, arm)[0] for arm in dict.fromkeys(patients["arm"])}
    notes, warning = training_check_notes(model, training_checks(model, frames, arms))
    scored = pd.concat([model.apply(frame) for frame in frames.values()], ignore_index=True)
    scored.to_parquet(paths["scores"], index=False)
    rows = []
    for arm, group in scored.groupby("arm", sort=False):
        m, _ = evaluate(_select(group, split), confidence)
        rows.append({"arm": arm, "n": m["n"], "severe_rate": m["severe_rate"],
                     **{f"{t}_{k}": v for t, s in m["scores"].items() for k, v in s.items()},
                     **{f"p_{n}_{k}": v for n, s in m["probabilities"].items()
                        for k, v in s.items()},
                     "training_check": notes[arm]})
    pd.DataFrame(rows).to_csv(paths["metrics"], index=False)
    if warning:
        print(warning, file=sys.stderr if log is None else log)
    return paths


def _decide_markdown(utilities, table, n, split):
    rows = [[r.policy, f"{100 * r.treated:.1f}%",
             f"{r.expected_utility:.4f} [{r.lower:.4f}, {r.upper:.4f}]",
             f"{r.vs_treat_all:+.4f} [{r.vs_treat_all_lower:+.4f}, {r.vs_treat_all_upper:+.4f}]",
             f"{r.vs_treat_none:+.4f} [{r.vs_treat_none_lower:+.4f}, {r.vs_treat_none_upper:+.4f}]"]
            for r in table.itertuples()]
    u = utilities
    return "\n".join([
        f"Utilities U_TP {u.tp:g}, U_FP {u.fp:g}, U_TN {u.tn:g}, U_FN {u.fn:g}: benefit of "
        f"treating a case B = U_TP - U_FN = {u.benefit:g}, harm of treating a non-case "
        f"H = U_TN - U_FP = {u.harm:g}; intervene when p > tau = H / (H + B) = "
        f"{u.threshold:.4f}.",
        "",
        f"Expected utility per patient on {n:,} patients ({split} split; 95% CI; "
        f"differences paired, same patients). p_score uses the peak IL-6 and the CAR T "
        f"peak, known only once they are past (median IL-6 peak at day 6.4 in the default "
        f"`cart2` scenario's fixed arm): the best the biology allows. p_early uses IL-6 "
        f"and CAR T on days 1-3: a rule a clinician can apply on day 3.",
        "",
        md_table(["policy", "treated", "expected utility", "vs treat all", "vs treat none"],
                 rows),
    ])


def risk_decide(run_dir, model_path, out_dir, utilities=DEFAULT_UTILITIES, arm=None, split="test",
                confidence=CONFIDENCE):
    """tau from the utilities, the policies' expected utilities and the decision
    curve on the ``split`` patients of ``arm`` (default: the model's arm)."""
    model = RiskModel.load(model_path)
    if model.run_model is not None:
        check_run_model(model, run_scenario(run_dir).model)
    return decide_files(open_patients(run_dir, SOURCE_COLUMNS), model, out_dir, utilities, arm,
                        split, confidence)


def decide_files(patients, model, out_dir, utilities=DEFAULT_UTILITIES, arm=None, split="test",
                 confidence=CONFIDENCE):
    """:func:`risk_decide` on a patients DataFrame and a :class:`RiskModel`."""
    paths = _paths(out_dir, {"policies": "risk_policies.csv",
                             "decision_curve": "risk_decision_curve.csv",
                             "decision": "risk_decision.json", "summary": "risk_decide.md",
                             "decision_curve_plot": "risk_decision_curve.png"})
    scored = _select(model.apply(risk_frame(patients, arm or model.arm)[0]), split)
    event = scored["severe"].to_numpy()
    probabilities = {name: scored[f"p_{name}"].to_numpy() for name in model.probabilities}
    table = policy_table(probabilities, event, utilities, confidence)
    curve = decision_curve(probabilities, event, THRESHOLDS)
    table.to_csv(paths["policies"], index=False)
    curve.to_csv(paths["decision_curve"], index=False)
    _write_json(paths["decision"], {"utilities": asdict(utilities), "tau": utilities.threshold,
                                    "n": len(scored), "severe": int(event.sum()),
                                    "policies": table.to_dict(orient="records")})
    paths["summary"].write_text(_decide_markdown(utilities, table, len(scored), split) + "\n",
                                encoding="utf-8")
    plots.decision_curve(curve, utilities.threshold, paths["decision_curve_plot"])
    return paths
