"""Fit typical parameter values to published targets, and say which the targets
do not identify.

Method. theta_j = ln(typical_j / start_j) for the fitted parameters; minimise
sum_i r_i(theta)^2, r_i the standardised residuals of
:mod:`pipeline.calibration.objective` (each target's (achieved - value)/sd),
with ``scipy.optimize.least_squares`` (trust-region reflective, forward-
difference Jacobian with a relative step of 1e-2 on ln theta), within
|theta_j| <= ln(bound_factor), until a step changes the objective or theta by
less than TOLERANCE (relative) or about ``max_evaluations`` cohort simulations
(an iteration costs one per fitted value plus one) have been spent.

Identifiability, at the solution: the local sensitivity matrix
J_ij = d r_i / d ln(typical_j) by forward differences (step 0.05 on the log
scale) for the fitted and the screened parameters. For the fitted ones,
Cov = pinv(J^T J) is the linearised covariance of ln(typical) that targets with
the stated sd imply; SE_j = sqrt(Cov_jj). A fitted parameter is *identified*
when SE_j <= IDENTIFIED_SE, i.e. the targets pin its typical value within a
factor 2 at one standard error; otherwise the targets leave it free (often
along a ridge with the parameter it is most correlated with, reported too).
The singular value decomposition J = U S V^T says what the targets do pin: the
combination sum_j V_jk ln(typical_j) is known to about 1 / S_k (ln units), so a
large S_k is a well-determined combination and one near 0 a combination the
targets cannot see.
"""
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from pipeline.calibration import objective

IDENTIFIED_SE = float(np.log(2.0))   # ln units: within a factor 2 at one SE
SENSITIVITY_STEP = 0.05       # ln units
DIFF_STEP = 1e-2
# the optimiser stops when a step changes the objective, or ln(typical), by less
# than this relative amount: far below what targets with sds of a few percent resolve
TOLERANCE = 1e-4


@dataclass(frozen=True)
class CalibrationResult:
    spec: object
    start: dict            # {fitted parameter: start value}
    fitted: dict           # {fitted parameter: value}
    typical: dict          # every parameter's typical value after the fit
    stats: list            # [(smoothed, plain)] per target at the fit
    residuals: np.ndarray
    cost: float            # sum of squared residuals
    evaluations: int
    success: bool
    message: str
    sensitivity: dict      # {parameter: column of J}
    se_log: dict           # {fitted parameter: SE of ln typical}
    partner: dict          # {fitted parameter: (most correlated fitted parameter, corr)}
    singular_values: np.ndarray
    combinations: np.ndarray   # V: column k is the combination of ln(fitted) of S_k
    trace: list            # [(evaluation, cost)]


def _sensitivities(spec, scenario, values, base, names):
    """{name: d residuals / d ln value} by forward differences."""
    columns = {}
    for name in names:
        moved = {**values, name: values[name] * np.exp(SENSITIVITY_STEP)}
        residuals, _ = objective.evaluate(spec, scenario, moved)
        columns[name] = (residuals - base) / SENSITIVITY_STEP
    return columns


def _identifiability(spec, sensitivity):
    jac = np.column_stack([sensitivity[name] for name in spec.fit])
    cov = np.linalg.pinv(jac.T @ jac)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(se, se)
    partner = {}
    for j, name in enumerate(spec.fit):
        if len(spec.fit) == 1:
            partner[name] = (None, np.nan)
            continue
        others = [k for k in range(len(spec.fit)) if k != j]
        k = max(others, key=lambda k: abs(np.nan_to_num(corr[j, k])))
        partner[name] = (spec.fit[k], float(corr[j, k]))
    _, singular, vt = np.linalg.svd(jac, full_matrices=False)
    return dict(zip(spec.fit, map(float, se))), partner, singular, vt.T


def calibrate(spec, start=None, progress=None):
    """Fit ``spec.fit`` (a :class:`~pipeline.calibration.targets.TargetsSpec`).

    ``start``: {parameter: value} over the scenario's typical values (default:
    none, start from the scenario's). ``progress(evaluation, cost)`` is called
    after every cohort simulation."""
    scenario = objective.cohort_scenario(spec)
    typical = {**objective.typical_values(scenario), **(start or {})}
    origin = np.array([typical[name] for name in spec.fit])
    trace = []

    def values_at(theta):
        return {**typical, **dict(zip(spec.fit, origin * np.exp(theta)))}

    def fun(theta):
        residuals, _ = objective.evaluate(spec, scenario, values_at(theta))
        trace.append((len(trace) + 1, float(residuals @ residuals)))
        if progress is not None:
            progress(*trace[-1])
        return residuals

    objective.check_columns(spec, scenario)
    bound = np.log(spec.bound_factor)
    # least_squares counts the base evaluations, not those of its finite-difference
    # Jacobian: with n fitted values an iteration costs about n + 1 simulations
    iterations = max(1, spec.max_evaluations // (len(spec.fit) + 1))
    fit = least_squares(fun, np.zeros(len(spec.fit)), bounds=(-bound, bound), method="trf",
                        diff_step=DIFF_STEP, max_nfev=iterations, x_scale=1.0,
                        ftol=TOLERANCE, xtol=TOLERANCE, gtol=TOLERANCE)
    final = values_at(fit.x)
    residuals, stats = objective.evaluate(spec, scenario, final)
    sensitivity = _sensitivities(spec, scenario, final, residuals, spec.fit + spec.screen)
    se, partner, singular, combinations = _identifiability(spec, sensitivity)
    return CalibrationResult(
        spec=spec, start=dict(zip(spec.fit, origin)),
        fitted={name: final[name] for name in spec.fit}, typical=final, stats=stats,
        residuals=residuals, cost=float(residuals @ residuals), evaluations=len(trace),
        success=bool(fit.success), message=str(fit.message), sensitivity=sensitivity,
        se_log=se, partner=partner, singular_values=singular, combinations=combinations,
        trace=trace)


def perturbed_start(spec, scenario_typical, fraction, seed):
    """Start values: each fitted typical value x U(1 - fraction, 1 + fraction),
    from ``numpy.random.default_rng(seed)`` (a reproducible perturbed start)."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(1.0 - fraction, 1.0 + fraction, len(spec.fit))
    return {name: scenario_typical[name] * f for name, f in zip(spec.fit, factors)}
