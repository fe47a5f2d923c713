"""Population fits by SAEM (pipeline.estimate.saem and its modules), against
closed forms: a linear-Gaussian toy model whose conditional distributions,
marginal likelihood and Fisher information are Gaussian in closed form, and
Stein 2019's kinetic model simulated with its published population values."""
import dataclasses

import numpy as np
import pytest
from scipy import stats

try:
    import tomllib
except ModuleNotFoundError:           # Python 3.10
    import tomli as tomllib

from kernels.models import get_model
from pipeline.config import _cohort, scenario_from_text
from pipeline.estimate import conditional
from pipeline.estimate.data import make_dataset
from pipeline.estimate.likelihood import Observations, truncated_standard_normal
from pipeline.estimate.mcmc import Chains, Target, sweep
from pipeline.estimate.population import (Effect, build_design, generalised_least_squares,
                                          omega_update)
from pipeline.estimate.report import cohort_toml, estimate_rows
from pipeline.estimate.saem import PopulationSpec, SaemSettings, fit
from pipeline.estimate.structural import get_structural

# Stein et al. 2019 (docs/references.md#stein-2019): typical values, omega^2, sigma (log scale)
STEIN_TYPICAL = {"foldx": 3900.0, "Tmax": 9.3, "Cmax": 24000.0, "alpha": 0.16,
                 "FB": 0.0079, "beta": 0.0032}
STEIN_OMEGA2 = {"foldx": 2.4, "Tmax": 0.38, "Cmax": 0.65, "alpha": 0.91, "FB": 0.80,
                "beta": 0.86}
STEIN_DAYS = np.array([1.0, 4.0, 7.0, 10.0, 14.0, 21.0, 28.0, 91.0, 182.0, 365.0])


class LinearModel:
    """A toy structural model linear in phi = log theta: f(t) = phi_0 + phi_1 t
    (one parameter: f = phi_0). With additive error every conditional and
    marginal distribution is Gaussian."""

    observations = ("y",)

    def __init__(self, names=("a", "b")):
        self.name = "linear"
        self.parameter_names = tuple(names)
        self.typical = {n: 1.0 for n in names}

    def basis(self, time):
        return np.column_stack([time ** k for k in range(len(self.parameter_names))])

    def predict(self, theta, data):
        phi = np.log(theta)[data.individual]
        return (phi * self.basis(data.time)).sum(axis=1)


TOY_TIMES = np.array([0.0, 0.5, 1.0, 1.5, 2.0])


def toy_dataset(values, n, covariates=None, times=TOY_TIMES):
    individual = np.repeat(np.arange(n), times.size)
    return make_dataset(np.arange(n), individual, np.tile(times, n),
                        np.full(individual.size, "y", object), values,
                        covariates=covariates)


def simulate_toy(model, population, omega, sigma, rng, covariates=None):
    """A toy dataset of len(population) individuals drawn from the model."""
    n = population.shape[0]
    template = toy_dataset(np.zeros(n * TOY_TIMES.size), n, covariates)
    observations = Observations.bind(model, template, "additive", model.parameter_names, {})
    values = observations.simulate_population(population, omega, np.array([sigma]), 1, rng)
    return dataclasses.replace(template, value=values[0])


def gaussian_posterior(A, y, mean, omega, sigma):
    """Conditional mean and covariance of phi given y = A phi + N(0, sigma^2 I)."""
    precision = np.linalg.inv(omega) + A.T @ A / sigma ** 2
    cov = np.linalg.inv(precision)
    return cov @ (np.linalg.solve(omega, mean) + A.T @ y / sigma ** 2), cov


def gaussian_minus_two_log_likelihood(model, data, population, omega, sigma):
    """-2 log p(y) with y_i ~ N(A m_i, A Omega A' + sigma^2 I), every individual
    observed at TOY_TIMES (design matrix A)."""
    A = model.basis(TOY_TIMES)
    y = data.value.reshape(data.n_individuals, TOY_TIMES.size)
    cov = A @ omega @ A.T + sigma ** 2 * np.eye(TOY_TIMES.size)
    return -2.0 * stats.multivariate_normal(cov=cov).logpdf(y - population @ A.T).sum()


