"""``dual_antigen``: CAR T against a tumour of four antigen subclones, with
antigen loss, normal tissues that express one antigen, and the CAR's logic
gate as a parameter (docs/models.md#dual_antigen).

Time in days, cells in units of 1e9 cells, IL-6 in pg/mL, normal tissues as
the fraction of their baseline size that remains.

States: the tumour subclones T_AB (A+B+), T_A (A+B-), T_B (A-B+) and T_neg
(A-B-); the normal tissues N_A (expresses A only) and N_B (B only); effector,
memory and exhausted CAR T E, M, X and serum IL-6 I, as in the ``cart`` model.

The gate. Two binder switches w_A, w_B (1: the CAR carries a binder for that
antigen) and the logic or_logic (1: OR, one bound antigen suffices; 0: AND,
both antigens must be bound) give the recognition of each cell type, 0..1:

    r_AB  = or_logic (w_A + w_B - w_A w_B) + (1 - or_logic) w_A w_B
    r_A   = or_logic w_A          (A+B- tumour and normal tissue N_A)
    r_B   = or_logic w_B          (A-B+ tumour and normal tissue N_B)
    r_neg = 0

    design        w_A  w_B  or_logic   recognises
    mono-A         1    0     1        A+B+, A+B-, N_A       (parameter set "mono_A")
    mono-B         0    1     1        A+B+, A-B+, N_B       ("mono_B")
    OR             1    1     1        A+B+, A+B-, A-B+, N_A, N_B   ("or_gate")
    AND            1    1     0        A+B+ only             ("and_gate")

Only recognised cells are killed and only they stimulate the CAR T cells. The
normal tissues are antigen sinks of size S_NA, S_NB (1e9 cells), each seen
with a recognisability phi_NA, phi_NB relative to a tumour cell (antigen
density, access; 0 for an antigen no normal tissue expresses):

    L     = r_AB T_AB + r_A T_A + r_B T_B + r_A phi_NA S_NA N_A + r_B phi_NB S_NB N_B
                                             recognised antigen load, 1e9 cells
    stim  = L / (Ks + L)                     stimulation, 0..1
    h     = k E / (1 + L / Kk)               kill hazard of a recognised cell, 1/day
    G     = r (1 - (T_AB + T_A + T_B + T_neg) / Tmax)     shared logistic growth
    lA_j  = loss_A + loss_pressure w_A r_j h    per-cell loss rate of antigen A
    lB_j  = loss_B + loss_pressure w_B r_j h    ... of antigen B, in subclone j

    dT_AB/dt  = G T_AB - r_AB h T_AB - (lA_AB + lB_AB) T_AB
    dT_A/dt   = G T_A  - r_A h T_A   + lB_AB T_AB - lA_A T_A
    dT_B/dt   = G T_B  - r_B h T_B   + lA_AB T_AB - lB_B T_B
    dT_neg/dt = G T_neg              + lA_A T_A  + lB_B T_B
    dN_A/dt   = g_N (1 - N_A) - phi_NA r_A h N_A
    dN_B/dt   = g_N (1 - N_B) - phi_NB r_B h N_B
    dE/dt = a stim E - dE E - gx stim E - m E + rho M stim
    dM/dt = m E - dM M - rho M stim
    dX/dt = gx stim E - dX X
    dI/dt = s h L - c I                      IL-6 from all killing, h L

Antigen loss is first order: spontaneous (loss_A, loss_B: escape variants
arising as the tumour grows) plus loss under pressure, a fraction
loss_pressure of the CAR's engagements of a cell ending in loss of the bound
antigen instead of death (antigen down-regulation or trogocytosis), so its
rate rises with the kill hazard h. Selection (killing the positive cells)
shifts the phenotype on top of that. With a single fully recognised clone, no
normal tissue (phi_NA = phi_NB = 0) and no loss, L = T_AB and the equations are
the ``cart`` model's (whose parameters come first, in its order). An AND gate
needs both binders: with one binder and or_logic 0 nothing is recognised.

At infusion the baseline tumour is split over the subclones by
:func:`tumour_split`: fractions f_A = odds_A / (1 + odds_A) of A+ cells and f_B
of B+ cells, independent within a tumour, so T_AB : T_A : T_B : T_neg =
f_A f_B : f_A (1 - f_B) : (1 - f_A) f_B : (1 - f_A)(1 - f_B). The odds are
log-normal across patients (the cohort samples every parameter log-normally),
so the fractions are logit-normal: heterogeneous between patients.

Parameter sources. The CAR T, tumour and IL-6 parameters are the ``cart``
model's (docs/models.md#cart). The rest are illustrative assumptions, on the
cart model's scales, not published values (the published anchors are
qualitative only: EGFRvIII in about 25-30% of glioblastomas and heterogeneous
within a tumour, unverified; after CART-EGFRvIII the target antigen fell in
resected tumours, O'Rourke et al. 2017, docs/references.md#orourke-2017;
bivalent designs aim at escape through antigen loss). Typical values (sd of log): odds_A, odds_B 1e4
(2.0), a median 0.01% of cells negative for each antigen, rare pre-existing
escape variants; loss_A, loss_B 1e-6 /day (0.5); loss_pressure 1e-4 (0.5);
phi_NA, phi_NB 0.1 (0.5); S_NA, S_NB 1e9 cells (0.5); g_N 0.05 /day (0.3),
half-recovery of a normal tissue in about two weeks. Each scenario states the
values it uses (``configs/logic_gates.toml``, ``configs/gbm_egfrviii.toml``).

Outcome columns (:func:`extra_outcomes`): the subclones at the horizon, the
normal tissues' minima, ``escaped``, ``relapse_phenotype``,
``offtumour_damage_A`` / ``_B``, the unrecognised share of the tumour at the
horizon and the antigen-positive fractions at infusion.
"""
import numba as nb
import numpy as np

