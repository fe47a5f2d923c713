"""Expected-utility decisions: whom to give CRS prophylaxis.

Four utilities, one per (decision, outcome): U_TP severe CRS and treated, U_FP
no severe CRS but treated, U_TN no severe CRS and not treated, U_FN severe CRS
not treated. For a patient with probability p of severe CRS

    EU(treat)    = p U_TP + (1 - p) U_FP
    EU(no treat) = p U_FN + (1 - p) U_TN

and treating is optimal iff p > tau, with B = U_TP - U_FN (benefit of treating a
case) and H = U_TN - U_FP (harm of treating a non-case), both > 0,

    tau = H / (H + B) = (U_TN - U_FP) / ((U_TN - U_FP) + (U_TP - U_FN))

(the treatment threshold of Pauker & Kassirer 1980, NEJM 302:1109).

A policy d (treat or not, per patient) on a cohort with observed outcomes y has
realised utilities u_i = U(d_i, y_i) and expected utility per patient EU = mean
u_i, with the normal interval mean +- z sd(u)/sqrt(n) (the p and tau are fixed
before the test cohort is seen, so the u_i are independent). Policies compared
on the same patients: the paired difference mean(u_a - u_b) with the interval
from sd(u_a - u_b).

Decision curve (Vickers & Elkin 2006, Med Decis Making 26:565): for "treat when
p > pt", net benefit NB(pt) = TP/n - FP/n pt/(1 - pt); treat-all
NB = prevalence - (1 - prevalence) pt/(1 - pt); treat-none NB = 0. At pt = tau,
EU(policy) - EU(treat none) = B NB(tau): the curve is the utility gain in units
of B.

Default utilities (illustrative, a 0-1 scale where 1 = neither severe CRS nor
prophylaxis; assumptions, not published estimates): U_TN = 1; U_FP = 0.95
(prophylaxis given in vain: its harms, e.g. infection risk, and cost, -0.05);
U_FN = 0.6 (untreated severe CRS, -0.4); U_TP = 0.8 (prophylaxis averts half of
that loss). Then B = 0.2, H = 0.05 and tau = 0.2: one severe CRS averted is worth
four courses of prophylaxis given in vain (H / B = tau / (1 - tau) = 1/4).
"""
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipeline.aggregate import CONFIDENCE

TREAT_NONE, TREAT_ALL = "treat none", "treat all"


@dataclass(frozen=True)
class Utilities:
    """U_TP, U_FP, U_TN, U_FN (module docstring); needs U_TP > U_FN and U_TN > U_FP."""

    tp: float = 0.8
    fp: float = 0.95
    tn: float = 1.0
    fn: float = 0.6

    def __post_init__(self):
        if not (self.tp > self.fn and self.tn > self.fp):
            raise ValueError(f"utilities need U_TP > U_FN (treating a case helps) and "
                             f"U_TN > U_FP (treating a non-case harms), got {asdict(self)}")

    @property
    def benefit(self):
        return self.tp - self.fn

    @property
    def harm(self):
        return self.tn - self.fp

    @property
    def threshold(self):
        """tau = H / (H + B)."""
        return self.harm / (self.harm + self.benefit)

    def realised(self, treat, event):
        """u_i = U(d_i, y_i) per patient."""
        treat, event = np.asarray(treat, dtype=bool), np.asarray(event, dtype=bool)
        return np.where(treat, np.where(event, self.tp, self.fp),
                        np.where(event, self.fn, self.tn))

    def expected(self, p, treat):
        """E[u | p] of treating (True) or not (False) a patient with probability p."""
        p = np.asarray(p, dtype=float)
        return np.where(treat, p * self.tp + (1.0 - p) * self.fp,
                        p * self.fn + (1.0 - p) * self.tn)


DEFAULT_UTILITIES = Utilities()


def mean_interval(values, confidence=CONFIDENCE):
    """(mean, lower, upper): normal interval mean +- z sd/sqrt(n)."""
    values = np.asarray(values, dtype=float)
    z = norm.ppf(0.5 + confidence / 2.0)
    half = z * values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else np.nan
    mean = float(values.mean())
    return mean, float(mean - half), float(mean + half)


def policies(probabilities, tau, n):
    """{policy name: treat per patient} for n patients: treat none, treat all, and
    "p_<name> > tau" for every {name: p} in ``probabilities``."""
    found = {TREAT_NONE: np.zeros(n, dtype=bool), TREAT_ALL: np.ones(n, dtype=bool)}
    found.update({f"p_{name} > tau": np.asarray(p) > tau for name, p in probabilities.items()})
    return found


def policy_table(probabilities, event, utilities, confidence=CONFIDENCE):
    """Expected utility per patient of every policy of :func:`policies` on the
    observed outcomes ``event``, with intervals, and the paired differences
    against treat-all and treat-none (same patients)."""
    decided = policies(probabilities, utilities.threshold, len(event))
    realised = {name: utilities.realised(treat, event) for name, treat in decided.items()}
    rows = []
    for name, u in realised.items():
        row = {"policy": name, "treated": float(decided[name].mean())}
        row["expected_utility"], row["lower"], row["upper"] = mean_interval(u, confidence)
        for other, key in ((TREAT_ALL, "vs_treat_all"), (TREAT_NONE, "vs_treat_none")):
            row[key], row[f"{key}_lower"], row[f"{key}_upper"] = \
                mean_interval(u - realised[other], confidence)
        rows.append(row)
    return pd.DataFrame(rows)


def net_benefit(p, event, thresholds):
    """NB(pt) of "treat when p > pt" at every pt in ``thresholds``."""
    p, event = np.asarray(p, dtype=float), np.asarray(event, dtype=bool)
    pt = np.asarray(thresholds, dtype=float)
    treat = p[None, :] > pt[:, None]
    tp = np.sum(treat & event[None, :], axis=1) / p.size
    fp = np.sum(treat & ~event[None, :], axis=1) / p.size
    return tp - fp * pt / (1.0 - pt)


def decision_curve(probabilities, event, thresholds):
    """Net benefit across thresholds: a column per {name: p}, treat all, treat none."""
    event = np.asarray(event, dtype=bool)
    pt = np.asarray(thresholds, dtype=float)
    prevalence = event.mean()
    table = pd.DataFrame({"threshold": pt,
                          TREAT_ALL: prevalence - (1.0 - prevalence) * pt / (1.0 - pt),
                          TREAT_NONE: np.zeros(pt.size)})
    for name, p in probabilities.items():
        table[f"p_{name}"] = net_benefit(p, event, pt)
    return table
