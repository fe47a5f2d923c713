"""Virtual clinical datasets: sample individuals, predict at a sampling schedule,
add measurement error.

Individual parameters (:func:`sample_parameters`), for parameter p:

    log theta_ip = log typical_p + sum_c exponent_pc log(covariate_ic / reference_pc) + eta_ip
    eta_i ~ N(0, Omega)          Omega diagonal (omega^2 per parameter) or full

Observations (:func:`simulate_observations`) at each sampling time, with f the
structural model's prediction and eps ~ N(0, 1):

    additive      y = f + sigma eps
    proportional  y = f (1 + sigma eps)
    lognormal     y = f exp(sigma eps)

and, with a limit of quantification L, y < L is reported as blq = 1 with value L.

Randomness: ``SeedSequence(seed).spawn(2)``: the first stream samples the
parameters, the second the measurement errors, so :func:`simulate_dataset` =
:func:`sample_parameters` then :func:`simulate_observations` with the same seed.

:func:`simulate_from_scenario` takes the virtual patients of a scenario
(:mod:`pipeline.config`, :mod:`pipeline.cohort`: the same patients a run
samples), one arm's parameters, tumour at infusion and dose, and simulates
them through the batched kernel at a sampling schedule: the data behind
``cartcohort simulate-data``.
"""
import numpy as np

from kernels.models import get_model
from pipeline import policies
from pipeline.cohort import sample_shard
from pipeline.config import load_scenario, with_overrides
from pipeline.estimate.data import make_dataset
from pipeline.estimate.residuals import check_model
from pipeline.estimate.structural import get_structural
from pipeline.shard import arm_doses, arm_parameters


def _streams(seed):
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2)]


def _per_parameter(structural, values, what):
    """float64[P] from None (None back), a {name: value} dict or a sequence."""
    if values is None:
        return None
    if isinstance(values, dict):
        unknown = sorted(set(values) - set(structural.parameter_names))
        if unknown:
            raise ValueError(f"{what}: {unknown} are not parameters of {structural.name!r}")
        return np.array([values.get(n, np.nan) for n in structural.parameter_names])
    return np.asarray(values, dtype=np.float64)


def _omega(structural, omega2):
    """Omega [P, P] from None (the model's sd_log^2), a vector/dict of variances or a matrix."""
    if omega2 is None:
        return np.diag([structural.sd_log[n] ** 2 for n in structural.parameter_names])
    omega = _per_parameter(structural, omega2, "omega2")
    if isinstance(omega2, dict):
        omega = np.nan_to_num(omega)
    return np.diag(omega) if omega.ndim == 1 else omega


def sample_parameters(structural, n_individuals, *, typical=None, omega2=None, seed=0,
                      covariates=None, effects=()):
    """float64[N, P] individual parameters (module docstring).

    ``typical`` {name: value} (missing names: the model's) or float64[P];
    ``omega2`` variances of the log parameters, {name: value} or float64[P]
    (diagonal) or float64[P, P]; default the model's sd_log^2;
    ``covariates`` {name: float64[N]}; ``effects`` sequence of
    :class:`pipeline.cohort.CovariateEffect` (parameter, covariate, exponent,
    reference): planted covariate effects."""
    base = structural.typical_vector()
    given = _per_parameter(structural, typical, "typical")
    if given is not None:
        base = np.where(np.isnan(given), base, given)
    omega = _omega(structural, omega2)
    eta = _streams(seed)[0].multivariate_normal(np.zeros(base.size), omega,
                                                size=int(n_individuals), method="cholesky")
    log_theta = np.log(base)[None, :] + eta
    for effect in effects:
        j = structural.parameter_names.index(effect.parameter)
        log_theta[:, j] += effect.exponent * np.log(np.asarray(covariates[effect.covariate],
                                                               dtype=np.float64)
                                                    / effect.reference)
    return np.exp(log_theta)


def _schedule(times, observations):
    """{observation name: sorted float64 times}."""
    if isinstance(times, dict):
        return {name: np.sort(np.asarray(times[name], dtype=np.float64)) for name in observations}
    times = np.sort(np.asarray(times, dtype=np.float64))
    return {name: times for name in observations}


def add_error(error_model, predicted, sigma, rng):
    """Observed values: the prediction with measurement error (module docstring)."""
    check_model(error_model)
    eps = rng.standard_normal(predicted.shape)
    if error_model == "additive":
        return predicted + sigma * eps
    if error_model == "proportional":
        return predicted * (1.0 + sigma * eps)
    return predicted * np.exp(sigma * eps)


