"""A population fit's outputs: tables, plots, a summary and a cohort definition.

``run_fit(data_path, model_name, fit_config_path, out_dir)`` reads the data
(:mod:`pipeline.estimate.data`) and FIT.toml (:mod:`pipeline.estimate.fitconfig`),
fits by SAEM (:mod:`pipeline.estimate.saem`) and writes to ``out_dir``:

estimates.csv   parameter, estimate, se, rse_percent, ci_low, ci_high, p_value,
                flag: typical values (estimate exp(mu), SE exp(mu) SE(mu) by the
                delta method, 95% interval exp(mu +- 1.96 SE(mu))); covariate
                coefficients beta (Wald interval beta +- 1.96 SE and p-value
                2 Phi(-|beta / SE|)); omega2_<p> (variances of eta) and sigma_<name>
                (SE(sigma) = SE(sigma^2) / (2 sigma)), both > 0, with intervals on
                the log scale, exp(log v +- 1.96 SE / v) (the delta method:
                SE(log v) = SE(v) / v), so they stay > 0. SEs from the inverse of
                the observed Fisher information (Louis' principle, stochastic
                approximation); RSE% = 100 SE / |estimate|; ``flag`` is
                "RSE > 50%" above :data:`RSE_LIMIT_PERCENT` and "no SE" when the
                information gives none (it is not positive definite), else empty
omega.csv       row, column, covariance, se, correlation: every estimated
                element of Omega
individual.csv  id, then per parameter: the EBE (conditional mode, natural scale),
                eta_<p> = its log minus the individual's population mean, and the
                conditional mean and sd of log <p> (MCMC at the estimates)
summary.md      the table with its flags, the warnings of the fit (observations
                left out, non-finite VPC replicates, flagged estimates), -2LL
                (importance sampling, with its Monte Carlo SE), AIC, BIC, counts,
                timing
gof.png, vpc.png, convergence.png   (:mod:`pipeline.estimate.diagnostics`)
cohort.toml     the fitted population as a scenario's [cohort] tables
                (:func:`cohort_toml`); flagged estimates are left out of it, each
                with a comment saying why (the scenario model's value applies)

Each warning is also one line on ``stream`` (stderr).
"""
import csv
import sys
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from kernels.models import MODELS, get_model
from pipeline.config import COVARIATES, SCENARIO_ROLES
from pipeline.estimate import diagnostics
from pipeline.estimate.data import keep_names, read_dataset, require_positive
from pipeline.estimate.fitconfig import check_covariates, load_fit_config
from pipeline.estimate.saem import Z95, fit
from pipeline.estimate.structural import FIT_ONLY_MODELS, get_structural, structural_names
from pipeline.figures import md_table

# structural models whose parameters are those of a scenario model of another name
SCENARIO_MODEL = {"stein": "kinetics", "stein_ode": "kinetics"}
ESTIMATE_COLUMNS = ("parameter", "estimate", "se", "rse_percent", "ci_low", "ci_high",
                    "p_value", "flag")
# an estimate with a relative standard error above this (percent) is poorly
# determined by the data: flagged, warned about and left out of cohort.toml
RSE_LIMIT_PERCENT = 50.0


def _flag(se, rse):
    """"" for a usable estimate; "no SE" or "RSE > 50%" (:data:`RSE_LIMIT_PERCENT`)."""
    if not np.isfinite(se):
        return "no SE"
    if not (np.isfinite(rse) and rse <= RSE_LIMIT_PERCENT):
        return f"RSE > {RSE_LIMIT_PERCENT:g}%"
    return ""


def _row(label, estimate, se, low, high, p_value=np.nan):
    rse = 100.0 * se / abs(estimate) if estimate != 0 else np.nan
    return {"parameter": label, "estimate": estimate, "se": se, "rse_percent": rse,
            "ci_low": low, "ci_high": high, "p_value": p_value, "flag": _flag(se, rse)}


def _positive_row(label, value, se):
    """The row of a quantity v > 0 (a variance, a sd): 95% interval on the log
    scale, exp(log v +- 1.96 SE(v) / v)."""
    half = Z95 * se / value
    return _row(label, value, se, float(value * np.exp(-half)), float(value * np.exp(half)))


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
        rows.append(_positive_row(f"omega2_{name}", float(result.omega[p, p]),
                                  se[f"omega2_{name}"]))
    for g, name in enumerate(result.observations.names):
        sigma = float(result.sigma[g])
        rows.append(_positive_row(f"sigma_{name}", sigma, se[f"sigma2_{name}"] / (2.0 * sigma)))
    return rows


def _covariance_rows(result):
    """Rows (as estimates.csv's, no interval) of the off-diagonal elements of
    Omega (omega.csv), labelled omega_<row>_<column>."""
    se = dict(zip(result.labels, result.standard_errors))
    labels = result.labels[result.design.n_coefficients:]
    return [_row(label, float(result.omega[a, b]), se[label], np.nan, np.nan)
            for label, (a, b) in zip(labels, result.omega_pairs) if a != b]


