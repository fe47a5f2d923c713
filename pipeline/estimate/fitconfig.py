"""FIT.toml: what a population fit estimates and how, validated in full before
any compute.

``load_fit_config(path, parameter_names=None)`` returns a frozen
:class:`FitConfig`; ``check_covariates(config, dataset)`` checks the covariate
effects against a dataset; ``is_fit_config(path)`` tells a FIT.toml from a
scenario file. Problems raise :class:`pipeline.config.ConfigError`,
one line naming the file and the key path, as scenario files do::

    fit.toml: parameters.foldx.initial: must be > 0, got -3.0
    fit.toml: covariates[0].covariate: 'weight' is not a covariate of the data; ...

Unknown keys are errors; integers are accepted where a number is expected.

Keys (``required`` or the default)
----------------------------------

[parameters.<name>]     one table per estimated parameter (at least one); each
                        has a log-normal random effect: log theta_i = log typical
                        + covariate effects + eta_i
    initial             number > 0, default the model's typical value; initial
                        typical value, model units
    omega2              number > 0, default 1.0; initial variance of eta
[fixed]                 optional {name = number > 0}: parameters held at a value.
                        Model parameters in neither table stay at the model's
                        typical values.
[omega]
    structure           "diagonal" (default) or "full": estimate the covariances
                        between the random effects too
[[covariates]]          optional; covariate effects on estimated parameters
    parameter           str, required; a name of [parameters]
    covariate           str, required; a covariate column of the data
    kind                "continuous" or "categorical", required
    reference           continuous: number > 0, default the data's median; the
                        effect is log theta += beta log(covariate / reference)
                        (theta *= (covariate / reference) ** beta);
                        categorical: str, default the most frequent level; one
                        coefficient per other level (log theta += beta_level)
                        (at most one effect per parameter and covariate)
[residual]
    model               "additive", "proportional" or "lognormal" (default)
    sigma               number > 0, default 0.5; initial sigma (one per observation
                        name is estimated)
[saem]
    seed                int >= 0, default 0
    k1                  int >= 1, default 300; exploratory iterations (step size 1)
    k2                  int >= 1, default 200; smoothing iterations (step 1/(k - k1))
    burn_in             int >= 0, default 5; E-step sweeps before the first iteration
    chains              int >= 1, default 1; Markov chains per individual
    kernels             3 ints >= 0, default [2, 2, 2]; passes per iteration of
                        the prior, per-component and all-component kernels
    annealing           number in [0, 1), default 0.95; simulated annealing rate
                        of the variances during the k1 iterations (0: none)
[standard_errors]
    iterations          int >= 1, default 200; E-step sweeps at the estimates for
                        the Fisher information (Louis) and the conditional
                        distributions
[likelihood]
    importance_samples  int >= 1, default 1000; Monte Carlo size of the -2LL
[individual]
    iterations          int >= 0, default 30; Levenberg-Marquardt iterations of
                        the conditional modes (EBEs)
[diagnostics]
    vpc_simulations     int >= 1, default 200; simulated replicates of the data
                        for the visual predictive check and the NPD residuals
    vpc_bins            int >= 0, default 0; time bins of the VPC (0: one bin per
                        distinct time when there are at most 12, else 10 bins of
                        equal counts)
"""
from dataclasses import dataclass

from pipeline.config import ConfigError, _Key, _ge, _gt, _one_of, _parse, _read, _typed, read_text
from pipeline.estimate.population import (KINDS, Effect, categorical_levels,
                                          continuous_values)
from pipeline.estimate.residuals import RESIDUAL_MODELS
from pipeline.estimate.saem import PopulationSpec, SaemSettings

_TOP = {"parameters": _Key(dict), "fixed": _Key(dict, {}), "omega": _Key(dict, {}),
        "covariates": _Key([dict], ()), "residual": _Key(dict, {}), "saem": _Key(dict, {}),
        "standard_errors": _Key(dict, {}), "likelihood": _Key(dict, {}),
        "individual": _Key(dict, {}), "diagnostics": _Key(dict, {})}
