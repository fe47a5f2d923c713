"""Failing patients are reported in ``status``, never raise, never disturb the
others, and have NaN features."""
import numpy as np
import pytest

from kernels import features as F
from kernels.dopri5 import Doses, solve
from kernels.status import MAX_STEPS, NAMES, NON_FINITE, OK, STEP_UNDERFLOW

T1 = 365.0
MAX_STEPS_LIMIT = 20_000       # good patients need ~1,000 at rtol 1e-6
FEATURES = (F.maximum("I"), F.argmax("I"), F.auc({"E": 1, "M": 1, "X": 1}), F.minimum("T"),
            F.value_at("T", 28.0), F.cross_down("T", 1.0))
SAVE_AT = (0.0, 4.0, 10.0, 100.0, T1)
DOSE_TIMES = np.array([0.0, 5.0])


def bad_patients(cart):
    """(name, y0 before the doses, params, dose amounts, expected status) for
    patients that must fail, each for a stated reason."""
    y_typ = cart.typical_initial_state(E=0.0)
    T0 = y_typ[cart.state_index("T")]
    dose = np.array([0.1, 0.05])

    def y(**overrides):
        return cart.typical_initial_state(E=0.0, **overrides)

    p = cart.typical_parameters
    return [
        ("NaN parameter", y_typ, p(k=np.nan), dose, NON_FINITE),
        ("infinite tumour", y(T=np.inf), p(), dose, NON_FINITE),
        ("NaN IL-6", y(I=np.nan), p(), dose, NON_FINITE),
        # stim = T / (Ks + T) divides by zero at t0: a non-finite derivative
        ("singular derivative at t0", y_typ, p(Ks=-T0), dose, NON_FINITE),
        # a NaN dose at day 5 makes the state non-finite at the restart
        ("NaN dose at day 5", y_typ, p(), np.array([0.1, np.nan]), NON_FINITE),
        # Ks + T passes through zero as the tumour falls from 10 to 5
        ("singularity at T = 5", y_typ, p(Ks=-5.0), dose, STEP_UNDERFLOW),
        # dT/dt = r T (1 + T): finite-time blow-up
        ("negative capacity", y_typ, p(Tmax=-1.0), dose, STEP_UNDERFLOW),
        # T = T0 exp(5 t) overflows double precision near day 140
        ("overflowing growth", y_typ, p(r=5.0, Tmax=1e300), dose, STEP_UNDERFLOW),
        # IL-6 = exp(50 t) overflows
        ("negative IL-6 clearance", y_typ, p(c=-50.0), dose, STEP_UNDERFLOW),
        # E grows as exp(20 t) and kills the tumour with a rate k E: ever stiffer
        ("exploding effectors", y_typ, p(dE=-20.0), dose, MAX_STEPS),
    ]


def run(cart, y0, params, amounts, **options):
    return solve(cart, y0, params, 0.0, T1, rtol=1e-6, atol=1e-9, save_at=SAVE_AT,
                 doses=Doses(DOSE_TIMES, np.array(["E", "E"]), amounts), features=FEATURES,
                 max_steps=MAX_STEPS_LIMIT, **options)


@pytest.fixture(scope="module")
def mixed(cart, cart_patients):
    """40 good patients and the bad ones interleaved (first, last and between);
    the good ones solved again alone."""
    good = cart_patients(40, 31)
    good_amounts = np.column_stack([np.full(len(good), 0.1), np.linspace(0.0, 0.1, len(good))])
    bad = bad_patients(cart)
    positions = np.linspace(0, len(good) + len(bad) - 1, len(bad)).astype(int)
    n = len(good) + len(bad)
    is_bad = np.zeros(n, bool)
    is_bad[positions] = True
    y0 = np.empty((n, 5))
    params = np.empty((n, good.params.shape[1]))
    amounts = np.empty((n, 2))
    y0[~is_bad], params[~is_bad], amounts[~is_bad] = good.y0, good.params, good_amounts
    for pos, (_, yb, pb, ab, _) in zip(positions, bad):
        y0[pos], params[pos], amounts[pos] = yb, pb, ab
    together = run(cart, y0, params, amounts)
    alone = run(cart, good.y0, good.params, good_amounts)
    return dict(bad=bad, positions=positions, is_bad=is_bad, together=together, alone=alone)


