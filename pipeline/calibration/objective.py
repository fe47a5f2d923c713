"""The calibration objective: a fixed virtual cohort, its summary statistics,
and their standardised residuals against published targets.

The cohort is one scenario arm on ``patients`` virtual patients drawn once
(:func:`pipeline.cohort.sample_shard`, the scenario's seed): every evaluation
simulates the same patients with new typical values (each patient keeps its
own deviation, exp(sd_log z)), so the objective is a deterministic function of
the parameters (common random numbers). A simulation is one shard of the
pipeline (:func:`pipeline.shard.run_shard`), the code a run uses.

Statistics (``pipeline.calibration.targets``):

* ``rate``: the fraction of patients with an outcome. In the objective the
  outcome's 0/1 threshold is replaced by a logistic of width w (log10 units,
  ``smoothing_log10``) of the patient's margin x (log10 distance to the
  threshold, <= 0 for an event): rate = mean 1 / (1 + exp(x / w)). So the
  objective is smooth in the parameters; the table also reports the plain rate.
  Margins: ``responded`` log10(T(day) / (response_fraction T0));
  ``no_detectable_disease`` log10(T(day) / no_detectable_disease_cells);
  ``severe_crs`` log10(threshold / peak IL-6), threshold the IL-6 level of
  grade ``severe_crs_grade``.
* ``median``, ``median_ratio``: medians over patients.

Residual of a target: (s - value) / sd, or (ln s - ln value) / sd on the log
scale. Objective: the sum of squared residuals.
"""
from dataclasses import replace

import numpy as np

from pipeline.config import ConfigError, load_scenario, with_overrides
from pipeline.shard import run_shard
from kernels.models import get_model

# below this many cells the tumour counts as 1 cell in the log10 margins
_FLOOR_CELLS = 1.0


def _log10(values):
    return np.log10(np.maximum(np.asarray(values, float), _FLOOR_CELLS))


def margins(outcome, columns, outcomes):
    """log10 distance of each patient to the outcome's threshold (<= 0: event)."""
    tumour = columns["tumour_response_day_cells"]
    if outcome == "responded":
        return _log10(tumour) - _log10(outcomes.response_fraction * columns["tumour0_cells"])
    if outcome == "no_detectable_disease":
        return _log10(tumour) - np.log10(outcomes.no_detectable_disease_cells)
    threshold = outcomes.crs_il6_thresholds_pg_ml[outcomes.severe_crs_grade - 1]
    return np.log10(threshold) - np.log10(np.maximum(columns["il6_peak_pg_ml"], 1e-300))


def cohort_scenario(spec):
    """The scenario of the calibration cohort: the targets file's scenario with
    one shard of ``patients`` patients and only the target arm. Checks that the
    arm, the fitted and the screened parameters exist (ConfigError otherwise)."""
    scenario = load_scenario(spec.scenario_path)
    arms = [arm for arm in scenario.arms if arm.name == spec.arm]
    if not arms:
        raise ConfigError(spec.source, "calibration.arm",
                          f"scenario {spec.scenario_path} has no arm {spec.arm!r}; arms are "
                          f"{[arm.name for arm in scenario.arms]}")
    model = get_model(scenario.model)
    for key in ("fit", "screen"):
        for name in getattr(spec, key):
            if name not in model.parameter_names:
                raise ConfigError(spec.source, f"calibration.{key}",
                                  f"model {model.name!r} has no parameter {name!r}")
    overlap = set(spec.fit) & set(spec.screen)
    if overlap:
        raise ConfigError(spec.source, "calibration.screen",
                          f"{sorted(overlap)} are fitted already")
    scenario = with_overrides(scenario, patients=spec.patients, shard_size=spec.patients,
                              seed=spec.seed)
    return replace(scenario, arms=tuple(arms))


def typical_values(scenario):
    """{parameter: typical value} of the scenario's cohort."""
    return {p.name: p.typical for p in scenario.cohort.parameters}


def with_typical(scenario, values):
    """The scenario with new cohort typical values {parameter: value}."""
    parameters = tuple(replace(p, typical=float(values[p.name])) if p.name in values else p
                       for p in scenario.cohort.parameters)
    return replace(scenario, cohort=replace(scenario.cohort, parameters=parameters))


def simulate(scenario):
    """The cohort's dataset columns {name: numpy array}, patients whose
    integration succeeded only (status 0)."""
    (table, _), = run_shard(scenario, 0).values()
    columns = {name: table.column(name).to_numpy(zero_copy_only=False)
               for name in table.column_names}
    ok = columns["status"] == 0
    return {name: values[ok] for name, values in columns.items()}


def _tertile_mask(columns, tertile):
    if tertile is None:
        return slice(None)
    burden = columns["tumour0_cells"]
    edges = np.quantile(burden, [1 / 3, 2 / 3])
    index = np.searchsorted(edges, burden, side="left")   # 0, 1, 2; edges go low
    return index == tertile - 1


def statistic(target, columns, outcomes, smoothing_log10):
    """(smoothed value used in the objective, plain value) of one target."""
    if target.statistic == "rate":
        mask = _tertile_mask(columns, target.tertile)
        margin = margins(target.outcome, columns, outcomes)[mask]
        smooth = float(np.mean(1.0 / (1.0 + np.exp(np.clip(margin / smoothing_log10,
                                                             -700, 700)))))
        return smooth, float(np.mean(margin <= 0.0))
    if target.statistic == "median":
        value = float(np.nanmedian(columns[target.column]))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(np.nanmedian(columns[target.numerator] / columns[target.denominator]))
    return value, value


def residual(target, value):
    """Standardised residual of an achieved value (module docstring)."""
    if target.scale == "log":
        return (np.log(max(value, 1e-300)) - np.log(target.value)) / target.sd
    return (value - target.value) / target.sd


def check_columns(spec, scenario):
    """ConfigError for a target naming a column the dataset does not have (the
    columns of a 10-patient simulation of the cohort's scenario)."""
    columns = simulate(replace(scenario, patients=10, shard_size=10))
    for i, target in enumerate(spec.targets):
        for key in ("column", "numerator", "denominator"):
            name = getattr(target, key)
            if name is not None and name not in columns:
                raise ConfigError(spec.source, f"targets[{i}].{key}",
                                  f"the dataset has no column {name!r}")


def evaluate(spec, scenario, values):
    """Simulate the cohort with typical ``values`` -> (residuals[n_targets],
    [(smoothed, plain) per target])."""
    columns = simulate(with_typical(scenario, values))
    stats = [statistic(t, columns, scenario.outcomes, spec.smoothing_log10)
             for t in spec.targets]
    residuals = np.array([residual(t, smooth) for t, (smooth, _) in zip(spec.targets, stats)])
    return residuals, stats
