"""A fitted risk model: the grading model, the split, the OLS scores and the
probabilities of severe CRS, saved as one JSON file and applied to any run.

Fitting (:func:`fit`) on the training patients of one arm (see
:mod:`pipeline.risk.features` for the split):

1. observed grades from the grading model (:mod:`pipeline.risk.grading`), with
   the references of the run's model (``run_model``, saved with the fit);
2. the OLS scores R on linear and on log features (:mod:`pipeline.risk.score`);
3. ``p_score``: logistic calibration of one of them (``calibrated_score``, the
   log score by default) against severe CRS (grade >= ``severe_grade``);
4. ``p_early``: a logistic model of severe CRS on log10 IL-6 and log10 CAR T
   over the dose on days 1-3 only, as measured with assay error ``assay_sd``
   (log10 units; :func:`pipeline.risk.features.measured_log10`): what is known
   early enough to act on.

The peak IL-6 and the CAR T peak that R uses come days after infusion (median
IL-6 peak at day 6.4 in the default ``cart2`` scenario's fixed arm, day 10 in
``cart``'s), so ``p_score`` is what the biology allows at best, ``p_early`` a
rule a clinician could apply on day 3.

Probability inputs are named ``score:<transform>`` (a fitted score) or
``assay:<column>`` (an early column, measured, on the log10 scale).

The model records the arm it was trained on (``training_arm``): its name, its
dosing policy (the scenario's ``policy`` and the arm's one-line description,
e.g. "fixed: 1e+08 cells") and the range of doses its training patients got.
A model fitted under one policy need not hold under another: under dose
adaptation the dose is chosen from the same risk factors the features carry
(:mod:`pipeline.risk.features`), and a model fitted on a fixed dose ranked an
adaptive arm worse than chance. :meth:`RiskModel.transfer_problems` says how an
arm to be scored differs (``cartcohort risk score`` warns of it).
"""
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from pipeline.risk.calibration import LogisticModel, fit_logistic
from pipeline.risk.features import EARLY_COLUMNS, is_test, measured_log10
from pipeline.risk.grading import GradingModel
from pipeline.risk.score import TRANSFORMS, RiskScore

FORMAT = "cartcohort-risk-model/1"
PROBABILITIES = ("score", "early")
DOSE_RTOL = 1e-9        # doses this close to the trained range's ends lie within it


@dataclass(frozen=True)
class FitOptions:
    """``arm``: the arm to fit (None: the run's reference arm); ``seed`` and
    ``test_fraction``: the split and the grading noise; ``expansion``: A_C as
    "fold" (peak / dose) or "auc28" (AUC0-28 / dose); ``calibrated_score``:
    the score ("log" or "linear") turned into p_score; ``assay_sd``: the early
    measurements' error (sd of log10); ``grading``: GradingModel values other
    than the cut points and seed (those come from the scenario and ``seed``)."""

    arm: str = None
    seed: int = 0
    test_fraction: float = 0.5
    expansion: str = "fold"
    calibrated_score: str = "log"
    assay_sd: float = 0.1
    grading: dict = field(default_factory=dict)


DEFAULT_OPTIONS = FitOptions()