def flagged(result):
    """{label: row} of the estimates with a flag (:func:`_flag`): those of
    estimates.csv in table order, then Omega's covariances."""
    return {r["parameter"]: r for r in estimate_rows(result) + _covariance_rows(result)
            if r["flag"]}


def _negative_direction(result):
    """" (negative curvature mostly along <label>)": the estimate that weighs
    most in the eigenvector of the information's lowest eigenvalue when it is
    < 0, i.e. where the likelihood is not at a maximum (or the data do not
    determine it); "" when unknown."""
    information = getattr(result, "information", None)
    if information is None or not np.isfinite(information).all():
        return ""
    values, vectors = np.linalg.eigh(information)
    if values[0] >= 0:
        return ""
    return (f" (negative curvature {values[0]:.3g}, mostly along "
            f"{result.labels[int(np.argmax(np.abs(vectors[:, 0])))]})")


def flag_warning(result):
    """One line naming the flagged estimates, or None."""
    rows = flagged(result)
    if not rows:
        return None
    total = len(estimate_rows(result)) + len(_covariance_rows(result))
    if all(r["flag"] == "no SE" for r in rows.values()) and len(rows) == total:
        what = ("no standard errors: the observed Fisher information is not positive "
                "definite" + _negative_direction(result) + ", so no estimate's precision "
                "is known")
    else:
        what = (f"{len(rows)} of {total} estimates with RSE above {RSE_LIMIT_PERCENT:g}% "
                f"or no SE: " + ", ".join(
                    f"{label} ({_number(r['rse_percent'])}%)" if r["flag"] != "no SE"
                    else f"{label} (no SE)" for label, r in rows.items()))
    return (f"{what}; flagged in summary.md and left out of cohort.toml (the scenario "
            f"model's values apply there)")


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


