"""Estimation: fitting models to longitudinal clinical data (README.md#fitting-models-to-data).

Modules of ``pipeline.estimate``, one line each:

``data``         reads, validates and subsets long-format data files
``residuals``    residual error models: likelihoods and weighted residuals
``structural``   parameters -> predictions, by closed forms or the batched kernel
``individual``   fits every individual at once by Levenberg-Marquardt (MAP with a prior)
``simulate``     builds virtual clinical datasets
``likelihood``   the conditional likelihood p(y_i | phi_i), M3 censoring, simulation
``population``   the population model: typical values, covariate effects, Omega
``mcmc``         the SAEM E-step: Metropolis-Hastings kernels for phi_i
``conditional``  conditional modes (EBEs, via ``individual``) and the -2LL by importance sampling
``saem``         population (NLME) fits by SAEM, with standard errors
``fitconfig``    reads and validates FIT.toml
``diagnostics``  goodness-of-fit diagnostics (IWRES, NPD, VPC) and their plots
``report``       a population fit's tables, plots, summary and cohort definition
"""