def test_each_failure_has_its_status(mixed):
    """Each bad patient gets the status its failure calls for (NON_FINITE for
    non-finite inputs, doses or initial derivatives; STEP_UNDERFLOW for a
    blow-up or a singularity; MAX_STEPS for an ever stiffer patient); solve
    does not raise."""
    status = mixed["together"].status
    got = {name: NAMES[int(status[pos])] for pos, (name, *_) in zip(mixed["positions"], mixed["bad"])}
    want = {name: NAMES[expected] for name, *_, expected in mixed["bad"]}
    assert got == want


def test_good_patients_unaffected_bitwise(mixed):
    """The good patients' features, saved states, statuses and step counts are
    bitwise identical to solving them without the bad patients."""
    together, alone, good = mixed["together"], mixed["alone"], ~mixed["is_bad"]
    assert np.all(alone.status == OK)
    for field in ("features", "saved", "status", "n_steps"):
        a = np.ascontiguousarray(getattr(together, field)[good])
        b = np.ascontiguousarray(getattr(alone, field))
        assert a.tobytes() == b.tobytes(), field


def test_failed_patients_have_nan_features(mixed):
    """Every feature of a failed patient is NaN, and so is its state saved at t1
    (never reached); patients that fail at the start have nothing saved."""
    sol, pos = mixed["together"], mixed["positions"]
    assert np.all(sol.status[pos] != OK)
    assert np.all(np.isnan(sol.features[pos]))
    assert np.all(np.isnan(sol.saved[pos, -1, :]))
    at_start = [p for p, b in zip(pos, mixed["bad"]) if b[0] in
                ("NaN parameter", "infinite tumour", "NaN IL-6")]
    assert np.all(np.isnan(sol.saved[at_start]))
    assert np.all(sol.n_steps[at_start] == 0)


def test_failed_patients_keep_states_saved_before_failure(cart, mixed):
    """A patient failing at day 5 (NaN dose) keeps its states saved before day 5,
    bitwise equal to those of the same patient given a finite dose; later ones
    are NaN."""
    sol, pos = mixed["together"], mixed["positions"]
    k = [j for j, b in enumerate(mixed["bad"]) if b[0] == "NaN dose at day 5"][0]
    _, y0, params, _, _ = mixed["bad"][k]
    saved = sol.saved[pos[k]]
    finite = run(cart, y0[None], params[None], np.array([[0.1, 0.05]]))
    assert finite.status[0] == OK
    before = np.array(SAVE_AT) < 5.0
    assert saved[before].tobytes() == finite.saved[0, before].tobytes()
    assert np.all(np.isnan(saved[~before]))


def test_tiny_max_steps(cart, cart_patients):
    """max_steps below what a patient needs gives MAX_STEPS (and NaN features);
    patients that finish within the limit are OK with n_steps <= max_steps."""
    cohort = cart_patients(30, 41)
    full = solve(cart, cohort.y0, cohort.params, 0.0, T1, doses=cohort.doses, features=FEATURES)
    assert np.all(full.status == OK)
    tiny = solve(cart, cohort.y0, cohort.params, 0.0, T1, doses=cohort.doses, features=FEATURES,
                 max_steps=5)
    assert np.all(tiny.status == MAX_STEPS)
    assert np.all(np.isnan(tiny.features))
    assert np.all(tiny.n_steps <= 5)

    limit = int(np.median(full.n_steps))
    mid = solve(cart, cohort.y0, cohort.params, 0.0, T1, doses=cohort.doses, features=FEATURES,
                max_steps=limit)
    assert np.all(mid.status[full.n_steps > limit] == MAX_STEPS)
    ok = mid.status == OK
    assert ok.any() and (~ok).any()
    assert np.all(mid.n_steps[ok] <= limit)
    assert mid.features[ok].tobytes() == full.features[ok].tobytes()
    assert np.all(np.isnan(mid.features[~ok]))