from kernels import features as kf
from kernels.jit import jit_options
from kernels.models import cart
from kernels.models.base import Model, Parameter, State, kill_over_growth, rhs_kernel

_SWITCH = "design switch, 0 or 1, set per arm (sd of log 0: the same for every patient)"
_ASSUMED = ("illustrative assumption on the cart model's scales, not published "
            "(docs/models.md#dual_antigen)")

SUBCLONES = ("T_AB", "T_A", "T_B", "T_neg")
PHENOTYPES = ("A+B+", "A+B-", "A-B+", "A-B-")      # labels of SUBCLONES, same order

STATES = (
    State("T_AB", "1e9 cells", "tumour subclone A+B+", 10.0),
    State("T_A", "1e9 cells", "tumour subclone A+B-", 0.0),
    State("T_B", "1e9 cells", "tumour subclone A-B+", 0.0),
    State("T_neg", "1e9 cells", "tumour subclone A-B- (no target)", 0.0),
    State("N_A", "fraction of baseline", "normal tissue expressing A only", 1.0),
    State("N_B", "fraction of baseline", "normal tissue expressing B only", 1.0),
    *cart.STATES[1:],                                # E, M, X, I
)

PARAMETERS = cart.PARAMETERS + (
    Parameter("w_A", "1", 1.0, 0.0, "binder for antigen A (1 present, 0 absent)", _SWITCH),
    Parameter("w_B", "1", 1.0, 0.0, "binder for antigen B (1 present, 0 absent)", _SWITCH),
    Parameter("or_logic", "1", 1.0, 0.0,
              "gate logic: 1 OR (one bound antigen suffices), 0 AND (both needed)", _SWITCH),
    Parameter("odds_A", "1", 1e4, 2.0,
              "odds f_A / (1 - f_A) of A+ cells in the tumour at infusion (median 0.01% A-)",
              _ASSUMED),
    Parameter("odds_B", "1", 1e4, 2.0,
              "odds f_B / (1 - f_B) of B+ cells in the tumour at infusion", _ASSUMED),
    Parameter("loss_A", "1/day", 1e-6, 0.5, "spontaneous loss rate of antigen A per cell",
              _ASSUMED),
    Parameter("loss_B", "1/day", 1e-6, 0.5, "spontaneous loss rate of antigen B per cell",
              _ASSUMED),
    Parameter("loss_pressure", "1", 1e-4, 0.5,
              "fraction of engagements of a cell ending in loss of the bound antigen", _ASSUMED),
    Parameter("phi_NA", "1", 0.1, 0.5,
              "recognisability of the A-only normal tissue relative to a tumour cell", _ASSUMED),
    Parameter("phi_NB", "1", 0.1, 0.5,
              "recognisability of the B-only normal tissue relative to a tumour cell", _ASSUMED),
    Parameter("S_NA", "1e9 cells", 1.0, 0.5, "size of the normal tissue expressing A only",
              _ASSUMED),
    Parameter("S_NB", "1e9 cells", 1.0, 0.5, "size of the normal tissue expressing B only",
              _ASSUMED),
    Parameter("g_N", "1/day", 0.05, 0.3, "normal tissue regeneration rate", _ASSUMED),
)

