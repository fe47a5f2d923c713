"""``cart``: the first reference CAR T model, superseded by ``cart2``.

Kept under its name so that runs made with it can be repeated and compared
(every run records its model). Why it was superseded (measured on its own
default scenario, 100,000 patients): one tumour-scaled saturation,
stim = T/(Ks + T) with Ks = 1e9 cells, decides both whether CAR T expand and how
far, and IL-6 is made in proportion to the tumour killed (dI/dt = s kill - c I),
so total IL-6 tracks the baseline tumour whatever the dose. Hence its answers
run against the clinic: a higher dose lowers severe CRS (2e7 -> 5e8 cells:
18.3% -> 15.5%; elasticity of peak IL-6 to dose about -0.05), response rises
with tumour burden (30% / 89% / 100% by tertile), and debulking destroys
response (73% -> 1% at x0.01). ``cart2`` (kernels/models/cart2.py) separates
the expansion trigger, the expansion limit, engagement-limited killing and
myeloid IL-6; use it for dosing questions.

Time in days, cells in units of 1e9 cells, IL-6 in pg/mL.
State y = [T, E, M, X, I]: tumour, effector, memory and exhausted CAR T, serum IL-6.

    stim  = T / (Ks + T)                       antigen stimulation, 0..1
    kill  = k E T / (1 + T / Kk)               saturating kill
    dT/dt = r T (1 - T / Tmax) - kill
    dE/dt = a stim E - dE E - gx stim E - m E + rho M stim
    dM/dt = m E - dM M - rho M stim
    dX/dt = gx stim E - dX X
    dI/dt = s kill - c I

Typical values and between-patient spreads are a hand-set starting point, not
fitted (docs/models.md#cart). They give CAR T peaks near day 10-14 at about 100x
the dose, IL-6 peaks from tens to thousands of pg/mL and tumour falls of several
logs, in line with the expansion and cytokine ranges of Stein et al. 2019 and
Teachey et al. 2016 (docs/references.md#stein-2019,
docs/references.md#teachey-2016); the cohort calibration against the trial
outcome bands is the scenario's job (``configs/default.toml``).

Extra columns (:func:`extra_features`, :func:`extra_outcomes`): the CAR T
phenotype at days 28 and 90 (``PHENOTYPE_DAYS``), as cells
``cart_d28_cells`` (E + M + X), ``cart_memory_d28_cells`` (M) and
``cart_exhausted_d28_cells`` (X), and as fractions of all CAR T cells
``memory_fraction_d28`` = M / (E + M + X) and ``exhausted_fraction_d28`` =
X / (E + M + X) (likewise ``_d90``); a day beyond the horizon has no columns.
``durable_response``: responded at the landmark (``responded``) and not
relapsed (``relapsed``: the tumour fell to ``response_fraction`` x T0 and later
climbed back above ``relapse_fraction`` x T0, :mod:`pipeline.outcomes`) at any
time up to the horizon: a response still in place at the end of the horizon.
"""
from kernels.models import phenotype
from kernels.models.base import Model, Parameter, State, kill_over_growth, rhs_kernel

_DESIGN = "hand-set starting point, not fitted (docs/models.md#cart)"

STATES = (
    State("T", "1e9 cells", "tumour burden", 10.0),
    State("E", "1e9 cells", "effector CAR T cells", 0.0),
    State("M", "1e9 cells", "memory CAR T cells", 0.0),
    State("X", "1e9 cells", "exhausted CAR T cells", 0.0),
    State("I", "pg/mL", "serum IL-6", 5.0),
)

PARAMETERS = (
    Parameter("r", "1/day", 0.03, 0.3, "tumour net growth rate", _DESIGN),
    Parameter("Tmax", "1e9 cells", 1000.0, 0.3, "tumour carrying capacity", _DESIGN),
    Parameter("k", "1/(1e9 cells day)", 0.15, 0.5, "kill rate constant", _DESIGN),
    Parameter("Kk", "1e9 cells", 10.0, 0.3, "tumour burden at which killing saturates", _DESIGN),
    Parameter("Ks", "1e9 cells", 1.0, 0.3, "tumour burden giving half-maximal stimulation", _DESIGN),
    Parameter("a", "1/day", 0.8, 0.2, "antigen-driven effector proliferation", _DESIGN),
    Parameter("dE", "1/day", 0.2, 0.3, "effector death rate", _DESIGN),
    Parameter("gx", "1/day", 0.05, 0.3, "antigen-driven exhaustion rate", _DESIGN),
    Parameter("m", "1/day", 0.02, 0.3, "effector to memory differentiation", _DESIGN),
    Parameter("rho", "1/day", 1.0, 0.3, "memory reactivation on antigen", _DESIGN),
    Parameter("dM", "1/day", 0.005, 0.3, "memory death rate", _DESIGN),
    Parameter("dX", "1/day", 0.1, 0.3, "exhausted-cell death rate", _DESIGN),
    Parameter("s", "pg/mL per 1e9 cells killed", 200.0, 0.5, "IL-6 released per killed tumour cell", _DESIGN),
    Parameter("c", "1/day", 2.0, 0.3, "IL-6 clearance rate", _DESIGN),
)


@rhs_kernel
def rhs(n, t, y, p, dydt):
    for l in range(n):
        T, E, M, X, I = y[0, l], y[1, l], y[2, l], y[3, l], y[4, l]
        r, Tmax, k, Kk, Ks = p[0, l], p[1, l], p[2, l], p[3, l], p[4, l]
        a, dE, gx, m, rho = p[5, l], p[6, l], p[7, l], p[8, l], p[9, l]
        dM, dX, s, c = p[10, l], p[11, l], p[12, l], p[13, l]
        # one division for both saturations: stim = T/(Ks+T), kill = k E T Kk/(Kk+T)
        inv = 1.0 / ((Ks + T) * (Kk + T))
        stim = T * (Kk + T) * inv
        kill = k * E * T * Kk * (Ks + T) * inv
        dydt[0, l] = r * T * (Tmax - T) / Tmax - kill
        dydt[1, l] = a * stim * E - dE * E - gx * stim * E - m * E + rho * M * stim
        dydt[2, l] = m * E - dM * M - rho * M * stim
        dydt[3, l] = gx * stim * E - dX * X
        dydt[4, l] = s * kill - c * I


# Days of the phenotype columns: day 28, the month-1 landmark of CAR T kinetics
# (AUC0-28, Stein et al. 2019; ZUMA-1 day-28 levels, Kimmel et al. 2021); day 90,
# the month-3 response assessment (configs/default.toml's response_day).
PHENOTYPE_DAYS = (28.0, 90.0)
extra_features, extra_outcomes = phenotype.landmarks(PHENOTYPE_DAYS)


def model():
    return Model("cart", "reference CAR T model: tumour, effector/memory/exhausted CAR T, IL-6",
                 STATES, PARAMETERS, rhs,
                 roles={"tumour": ("T",), "car_t": phenotype.CAR_T, "il6": ("I",), "infusion": ("E",)},
                 efficacy_ratio=kill_over_growth(PARAMETERS),
                 extra_features=extra_features, extra_outcomes=extra_outcomes)
