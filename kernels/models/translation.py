"""``translation``: from an NSG xenograft to a patient, one difference at a time.

Time in days, cells in units of 1e9 cells, IL-6 in pg/mL.

The core is CARTmath (Barros et al. 2021, Cancers 13:2941; docs/references.md#barros-2021),
effector CAR T C_T, memory CAR T C_M and tumour T in an NSG mouse:

    dC_T/dt = (phi - rho) C_T + theta T C_M - alpha T C_T
    dC_M/dt = eps C_T - theta T C_M - mu C_M
    dT/dt   = r T (1 - b T) - gamma C_T T

with its RAJI (CD19) parameters as the preclinical anchor. CARTmath counts
cells, this model 1e9 cells: the per-cell rate constants gamma, alpha and theta
are multiplied by 1e9 (gamma 3.37e-8 per cell per day is 33.7 per 1e9 cells
per day); the per-day rates phi, rho, eps, mu and r are unchanged.

Six differences between a xenograft and a patient are added, each a group of
parameters (:data:`DIFFERENCES`). The typical values are the patient's; the
parameter set ``"preclinical"`` (:data:`PRECLINICAL`) puts all six at the
xenograft's values, ``"clinical"`` at the patient's:

1. antigen heterogeneity, ``f_neg``: the antigen-negative fraction of the
   tumour (state Tn), which CAR T cells neither kill nor are stimulated by. A
   RAJI line has uniform high CD19: 0.
2. host suppression, ``S``: Tregs and suppressive myeloid cells multiply the
   kill and the antigen-driven proliferation (CARTmath's effector-to-memory
   loop eps) by q = 1 / (1 + S). NSG mice have neither: 0.
3. trafficking, ``k_tr``: the dose enters the blood (state Cb) and reaches the
   tumour at rate k_tr while it is lost from the blood at rate d_b, so a
   fraction k_tr / (k_tr + d_b) arrives after a mean 1 / (k_tr + d_b) days. A
   xenograft's cells act as if delivered into the tumour: 50 per day (~30
   minutes; fast, yet not so fast that it sets the integrator's steps).
4. cytokine support, ``il2`` and ``crowd``: in an NSG mouse the CAR T cells get
   human IL-2 and the whole T-cell niche (no host lymphocyte consumes IL-7 and
   IL-15): il2 adds to their antigen-independent proliferation and nothing
   limits their number. In a patient il2 = 0 and the CAR T cells compete for a
   niche of capacity sigma / crowd (Kimmel et al. 2021's K_C): new memory
   cells are made at eps x room, room = max(0, 1 - crowd C / sigma), C all CAR
   T cells.
5. a normal-tissue antigen sink, ``n_sink``: normal antigen-positive cells (B
   cells for CD19), n_sink per mouse volume, N0 = n_sink sigma in all, engage
   CAR T cells as tumour cells do (kill, inactivation, memory reactivation);
   D counts those killed (not regenerated within the horizon: B-cell aplasia
   lasts months). NSG mice have no B cells: 0.
6. tumour size and spread, ``scale``, ``sigma`` and ``r``: scale multiplies the
   cohort's baseline tumour burden (a xenograft's ~1e8 cells against a
   patient's ~1e10); sigma dilutes every encounter, because CARTmath's per-cell
   rate constants were fitted in a mouse and a CAR T cell in a body sigma times
   larger meets a given number of targets sigma times less often (encounters
   and the tumour's carrying capacity depend on cells per mouse volume,
   cells / sigma); and a large established tumour grows more slowly than a
   small xenograft of a fast line (r 0.05 against RAJI's 0.507 per day).

Equations (state y = [Tp, Tn, Cb, Ct, Cm, D, I]):

    N      = max(n_sink sigma - D, 0)              normal antigen-positive cells
    L      = (Tp + N) / sigma                      antigen met per mouse volume
    q      = 1 / (1 + S)                           host suppression
    kill   = q gamma Ct Tp / sigma                 tumour cells killed per day
    killN  = q gamma Ct N / sigma                  normal cells killed per day
    react  = theta L Cm / (1 + tau theta L)        memory reactivated on antigen
    room   = max(1 - crowd (Cb + Ct + Cm) / sigma, 0)
    dTp/dt = r Tp (1 - b (Tp + Tn) / sigma) - kill
    dTn/dt = r Tn (1 - b (Tp + Tn) / sigma)
    dCb/dt = -(k_tr + d_b) Cb
    dCt/dt = k_tr Cb + (phi + il2 - rho) Ct + react - alpha L Ct
    dCm/dt = q eps room Ct - react - mu Cm
    dD/dt  = killN
    dI/dt  = s (kill + killN) - c I

With the six differences at the xenograft's values (f_neg = S = n_sink = crowd
= 0, sigma = 1, phi + il2 = CARTmath's phi), the dose put into Ct and tau = 0,
these are CARTmath's equations (tests/test_translation.py checks it against
scipy). ``tau``, the shortest time in which a memory cell becomes an effector
again (0.02 day), caps the reactivation rate at 1/tau: with CARTmath's theta,
theta T reaches ~2e4 per day at a xenograft's 1e8 cells, a stiffness an
explicit integrator pays for with steps of seconds, while the cap slows the
memory loop's expansion (the positive root x of x (x + k) = eps k, k the
reactivation rate) only from eps = 1.60 to 1.55 per day. Measured on the
translation scenario (1,000 patients): tau 0.005 instead of 0.02 moves the
preclinical response by +0.1 and the clinical by +0.7 points.

Known limits: CARTmath's RAJI memory pool neither dies (mu 6.9e-7/day) nor
stops forming (eps C_T) once the tumour is gone, so without a niche limit
(crowd = 0, the xenograft) the CAR T total keeps rising to the horizon; the
model is built for the response landmark, not for CAR T kinetics. IL-6 follows
the reference ``cart`` model's coupling (released in proportion to the cells
killed, cleared linearly; s and c of docs/models.md#cart) on the human serum scale in
every arm: a mouse's IL-6 is not modelled.
"""
import numpy as np