# -- the E-step ---------------------------------------------------------------------

def test_metropolis_kernels_leave_the_gaussian_posterior_invariant():
    """Chains started from exact posterior draws, after sweeps of all three
    kernels (adaptation off), are still distributed as the posterior: mean
    within 4 standard errors, variances and correlation close."""
    rng = np.random.default_rng(11)
    model = LinearModel()
    n, sigma = 4000, 0.4
    omega = np.array([[0.5, 0.2], [0.2, 0.3]])
    mean = np.array([0.3, -0.2])
    y = np.array([0.9, 0.2, -0.1, -0.6, -0.4])
    data = toy_dataset(np.tile(y, n), n)
    observations = Observations.bind(model, data, "additive", model.parameter_names, {})
    target = Target(observations, np.tile(mean, (n, 1)), omega, np.array([sigma]))
    post_mean, post_cov = gaussian_posterior(model.basis(TOY_TIMES), y, mean, omega, sigma)
    start = rng.multivariate_normal(post_mean, post_cov, size=n)
    chains = Chains.start(target, start)
    chains.steps[:] = [1.2, 0.8]
    rates = [sweep(chains, target, rng, (2, 2, 2), adapt=False) for _ in range(10)]
    assert np.all(np.array(rates) > 0.05)                # the kernels do move
    assert not np.allclose(chains.phi, start)
    sample_mean, sample_cov = chains.phi.mean(axis=0), np.cov(chains.phi.T)
    standard_error = np.sqrt(np.diag(post_cov) / n)
    assert np.all(np.abs(sample_mean - post_mean) < 4 * standard_error)
    assert np.allclose(np.diag(sample_cov), np.diag(post_cov), rtol=0.1)
    correlation = post_cov[0, 1] / np.sqrt(post_cov[0, 0] * post_cov[1, 1])
    sample_corr = sample_cov[0, 1] / np.sqrt(sample_cov[0, 0] * sample_cov[1, 1])
    assert abs(sample_corr - correlation) < 0.05


# -- the M-step -------------------------------------------------------------------

def _covariate_design(n, rng):
    weight = 70 * np.exp(0.2 * rng.standard_normal(n))
    group = rng.choice(["A", "B", "C"], size=n)
    effects = (Effect("a", "weight", "continuous", 70.0), Effect("b", "group", "categorical"))
    return build_design(("a", "b"), effects, {"weight": weight, "group": group}, n), weight, group


def test_m_step_regression_and_omega_match_direct_computation():
    rng = np.random.default_rng(3)
    n = 50
    design, weight, group = _covariate_design(n, rng)
    phi = rng.standard_normal((n, 2))
    # the most frequent group is the reference; one indicator per other level
    levels, counts = np.unique(group, return_counts=True)
    others = [lv for lv in sorted(levels) if lv != levels[np.argmax(counts)]]
    assert design.labels == ("a", "b", "beta_a_weight",
                             *(f"beta_b_group_{lv}" for lv in others))
    # diagonal Omega: ordinary least squares per parameter
    coef = generalised_least_squares(design, phi, np.diag([2.0, 0.5]))
    Xa = np.column_stack([np.ones(n), np.log(weight / 70.0)])
    Xb = np.column_stack([np.ones(n)] + [(group == lv).astype(float) for lv in others])
    direct_a = np.linalg.lstsq(Xa, phi[:, 0], rcond=None)[0]
    direct_b = np.linalg.lstsq(Xb, phi[:, 1], rcond=None)[0]
    assert np.allclose(coef[[0, 2]], direct_a) and np.allclose(coef[[1, 3, 4]], direct_b)
    # full Omega: generalised least squares on the stacked system
    W = np.linalg.inv(np.array([[1.0, 0.6], [0.6, 0.8]]))
    X = design.matrices
    stacked = np.linalg.solve(sum(X[i].T @ W @ X[i] for i in range(n)),
                              sum(X[i].T @ W @ phi[i] for i in range(n)))
    assert np.allclose(generalised_least_squares(design, phi, W), stacked)
    # Omega from the sufficient statistics of one draw = the residuals' second moment
    mean = design.mean(coef)
    residual = phi - mean
    full = omega_update(phi, phi.T @ phi, mean, diagonal=False)
    assert np.allclose(full, residual.T @ residual / n)
    assert np.allclose(omega_update(phi, phi.T @ phi, mean, diagonal=True),
                       np.diag(np.diag(residual.T @ residual / n)))


