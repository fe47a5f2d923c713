"""The adaptive policy's closed-form predictions of peak IL-6, one per model.

:data:`PREDICTORS` (model name -> :class:`Predictor`) holds each model's
prediction of peak IL-6 from the dose and the tumour at infusion, and its
inverse, the dose for a target; the adaptive policy (:mod:`pipeline.policies`)
doses through it, and a model without one cannot use that policy.

What the adaptive policy knows: each patient's tumour at infusion T0 (after any
debulking), and the arm's typical patient for everything else: the cohort's
typical values (the model's unless the scenario overrides them) with the arm's
``parameter_set`` and ``parameters`` over them; the ``cart`` predictor also
knows the patient's IL-6 clearance ``c``. Units below: time in days, cells in
the model's units (1e9 cells), IL-6 in pg/mL.

The ``cart`` predictor (kernels/models/cart.py), linearised early phase. Early
after infusion the tumour has barely moved, T ~ T0, so stimulation
s0 = T0/(Ks + T0) and the kill per effector kappa = k T0 Kk/(Kk + T0) are
constant, and memory cells are negligible:

    dE/dt = g E,   g = a s0 - dE - gx s0 - m        ->  E(t) = D exp(g t)
    dI/dt = s kappa E - c I

Expansion ends when the cumulative kill kappa D (exp(g t) - 1)/g has consumed
the tumour, T0; the kill rate then is kappa D + g T0. IL-6 tracks a kill rate
growing at rate g with gain s/(g + c), so

    I_peak ~ s (g T0 + kappa D) / (g + c)            (linear in the dose D)

and the dose for a target I* is D = ((g + c) I*/s - g T0)/kappa. The
prediction can be negative for a small tumour (g < 0); such a patient is
predicted below any target and gets the largest dose.

The ``cart2`` predictor (kernels/models/cart2.py), linearised early phase.
Early on T ~ T0, so stimulation s0 = T0/(Ks + T0) is constant, the antigen load
per effector is ~1 (E << T: exhaustion at its full rate gx) and memory is
negligible. With b = a s0 + h and q = dE + gx + m (1/day) and the lymphodepletion
window W(t) = w_inf + (1 - w_inf) exp(-t/tau_w), the CAR T cells C = E + M + X
follow

    dC/dt ~ (b W(t) Kc/(Kc + C) - q) C.

1. Trajectory. d/dt (ln C + C/Kc) = b W(t) - q - q C/Kc; dropping the last
   term (which only slows growth near the niche size) integrates to
       ln C + C/Kc = ln D + D/Kc + G(t),
       G(t) = (b w_inf - q) t + b (1 - w_inf) tau_w (1 - exp(-t/tau_w)).
2. Ceiling. Growth stops where b W(t) Kc/(Kc + C) = q: C = Kc c(t) with
   c(t) = b W(t)/q - 1, which falls as the window closes; inversely
   t(c) = -tau_w ln((q (1 + c)/b - w_inf)/(1 - w_inf)).
3. Peak. The rising trajectory meets the falling ceiling once: C_pk = Kc c*,
   c* the root in (max(0, b w_inf/q - 1), b/q - 1] of
       F(c) = ln(D/Kc) + D/Kc + G(t(c)) - ln c - c,
   which falls with c (bisection, :data:`CART2_STEPS` steps). Where F >= 0 at
   c = b/q - 1 (the dose is at or above the ceiling at infusion, or b <= q: no
   expansion) C_pk = D. C_pk rises with D, and C_pk >= D > 0 (G > 0 while the
   ceiling is above 0).
4. IL-6. Myeloid cells and IL-6 follow the effectors within about 1/dA and
   1/cI days, short next to the expansion, so quasi-steadily
   A ~ kA E (eng + wc s0)/dA and I ~ I0 + sI A/cI, with
   the effectors at the peak E = phi C_pk. Their engagement drive
   x_eng = E T0/(Kk + T0 + Ke E) (cells) is also bounded by the tumour: a kill
   k x rising at rate g0 = max(b - q, 0) consumes T0 by x ~ c_kill g0 T0/k
   (c_kill = 1/e for an exponential rise: the maximum of T0 exp(-K) K'/k over
   the cumulative per-cell kill K, at K' = g0). The two limits combine
   harmonically, x = x_eng x_kill/(x_eng + x_kill), and

       I_pk ~ I0 + (sI kA/(dA cI)) (x + wc s0 E)      pg/mL.

   It rises with D (x and E do) and is at least I0: never negative, and finite
   for finite T0 and D (every term is bounded by the ceiling at infusion).
5. Constants. phi (the effector share of CAR T at the peak, with the lag of A
   and I behind E) and c_kill are fitted, deterministically at run time, to the
   full model's peak IL-6 of the typical patient on a grid of tumours
   (:data:`CART2_FIT_TUMOURS_CELLS`) and doses (:data:`CART2_FIT_DOSES_CELLS`):
   least squares on log IL-6 over the grid points whose peak comes within
   :data:`EARLY_PHASE_DAYS` (later peaks come from relapse, which the early
   phase does not describe). The fit is cached per (model, typical values), so
   every shard and worker gets the same constants (:func:`cart2_constants`).
6. Inverse, the adaptive dose in closed form. y = (I* - I0) dA cI/(sI kA) =
   x + wc s0 E is a quadratic in E (x is a ratio of linear functions of E);
   its positive root gives C_pk = E/phi, and then D = C_pk at or above the
   ceiling at infusion, else D = Kc W0(exp(ln c + c - G(t(c)))) with
   c = C_pk/Kc (Lambert's W0 solves ln x + x = that, the trajectory of step 1
   run backwards from the peak); no dose where c is at or below the ceiling's
   floor max(0, b w_inf/q - 1), the peak of a vanishing dose.

The predictor's error against the full model is reported per run (column
``il6_peak_predicted_pg_ml`` against ``il6_peak_pg_ml``).
"""
from dataclasses import dataclass
import functools