_PARAMETER = {"initial": _Key(float, None, _gt(0)), "omega2": _Key(float, 1.0, _gt(0))}
_OMEGA = {"structure": _Key(str, "diagonal", _one_of(("diagonal", "full")))}
_EFFECT = {"parameter": _Key(str), "covariate": _Key(str),
           "kind": _Key(str, check=_one_of(KINDS))}
_REFERENCE = {"continuous": _Key(float, None, _gt(0)), "categorical": _Key(str, None)}
_RESIDUAL = {"model": _Key(str, "lognormal", _one_of(RESIDUAL_MODELS)),
             "sigma": _Key(float, 0.5, _gt(0))}


def _kernels(v):
    if len(v) == 3 and min(v) >= 0 and sum(v) > 0:
        return None
    return f"must be 3 integers >= 0, not all 0, got {list(v)}"


def _annealing(v):
    return None if 0 <= v < 1 else f"must be in [0, 1), got {v!r}"


_SAEM = {"seed": _Key(int, 0, _ge(0)), "k1": _Key(int, 300, _ge(1)),
         "k2": _Key(int, 200, _ge(1)), "burn_in": _Key(int, 5, _ge(0)),
         "chains": _Key(int, 1, _ge(1)), "kernels": _Key([int], (2, 2, 2), _kernels),
         "annealing": _Key(float, 0.95, _annealing)}
_STANDARD_ERRORS = {"iterations": _Key(int, 200, _ge(1))}
_LIKELIHOOD = {"importance_samples": _Key(int, 1000, _ge(1))}
_INDIVIDUAL = {"iterations": _Key(int, 30, _ge(0))}
_DIAGNOSTICS = {"vpc_simulations": _Key(int, 200, _ge(1)), "vpc_bins": _Key(int, 0, _ge(0))}


@dataclass(frozen=True)
class FitConfig:
    """A validated FIT.toml: the population ``spec``, the algorithm
    ``settings``, the VPC settings, the file name and its text."""

    spec: PopulationSpec
    settings: SaemSettings
    vpc_simulations: int
    vpc_bins: int
    source: str
    text: str


def _names_check(src, path, names, parameter_names):
    if parameter_names is None:
        return
    for name in names:
        if name not in parameter_names:
            raise ConfigError(src, f"{path}.{name}", f"not a parameter of the model; "
                                                     f"parameters are "
                                                     f"{', '.join(parameter_names)}")


def _effects(src, raws, estimated):
    effects, seen = [], {}
    for i, raw in enumerate(raws):
        path = f"covariates[{i}]"
        kind = _read(src, path, {k: v for k, v in raw.items() if k == "kind"},
                     {"kind": _EFFECT["kind"]})["kind"]
        values = _read(src, path, raw, {**_EFFECT, "reference": _REFERENCE[kind]})
        if values["parameter"] not in estimated:
            raise ConfigError(src, f"{path}.parameter",
                              f"{values['parameter']!r} is not estimated; estimated "
                              f"parameters are {', '.join(estimated)}")
        pair = (values["parameter"], values["covariate"])
        if pair in seen:
            raise ConfigError(src, path, f"a second effect of {pair[1]!r} on {pair[0]!r} "
                                         f"(first: {seen[pair]})")
        seen[pair] = path
        effects.append(Effect(**values))
    return tuple(effects)


