"""Scenario configuration: a TOML file, validated in full before any compute.

``load_scenario(path)`` reads a scenario file and returns a frozen
:class:`Scenario`; ``scenario_from_text(text)`` does the same for a string and
``with_overrides(scenario, patients=, shard_size=, seed=)`` returns a validated
copy with command-line overrides. Any problem raises :class:`ConfigError`, whose
message is one line naming the file and the key path::

    configs/bad.toml: arms[1].dose_cells: must be > 0, got -5.0
    configs/bad.toml: scenario.nmae: unknown key; allowed keys: name, description, ...
    configs/bad.toml: line 7: Invalid value (column 12)
    configs/missing.toml: cannot read: No such file or directory

Unknown keys are errors at every level. Integers are accepted where a number is
expected; booleans are never numbers and a float is never accepted as an
integer; numbers must be finite. Array indices in key paths count from 0
(``arms[0]`` is the first ``[[arms]]`` table).

Keys (``required`` or the default; units are in the key names)
---------------------------------------------------------------

[scenario]
    name             str, required; letters, digits, ``_`` and ``-``
    description      str, default ""
    model            str, required; a model of ``kernels.models.MODELS`` with tumour,
                     CAR T, IL-6 and infusion roles (not e.g. the ``kinetics`` model,
                     which is for fitting)
    seed             int >= 0, required; the cohort's root seed
    patients         int >= 1, required
    shard_size       int >= 1, default 10000; patients per shard (the unit of work)
    horizon_days     number > 0, required; days simulated after the infusion at day 0
    rtol             number in (0, 1), default 1e-6; integrator relative tolerance
    atol             number > 0, default 1e-9; absolute tolerance, in model units (0
                     fails every patient: the tumour and CAR T states decay to 0)
    max_steps        int >= 1, default 100000; attempted steps (accepted + rejected) per patient

[cohort.parameters.<parameter>]   one optional table per model parameter
    typical          number > 0, default the model's typical value, model units
    sd_log           number >= 0, default the model's sd of log (between-patient spread)

[cohort.correlation]              optional; correlation of the parameters' log-normal draws
    parameters       array of >= 2 distinct model parameter names, required
    matrix           array of arrays of numbers, required: square (one row per name),
                     symmetric, unit diagonal, positive definite

[cohort.covariates.tumour_burden_cells]   baseline tumour burden, log-normal
    median           number > 0, default 1e10 cells
    sd_log           number >= 0, default 1.0
[cohort.covariates.weight_kg]             body weight, log-normal
    median           number > 0, default 75 kg
    sd_log           number >= 0, default 0.2

[[cohort.effects]]                optional; parameter *= (covariate / reference) ** exponent
    parameter        str, required; a model parameter
    covariate        str, required; tumour_burden_cells or weight_kg
    exponent         number, required
    reference        number > 0, required; in the covariate's unit
    (at most one effect per parameter and covariate)

[[arms]]                          at least one; every arm treats the same virtual patients
    name             str, required, unique; letters, digits, ``_`` and ``-``
    policy           str, required: fixed, adaptive or oracle (the table
                     ``pipeline.policies.POLICIES``: each policy's keys, checks and doses)
    debulking_factor number in (0, 1], default 1.0 (none); baseline tumour is multiplied by it
    parameter_set    str, default none; a named set of typical values of the model
                     (``kernels.models``: e.g. costim's "cd28" and "41bb")
    parameters       table {parameter = number >= 0}, default {}; typical values for
                     this arm, over the cohort's (and the parameter set's). Every
                     patient keeps its own deviation: its value in the arm is the
                     arm's typical value x (its cohort value / the cohort's typical)
    interventions    array of tables, default none: parameter changes during treatment
                     (tocilizumab, corticosteroids), each one kernel event per parameter:
      name           str, required, unique in the arm; letters, digits, ``_`` and ``-``;
                     the dataset gets ``t_<name>_d``, the day it was given (NaN: never)
      at_day         number in [0, scenario.horizon_days]: given on that day (0: with
                     the infusion, prophylaxis), or
      il6_above_pg_ml number > 0: given when IL-6 first reaches it (triggered); exactly
                     one of at_day and il6_above_pg_ml
      scale          table {parameter = number >= 0}: parameters multiplied from then on
      set            table {parameter = number >= 0}: parameters replaced from then on;
                     at least one parameter in scale or set, none in both
  policy "fixed", exactly one of:
    dose_cells       number > 0; CAR T cells infused
    dose_cells_per_kg number > 0; CAR T cells per kg of body weight
  policies "adaptive" (models with a peak IL-6 predictor, ``pipeline.predictors.PREDICTORS``:
  cart and cart2) and "oracle" (any model with IL-6), all required:
    target_il6_pg_ml number > 0; peak IL-6 safety target, pg/mL
    min_dose_cells   number > 0; smallest dose, cells
    max_dose_cells   number >= min_dose_cells; largest dose, cells

[outcomes]
    response_day     number in (0, scenario.horizon_days], default 28.0 days
    response_fraction number in (0, 1), default 0.01; responder if the tumour at
                     response_day is <= response_fraction * baseline
    relapse_fraction number in (0, 1], default 0.1; relapse if, after its minimum,
                     the tumour climbs back above relapse_fraction * baseline
    crs_il6_thresholds_pg_ml  4 strictly increasing numbers > 0, pg/mL, default
                     [100.0, 500.0, 2000.0, 5000.0]; CRS grade = how many of them
                     peak IL-6 reaches (0..4)
    severe_crs_grade int in 1..4, default 3; severe CRS is grade >= this
    no_detectable_disease_cells  number > 0, default 1e9 cells; no detectable disease
                     (an absolute response) if the tumour at response_day is <= this
                     many cells. 1e9 cells is about 1 mL of tumour at ~1e9 cells/mL,
                     near what PET-CT resolves: an approximate conversion
    lead_response    str, default "responded": responded (relative to baseline) or
                     no_detectable_disease (absolute); the response definition the
                     report and the console summary lead with (both are reported)

[report]                          optional; extra report sections
    waterfall        table, optional: the response gap between two arms split into
                     the contributions of single changes (a waterfall plot)
      baseline       str, required: the arm the changes start from
      full           str, required: the arm with every change
      steps          array of >= 1 distinct arm names, required: each arm is
                     ``baseline`` with one change; contribution = its response rate
                     minus the baseline's, and the interaction remainder = the gap
                     minus their sum

[output]
    dir              non-empty str, default "out"; the run goes to <dir>/<scenario.name>,
                     relative to the working directory

[cluster.slurm]                   optional; worker jobs of ``cartcohort run --cluster slurm``
                                  (dask-jobqueue); the command-line flags override these
    partition        non-empty str, default none (the cluster's default partition)
    account          non-empty str, default none (the user's default account)
    cores            int >= 1, default 1; CPUs booked per worker job
    processes        int in 1..cores, default 1; single-threaded Dask worker
                     processes per job
    memory           str like "2GB", "512MB" or "4GiB", default "2GB"; per worker job
    walltime         str "HH:MM:SS", default "01:00:00"; per worker job
    jobs             int >= 1, default 2; worker jobs submitted
    interface        non-empty str, default none; network interface of the workers and
                     the scheduler (the cluster's fast network), e.g. "ib0"
    job_name         non-empty str, default "cartcohort"; SLURM name of the worker jobs
    job_extra        array of str, default []; extra ``#SBATCH`` directives, e.g.
                     ["--qos=normal"]
"""
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:           # Python 3.10
    import tomli as tomllib