# -- likelihood, censoring ----------------------------------------------------------

def test_censored_likelihood_and_imputation():
    """M3: a censored row contributes log Phi((log L - log f) / sigma); the
    imputed residuals are draws of the truncated normal below the limit."""
    structural = LinearModel(("a",))
    data = dataclasses.replace(toy_dataset(np.array([2.0, 3.0, 1.0, 2.5, 2.0]), 1),
                               blq=np.array([False, True, False, True, False]))
    observations = Observations.bind(structural, data, "lognormal", ("a",), {})
    predicted, sigma = np.full(5, 2.2), 0.4
    expected = (stats.norm(np.log(2.2), sigma).logpdf(np.log([2.0, 1.0, 2.0])).sum()
                - np.log([2.0, 1.0, 2.0]).sum()
                + stats.norm.logcdf((np.log([3.0, 2.5]) - np.log(2.2)) / sigma).sum())
    assert np.isclose(observations.log_likelihood(predicted, [sigma])[0], expected)

    rng = np.random.default_rng(5)
    bounds = np.array([-1.0, 0.0, 2.0, -40.0])
    draws = np.stack([truncated_standard_normal(bounds, rng) for _ in range(20000)])
    assert np.all(draws <= bounds)
    for k, bound in enumerate(bounds[:3]):
        exact = stats.truncnorm(-np.inf, bound)
        assert abs(draws[:, k].mean() - exact.mean()) < 4 * exact.std() / np.sqrt(20000)
    assert abs(draws[:, 3].mean() - stats.truncnorm(-np.inf, -40.0).mean()) < 0.01


def test_saem_with_censoring_recovers_the_uncensored_truth():
    """Half of the observations below the limit: SAEM with M3 recovers the
    typical value, omega^2 and sigma; treating the limits as values does not."""
    rng = np.random.default_rng(8)
    model = LinearModel(("a",))
    n, mu, omega2, sigma = 300, 1.0, 0.25, 0.5
    data = simulate_toy(model, np.full((n, 1), np.log(mu)), np.array([[omega2]]), sigma, rng)
    limit = float(np.median(data.value))
    blq = data.value < limit
    censored = dataclasses.replace(data, value=np.where(blq, limit, data.value), blq=blq)
    spec = PopulationSpec(("a",), {"a": 3.0}, {"a": 1.0}, residual="additive",
                          sigma_initial=1.0)
    settings = SaemSettings(k1=150, k2=100, fim_iterations=50, importance_samples=50,
                            mode_iterations=5, seed=2)
    m3 = fit(model, censored, spec, settings)
    naive = fit(model, dataclasses.replace(censored, blq=np.zeros_like(blq)), spec, settings)
    assert abs(m3.coef[0] - np.log(mu)) < 0.1
    assert abs(m3.omega[0, 0] / omega2 - 1) < 0.35
    assert abs(m3.sigma[0] / sigma - 1) < 0.1
    assert abs(naive.coef[0] - np.log(mu)) > 0.2 or abs(naive.sigma[0] / sigma - 1) > 0.3


# -- -2LL, Fisher information ---------------------------------------------------------

