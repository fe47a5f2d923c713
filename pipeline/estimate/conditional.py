"""Per-individual computations at given population parameters: the conditional
modes of phi_i (the empirical Bayes estimates) and the -2 log-likelihood by
importance sampling. Every evaluation covers all individuals in one batched
prediction.

Conditional mode: phi_i maximising p(y_i | phi) N(phi; m_i, Omega), i.e.
minimising J_i(phi) = -2 log p(y_i | phi) + (phi - m_i)' Omega^-1 (phi - m_i):
the maximum a posteriori fit of :func:`individual.fit_individuals` with the
prior :class:`individual.Prior` (m_i [N, P], Omega^-1), batched
Levenberg-Marquardt over all individuals, started from the given phi (the
conditional means), with the structural model's ``fd_step`` (suited to its
accuracy) or 1e-6 as the forward-difference step on the log scale. The
parameters without random effects stay at their fixed values
(:class:`EstimatedParameters`).

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

from pipeline.estimate.individual import Prior, fit_individuals
from pipeline.estimate.structural import StructuralModel

T_DEGREES = 5
STEP = 1e-6    # forward-difference step on the log scale, unless the model has its ``fd_step``
ROWS_PER_CALL = 200_000         # observation rows per batched prediction (importance sampling)


class EstimatedParameters(StructuralModel):
    """``observations.structural`` as a model of the estimated parameters only
    (phi's columns, natural scale), every other parameter at its fixed value."""

    def __init__(self, observations):
        structural = observations.structural
        names = [structural.parameter_names[k] for k in observations.estimated]
        super().__init__(structural.name, names, {n: structural.typical[n] for n in names},
                         {}, observations.names)
        self.fd_step = getattr(structural, "fd_step", STEP)
        self.bound = observations

    def _predict_many(self, theta, data):
        """One ``structural.predict`` for K x n individuals: the K parameter
        sets of theta[K, n, P] on K copies of ``data``."""
        k, n, _ = theta.shape
        full = np.tile(self.bound.fixed, (k * n, 1))
        full[:, self.bound.estimated] = theta.reshape(k * n, -1)
        copies = data.subset(np.tile(np.arange(n), k))
        with np.errstate(all="ignore"):
            predicted = self.bound.structural.predict(full, copies)
        return np.asarray(predicted, dtype=np.float64).reshape(k, -1)


def modes(observations, sigma, population, omega, start, iterations):
    """Conditional modes phi_i [N, P] (module docstring), from ``start`` [N, P]
    with at most ``iterations`` Levenberg-Marquardt steps; sigma [G] per
    observation name, population [N, P] the m_i."""
    fit = fit_individuals(EstimatedParameters(observations), observations.data,
                          observations.residual, dict(zip(observations.names, sigma)),
                          initial=np.exp(start),
                          prior=Prior(population, np.linalg.inv(omega)),
                          max_iterations=iterations)
    return np.log(fit.estimates)


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