from kernels.models import MODELS, get_model
from pipeline import policies
from pipeline.cohort import CohortSpec, Covariate, CovariateEffect, ParameterDistribution
from pipeline.digest import scenario_digest
from pipeline.outcomes import RESPONSES

POLICIES = tuple(policies.POLICIES)
# what the pipeline reads from a model (kernels.models.base.Model.roles)
SCENARIO_ROLES = ("tumour", "car_t", "il6", "infusion")
COVARIATES = {"tumour_burden_cells": (1e10, 1.0),   # (median, sd_log) defaults
              "weight_kg": (75.0, 0.2)}


class ConfigError(ValueError):
    """A scenario problem: ``<file>: <key path>: <message>``, one line."""

    def __init__(self, source, key, message):
        super().__init__(f"{source}: {key}: {message}")
        self.source, self.key, self.message = source, key, message


@dataclass(frozen=True)
class Arm:
    name: str
    policy: str
    debulking_factor: float = 1.0
    dose_cells: float = None
    dose_cells_per_kg: float = None
    target_il6_pg_ml: float = None
    min_dose_cells: float = None
    max_dose_cells: float = None
    parameter_set: str = None
    parameters: tuple = ()          # ((name, typical value), ...), in the file's order
    interventions: tuple = ()       # Intervention, in the file's order

    def typical_values(self, model):
        """{parameter: typical value} this arm sets: its parameter set, then
        its own ``parameters`` over it."""
        values = model.parameter_set(self.parameter_set) if self.parameter_set else {}
        return {**values, **dict(self.parameters)}

    def describe(self):
        """One line for people: 'fixed: 1e+08 cells', 'adaptive: peak IL-6 target ...'
        (the policy's own part from :data:`pipeline.policies.POLICIES`)."""
        dose = policies.policy(self.policy).describe(self)
        if self.debulking_factor != 1.0:
            dose += f", debulking x{self.debulking_factor:g}"
        if self.parameter_set:
            dose += f", parameter set {self.parameter_set}"
        if self.parameters:
            dose += ", " + ", ".join(f"{name} = {value:g}" for name, value in self.parameters)
        for intervention in self.interventions:
            dose += f", {intervention.describe()}"
        return f"{self.policy}: {dose}"


