"""Population (NLME) fits by SAEM: log-normal random effects, covariate effects,
residual error models, censored data, standard errors, individual estimates and
the -2 log-likelihood.

Model (:mod:`pipeline.estimate.population`), for individual i::

    phi_i = log theta_i = X_i @ coef + eta_i,   eta_i ~ N(0, Omega)   (diagonal or full)
    y_ij | phi_i  ~  residual model around f(t_ij, theta_i) with sd parameter sigma_g
                     (one sigma per observation name g; censored rows by M3)

Algorithm (Kuhn & Lavielle 2005, Comput Stat Data Anal 49:1020; as in Monolix):
iteration k = 1 .. K1 + K2

1. simulation: one E-step sweep of Metropolis-Hastings kernels for every
   chain of every individual (:mod:`pipeline.estimate.mcmc`); censored
   observations imputed from their truncated conditional distribution
   (:mod:`pipeline.estimate.likelihood`);
2. stochastic approximation of the sufficient statistics, averaged over the
   L chains::

       s1_i = E[phi_i]   (float64[N, P]),   s2 = sum_i E[phi_i phi_i'],
       s3_g = sum over rows of name g of E[e^2]
       s <- s + gamma_k (s_k - s),   gamma_k = 1 (k <= K1), 1 / (k - K1) (k > K1);

3. maximisation in closed form: coef by generalised least squares of s1 on
   the design with the current Omega (ordinary least squares per parameter
   when Omega is diagonal), Omega from s1, s2 and coef
   (:func:`population.omega_update`), sigma_g^2 = s3_g / n_g.
   During the first K1 iterations simulated annealing keeps the variances
   from shrinking faster than a factor ``annealing`` per iteration
   (omega_pp >= a omega_pp(k-1), sigma^2 >= a sigma^2(k-1)), which lets the
   chains explore before the estimates settle (Lavielle 2014, Mixed Effects
   Models for the Population Approach, section 9.2.5).

After the K1 + K2 iterations the parameters are fixed at their estimates and
the chains run ``fim_iterations`` more sweeps, from which come

- the observed Fisher information by Louis' principle,
  I = - sum_i E[d2 log p(y_i, phi_i)] - sum_i Cov[d log p(y_i, phi_i)]
  (expectations over the conditional distributions p(phi_i | y_i), estimated
  by the sample means over chains and sweeps; the complete-data derivatives
  are analytic: Gaussian in coef and the elements of Omega, and in sigma^2
  given the imputed residuals), so the estimates' covariance is I^-1
  (the stochastic-approximation estimate of Kuhn & Lavielle 2005, section 4,
  with step size 1/k at fixed parameters);
- the conditional mean and covariance of every phi_i, which start the
  conditional modes and shape the importance sampler of the -2LL
  (:mod:`pipeline.estimate.conditional`).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.estimate import conditional
from pipeline.estimate.likelihood import Observations
from pipeline.estimate.mcmc import Chains, Target, sweep
from pipeline.estimate.population import (build_design, generalised_least_squares,
                                          omega_update)

Z95 = 1.959963984540054      # standard normal 0.975 quantile


@dataclass(frozen=True)
class PopulationSpec:
    """What to estimate.

    ``parameters``     names of the estimated parameters (each with a random effect)
    ``initial``        {name: initial typical value}, natural scale
    ``omega_initial``  {name: initial variance of eta (log scale)}
    ``full_omega``     estimate every covariance of Omega (else diagonal)
    ``effects``        covariate effects (:class:`population.Effect`)
    ``residual``       residual model (:data:`residuals.RESIDUAL_MODELS`)
    ``sigma_initial``  initial sigma of every observation name
    ``fixed``          {name: value} of parameters held fixed (the others not
                       estimated stay at the structural model's typical value)
    """

    parameters: tuple
    initial: dict
    omega_initial: dict
    full_omega: bool = False
    effects: tuple = ()
    residual: str = "lognormal"
    sigma_initial: float = 0.5
    fixed: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SaemSettings:
    """Algorithm settings (defaults as Monolix's: 300 exploratory and 200
    smoothing iterations, 2 passes of each kernel).

    ``k1``, ``k2`` iterations with step size 1 and 1/(k - k1); ``burn_in``
    E-step sweeps before the first; ``chains`` per individual; ``kernels``
    passes of the three MH kernels per sweep (:func:`mcmc.sweep`);
    ``annealing`` the variance decay floor during the k1 iterations (0: none);
    ``fim_iterations`` sweeps at the estimates (Fisher information, conditional
    distributions); ``importance_samples`` per individual for the -2LL;
    ``mode_iterations`` Levenberg-Marquardt iterations of the EBEs."""

    k1: int = 300
    k2: int = 200
    burn_in: int = 5
    chains: int = 1
    kernels: tuple = (2, 2, 2)
    annealing: float = 0.95
    seed: int = 0
    fim_iterations: int = 200
    importance_samples: int = 1000
    mode_iterations: int = 30


@dataclass(frozen=True, eq=False)
class FitResult:
    """A population fit.

    ``coef`` [Q] fixed effects (intercepts = log typical values), ``omega``
    [P, P], ``sigma`` [G] per observation name; ``covariance`` the estimates'
    covariance (I^-1) in the order ``labels`` = coefficient labels, Omega
    elements (``omega_pairs``), sigma^2 per name; ``conditional_mean`` [N, P]
    and ``conditional_cov`` [N, P, P] of phi_i given y_i; ``mode`` [N, P] the
    conditional modes of phi_i (the EBEs); ``m2ll`` the -2 log-likelihood by
    importance sampling with its Monte Carlo standard error ``m2ll_se``;
    ``history`` {label: float64[K1 + K2]} of coef, Omega diagonal and sigma;
    ``information`` the observed Fisher information I (``labels`` order).
    """

    spec: PopulationSpec
    settings: SaemSettings
    design: object
    observations: Observations
    coef: np.ndarray
    omega: np.ndarray
    sigma: np.ndarray
    omega_pairs: tuple
    covariance: np.ndarray
    labels: tuple
    conditional_mean: np.ndarray
    conditional_cov: np.ndarray
    mode: np.ndarray
    m2ll: float
    m2ll_se: float
    history: dict
    acceptance: np.ndarray
    seconds: float
    information: np.ndarray = None      # the observed Fisher information, ``labels`` order

    @property
    def parameters(self):
        return self.design.parameters

    @property
    def typical(self):
        """{parameter: typical value} (exp of the intercepts)."""
        return {c.parameter: float(np.exp(b)) for c, b in
                zip(self.design.coefficients, self.coef) if c.covariate is None}

    @property
    def standard_errors(self):
        """Standard errors in ``labels`` order (NaN if the information is singular)."""
        return np.sqrt(np.where(np.diag(self.covariance) >= 0, np.diag(self.covariance),
                                np.nan))

    @property
    def n_estimated(self):
        """Number of estimated population parameters (for AIC and BIC)."""
        return len(self.labels)

    @property
    def aic(self):
        return self.m2ll + 2.0 * self.n_estimated

    @property
    def bic(self):
        """-2LL + k log N, N the number of individuals (as Monolix's BIC)."""
        return self.m2ll + self.n_estimated * np.log(self.observations.n_individuals)


def omega_basis(n_parameters, full):
    """(pairs, E): the estimated elements (a, b), a >= b, of Omega and the
    symmetric matrices E[k] = d Omega / d omega_ab."""
    pairs = [(a, b) for a in range(n_parameters) for b in range(a + 1)
             if full or a == b]
    basis = np.zeros((len(pairs), n_parameters, n_parameters))
    for k, (a, b) in enumerate(pairs):
        basis[k, a, b] = basis[k, b, a] = 1.0
    return tuple(pairs), basis


@dataclass(frozen=True, eq=False)
class _Problem:
    """A fit's fixed ingredients."""

    design: object
    observations: Observations        # the data, N individuals
    chains: Observations              # replicated once per chain
    n_chains: int
    full_omega: bool

    def target(self, coef, omega, sigma):
        mean = np.tile(self.design.mean(coef), (self.n_chains, 1))
        return Target(self.chains, mean, omega, np.asarray(sigma, dtype=np.float64))

    def split(self, values):
        """[L * N, ...] chain rows -> [L, N, ...]."""
        return values.reshape(self.n_chains, self.observations.n_individuals,
                              *values.shape[1:])


def _statistics(problem, chains, target, rng):
    """This sweep's sufficient statistics (s1 [N, P], s2 [P, P], s3 [G]) and the
    residual counts per name [G], averaged over chains."""
    phi = problem.split(chains.phi)
    e = problem.chains.residuals(chains.predicted, target.sigma, rng)
    count, squares = problem.chains.squares(e)
    n = problem.n_chains
    return (phi.mean(axis=0), np.einsum("lnp,lnq->pq", phi, phi) / n,
            squares.sum(axis=0) / n, count.sum(axis=0) / n)


def _maximise(problem, stats, omega_previous):
    """Closed-form M-step: (coef, Omega, sigma^2)."""
    s1, s2, s3, count = stats
    omega = omega_previous
    for _ in range(2 if problem.full_omega else 1):
        coef = generalised_least_squares(problem.design, s1, np.linalg.inv(omega))
        omega = omega_update(s1, s2, problem.design.mean(coef), not problem.full_omega)
    return coef, omega, s3 / count


def _anneal(omega, sigma2, omega_previous, sigma2_previous, rate):
    """Variances kept >= rate x their previous value; correlations unchanged."""
    variances = np.diag(omega)
    factor = np.sqrt(np.maximum(rate * np.diag(omega_previous), variances) / variances)
    return omega * np.outer(factor, factor), np.maximum(sigma2, rate * sigma2_previous)


def _regularised(omega, floor=1e-8):
    """Omega with its eigenvalues floored (a positive definite covariance)."""
    values, vectors = np.linalg.eigh(omega)
    return (vectors * np.maximum(values, floor)) @ vectors.T


def _history_labels(design, observations):
    return (design.labels + tuple(f"omega2_{p}" for p in design.parameters)
            + tuple(f"sigma_{g}" for g in observations.names))


def _record(coef, omega, sigma2):
    return np.concatenate([coef, np.diag(omega), np.sqrt(sigma2)])


def _estimate(problem, spec, settings, rng):
    """The SAEM iterations: (coef, Omega, sigma^2, chains, history, acceptance)."""
    design = problem.design
    coef = design.initial_coefficients(spec.initial)
    omega = np.diag([float(spec.omega_initial[p]) for p in design.parameters])
    sigma2 = np.full(problem.observations.n_groups, float(spec.sigma_initial) ** 2)
    target = problem.target(coef, omega, np.sqrt(sigma2))
    chains = Chains.start(target)
    for _ in range(settings.burn_in):
        sweep(chains, target, rng, settings.kernels)
    stats, history, rates = None, [], []
    for k in range(1, settings.k1 + settings.k2 + 1):
        rates.append(sweep(chains, target, rng, settings.kernels))
        new = _statistics(problem, chains, target, rng)
        gamma = 1.0 if k <= settings.k1 else 1.0 / (k - settings.k1)
        stats = new if stats is None else tuple(s + gamma * (n - s)
                                                for s, n in zip(stats, new))
        new_coef, new_omega, new_sigma2 = _maximise(problem, stats, omega)
        if k <= settings.k1 and settings.annealing > 0:
            new_omega, new_sigma2 = _anneal(new_omega, new_sigma2, omega, sigma2,
                                            settings.annealing)
        coef, omega, sigma2 = new_coef, _regularised(new_omega), new_sigma2
        target = problem.target(coef, omega, np.sqrt(sigma2))
        chains.refresh(target)
        history.append(_record(coef, omega, sigma2))
    labels = _history_labels(design, problem.observations)
    history = dict(zip(labels, np.array(history).T)) if history else {}
    return coef, omega, sigma2, chains, history, _mean_rates(np.array(rates))


def _mean_rates(rates):
    """Mean acceptance rate of each kernel over iterations (NaN for a kernel not run)."""
    run = np.isfinite(rates).all(axis=0)
    out = np.full(rates.shape[1], np.nan)
    out[run] = rates[:, run].mean(axis=0)
    return out


# -- complete-data derivatives (Louis' principle) ------------------------------

@dataclass(frozen=True, eq=False)
class _Derivatives:
    """Gradient and Hessian of log p(y_i, phi_i) in psi = (coef, Omega elements,
    sigma^2 per name), given phi and the (imputed) residuals.

    With r = phi_i - X_i coef, W = Omega^-1, v = W r, E_k = d Omega / d psi_k:

        d/dcoef        = X_i' v
        d/domega_k     = -tr(W E_k)/2 + v' E_k v / 2
        d2/dcoef2      = -X_i' W X_i
        d2/dcoef domega_k   = -X_i' W E_k v
        d2/domega_k domega_m = tr(W E_k W E_m)/2 - (E_k v)' W (E_m v)
        d/dsigma2_g    = -n_ig / (2 s) + S_ig / (2 s^2),  s = sigma_g^2,
                         S_ig the sum of squared residuals of name g
        d2/dsigma2_g^2 = n_ig / (2 s^2) - S_ig / s^3
    """

    X: np.ndarray          # [N, P, Q]
    coef: np.ndarray
    precision: np.ndarray  # W
    basis: np.ndarray      # E [R, P, P]
    sigma2: np.ndarray

    def __call__(self, phi, count, squares):
        """(g [L, N, D], sum over chains and individuals of the Hessian [D, D])
        for phi [L, N, P], count and squares [L, N, G]."""
        X, W, E, s = self.X, self.precision, self.basis, self.sigma2
        n_chains = phi.shape[0]
        r = phi - np.einsum("npq,q->np", X, self.coef)[None]
        v = r @ W
        Ev = np.einsum("kab,lnb->lnka", E, v)
        trace_WE = np.einsum("ab,kba->k", W, E)
        g_coef = np.einsum("npq,lnp->lnq", X, v)
        g_omega = -0.5 * trace_WE + 0.5 * np.einsum("lna,lnka->lnk", v, Ev)
        g_sigma = -count / (2 * s) + squares / (2 * s * s)
        gradient = np.concatenate([g_coef, g_omega, g_sigma], axis=2)

        n = phi.shape[1]
        WE = np.einsum("ab,kbc->kac", W, E)
        h_cc = -n_chains * np.einsum("npq,pr,nrs->qs", X, W, X)
        h_co = -np.einsum("npq,pr,lnkr->qk", X, W, Ev)
        h_oo = (0.5 * n * n_chains * np.einsum("kab,mba->km", WE, WE)
                - np.einsum("lnka,ab,lnmb->km", Ev, W, Ev))
        h_ss = np.diag((count / (2 * s * s) - squares / s ** 3).sum(axis=(0, 1)))
        q, d = len(self.coef), gradient.shape[2]
        hessian = np.zeros((d, d))
        hessian[:q, :q] = h_cc
        hessian[:q, q:q + h_oo.shape[0]] = h_co
        hessian[q:q + h_oo.shape[0], :q] = h_co.T
        hessian[q:q + h_oo.shape[0], q:q + h_oo.shape[0]] = h_oo
        hessian[q + h_oo.shape[0]:, q + h_oo.shape[0]:] = h_ss
        return gradient, hessian


def _covariance_of_estimates(information):
    """I^-1, with NaN where the information is not positive definite."""
    try:
        np.linalg.cholesky(information)
    except np.linalg.LinAlgError:
        return np.full(information.shape, np.nan)
    return np.linalg.inv(information)


def _at_estimates(problem, chains, target, derivatives, iterations, kernels, rng):
    """Sweeps at fixed parameters: (observed information, conditional mean
    [N, P], conditional covariance [N, P, P] of phi)."""
    n, n_par = problem.observations.n_individuals, chains.phi.shape[1]
    d = derivatives.X.shape[2] + derivatives.basis.shape[0] + len(derivatives.sigma2)
    sum_g, sum_gg, sum_h = np.zeros((n, d)), np.zeros((d, d)), np.zeros((d, d))
    sum_phi, sum_phi2 = np.zeros((n, n_par)), np.zeros((n, n_par, n_par))
    for _ in range(iterations):
        sweep(chains, target, rng, kernels)
        phi = problem.split(chains.phi)
        e = problem.chains.residuals(chains.predicted, target.sigma, rng)
        count, squares = (problem.split(a) for a in problem.chains.squares(e))
        g, h = derivatives(phi, count, squares)
        sum_g += g.sum(axis=0)
        sum_gg += np.einsum("lna,lnb->ab", g, g)
        sum_h += h
        sum_phi += phi.sum(axis=0)
        sum_phi2 += np.einsum("lnp,lnq->npq", phi, phi)
    samples = iterations * problem.n_chains
    mean_g = sum_g / samples
    information = -sum_h / samples - (sum_gg / samples - mean_g.T @ mean_g)
    mean = sum_phi / samples
    cov = sum_phi2 / samples - np.einsum("np,nq->npq", mean, mean)
    return 0.5 * (information + information.T), mean, cov


def fit(structural, data, spec, settings=SaemSettings()):
    """Fit the population model ``spec`` to ``data`` (a Dataset) with the
    structural model; returns a :class:`FitResult`."""
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    design = build_design(spec.parameters, spec.effects, data.covariates,
                          data.n_individuals)
    observations = Observations.bind(structural, data, spec.residual, spec.parameters,
                                     spec.fixed)
    problem = _Problem(design, observations, observations.replicated(settings.chains),
                       settings.chains, spec.full_omega)
    coef, omega, sigma2, chains, history, acceptance = _estimate(problem, spec, settings,
                                                                 rng)
    target = problem.target(coef, omega, np.sqrt(sigma2))
    pairs, basis = omega_basis(design.n_parameters, spec.full_omega)
    derivatives = _Derivatives(design.matrices, coef, np.linalg.inv(omega), basis, sigma2)
    information, mean, cov = _at_estimates(problem, chains, target, derivatives,
                                           settings.fim_iterations, settings.kernels, rng)
    population = design.mean(coef)
    sigma = np.sqrt(sigma2)
    mode = conditional.modes(observations, sigma, population, omega, mean,
                             settings.mode_iterations)
    m2ll, m2ll_se = conditional.minus_two_log_likelihood(
        observations, sigma, population, omega, mean, cov, settings.importance_samples, rng)
    labels = (design.labels
              + tuple(f"omega2_{design.parameters[a]}" if a == b else
                      f"omega_{design.parameters[a]}_{design.parameters[b]}"
                      for a, b in pairs)
              + tuple(f"sigma2_{g}" for g in observations.names))
    return FitResult(spec, settings, design, observations, coef, omega, sigma, pairs,
                     _covariance_of_estimates(information), labels, mean, cov, mode,
                     m2ll, m2ll_se, history, acceptance, time.perf_counter() - started,
                     information)
