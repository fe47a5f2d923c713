"""Dosing policies and pre-treatment: how much CAR T each virtual patient gets.

Every arm sees the same patients (pipeline.cohort); a policy turns a patient's
covariates and parameters into a dose. The policies are one table,
:data:`POLICIES` (name -> :class:`Policy`: its config keys, its check against
the model, its dose function and its one-line description), which
:mod:`pipeline.config` validates arms against and :mod:`pipeline.shard` doses
through: adding a policy is one entry here.

* ``fixed``: ``dose_cells`` for everyone, or ``dose_cells_per_kg`` x weight.
* ``adaptive``: the dose that a closed-form prediction of peak IL-6 says meets
  the safety target ``target_il6_pg_ml``: the prediction inverted for the
  target, clipped to [min_dose_cells, max_dose_cells], so it escalates as well
  as de-escalates (max_dose_cells where even that is predicted below the
  target, min_dose_cells where even that is predicted above it). The predictor
  is the scenario model's, from :data:`pipeline.predictors.PREDICTORS`; a
  model without one cannot use the policy.
* ``oracle``: on the full model, the dose of best response within the safety
  target (:func:`oracle_dose`): the best any dose rule could do with that target.
* debulking (any policy): the baseline tumour multiplied by ``debulking_factor``
  before infusion.
* interventions (any policy): tocilizumab, corticosteroids... given on a day or
  when IL-6 first reaches a level, as parameter changes from then on (kernel
  events, :mod:`kernels.events`; :func:`intervention_events`). Doses of the
  adaptive and oracle policies are chosen without them.

The predictors, what the adaptive policy knows and the derivation of each
model's closed form are in :mod:`pipeline.predictors`.
"""
from dataclasses import dataclass

import numpy as np

from kernels import events as ke
from kernels import features as kf
from kernels.dopri5 import Doses, solve
from pipeline.predictors import PREDICTORS, check_prediction, predicted_peak_il6

# the oracle: log-spaced grid doses, then a bracketing root finder on the
# feasible edge, to ORACLE_LOG_DOSE_TOLERANCE in log dose (1e-4: 0.01% of the dose)
ORACLE_GRID_DOSES = 15
ORACLE_LOG_DOSE_TOLERANCE = 1e-4
ORACLE_ROOT_STEPS = 20


# -- what a policy sees and returns -------------------------------------------

@dataclass(frozen=True)
class ArmPatients:
    """One arm's patients at infusion, as a policy sees them: the model, the
    scenario (tolerances, horizon, outcomes, cohort), the arm, body weights (kg),
    the tumour at infusion (cells, after debulking), y0 [N, S] and params [N, P]."""

    model: object
    scenario: object
    arm: object
    weight_kg: np.ndarray
    tumour0_cells: np.ndarray
    y0: np.ndarray
    params: np.ndarray


@dataclass(frozen=True)
class Dosing:
    """A policy's result: cells per patient, the adaptive predictor's peak IL-6
    at that dose (pg/mL, NaN for other policies) and whether the policy judged
    the dose to meet its target (the predictor for adaptive, the full model for
    oracle; False for a policy without a target)."""

    dose_cells: np.ndarray
    predicted_il6_pg_ml: np.ndarray
    meets_target: np.ndarray


def _untargeted(dose):
    return Dosing(dose, np.full(dose.shape, np.nan), np.zeros(dose.shape, bool))


# -- fixed ----------------------------------------------------------------------

def tumour_at_infusion(arm, tumour_burden_cells):
    """T0 in cells after any debulking."""
    return np.asarray(tumour_burden_cells, dtype=float) * arm.debulking_factor


def fixed_dose(arm, weight_kg):
    """Cells per patient under the fixed policy."""
    weight_kg = np.asarray(weight_kg, dtype=float)
    if arm.dose_cells is not None:
        return np.full(weight_kg.shape, float(arm.dose_cells))
    return arm.dose_cells_per_kg * weight_kg


# -- adaptive ----------------------------------------------------------------------

def typical_patient(model, scenario, arm):
    """The arm's typical parameter values [P]: the cohort's, with the arm's
    ``parameter_set`` and ``parameters`` over them."""
    values = {d.name: d.typical for d in scenario.cohort.parameters}
    values.update(arm.typical_values(model))
    return np.array([values[name] for name in model.parameter_names])


