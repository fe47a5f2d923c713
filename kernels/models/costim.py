"""``costim``: CD28 vs 4-1BB costimulation, a population-balance CAR T model
whose construct parameters are fitted to published CAR T kinetics.

Time in days, cells in units of 1e9 cells (whole body), IL-6 in pg/mL.
State y = [T, E, M, X, I]: tumour, activated (proliferating) effector CAR T,
persisting (memory) CAR T, exhausted CAR T, serum IL-6.

    stim  = T / (Ks + T)                      antigen stimulation, 0..1
    kill  = k E T / (1 + T / Kk)              saturating kill
    dT/dt = r T (1 - T / Tcap) - kill
    dE/dt = alpha stim E - delta E - gamma stim E - mu E + nu stim M
    dM/dt = mu E - dM M - nu stim M
    dX/dt = gamma stim E - dX X
    dI/dt = s kill - c I

alpha is the antigen-driven proliferation, delta the contraction (death of
effectors, whether or not antigen is present), gamma the antigen-driven
exhaustion; mu feeds the persisting pool, which loses cells at dM and goes
back to proliferating effectors on antigen at nu stim. After the tumour is
cleared (stim -> 0) the CAR T cells fall in two phases, E at delta + mu and M
at dM: the biphasic decline of Stein et al. 2019's empirical model, with its
fast rate ~ delta + mu and its persisting fraction ~ mu / (delta + mu - dM).
The equations are the reference ``cart`` model's (docs/models.md#cart), whose
compiled right-hand side this model uses, with its own names and values:
recalibrating ``cart``'s typical values cannot move the fitted construct sets
below.

Construct parameter sets (``parameter_sets``; the model's typical values are
the "41bb" set). alpha, delta, mu and dM are fitted for each construct by
:mod:`pipeline.calibration.costim_fit` (weighted least squares on the log
scale, typical patient simulated with the batched kernel); every other
parameter is shared by both constructs, which carry the same anti-CD19 binder
(FMC63; tisagenlecleucel and axicabtagene ciloleucel differ in the
costimulatory domain), so kill, antigen sensing and the tumour are the same:

    "41bb"   fitted to the Stein et al. 2019 typical tisagenlecleucel curve
             (peak at 9.3 d, contraction half-life 4.3 d, persisting fraction
             0.0079 declining at 0.0032/d), as its shape (copies/ug ~ cells);
    "cd28"   fitted to the ZUMA-1 axicabtagene ciloleucel median blood levels
             at days 7, 14, 28 and 90 (Kimmel et al. 2021; cells/uL, converted
             with :func:`blood_cells_per_ul`).

Sources: docs/references.md#stein-2019 and docs/references.md#kimmel-2021; the
fit module states the targets, weights, the typical patient and how each fit
meets its targets. The fits give CD28 the larger proliferation and contraction
(alpha 1.17 vs 0.78/d, delta 0.46 vs 0.17/d), as Cappell & Kochenderfer 2021
and Majzner et al. 2020 describe qualitatively (docs/references.md#cappell-2021,
docs/references.md#majzner-2020), and a persisting pool that is fed faster but
lost 15 times faster (mu 0.023 vs 0.0014/d, dM 0.044 vs 0.0030/d: half-lives
16 d vs 230 d, the latter near Stein's terminal 220 d). Exhaustion gamma is
not identifiable from blood levels (exhausted cells are counted with the
others) and is shared.

Shared values (not fitted; the ``cart`` model's starting point,
docs/models.md#cart, unless stated): r, Tcap, Ks, gamma, nu, dX, s, c as
``cart``. The kill is stronger per cell and saturates earlier than ``cart``'s (k 0.5 vs 0.15 per 1e9 cells per
day, Kk 1 vs 10 x 1e9 cells; at most k Kk = 0.5 tumour cells killed per CAR T
cell per day): with ``cart``'s kill the tumour of the typical patient falls
slowly and stimulation fades over days, giving a rounded peak with a 5.5-day
contraction half-life against Stein's 4.3 d; with a weaker kill
(k 0.3) the CD28 fit leaves the typical patient's tumour to grow back (fit
diagnostics, pipeline.calibration.costim_fit).

Blood levels. The model counts whole-body cells; a blood level is

    cells/uL = cells x BLOOD_FRACTION / BLOOD_VOLUME_UL

with 2% of the body's lymphocytes in the blood (Blum & Pabst 2007, Immunol
Lett 108:45, docs/references.md#blum-2007; unverified) and a blood volume of
70 mL/kg x 75 kg = 5.25 L (standard adult value, unverified). This is the conversion of the CD28 fit
and of the persistence outcome below.

Extra columns (:func:`extra_features`, :func:`extra_outcomes`), for each
landmark day of ``LANDMARK_DAYS`` within the horizon (day 28: end of the
first month; day 90: the month-3 response assessment; day 365: one year):
``cart_d28_cells`` (E + M + X), ``cart_memory_d28_cells`` (M),
``tumour_d28_cells`` (T), and the outcomes

* ``tumour_control_d28``: T(28) <= TUMOUR_CONTROL_FRACTION x T(0) (the
  baseline, column ``tumour_d0_cells``): the two-log criterion of the
  scenario's response (configs/costim.toml), read at another day;
* ``cart_persisting_d28``: the blood level of all CAR T cells at day 28 >=
  PERSISTENCE_CELLS_PER_UL (0.1 cells/uL, the ZUMA-1 median at day 90, so
  that about half of ZUMA-1's patients persist by this rule at day 90);
* ``memory_fraction_d28``: M / (E + M + X);

likewise ``_d90`` and ``_d365``.
"""
import numpy as np