@dataclass(frozen=True)
class RiskModel:
    """A fitted model (module docstring): the arm it was fitted on, the split
    (``seed``, ``test_fraction``), severe = grade >= ``severe_grade``, the early
    assay error, the grading model and the fitted scores and probabilities;
    ``run_model``: the simulation model of the run it was fitted on, whose
    grading references it uses (None in files written before it was saved);
    ``training_arm``: the arm it was fitted on, {"arm", "policy",
    "description", "dose_cells": [min, max]} ("policy" and "description" None
    when fitted without the scenario; the whole None in files written before it
    was saved)."""

    arm: str
    seed: int
    test_fraction: float
    severe_grade: int
    assay_sd: float
    grading: GradingModel
    scores: dict            # transform -> RiskScore
    probabilities: dict     # "score" / "early" -> LogisticModel
    training: dict          # n, severe events
    run_model: str = None   # e.g. "cart2"
    training_arm: dict = None

    def is_test(self, frame):
        return is_test(frame["patient_id"].to_numpy(), self.seed, self.test_fraction)

    def inputs(self, frame, names):
        """[n, len(names)] model inputs (module docstring)."""
        columns = []
        for name in names:
            kind, _, what = name.partition(":")
            if kind == "score":
                columns.append(self.scores[what].predict(frame))
            elif kind == "assay":
                columns.append(measured_log10(frame, what, self.assay_sd, self.seed))
            else:
                raise ValueError(f"unknown model input {name!r}")
        return np.column_stack(columns)

    def apply(self, frame):
        """Per patient of a risk frame: patient_id, arm, test (held out), grade
        (observed), severe, R_<transform> per score, p_<name> per probability."""
        grade = self.grading.grades(frame)
        out = pd.DataFrame({"patient_id": frame["patient_id"].to_numpy(),
                            "arm": frame["arm"].to_numpy(), "test": self.is_test(frame),
                            "grade": grade, "severe": grade >= self.severe_grade})
        for transform, score in self.scores.items():
            out[f"R_{transform}"] = score.predict(frame)
        for name, model in self.probabilities.items():
            out[f"p_{name}"] = model.predict(self.inputs(frame, model.inputs))
        return out

    def to_dict(self):
        return {"format": FORMAT, "arm": self.arm, "seed": self.seed,
                "test_fraction": self.test_fraction, "severe_grade": self.severe_grade,
                "assay_sd": self.assay_sd, "grading": self.grading.to_dict(),
                "scores": {t: asdict(s) for t, s in self.scores.items()},
                "probabilities": {n: {"inputs": list(m.inputs),
                                      "coefficients": list(m.coefficients)}
                                  for n, m in self.probabilities.items()},
                "training": self.training, "run_model": self.run_model,
                "training_arm": self.training_arm}

    @classmethod
    def from_dict(cls, data):
        if data.get("format") != FORMAT:
            raise ValueError(f"not a risk model (format {data.get('format')!r}, "
                             f"expected {FORMAT!r})")
        return cls(data["arm"], int(data["seed"]), float(data["test_fraction"]),
                   int(data["severe_grade"]), float(data["assay_sd"]),
                   GradingModel(**data["grading"]),
                   {t: RiskScore(**s) for t, s in data["scores"].items()},
                   {n: LogisticModel(tuple(m["inputs"]), tuple(m["coefficients"]))
                    for n, m in data["probabilities"].items()},
                   dict(data["training"]), data.get("run_model"),
                   _training_arm(data.get("training_arm")))

    def training_label(self):
        """The training arm for people: "'fixed' (fixed: 1e+08 cells; doses 1e+08 cells)"."""
        t = self.training_arm
        if t is None:
            return f"{self.arm!r} (policy and doses not recorded)"
        policy = t["description"] or "policy not recorded"
        return f"{t['arm']!r} ({policy}; doses {dose_range_label(t['dose_cells'])})"

    def transfer_problems(self, description, doses):
        """How an arm to be scored differs from the training arm: a list of
        reasons (empty when its policy is the same and its doses, an array of
        cells, lie within the trained range), or None when this model has no
        record of its training arm (saved before it was recorded) and it cannot
        be checked. ``description``: the arm's one-line description
        (:meth:`pipeline.config.Arm.describe`), None when unknown."""
        t = self.training_arm
        if t is None:
            return None
        problems = []
        if t["description"] is None or description is None:
            problems.append("dosing policy not recorded, not compared")
        elif description != t["description"]:
            problems.append("another dosing policy")
        doses = np.asarray(doses, dtype=float)
        low, high = t["dose_cells"]
        if doses.size and (doses.min() < low * (1.0 - DOSE_RTOL)
                           or doses.max() > high * (1.0 + DOSE_RTOL)):
            problems.append("doses outside the trained range")
        return problems

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the risk model: {exc}") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid risk model: {exc}") from None


def dose_range_label(dose_cells):
    """[1e7, 1e9] -> '1e+07-1e+09 cells'; one dose -> '1e+08 cells'."""
    low, high = (float(d) for d in dose_cells)
    return f"{low:.3g} cells" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}-{high:.3g} cells"


def _training_arm(data):
    if data is None:
        return None
    return {"arm": str(data["arm"]), "policy": data.get("policy"),
            "description": data.get("description"),
            "dose_cells": [float(d) for d in data["dose_cells"]]}


def fit(frame, thresholds_pg_ml, severe_grade, options=DEFAULT_OPTIONS, *, model, arm=None):
    """Fit a :class:`RiskModel` on the training patients of a risk frame
    (``pipeline.risk.features.risk_frame``); ``thresholds_pg_ml`` and
    ``severe_grade`` from the scenario's ``[outcomes]``, ``model`` its model
    (the grading references: :meth:`GradingModel.for_model`); ``arm``: the
    scenario's :class:`pipeline.config.Arm` of the frame (its policy is
    recorded; None: the doses only)."""
    if options.calibrated_score not in TRANSFORMS:
        raise ValueError(f"calibrated score must be one of {TRANSFORMS}, "
                         f"got {options.calibrated_score!r}")
    if not options.assay_sd >= 0:
        raise ValueError(f"assay sd must be >= 0, got {options.assay_sd}")
    grading = GradingModel.for_model(model, thresholds_pg_ml, seed=options.seed,
                                     **options.grading)
    train_mask = ~is_test(frame["patient_id"].to_numpy(), options.seed, options.test_fraction)
    train = frame[train_mask]
    if train.empty:
        raise ValueError("no patients in the training cohort")
    grade = grading.grades(train)
    severe = grade >= severe_grade
    scores = {t: RiskScore.fit(train, grade, t, options.expansion) for t in TRANSFORMS}
    arm_name = str(train["arm"].iloc[0])
    if arm is not None and arm.name != arm_name:
        raise ValueError(f"the arm's scenario entry is {arm.name!r}, its patients {arm_name!r}")
    training_arm = {"arm": arm_name, "policy": None if arm is None else arm.policy,
                    "description": None if arm is None else arm.describe(),
                    "dose_cells": [float(train["dose_cells"].min()),
                                   float(train["dose_cells"].max())]}
    partial = RiskModel(arm_name, options.seed, options.test_fraction,
                        severe_grade, float(options.assay_sd), grading, scores, {},
                        {"n": len(train), "severe": int(severe.sum())}, str(model),
                        training_arm)
    inputs = {"score": (f"score:{options.calibrated_score}",),
              "early": tuple(f"assay:{c}" for c in EARLY_COLUMNS)}
    probabilities = {}
    for name in PROBABILITIES:
        w = fit_logistic(partial.inputs(train, inputs[name]), severe)
        probabilities[name] = LogisticModel(inputs[name], tuple(float(v) for v in w))
    return replace(partial, probabilities=probabilities)
