"""``cart2``: the reference CAR T model, whose clinical associations come from
stated mechanisms (supersedes ``cart``; docs/model-cart2.md has the full
derivation, sources and calibration).

Time in days from the infusion (lymphodepletion ends at day 0), cells in units
of 1e9 cells (whole body), IL-6 in pg/mL. State y = [T, E, M, X, A, I]: tumour,
effector, memory and exhausted CAR T, CAR T-activated myeloid cells
(macrophages and monocytes, in 1e9 cell-equivalents) and serum IL-6. The dose
enters E at day 0.

    C      = E + M + X                            all CAR T cells
    W(t)   = w_inf + (1 - w_inf) exp(-t / tau_w)  lymphodepletion window
    stim   = T / (Ks + T)                         antigen trigger of proliferation
    eng    = T / (Kk + T + Ke E)                  fraction of effectors engaged
    crowd  = Kc / (Kc + C)                        niche competition
    lam    = T / (lam50 E + T)                    antigen load per effector (0 at T = 0)
    dT/dt  = r T (1 - T/Tmax) T/(T + Text) - k E eng
    dE/dt  = [(a stim + h) W crowd - dE - gx lam - m] E + rho stim M
    dM/dt  = m E - dM M - rho stim M
    dX/dt  = gx lam E - dX X
    dA/dt  = kA E (eng + wc stim) - dA A
    dI/dt  = sI A - cI (I - I0)

Four mechanisms, each answering one way the superseded ``cart`` model went
wrong (there one tumour-scaled saturation, T/(Ks + T) with Ks = 1e9 cells, set
both whether and how far CAR T expand, and IL-6 was made in proportion to the
tumour killed, so a higher dose lowered severe CRS, small tumours failed and
debulking destroyed response):

1. Proliferation is triggered by little antigen (Ks = 1e8 cells: stim ~ 1 for
   any clinical burden), is supported by the homeostatic cytokines of the
   lymphodepletion window W(t), which closes over days to a floor w_inf as
   normal lymphocytes return, and is bounded by niche competition (Kc).
   Expansion is therefore set by the product and the patient, not slaved to the
   tumour: Kimmel, Locke & Altrock 2021 (Proc R Soc B 288:20210229) explain
   ZUMA-1 expansion by post-lymphodepletion reconstitution and competition with
   normal T cells. The window's floor is what ends expansion: contraction
   follows when (a + h) w_inf < dE + gx lam + m.
2. Killing is limited by engagement: a fraction eng of effectors is bound to
   targets, saturating in the tumour (Kk) and reduced by effector interference
   (Ke), so a large tumour meets a low effector-to-target ratio and is cleared
   more slowly in relative terms (at most k T / Ke tumour cells killed per day).
3. Exhaustion is driven by the antigen load per effector, lam: high burden
   exhausts, a small or debulked tumour leaves more memory cells.
4. IL-6 comes from myeloid cells activated by engaged CAR T (and weakly by CAR
   T contact with antigen, wc): macrophages and monocytes are the source of
   IL-6 in CRS (Giavridis et al. 2018, Nat Med 24:731; Norelli et al. 2018, Nat
   Med 24:739; Santurio et al. 2025, PLOS Comput Biol, a macrophage-mediated CRS
   model). Peak IL-6 scales with (CAR T that expanded: product and dose) x
   (fraction engaged: burden), so both the dose and the burden raise it.

Whole body, not blood: the model has no distribution phase, so its fold
expansion (~80x the dose at the median) is not the ~3,900x of blood levels
(Stein et al. 2019); its CAR T kinetics are calibrated to the shape of the
blood curve (ratios to day 7), not to blood levels.

Typical values: those fitted (``a``, ``w_inf``, ``tau_w``, ``dE``, ``m``,
``k``, ``Kk``, ``sI``, ``dA``) are the output of ``cartcohort calibrate
configs/targets_dlbcl.toml`` (docs/calibration.md), started from a hand
calibration (the "start" values in :data:`PARAMETERS`' sources); the others are
fixed at the values and sources below. Spreads (sd of log) are assumptions
unless a source is named. The calibration's targets identify only a few
combinations of the fitted values (docs/calibration.md lists them): in
particular k, Kk, a and sI trade off against each other, as Kimmel et al. 2021
found for their kill parameters.

Extra columns (:mod:`kernels.models.phenotype`): all, memory and exhausted CAR
T cells and the memory and exhausted fractions at days 7, 14, 28 and 90
(``LANDMARK_DAYS``), and ``durable_response``.
"""
import numpy as np