def simulate_observations(structural, theta, times, *, error_model="lognormal", sigma=0.1,
                          seed=0, observations=None, dose_cells=None, covariates=None,
                          loq=None, ids=None):
    """A Dataset of the individuals theta[N, P] observed at ``times``.

    ``times``: days, shared by every observation name or {name: days};
    ``observations``: names to simulate (default the model's); ``sigma`` a
    number or {name: number}; ``dose_cells`` a number or float64[N], one dose
    at day 0 (models that take doses); ``covariates`` {name: float64[N]};
    ``loq`` a number or {name: number}; ``ids`` default 1..N.
    Raises ValueError if a prediction is not finite (a failed solve)."""
    theta = np.asarray(theta, dtype=np.float64)
    n = theta.shape[0]
    observations = tuple(observations or structural.observations)
    schedule = _schedule(times, observations)
    individual = np.concatenate([np.repeat(np.arange(n), schedule[o].size) for o in observations])
    time = np.concatenate([np.tile(schedule[o], n) for o in observations])
    name = np.concatenate([np.full(n * schedule[o].size, o, object) for o in observations])
    doses = {} if dose_cells is None else dict(
        dose_individual=np.arange(n), dose_time=np.zeros(n),
        dose_amount=np.broadcast_to(np.asarray(dose_cells, dtype=np.float64), (n,)))
    ids = np.arange(1, n + 1) if ids is None else np.asarray(ids)
    skeleton = make_dataset(ids, individual, time, name, np.zeros(time.size),
                            covariates=covariates, **doses)
    structural.check(skeleton)
    predicted = structural.predict(theta, skeleton)
    failed = np.flatnonzero(~np.isfinite(predicted))
    if failed.size:
        raise ValueError(f"{failed.size} predictions are not finite (first: id "
                         f"{ids[skeleton.individual[failed[0]]]!r}, {skeleton.name[failed[0]]} "
                         f"at day {skeleton.time[failed[0]]:g})")

    def by_name(value):
        if isinstance(value, dict):
            return np.array([value[o] for o in skeleton.name], dtype=np.float64)
        return np.full(skeleton.n_observations, float(value))

    value = add_error(error_model, predicted, by_name(sigma), _streams(seed)[1])
    blq = np.zeros(value.shape, bool)
    if loq is not None:
        limit = by_name(loq)
        blq = value < limit
        value = np.where(blq, limit, value)
    elif error_model == "lognormal" and np.any(predicted <= 0):
        m = np.flatnonzero(predicted <= 0)[0]
        raise ValueError(f"prediction {predicted[m]:g} <= 0 (id {ids[skeleton.individual[m]]}, "
                         f"{skeleton.name[m]} at day {skeleton.time[m]:g}) cannot carry "
                         f"lognormal error; give a limit of quantification (loq)")
    return make_dataset(ids, skeleton.individual, skeleton.time, skeleton.name, value, blq,
                        skeleton.dose_individual, skeleton.dose_time, skeleton.dose_amount,
                        covariates)


def simulate_dataset(structural, n_individuals, times, *, typical=None, omega2=None,
                     error_model="lognormal", sigma=0.1, seed=0, observations=None,
                     dose_cells=None, covariates=None, effects=(), loq=None):
    """A virtual clinical Dataset of N individuals drawn around ``typical`` with
    between-individual variance ``omega2`` (:func:`sample_parameters`) and
    observed at ``times`` (:func:`simulate_observations`). ``structural`` is a
    StructuralModel or a name for :func:`~pipeline.estimate.structural.get_structural`."""
    if isinstance(structural, str):
        structural = get_structural(structural)
    theta = sample_parameters(structural, n_individuals, typical=typical, omega2=omega2,
                              seed=seed, covariates=covariates, effects=effects)
    return simulate_observations(structural, theta, times, error_model=error_model,
                                 sigma=sigma, seed=seed, observations=observations,
                                 dose_cells=dose_cells, covariates=covariates, loq=loq)


def _scenario_patients(scenario, arm):
    """(ids, params[N, P], dose cells[N], covariates) of every patient of a scenario in an arm."""
    model = get_model(scenario.model)
    parts = []
    for s in range(scenario.n_shards):
        shard = sample_shard(scenario.cohort, scenario.seed, s, scenario.shard_size,
                             scenario.patients)
        params = arm_parameters(model, scenario, arm, shard.params)
        burden = policies.tumour_at_infusion(arm, shard.covariates["tumour_burden_cells"])
        y0 = model.initial_states(burden / model.cells_per_unit, params)
        dose = arm_doses(model, scenario, arm, shard, y0, params).dose_cells
        parts.append((shard.patient_ids, params, dose,
                      {**shard.covariates, "tumour_burden_cells": burden}))
    covariates = {name: np.concatenate([p[3][name] for p in parts]) for name in parts[0][3]}
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), covariates)


def simulate_from_scenario(scenario_path, schedule_days, *, error_model="lognormal", sigma=0.2,
                           seed=0, observations=("tumour", "cart", "il6"), arm=None,
                           patients=None, loq=None):
    """A virtual clinical Dataset from a scenario file: its virtual patients
    (``patients`` overrides the scenario's count) treated as in arm ``arm``
    (default the first), observed at ``schedule_days`` (days after the
    infusion) for ``observations`` (``tumour`` and ``cart`` in cells, ``il6``
    in pg/mL) with measurement error (``error_model``, ``sigma``: a number or
    {name: number}; ``loq`` likewise). Covariates: the patients'
    ``tumour_burden_cells`` at infusion (after debulking) and ``weight_kg``;
    doses: the arm's, in cells, at day 0. The scenario's seed draws the
    patients, ``seed`` the measurement errors."""
    scenario = load_scenario(scenario_path)
    if patients is not None:
        scenario = with_overrides(scenario, patients=patients)
    arms = {a.name: a for a in scenario.arms}
    if arm is not None and arm not in arms:
        raise ValueError(f"{scenario_path}: no arm {arm!r}; arms are {', '.join(arms)}")
    chosen = arms[arm] if arm is not None else scenario.arms[0]
    model = get_model(scenario.model)
    ids, params, dose, covariates = _scenario_patients(scenario, chosen)
    structural = get_structural(scenario.model, free=model.parameter_names, rtol=scenario.rtol,
                                atol=scenario.atol, max_steps=scenario.max_steps,
                                events=policies.intervention_events(model, chosen)[0])
    return simulate_observations(structural, params, schedule_days, error_model=error_model,
                                 sigma=sigma, seed=seed, observations=observations,
                                 dose_cells=dose, covariates=covariates, loq=loq, ids=ids)