from kernels import features as kf
from kernels.models import cart
from kernels.models.base import Model, Parameter, State, kill_over_growth

_DESIGN = "cart model's starting point (docs/models.md#cart), shared by both constructs"
_KILL = ("chosen so both construct fits meet their targets (docs/models.md#costim); "
         "sd_log the cart model's (docs/models.md#cart); shared by both constructs")
# Provenance of each construct set (FITTED below).
FITTED_SOURCE = {
    "41bb": "fitted by pipeline.calibration.costim_fit, WLS on log scale to the Stein et al. "
            "2019 typical tisagenlecleucel curve",
    "cd28": "fitted by pipeline.calibration.costim_fit, WLS on log scale to the ZUMA-1 "
            "axicabtagene ciloleucel medians at days 7, 14, 28, 90 (Kimmel et al. 2021)",
}
# The fitted construct parameters (python -m pipeline.calibration.costim_fit
# prints them; tests/test_costim.py checks that the fit reproduces them).
FITTED = {
    "41bb": {"alpha": 0.7789, "delta": 0.1683, "mu": 0.001377, "dM": 0.003042},
    "cd28": {"alpha": 1.166, "delta": 0.4593, "mu": 0.02257, "dM": 0.04418},
}
FITTED_PARAMETERS = ("alpha", "delta", "mu", "dM")

STATES = (
    State("T", "1e9 cells", "tumour burden", 10.0),
    State("E", "1e9 cells", "activated (proliferating) effector CAR T cells", 0.0),
    State("M", "1e9 cells", "persisting (memory) CAR T cells", 0.0),
    State("X", "1e9 cells", "exhausted CAR T cells", 0.0),
    State("I", "pg/mL", "serum IL-6", 5.0),
)


def _fitted(name, cart_name, unit, description, sd_log):
    """A fitted construct parameter: typical value the 41bb set's, spread the
    matching ``cart`` parameter's (docs/models.md#cart)."""
    return Parameter(name, unit, FITTED["41bb"][name], sd_log, description,
                     f"{FITTED_SOURCE['41bb']} (typical value: the 41bb set); sd_log "
                     f"cart's {cart_name} (docs/models.md#cart)")


PARAMETERS = (
    Parameter("r", "1/day", 0.03, 0.3, "tumour net growth rate", _DESIGN),
    Parameter("Tcap", "1e9 cells", 1000.0, 0.3, "tumour carrying capacity", _DESIGN),
    Parameter("k", "1/(1e9 cells day)", 0.5, 0.5, "kill rate constant", _KILL),
    Parameter("Kk", "1e9 cells", 1.0, 0.3, "tumour burden at which killing saturates", _KILL),
    Parameter("Ks", "1e9 cells", 1.0, 0.3, "tumour burden giving half-maximal stimulation",
              _DESIGN),
    _fitted("alpha", "a", "1/day", "antigen-driven proliferation", 0.2),
    _fitted("delta", "dE", "1/day", "contraction (effector death rate)", 0.3),
    Parameter("gamma", "1/day", 0.05, 0.3, "antigen-driven exhaustion", _DESIGN),
    _fitted("mu", "m", "1/day", "effector to persisting (memory) differentiation", 0.3),
    Parameter("nu", "1/day", 1.0, 0.3, "persisting-cell reactivation on antigen", _DESIGN),
    _fitted("dM", "dM", "1/day", "loss rate of the persisting pool", 0.3),
    Parameter("dX", "1/day", 0.1, 0.3, "exhausted-cell death rate", _DESIGN),
    Parameter("s", "pg/mL per 1e9 cells killed", 200.0, 0.5,
              "IL-6 released per killed tumour cell", _DESIGN),
    Parameter("c", "1/day", 2.0, 0.3, "IL-6 clearance rate", _DESIGN),
)

