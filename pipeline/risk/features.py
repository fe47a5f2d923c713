"""Per-patient risk features from a run's patients dataset, and the train/test split.

One row per patient of one arm (default: the run's reference arm, the first in
the manifest's order), patients whose integration succeeded (status 0) and whose
features are finite and positive (they enter on a log scale). Columns:

=================  ========================================================  =====
``L_max``          peak serum IL-6, ``il6_peak_pg_ml``                       pg/mL
``C_max``          CAR T peak, ``cart_peak_cells``                           cells
``A_fold``         CAR T expansion: peak CAR T / dose,                       fold
                   ``cart_peak_cells / dose_cells``
``A_auc28``        CAR T exposure to day 28 per infused cell,                days
                   ``cart_auc_d28_cells_d / dose_cells``
``T0``             tumour at infusion, ``tumour0_cells``                      cells
early columns      ``il6_d1_pg_ml`` .. ``il6_d3_pg_ml`` (pg/mL) and
                   ``cart_d1_fold`` .. ``cart_d3_fold`` = ``cart_dN_cells /
                   dose_cells``: what a clinician can measure on days 1-3
                   after infusion
=================  ========================================================  =====

Early CAR T counts enter over the dose, as A_C does. A model on early levels
fitted on a fixed-dose arm holds for that arm's policy only: under dose
adaptation the dose was chosen from the same risk factors (tumour burden, IL-6
clearance), and high-risk patients, given low doses, show low early levels.
Measured on ``cart2``: the early model fitted on the default scenario's fixed
arm (20,000 patients) has test AUC 0.84 there, and 0.85, 0.59 and 0.39 on the
fixed, adaptive and oracle arms of an independent run (seed 7, 10,000
patients): the oracle arm ranked inversely, as the adaptive arm was on
``cart``; fitted on their own arms, the adaptive and oracle early models reach
test AUC 0.81 each. Fit it on the arm it is to be used for.

Why these: peak IL-6 is among the strongest correlates of severe CRS (Teachey
et al. 2016, Cancer Discov 6:664) and CAR T expansion (Cmax) rises with CRS
grade (Mueller et al. 2018, Clin Cancer Res).

Early measurements (:func:`measured_log10`): a clinician measures the early
levels with assay error, modelled as log10(measured) = log10(true) + sd eps,
eps standard normal, independent per patient and column (default sd 0.1 log10,
a factor 1.26, about 23% CV; an assumption: immunoassays and CAR T counts by
flow cytometry or qPCR have errors of this order, unverified). Without it a
model on noise-free simulated kinetics reads fine differences between days 1,
2 and 3 that no assay resolves (measured on ``cart2``, default scenario's fixed
arm, 20,000 patients: coefficients up to 88 in size and test AUC 0.90 at sd 0,
at most 4.6 and AUC 0.84 at 0.1; on ``cart``: +-1800 and 0.84 at sd 0, order 1
and 0.80 at 0.1).

Deterministic pseudo-random numbers per patient (:func:`hash_uniform`): the
SplitMix64 finaliser (Steele, Lea & Flood 2014, OOPSLA) of the patient id mixed
with a seed and a stream number, so a patient's split, grading noise and assay
errors depend on (seed, stream, patient_id) only: not on row order, arm or run
size.
"""
import numpy as np
from scipy.special import ndtri

from pipeline.outcomes import EARLY_DAYS