import numpy as np
from scipy.optimize import least_squares
from scipy.special import lambertw

from kernels import features as kf
from kernels.dopri5 import Doses, solve
from kernels.models import get_model

# bisection steps for the cart2 peak's ceiling level c (2**-50 of its bracket)
CART2_STEPS = 50
# the cart2 predictor's fit (module docstring, step 5)
CART2_FIT_TUMOURS_CELLS = np.geomspace(1e9, 1e13, 9)
CART2_FIT_DOSES_CELLS = np.geomspace(1e6, 1e10, 9)
EARLY_PHASE_DAYS = 30.0
CART2_FIT_HORIZON_DAYS = 365.0
CART2_FIT_RTOL, CART2_FIT_ATOL = 1e-6, 1e-9


@dataclass(frozen=True)
class Predictor:
    """A model's closed-form peak IL-6 (module docstring); doses and tumours in
    model units, IL-6 in pg/mL, ``typical`` [P] the typical patient, ``params``
    [N, P] the patients:

    ``peak_il6(model, typical, dose[N], tumour0[N], params)``
        the prediction, increasing in the dose;
    ``dose_for(model, typical, target, tumour0[N], params)``
        its inverse: the dose predicted to give ``target``; <= 0 where every
        dose is predicted above it, inf where every dose is predicted below it.
    """

    peak_il6: object
    dose_for: object


def _cart_terms(model, typical, tumour0, params):
    """(g, kappa, s, c) of the cart early phase (module docstring), the patient's c."""
    p = dict(zip(model.parameter_names, typical))
    stimulation = tumour0 / (p["Ks"] + tumour0)
    kappa = p["k"] * tumour0 * p["Kk"] / (p["Kk"] + tumour0)
    g = p["a"] * stimulation - p["dE"] - p["gx"] * stimulation - p["m"]
    return g, kappa, p["s"], params[:, model.parameter_index("c")]


def _cart_peak_il6(model, typical, dose, tumour0, params):
    """cart: I_peak ~ s (g T0 + kappa D)/(g + c)."""
    g, kappa, s, c = _cart_terms(model, typical, tumour0, params)
    return s * (g * tumour0 + kappa * dose) / (g + c)


def _cart_dose_for(model, typical, target, tumour0, params):
    """cart: D = ((g + c) I*/s - g T0)/kappa."""
    g, kappa, s, c = _cart_terms(model, typical, tumour0, params)
    return ((g + c) * target / s - g * tumour0) / kappa


def _cart2_rates(p, tumour0, c_kill):
    """(s0, b, q, x_kill) of the cart2 early phase (module docstring): stimulation,
    proliferation and loss rates (1/day) and the tumour-consumption bound of the
    engagement drive (model units of cells)."""
    s0 = tumour0 / (p["Ks"] + tumour0)
    b = p["a"] * s0 + p["h"]
    q = p["dE"] + p["gx"] + p["m"]
    return s0, b, q, c_kill * np.maximum(b - q, 0.0) * tumour0 / p["k"]


