"""Residual (measurement) error models: likelihoods and weighted residuals.

For an observation y with model prediction f > 0 and residual parameter sigma:

===============  =======================================  ========================
model            distribution of y                        weighted residual e
===============  =======================================  ========================
``additive``     y ~ N(f, sigma^2)                        (y - f) / sigma
``proportional`` y ~ N(f, (sigma f)^2)                    (y - f) / (sigma f)
``lognormal``    log y ~ N(log f, sigma^2)                (log y - log f) / sigma
===============  =======================================  ========================

Stein et al. 2019 (CPT Pharmacometrics Syst Pharmacol 8:285) report an
"additive error on the log scale" of 0.56 for tisagenlecleucel transgene
levels: that is ``lognormal`` with sigma = 0.56. The log-likelihood is the
density of y itself (for ``lognormal`` it carries the Jacobian -log y, as
``scipy.stats.lognorm``), so the three models' likelihoods are comparable.

Censored observations (below the limit of quantification L, ``blq``) enter by
Beal's M3 method: log P(y < L) = log Phi((L - f) / sd) (``lognormal``:
log Phi((log L - log f) / sigma)), with Phi the standard normal CDF.

For least squares, -2 log-likelihood is split per observation into a square
and a rest, ``-2 log p = e^2 + c`` (:func:`objective_terms`): e is the
weighted residual (for a censored row e = sqrt(-2 log Phi(z)) and c = 0) and c
holds the normalising terms, log(2 pi) + 2 log sd (+ 2 log y for
``lognormal``). c does not depend on the model's parameters except through
sd = sigma f in the ``proportional`` model, so for ``additive`` and
``lognormal`` minimising the sum of squares is maximum likelihood.
"""
import numpy as np
from scipy.special import log_ndtr

RESIDUAL_MODELS = ("additive", "proportional", "lognormal")
_LOG_2PI = float(np.log(2.0 * np.pi))


def check_model(model):
    if model not in RESIDUAL_MODELS:
        raise ValueError(f"unknown residual model {model!r}; models are "
                         f"{', '.join(RESIDUAL_MODELS)}")


def _standardised(model, observed, predicted, sigma):
    """(z, log sd on the data scale) with z = (y - f)/sd, or on the log scale
    for ``lognormal``; non-finite where the prediction is invalid."""
    check_model(model)
    y = np.asarray(observed, dtype=np.float64)
    f = np.asarray(predicted, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if model == "additive":
            return (y - f) / sigma, np.log(sigma) + 0.0 * f
        if model == "proportional":
            sd = sigma * np.abs(f)
            return (y - f) / sd, np.log(sd)
        # f <= 0: log f = -inf, so a censored row has P(y < L) = 1 and a quantified one
        # an infinite residual; a NaN prediction (a failed solve) stays NaN
        log_f = np.where(np.isnan(f), np.nan, np.log(np.where(f > 0, f, 0.0)))
        return (np.log(y) - log_f) / sigma, np.log(sigma) + np.log(y)


def weighted_residuals(model, observed, predicted, sigma):
    """float64[M] weighted residuals (table in the module docstring)."""
    return _standardised(model, observed, predicted, sigma)[0]


def objective_terms(model, observed, predicted, sigma, blq):
    """(e, c), float64[M] each, with -2 log p(y) = e^2 + c per observation.

    Rows with a NaN prediction (a failed solve), or f <= 0 on a quantified
    row for ``lognormal``, get a non-finite e: an invalid parameter vector,
    which an optimiser rejects. A censored row with f <= 0 under ``lognormal``
    has e = 0 (certainly below the limit)."""
    z, log_sd = _standardised(model, observed, predicted, sigma)
    blq = np.asarray(blq, dtype=bool)
    with np.errstate(invalid="ignore"):
        censored = np.sqrt(-2.0 * log_ndtr(z))
    e = np.where(blq, censored, z)
    c = np.where(blq, 0.0, _LOG_2PI + 2.0 * log_sd)
    return e, np.broadcast_to(c, e.shape)


def log_likelihood(model, observed, predicted, sigma, blq):
    """float64[M] log-likelihood of each observation (density of y; M3 for
    ``blq`` rows, whose ``observed`` is the limit of quantification); -inf
    where the prediction is invalid."""
    e, c = objective_terms(model, observed, predicted, sigma, blq)
    return np.where(np.isfinite(e) & np.isfinite(c), -0.5 * (e * e + c), -np.inf)
