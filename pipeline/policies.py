"""Dosing policies and pre-treatment: how much CAR T each virtual patient gets.

Every arm sees the same patients (pipeline.cohort); a policy turns a patient's
covariates and parameters into a tumour burden at infusion and a dose.

* ``fixed``: ``dose_cells`` for everyone, or ``dose_cells_per_kg`` x weight.
* ``adaptive``: the dose that a closed-form prediction of peak IL-6 says meets
  the safety target ``target_il6_pg_ml``, capped to [min_dose, max_dose]
  (:func:`predicted_peak_il6` for the derivation).
* ``oracle``: per-patient bisection on the full model for the largest dose in
  [min_dose, max_dose] whose peak IL-6 stays at or below the target (all
  patients of a shard in one kernel call per bisection step): the best any dose
  rule could do with the same target.
* debulking (any policy): the baseline tumour multiplied by ``debulking_factor``
  before infusion.
* interventions (any policy): tocilizumab, corticosteroids... given on a day or
  when IL-6 first reaches a level, as parameter changes from then on (kernel
  events, :mod:`kernels.events`; :func:`intervention_events`). Doses of the
  adaptive and oracle policies are chosen without them.

The adaptive predictor, linearised early phase of the ``cart`` model
(kernels/models/cart.py). Early after infusion the tumour has barely moved,
T ~ T0, so stimulation s0 = T0/(Ks + T0) and the kill per effector
kappa = k T0 Kk/(Kk + T0) are constant, and memory cells are negligible:

    dE/dt = g E,   g = a s0 - dE - gx s0 - m        ->  E(t) = D exp(g t)
    dI/dt = s kappa E - c I

Expansion ends when the cumulative kill kappa D (exp(g t) - 1)/g has consumed
the tumour, T0; the kill rate then is kappa D + g T0. IL-6 tracks a kill rate
growing at rate g with gain s/(g + c), so

    I_peak ~ s (g T0 + kappa D) / (g + c)            (linear in the dose D)

and the dose for a target I* is D = ((g + c) I*/s - g T0) / kappa, capped. The
policy knows each patient's baseline tumour T0 and IL-6 clearance c and uses
the model's typical values for everything else. Where g T0 s/(g + c) alone
exceeds the target (a large tumour), no dose meets it and the minimum dose is
given. The predictor's error against the full model is reported per run.
"""
import numpy as np

from kernels.dopri5 import Doses, solve
from kernels import events as ke
from kernels import features as kf

ORACLE_BISECTION_STEPS = 20   # on log(dose): 2**-20 of the log dose range
# the cart-model parameters the adaptive predictor reads (a model without them
# cannot use the adaptive policy; the oracle needs only an IL-6 quantity)
ADAPTIVE_PARAMETERS = ("k", "Kk", "Ks", "a", "dE", "gx", "m", "s", "c")


def tumour_at_infusion(arm, tumour_burden_cells):
    """T0 in cells after any debulking."""
    return np.asarray(tumour_burden_cells, dtype=float) * arm.debulking_factor


def fixed_dose(arm, weight_kg):
    """Cells per patient under the fixed policy."""
    weight_kg = np.asarray(weight_kg, dtype=float)
    if arm.dose_cells is not None:
        return np.full(weight_kg.shape, float(arm.dose_cells))
    return arm.dose_cells_per_kg * weight_kg


def _early_phase(model, tumour0_cells):
    """(T0 in model units, g, kappa, s) of the linearised early phase, typical
    parameters (module docstring)."""
    p = dict(zip(model.parameter_names, model.typical_parameters()))
    t0 = np.asarray(tumour0_cells, float) / model.cells_per_unit
    stimulation = t0 / (p["Ks"] + t0)
    kappa = p["k"] * t0 * p["Kk"] / (p["Kk"] + t0)
    g = p["a"] * stimulation - p["dE"] - p["gx"] * stimulation - p["m"]
    return t0, g, kappa, p["s"]


def predicted_peak_il6(model, dose_cells, tumour0_cells, clearance):
    """I_peak ~ s (g T0 + kappa D)/(g + c) in pg/mL (module docstring); T0 and D in cells."""
    t0, g, kappa, s = _early_phase(model, tumour0_cells)
    dose = np.asarray(dose_cells, float) / model.cells_per_unit
    return s * (g * t0 + kappa * dose) / (g + clearance)


def adaptive_dose(model, arm, tumour0_cells, clearance):
    """The predictor inverted for the arm's target, capped to its dose range (cells)."""
    t0, g, kappa, s = _early_phase(model, tumour0_cells)
    dose = ((g + clearance) * arm.target_il6_pg_ml / s - g * t0) / kappa * model.cells_per_unit
    return np.clip(dose, arm.min_dose_cells, arm.max_dose_cells)


def peak_il6(model, y0, params, dose_cells, horizon_days, rtol, atol):
    """Peak IL-6 (pg/mL) of the full model for per-patient doses at day 0."""
    amounts = (np.asarray(dose_cells, float) / model.cells_per_unit)[:, None]
    infusion = model.roles["infusion"][0]
    sol = solve(model, y0, params, 0.0, horizon_days, rtol=rtol, atol=atol,
                doses=Doses([0.0], [infusion], amounts), features=[kf.maximum(model.role("il6"))])
    return sol.features[:, 0]


def oracle_dose(model, arm, y0, params, horizon_days, rtol, atol):
    """Largest dose in [min, max] with full-model peak IL-6 <= target, by bisection
    on log dose; the minimum dose where even that exceeds the target. One kernel
    call per step for all patients. Bisection assumes peak IL-6 rises with dose;
    where it does not (the cart model's peak is driven mostly by tumour burden
    and can dip with dose), the result is a feasible dose at the edge of a
    feasible interval, not necessarily the largest."""
    n = y0.shape[0]
    target = arm.target_il6_pg_ml

    def meets_target(log_dose):
        return peak_il6(model, y0, params, np.exp(log_dose), horizon_days, rtol, atol) <= target

    lo = np.full(n, np.log(arm.min_dose_cells))
    hi = np.full(n, np.log(arm.max_dose_cells))
    found = np.zeros(n, bool)
    for _ in range(ORACLE_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        ok = meets_target(mid)
        found |= ok
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    dose = np.where(found, np.exp(lo), arm.min_dose_cells)
    return np.where(meets_target(np.log(np.full(n, arm.max_dose_cells))), arm.max_dose_cells, dose)


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