def summary_markdown(result, model_name, data_source, warnings=()):
    """summary.md: the estimates table with flags, the fit's ``warnings`` (one
    line each), its likelihood and settings."""
    data = result.observations.data
    rows = [[r["parameter"], _number(r["estimate"]), _number(r["se"]),
             _number(r["rse_percent"]), f"{_number(r['ci_low'])} - {_number(r['ci_high'])}",
             _number(r["p_value"]), f"**{r['flag']}**" if r["flag"] else ""]
            for r in estimate_rows(result)]
    settings = result.settings
    flags = flagged(result)
    correlations = [f"- corr({r['row']}, {r['column']}) = {r['correlation']:.3f}"
                    + (f" (**{flags[label]['flag']}** on the covariance)"
                       if label in flags else "")
                    for r, label in zip(omega_rows(result),
                                        result.labels[result.design.n_coefficients:])
                    if r["row"] != r["column"]]
    lines = [
        f"# Population fit: {model_name}",
        "",
        f"Data: {Path(data_source).name}: {data.n_individuals} individuals, "
        f"{data.n_observations} observations ({int(data.blq.sum())} below the limit of "
        f"quantification, handled as censored, M3). Residual model: "
        f"{result.spec.residual}. Omega: {'full' if result.spec.full_omega else 'diagonal'}.",
        "",
        *([f"**Warnings** ({len(warnings)}):", "", *[f"- {w}" for w in warnings], ""]
          if warnings else []),
        md_table(["parameter", "estimate", "SE", "RSE %", "95% CI", "p-value", "flag"], rows),
        "",
        "Typical values: intervals exp(mu +- 1.96 SE(mu)); variances omega2 and residual "
        "sds sigma: intervals on the log scale, exp(log v +- 1.96 SE / v); covariate "
        "coefficients: log-linear (power law for continuous covariates), Wald intervals "
        f"and p-values. Flag: RSE above {RSE_LIMIT_PERCENT:g}% (RSE_LIMIT_PERCENT, "
        "pipeline/estimate/report.py) or no SE (the information is not positive "
        "definite): the data determine the estimate poorly, and cohort.toml leaves it "
        "out (a flagged typical value takes its sd_log with it). Standard "
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


def _why(row):
    """Why a flagged estimate is left out, e.g. "RSE 236% > 50%" or "no SE"."""
    if row["flag"] == "no SE":
        return "no SE: the information is not positive definite"
    return f"RSE {_number(row['rse_percent'])}% > {RSE_LIMIT_PERCENT:g}%"


def _parameter_table(name, typical, sd_log, flags):
    """The lines of [cohort.parameters.<name>]: typical and sd_log, but a
    comment instead of the flagged ones. A flagged typical value takes its
    sd_log with it (the spread of a parameter the data do not determine means
    nothing); a flagged omega2 alone leaves out sd_log. A key left out takes
    the scenario model's value (pipeline.config)."""
    lines = [f"[cohort.parameters.{name}]"]
    if name in flags:
        lines.append(f"# typical and sd_log left out: typical {name} = {typical:.4g} "
                     f"({_why(flags[name])}), sd_log {sd_log:.4g}: the model's values apply")
        return lines + [""]
    lines.append(f"typical = {_toml_number(typical)}")
    variance = f"omega2_{name}"
    if variance in flags:
        lines.append(f"# sd_log left out: {sd_log:.4g} ({variance} "
                     f"{_number(flags[variance]['estimate'])}, {_why(flags[variance])}): "
                     f"the model's sd_log applies")
    else:
        lines.append(f"sd_log = {_toml_number(sd_log)}")
    return lines + [""]


def cohort_toml(result, model_name):
    """The fitted population as TOML tables that a scenario's file accepts
    (pipeline.config): [cohort.parameters.<p>] typical and sd_log =
    sqrt(omega_pp); [cohort.correlation] when Omega is full; [[cohort.effects]]
    for continuous covariate effects on the scenario's covariates (the power law
    parameter *= (covariate / reference) ** beta is exactly the fitted
    log-linear effect), with [cohort.covariates.<c>] median and sd of log from
    the data. Effects a scenario cannot express (categorical ones, other
    covariates) are listed as comments. Parameters fixed in the fit get
    sd_log = 0. Flagged estimates (:func:`flagged`: RSE above
    :data:`RSE_LIMIT_PERCENT` or no SE) are never written: a comment says
    which and why (:func:`_parameter_table`; a flagged effect or covariance
    leaves out that effect or the whole correlation table)."""
    flags = flagged(result)
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
        lines += _parameter_table(name, typical[name], float(sd[p]), flags)
    for name, value in result.spec.fixed.items():
        lines += [f"[cohort.parameters.{name}]", f"typical = {_toml_number(value)}",
                  "sd_log = 0.0", ""]
    covariances = [label for label in flags if label.startswith("omega_")]
    if result.spec.full_omega and len(result.parameters) >= 2 and covariances:
        lines += ["# [cohort.correlation] left out: "
                  + ", ".join(f"{c} ({_why(flags[c])})" for c in covariances)
                  + ": the parameters are independent in the scenario", ""]
    elif result.spec.full_omega and len(result.parameters) >= 2:
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
        if coefficient.label in flags:
            lines += [f"# effect left out: {coefficient.label} = {value:.6g} "
                      f"({_why(flags[coefficient.label])})", ""]
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


def _predicted_only(structural, data):
    """(data, note): the observations the model predicts, and a one-line note
    naming the observation names left out (None when none is). With no
    predicted name at all the data come back whole, for ``structural.check``
    to refuse at the first row."""
    if not np.isin(data.name, structural.observations).any():
        return data, None
    kept, left_out = keep_names(data, structural.observations)
    if not left_out:
        return data, None
    rows = ", ".join(f"{name} ({count:,} rows)" for name, count in left_out.items())
    dropped = data.n_individuals - kept.n_individuals
    return kept, (f"{data.source}: model {structural.name!r} predicts "
                  f"{', '.join(structural.observations)}; ignoring the observations of "
                  f"{rows}" + (f" and {dropped:,} individuals left with none"
                               if dropped else ""))


def load_inputs(data_path, model_name, fit_config_path):
    """(structural model, dataset, FitConfig, notes), every input checked:
    ValueError for an unknown model; DataError, ConfigError (one line each)
    otherwise. Observations of names the model does not predict are left out
    (:func:`_predicted_only`); ``notes`` (a list of lines) says which."""
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
    data, note = _predicted_only(structural, data)
    notes = [note] if note else []
    structural.check(data)
    if config.spec.residual == "lognormal":
        require_positive(data, "the lognormal error model")
    check_covariates(config, data)
    return structural, data, config, notes


def _warn(lines, stream):
    for line in lines:
        print(f"warning: {line}", file=stream, flush=True)


def run_fit(data_path, model_name, fit_config_path, out_dir, stream=sys.stderr):
    """Fit ``model_name`` to the data file with FIT.toml and write the outputs
    (module docstring) to ``out_dir``; returns {name: path}. Warnings go to
    ``stream``, one line each, as soon as they are known."""
    structural, data, config, notes = load_inputs(data_path, model_name, fit_config_path)
    _warn(notes, stream)
    result = fit(structural, data, config.spec, config.settings)
    return write_outputs(result, model_name, config, out_dir, str(data_path), notes, stream)


def write_outputs(result, model_name, config, out_dir, data_source, notes=(),
                  stream=sys.stderr):
    """Write every output of a fit; returns {name: path}. ``notes``: warnings
    already given (for summary.md); the new ones (non-finite VPC replicates,
    flagged estimates) go to ``stream`` too."""
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
    new = [line for line in (checks.nonfinite, flag_warning(result)) if line]
    _warn(new, stream)
    paths["summary"].write_text(summary_markdown(result, model_name, data_source,
                                                 list(notes) + new))
    paths["cohort"].write_text(cohort_toml(result, model_name))
    return {name: str(path) for name, path in paths.items()}