GATES = {
    "mono_A": {"w_A": 1.0, "w_B": 0.0, "or_logic": 1.0},
    "mono_B": {"w_A": 0.0, "w_B": 1.0, "or_logic": 1.0},
    "or_gate": {"w_A": 1.0, "w_B": 1.0, "or_logic": 1.0},
    "and_gate": {"w_A": 1.0, "w_B": 1.0, "or_logic": 0.0},
}


def recognition(w_A, w_B, or_logic):
    """(r_AB, r_A, r_B): recognition of A+B+, A+B- and A-B+ cells (module
    docstring); scalars or arrays. A-B- cells are never recognised."""
    r_AB = or_logic * (w_A + w_B - w_A * w_B) + (1.0 - or_logic) * w_A * w_B
    return r_AB, or_logic * w_A, or_logic * w_B


_recognition = nb.njit(**jit_options(inline="always"))(recognition)


@rhs_kernel
def rhs(n, t, y, p, dydt):
    for l in range(n):
        T_AB, T_A, T_B, T_neg, N_A, N_B = y[0, l], y[1, l], y[2, l], y[3, l], y[4, l], y[5, l]
        E, M, X, I = y[6, l], y[7, l], y[8, l], y[9, l]
        r, Tmax, k, Kk, Ks = p[0, l], p[1, l], p[2, l], p[3, l], p[4, l]
        a, dE, gx, m, rho = p[5, l], p[6, l], p[7, l], p[8, l], p[9, l]
        dM, dX, s, c = p[10, l], p[11, l], p[12, l], p[13, l]
        w_A, w_B, or_logic = p[14, l], p[15, l], p[16, l]
        loss_A, loss_B, pressure = p[19, l], p[20, l], p[21, l]
        phi_NA, phi_NB = p[22, l], p[23, l]
        S_NA, S_NB, g_N = p[24, l], p[25, l], p[26, l]

        r_AB, r_A, r_B = _recognition(w_A, w_B, or_logic)
        L = (r_AB * T_AB + r_A * T_A + r_B * T_B
             + r_A * phi_NA * S_NA * N_A + r_B * phi_NB * S_NB * N_B)
        # one division for both saturations: stim = L/(Ks+L), h = k E Kk/(Kk+L)
        inv = 1.0 / ((Ks + L) * (Kk + L))
        stim = L * (Kk + L) * inv
        h = k * E * Kk * (Ks + L) * inv
        G = r * (Tmax - (T_AB + T_A + T_B + T_neg)) / Tmax
        lossA_AB = (loss_A + pressure * w_A * r_AB * h) * T_AB
        lossB_AB = (loss_B + pressure * w_B * r_AB * h) * T_AB
        lossA_A = (loss_A + pressure * w_A * r_A * h) * T_A
        lossB_B = (loss_B + pressure * w_B * r_B * h) * T_B

        dydt[0, l] = G * T_AB - r_AB * h * T_AB - lossA_AB - lossB_AB
        dydt[1, l] = G * T_A - r_A * h * T_A + lossB_AB - lossA_A
        dydt[2, l] = G * T_B - r_B * h * T_B + lossA_AB - lossB_B
        dydt[3, l] = G * T_neg + lossA_A + lossB_B
        dydt[4, l] = g_N * (1.0 - N_A) - phi_NA * r_A * h * N_A
        dydt[5, l] = g_N * (1.0 - N_B) - phi_NB * r_B * h * N_B
        dydt[6, l] = a * stim * E - dE * E - gx * stim * E - m * E + rho * M * stim
        dydt[7, l] = m * E - dM * M - rho * M * stim
        dydt[8, l] = gx * stim * E - dX * X
        dydt[9, l] = s * h * L - c * I


def _column(params, name):
    return params[:, [p.name for p in PARAMETERS].index(name)]