def adaptive_dose(model, typical, arm, tumour0_cells, params):
    """Dosing of the adaptive policy: the predictor's dose for the arm's target
    (:attr:`pipeline.predictors.Predictor.dose_for`) clipped to [min_dose_cells,
    max_dose_cells]; it meets the target (as predicted) unless that dose is below
    min_dose_cells."""
    tumour0 = np.asarray(tumour0_cells, float)
    exact = model.cells_per_unit * PREDICTORS[model.name].dose_for(
        model, np.asarray(typical, float), arm.target_il6_pg_ml,
        tumour0 / model.cells_per_unit, params)
    check_prediction(model, np.isnan(exact), "dose")   # inf: every dose is below the target
    dose = np.clip(exact, arm.min_dose_cells, arm.max_dose_cells)
    return Dosing(dose, predicted_peak_il6(model, typical, dose, tumour0, params),
                  exact >= arm.min_dose_cells)


# -- the oracle -------------------------------------------------------------------

def full_model_outcomes(model, scenario, y0, params, dose_cells, until_days=None):
    """(peak IL-6 in pg/mL, tumour at ``scenario.outcomes.response_day`` in model
    units) of the full model for per-patient doses (cells) at day 0, integrated
    up to ``until_days`` (default: the horizon; the peak is then the peak up to
    that day); NaN where the integration failed."""
    doses = Doses([0.0], [model.roles["infusion"][0]],
                  (np.asarray(dose_cells, float) / model.cells_per_unit)[:, None])
    features = [kf.maximum(model.role("il6")),
                kf.value_at(model.role("tumour"), scenario.outcomes.response_day)]
    t1 = scenario.horizon_days if until_days is None else until_days
    sol = solve(model, y0, params, 0.0, t1, rtol=scenario.rtol, atol=scenario.atol,
                max_steps=scenario.max_steps, doses=doses, features=features, threads=1)
    failed = sol.status != 0
    sol.features[failed] = np.nan
    return sol.features[:, 0], sol.features[:, 1]


def oracle_grid_choice(peak, tumour, target):
    """The oracle's choice on a dose grid (pure): for peak IL-6 and tumour at the
    response day [N, G] over increasing doses, the index of the feasible dose
    (peak <= target) with the smallest tumour, ties to the largest dose; NaN
    peaks are infeasible and NaN tumours worst. Returns (index[N], feasible[N],
    refine[N]): refine where the chosen dose is at the top of a feasible run
    (the next grid dose up is infeasible), so a larger feasible dose may lie
    between the two. Index 0 where no dose is feasible."""
    feasible = peak <= target
    score = np.where(feasible, np.nan_to_num(tumour, nan=np.inf), np.inf)
    g = score.shape[1]
    index = g - 1 - np.argmin(score[:, ::-1], axis=1)     # ties: the largest dose
    any_feasible = feasible.any(axis=1)
    index = np.where(any_feasible, index, 0)
    above = np.minimum(index + 1, g - 1)
    rows = np.arange(len(index))
    refine = any_feasible & (index < g - 1) & ~feasible[rows, above]
    return index, any_feasible, refine