def _log_growth(p, b, q, c):
    """G(t(c)) (module docstring, steps 1-2): the growth of ln C + C/Kc along the
    trajectory by the time the ceiling has fallen to Kc c; u = exp(-t(c)/tau_w)."""
    w_inf, tau_w = p["w_inf"], p["tau_w"]
    u = (q * (1.0 + c) / b - w_inf) / (1.0 - w_inf)
    return tau_w * (-(b * w_inf - q) * np.log(u) + b * (1.0 - w_inf) * (1.0 - u))


def _ceiling_bracket(p, b, q):
    """The ceiling's range in units of Kc: (its floor max(0, b w_inf/q - 1) as the
    window closes, its value b/q - 1 at infusion)."""
    return np.maximum(0.0, b * p["w_inf"] / q - 1.0), b / q - 1.0


def _cart2_peak_cells(p, b, q, dose):
    """C_pk for doses D (module docstring, step 3), model units: Kc c*, c* the root
    of F(c) by bisection; D where the dose is at or above the ceiling at infusion."""
    niche = p["Kc"]
    level = np.log(dose / niche) + dose / niche         # ln C + C/Kc at infusion
    floor, top = _ceiling_bracket(p, b, q)
    expands = top > 0
    expands[expands] = level[expands] < np.log(top[expands]) + top[expands]
    b_e, level_e = b[expands], level[expands]
    lo, hi = floor[expands], top[expands]
    for _ in range(CART2_STEPS):
        mid = 0.5 * (lo + hi)
        root_above = level_e + _log_growth(p, b_e, q, mid) - np.log(mid) - mid >= 0
        lo, hi = np.where(root_above, mid, lo), np.where(root_above, hi, mid)
    peak = dose.copy()
    peak[expands] = niche * 0.5 * (lo + hi)
    return peak


def _cart2_dose_for_peak(p, b, q, peak):
    """The dose D whose C_pk is ``peak`` (the inverse of :func:`_cart2_peak_cells`):
    D = peak at or above the ceiling at infusion; between the ceiling's floor and
    its value at infusion, D = Kc x with ln x + x = ln c + c - G(t(c)), c = peak/Kc
    (x = W0(exp(.)), Lambert's W); 0 at or below the floor (no dose is that low)."""
    niche = p["Kc"]
    c = peak / niche
    floor, top = _ceiling_bracket(p, b, q)
    dose = np.where(c <= floor, 0.0, peak)         # NaN stays NaN, to be reported
    inside = (c > floor) & (c < top)
    level = np.log(c[inside]) + c[inside] - _log_growth(p, b[inside], q, c[inside])
    dose[inside] = niche * lambertw(np.exp(level)).real
    return dose


def _cart2_formula(p, tumour0, dose, phi, c_kill):
    """I_pk ~ I0 + (sI kA/(dA cI)) (x + wc s0 E), pg/mL (module docstring, step 4)."""
    s0, b, q, consumed = _cart2_rates(p, tumour0, c_kill)
    effectors = phi * _cart2_peak_cells(p, b, q, dose)
    engaged = effectors * tumour0 / (p["Kk"] + tumour0 + p["Ke"] * effectors)
    drive = engaged * consumed / (engaged + consumed)
    return p["I0"] + p["sI"] * p["kA"] / (p["dA"] * p["cI"]) * (drive + p["wc"] * s0 * effectors)


