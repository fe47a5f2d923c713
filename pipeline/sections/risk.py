"""CRS risk score and prophylaxis decisions (:mod:`pipeline.risk`) on the run's
reference arm, with the default grading model, split (seed 0, half held out)
and utilities; ``cartcohort risk`` runs the same with other options.

Writes into the report directory what :func:`pipeline.risk.commands.fit_files`
and :func:`~pipeline.risk.commands.decide_files` write (model JSON, metrics,
calibration and policy tables, the score-by-grade, ROC, calibration and
decision-curve plots). Appears for runs of a model with grading references
(:data:`pipeline.risk.grading.REFERENCES`: ``cart2`` and ``cart``; the grading
model's references are set on each model's scales), which have the risk features
(runs made before they were added lack them) and a readable scenario.
"""
from pipeline.risk.commands import decide_files, fit_files
from pipeline.risk.features import SOURCE_COLUMNS
from pipeline.risk.grading import REFERENCES
from pipeline.risk.model import RiskModel

TITLE = "CRS risk score and prophylaxis decisions"
PLOTS = (("score_by_grade", "Risk score by observed grade"), ("roc", "ROC curves"),
         ("calibration_plot", "Calibration"))


def section(patients, scenario, out_dir):
    from pipeline.sections import Section
    if (scenario is None or scenario.model not in REFERENCES
            or any(c not in patients.columns for c in SOURCE_COLUMNS)):
        return None
    rules = scenario.outcomes
    try:
        fitted = fit_files(patients, rules.crs_il6_thresholds_pg_ml, rules.severe_crs_grade,
                           out_dir, model=scenario.model, arms=scenario.arms)
        decided = decide_files(patients, RiskModel.load(fitted["model"]), out_dir)
    except ValueError as exc:          # e.g. too few severe cases in a small run to fit
        return Section(TITLE, f"No risk model for this run: {exc}", {})
    text = "\n".join([
        fitted["summary"].read_text(encoding="utf-8"),
        *(f"![{label}]({fitted[key].name})" for key, label in PLOTS),
        "",
        decided["summary"].read_text(encoding="utf-8"),
        f"![Decision curve]({decided['decision_curve_plot'].name})",
    ])
    files = {**{f"risk_fit_{key}": path for key, path in fitted.items()},
             **{f"risk_decide_{key}": path for key, path in decided.items()}}
    return Section(TITLE, text, files)
