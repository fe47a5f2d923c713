"""The SAEM E-step: Metropolis-Hastings kernels for the individual log
parameters phi_i, every proposal of every chain of every individual evaluated
with one batched prediction.

Target, for each row r (chain c of individual i, r = c*N + i)::

    p(phi_r | y_i) ~ p(y_i | phi_r) N(phi_r; m_i, Omega),   m_i = X_i @ coef

Kernels (those of Monolix; Kuhn & Lavielle 2005, Comput Stat Data Anal 49:1020,
section 3):

1. independent proposals from the population distribution,
   phi* = m_i + chol(Omega) z; accepted with probability
   min(1, p(y|phi*) / p(y|phi)) (the prior cancels);
2. a random walk on one component p at a time, phi*_p = phi_p + s_p omega_p z;
3. a random walk on all components together, phi* = phi + b s * omega * z;
   2 and 3 are accepted with min(1, p(y|phi*) N(phi*) / (p(y|phi) N(phi))).

The step scales s_p (kernel 2) and b (kernel 3) adapt towards an acceptance
rate of 0.4 and 0.3: s <- s (1 + 0.4 (rate - target)) after each pass.
Every kernel is a reversible Metropolis-Hastings kernel with the target as its
invariant distribution (with adaptation off, the chain is exactly invariant).
"""
from dataclasses import dataclass

import numpy as np

TARGET_RATE = {2: 0.4, 3: 0.3}
ADAPTATION = 0.4


@dataclass(frozen=True, eq=False)
class Target:
    """The conditional distributions of all rows: ``observations`` (replicated
    once per chain), population mean[R, P], ``omega`` [P, P], ``sigma`` [G]."""

    observations: object
    mean: np.ndarray
    omega: np.ndarray
    sigma: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "cholesky", np.linalg.cholesky(self.omega))
        object.__setattr__(self, "precision", np.linalg.inv(self.omega))
        object.__setattr__(self, "scale", np.sqrt(np.diag(self.omega)))

    def log_prior(self, phi):
        """log N(phi; mean, Omega) up to a constant, per row."""
        d = phi - self.mean
        return -0.5 * ((d @ self.precision) * d).sum(axis=1)

    def log_likelihood(self, phi):
        """(log p(y | phi) per row, predictions): one batched prediction."""
        predicted = self.observations.predict(phi)
        return self.observations.log_likelihood(predicted, self.sigma), predicted

    def draw_prior(self, rng):
        return self.mean + rng.standard_normal(self.mean.shape) @ self.cholesky.T


@dataclass(eq=False)
class Chains:
    """The current state of every row: phi, its predictions and log p(y | phi);
    the random-walk scales of kernels 2 (per component) and 3."""

    phi: np.ndarray
    predicted: np.ndarray
    loglik: np.ndarray
    steps: np.ndarray
    block: float = 0.5

    @classmethod
    def start(cls, target, phi=None):
        """Chains at ``phi`` (default: the population mean)."""
        phi = target.mean.copy() if phi is None else np.array(phi, dtype=np.float64)
        loglik, predicted = target.log_likelihood(phi)
        return cls(phi, predicted, loglik, np.full(phi.shape[1], 0.5))

    def refresh(self, target):
        """Recompute log p(y | phi) after sigma changed (phi and predictions stay)."""
        self.loglik = target.observations.log_likelihood(self.predicted, target.sigma)


def _accept(chains, target, proposal, log_ratio_prior, rng):
    """Metropolis step for every row; returns the accepted mask."""
    loglik, predicted = target.log_likelihood(proposal)
    with np.errstate(invalid="ignore"):
        log_ratio = loglik - chains.loglik + log_ratio_prior
    log_ratio = np.where(np.isnan(log_ratio), -np.inf, log_ratio)
    accepted = np.log(rng.uniform(size=log_ratio.shape)) < log_ratio
    chains.phi[accepted] = proposal[accepted]
    chains.loglik[accepted] = loglik[accepted]
    rows = target.observations.data.individual
    chains.predicted = np.where(accepted[rows], predicted, chains.predicted)
    return accepted


def _random_walk(chains, target, rng, delta):
    proposal = chains.phi + delta
    prior = target.log_prior(proposal) - target.log_prior(chains.phi)
    return _accept(chains, target, proposal, prior, rng)


def _adapt(step, rate, kernel):
    return step * (1.0 + ADAPTATION * (rate - TARGET_RATE[kernel]))


def sweep(chains, target, rng, kernels=(2, 2, 2), adapt=True):
    """One E-step iteration: ``kernels[k]`` passes of kernel k + 1 (module
    docstring); kernel 2 makes one pass per component. Returns the mean
    acceptance rate of each kernel (NaN for a kernel not run)."""
    n_prior, n_component, n_block = kernels
    rows, n_par = chains.phi.shape
    rates = np.full(3, np.nan)
    if n_prior:
        accepted = [_accept(chains, target, target.draw_prior(rng), 0.0, rng).mean()
                    for _ in range(n_prior)]
        rates[0] = np.mean(accepted)
    if n_component:
        accepted = []
        for _ in range(n_component):
            for p in range(n_par):
                delta = np.zeros((rows, n_par))
                delta[:, p] = chains.steps[p] * target.scale[p] * rng.standard_normal(rows)
                rate = _random_walk(chains, target, rng, delta).mean()
                if adapt:
                    chains.steps[p] = _adapt(chains.steps[p], rate, 2)
                accepted.append(rate)
        rates[1] = np.mean(accepted)
    if n_block:
        accepted = []
        for _ in range(n_block):
            delta = (chains.block * chains.steps * target.scale
                     * rng.standard_normal((rows, n_par)))
            rate = _random_walk(chains, target, rng, delta).mean()
            if adapt:
                chains.block = _adapt(chains.block, rate, 3)
            accepted.append(rate)
        rates[2] = np.mean(accepted)
    return rates
