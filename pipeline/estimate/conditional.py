"""Per-individual computations at given population parameters: the conditional
modes of phi_i (the empirical Bayes estimates) and the -2 log-likelihood by
importance sampling. Every evaluation covers all individuals in one batched
prediction.

Conditional mode: phi_i maximising p(y_i | phi) N(phi; m_i, Omega), i.e.
minimising J_i(phi) = -2 log p(y_i | phi) + (phi - m_i)' W (phi - m_i),
W = Omega^-1, by Levenberg-Marquardt steps taken for every individual at once:

    delta_i = -(A_i + lambda_i diag(A_i))^-1 grad_i / 2,
    A_i = sum_j de_j/dphi de_j/dphi' + W

with e_j the residuals of :func:`residuals.objective_terms` (-2 log p(y_ij |
phi) = e_j^2 + c_j) and grad_i the forward-difference gradient of J_i itself
(so the fixed point is the exact mode also where c_j depends on phi, as in the
proportional model); one forward difference per parameter (P predictions) gives
both, with the structural model's ``fd_step`` (suited to its accuracy) or 1e-6.
lambda_i is divided by 3 after a step that lowers J_i and multiplied by 4 (the
step rejected) otherwise.

-2 log-likelihood: -2 sum_i log p(y_i) with

    p(y_i) = E_q[ p(y_i | phi) N(phi; m_i, Omega) / q_i(phi) ]

estimated by the mean over S draws of a Student t proposal q_i with 5 degrees
of freedom, centred on the conditional mean of phi_i with its conditional
covariance (both from the MCMC at the estimates), as Monolix does. The Monte
Carlo standard error is 2 sqrt(sum_i var(w_i) / (S mean(w_i)^2)) by the delta
method.
"""
import numpy as np
from scipy.special import gammaln, logsumexp

from pipeline.estimate.residuals import objective_terms

T_DEGREES = 5
STEP = 1e-6    # forward-difference step on the log scale, unless the model has its ``fd_step``
ROWS_PER_CALL = 200_000         # observation rows per batched prediction (importance sampling)


def _objective(observations, sigma, population, precision, phi):
    """(J [N], predictions) at phi [N, P]."""
    predicted = observations.predict(phi)
    d = phi - population
    prior = ((d @ precision) * d).sum(axis=1)
    return -2.0 * observations.log_likelihood(predicted, sigma) + prior, predicted


def _residuals(observations, sigma, predicted):
    data = observations.data
    return objective_terms(observations.residual, data.value, predicted,
                           observations.sigma_rows(sigma), data.blq)[0]


def _gauss_newton_matrix(observations, jacobian, precision):
    """A_i = sum over rows j of individual i of J_j J_j' + W: [N, P, P]."""
    n, p = observations.n_individuals, jacobian.shape[1]
    outer = (jacobian[:, :, None] * jacobian[:, None, :]).reshape(-1, p * p)
    rows = observations.data.individual
    summed = np.stack([np.bincount(rows, weights=outer[:, k], minlength=n)
                       for k in range(p * p)], axis=1)
    return summed.reshape(n, p, p) + precision[None]


def modes(observations, sigma, population, omega, start, iterations):
    """Conditional modes phi_i [N, P] (module docstring), from ``start``."""
    precision = np.linalg.inv(omega)
    phi = np.array(start, dtype=np.float64)
    objective, predicted = _objective(observations, sigma, population, precision, phi)
    damping = np.full(phi.shape[0], 1e-3)
    n_par = phi.shape[1]
    step_size = getattr(observations.structural, "fd_step", STEP)
    for _ in range(iterations):
        e = _residuals(observations, sigma, predicted)
        jacobian = np.zeros((e.size, n_par))
        gradient = np.zeros_like(phi)
        for p in range(n_par):
            shifted = phi.copy()
            shifted[:, p] += step_size
            value, shifted_prediction = _objective(observations, sigma, population,
                                                   precision, shifted)
            gradient[:, p] = (value - objective) / step_size
            jacobian[:, p] = (_residuals(observations, sigma, shifted_prediction)
                              - e) / step_size
        gradient = np.where(np.isfinite(gradient), gradient, 0.0)
        jacobian = np.where(np.isfinite(jacobian), jacobian, 0.0)
        matrix = _gauss_newton_matrix(observations, jacobian, precision)
        diagonal = np.einsum("npp->np", matrix)
        damped = matrix + (damping[:, None] * diagonal)[:, :, None] * np.eye(n_par)[None]
        step = -np.linalg.solve(damped, 0.5 * gradient[:, :, None])[:, :, 0]
        trial_objective, trial_prediction = _objective(observations, sigma, population,
                                                       precision, phi + step)
        better = trial_objective < objective
        phi[better] += step[better]
        objective = np.where(better, trial_objective, objective)
        rows = observations.data.individual
        predicted = np.where(better[rows], trial_prediction, predicted)
        damping = np.where(better, damping / 3.0, damping * 4.0)
    return phi


