"""Probabilities of severe CRS and how well they discriminate and calibrate.

* Logistic model p = 1 / (1 + exp(-(w . x + w0))), fitted by maximum likelihood
  with Newton's method (iteratively reweighted least squares: step
  H^-1 X'(y - p), H = X' diag(p (1 - p)) X; McCullagh & Nelder 1989, s4.4),
  halving a step that does not raise the log-likelihood
  l = sum y eta - log(1 + e^eta). Used for the calibration of a score into a
  probability (x = the score: logistic calibration, Platt 1999) and for the
  early-feature model (x = log10 of IL-6 and CAR T on days 1-3).
* AUC: the Mann-Whitney statistic P(score of a case > score of a non-case), ties
  counted 1/2, from mid-ranks (Hanley & McNeil 1982, Radiology 143:29); its
  interval from DeLong, DeLong & Clarke-Pearson 1988 (Biometrics 44:837): the
  variance var(V10)/n1 + var(V01)/n0 of the placement values.
* Calibration: per decile of p (equal-count bins of the sorted p), mean p
  against the observed rate with its Wilson 95% interval; the calibration
  intercept and slope (Cox 1958, Biometrika 45:562): the logistic fit of the
  outcome on logit(p), (0, 1) when p is calibrated; the Brier score
  mean (p - y)^2 (Brier 1950).
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm, rankdata

from pipeline.aggregate import CONFIDENCE, wilson_interval

MAX_NEWTON_STEPS = 100
MAX_HALVINGS = 60
_P_CLIP = 1e-12


def log_likelihood(coefficients, design, y):
    """Bernoulli log-likelihood of a logistic model, sum y eta - log(1 + e^eta)."""
    eta = design @ coefficients
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def fit_logistic(x, y, tol=1e-10):
    """Maximum-likelihood coefficients of P(y = 1) = expit(x w + w0), x [n, k]:
    k slopes, then the intercept. Raises ValueError when Newton's method does
    not converge (an outcome separated by the features has no finite MLE)."""
    y = np.asarray(y, dtype=float)
    design = np.column_stack([np.asarray(x, dtype=float), np.ones(y.size)])
    if not 0 < y.sum() < y.size:
        raise ValueError("a logistic fit needs both outcomes in the data")
    w = np.zeros(design.shape[1])
    current = log_likelihood(w, design, y)
    for _ in range(MAX_NEWTON_STEPS):
        p = expit(design @ w)
        hessian = design.T @ (design * (p * (1.0 - p))[:, None])
        step = np.linalg.lstsq(hessian, design.T @ (y - p), rcond=None)[0]
        trial = log_likelihood(w + step, design, y)
        for _ in range(MAX_HALVINGS):
            if trial >= current:
                break
            step = step / 2.0
            trial = log_likelihood(w + step, design, y)
        if trial < current:          # no step raises l any more: at the maximum
            return _unless_separated(w, design, y)
        w, current = w + step, trial
        if np.max(np.abs(step)) <= tol * (1.0 + np.max(np.abs(w))):
            return _unless_separated(w, design, y)
    raise ValueError(f"the logistic fit did not converge in {MAX_NEWTON_STEPS} Newton steps "
                     f"(is the outcome separated by the features?)")


def _unless_separated(w, design, y):
    """w, unless its linear predictor separates the outcomes completely: then the
    likelihood grows without bound along w and no finite MLE exists (Albert &
    Anderson 1984, Biometrika 71:1); Newton stops only where p saturates."""
    eta = design @ w
    if eta[y == 1].min() > eta[y == 0].max():
        raise ValueError("the outcome is separated by the features: the logistic fit has "
                         "no finite maximum-likelihood estimate")
    return w


@dataclass(frozen=True)
class LogisticModel:
    """p = expit(sum_j w_j x_j + w0) over named inputs (see pipeline.risk.model)."""

    inputs: tuple
    coefficients: tuple      # one per input, then the intercept

    def predict(self, x):
        w = np.asarray(self.coefficients, dtype=float)
        return expit(np.asarray(x, dtype=float) @ w[:-1] + w[-1])


def auc(scores, labels):
    """Mann-Whitney AUC, P(score of a positive > score of a negative) + P(tie)/2."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def auc_interval(scores, labels, confidence=CONFIDENCE):
    """(AUC, lower, upper): DeLong's variance, a normal interval clipped to [0, 1]."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 < 2 or n0 < 2:
        return float("nan"), float("nan"), float("nan")
    ranks = rankdata(scores)
    pos, neg = scores[labels], scores[~labels]
    v10 = (ranks[labels] - rankdata(pos)) / n0          # share of negatives below each positive
    v01 = 1.0 - (ranks[~labels] - rankdata(neg)) / n1   # share of positives above each negative
    value = float(v10.mean())
    se = np.sqrt(v10.var(ddof=1) / n1 + v01.var(ddof=1) / n0)
    z = norm.ppf(0.5 + confidence / 2.0)
    return value, float(max(0.0, value - z * se)), float(min(1.0, value + z * se))


def roc_curve(scores, labels):
    """(false-positive rate, true-positive rate) at every distinct threshold,
    from (0, 0) (nobody positive) to (1, 1)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]   # end of each tie group
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def brier(p, y):
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2))


def calibration_line(p, y):
    """(intercept, slope) of the logistic fit of y on logit(p); (0, 1) if calibrated."""
    x = logit(np.clip(np.asarray(p, dtype=float), _P_CLIP, 1.0 - _P_CLIP))
    slope, intercept = fit_logistic(x[:, None], y)
    return float(intercept), float(slope)


def calibration_table(p, y, n_bins=10, confidence=CONFIDENCE):
    """Per equal-count bin of p (deciles by default): n, mean predicted p,
    events, observed rate and its Wilson interval."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=bool)
    rank = np.empty(p.size, dtype=np.int64)
    rank[np.argsort(p, kind="stable")] = np.arange(p.size)
    frame = pd.DataFrame({"bin": rank * n_bins // max(p.size, 1), "p": p, "y": y})
    table = frame.groupby("bin").agg(n=("y", "size"), predicted=("p", "mean"),
                                     events=("y", "sum")).reset_index()
    table["observed"] = table["events"] / table["n"]
    table["lower"], table["upper"] = wilson_interval(table["events"], table["n"], confidence)
    return table