@dataclass(frozen=True)
class Intervention:
    """A treatment given at a day or when IL-6 first reaches a level, as
    parameter changes: ``scale`` ((parameter, factor), ...) and ``set``
    ((parameter, value), ...)."""

    name: str
    at_day: float = None
    il6_above_pg_ml: float = None
    scale: tuple = ()
    set: tuple = ()

    def describe(self):
        when = (f"day {self.at_day:g}" if self.at_day is not None
                else f"IL-6 >= {self.il6_above_pg_ml:g} pg/mL")
        changes = [f"{p} x{v:g}" for p, v in self.scale] + [f"{p} = {v:g}" for p, v in self.set]
        return f"{self.name} at {when} ({', '.join(changes)})"


@dataclass(frozen=True)
class Outcomes:
    response_day: float
    response_fraction: float
    relapse_fraction: float
    crs_il6_thresholds_pg_ml: tuple
    severe_crs_grade: int
    no_detectable_disease_cells: float = 1e9     # the [outcomes] defaults (_OUTCOMES)
    lead_response: str = "responded"


@dataclass(frozen=True)
class Output:
    dir: str


@dataclass(frozen=True)
class Waterfall:
    baseline: str
    full: str
    steps: tuple


@dataclass(frozen=True)
class Report:
    waterfall: Waterfall = None


