"""``kinetics``: the multiphasic cellular-kinetic model of tisagenlecleucel
(Stein et al. 2019, CPT Pharmacometrics Syst Pharmacol 8:285-295), for fitting.

Time in days; E and M in transgene copies per microgram of genomic DNA
(copies/ug), the unit of the qPCR data the model was fitted to. States: E the
expanding, then contracting CAR T pool; M the persisting (memory) pool.
Observed: C = E + M.

    t <  Tmax:  dE/dt = rho E,                dM/dt = 0        (expansion)
    t >= Tmax:  dE/dt = -alpha E,             dM/dt = k E - beta M
    rho = ln(foldx) / Tmax,   k = FB (alpha - beta)

Each lane switches phase at its own Tmax (t is passed per lane). Starting
from E(0) = Cmax / foldx, M(0) = 0, the solution is Stein's closed form
(:func:`closed_form`):

    C(t) = Cmax exp(rho (t - Tmax))                                    t <  Tmax
    C(t) = Cmax [(1 - FB) exp(-alpha (t - Tmax)) + FB exp(-beta (t - Tmax))]   t >= Tmax

Cmax enters only through the initial state, so the right-hand side ignores it.
Typical values and between-patient variances omega^2 of the log parameters
are Stein 2019's population estimates (docs/references.md#stein-2019); sd_log =
sqrt(omega^2). Residual error in that fit: lognormal, sigma 0.56.

This model has no tumour and no IL-6: it is fitted to CAR T data
(:mod:`pipeline.estimate.structural`: ``stein`` is the closed form,
``stein_ode`` this ODE through the batched kernel) and is not a scenario model.
Its roles ``car_t`` (E + M) and ``infusion`` (E) let kernel features and doses
address it; a dose added to E multiplies by foldx up to Tmax like E(0) does.
"""
import math

import numpy as np

from kernels.models.base import Model, Parameter, State, rhs_kernel

_STEIN = "Stein et al. 2019 CPT PSP 8:285 (population typical value; sd_log = sqrt(omega^2 {}))"

STATES = (
    State("E", "copies/ug", "expanding then contracting CAR T transgene level "
                            "(fits start it at Cmax/foldx)", 0.0),
    State("M", "copies/ug", "persisting (memory) CAR T transgene level", 0.0),
)

PARAMETERS = (
    Parameter("foldx", "-", 3900.0, math.sqrt(2.4), "fold expansion from day 0 to Tmax",
              _STEIN.format(2.4)),
    Parameter("Tmax", "day", 9.3, math.sqrt(0.38), "time of the peak", _STEIN.format(0.38)),
    Parameter("Cmax", "copies/ug", 24000.0, math.sqrt(0.65), "peak transgene level",
              _STEIN.format(0.65)),
    Parameter("alpha", "1/day", 0.16, math.sqrt(0.91), "contraction rate of E after Tmax",
              _STEIN.format(0.91)),
    Parameter("FB", "-", 0.0079, math.sqrt(0.80), "fraction of the peak in the persisting "
                                                  "phase", _STEIN.format(0.80)),
    Parameter("beta", "1/day", 0.0032, math.sqrt(0.86), "decline rate of the persisting phase",
              _STEIN.format(0.86)),
)

RESIDUAL_SIGMA_LOG = 0.56   # Stein 2019: additive error on the log scale


@rhs_kernel
def rhs(n, t, y, p, dydt):
    for l in range(n):
        E, M = y[0, l], y[1, l]
        foldx, Tmax, alpha, FB, beta = p[0, l], p[1, l], p[3, l], p[4, l], p[5, l]
        expanding = t[l] < Tmax
        rho = math.log(foldx) / Tmax
        dydt[0, l] = rho * E if expanding else -alpha * E
        dydt[1, l] = 0.0 if expanding else FB * (alpha - beta) * E - beta * M


def closed_form(t, foldx, Tmax, Cmax, alpha, FB, beta):
    """C(t) = E + M in copies/ug (module docstring); arguments broadcast."""
    t, foldx, Tmax = np.asarray(t, np.float64), np.asarray(foldx), np.asarray(Tmax)
    rho = np.log(foldx) / Tmax
    s = t - Tmax
    before = np.minimum(s, 0.0)
    after = np.maximum(s, 0.0)
    decline = (1.0 - FB) * np.exp(-alpha * after) + FB * np.exp(-beta * after)
    return Cmax * np.where(s < 0.0, np.exp(rho * before), decline)


def initial_state(params):
    """y0[N, 2] = [Cmax / foldx, 0] for params[N, P] in model order."""
    params = np.asarray(params, dtype=np.float64)
    y0 = np.zeros((params.shape[0], 2))
    y0[:, 0] = params[:, 2] / params[:, 0]
    return y0


def model():
    return Model("kinetics", "Stein 2019 multiphasic CAR T kinetics (expansion, biphasic "
                             "decline; copies/ug; for fitting, no tumour)",
                 STATES, PARAMETERS, rhs, roles={"car_t": ("E", "M"), "infusion": ("E",)})
