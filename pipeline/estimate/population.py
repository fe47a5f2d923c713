"""The population model of the log parameters: typical values, covariate effects,
random effects.

For individual i and estimated parameter p (natural scale theta_ip > 0)::

    phi_ip = log theta_ip = mu_p + sum_k beta_pk * c_ik + eta_ip,   eta_i ~ N(0, Omega)

written ``phi_i = X_i @ coef + eta_i`` with ``coef`` the vector of all fixed
effects (the intercepts mu_p = log(typical_p) first, in parameter order, then
the covariate coefficients in the order the effects are declared) and X_i the
P x Q design matrix of individual i. Covariate regressors c_ik:

    continuous   c = log(covariate / reference)      (a power law:
                 theta *= (covariate / reference) ** beta, exactly log-linear)
    categorical  c = 1 if the covariate equals the level, else 0: one indicator
                 per level other than the reference level

Parameters that are not estimated stay at a fixed value for every individual
(no random effect).
"""
from dataclasses import dataclass

import numpy as np

KINDS = ("continuous", "categorical")


@dataclass(frozen=True)
class Effect:
    """A covariate effect on one parameter. ``reference``: a number > 0 for a
    continuous covariate (None: the data's median), a level for a categorical
    one (None: the most frequent level)."""

    parameter: str
    covariate: str
    kind: str
    reference: object = None


@dataclass(frozen=True)
class Coefficient:
    """One fixed effect: the intercept of ``parameter`` (``covariate`` None) or
    the coefficient of a covariate regressor (``level`` for a categorical one)."""

    parameter: str
    covariate: str = None
    level: str = None
    reference: object = None

    @property
    def label(self):
        if self.covariate is None:
            return self.parameter
        suffix = f"_{self.level}" if self.level is not None else ""
        return f"beta_{self.parameter}_{self.covariate}{suffix}"


@dataclass(frozen=True, eq=False)
class Design:
    """The design of ``phi_i = X_i @ coef`` for a dataset's individuals.

    ``parameters``   names of the estimated parameters (P), model order
    ``coefficients`` the Q fixed effects (:class:`Coefficient`)
    ``owner``        int[Q], the parameter index of each coefficient
    ``regressors``   float64[N, Q], each coefficient's regressor per individual
                     (1 for an intercept)
    """

    parameters: tuple
    coefficients: tuple
    owner: np.ndarray
    regressors: np.ndarray

    @property
    def n_parameters(self):
        return len(self.parameters)

    @property
    def n_coefficients(self):
        return len(self.coefficients)

    @property
    def labels(self):
        return tuple(c.label for c in self.coefficients)

    @property
    def matrices(self):
        """X: float64[N, P, Q], X[i, p, q] = regressors[i, q] if owner[q] == p."""
        indicator = np.zeros((self.n_parameters, self.n_coefficients))
        indicator[self.owner, np.arange(self.n_coefficients)] = 1.0
        return self.regressors[:, None, :] * indicator[None]

    def mean(self, coef):
        """X_i @ coef for every individual: float64[N, P]."""
        contributions = self.regressors * np.asarray(coef)[None, :]
        out = np.zeros((self.regressors.shape[0], self.n_parameters))
        for q, p in enumerate(self.owner):
            out[:, p] += contributions[:, q]
        return out

    def initial_coefficients(self, typical):
        """coef with intercepts log(typical[name]) and covariate effects 0."""
        return np.array([np.log(typical[c.parameter]) if c.covariate is None else 0.0
                         for c in self.coefficients])


def continuous_values(values, name):
    """A continuous covariate as float64, > 0 (it enters as a logarithm)."""
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"covariate {name!r} is not numeric") from None
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"continuous covariate {name!r} must be finite and > 0 for "
                         f"every individual (it enters as log(value / reference))")
    return values


def categorical_levels(values):
    """The levels of a categorical covariate as strings, most frequent first
    (ties: sorted)."""
    text = np.array([str(v) for v in values], dtype=object)
    levels, counts = np.unique(text, return_counts=True)
    order = sorted(range(levels.size), key=lambda k: (-counts[k], levels[k]))
    return text, tuple(str(levels[k]) for k in order)


def _effect_columns(effect, values):
    """[(Coefficient, regressor float64[N])] for one effect."""
    if effect.kind == "continuous":
        x = continuous_values(values, effect.covariate)
        reference = float(np.median(x)) if effect.reference is None else float(effect.reference)
        return [(Coefficient(effect.parameter, effect.covariate, reference=reference),
                 np.log(x / reference))]
    text, levels = categorical_levels(values)
    reference = levels[0] if effect.reference is None else str(effect.reference)
    if reference not in levels:
        raise ValueError(f"categorical covariate {effect.covariate!r} has no level "
                         f"{reference!r}; levels are {', '.join(sorted(levels))}")
    return [(Coefficient(effect.parameter, effect.covariate, level, reference),
             (text == level).astype(np.float64))
            for level in sorted(levels) if level != reference]


def build_design(parameters, effects, covariates, n_individuals):
    """The :class:`Design` of estimated ``parameters`` with ``effects`` (a
    sequence of :class:`Effect`) for covariates {name: values[N]}."""
    parameters = tuple(parameters)
    columns = [(Coefficient(name), np.ones(n_individuals)) for name in parameters]
    for effect in effects:
        if effect.parameter not in parameters:
            raise ValueError(f"covariate effect on {effect.parameter!r}, which is not "
                             f"estimated; estimated: {', '.join(parameters)}")
        if effect.kind not in KINDS:
            raise ValueError(f"covariate effect kind {effect.kind!r}; expected one of "
                             f"{', '.join(KINDS)}")
        columns += _effect_columns(effect, covariates[effect.covariate])
    coefficients = tuple(c for c, _ in columns)
    owner = np.array([parameters.index(c.parameter) for c in coefficients], dtype=np.intp)
    regressors = np.column_stack([x for _, x in columns]) if columns else np.zeros(
        (n_individuals, 0))
    return Design(parameters, coefficients, owner, regressors)


def generalised_least_squares(design, phi, omega_inverse):
    """coef minimising sum_i (phi_i - X_i coef)' W (phi_i - X_i coef), W =
    ``omega_inverse``: (sum X_i' W X_i)^-1 sum X_i' W phi_i. With a diagonal W
    it is ordinary least squares parameter by parameter."""
    X = design.matrices
    normal = np.einsum("ipq,pr,irs->qs", X, omega_inverse, X)
    right = np.einsum("ipq,pr,ir->q", X, omega_inverse, phi)
    return np.linalg.solve(normal, right)


def omega_update(s1, s2, mean, diagonal):
    """Omega = (1/N) sum_i E[(phi_i - m_i)(phi_i - m_i)'] from the sufficient
    statistics s1 = E[phi_i] (float64[N, P]) and s2 = sum_i E[phi_i phi_i']
    (P x P), with m_i = X_i @ coef (``mean``):

        Omega = (s2 - sum_i (s1_i m_i' + m_i s1_i') + sum_i m_i m_i') / N

    (only its diagonal when ``diagonal``)."""
    n = s1.shape[0]
    cross = s1.T @ mean
    omega = (s2 - cross - cross.T + mean.T @ mean) / n
    omega = 0.5 * (omega + omega.T)
    return np.diag(np.diag(omega)) if diagonal else omega