@dataclass(frozen=True)
class SlurmSettings:
    """The ``[cluster.slurm]`` table (defaults when it is absent)."""

    partition: str = None
    account: str = None
    cores: int = 1
    processes: int = 1
    memory: str = "2GB"
    walltime: str = "01:00:00"
    jobs: int = 2
    interface: str = None
    job_name: str = "cartcohort"
    job_extra: tuple = ()


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. ``text`` is the file's exact text; ``sha256`` hashes
    it, together with ``overrides`` (sorted (key, value) pairs) when there are any."""

    name: str
    description: str
    model: str
    seed: int
    patients: int
    shard_size: int
    horizon_days: float
    rtol: float
    atol: float
    max_steps: int
    cohort: CohortSpec
    arms: tuple
    outcomes: Outcomes
    output: Output
    source_path: str
    text: str
    sha256: str
    overrides: tuple = ()
    cluster_slurm: SlurmSettings = SlurmSettings()
    report: Report = Report()

    @property
    def n_shards(self):
        return -(-self.patients // self.shard_size)

    @property
    def run_dir(self):
        return Path(self.output.dir) / self.name


# -- the schema ---------------------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class _Key:
    """One key of a table: its type (``str``, ``int``, ``float``, ``dict`` for a
    table, ``[t]`` for an array of t), default and a check (value -> message or None)."""

    kind: object
    default: object = _REQUIRED
    check: object = None


def _gt(bound):
    return lambda v: None if v > bound else f"must be > {bound}, got {v!r}"


def _ge(bound):
    return lambda v: None if v >= bound else f"must be >= {bound}, got {v!r}"


def _within(low, high, closed_high):
    def check(v):
        if low < v < high or (closed_high and v == high):
            return None
        return f"must be in ({low}, {high}{']' if closed_high else ')'}, got {v!r}"
    return check


def _one_of(choices):
    listed = ", ".join(map(str, choices))
    return lambda v: None if v in choices else f"expected one of {listed}, got {v!r}"


def _identifier(v):
    return None if re.fullmatch(r"[A-Za-z0-9_-]+", v) else (
        f"must be letters, digits, '_' or '-', got {v!r}")


def _grades(v):
    if len(v) == 4 and v[0] > 0 and all(a < b for a, b in zip(v, v[1:])):
        return None
    return f"must be 4 strictly increasing numbers > 0, got {list(v)}"


_TOP = {"scenario": _Key(dict), "cohort": _Key(dict, {}), "arms": _Key([dict], ()),
        "outcomes": _Key(dict, {}), "output": _Key(dict, {}), "cluster": _Key(dict, {}),
        "report": _Key(dict, {})}
_SCENARIO = {
    "name": _Key(str, check=_identifier),
    "description": _Key(str, ""),
    "model": _Key(str, check=_one_of(tuple(MODELS))),
    "seed": _Key(int, check=_ge(0)),
    "patients": _Key(int, check=_ge(1)),
    "shard_size": _Key(int, 10_000, _ge(1)),
    "horizon_days": _Key(float, check=_gt(0)),
    "rtol": _Key(float, 1e-6, _within(0, 1, False)),
    "atol": _Key(float, 1e-9, _gt(0)),
    "max_steps": _Key(int, 100_000, _ge(1)),
}
_COHORT = {"parameters": _Key(dict, {}), "correlation": _Key(dict, None),
           "covariates": _Key(dict, {}), "effects": _Key([dict], ())}
_PARAMETER = {"typical": _Key(float, None, _gt(0)), "sd_log": _Key(float, None, _ge(0))}
_CORRELATION = {"parameters": _Key([str]), "matrix": _Key([[float]])}
_ARM = {"name": _Key(str, check=_identifier),
        "policy": _Key(str, check=_one_of(POLICIES)),
        "debulking_factor": _Key(float, 1.0, _within(0, 1, True)),
        "parameter_set": _Key(str, None),
        "parameters": _Key(dict, {}),
        "interventions": _Key([dict], ())}
_INTERVENTION = {"name": _Key(str, check=_identifier),
                 "at_day": _Key(float, None, _ge(0)),
                 "il6_above_pg_ml": _Key(float, None, _gt(0)),
                 "scale": _Key(dict, {}),
                 "set": _Key(dict, {})}
# each policy's keys (pipeline.policies.POLICIES): numbers > 0, required or None
_POLICY_KEYS = {name: {key: _Key(float, _REQUIRED if spec.required else None, _gt(0))
                       for key, spec in entry.keys.items()}
                for name, entry in policies.POLICIES.items()}
_OUTCOMES = {
    "response_day": _Key(float, 28.0, _gt(0)),
    "response_fraction": _Key(float, 0.01, _within(0, 1, False)),
    "relapse_fraction": _Key(float, 0.1, _within(0, 1, True)),
    "crs_il6_thresholds_pg_ml": _Key([float], (100.0, 500.0, 2000.0, 5000.0), _grades),
    "severe_crs_grade": _Key(int, 3, _one_of(range(1, 5))),
    "no_detectable_disease_cells": _Key(float, Outcomes.no_detectable_disease_cells, _gt(0)),
    "lead_response": _Key(str, Outcomes.lead_response, _one_of(RESPONSES)),
}
_OUTPUT = {"dir": _Key(str, "out", lambda v: None if v else "must not be empty")}


def _non_empty(v):
    return None if v else "must not be empty"


def _matches(pattern, what):
    return lambda v: None if re.fullmatch(pattern, v) else f"must be {what}, got {v!r}"


_CLUSTER = {"slurm": _Key(dict, {})}
_SLURM = {
    "partition": _Key(str, None, _non_empty),
    "account": _Key(str, None, _non_empty),
    "cores": _Key(int, 1, _ge(1)),
    "processes": _Key(int, 1, _ge(1)),
    "memory": _Key(str, "2GB", _matches(r"\d+(\.\d+)? ?([kKMGTP]i?B|B)",
                                        'an amount like "2GB", "512MB" or "4GiB"')),
    "walltime": _Key(str, "01:00:00",
                     _matches(r"\d+:[0-5]\d:[0-5]\d", 'of the form "HH:MM:SS"')),
    "jobs": _Key(int, 2, _ge(1)),
    "interface": _Key(str, None, _non_empty),
    "job_name": _Key(str, "cartcohort", _non_empty),
    "job_extra": _Key([str], ()),
}


def _slurm(src, table):
    cluster = _read(src, "cluster", table, _CLUSTER)
    slurm = _read(src, "cluster.slurm", cluster["slurm"], _SLURM)
    if slurm["processes"] > slurm["cores"]:
        raise ConfigError(src, "cluster.slurm.processes",
                          f"must be <= cores ({slurm['cores']!r}), got {slurm['processes']!r}")
    return SlurmSettings(**slurm)


# -- reading tables -----------------------------------------------------------

_EXPECTED = {str: "a string", int: "an integer", float: "a number", dict: "a table"}
_TOML_TYPE = {bool: "boolean", int: "integer", float: "float", str: "string"}


def _describe(value):
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if type(value) in _TOML_TYPE:
        return f"{_TOML_TYPE[type(value)]} {value!r}"
    return f"{type(value).__name__} {value}"          # a TOML date or time


def _typed(src, path, value, kind):
    """``value`` as ``kind`` (arrays become tuples, numbers floats), else ConfigError."""
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise ConfigError(src, path, f"expected an array, got {_describe(value)}")
        return tuple(_typed(src, f"{path}[{i}]", v, kind[0]) for i, v in enumerate(value))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {str: isinstance(value, str), dict: isinstance(value, dict),
          int: number and isinstance(value, int), float: number}[kind]
    if not ok:
        raise ConfigError(src, path, f"expected {_EXPECTED[kind]}, got {_describe(value)}")
    if kind is float:
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(src, path, f"must be finite, got {value!r}")
    return value


def _read(src, path, table, keys, unknown="unknown key"):
    """Validate one table against ``keys``: a dict of its values with defaults filled in."""
    prefix = f"{path}." if path else ""
    for key in table:
        if key not in keys:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", key)
            raise ConfigError(src, prefix + (key if bare else json.dumps(key)),
                              f"{unknown}; allowed keys: {', '.join(keys)}")
    values = {}
    for key, spec in keys.items():
        if key not in table:
            if spec.default is _REQUIRED:
                what = "table" if spec.kind is dict else "key"
                raise ConfigError(src, prefix + key, f"required {what} missing")
            values[key] = spec.default
            continue
        value = _typed(src, prefix + key, table[key], spec.kind)
        message = spec.check(value) if spec.check else None
        if message:
            raise ConfigError(src, prefix + key, message)
        values[key] = value
    return values


def _cohort(src, table, model):
    names = model.parameter_names
    cohort = _read(src, "cohort", table, _COHORT)
    overrides = _read(src, "cohort.parameters", cohort["parameters"],
                      {name: _Key(dict, {}) for name in names},
                      unknown=f"not a parameter of model {model.name!r}")
    parameters = []
    for p in model.parameters:
        given = _read(src, f"cohort.parameters.{p.name}", overrides[p.name], _PARAMETER)
        parameters.append(ParameterDistribution(
            p.name,
            p.typical if given["typical"] is None else given["typical"],
            p.sd_log if given["sd_log"] is None else given["sd_log"]))

    tables = _read(src, "cohort.covariates", cohort["covariates"],
                   {name: _Key(dict, {}) for name in COVARIATES})
    covariates = []
    for name, (median, sd_log) in COVARIATES.items():
        given = _read(src, f"cohort.covariates.{name}", tables[name],
                      {"median": _Key(float, median, _gt(0)),
                       "sd_log": _Key(float, sd_log, _ge(0))})
        covariates.append(Covariate(name, given["median"], given["sd_log"]))

    effect_keys = {"parameter": _Key(str, check=_one_of(names)),
                   "covariate": _Key(str, check=_one_of(tuple(COVARIATES))),
                   "exponent": _Key(float),
                   "reference": _Key(float, check=_gt(0))}
    effects, seen = [], {}
    for i, raw in enumerate(cohort["effects"]):
        path = f"cohort.effects[{i}]"
        effect = CovariateEffect(**_read(src, path, raw, effect_keys))
        pair = (effect.parameter, effect.covariate)
        if pair in seen:
            raise ConfigError(src, path, f"a second effect of {effect.covariate!r} on "
                                         f"{effect.parameter!r} (first: {seen[pair]})")
        seen[pair] = path
        effects.append(effect)

    correlation = cohort["correlation"]
    if correlation is not None:
        correlation = _correlation(src, correlation, model)
    return CohortSpec(tuple(parameters), tuple(covariates), tuple(effects), correlation)


def _correlation(src, table, model):
    path = "cohort.correlation"
    given = _read(src, path, table, _CORRELATION)
    names, matrix = given["parameters"], given["matrix"]
    if len(names) < 2:
        raise ConfigError(src, f"{path}.parameters", f"needs >= 2 names, got {len(names)}")
    for i, name in enumerate(names):
        if name not in model.parameter_names:
            raise ConfigError(src, f"{path}.parameters[{i}]",
                              f"{name!r} is not a parameter of model {model.name!r}; "
                              f"parameters are {', '.join(model.parameter_names)}")
        if name in names[:i]:
            raise ConfigError(src, f"{path}.parameters[{i}]", f"{name!r} is listed twice")
    n = len(names)
    if len(matrix) != n:
        raise ConfigError(src, f"{path}.matrix", f"needs {n} rows (one per parameter), "
                                                 f"got {len(matrix)}")
    for i, row in enumerate(matrix):
        if len(row) != n:
            raise ConfigError(src, f"{path}.matrix[{i}]", f"needs {n} entries, got {len(row)}")
        if row[i] != 1.0:
            raise ConfigError(src, f"{path}.matrix[{i}][{i}]",
                              f"a correlation matrix has 1 on its diagonal, got {row[i]!r}")
        for j in range(i):
            if row[j] != matrix[j][i]:
                raise ConfigError(src, f"{path}.matrix[{i}][{j}]",
                                  f"not symmetric: {row[j]!r} but matrix[{j}][{i}] "
                                  f"is {matrix[j][i]!r}")
    try:
        np.linalg.cholesky(np.array(matrix))
    except np.linalg.LinAlgError:
        raise ConfigError(src, f"{path}.matrix", "not positive definite") from None
    return names, matrix


def _arm_parameters(src, path, values, model):
    """An arm's ``parameter_set`` and ``parameters`` checked against the model."""
    if values["parameter_set"] is not None and values["parameter_set"] not in model.parameter_sets:
        sets = ", ".join(sorted(model.parameter_sets)) or "none"
        raise ConfigError(src, f"{path}.parameter_set",
                          f"model {model.name!r} has no parameter set "
                          f"{values['parameter_set']!r}; its sets: {sets}")
    given = _read(src, f"{path}.parameters", values["parameters"],
                  {name: _Key(float, None, _ge(0)) for name in model.parameter_names},
                  unknown=f"not a parameter of model {model.name!r}")
    values["parameters"] = tuple((name, given[name]) for name in values["parameters"])