def test_importance_sampling_matches_the_gaussian_marginal_likelihood():
    rng = np.random.default_rng(21)
    model = LinearModel()
    n, sigma = 60, 0.3
    omega = np.array([[0.4, 0.1], [0.1, 0.2]])
    population = np.tile([0.5, -0.3], (n, 1))
    data = simulate_toy(model, population, omega, sigma, rng)
    observations = Observations.bind(model, data, "additive", model.parameter_names, {})
    A = model.basis(TOY_TIMES)
    moments = [gaussian_posterior(A, data.value[data.individual == i], population[i],
                                  omega, sigma) for i in range(n)]
    centre = np.array([m for m, _ in moments])
    cov = np.array([c for _, c in moments])
    m2ll, se = conditional.minus_two_log_likelihood(observations, np.array([sigma]),
                                                    population, omega, centre, cov, 2000, rng)
    exact = gaussian_minus_two_log_likelihood(model, data, population, omega, sigma)
    assert 0 < se < 0.5
    assert abs(m2ll - exact) < 4 * se + 1e-9 * abs(exact)


@pytest.fixture(scope="module", params=[False, True], ids=["diagonal", "full"])
def toy_fit(request):
    """A 300-individual toy fit with a diagonal or a full Omega."""
    full = request.param
    rng = np.random.default_rng(4)
    model = LinearModel()
    n = 300
    omega = np.array([[0.4, 0.15], [0.15, 0.2]]) if full else np.diag([0.4, 0.2])
    truth = {"coef": np.array([0.5, -0.3]), "omega": omega, "sigma": 0.3}
    data = simulate_toy(model, np.tile(truth["coef"], (n, 1)), truth["omega"], truth["sigma"],
                        rng)
    spec = PopulationSpec(("a", "b"), {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0},
                          full_omega=full, residual="additive", sigma_initial=1.0)
    settings = SaemSettings(k1=150, k2=100, fim_iterations=300, importance_samples=300,
                            mode_iterations=10, seed=3)
    return model, data, truth, fit(model, data, spec, settings)


def _numerical_hessian(function, x, step=1e-4):
    d = x.size
    hessian = np.zeros((d, d))
    for a in range(d):
        for b in range(d):
            ea, eb = np.eye(d)[a] * step, np.eye(d)[b] * step
            hessian[a, b] = (function(x + ea + eb) - function(x + ea - eb)
                             - function(x - ea + eb) + function(x - ea - eb)) / (4 * step ** 2)
    return hessian


def test_louis_standard_errors_match_the_exact_observed_information(toy_fit):
    """SEs from the stochastic approximation of the observed information (Louis)
    against the numerical Hessian of the exact Gaussian marginal likelihood in
    (coef, the estimated elements of Omega, sigma^2) at the same estimates."""
    model, data, _, result = toy_fit
    pairs = result.omega_pairs

    def log_likelihood(psi):
        population = np.tile(psi[:2], (data.n_individuals, 1))
        omega = np.zeros((2, 2))
        for (a, b), value in zip(pairs, psi[2:-1]):
            omega[a, b] = omega[b, a] = value
        return -0.5 * gaussian_minus_two_log_likelihood(model, data, population, omega,
                                                        np.sqrt(psi[-1]))

    psi = np.concatenate([result.coef, [result.omega[a, b] for a, b in pairs],
                          result.sigma ** 2])
    exact = np.sqrt(np.diag(np.linalg.inv(-_numerical_hessian(log_likelihood, psi))))
    assert np.allclose(result.standard_errors, exact, rtol=0.05)
    # and the importance-sampling -2LL at the estimates is the exact one
    exact_m2ll = -2 * log_likelihood(psi)
    assert abs(result.m2ll - exact_m2ll) < 4 * result.m2ll_se + 0.05


def test_toy_fit_recovers_the_truth_and_the_conditional_modes(toy_fit):
    model, data, truth, result = toy_fit
    assert np.all(np.abs(result.coef - truth["coef"]) < 3 * result.standard_errors[:2])
    assert np.allclose(result.omega, truth["omega"], rtol=0.25, atol=0.03)
    assert abs(result.sigma[0] / truth["sigma"] - 1) < 0.1
    # linear-Gaussian: the conditional mode is the conditional mean, in closed form
    A = model.basis(TOY_TIMES)
    population = result.design.mean(result.coef)
    exact = np.array([gaussian_posterior(A, data.value[data.individual == i], population[i],
                                         result.omega, result.sigma[0])[0]
                      for i in range(data.n_individuals)])
    assert np.allclose(result.mode, exact, atol=1e-4)
    assert np.allclose(result.conditional_mean, exact, atol=0.1)


