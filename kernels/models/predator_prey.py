"""``predator_prey``: tumour and CAR T effectors with mass-action killing.

Time in days, cells in units of 1e9 cells, IL-6 in pg/mL.

    dT/dt = r T - k E T                 tumour growth and mass-action kill
    dE/dt = b E T - d E                 antigen-driven expansion, first-order loss
    dI/dt = sigma k E T - gamma I       (option ``cytokine=True``) IL-6 released
                                        in proportion to the kill, cleared linearly

Closed forms used as checks (and by users as rules of thumb):

* efficacy condition: the tumour shrinks at infusion iff k E0 > r;
* exposure identity: with r = 0, ln T(t)/T0 = -k int_0^t E ds, so the surviving
  fraction is T(inf)/T0 = exp(-k AUC_E), whatever E's own dynamics;
* with T and E constant (r = k E), IL-6 solves the linear ODE with constant
  drive D = sigma k E T: I(t) = D/gamma + (I0 - D/gamma) exp(-gamma t).

Parameter values are illustrative orders of magnitude chosen to match the
reference ``cart`` model's scales (docs/models.md#cart), not fitted values.
"""
import math

from kernels.models.base import Model, Parameter, State, kill_over_growth, rhs_kernel

_ILLUSTRATIVE = "illustrative, on the cart model's scale (docs/models.md#cart)"

_STATES = (
    State("T", "1e9 cells", "tumour burden", 10.0),
    State("E", "1e9 cells", "CAR T effectors", 0.1),
)
_CYTOKINE_STATE = State("I", "pg/mL", "serum IL-6", 5.0)

_PARAMETERS = (
    Parameter("r", "1/day", 0.03, 0.3, "tumour net growth rate", _ILLUSTRATIVE),
    Parameter("k", "1/(1e9 cells day)", 0.15, 0.5, "mass-action kill rate constant (kappa)", _ILLUSTRATIVE),
    Parameter("b", "1/(1e9 cells day)", 0.05, 0.3, "antigen-driven expansion per tumour cell", _ILLUSTRATIVE),
    Parameter("d", "1/day", 0.2, 0.3, "effector loss rate", _ILLUSTRATIVE),
)
_CYTOKINE_PARAMETERS = (
    Parameter("sigma", "pg/mL per 1e9 cells killed", 200.0, 0.5, "IL-6 released per killed tumour cell", _ILLUSTRATIVE),
    Parameter("gamma", "1/day", 2.0, 0.3, "IL-6 clearance rate", _ILLUSTRATIVE),
)


@rhs_kernel
def rhs(n, t, y, p, dydt):
    with_cytokine = y.shape[0] > 2
    for l in range(n):
        T, E = y[0, l], y[1, l]
        r, k, b, d = p[0, l], p[1, l], p[2, l], p[3, l]
        kill = k * E * T
        dydt[0, l] = r * T - kill
        dydt[1, l] = b * E * T - d * E
        if with_cytokine:
            dydt[2, l] = p[4, l] * kill - p[5, l] * y[2, l]


def model(cytokine=False):
    """The predator-prey model; ``cytokine=True`` adds IL-6 (state I, parameters sigma, gamma)."""
    states = _STATES + ((_CYTOKINE_STATE,) if cytokine else ())
    parameters = _PARAMETERS + (_CYTOKINE_PARAMETERS if cytokine else ())
    name = "predator_prey_cytokine" if cytokine else "predator_prey"
    roles = {"tumour": ("T",), "car_t": ("E",), "infusion": ("E",)}
    if cytokine:
        roles["il6"] = ("I",)
    return Model(name, "tumour-effector predator-prey with mass-action kill", states, parameters,
                 rhs, roles=roles, efficacy_ratio=kill_over_growth(parameters))


def efficacy_condition(k, E0, r):
    """True when the tumour shrinks at infusion: k E0 > r."""
    return k * E0 > r


def surviving_fraction(k, auc_E):
    """T(inf)/T0 = exp(-k AUC_E), exact when r = 0."""
    return math.exp(-k * auc_E)


def cytokine_constant_drive(I0, drive, gamma, t):
    """I(t) for dI/dt = drive - gamma I: drive/gamma + (I0 - drive/gamma) exp(-gamma t)."""
    steady = drive / gamma
    return steady + (I0 - steady) * math.exp(-gamma * t)
