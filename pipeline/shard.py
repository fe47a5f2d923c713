"""One shard: sample its patients, dose them per arm, integrate, tabulate.

A shard (``scenario.shard_size`` patients) is the unit of work, of randomness and
of storage. Every arm runs on the shard's same patients (common random numbers),
so differences between arms are paired. The result depends only on the
scenario and the shard index: never on which worker runs it or when.
"""
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kernels import dopri5
from kernels.models import get_model
from pipeline import outcomes, policies
from pipeline.cohort import sample_shard

# A few patients of every shard are also saved as daily trajectories for plots.
TRAJECTORY_PATIENTS = 2
TRAJECTORY_STEP_DAYS = 1.0


def arm_parameters(model, scenario, arm, params):
    """The patients' parameters [N, P] in an arm: for every typical value the
    arm sets (its ``parameter_set`` and ``parameters``), each patient's value
    scaled by arm typical / cohort typical, so that it keeps its own deviation
    from the typical patient (common random numbers across arms). A parameter
    whose cohort typical value is 0 (a switch that is off) takes the arm's value."""
    values = arm.typical_values(model)
    if not values:
        return params
    params = params.copy()
    cohort = {d.name: d.typical for d in scenario.cohort.parameters}
    for name, typical in values.items():
        j = model.parameter_index(name)
        if cohort[name] == 0.0:
            params[:, j] = typical
        else:
            params[:, j] *= typical / cohort[name]
    return params


def tumour_at_infusion(model, y0):
    """The tumour at infusion (cells): the sum of the tumour states of y0."""
    states = [model.state_index(name) for name in model.roles["tumour"]]
    return y0[:, states].sum(axis=1) * model.cells_per_unit


def arm_doses(model, scenario, arm, shard, y0, params):
    """The arm's dosing (:class:`pipeline.policies.Dosing`) under its policy,
    through the policy table (:data:`pipeline.policies.POLICIES`)."""
    patients = policies.ArmPatients(model, scenario, arm, shard.covariates["weight_kg"],
                                    tumour_at_infusion(model, y0), y0, params)
    return policies.policy(arm.policy).dose(patients)


def _model_columns(model, params, dose, tumour0, columns):
    """Columns every run has (effector-to-target ratio) and those the model
    defines (initial efficacy ratio, its extra outcomes from the feature and
    outcome ``columns``)."""
    extra = {"effector_to_target": dose / tumour0}
    if model.efficacy_ratio is not None:
        extra["efficacy_ratio"] = model.efficacy_ratio(params, dose / model.cells_per_unit)
    if model.extra_outcomes is not None:
        extra.update(model.extra_outcomes(columns, params))
    return extra


def _infusion(model, dose):
    """The infusion at day 0: ``dose`` cells [N] into the model's infusion state."""
    infusion = model.roles["infusion"][0]
    return dopri5.Doses([0.0], [infusion], (dose / model.cells_per_unit)[:, None])


def _solve(model, scenario, y0, params, dose, threads=1, **options):
    return dopri5.solve(model, y0, params, 0.0, scenario.horizon_days, rtol=scenario.rtol,
                        atol=scenario.atol, doses=_infusion(model, dose),
                        max_steps=scenario.max_steps, threads=threads, **options)


@dataclass(frozen=True, eq=False)
class ArmProblem:
    """One arm of one shard as the kernel integrates it (:func:`arm_problem`).

    ``y0``       float64[N, S] at infusion, before the dose (tumour after any debulking)
    ``params``   float64[N, P], the arm's parameters (:func:`arm_parameters`)
    ``tumour0_cells``  float64[N], the tumour at infusion in cells
    ``dosing``   :class:`pipeline.policies.Dosing` under the arm's policy
    ``events``, ``first_event``  the arm's interventions
                 (:func:`pipeline.policies.intervention_events`)
    """

    model: object
    scenario: object
    y0: np.ndarray
    params: np.ndarray
    tumour0_cells: np.ndarray
    dosing: object
    events: tuple
    first_event: dict

    t0 = 0.0

    def __len__(self):
        return int(self.y0.shape[0])

    @property
    def t1(self):
        return self.scenario.horizon_days

    @property
    def rtol(self):
        return self.scenario.rtol

    @property
    def atol(self):
        return self.scenario.atol

    @property
    def doses(self):
        """The infusion as :class:`kernels.dopri5.Doses` (amounts in model units)."""
        return _infusion(self.model, self.dosing.dose_cells)

    def solve(self, features=(), threads=1, **options):
        """Integrate every patient over 0..horizon_days with the scenario's
        tolerances, the arm's dose and events (:func:`kernels.dopri5.solve`)."""
        return _solve(self.model, self.scenario, self.y0, self.params,
                      self.dosing.dose_cells, threads=threads, features=features,
                      events=self.events, **options)