from kernels.models import phenotype
from kernels.models.base import Model, Parameter, State, rhs_kernel
from kernels.vecmath import exp

_CALIBRATED = "calibrated: cartcohort calibrate configs/targets_dlbcl.toml, hand start {}"
_ASSUMED = "assumption (hand calibration)"

STATES = (
    State("T", "1e9 cells", "tumour burden", 100.0),
    State("E", "1e9 cells", "effector CAR T cells", 0.0),
    State("M", "1e9 cells", "memory CAR T cells", 0.0),
    State("X", "1e9 cells", "exhausted CAR T cells", 0.0),
    State("A", "1e9 cells", "CAR T-activated myeloid cells (macrophages, monocytes)", 0.0),
    State("I", "pg/mL", "serum IL-6", 5.0),
)

PARAMETERS = (
    Parameter("r", "1/day", 0.03, 0.6, "tumour net growth rate",
              "assumption, inside Kimmel et al. 2021's r_B range 0.01-0.5/d"),
    Parameter("Tmax", "1e9 cells", 5000.0, 0.0, "tumour carrying capacity (5e12 cells)",
              "assumption: far above clinical burdens"),
    Parameter("Text", "1e9 cells", 1e-7, 0.0,
              "tumour size below which growth stops (100 cells; extinction)",
              "Kimmel et al. 2021's stochastic extinction threshold"),
    Parameter("a", "1/day", 1.6749, 0.15, "antigen-driven CAR T proliferation",
              _CALIBRATED.format(1.6)),
    Parameter("h", "1/day", 0.3, 0.2, "homeostatic (cytokine-driven) proliferation", _ASSUMED),
    Parameter("Ks", "1e9 cells", 0.1, 0.5,
              "tumour giving half-maximal proliferation trigger (1e8 cells)", _ASSUMED),
    Parameter("w_inf", "1", 0.174736, 0.2,
              "floor of the lymphodepletion window (support after reconstitution)",
              _CALIBRATED.format(0.2)),
    Parameter("tau_w", "day", 6.87361, 0.2, "time constant of the window's closing",
              _CALIBRATED.format(4.0)),
    Parameter("Kc", "1e9 cells", 10.0, 0.8, "CAR T niche size (1e10 cells)",
              "assumption (Kimmel et al. 2021 K_C 6.96e10); sd from Stein et al. 2019's "
              "Cmax omega^2 0.65"),
    Parameter("dE", "1/day", 0.314176, 0.2, "effector death (contraction)",
              _CALIBRATED.format("0.22, near Stein et al. 2019's alpha 0.16/d")),
    Parameter("gx", "1/day", 0.1, 0.3, "exhaustion at full antigen load", _ASSUMED),
    Parameter("lam50", "1", 10.0, 0.5,
              "targets per effector at half-maximal load (lam = 1/2)", _ASSUMED),
    Parameter("m", "1/day", 0.00158905, 0.5, "effector to memory differentiation",
              _CALIBRATED.format("0.003; Stein et al. 2019: FB(alpha - beta) = 0.0012/d")),
    Parameter("rho", "1/day", 0.5, 0.3, "memory reactivation on antigen", _ASSUMED),
    Parameter("dM", "1/day", 0.0032, 0.3, "memory death",
              "Stein et al. 2019's terminal rate beta 0.0032/d"),
    Parameter("dX", "1/day", 0.15, 0.3, "exhausted-cell death", _ASSUMED),
    Parameter("k", "1/day", 8.78969, 1.0, "kill rate of an engaged effector (per 1e9 cells)",
              _CALIBRATED.format(7.0)),
    Parameter("Kk", "1e9 cells", 51.5236, 0.5, "tumour at half-maximal engagement",
              _CALIBRATED.format(50.0)),
    Parameter("Ke", "1", 5.0, 0.3, "effector interference in engagement",
              "assumption: the largest kill per tumour cell, k/Ke, of the order of "
              "Kimmel et al. 2021's gamma_B 1.15/d"),
    Parameter("kA", "1/day", 1.0, 0.0, "myeloid activation per engaged CAR T",
              "scale of A (fixed: only kA sI is identifiable)"),
    Parameter("wc", "1", 0.02, 0.5, "myeloid activation by CAR T antigen contact", _ASSUMED),
    Parameter("dA", "1/day", 1.99168, 0.3, "myeloid deactivation", _CALIBRATED.format(1.0)),
    Parameter("sI", "pg/mL/day per 1e9 cells", 815.328, 0.4,
              "IL-6 secretion of activated myeloid cells", _CALIBRATED.format(520.0)),
    Parameter("cI", "1/day", 2.0, 0.3, "IL-6 clearance", _ASSUMED),
    Parameter("I0", "pg/mL", 5.0, 0.0, "baseline serum IL-6",
              "assumption: healthy serum IL-6 is a few pg/mL"),
)