from kernels.models.base import Model, Parameter, State, rhs_kernel

_RAJI = "CARTmath RAJI fit, Barros et al. 2021 (docs/references.md#barros-2021)"
_PER_CELL = _RAJI + "; per cell x 1e9"
_DESIGN = "cart model's value (docs/models.md#cart)"

STATES = (
    State("Tp", "1e9 cells", "antigen-positive tumour", 0.0),
    State("Tn", "1e9 cells", "antigen-negative tumour", 0.0),
    State("Cb", "1e9 cells", "CAR T cells in the blood (the infused dose)", 0.0),
    State("Ct", "1e9 cells", "effector CAR T cells at the tumour (CARTmath C_T)", 0.0),
    State("Cm", "1e9 cells", "memory CAR T cells (CARTmath C_M)", 0.0),
    State("D", "1e9 cells", "normal antigen-positive cells killed (N0 - N)", 0.0),
    State("I", "pg/mL", "serum IL-6", 5.0),
)

# Typical values: the patient. Between-patient spreads (sd of log) are
# assumptions of the order of the cart model's (docs/models.md#cart); 0 where a
# spread would break an identity (phi + il2 - rho = 0 in the xenograft) or
# matter little.
PARAMETERS = (
    # -- tumour (r belongs to difference 6) ---------------------------------------
    Parameter("r", "1/day", 0.05, 0.3, "tumour growth rate",
              "patient: inside Kimmel et al. 2021's r_B 0.01-0.5/day "
              "(docs/references.md#kimmel-2021); xenograft: CARTmath RAJI 0.507/day"),
    Parameter("b", "1/(1e9 cells)", 0.1, 0.0,
              "inverse tumour carrying capacity per mouse volume",
              "assumption: 1e10 cells (~10 g) in a 25 g mouse, 2.8e13 in a patient at "
              "sigma 2800; CARTmath RAJI has b = 0 (no cap identifiable in 15 days)"),
    # -- CARTmath, RAJI -----------------------------------------------------------
    Parameter("gamma", "1/(1e9 cells day)", 33.7, 0.3, "kill rate constant",
              _PER_CELL + " (3.37e-8)"),
    Parameter("phi", "1/day", 0.67, 0.0, "effector proliferation without cytokine support",
              "CARTmath RAJI phi 0.83 (docs/references.md#barros-2021) minus the "
              "xenograft's il2 0.16"),
    Parameter("rho", "1/day", 0.83, 0.0, "effector death rate", _RAJI),
    Parameter("alpha", "1/(1e9 cells day)", 12.5, 0.3,
              "effector inactivation by antigen encounter", _PER_CELL + " (1.25e-8)"),
    Parameter("eps", "1/day", 1.60, 0.2, "effector-to-memory differentiation", _RAJI),
    Parameter("mu", "1/day", 6.9e-7, 0.0, "memory death rate", _RAJI),
    Parameter("theta", "1/(1e9 cells day)", 2.3e5, 0.3, "memory reactivation by antigen",
              _PER_CELL + " (2.3e-4)"),
    Parameter("tau", "day", 0.02, 0.0, "shortest memory reactivation time (react <= 1/tau)",
              "assumption (~30 minutes); 0 gives CARTmath"),
    # -- (1) antigen heterogeneity -------------------------------------------------
    Parameter("f_neg", "1", 1e-3, 1.0, "antigen-negative fraction of the tumour at infusion",
              "assumption (unverified): 0.1% antigen-negative cells, below what flow "
              "cytometry reports as antigen-positive disease"),
    # -- (2) host suppression ----------------------------------------------------------
    Parameter("S", "1", 0.5, 0.5, "host suppression: kill and proliferation x 1/(1 + S)",
              "derived: the memory loop's expansion 1.55 q - 0.16 = 0.87/day in a "
              "patient, near tisagenlecleucel's rho 0.89/day (Stein et al. 2019)"),
    # -- (3) trafficking ---------------------------------------------------------------
    Parameter("k_tr", "1/day", 0.5, 0.5, "CAR T trafficking from blood to tumour",
              "assumption: 76% of the dose reaches the tumour, after 1.5 days on average"),
    Parameter("d_b", "1/day", 0.16, 0.3, "CAR T loss from the blood",
              "tisagenlecleucel contraction alpha 0.16/day, Stein et al. 2019 "
              "(docs/references.md#stein-2019)"),
    # -- (4) cytokine support ------------------------------------------------------------
    Parameter("il2", "1/day", 0.0, 0.0, "effector proliferation from exogenous cytokines",
              "0 in a patient; xenograft 0.16/day, so that the patient's effectors "
              "contract at phi - rho = -0.16/day, Stein et al. 2019's alpha"),
    Parameter("crowd", "1/(1e9 cells)", 40.2, 0.0,
              "1 / CAR T capacity per mouse volume (capacity sigma / crowd)",
              "Kimmel et al. 2021's K_C 6.96e10 cells (docs/references.md#kimmel-2021) "
              "at sigma 2800"),
    # -- (5) normal-tissue antigen sink -----------------------------------------------
    Parameter("n_sink", "1e9 cells", 0.018, 0.5,
              "normal antigen-positive cells per mouse volume (N0 = n_sink sigma)",
              "assumption (unverified): ~5e10 B cells in a patient, at sigma 2800"),
    # -- (6) tumour size and spread (and r above) --------------------------------------
    Parameter("scale", "1", 1.0, 0.0, "multiplier of the cohort's baseline tumour burden",
              "1 in a patient; xenograft 0.01: ~1e8 cells, the RAJI burden at infusion in "
              "the CARTmath simulator's RAJI examples (3e6 cells grown 7 days at 0.507/day; "
              "not a published table)"),
    Parameter("sigma", "1", 2800.0, 0.3, "volume relative to a mouse (encounters / sigma)",
              "assumption: body mass, 70 kg / 25 g"),
    # -- IL-6 ---------------------------------------------------------------------------
    Parameter("s", "pg/mL per 1e9 cells killed", 200.0, 0.5, "IL-6 released per cell killed",
              _DESIGN),
    Parameter("c", "1/day", 2.0, 0.3, "IL-6 clearance rate", _DESIGN),
)

