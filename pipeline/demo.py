"""The demo cohort: the reference ``cart`` model, one dose, six in-loop features.

This is the problem ``cartcohort demo`` runs and ``benchmarks/kernel.py`` times
(DESIGN.md section 3): virtual patients whose parameters are log-normal around
the model's typical values (each parameter's own ``sd_log``), a baseline tumour
burden T0 log-normal around 10 (1e10 cells, sd of log 1.0), a single CAR T
infusion of 0.1 (1e8 cells) into the effector compartment E at day 0, integrated
for 365 days at rtol 1e-6, atol 1e-9.

It is a fixed stand-in until the scenario configuration and cohort modules
(``pipeline/config.py``, ``pipeline/cohort.py``) exist; those will replace it.
"""
from dataclasses import dataclass
import time

import numpy as np

from kernels import features as kf
from kernels.dopri5 import Doses, solve
from kernels.models import get_model
from kernels.status import NAMES

DEFAULT_SEED = 20240601
T_END = 365.0            # days
RTOL, ATOL = 1e-6, 1e-9
DOSE = 0.1               # 1e9 cells: 1e8 CAR T cells
T0_MEDIAN, T0_SD_LOG = 10.0, 1.0
CELLS_PER_UNIT = 1e9     # the cart model counts cells in units of 1e9

# (column name, unit, feature) -- computed inside the step loop by the kernel
FEATURES = (
    ("peak_il6", "pg/mL", kf.maximum("I")),
    ("t_peak_il6", "day", kf.argmax("I")),
    ("car_t_auc", "1e9 cells day", kf.auc({"E": 1.0, "M": 1.0, "X": 1.0})),
    ("tumour_min", "1e9 cells", kf.minimum("T")),
    ("tumour_day28", "1e9 cells", kf.value_at("T", 28.0)),
    ("tumour_day365", "1e9 cells", kf.value_at("T", T_END)),
)
FEATURE_NAMES = tuple(name for name, _, _ in FEATURES)


@dataclass(frozen=True)
class CohortProblem:
    """Everything ``solve`` needs for one demo cohort."""

    model: object
    y0: np.ndarray        # float[N, S], before the dose
    params: np.ndarray    # float[N, P]
    doses: Doses
    features: tuple       # kernels.features.Feature, in FEATURE_NAMES order
    t0: float = 0.0
    t1: float = T_END
    rtol: float = RTOL
    atol: float = ATOL

    @property
    def n_patients(self):
        return self.y0.shape[0]

    def solve(self, threads=None, start=0, stop=None):
        """Integrate patients [start, stop) with the batched kernel."""
        rows = slice(start, stop)
        doses = Doses(self.doses.times, self.doses.states, self.doses.amounts[rows])
        return solve(self.model, self.y0[rows], self.params[rows], self.t0, self.t1,
                     rtol=self.rtol, atol=self.atol, doses=doses, features=self.features,
                     threads=threads)


def sample_patients(model, n_patients, seed=DEFAULT_SEED):
    """Log-normal patients around the model's typical values.

    Returns ``(y0[N, S], params[N, P])``: parameter j is
    ``typical_j * exp(sd_log_j * z)``, T0 is ``10 * exp(1.0 * z)``, the other
    initial states are the model's typical ones (I0 = 5 pg/mL, no CAR T before
    the dose). All normals come from one ``(N, P + 1)`` draw, so patient i is the
    same whatever N: a small cohort is a prefix of a large one with the same seed.
    """
    if n_patients < 1:
        raise ValueError(f"need at least one patient, got {n_patients}")
    typical = model.typical_parameters()
    sd_log = np.array([p.sd_log for p in model.parameters])
    z = np.random.default_rng(seed).standard_normal((n_patients, typical.size + 1))
    params = typical * np.exp(sd_log * z[:, :-1])
    y0 = np.tile(model.typical_initial_state(), (n_patients, 1))
    y0[:, model.state_index("T")] = T0_MEDIAN * np.exp(T0_SD_LOG * z[:, -1])
    return y0, params


def cart_cohort(n_patients, seed=DEFAULT_SEED):
    """The demo problem for ``n_patients`` patients of the ``cart`` model."""
    model = get_model("cart")
    y0, params = sample_patients(model, n_patients, seed)
    doses = Doses(times=np.array([0.0]), states=np.array([model.state_index("E")]),
                  amounts=np.full((n_patients, 1), DOSE))
    return CohortProblem(model, y0, params, doses, tuple(f for _, _, f in FEATURES))


def run(problem, threads=None, piece=None, progress=None):
    """Solve the cohort, in pieces of ``piece`` patients when given, calling
    ``progress(done, total, seconds)`` after each. Returns (features, status,
    n_steps, seconds of integration)."""
    n = problem.n_patients
    piece = n if piece is None else max(1, int(piece))
    feats = np.empty((n, len(FEATURES)))
    status = np.empty(n, np.int8)
    n_steps = np.empty(n, np.int64)
    seconds = 0.0
    for start in range(0, n, piece):
        stop = min(n, start + piece)
        begin = time.perf_counter()
        sol = problem.solve(threads=threads, start=start, stop=stop)
        seconds += time.perf_counter() - begin
        feats[start:stop], status[start:stop], n_steps[start:stop] = sol.features, sol.status, sol.n_steps
        if progress is not None:
            progress(stop, n, seconds)
    return feats, status, n_steps, seconds


def summarise(problem, feats, status):
    """Cohort summary as a dict (features of failed patients are NaN and left out)."""
    col = {name: feats[:, i] for i, name in enumerate(FEATURE_NAMES)}
    ok = status == 0
    t_index = problem.model.state_index("T")
    baseline = problem.y0[:, t_index]
    responders = ok & (col["tumour_day28"] < 0.01 * baseline)

    def pct(values, scale=1.0):
        values = values[ok] * scale
        if values.size == 0:
            return (np.nan, np.nan, np.nan)
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        return (p50, p10, p90)

    rows = (
        ("peak IL-6 (pg/mL)", pct(col["peak_il6"])),
        ("time of IL-6 peak (days)", pct(col["t_peak_il6"])),
        ("CAR T AUC, E+M+X (cells x days)", pct(col["car_t_auc"], CELLS_PER_UNIT)),
        ("tumour minimum (cells)", pct(col["tumour_min"], CELLS_PER_UNIT)),
        ("tumour at day 28 (cells)", pct(col["tumour_day28"], CELLS_PER_UNIT)),
        ("tumour at day 365 (cells)", pct(col["tumour_day365"], CELLS_PER_UNIT)),
    )
    counts = {name: int(np.count_nonzero(status == code)) for code, name in NAMES.items()}
    other = int(status.size - sum(counts.values()))
    if other:
        counts["other"] = other
    return {
        "patients": int(status.size),
        "status": counts,
        "rows": rows,
        "ok": int(ok.sum()),
        "responders": int(responders.sum()),
    }