def feasible_edge(excess, lo, hi, excess_lo, excess_hi, tolerance, max_steps):
    """The Illinois method on brackets [lo, hi] of a function whose sign changes
    from <= 0 at lo to > 0 (or NaN) at hi, for many brackets at once (pure).

    ``excess(rows, x)`` evaluates the function at points x of the brackets
    ``rows`` (one batched call per iteration). A step is the regula falsi point;
    the end that stays twice in a row has its value halved (Illinois), and a
    bisection is taken where the secant is undefined (a NaN or infinite end),
    and a point is kept at least the tolerance inside the bracket (not past its
    middle). Brackets close to ``tolerance`` in x, or after ``max_steps``
    evaluations. Returns (lo, the steps' points and
    values: a list of (rows, x, value) for the caller's bookkeeping).
    """
    lo, hi = lo.astype(float).copy(), hi.astype(float).copy()
    f_lo, f_hi = excess_lo.astype(float).copy(), excess_hi.astype(float).copy()
    side = np.zeros(lo.size, np.int8)                # +1: lo moved last, -1: hi moved last
    steps = []
    for _ in range(max_steps):
        rows = np.flatnonzero(hi - lo > tolerance)
        if rows.size == 0:
            break
        a, b, fa, fb = lo[rows], hi[rows], f_lo[rows], f_hi[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            secant = a - fa * (b - a) / (fb - fa)
        usable = np.isfinite(secant) & (secant > a) & (secant < b)
        x = np.where(usable, secant, 0.5 * (a + b))
        # a point within the tolerance of an end moves to that distance (not past
        # the middle), so a root next to the end closes the bracket instead of
        # being crept up on
        middle = 0.5 * (a + b)
        x = np.where(x - a < tolerance, np.minimum(a + tolerance, middle), x)
        x = np.where(b - x < tolerance, np.maximum(b - tolerance, middle), x)
        f = excess(rows, x)
        steps.append((rows, x, f))
        below = f <= 0.0                                 # NaN: above (infeasible)
        moved_lo, moved_hi = rows[below], rows[~below]
        # Illinois: the end that did not move for the second time has its value halved
        f_hi[moved_lo] = np.where(side[moved_lo] == 1, 0.5 * f_hi[moved_lo], f_hi[moved_lo])
        f_lo[moved_hi] = np.where(side[moved_hi] == -1, 0.5 * f_lo[moved_hi], f_lo[moved_hi])
        lo[moved_lo], f_lo[moved_lo], side[moved_lo] = x[below], f[below], 1
        hi[moved_hi], f_hi[moved_hi], side[moved_hi] = x[~below], f[~below], -1
    return lo, steps


def _try_doses(model, arm, scenario, y0, params, until_days, patients, log_dose, dose, best,
               ties):
    """The full model for ``patients`` at exp(log_dose): returns (peak IL-6, the
    tumour at the response day floored at one cell or atol, inf where the dose is
    infeasible or failed). Where the tumour is smaller than ``best`` (or equal,
    with ``ties``), ``dose`` and ``best`` take the new dose and tumour (in place)."""
    peak_x, tumour_x = full_model_outcomes(model, scenario, y0[patients], params[patients],
                                           np.exp(log_dose), until_days)
    floor = max(scenario.atol, 1.0 / model.cells_per_unit)
    tumour_x = np.maximum(np.nan_to_num(tumour_x, nan=np.inf), floor)
    tumour_x = np.where(peak_x <= arm.target_il6_pg_ml, tumour_x, np.inf)
    better = (tumour_x <= best[patients]) if ties else (tumour_x < best[patients])
    better &= np.isfinite(tumour_x)
    dose[patients[better]], best[patients[better]] = np.exp(log_dose[better]), tumour_x[better]
    return peak_x, tumour_x


def _valley_search(model, arm, scenario, y0, params, until_days, grid, peak, tumour, index,
                   dose, best):
    """Where the best grid dose is a strict minimum of the tumour among its grid
    neighbours (each feasible and worse; the grid's ends have one), golden-section
    search of the tumour over log dose between the neighbours, to
    ORACLE_LOG_DOSE_TOLERANCE: the response-day tumour can dip sharply in dose
    (elimination reached just before the response day, then regrowth) between
    grid doses. At an end of the grid only where a probe inside is better. Updates
    ``dose`` and ``best`` in place where a feasible dose of smaller tumour is found."""
    n, g = tumour.shape
    target = arm.target_il6_pg_ml
    below, above = np.maximum(index - 1, 0), np.minimum(index + 1, g - 1)
    rows = np.arange(n)

    def worse_neighbour(j):
        """A grid neighbour that is feasible with a larger tumour (or no neighbour)."""
        return (j == index) | ((peak[rows, j] <= target) & (tumour[rows, j] > tumour[rows, index]))

    candidates = np.flatnonzero((g > 1) & worse_neighbour(below) & worse_neighbour(above)
                                & (peak[rows, index] <= target))

    def tumour_at(patients, log_dose):
        """The tumour at the doses (inf where infeasible); keeps any smaller one."""
        _, tumour_x = _try_doses(model, arm, scenario, y0, params, until_days, patients,
                                 log_dose, dose, best, ties=False)
        return tumour_x

    # at an end of the grid, the minimum lies inside only if the tumour falls
    # on the way in: one probe 10 tolerances inside decides
    at_end = (index[candidates] == 0) | (index[candidates] == g - 1)
    ends = candidates[at_end]
    if ends.size:
        inward = np.where(index[ends] == 0, 10.0, -10.0) * ORACLE_LOG_DOSE_TOLERANCE
        before = best[ends].copy()
        tumour_at(ends, np.log(grid[index[ends]]) + inward)
        ends = ends[best[ends] < before]
    rows = np.concatenate([candidates[~at_end], ends])
    if rows.size == 0:
        return
    a, b = np.log(grid[below[rows]]), np.log(grid[above[rows]])

    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = tumour_at(rows, c), tumour_at(rows, d)
    while np.max(b - a) > ORACLE_LOG_DOSE_TOLERANCE:
        left = fc <= fd                                  # the minimum is in [a, d]
        b, a = np.where(left, d, b), np.where(left, a, c)
        c_new = np.where(left, b - ratio * (b - a), d)
        d_new = np.where(left, c, a + ratio * (b - a))
        f_new = tumour_at(rows, np.where(left, c_new, d_new))
        fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
        c, d = c_new, d_new


def oracle_search(model, arm, scenario, y0, params, until_days):
    """The oracle's search with the full model integrated up to ``until_days``:
    (dose[N], feasible[N]). See :func:`oracle_dose`."""
    n, g = y0.shape[0], ORACLE_GRID_DOSES
    target = arm.target_il6_pg_ml
    grid = np.geomspace(arm.min_dose_cells, arm.max_dose_cells, g)
    peak, tumour = full_model_outcomes(model, scenario, np.repeat(y0, g, axis=0),
                                       np.repeat(params, g, axis=0), np.tile(grid, n),
                                       until_days)
    floor = max(scenario.atol, 1.0 / model.cells_per_unit)
    peak, tumour = peak.reshape(n, g), np.maximum(tumour, floor).reshape(n, g)
    index, feasible, refine = oracle_grid_choice(peak, tumour, target)
    rows = np.arange(n)
    dose, best = grid[index], tumour[rows, index]
    _valley_search(model, arm, scenario, y0, params, until_days, grid, peak, tumour, index,
                   dose, best)
    edge = np.flatnonzero(refine)
    if edge.size == 0:
        return dose, feasible

    def excess(subset, log_dose):
        """ln(peak / target) at the doses; keeps each bracket's best feasible dose."""
        peak_x, _ = _try_doses(model, arm, scenario, y0, params, until_days, edge[subset],
                               log_dose, dose, best, ties=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(peak_x / target)

    lo, hi = index[edge], index[edge] + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        excess_lo, excess_hi = np.log(peak[edge, lo] / target), np.log(peak[edge, hi] / target)
    feasible_edge(excess, np.log(grid[lo]), np.log(grid[hi]), excess_lo, excess_hi,
                  ORACLE_LOG_DOSE_TOLERANCE, ORACLE_ROOT_STEPS)
    return dose, feasible


def oracle_dose(model, arm, scenario, y0, params):
    """Dosing of the oracle policy. It maximises response: among doses in
    [min_dose_cells, max_dose_cells] whose full-model peak IL-6 (over the whole
    horizon) is <= the target, the one with the smallest tumour at the response
    day (tumours under one cell, or under atol, count as equal; ties go to the
    larger dose).

    Doses searched: a log-spaced grid of :data:`ORACLE_GRID_DOSES` (all patients
    in one kernel call); where the best grid dose is the top of a feasible run
    (the next grid dose up is infeasible), the Illinois method on ln(peak /
    target) over log dose in that bracket (:func:`feasible_edge`, one kernel call
    per step for the brackets still open) moves to its largest feasible dose,
    within :data:`ORACLE_LOG_DOSE_TOLERANCE`, kept if its tumour is no larger;
    where the best grid dose is a local minimum of the tumour, a golden-section
    search between its grid neighbours finds a dip the grid steps over. It
    meets the target wherever any grid dose does, so the response need not be
    monotone in dose, nor peak IL-6. Where no grid dose meets the target it
    gives min_dose_cells and ``meets_target`` is False.

    Cost: the search integrates only to the response day (the tumour there is
    final; the peak IL-6 up to then is a lower bound of the horizon's), then one
    full-horizon solve at the chosen doses checks the peak over the whole
    horizon. The few patients whose IL-6 peaks above the target later (a
    relapse-driven second peak, about 0.2% of dose-patient pairs in the default
    cohort) are searched again on the full horizon, so the answer is that of a
    full-horizon search.
    """
    window = min(scenario.outcomes.response_day, scenario.horizon_days)
    dose, feasible = oracle_search(model, arm, scenario, y0, params, window)
    if window < scenario.horizon_days:
        peak, _ = full_model_outcomes(model, scenario, y0, params, dose)
        late = np.flatnonzero(feasible & ~(peak <= arm.target_il6_pg_ml))
        if late.size:
            dose[late], feasible[late] = oracle_search(model, arm, scenario, y0[late],
                                                        params[late], None)
    return Dosing(dose, np.full(dose.shape, np.nan), feasible)


# -- interventions ----------------------------------------------------------------

def intervention_events(model, arm):
    """The kernel events of an arm's interventions: one per parameter changed.
    Returns (events, {intervention name: index of its first event})."""
    events, first = [], {}
    for intervention in arm.interventions:
        first[intervention.name] = len(events)
        changes = ([(p, v, "scale") for p, v in intervention.scale]
                   + [(p, v, "set") for p, v in intervention.set])
        for parameter, value, action in changes:
            if intervention.at_day is not None:
                events.append(ke.at_time(intervention.at_day, parameter, value, action))
            else:
                events.append(ke.cross_up(model.role("il6"), intervention.il6_above_pg_ml,
                                          parameter, value, action))
    return events, first


# -- the table --------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyKey:
    """A policy's config key: a number > 0 (an amount: cells, cells/kg, pg/mL),
    required or optional (None when absent)."""

    required: bool


@dataclass(frozen=True)
class Policy:
    """One dosing policy.

    ``keys``          its config keys {name: PolicyKey} (the arm's fields of that name)
    ``check``         (arm values {key: value}) -> (key, message) for a problem
                      between its keys, or None
    ``fits_model``    (model) -> why the model cannot use the policy, or None
    ``dose``          (ArmPatients) -> Dosing
    ``describe``      (arm) -> its dose in one line, e.g. '1e+08 cells'
    """

    keys: dict
    check: object
    fits_model: object
    dose: object
    describe: object


def _one_fixed_dose(values):
    if (values["dose_cells"] is None) == (values["dose_cells_per_kg"] is None):
        both = "" if values["dose_cells"] is None else ", not both"
        return "dose_cells", ("a fixed arm needs exactly one of dose_cells and "
                              f"dose_cells_per_kg{both}")
    return None


def _dose_range(values):
    if values["max_dose_cells"] < values["min_dose_cells"]:
        return "max_dose_cells", (f"must be >= min_dose_cells ({values['min_dose_cells']!r}), "
                                  f"got {values['max_dose_cells']!r}")
    return None


def _has_il6(model, policy):
    return (None if "il6" in model.roles
            else f"policy {policy!r} targets peak IL-6, which model {model.name!r} lacks")


def _has_predictor(model):
    if model.name not in PREDICTORS:
        return (f"the adaptive policy has no peak IL-6 predictor for model {model.name!r}; "
                f"models with one: {', '.join(PREDICTORS)}")
    return _has_il6(model, "adaptive")


def _describe_fixed(arm):
    return (f"{arm.dose_cells:.3g} cells" if arm.dose_cells is not None
            else f"{arm.dose_cells_per_kg:.3g} cells/kg")


def _describe_targeted(arm):
    return (f"peak IL-6 target {arm.target_il6_pg_ml:g} pg/mL, "
            f"doses {arm.min_dose_cells:.3g}-{arm.max_dose_cells:.3g} cells")


def _fixed(patients):
    return _untargeted(fixed_dose(patients.arm, patients.weight_kg))


def _adaptive(patients):
    typical = typical_patient(patients.model, patients.scenario, patients.arm)
    return adaptive_dose(patients.model, typical, patients.arm, patients.tumour0_cells,
                         patients.params)


def _oracle(patients):
    return oracle_dose(patients.model, patients.arm, patients.scenario, patients.y0,
                       patients.params)


_TARGETED = {"target_il6_pg_ml": PolicyKey(True), "min_dose_cells": PolicyKey(True),
             "max_dose_cells": PolicyKey(True)}
POLICIES = {
    "fixed": Policy({"dose_cells": PolicyKey(False), "dose_cells_per_kg": PolicyKey(False)},
                    _one_fixed_dose, lambda model: None, _fixed, _describe_fixed),
    "adaptive": Policy(_TARGETED, _dose_range, _has_predictor, _adaptive, _describe_targeted),
    "oracle": Policy(_TARGETED, _dose_range, lambda model: _has_il6(model, "oracle"), _oracle,
                     _describe_targeted),
}


def policy(name):
    """The :class:`Policy` called ``name``; KeyError naming the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; policies are {', '.join(POLICIES)}") from None