@rhs_kernel
def rhs(n, t, y, p, dydt):
    for l in range(n):
        T, E, M, X, A, I = y[0, l], y[1, l], y[2, l], y[3, l], y[4, l], y[5, l]
        r, Tmax, Text, a, h = p[0, l], p[1, l], p[2, l], p[3, l], p[4, l]
        Ks, w_inf, tau_w, Kc, dE = p[5, l], p[6, l], p[7, l], p[8, l], p[9, l]
        gx, lam50, m, rho, dM = p[10, l], p[11, l], p[12, l], p[13, l], p[14, l]
        dX, k, Kk, Ke, kA = p[15, l], p[16, l], p[17, l], p[18, l], p[19, l]
        wc, dA, sI, cI, I0 = p[20, l], p[21, l], p[22, l], p[23, l], p[24, l]
        C = E + M + X
        # vecmath's exp, not libm's: an opaque call would keep the loop scalar
        W = w_inf + (1.0 - w_inf) * exp(-t[l] / tau_w)
        stim = T / (Ks + T)
        eng = T / (Kk + T + Ke * E)
        crowd = Kc / (Kc + C)
        lam = T / (lam50 * E + T + 1e-300)
        dydt[0, l] = r * T * (1.0 - T / Tmax) * T / (T + Text) - k * E * eng
        dydt[1, l] = ((a * stim + h) * W * crowd - dE - gx * lam - m) * E + rho * stim * M
        dydt[2, l] = m * E - dM * M - rho * stim * M
        dydt[3, l] = gx * lam * E - dX * X
        dydt[4, l] = kA * E * (eng + wc * stim) - dA * A
        dydt[5, l] = sI * A - cI * (I - I0)


# Landmark days of the CAR T columns: days 7, 14, 28 and 90, the days of the
# ZUMA-1 median blood levels (Kimmel et al. 2021) that the kinetics are
# calibrated to; day 90 is also the month-3 response assessment.
LANDMARK_DAYS = (7.0, 14.0, 28.0, 90.0)
extra_features, extra_outcomes = phenotype.landmarks(LANDMARK_DAYS)
_K, _KK, _KE, _R = (next(i for i, q in enumerate(PARAMETERS) if q.name == name)
                    for name in ("k", "Kk", "Ke", "r"))


def efficacy_ratio(params, E0):
    """k E0 / ((Kk + Ke E0) r): per-capita kill over growth of a small tumour at infusion."""
    return params[:, _K] * E0 / ((params[:, _KK] + params[:, _KE] * E0) * params[:, _R])


def model():
    return Model("cart2", "reference CAR T model: lymphodepletion window, niche, engagement-"
                 "limited kill, load-driven exhaustion, myeloid IL-6",
                 STATES, PARAMETERS, rhs,
                 roles={"tumour": ("T",), "car_t": phenotype.CAR_T, "il6": ("I",),
                        "infusion": ("E",)},
                 efficacy_ratio=efficacy_ratio,
                 extra_features=extra_features, extra_outcomes=extra_outcomes)