def _interventions(src, path, raws, model, horizon_days):
    """An arm's ``interventions`` tables, checked against the model and horizon."""
    interventions, seen = [], {}
    for i, raw in enumerate(raws):
        where = f"{path}.interventions[{i}]"
        values = _read(src, where, raw, _INTERVENTION)
        if (values["at_day"] is None) == (values["il6_above_pg_ml"] is None):
            raise ConfigError(src, f"{where}.at_day", "an intervention needs exactly one of "
                                                      "at_day and il6_above_pg_ml")
        if values["at_day"] is not None and values["at_day"] > horizon_days:
            raise ConfigError(src, f"{where}.at_day", f"must be <= scenario.horizon_days "
                                                      f"({horizon_days!r}), got {values['at_day']!r}")
        if values["il6_above_pg_ml"] is not None and "il6" not in model.roles:
            raise ConfigError(src, f"{where}.il6_above_pg_ml",
                              f"model {model.name!r} has no IL-6 quantity")
        for key in ("scale", "set"):
            given = _read(src, f"{where}.{key}", values[key],
                          {name: _Key(float, None, _ge(0)) for name in model.parameter_names},
                          unknown=f"not a parameter of model {model.name!r}")
            values[key] = tuple((name, given[name]) for name in values[key])
        both = set(dict(values["scale"])) & set(dict(values["set"]))
        if both:
            raise ConfigError(src, f"{where}.set.{sorted(both)[0]}",
                              "a parameter is either scaled or set, not both")
        if not values["scale"] and not values["set"]:
            raise ConfigError(src, f"{where}.scale", "an intervention changes at least one "
                                                     "parameter (scale or set)")
        if values["name"] in seen:
            raise ConfigError(src, f"{where}.name", f"duplicate intervention name "
                                                    f"{values['name']!r} (also {seen[values['name']]})")
        seen[values["name"]] = f"{where}.name"
        interventions.append(Intervention(**values))
    return tuple(interventions)