# The six differences: the parameters each one sets (a waterfall step).
DIFFERENCES = {
    "heterogeneity": ("f_neg",),
    "suppression": ("S",),
    "trafficking": ("k_tr",),
    "cytokine_support": ("il2", "crowd"),
    "antigen_sink": ("n_sink",),
    "tumour_size": ("scale", "sigma", "r"),
}
# The xenograft (RAJI in NSG mice): the six differences at its values (sources
# in the module docstring and the parameters' descriptions).
PRECLINICAL = {"f_neg": 0.0, "S": 0.0, "k_tr": 50.0, "il2": 0.16, "crowd": 0.0,
               "n_sink": 0.0, "scale": 0.01, "sigma": 1.0, "r": 0.507}
_INDEX = {p.name: j for j, p in enumerate(PARAMETERS)}
CLINICAL = {name: PARAMETERS[_INDEX[name]].typical for name in PRECLINICAL}


@rhs_kernel
def rhs(n, t, y, p, dydt):
    for l in range(n):
        Tp, Tn, Cb, Ct, Cm, D = y[0, l], y[1, l], y[2, l], y[3, l], y[4, l], y[5, l]
        r, b, gamma, phi, rho = p[0, l], p[1, l], p[2, l], p[3, l], p[4, l]
        alpha, eps, mu, theta, tau = p[5, l], p[6, l], p[7, l], p[8, l], p[9, l]
        S, k_tr, d_b, il2, crowd = p[11, l], p[12, l], p[13, l], p[14, l], p[15, l]
        n_sink, sigma, s, c = p[16, l], p[18, l], p[19, l], p[20, l]
        normal = max(n_sink * sigma - D, 0.0)
        load = (Tp + normal) / sigma
        q = 1.0 / (1.0 + S)
        per_target = q * gamma * Ct / sigma
        kill = per_target * Tp
        kill_normal = per_target * normal
        react = theta * load * Cm / (1.0 + tau * theta * load)
        room = max(1.0 - crowd * (Cb + Ct + Cm) / sigma, 0.0)
        growth = r * (1.0 - b * (Tp + Tn) / sigma)
        dydt[0, l] = growth * Tp - kill
        dydt[1, l] = growth * Tn
        dydt[2, l] = -(k_tr + d_b) * Cb
        dydt[3, l] = k_tr * Cb + (phi + il2 - rho) * Ct + react - alpha * load * Ct
        dydt[4, l] = q * eps * room * Ct - react - mu * Cm
        dydt[5, l] = kill_normal
        dydt[6, l] = s * (kill + kill_normal) - c * y[6, l]


def tumour_split(params):
    """[N, 2] multipliers of the baseline burden: scale (1 - f_neg) into Tp,
    scale f_neg into Tn."""
    scale, f_neg = params[:, _INDEX["scale"]], params[:, _INDEX["f_neg"]]
    return np.stack([scale * (1.0 - f_neg), scale * f_neg], axis=1)


def efficacy_ratio(params, E0):
    """Kill over growth per tumour cell at infusion if the whole dose E0 (model
    units) were at the tumour: q gamma E0 / (sigma r)."""
    gamma, S, sigma, r = (params[:, _INDEX[name]] for name in ("gamma", "S", "sigma", "r"))
    return gamma * E0 / ((1.0 + S) * sigma * r)


def model():
    return Model("translation",
                 "CARTmath xenograft model with six switchable xenograft-to-patient differences",
                 STATES, PARAMETERS, rhs,
                 roles={"tumour": ("Tp", "Tn"), "car_t": ("Cb", "Ct", "Cm"), "il6": ("I",),
                        "infusion": ("Cb",)},
                 parameter_sets={"preclinical": dict(PRECLINICAL), "clinical": dict(CLINICAL)},
                 tumour_split=tumour_split, efficacy_ratio=efficacy_ratio)