# -- covariates -----------------------------------------------------------------------

def test_covariate_effects_recovered_and_absent_one_not_significant():
    """Planted: a power-law effect of a continuous covariate on a (exponent
    0.8) and a categorical level effect on b (-0.5); absent: the continuous
    covariate 'age' on b."""
    rng = np.random.default_rng(12)
    model = LinearModel()
    n = 300
    size = np.exp(rng.standard_normal(n))
    arm = rng.choice(["control", "treated"], size=n, p=[0.6, 0.4])
    age = 50 * np.exp(0.2 * rng.standard_normal(n))
    population = np.column_stack([0.5 + 0.8 * np.log(size), -0.3 - 0.5 * (arm == "treated")])
    covariates = {"size": size, "arm": arm, "age": age}
    data = simulate_toy(model, population, np.diag([0.2, 0.1]), 0.3, rng, covariates)
    spec = PopulationSpec(("a", "b"), {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0},
                          effects=(Effect("a", "size", "continuous", 1.0),
                                   Effect("b", "arm", "categorical", "control"),
                                   Effect("b", "age", "continuous", 50.0)),
                          residual="additive", sigma_initial=1.0)
    result = fit(model, data, spec, SaemSettings(k1=100, k2=80, fim_iterations=100,
                                                 importance_samples=50, mode_iterations=3))
    rows = {r["parameter"]: r for r in estimate_rows(result)}
    planted = rows["beta_a_size"]
    level = rows["beta_b_arm_treated"]
    assert abs(planted["estimate"] / 0.8 - 1) < 0.25 and planted["p_value"] < 1e-6
    assert abs(level["estimate"] / -0.5 - 1) < 0.25 and level["p_value"] < 1e-6
    assert rows["beta_b_age"]["p_value"] > 0.05
    assert rows["beta_b_age"]["ci_low"] < 0 < rows["beta_b_age"]["ci_high"]


# -- Stein 2019 ----------------------------------------------------------------------

def simulate_stein(n, rng):
    structural = get_structural("stein")
    names = structural.parameter_names
    individual = np.repeat(np.arange(n), STEIN_DAYS.size)
    template = make_dataset(np.arange(n), individual, np.tile(STEIN_DAYS, n),
                            np.full(individual.size, "cart", object), np.ones(individual.size))
    observations = Observations.bind(structural, template, "lognormal", names, {})
    population = np.tile(np.log([STEIN_TYPICAL[p] for p in names]), (n, 1))
    omega = np.diag([STEIN_OMEGA2[p] for p in names])
    values = observations.simulate_population(population, omega, np.array([0.56]), 1, rng)[0]
    return dataclasses.replace(template, value=values)


@pytest.fixture(scope="module")
def stein_fit():
    structural = get_structural("stein")
    data = simulate_stein(200, np.random.default_rng(2024))
    names = structural.parameter_names
    initial = {p: STEIN_TYPICAL[p] * (2.5 if k % 2 else 0.4) for k, p in enumerate(names)}
    spec = PopulationSpec(names, initial, {p: 1.0 for p in names}, residual="lognormal",
                          sigma_initial=1.0)
    settings = SaemSettings(k1=150, k2=80, kernels=(1, 1, 1), fim_iterations=80,
                            importance_samples=100, mode_iterations=10, seed=7)
    return fit(structural, data, spec, settings)


def test_saem_recovers_stein_2019_from_200_patients(stein_fit):
    """One replicate of acceptance 1 with fewer iterations, initial values a
    factor 2.5 off: typical values within 25% and 3 SE, omega^2 within 50%,
    sigma within 10%."""
    result = stein_fit
    se = dict(zip(result.labels, result.standard_errors))
    for name, truth in STEIN_TYPICAL.items():
        error = np.log(result.typical[name] / truth)
        assert abs(error) < min(np.log(1.25), 3 * se[name]), name
        p = result.parameters.index(name)
        assert abs(result.omega[p, p] / STEIN_OMEGA2[name] - 1) < 0.5, name
    assert abs(result.sigma[0] / 0.56 - 1) < 0.1
    assert np.isfinite(result.m2ll) and 0 < result.m2ll_se < 20    # 100 samples