def _policy_fits_model(src, path, policy, model):
    """The policy's own check against the model (pipeline.policies.POLICIES)."""
    message = policies.policy(policy).fits_model(model)
    if message:
        raise ConfigError(src, f"{path}.policy", message)


def _policy_keys_agree(src, path, policy, values):
    """The policy's own check between its keys (pipeline.policies.POLICIES)."""
    problem = policies.policy(policy).check(values)
    if problem:
        key, message = problem
        raise ConfigError(src, f"{path}.{key}", message)


def _arms(src, raws, model, horizon_days):
    if not raws:
        raise ConfigError(src, "arms", "at least one [[arms]] table is required")
    arms, seen = [], {}
    for i, raw in enumerate(raws):
        path = f"arms[{i}]"
        policy = _read(src, path, {k: v for k, v in raw.items() if k == "policy"},
                       {"policy": _ARM["policy"]})["policy"]
        values = _read(src, path, raw, {**_ARM, **_POLICY_KEYS[policy]},
                       unknown=f"unknown key for policy {policy!r}")
        _arm_parameters(src, path, values, model)
        _policy_fits_model(src, path, policy, model)
        values["interventions"] = _interventions(src, path, values["interventions"], model,
                                                 horizon_days)
        _policy_keys_agree(src, path, policy, values)
        arm = Arm(**values)
        if arm.name in seen:
            raise ConfigError(src, f"{path}.name",
                              f"duplicate arm name {arm.name!r} (also {seen[arm.name]})")
        seen[arm.name] = f"{path}.name"
        arms.append(arm)
    return tuple(arms)