def arm_problem(model, scenario, arm, shard):
    """The kernel inputs of ``arm`` on ``shard`` (a :class:`pipeline.cohort.Shard`):
    the arm's parameters, initial states, dose and interventions, as
    :func:`run_shard` integrates them. Returns an :class:`ArmProblem`."""
    params = arm_parameters(model, scenario, arm, shard.params)
    burden = policies.tumour_at_infusion(arm, shard.covariates["tumour_burden_cells"])
    y0 = model.initial_states(burden / model.cells_per_unit, params)
    dosing = arm_doses(model, scenario, arm, shard, y0, params)
    events, first_event = policies.intervention_events(model, arm)
    return ArmProblem(model, scenario, y0, params, tumour_at_infusion(model, y0), dosing,
                      events, first_event)


def run_shard(scenario, shard_index):
    """Integrate every arm of one shard. Returns {arm name: (patients table,
    trajectories table)} as pyarrow tables (see pipeline.layout for the layout)."""
    model = get_model(scenario.model)
    shard = sample_shard(scenario.cohort, scenario.seed, shard_index, scenario.shard_size,
                         scenario.patients)
    features = outcomes.kernel_features(model, scenario.outcomes, scenario.horizon_days)
    n = len(shard)
    baseline = {
        "patient_id": shard.patient_ids,
        "shard": np.full(n, shard_index, np.int32),
        **shard.covariates,
        **{f"param_{name}": shard.params[:, j] for j, name in enumerate(model.parameter_names)},
    }
    # parameters any arm changes: every arm's table has them (one schema)
    all_arm_parameters = list(dict.fromkeys(
        name for arm in scenario.arms for name in arm.typical_values(model)))
    all_interventions = list(dict.fromkeys(
        i.name for arm in scenario.arms for i in arm.interventions))
    tables = {}
    for arm in scenario.arms:
        problem = arm_problem(model, scenario, arm, shard)
        params, y0, tumour0 = problem.params, problem.y0, problem.tumour0_cells
        dosing, events, first_event = problem.dosing, problem.events, problem.first_event
        dose = dosing.dose_cells
        solution = problem.solve(features=features)
        given = {f"t_{name}_d": (solution.event_times[:, first_event[name]]
                                 if name in first_event else np.full(n, np.nan))
                 for name in all_interventions}
        columns = outcomes.feature_columns(model, solution.features, scenario.outcomes,
                                           scenario.horizon_days)
        result = outcomes.outcome_columns(columns, tumour0, scenario.outcomes)
        patients = pa.table({
            **baseline,
            **({f"arm_param_{name}": params[:, model.parameter_index(name)]
                for name in all_arm_parameters}),
            "debulking_factor": np.full(n, arm.debulking_factor),
            "tumour0_cells": tumour0,
            "dose_cells": dose,
            "il6_peak_predicted_pg_ml": dosing.predicted_il6_pg_ml,
            "dose_meets_target": dosing.meets_target,
            **columns, **result,
            **_model_columns(model, params, dose, tumour0, {**columns, **result}),
            **given,
            "status": solution.status,
            "n_steps": solution.n_steps,
        })
        tables[arm.name] = (patients, _trajectories(model, scenario, y0, params, shard, dose,
                                                    events))
    return tables


def _trajectories(model, scenario, y0, params, shard, dose, events):
    """Daily states of the shard's first TRAJECTORY_PATIENTS patients."""
    k = min(TRAJECTORY_PATIENTS, len(shard))
    times = np.arange(0.0, scenario.horizon_days + 0.5 * TRAJECTORY_STEP_DAYS,
                      TRAJECTORY_STEP_DAYS)
    times = times[times <= scenario.horizon_days]
    saved = _solve(model, scenario, y0[:k], params[:k], dose[:k], save_at=times,
                   events=events).saved
    return pa.table({
        "patient_id": np.repeat(shard.patient_ids[:k], times.size),
        "shard": np.full(k * times.size, shard.index, np.int32),
        "t_d": np.tile(times, k),
        **{name: saved[:, :, s].ravel() for s, name in enumerate(model.state_names)},
    })