def _cart2_inverse(p, tumour0, target, phi, c_kill):
    """The dose of :func:`_cart2_formula` for a peak IL-6 ``target``: with
    y = (I* - I0) dA cI/(sI kA) and x = alpha E/(beta E + gamma) (alpha = x_kill T0,
    beta = T0 + x_kill Ke, gamma = x_kill (Kk + T0)), y = x + delta E (delta = wc s0)
    is the quadratic delta beta E^2 + B E - y gamma = 0, B = alpha + delta gamma - y beta,
    whose positive root (inf where y is out of reach, 0 where y <= 0) gives
    C_pk = E/phi and the dose (:func:`_cart2_dose_for_peak`)."""
    s0, b, q, consumed = _cart2_rates(p, tumour0, c_kill)
    y = max(0.0, (target - p["I0"]) * p["dA"] * p["cI"] / (p["sI"] * p["kA"]))
    alpha, beta = consumed * tumour0, tumour0 + consumed * p["Ke"]
    gamma, delta = consumed * (p["Kk"] + tumour0), p["wc"] * s0
    big_b = alpha + delta * gamma - y * beta
    root = np.sqrt(big_b * big_b + 4.0 * delta * beta * y * gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        effectors = np.where(big_b >= 0, 2.0 * y * gamma / (big_b + root),
                             (root - big_b) / (2.0 * delta * beta))
    effectors = np.where(y > 0, effectors, 0.0)
    return _cart2_dose_for_peak(p, b, q, effectors / phi)


def _cart2_peak_il6(model, typical, dose, tumour0, params):
    """cart2: the early-phase prediction with the constants fitted to the typical
    patient (module docstring); ``params`` unused: the policy knows T0 only."""
    p = dict(zip(model.parameter_names, typical))
    return _cart2_formula(p, tumour0, dose, *cart2_constants(model.name, tuple(typical)))


def _cart2_dose_for(model, typical, target, tumour0, params):
    """cart2: the inverse of :func:`_cart2_peak_il6`."""
    p = dict(zip(model.parameter_names, typical))
    return _cart2_inverse(p, tumour0, target, *cart2_constants(model.name, tuple(typical)))


@functools.lru_cache(maxsize=None)
def cart2_constants(model_name, typical):
    """(phi, c_kill) of the cart2 predictor for the typical parameter values
    ``typical`` (a tuple, model order): least squares on log peak IL-6 against
    the full model on the fit grid (module docstring, step 5), from phi = 1 and
    c_kill = 1/e. Deterministic, and cached so that every shard and worker uses
    the same constants."""
    model = get_model(model_name)
    p = dict(zip(model.parameter_names, typical))
    tumours, doses = (a.ravel() / model.cells_per_unit for a in np.meshgrid(
        CART2_FIT_TUMOURS_CELLS, CART2_FIT_DOSES_CELLS, indexing="ij"))
    params = np.tile(np.asarray(typical, float), (tumours.size, 1))
    sol = solve(model, model.initial_states(tumours, params), params, 0.0,
                CART2_FIT_HORIZON_DAYS, rtol=CART2_FIT_RTOL, atol=CART2_FIT_ATOL, threads=1,
                doses=Doses([0.0], [model.roles["infusion"][0]], doses[:, None]),
                features=[kf.maximum(model.role("il6")), kf.argmax(model.role("il6"))])
    peak, day = sol.features.T
    early = (sol.status == 0) & (day <= EARLY_PHASE_DAYS)
    if early.sum() < 2:
        raise ValueError(f"model {model_name!r}: only {early.sum()} fit-grid points have "
                         f"their IL-6 peak within {EARLY_PHASE_DAYS:g} days; the adaptive "
                         "predictor's constants cannot be fitted")

    def residuals(log_constants):
        constants = np.exp(log_constants)
        return np.log(_cart2_formula(p, tumours[early], doses[early], *constants) / peak[early])

    fit = least_squares(residuals, np.log([1.0, np.exp(-1.0)]))
    return tuple(float(c) for c in np.exp(fit.x))


# model name -> its adaptive predictor
PREDICTORS = {"cart": Predictor(_cart_peak_il6, _cart_dose_for),
              "cart2": Predictor(_cart2_peak_il6, _cart2_dose_for)}


def check_prediction(model, bad, what):
    """ValueError where any patient is ``bad``: a prediction is never dropped silently."""
    if np.any(bad):
        raise ValueError(f"the adaptive predictor of model {model.name!r} gave a non-finite "
                         f"{what} for {np.sum(bad)} patients")


def predicted_peak_il6(model, typical, dose_cells, tumour0_cells, params):
    """The adaptive predictor of ``model`` (:data:`PREDICTORS`): peak IL-6 in pg/mL
    for doses and tumours at infusion in cells (> 0), the typical patient
    ``typical`` [P] and the patients' parameters [N, P]."""
    dose = np.asarray(dose_cells, float) / model.cells_per_unit
    tumour0 = np.asarray(tumour0_cells, float) / model.cells_per_unit
    predicted = PREDICTORS[model.name].peak_il6(model, np.asarray(typical, float), dose,
                                                tumour0, params)
    check_prediction(model, ~np.isfinite(predicted), "peak IL-6")
    return predicted
