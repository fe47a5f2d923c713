"""The conditional likelihood p(y_i | phi_i) of every individual in one batched
prediction, censored observations (M3) and their imputation, and simulation
of observations.

Several copies of the individuals (Markov chains, importance samples,
simulation replicates) are evaluated together: :meth:`Observations.replicated`
stacks ``copies`` copies of a dataset (``Dataset.subset`` with the indices
tiled), copy c holding individuals c*N .. c*N + N - 1, so
``structural.predict`` is called once for all of them.

Residual scale. With the residual models of :mod:`pipeline.estimate.residuals`
every uncensored observation has a residual on a Gaussian scale

    e = (y - f)            additive       e ~ N(0, sigma^2)
    e = (y - f) / f        proportional   e ~ N(0, sigma^2)
    e = log y - log f      lognormal      e ~ N(0, sigma^2)

so the complete-data residual log-likelihood depends on sigma^2 only through
the counts and sums of squares of e per observation name: the SAEM M-step for
sigma^2 is their ratio. A censored observation (below the limit L) has
e <= e_L (e_L: the same transform of L); for the M-step and the Fisher
information it is imputed from N(0, sigma^2) truncated to e <= e_L, which is
its conditional distribution given phi (Samson, Lavielle & Mentre 2006,
Comput Stat Data Anal 51:1562), while the E-step's acceptance ratios use the
M3 probability Phi(e_L / sigma) itself.
"""
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import log_ndtr, ndtri

from pipeline.estimate.data import Dataset
from pipeline.estimate.residuals import check_model, log_likelihood, weighted_residuals


@dataclass(frozen=True, eq=False)
class Observations:
    """A dataset (already replicated ``copies`` times) bound to a structural
    model and a residual model.

    ``estimated``  indices (into ``structural.parameter_names``) of the P
                   parameters with random effects, in the order of phi's columns
    ``fixed``      float64[P_model]: the value of every other parameter
    ``groups``     int[M], the observation name index of each row (one sigma per name)
    ``names``      the observation names, in order of first appearance
    """

    structural: object
    data: Dataset
    residual: str
    estimated: np.ndarray
    fixed: np.ndarray
    groups: np.ndarray
    names: tuple
    copies: int = 1

    @classmethod
    def bind(cls, structural, data, residual, parameters, fixed_values):
        """``parameters``: names of the estimated parameters; ``fixed_values``:
        {name: value} for the others (default: the model's typical value)."""
        check_model(residual)
        model_names = tuple(structural.parameter_names)
        estimated = np.array([model_names.index(p) for p in parameters], dtype=np.intp)
        fixed = np.array([float(fixed_values.get(p, structural.typical[p]))
                          for p in model_names])
        names, first = np.unique(data.name, return_index=True)
        names = tuple(str(n) for n in names[np.argsort(first)])
        groups = np.array([names.index(n) for n in data.name], dtype=np.intp)
        return cls(structural, data, residual, estimated, fixed, groups, names)

    def replicated(self, copies):
        """The same observations for ``copies`` copies of every individual."""
        copies_of_individuals = np.tile(np.arange(self.n_individuals), copies)
        return replace(self, data=self.data.subset(copies_of_individuals),
                       groups=np.tile(self.groups, copies), copies=copies * self.copies)

    @property
    def n_individuals(self):
        return self.data.n_individuals

    @property
    def n_groups(self):
        return len(self.names)

    def theta(self, phi):
        """float64[N, P_model]: exp(phi) in the estimated columns, fixed values elsewhere."""
        theta = np.tile(self.fixed, (phi.shape[0], 1))
        with np.errstate(over="ignore"):
            theta[:, self.estimated] = np.exp(phi)
        return theta

    def predict(self, phi):
        """Predictions at every observation row for log parameters phi[N, P]:
        one ``structural.predict`` call."""
        with np.errstate(all="ignore"):
            return np.asarray(self.structural.predict(self.theta(phi), self.data),
                              dtype=np.float64)

    def sigma_rows(self, sigma):
        return np.asarray(sigma, dtype=np.float64)[self.groups]

    def per_individual(self, values):
        return np.bincount(self.data.individual, weights=values,
                           minlength=self.n_individuals)

    def log_likelihood(self, predicted, sigma):
        """log p(y_i | phi_i) per individual, float64[N] (-inf where a prediction
        is invalid): the sum of :func:`residuals.log_likelihood` over its rows."""
        rows = log_likelihood(self.residual, self.data.value, predicted,
                              self.sigma_rows(sigma), self.data.blq)
        rows = np.where(np.isnan(rows), -np.inf, rows)
        with np.errstate(invalid="ignore"):
            total = self.per_individual(rows)
        return np.where(np.isnan(total), -np.inf, total)

    def residuals(self, predicted, sigma, rng):
        """e per row (module docstring), censored rows imputed from their
        truncated normal given the predictions."""
        e = weighted_residuals(self.residual, self.data.value, predicted, 1.0)
        censored = self.data.blq
        if censored.any():
            s = self.sigma_rows(sigma)[censored]
            bound = e[censored] / s
            e = e.copy()
            e[censored] = s * truncated_standard_normal(bound, rng)
        return e

    def squares(self, e):
        """(count, sum of e^2) per individual and observation name, float64[N, G] each."""
        n, g = self.n_individuals, self.n_groups
        flat = self.data.individual * g + self.groups
        count = np.bincount(flat, minlength=n * g).reshape(n, g)
        total = np.bincount(flat, weights=e * e, minlength=n * g).reshape(n, g)
        return count.astype(np.float64), total

    def simulate(self, predicted, sigma, rng):
        """Observations drawn from the residual model around ``predicted``."""
        z = self.sigma_rows(sigma) * rng.standard_normal(predicted.shape)
        if self.residual == "additive":
            return predicted + z
        if self.residual == "proportional":
            return predicted * (1.0 + z)
        return predicted * np.exp(z)

    def simulate_population(self, population, omega, sigma, copies, rng):
        """float64[copies, M]: ``copies`` replicates of the observations of new
        individuals phi_i = population_i + eta_i, eta_i ~ N(0, omega), at this
        dataset's rows (one batched prediction); no censoring."""
        many, phi = self.sample_population(population, omega, copies, rng)
        return many.simulate(many.predict(phi), sigma, rng).reshape(copies, -1)

    def sample_population(self, population, omega, copies, rng):
        """(these observations replicated ``copies`` times, phi[copies * N, P]):
        new individuals phi_i = population_i + eta_i, eta_i ~ N(0, omega)."""
        many = self.replicated(copies)
        mean = np.tile(population, (copies, 1))
        return many, mean + rng.standard_normal(mean.shape) @ np.linalg.cholesky(omega).T


def truncated_standard_normal(upper, rng):
    """Draws of Z ~ N(0, 1) conditioned on Z <= upper (elementwise), by
    inversion on the log scale: Z = Phi^-1(U Phi(upper)), stable far in the
    lower tail through log Phi."""
    upper = np.asarray(upper, dtype=np.float64)
    log_p = np.log(rng.uniform(size=upper.shape)) + log_ndtr(upper)
    tail = log_p < -700.0
    z = ndtri(np.exp(np.where(tail, -700.0, log_p)))
    if tail.any():
        # Mills ratio: for very negative upper, upper - Z is ~ Exponential(|upper|)
        u = upper[tail]
        z[tail] = u + np.log(rng.uniform(size=u.shape)) / np.abs(u)
    return z