# -- the cohort definition --------------------------------------------------------------

SCENARIO_HEAD = """
[scenario]
name = "fitted"
model = "{model}"
seed = 1
patients = 100
horizon_days = 365.0

[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8

"""


def kinetics_cohort(text):
    """The [cohort] tables of a cohort.toml read by pipeline.config's cohort reader
    for the kinetics model (which cannot run a scenario itself: no tumour, no IL-6)."""
    return _cohort("cohort.toml", tomllib.loads(text)["cohort"], get_model("kinetics"))


def test_cohort_toml_of_a_stein_fit_is_a_kinetics_cohort(stein_fit):
    text = cohort_toml(stein_fit, "stein")
    assert "'kinetics' has no tumour, il6 quantity" in text
    by_name = {p.name: p for p in kinetics_cohort(text).parameters}
    for p, name in enumerate(stein_fit.parameters):
        assert np.isclose(by_name[name].typical, stein_fit.typical[name], rtol=1e-5)
        assert np.isclose(by_name[name].sd_log, np.sqrt(stein_fit.omega[p, p]), rtol=1e-5)


def test_cohort_toml_with_full_omega_and_covariates_is_a_cart_cohort():
    """A fit whose parameters are two of the cart model's (k, a), full Omega,
    a power-law effect of tumour burden on k and a categorical effect: the
    scenario takes typical values, sd_log, the correlation and the power law;
    the categorical effect is left as a comment."""
    rng = np.random.default_rng(6)
    model = LinearModel(("k", "a"))
    n = 200
    tumour = 1e10 * np.exp(rng.standard_normal(n))
    sex = rng.choice(["F", "M"], size=n)
    population = np.column_stack([np.log(0.15) + 0.3 * np.log(tumour / 1e10),
                                  np.log(0.8) + 0.2 * (sex == "M")])
    data = simulate_toy(model, population, np.array([[0.3, 0.1], [0.1, 0.2]]), 0.3, rng,
                        {"tumour_burden_cells": tumour, "sex": sex})
    spec = PopulationSpec(("k", "a"), {"k": 0.2, "a": 1.0}, {"k": 1.0, "a": 1.0},
                          full_omega=True,
                          effects=(Effect("k", "tumour_burden_cells", "continuous", 1e10),
                                   Effect("a", "sex", "categorical", "F")),
                          residual="additive", sigma_initial=1.0)
    result = fit(model, data, spec, SaemSettings(k1=60, k2=40, fim_iterations=20,
                                                 importance_samples=20, mode_iterations=2))
    text = cohort_toml(result, "cart")
    assert "# not expressible in a scenario: beta_a_sex_M" in text
    cohort = scenario_from_text(SCENARIO_HEAD.format(model="cart") + text).cohort
    by_name = {p.name: p for p in cohort.parameters}
    assert np.isclose(by_name["k"].typical, result.typical["k"], rtol=1e-5)
    assert np.isclose(by_name["a"].sd_log, np.sqrt(result.omega[1, 1]), rtol=1e-5)
    names, matrix = cohort.correlation
    assert tuple(names) == ("k", "a")
    assert np.isclose(matrix[1][0], result.omega[1, 0] / np.sqrt(result.omega[0, 0]
                                                                 * result.omega[1, 1]), atol=1e-6)
    (effect,) = cohort.effects
    assert (effect.parameter, effect.covariate, effect.reference) == ("k", "tumour_burden_cells",
                                                                      1e10)
    assert np.isclose(effect.exponent, result.coef[list(result.design.labels).index(
        "beta_k_tumour_burden_cells")], rtol=1e-5)
    assert abs(effect.exponent - 0.3) < 0.1
    tumour_covariate = {c.name: c for c in cohort.covariates}["tumour_burden_cells"]
    assert np.isclose(np.log(tumour_covariate.median), np.median(np.log(tumour)), rtol=1e-4)
