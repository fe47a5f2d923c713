"""A population fit's outputs: tables, plots, a summary and a cohort definition.

``run_fit(data_path, model_name, fit_config_path, out_dir)`` reads the data
(:mod:`pipeline.estimate.data`) and FIT.toml (:mod:`pipeline.estimate.fitconfig`),
fits by SAEM (:mod:`pipeline.estimate.saem`) and writes to ``out_dir``:

estimates.csv   parameter, estimate, se, rse_percent, ci_low, ci_high, p_value:
                typical values (estimate exp(mu), SE exp(mu) SE(mu) by the delta
                method, 95% interval exp(mu +- 1.96 SE(mu))); covariate
                coefficients beta (Wald interval beta +- 1.96 SE and p-value
                2 Phi(-|beta / SE|)); omega2_<p> (variances of eta); sigma_<name>
                (SE(sigma) = SE(sigma^2) / (2 sigma)). SEs from the inverse of the
                observed Fisher information (Louis' principle, stochastic
                approximation); RSE% = 100 SE / |estimate|
omega.csv       row, column, covariance, se, correlation: every estimated
                element of Omega
individual.csv  id, then per parameter: the EBE (conditional mode, natural scale),
                eta_<p> = its log minus the individual's population mean, and the
                conditional mean and sd of log <p> (MCMC at the estimates)
summary.md      the table, -2LL (importance sampling, with its Monte Carlo SE),
                AIC, BIC, counts, timing
gof.png, vpc.png, convergence.png   (:mod:`pipeline.estimate.diagnostics`)
cohort.toml     the fitted population as a scenario's [cohort] tables
                (:func:`cohort_toml`)
"""
import csv
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from kernels.models import MODELS, get_model
from pipeline.config import COVARIATES, SCENARIO_ROLES
from pipeline.estimate import diagnostics
from pipeline.estimate.data import read_dataset, require_positive
from pipeline.estimate.fitconfig import check_covariates, load_fit_config
from pipeline.estimate.saem import Z95, fit
from pipeline.estimate.structural import FIT_ONLY_MODELS, get_structural, structural_names
from pipeline.figures import md_table

# structural models whose parameters are those of a scenario model of another name
SCENARIO_MODEL = {"stein": "kinetics", "stein_ode": "kinetics"}
ESTIMATE_COLUMNS = ("parameter", "estimate", "se", "rse_percent", "ci_low", "ci_high",
                    "p_value")


def _row(label, estimate, se, low, high, p_value=np.nan):
    rse = 100.0 * se / abs(estimate) if estimate != 0 else np.nan
    return {"parameter": label, "estimate": estimate, "se": se, "rse_percent": rse,
            "ci_low": low, "ci_high": high, "p_value": p_value}


def estimate_rows(result):
    """The rows of estimates.csv (module docstring), as dicts."""
    se = dict(zip(result.labels, result.standard_errors))
    rows = []
    for coefficient, value in zip(result.design.coefficients, result.coef):
        s = se[coefficient.label]
        if coefficient.covariate is None:
            typical = float(np.exp(value))
            rows.append(_row(coefficient.parameter, typical, typical * s,
                             float(np.exp(value - Z95 * s)), float(np.exp(value + Z95 * s))))
        else:
            rows.append(_row(coefficient.label, float(value), s, value - Z95 * s,
                             value + Z95 * s, float(2.0 * ndtr(-abs(value / s)))))
    for p, name in enumerate(result.parameters):
        variance, s = result.omega[p, p], se[f"omega2_{name}"]
        rows.append(_row(f"omega2_{name}", float(variance), s, variance - Z95 * s,
                         variance + Z95 * s))
    for g, name in enumerate(result.observations.names):
        sigma = float(result.sigma[g])
        s = se[f"sigma2_{name}"] / (2.0 * sigma)
        rows.append(_row(f"sigma_{name}", sigma, s, sigma - Z95 * s, sigma + Z95 * s))
    return rows


def omega_rows(result):
    se = dict(zip(result.labels, result.standard_errors))
    sd = np.sqrt(np.diag(result.omega))
    rows = []
    for k, (a, b) in enumerate(result.omega_pairs):
        label = result.labels[result.design.n_coefficients + k]
        rows.append({"row": result.parameters[a], "column": result.parameters[b],
                     "covariance": float(result.omega[a, b]), "se": se[label],
                     "correlation": float(result.omega[a, b] / (sd[a] * sd[b]))})
    return rows


def individual_rows(result):
    population = result.design.mean(result.coef)
    cond_sd = np.sqrt(np.einsum("npp->np", result.conditional_cov))
    rows = []
    for i, identifier in enumerate(result.observations.data.ids):
        row = {"id": identifier}
        for p, name in enumerate(result.parameters):
            row[name] = float(np.exp(result.mode[i, p]))
            row[f"eta_{name}"] = float(result.mode[i, p] - population[i, p])
            row[f"log_{name}_cond_mean"] = float(result.conditional_mean[i, p])
            row[f"log_{name}_cond_sd"] = float(cond_sd[i, p])
        rows.append(row)
    return rows


