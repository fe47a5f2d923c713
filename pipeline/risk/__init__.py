"""CRS risk score and expected-utility decisions (README.md#crs-risk-and-prophylaxis-decisions).

From a run's simulated patients to a decision rule for CRS prophylaxis:

* :mod:`~pipeline.risk.features`: per-patient features (peak IL-6 L_max, CAR T
  expansion A_C, tumour burden, IL-6 and CAR T on days 1-3) and a seeded,
  deterministic train/test split by patient id;
* :mod:`~pipeline.risk.grading`: the "observed" CRS grades, a stated noisy
  latent-variable model of the simulated biology;
* :mod:`~pipeline.risk.score`: the OLS score R = alpha L_max + beta A_C + gamma
  (and on log10 features);
* :mod:`~pipeline.risk.calibration`: logistic calibration into a probability of
  severe CRS, the early-feature model, AUC, calibration, Brier score;
* :mod:`~pipeline.risk.utility`: the threshold tau from four utilities, the
  policies' expected utilities and the decision curve;
* :mod:`~pipeline.risk.model`: the fitted model as one JSON file;
* :mod:`~pipeline.risk.commands`: :func:`risk_fit`, :func:`risk_score` and
  :func:`risk_decide` on a run directory (``cartcohort risk ...``);
* :mod:`~pipeline.risk.plots`: score by grade, ROC, calibration, decision curve.
"""
from pipeline.risk.commands import risk_decide, risk_fit, risk_score
from pipeline.risk.grading import GradingModel
from pipeline.risk.model import FitOptions, RiskModel
from pipeline.risk.utility import Utilities

__all__ = ["FitOptions", "GradingModel", "RiskModel", "Utilities", "risk_decide", "risk_fit",
           "risk_score"]