def _log_t_density(x, centre, cholesky, degrees):
    """log density of the multivariate Student t (location centre, scale
    matrix L L') at x, all [N, P] (cholesky [N, P, P])."""
    p = x.shape[1]
    z = np.linalg.solve(cholesky, (x - centre)[:, :, None])[:, :, 0]
    log_det = 2.0 * np.log(np.einsum("npp->np", cholesky)).sum(axis=1)
    return (gammaln((degrees + p) / 2) - gammaln(degrees / 2)
            - 0.5 * p * np.log(degrees * np.pi) - 0.5 * log_det
            - 0.5 * (degrees + p) * np.log1p((z * z).sum(axis=1) / degrees))


def _log_normal_density(x, mean, omega):
    p = x.shape[1]
    cholesky = np.linalg.cholesky(omega)
    z = np.linalg.solve(cholesky, (x - mean).T).T
    log_det = 2.0 * np.log(np.diag(cholesky)).sum()
    return -0.5 * (p * np.log(2 * np.pi) + log_det + (z * z).sum(axis=1))


def _proposal_cholesky(cov):
    """Cholesky factors of the conditional covariances, made positive definite."""
    p = cov.shape[1]
    ridge = 1e-8 + 1e-6 * np.einsum("npp->n", cov)[:, None, None] / p
    return np.linalg.cholesky(0.5 * (cov + np.swapaxes(cov, 1, 2)) + ridge * np.eye(p))


def _tiled(values, copies):
    """``copies`` copies of per-individual values stacked along the first axis."""
    return np.tile(values, (copies,) + (1,) * (values.ndim - 1))


def log_weights(observations, sigma, population, omega, centre, cov, samples, rng):
    """log importance weights [S, N] of ``samples`` draws per individual."""
    n, p = centre.shape
    cholesky = _proposal_cholesky(cov)
    batch = int(max(1, min(samples, ROWS_PER_CALL // max(1, observations.data.n_observations))))
    replicated = observations.replicated(batch)
    weights = []
    for start in range(0, samples, batch):
        copies = min(batch, samples - start)
        z = rng.standard_normal((batch, n, p))
        scale = np.sqrt(rng.chisquare(T_DEGREES, size=(batch, n, 1)) / T_DEGREES)
        phi = (centre[None] + np.einsum("npq,bnq->bnp", cholesky, z) / scale).reshape(-1, p)
        loglik = replicated.log_likelihood(replicated.predict(phi), sigma)
        log_w = (loglik + _log_normal_density(phi, _tiled(population, batch), omega)
                 - _log_t_density(phi, _tiled(centre, batch), _tiled(cholesky, batch),
                                  T_DEGREES))
        weights.append(log_w.reshape(batch, n)[:copies])
    return np.concatenate(weights, axis=0)


def minus_two_log_likelihood(observations, sigma, population, omega, centre, cov,
                             samples, rng):
    """(-2 log-likelihood, its Monte Carlo standard error) by importance sampling."""
    log_w = log_weights(observations, sigma, population, omega, centre, cov, samples, rng)
    s = log_w.shape[0]
    log_mean = logsumexp(log_w, axis=0) - np.log(s)
    relative = np.exp(log_w - log_mean[None])            # w / mean(w), per individual
    variance = relative.var(axis=0, ddof=1) / s if s > 1 else np.zeros_like(log_mean)
    return float(-2.0 * log_mean.sum()), float(2.0 * np.sqrt(variance.sum()))