def _scenario(src, data, text, overrides):
    top = _read(src, "", data, _TOP)
    scenario = _read(src, "scenario", {**top["scenario"], **overrides}, _SCENARIO)
    model = get_model(scenario["model"])
    missing = [role for role in SCENARIO_ROLES if role not in model.roles]
    if missing:
        raise ConfigError(src, "scenario.model", f"model {model.name!r} cannot run a scenario: "
                                                 f"it has no {', '.join(missing)} quantity")
    cohort = _cohort(src, top["cohort"], model)
    arms = _arms(src, top["arms"], model, scenario["horizon_days"])
    outcomes = _read(src, "outcomes", top["outcomes"], _OUTCOMES)
    if outcomes["response_day"] > scenario["horizon_days"]:
        raise ConfigError(src, "outcomes.response_day",
                          f"must be <= scenario.horizon_days ({scenario['horizon_days']!r}), "
                          f"got {outcomes['response_day']!r}")
    output = _read(src, "output", top["output"], _OUTPUT)
    cluster_slurm = _slurm(src, top["cluster"])
    report = _report(src, top["report"], arms)
    pairs = tuple(sorted(overrides.items()))
    return Scenario(**scenario, cohort=cohort, arms=arms, outcomes=Outcomes(**outcomes),
                    output=Output(**output), source_path=src, text=text,
                    sha256=_digest(text, pairs), overrides=pairs,
                    cluster_slurm=cluster_slurm, report=report)