def _write_csv(path, rows, columns=None):
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def _number(value):
    return "" if not np.isfinite(value) else f"{value:.4g}"


def summary_markdown(result, model_name, data_source):
    """summary.md: the estimates table and the fit's likelihood and settings."""
    data = result.observations.data
    rows = [[r["parameter"], _number(r["estimate"]), _number(r["se"]),
             _number(r["rse_percent"]), f"{_number(r['ci_low'])} - {_number(r['ci_high'])}",
             _number(r["p_value"])] for r in estimate_rows(result)]
    settings = result.settings
    correlations = [f"- corr({r['row']}, {r['column']}) = {r['correlation']:.3f}"
                    for r in omega_rows(result) if r["row"] != r["column"]]
    lines = [
        f"# Population fit: {model_name}",
        "",
        f"Data: {Path(data_source).name}: {data.n_individuals} individuals, "
        f"{data.n_observations} observations ({int(data.blq.sum())} below the limit of "
        f"quantification, handled as censored, M3). Residual model: "
        f"{result.spec.residual}. Omega: {'full' if result.spec.full_omega else 'diagonal'}.",
        "",
        md_table(["parameter", "estimate", "SE", "RSE %", "95% CI", "p-value"], rows),
        "",
        "Typical values: intervals exp(mu +- 1.96 SE(mu)); covariate coefficients: "
        "log-linear (power law for continuous covariates), Wald p-values. Standard "
        "errors: inverse of the observed Fisher information by stochastic "
        f"approximation (Louis' principle, {settings.fim_iterations} sweeps at the "
        "estimates).",
        "",
        *(correlations + [""] if correlations else []),
        f"- -2 log-likelihood (importance sampling, {settings.importance_samples} "
        f"samples per individual): {result.m2ll:.2f} (Monte Carlo SE {result.m2ll_se:.2f})",
        f"- AIC: {result.aic:.2f}; BIC (log of {data.n_individuals} individuals): "
        f"{result.bic:.2f}; {result.n_estimated} estimated parameters",
        f"- SAEM: K1 = {settings.k1}, K2 = {settings.k2}, {settings.chains} chain(s), "
        f"kernels {list(settings.kernels)}, seed {settings.seed}; acceptance rates "
        + ", ".join(f"{a:.2f}" for a in result.acceptance)
        + f"; {result.seconds:.1f} s",
        "- Individual estimates (individual.csv): conditional modes (EBEs) by "
        "Levenberg-Marquardt from the MCMC conditional means.",
        "",
        "![goodness of fit](gof.png)",
        "",
        "![visual predictive check](vpc.png)",
        "",
        "![SAEM convergence](convergence.png)",
        "",
    ]
    return "\n".join(lines)


# -- the cohort definition ---------------------------------------------------------

def _toml_number(value):
    return repr(float(f"{value:.6g}"))


