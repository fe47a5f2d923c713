"""The OLS risk score (README.md#crs-risk-and-prophylaxis-decisions).

    linear:  R = alpha L_max + beta A_C + gamma
    log:     R = alpha log10(L_max) + beta log10(A_C) + gamma

with L_max the peak IL-6 (pg/mL) and A_C the CAR T expansion, either the peak
over the dose (``expansion = "fold"``) or the AUC0-28 over the dose (``"auc28"``,
days) (:mod:`pipeline.risk.features`). The coefficients minimise
sum (grade - R)^2 over the training cohort (ordinary least squares, numpy
``lstsq``), with the observed grade as a number 0..4, so R is on the grade scale.
"""
from dataclasses import dataclass

import numpy as np

from pipeline.risk.features import EXPANSIONS

TRANSFORMS = ("linear", "log")


def fit_ols(x, y):
    """Least-squares coefficients of y on [x, 1] (x [n, k]): k slopes, then the intercept."""
    design = np.column_stack([np.asarray(x, dtype=float), np.ones(len(y))])
    coefficients, _, rank, _ = np.linalg.lstsq(design, np.asarray(y, dtype=float), rcond=None)
    if rank < design.shape[1]:
        raise ValueError(f"the OLS design has rank {rank} < {design.shape[1]} columns "
                         f"(a constant or collinear feature)")
    return coefficients


def r_squared(y, predicted):
    """1 - sum (y - predicted)^2 / sum (y - mean y)^2 (out of sample: can be < 0)."""
    y, predicted = np.asarray(y, dtype=float), np.asarray(predicted, dtype=float)
    return float(1.0 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2))


@dataclass(frozen=True)
class RiskScore:
    """R = alpha L + beta A + gamma on the ``transform`` scale of the features."""

    transform: str
    expansion: str
    alpha: float
    beta: float
    gamma: float

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"score transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.expansion not in EXPANSIONS:
            raise ValueError(f"expansion must be one of {sorted(EXPANSIONS)}, "
                             f"got {self.expansion!r}")

    @staticmethod
    def features(frame, transform, expansion):
        """[n, 2]: (L_max, A_C) of a risk frame, log10 for ``transform = "log"``."""
        x = frame[["L_max", EXPANSIONS[expansion][0]]].to_numpy(dtype=float)
        return np.log10(x) if transform == "log" else x

    @classmethod
    def fit(cls, frame, grades, transform, expansion):
        alpha, beta, gamma = fit_ols(cls.features(frame, transform, expansion), grades)
        return cls(transform, expansion, float(alpha), float(beta), float(gamma))

    def predict(self, frame):
        x = self.features(frame, self.transform, self.expansion)
        return x @ np.array([self.alpha, self.beta]) + self.gamma

    def label(self):
        """The fitted equation as text, e.g. 'R = 1.2 log10 L_max + 0.3 log10 A_fold - 1.5'."""
        f = "log10 " if self.transform == "log" else ""
        return (f"R = {self.alpha:.4g} {f}L_max {_signed(self.beta)} "
                f"{f}{EXPANSIONS[self.expansion][0]} {_signed(self.gamma)}")


def _signed(value):
    """'+ 0.3' or '- 0.3'."""
    return f"{'-' if value < 0 else '+'} {abs(value):.4g}"
