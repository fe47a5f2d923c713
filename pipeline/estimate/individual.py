"""Individual fits: batched Levenberg-Marquardt over all individuals at once.

Each individual i has its own parameters, on the log scale eta_i = log theta_i
(theta > 0), its own damping and its own convergence. The objective is

    F_i(eta) = -2 log-likelihood of i's observations (:mod:`residuals`)
               [+ (eta - mu_i)^T Omega^-1 (eta - mu_i)   with a Gaussian prior]
             = sum_m e_m^2 + sum_m c_m  [+ |L^T (eta - mu_i)|^2,  Omega^-1 = L L^T]

with e the weighted residuals and c the normalising terms
(:func:`~pipeline.estimate.residuals.objective_terms`). For the additive and
lognormal error models c is constant, so this is weighted least squares and
maximum likelihood at once; for the proportional model c = 2 log(sigma f) + const
is kept in the objective and its gradient. With a prior the minimum is the
maximum a posteriori (empirical Bayes) estimate.

One iteration, for all active individuals together:

1. step: (J^T J + lambda D) delta = -(J^T e + grad(sum c) / 2 [+ prior]),
   D = diag(J^T J) (Marquardt's scaling, floored), delta capped at
   ``max_step`` on the log scale, solved as a batch of P x P systems;
2. evaluate the trial point eta + delta AND its P forward-difference
   perturbations eta + delta + h u_j in ONE structural ``predict_many`` call
   (N x (P + 1) parameter vectors, times S with S starts per individual: one
   batched kernel call for ODE models), so an accepted trial already has its
   Jacobian J = (e(eta + h u_j) - e(eta)) / h;
3. accept where F decreases (Nielsen's damping update: lambda *= max(1/3,
   1 - (2 rho - 1)^3) with rho the actual over the predicted reduction), else
   lambda *= nu, nu *= 2.

An individual stops when an accepted step reduces F by less than
``ftol (1 + sum e^2)``, or a step is shorter than ``xtol`` on the log scale
(rejected steps shrink to that size at a minimum that the predictions' noise
hides), or after ``max_iterations``. Standard errors of the log parameters
come from (J^T J [+ Omega^-1])^-1 at the estimate: the inverse of the
Gauss-Newton information, the (J^T W J)^-1 of weighted least squares.

Starts: the model's ``initial_estimates(data)`` gives S starting points per
individual (the Stein models start from the observed peak, with three
candidate Tmax: their closed form has a kink wherever Tmax equals a sampling
time, so the objective can have a local minimum between each pair of sampling
times). All S x N fits run in the same batch and each individual keeps the
start with the lowest objective.
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.estimate.data import require_positive
from pipeline.estimate.residuals import check_model, objective_terms

RUNNING, CONVERGED, MAX_ITERATIONS, INVALID_START = 0, 1, 2, 3
STATUS_NAMES = {RUNNING: "running", CONVERGED: "converged",
                MAX_ITERATIONS: "max_iterations", INVALID_START: "invalid_start"}


@dataclass(frozen=True)
class Prior:
    """Gaussian prior on the log parameters: log theta_i ~ N(mean_log[i], Omega),
    ``mean_log`` float64[N, P] or [P], ``precision`` = Omega^-1, float64[P, P]."""

    mean_log: np.ndarray
    precision: np.ndarray


@dataclass(frozen=True)
class IndividualFit:
    """Per-individual estimates (rows follow ``ids``).

    ``estimates`` [N, P] natural scale; ``se_log`` [N, P] standard errors of
    the log parameters (about the relative standard errors); ``covariance_log``
    [N, P, P]; ``objective`` [N] the final F_i; ``status`` [N] int8
    (:data:`STATUS_NAMES`), ``converged`` [N] bool, ``iterations`` [N];
    ``predicted`` and ``residuals`` [M]: predictions and weighted residuals e
    at the estimates, per observation row of the data.
    """

    ids: np.ndarray
    parameter_names: tuple
    estimates: np.ndarray
    se_log: np.ndarray
    covariance_log: np.ndarray
    objective: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    predicted: np.ndarray
    residuals: np.ndarray

    @property
    def converged(self):
        return self.status == CONVERGED

    def to_frame(self):
        """One row per individual: id, each parameter and its se_log, objective,
        status, iterations."""
        columns = {"id": self.ids}
        for j, name in enumerate(self.parameter_names):
            columns[name] = self.estimates[:, j]
            columns[f"se_log_{name}"] = self.se_log[:, j]
        columns.update(objective=self.objective,
                       status=[STATUS_NAMES[s] for s in self.status],
                       iterations=self.iterations)
        return pd.DataFrame(columns)


def observation_sigma(sigma, data):
    """float64[M]: sigma per observation from a number or {observation name: number}."""
    if isinstance(sigma, dict):
        missing = sorted(set(data.name) - set(sigma))
        if missing:
            raise ValueError(f"sigma has no value for observations {missing}")
        return np.array([sigma[n] for n in data.name], dtype=np.float64)
    return np.full(data.n_observations, float(sigma))


class _Evaluator:
    """F, e, c, J and grad(sum c) at K = P + 1 points per individual of a subset."""

    def __init__(self, structural, data, error_model, sigma, prior, step):
        self.structural, self.data, self.error_model = structural, data, error_model
        self.sigma, self.prior, self.step = sigma, prior, step

    def __call__(self, individuals, eta):
        """Objective pieces of ``individuals`` (indices into data) at eta[n, P]."""
        sub = self.data.subset(individuals)
        obs = self.data.observation_indices(individuals)
        p = eta.shape[1]
        points = np.repeat(eta[None], p + 1, axis=0)
        points[1:] += self.step * np.eye(p)[:, None, :]
        with np.errstate(over="ignore"):
            predicted = self.structural.predict_many(np.exp(points), sub)     # [P+1, m]
        e, c = objective_terms(self.error_model, sub.value[None], predicted,
                               self.sigma[obs][None], sub.blq[None])
        starts = sub.starts[:-1]
        with np.errstate(invalid="ignore", over="ignore"):   # invalid points: non-finite
            jacobian = ((e[1:] - e[0]) / self.step).T                        # [m, P]
            grad_c = (np.add.reduceat(c[1:] - c[0], starts, axis=1) / self.step).T  # [n, P]
            objective = np.add.reduceat(e[0] ** 2 + c[0], starts)
            jtj = np.add.reduceat(jacobian[:, :, None] * jacobian[:, None, :], starts, axis=0)
            half_gradient = (np.add.reduceat(jacobian * e[0][:, None], starts, axis=0)
                             + grad_c / 2)
        if self.prior is not None:
            deviation = eta - self.prior_mean(individuals)
            precision = self.prior.precision
            objective = objective + np.einsum("np,pq,nq->n", deviation, precision, deviation)
            jtj = jtj + precision
            half_gradient = half_gradient + deviation @ precision
        finite = (np.isfinite(objective) & np.isfinite(jtj).all(axis=(1, 2))
                  & np.isfinite(half_gradient).all(axis=1))
        objective = np.where(finite, objective, np.inf)
        sum_sq = np.add.reduceat(e[0] ** 2, starts)
        return dict(objective=objective, jtj=jtj, gradient=half_gradient, sum_sq=sum_sq,
                    obs=obs, predicted=predicted[0], residuals=e[0])

    def prior_mean(self, individuals):
        mean = np.asarray(self.prior.mean_log, dtype=np.float64)
        return mean[individuals] if mean.ndim == 2 else mean[None, :]


def _solve_steps(jtj, gradient, damping, max_step):
    """delta[n, P] from (J^T J + lambda D) delta = -gradient, capped at max_step,
    and the predicted reduction of F."""
    diagonal = np.diagonal(jtj, axis1=1, axis2=2)
    floor = 1e-12 * np.maximum(diagonal.max(axis=1, keepdims=True), 1e-300)
    scaling = np.maximum(diagonal, floor)
    system = jtj + damping[:, None, None] * (scaling[:, :, None] * np.eye(jtj.shape[1]))
    delta = -np.linalg.solve(system, gradient[:, :, None])[:, :, 0]
    longest = np.abs(delta).max(axis=1)
    delta *= np.minimum(1.0, max_step / np.maximum(longest, 1e-300))[:, None]
    predicted = -(2 * np.einsum("np,np->n", gradient, delta)
                  + np.einsum("np,npq,nq->n", delta, jtj, delta))
    return delta, predicted


def _inverse(jtj):
    """Batched inverse; NaN for a singular or non-finite matrix."""
    usable = np.isfinite(jtj).all(axis=(1, 2))
    out = np.full_like(jtj, np.nan)
    try:
        out[usable] = np.linalg.inv(jtj[usable])
    except np.linalg.LinAlgError:
        for i in np.flatnonzero(usable):
            try:
                out[i] = np.linalg.inv(jtj[i])
            except np.linalg.LinAlgError:
                pass
    return out


def _standard_errors(covariance):
    """sqrt of the diagonal; NaN where it is not positive (a numerically singular J^T J)."""
    variance = np.diagonal(covariance, axis1=1, axis2=2)
    return np.sqrt(np.where(variance > 0, variance, np.nan))


def _starts(structural, data, initial):
    """float64[S, N, P] starting values from ``initial`` ([P], [N, P] or [S, N, P])."""
    n, p = data.n_individuals, structural.n_parameters
    start = structural.initial_estimates(data) if initial is None else initial
    start = np.asarray(start, dtype=np.float64)
    if start.ndim < 3:
        start = np.broadcast_to(start, (n, p))[None]
    if start.shape[1:] != (n, p):
        raise ValueError(f"initial has shape {start.shape}; expected (P,), (N, P) or (S, N, P) "
                         f"with N = {n}, P = {p}")
    return start


def _levenberg_marquardt(evaluate, eta, individual, max_iterations, ftol, xtol, lambda0,
                         max_step):
    """The iterations of the module docstring for all rows of eta[n, P] at once."""
    n = eta.shape[0]
    current = evaluate(np.arange(n), eta)
    objective, jtj, gradient = current["objective"], current["jtj"], current["gradient"]
    sum_sq = current["sum_sq"]
    predicted, residuals = current["predicted"].copy(), current["residuals"].copy()
    first = RUNNING if max_iterations > 0 else MAX_ITERATIONS
    status = np.where(np.isfinite(objective), first, INVALID_START).astype(np.int8)
    damping, nu = np.full(n, float(lambda0)), np.full(n, 2.0)
    iterations = np.zeros(n, np.int64)

    while True:
        active = np.flatnonzero(status == RUNNING)
        if active.size == 0:
            break
        delta, predicted_reduction = _solve_steps(jtj[active], gradient[active],
                                                  damping[active], max_step)
        trial = evaluate(active, eta[active] + delta)
        iterations[active] += 1
        reduction = objective[active] - trial["objective"]
        accepted = np.isfinite(trial["objective"]) & (reduction > 0)
        rho = reduction / np.maximum(predicted_reduction, 1e-300)

        good = active[accepted]
        eta[good] += delta[accepted]
        objective[good] = trial["objective"][accepted]
        jtj[good], gradient[good] = trial["jtj"][accepted], trial["gradient"][accepted]
        sum_sq[good] = trial["sum_sq"][accepted]
        rows = trial["obs"][np.isin(individual[trial["obs"]], good)]
        kept = np.isin(individual[trial["obs"]], good)
        predicted[rows], residuals[rows] = trial["predicted"][kept], trial["residuals"][kept]
        damping[good] *= np.maximum(1 / 3, 1 - (2 * rho[accepted] - 1) ** 3)
        nu[good] = 2.0
        bad = active[~accepted]
        damping[bad] *= nu[bad]
        nu[bad] *= 2.0

        small_step = np.abs(delta).max(axis=1) < xtol
        flat = accepted & (reduction < ftol * (1.0 + sum_sq[active]))
        status[active[small_step | flat]] = CONVERGED
        status[active[(status[active] == RUNNING) & (iterations[active] >= max_iterations)]] \
            = MAX_ITERATIONS
    return dict(eta=eta, objective=objective, jtj=jtj, status=status, iterations=iterations,
                predicted=predicted, residuals=residuals)


def fit_individuals(structural, data, error_model, sigma, *, initial=None, prior=None,
                    max_iterations=200, ftol=1e-10, xtol=1e-8, lambda0=1e-3, max_step=2.0,
                    fd_step=None):
    """Fit every individual of ``data`` by batched Levenberg-Marquardt (module docstring).

    Parameters
    ----------
    structural : StructuralModel (:func:`pipeline.estimate.structural.get_structural`)
    data : Dataset
    error_model : "additive", "proportional" or "lognormal"
    sigma : residual parameter, a number or {observation name: number}
    initial : starting values (natural scale), float64[P], [N, P] or [S, N, P]
              (S starts per individual, all run in the same batch; the lowest
              objective wins); default the model's ``initial_estimates(data)``
    prior : Prior or None   Gaussian prior on log parameters (MAP / empirical Bayes)
    max_iterations : int    trial evaluations per individual (0: the starts are kept)
    ftol, xtol : stopping tolerances (module docstring)
    lambda0 : initial damping; max_step : largest step on the log scale
    fd_step : forward-difference step on the log scale (default: the model's)

    Returns
    -------
    IndividualFit
    """
    check_model(error_model)
    structural.check(data)
    if error_model == "lognormal":
        require_positive(data, "the lognormal error model")
    start = _starts(structural, data, initial)
    n_starts, n, p = start.shape
    work = data if n_starts == 1 else data.subset(np.tile(np.arange(n), n_starts))
    if prior is not None and np.ndim(prior.mean_log) == 2:
        prior = Prior(np.tile(prior.mean_log, (n_starts, 1)), prior.precision)
    evaluate = _Evaluator(structural, work, error_model, observation_sigma(sigma, work), prior,
                          structural.fd_step if fd_step is None else fd_step)
    result = _levenberg_marquardt(evaluate, np.log(start).reshape(n_starts * n, p),
                                  work.individual, max_iterations, ftol, xtol, lambda0,
                                  max_step)

    # per individual, the start with the lowest objective (inf: an invalid start)
    best = np.argmin(result["objective"].reshape(n_starts, n), axis=0)
    pick = best * n + np.arange(n)
    obs_pick = best[data.individual] * data.n_observations + np.arange(data.n_observations)
    covariance = _inverse(result["jtj"][pick])
    se_log = _standard_errors(covariance)
    return IndividualFit(data.ids, structural.parameter_names, np.exp(result["eta"][pick]),
                         se_log, covariance, result["objective"][pick], result["status"][pick],
                         result["iterations"][pick], result["predicted"][obs_pick],
                         result["residuals"][obs_pick])