_REPORT = {"waterfall": _Key(dict, None)}
_WATERFALL = {"baseline": _Key(str), "full": _Key(str), "steps": _Key([str])}


def _report(src, table, arms):
    given = _read(src, "report", table, _REPORT)
    if given["waterfall"] is None:
        return Report()
    path = "report.waterfall"
    waterfall = _read(src, path, given["waterfall"], _WATERFALL)
    names = [arm.name for arm in arms]

    def check_arm(key, name):
        if name not in names:
            raise ConfigError(src, key, f"{name!r} is not an arm; arms are {', '.join(names)}")

    check_arm(f"{path}.baseline", waterfall["baseline"])
    check_arm(f"{path}.full", waterfall["full"])
    if not waterfall["steps"]:
        raise ConfigError(src, f"{path}.steps", "needs at least one arm")
    for i, name in enumerate(waterfall["steps"]):
        check_arm(f"{path}.steps[{i}]", name)
        if name in waterfall["steps"][:i] or name in (waterfall["baseline"], waterfall["full"]):
            raise ConfigError(src, f"{path}.steps[{i}]",
                              f"{name!r} is listed twice (or is the baseline or full arm)")
    return Report(Waterfall(**waterfall))


_digest = scenario_digest     # sha256 of the text, then the overrides as canonical JSON


# -- the API ------------------------------------------------------------------

def _parse(text, source):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.S)
        if at:
            raise ConfigError(source, f"line {at[2]}", f"{at[1]} (column {at[3]})") from None
        line = max(1, len(text.splitlines()))
        raise ConfigError(source, f"line {line}", message) from None


def scenario_from_text(text, source="<string>"):
    """Validate a scenario given as TOML text; ``source`` names it in errors."""
    return _scenario(source, _parse(text, source), text, {})


def read_text(path):
    """A TOML file's text, or ConfigError naming it ("cannot read: ...")."""
    source = str(path)
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(source, "cannot read", exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "cannot read", f"not UTF-8 text ({exc.reason} at byte "
                                                 f"{exc.start})") from None


def load_scenario(path):
    """Read and validate a scenario file."""
    return scenario_from_text(read_text(path), str(path))


def with_overrides(scenario, patients=None, shard_size=None, seed=None):
    """A validated copy of ``scenario`` with new values for the keys given.

    Overrides accumulate over calls and are hashed with the text; one equal to
    the file's value (or its default) is dropped, so the hash changes exactly
    when the scenario does."""
    given = {"patients": patients, "shard_size": shard_size, "seed": seed}
    merged = {**dict(scenario.overrides), **{k: v for k, v in given.items() if v is not None}}
    data = _parse(scenario.text, scenario.source_path)
    changed = _scenario(scenario.source_path, data, scenario.text, merged)
    in_file = data["scenario"]
    kept = {k: v for k, v in merged.items() if v != in_file.get(k, _SCENARIO[k].default)}
    return changed if kept == merged else _scenario(scenario.source_path, data,
                                                    scenario.text, kept)