def antigen_fractions(params):
    """(f_A, f_B): fractions of A+ and of B+ cells at infusion, odds / (1 + odds)."""
    odds_A, odds_B = _column(params, "odds_A"), _column(params, "odds_B")
    return odds_A / (1.0 + odds_A), odds_B / (1.0 + odds_B)


def tumour_split(params):
    """[N, 4] fractions of the baseline tumour in (A+B+, A+B-, A-B+, A-B-):
    f_A f_B, f_A (1 - f_B), (1 - f_A) f_B, (1 - f_A)(1 - f_B) (independent antigens)."""
    f_A, f_B = antigen_fractions(params)
    return np.column_stack([f_A * f_B, f_A * (1.0 - f_B), (1.0 - f_A) * f_B,
                            (1.0 - f_A) * (1.0 - f_B)])


def subclone_recognition(params):
    """[N, 4] recognition of (A+B+, A+B-, A-B+, A-B-) for each patient's gate."""
    r_AB, r_A, r_B = recognition(_column(params, "w_A"), _column(params, "w_B"),
                                 _column(params, "or_logic"))
    return np.column_stack([r_AB, r_A, r_B, np.zeros_like(r_AB)])


END_COLUMNS = tuple(f"tumour_end_{name[2:]}_cells" for name in SUBCLONES)   # tumour_end_AB_cells ...
NORMAL_MIN_COLUMNS = {"A": "normal_A_min_fraction", "B": "normal_B_min_fraction"}
ESCAPE_SHARE = 0.5


def extra_features(outcomes, horizon_days):
    """Each subclone's tumour at the horizon (cells) and each normal tissue's
    minimum (fraction of baseline)."""
    ends = [(column, kf.value_at(state, horizon_days), True)
            for column, state in zip(END_COLUMNS, SUBCLONES)]
    minima = [(column, kf.minimum(f"N_{tissue}"), False)
              for tissue, column in NORMAL_MIN_COLUMNS.items()]
    return ends + minima


def extra_outcomes(columns, params):
    """Outcome columns from the features above:

    ``antigen_A_fraction0``, ``antigen_B_fraction0``
                                f_A and f_B, the A+ and B+ fractions at infusion;
    ``unrecognised_share_end``  share of the tumour at the horizon made of cells
                                the arm's gate does not recognise (weights 1 - r_j);
    ``escaped``                 relapsed and that share > 0.5 (antigen escape);
    ``relapse_phenotype``       among relapsed patients, the subclone that
                                dominates the tumour at the horizon ("A+B-", ...);
                                "" otherwise;
    ``offtumour_damage_A``, ``offtumour_damage_B``
                                largest fractional loss of the normal tissue, 1 - min N.
    """
    end = np.column_stack([columns[c] for c in END_COLUMNS])
    total = end.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        unrecognised = ((1.0 - subclone_recognition(params)) * end).sum(axis=1) / total
    relapsed = np.asarray(columns["relapsed"], dtype=bool)
    dominant = np.array(PHENOTYPES)[np.argmax(np.nan_to_num(end, nan=-1.0), axis=1)]
    f_A, f_B = antigen_fractions(params)
    return {
        "antigen_A_fraction0": f_A,
        "antigen_B_fraction0": f_B,
        "unrecognised_share_end": unrecognised,
        "escaped": relapsed & (unrecognised > ESCAPE_SHARE),
        "relapse_phenotype": np.where(relapsed, dominant, ""),
        **{f"offtumour_damage_{tissue}": 1.0 - columns[column]
           for tissue, column in NORMAL_MIN_COLUMNS.items()},
    }


def model():
    return Model("dual_antigen",
                 "four antigen subclones (A+B+, A+B-, A-B+, A-B-) with antigen loss, normal "
                 "tissues expressing A or B, and the CAR's gate (mono-specific, OR, AND) as "
                 "parameters", STATES, PARAMETERS, rhs,
                 roles={"tumour": SUBCLONES, "car_t": ("E", "M", "X"), "il6": ("I",),
                        "infusion": ("E",)},
                 parameter_sets=GATES, tumour_split=tumour_split,
                 efficacy_ratio=kill_over_growth(PARAMETERS),
                 extra_features=extra_features, extra_outcomes=extra_outcomes)