EXPANSIONS = {
    "fold": ("A_fold", "CAR T peak / dose (fold)"),
    "auc28": ("A_auc28", "CAR T AUC0-28 / dose (days)"),
}
_EARLY_IL6 = {f"il6_d{day}_pg_ml": f"il6_d{day}_pg_ml" for day in EARLY_DAYS}
_EARLY_CART = {f"cart_d{day}_fold": f"cart_d{day}_cells" for day in EARLY_DAYS}
EARLY_COLUMNS = (*_EARLY_IL6, *_EARLY_CART)
# risk-frame column -> its value from the patients dataset
_DERIVED = {
    "L_max": lambda p: p["il6_peak_pg_ml"],
    "C_max": lambda p: p["cart_peak_cells"],
    "A_fold": lambda p: p["cart_peak_cells"] / p["dose_cells"],
    "A_auc28": lambda p: p["cart_auc_d28_cells_d"] / p["dose_cells"],
    "T0": lambda p: p["tumour0_cells"],
    **{name: (lambda p, c=column: p[c]) for name, column in _EARLY_IL6.items()},
    **{name: (lambda p, c=column: p[c] / p["dose_cells"]) for name, column in _EARLY_CART.items()},
}
FEATURES = tuple(_DERIVED)
SOURCE_COLUMNS = ("patient_id", "arm", "status", "il6_peak_pg_ml", "cart_peak_cells",
                  "dose_cells", "cart_auc_d28_cells_d", "tumour0_cells", *_EARLY_IL6.values(),
                  *_EARLY_CART.values())

# stream numbers of hash_uniform; early column j uses ASSAY_STREAM + j
SPLIT_STREAM, GRADING_STREAM, ASSAY_STREAM = 0, 1, 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x):
    """SplitMix64 finaliser of uint64 values (a bijection of 64-bit integers)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_uniform(patient_ids, seed, stream):
    """One uniform number in (0, 1) per patient id, a function of (seed, stream,
    id) only: u = (top 53 bits of h + 1/2) / 2^53 with
    h = splitmix64(id XOR splitmix64(splitmix64(seed) XOR stream))."""
    key = _splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) ^ np.uint64(stream))
    h = _splitmix64(np.asarray(patient_ids).astype(np.uint64) ^ key)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53


def is_test(patient_ids, seed, test_fraction):
    """True for the patients of the held-out test cohort: hash_uniform < test_fraction."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must lie in (0, 1), got {test_fraction}")
    return hash_uniform(patient_ids, seed, SPLIT_STREAM) < test_fraction


def measured_log10(frame, column, sd, seed):
    """log10 of an early column as measured: log10(value) + sd eps (module docstring)."""
    if column not in EARLY_COLUMNS:
        raise ValueError(f"{column!r} is not an early measurement; those are {EARLY_COLUMNS}")
    value = np.log10(frame[column].to_numpy(dtype=float))
    if sd == 0:
        return value
    stream = ASSAY_STREAM + EARLY_COLUMNS.index(column)
    return value + sd * ndtri(hash_uniform(frame["patient_id"].to_numpy(), seed, stream))


def reference_arm(patients):
    """The first arm in the frame's order (pipeline.query orders by the manifest)."""
    if patients.empty:
        raise ValueError("the patients dataset is empty")
    return str(patients["arm"].iloc[0])


def risk_frame(patients, arm=None):
    """The features of one arm (default :func:`reference_arm`): a DataFrame with
    ``patient_id``, ``arm``, ``dose_cells`` (the dose given, which the model
    records the range of) and :data:`FEATURES`, and the number of the arm's
    patients left out (failed integration or a non-finite or non-positive
    feature)."""
    missing = [c for c in SOURCE_COLUMNS if c not in patients.columns]
    if missing:
        raise ValueError(f"the patients dataset lacks columns {missing} (a run made before "
                         f"the risk features were added?)")
    arm = reference_arm(patients) if arm is None else str(arm)
    rows = patients[patients["arm"] == arm]
    if rows.empty:
        raise ValueError(f"no patients in arm {arm!r}; arms are "
                         f"{list(dict.fromkeys(patients['arm']))}")
    frame = rows[["patient_id", "arm", "dose_cells"]].copy()
    for name, make in _DERIVED.items():
        frame[name] = make(rows).astype(float)
    values = frame[list(FEATURES)].to_numpy()
    ok = (rows["status"].to_numpy() == 0) & np.all(np.isfinite(values) & (values > 0), axis=1)
    return frame[ok].reset_index(drop=True), int(np.count_nonzero(~ok))