def fit_config_from_text(text, source="<string>", parameter_names=None, typical=None):
    """Validate FIT.toml text. ``parameter_names``: the model's parameters
    (checked when given); ``typical``: {name: typical value}, the default
    initial values (required when an ``initial`` is left out)."""
    top = _read(source, "", _parse(text, source), _TOP)
    names = tuple(top["parameters"])
    if not names:
        raise ConfigError(source, "parameters", "at least one [parameters.<name>] table "
                                                "is required")
    _names_check(source, "parameters", names, parameter_names)
    tables = {n: _read(source, f"parameters.{n}",
                       _typed(source, f"parameters.{n}", top["parameters"][n], dict),
                       _PARAMETER)
              for n in names}
    for name, table in tables.items():
        if table["initial"] is None:
            if typical is None or name not in typical:
                raise ConfigError(source, f"parameters.{name}.initial",
                                  "required key missing (the model has no typical value)")
            table["initial"] = float(typical[name])
    fixed = _read(source, "fixed", top["fixed"],
                  {n: _Key(float, None, _gt(0)) for n in top["fixed"]})
    _names_check(source, "fixed", fixed, parameter_names)
    for name in fixed:
        if name in tables:
            raise ConfigError(source, f"fixed.{name}", "is also in [parameters] (estimated)")
    omega = _read(source, "omega", top["omega"], _OMEGA)
    residual = _read(source, "residual", top["residual"], _RESIDUAL)
    saem = _read(source, "saem", top["saem"], _SAEM)
    errors = _read(source, "standard_errors", top["standard_errors"], _STANDARD_ERRORS)
    likelihood = _read(source, "likelihood", top["likelihood"], _LIKELIHOOD)
    individual = _read(source, "individual", top["individual"], _INDIVIDUAL)
    diagnostics = _read(source, "diagnostics", top["diagnostics"], _DIAGNOSTICS)
    spec = PopulationSpec(
        names, {n: t["initial"] for n, t in tables.items()},
        {n: t["omega2"] for n, t in tables.items()}, omega["structure"] == "full",
        _effects(source, top["covariates"], names), residual["model"], residual["sigma"],
        dict(fixed))
    settings = SaemSettings(
        k1=saem["k1"], k2=saem["k2"], burn_in=saem["burn_in"], chains=saem["chains"],
        kernels=tuple(saem["kernels"]), annealing=saem["annealing"], seed=saem["seed"],
        fim_iterations=errors["iterations"],
        importance_samples=likelihood["importance_samples"],
        mode_iterations=individual["iterations"])
    return FitConfig(spec, settings, diagnostics["vpc_simulations"], diagnostics["vpc_bins"],
                     source, text)


def load_fit_config(path, parameter_names=None, typical=None):
    """Read and validate a FIT.toml file (see :func:`fit_config_from_text`)."""
    return fit_config_from_text(read_text(path), str(path), parameter_names, typical)


def is_fit_config(path):
    """True when the TOML file at ``path`` has the shape of FIT.toml: a
    [parameters] table, no [scenario] table and only FIT.toml's top-level
    keys (what ``cartcohort validate`` tells apart from a scenario). A file
    that cannot be read or parsed is not one (its reader says why)."""
    try:
        table = _parse(read_text(path), str(path))
    except ConfigError:
        return False
    return "parameters" in table and "scenario" not in table and set(table) <= set(_TOP)


def check_covariates(config, dataset):
    """ConfigError at the first covariate effect the dataset cannot support: an
    unknown covariate, a continuous one with a value <= 0 or not a number, a
    categorical reference level that does not occur."""
    available = sorted(dataset.covariates)
    for i, effect in enumerate(config.spec.effects):
        path = f"covariates[{i}]"
        if effect.covariate not in dataset.covariates:
            raise ConfigError(config.source, f"{path}.covariate",
                              f"{effect.covariate!r} is not a covariate of the data; data "
                              f"covariates are {', '.join(available) or 'none'}")
        values = dataset.covariates[effect.covariate]
        if effect.kind == "continuous":
            try:
                continuous_values(values, effect.covariate)
            except ValueError as exc:
                raise ConfigError(config.source, f"{path}.kind", str(exc)) from None
        elif effect.reference is not None:
            levels = categorical_levels(values)[1]
            if effect.reference not in levels:
                raise ConfigError(config.source, f"{path}.reference",
                                  f"level {effect.reference!r} does not occur; levels are "
                                  f"{', '.join(sorted(levels))}")