def cohort_toml(result, model_name):
    """The fitted population as TOML tables that a scenario's file accepts
    (pipeline.config): [cohort.parameters.<p>] typical and sd_log =
    sqrt(omega_pp); [cohort.correlation] when Omega is full; [[cohort.effects]]
    for continuous covariate effects on the scenario's covariates (the power law
    parameter *= (covariate / reference) ** beta is exactly the fitted
    log-linear effect), with [cohort.covariates.<c>] median and sd of log from
    the data. Effects a scenario cannot express (categorical ones, other
    covariates) are listed as comments. Parameters fixed in the fit get
    sd_log = 0."""
    scenario_model = SCENARIO_MODEL.get(model_name, model_name)
    lines = [f"# Population fitted by SAEM ({model_name}): the [cohort] tables of a scenario",
             f"# with model = \"{scenario_model}\" (its parameter names)."]
    missing = [r for r in SCENARIO_ROLES if r not in get_model(scenario_model).roles]
    if missing:
        lines.append(f"# {scenario_model!r} has no {', '.join(missing)} quantity, so it cannot "
                     f"run a scenario itself: use these tables with a scenario model that "
                     f"has these parameters.")
    lines.append("")
    typical = result.typical
    sd = np.sqrt(np.diag(result.omega))
    for p, name in enumerate(result.parameters):
        lines += [f"[cohort.parameters.{name}]", f"typical = {_toml_number(typical[name])}",
                  f"sd_log = {_toml_number(sd[p])}", ""]
    for name, value in result.spec.fixed.items():
        lines += [f"[cohort.parameters.{name}]", f"typical = {_toml_number(value)}",
                  "sd_log = 0.0", ""]
    if result.spec.full_omega and len(result.parameters) >= 2:
        correlation = result.omega / np.outer(sd, sd)
        entries = [[1.0 if a == b else float(f"{correlation[max(a, b), min(a, b)]:.6f}")
                    for b in range(len(sd))] for a in range(len(sd))]
        lines += ["[cohort.correlation]",
                  "parameters = [" + ", ".join(f'"{n}"' for n in result.parameters) + "]",
                  "matrix = [",
                  *[f"    [{', '.join(repr(v) for v in row)}]," for row in entries], "]", ""]
    data = result.observations.data
    used = []
    for coefficient, value in zip(result.design.coefficients, result.coef):
        if coefficient.covariate is None:
            continue
        if coefficient.level is not None or coefficient.covariate not in COVARIATES:
            lines.append(f"# not expressible in a scenario: {coefficient.label} = "
                         f"{value:.6g} (covariate {coefficient.covariate!r}"
                         + (f", level {coefficient.level!r} vs {coefficient.reference!r})"
                            if coefficient.level is not None else ")"))
            continue
        lines += ["[[cohort.effects]]", f'parameter = "{coefficient.parameter}"',
                  f'covariate = "{coefficient.covariate}"',
                  f"exponent = {_toml_number(value)}",
                  f"reference = {_toml_number(coefficient.reference)}", ""]
        if coefficient.covariate not in used:
            used.append(coefficient.covariate)
    for name in used:
        logs = np.log(np.asarray(data.covariates[name], dtype=np.float64))
        lines += [f"[cohort.covariates.{name}]",
                  f"median = {_toml_number(np.exp(np.median(logs)))}",
                  f"sd_log = {_toml_number(logs.std(ddof=1) if logs.size > 1 else 0.0)}", ""]
    return "\n".join(lines)


# -- the entry point -----------------------------------------------------------

def _is_kernel_model(model_name):
    return model_name in MODELS and model_name not in FIT_ONLY_MODELS


def _model_parameters(model_name):
    """(parameter names, {name: typical}) that FIT.toml may name."""
    if _is_kernel_model(model_name):
        model = get_model(model_name)
        return model.parameter_names, {p.name: p.typical for p in model.parameters}
    structural = get_structural(model_name)
    return structural.parameter_names, structural.typical


def load_inputs(data_path, model_name, fit_config_path):
    """(structural model, dataset, FitConfig), every input checked: ValueError
    for an unknown model; DataError, ConfigError (one line each) otherwise."""
    if model_name not in structural_names():
        raise ValueError(f"unknown model {model_name!r}; models are "
                         f"{', '.join(structural_names())}")
    names, typical = _model_parameters(model_name)
    config = load_fit_config(fit_config_path, names, typical)
    data = read_dataset(data_path)
    if _is_kernel_model(model_name):
        structural = get_structural(model_name, free=config.spec.parameters,
                                    fixed=config.spec.fixed)
    else:
        structural = get_structural(model_name)
    structural.check(data)
    if config.spec.residual == "lognormal":
        require_positive(data, "the lognormal error model")
    check_covariates(config, data)
    return structural, data, config


def run_fit(data_path, model_name, fit_config_path, out_dir):
    """Fit ``model_name`` to the data file with FIT.toml and write the outputs
    (module docstring) to ``out_dir``; returns {name: path}."""
    structural, data, config = load_inputs(data_path, model_name, fit_config_path)
    result = fit(structural, data, config.spec, config.settings)
    return write_outputs(result, model_name, config, out_dir, str(data_path))


def write_outputs(result, model_name, config, out_dir, data_source):
    """Write every output of a fit; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file for name, file in (
        ("estimates", "estimates.csv"), ("omega", "omega.csv"),
        ("individual", "individual.csv"), ("summary", "summary.md"), ("gof", "gof.png"),
        ("vpc", "vpc.png"), ("convergence", "convergence.png"), ("cohort", "cohort.toml"))}
    _write_csv(paths["estimates"], estimate_rows(result), ESTIMATE_COLUMNS)
    _write_csv(paths["omega"], omega_rows(result))
    _write_csv(paths["individual"], individual_rows(result))
    rng = np.random.default_rng(config.settings.seed + 1)
    checks = diagnostics.diagnose(result, config.vpc_simulations, rng)
    diagnostics.plot_gof(result, checks, paths["gof"])
    diagnostics.plot_vpc(result, diagnostics.vpc_bins(result, checks, config.vpc_bins),
                         paths["vpc"])
    diagnostics.plot_convergence(result, paths["convergence"])
    paths["summary"].write_text(summary_markdown(result, model_name, data_source))
    paths["cohort"].write_text(cohort_toml(result, model_name))
    return {name: str(path) for name, path in paths.items()}