BLOOD_FRACTION = 0.02          # Blum & Pabst 2007 (unverified): ~2% of lymphocytes in blood
BLOOD_VOLUME_UL = 70.0 * 75.0 * 1e3   # 70 mL/kg x 75 kg, in uL (unverified standard value)
LANDMARK_DAYS = (28.0, 90.0, 365.0)
TUMOUR_CONTROL_FRACTION = 0.01       # two logs below baseline (configs/costim.toml)
PERSISTENCE_CELLS_PER_UL = 0.1       # ZUMA-1 median at day 90 (docs/references.md#kimmel-2021)
PERSISTENCE_CELLS = PERSISTENCE_CELLS_PER_UL * BLOOD_VOLUME_UL / BLOOD_FRACTION   # whole body
CAR_T = ("E", "M", "X")


def blood_cells_per_ul(cells):
    """Blood level (cells/uL) of ``cells`` whole-body cells (module docstring)."""
    return np.asarray(cells, dtype=float) * BLOOD_FRACTION / BLOOD_VOLUME_UL


# The cart model's compiled right-hand side, under the population-balance
# names: its parameters a, dE, gx, m, rho are alpha, delta, gamma, mu, nu here,
# in the same positions (dE E + m E = (delta + mu) E), and the states are the same.
rhs = cart.rhs


def _tag(day):
    """28.0 -> "d28", the landmark day in a column name."""
    return f"d{day:g}"


def landmark_days(horizon_days):
    """The landmark days within the horizon."""
    return tuple(day for day in LANDMARK_DAYS if day <= horizon_days)


def extra_features(outcomes, horizon_days):
    """Tumour at infusion; all CAR T, persisting CAR T and tumour at each landmark day."""
    car_t = dict.fromkeys(CAR_T, 1.0)
    features = [("tumour_d0_cells", kf.value_at("T", 0.0), True)]
    for day in landmark_days(horizon_days):
        tag = _tag(day)
        features += [(f"cart_{tag}_cells", kf.value_at(car_t, day), True),
                     (f"cart_memory_{tag}_cells", kf.value_at("M", day), True),
                     (f"tumour_{tag}_cells", kf.value_at("T", day), True)]
    return features


def extra_outcomes(columns, params):
    """Tumour control, CAR T persistence and memory fraction at each landmark
    day that ``columns`` has (module docstring)."""
    extra = {}
    baseline = np.asarray(columns["tumour_d0_cells"])
    for tag in (_tag(day) for day in LANDMARK_DAYS if f"tumour_{_tag(day)}_cells" in columns):
        cart = np.asarray(columns[f"cart_{tag}_cells"])
        extra[f"tumour_control_{tag}"] = (np.asarray(columns[f"tumour_{tag}_cells"])
                                          <= TUMOUR_CONTROL_FRACTION * baseline)
        extra[f"cart_persisting_{tag}"] = cart >= PERSISTENCE_CELLS
        extra[f"memory_fraction_{tag}"] = np.asarray(columns[f"cart_memory_{tag}_cells"]) / cart
    return extra


def model():
    sets = {name: {**values} for name, values in FITTED.items()}
    return Model("costim", "CD28 vs 4-1BB: population-balance CAR T model with fitted "
                           "construct parameter sets",
                 STATES, PARAMETERS, rhs,
                 roles={"tumour": ("T",), "car_t": CAR_T, "il6": ("I",), "infusion": ("E",)},
                 parameter_sets=sets, efficacy_ratio=kill_over_growth(PARAMETERS),
                 extra_features=extra_features, extra_outcomes=extra_outcomes)
