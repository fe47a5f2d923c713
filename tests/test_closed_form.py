"""The kernel against closed-form solutions, and dose events against a
piecewise scipy solution.

Closed forms (kernels/models/predator_prey.py): exponential growth without
effectors, the linear IL-6 ODE under a constant drive, the exposure identity
T(t)/T0 = exp(-k int_0^t E) when r = 0, the efficacy condition k E0 > r, and a
two-compartment chain with a known peak time. Closed-form comparisons run the
kernel at rtol 1e-8 and ask for 1e-6 relative (observed errors ~4e-8).
"""

import numpy as np
import pytest

from kernels import features as F
from kernels.dopri5 import Doses, solve
from kernels.models import predator_prey as pp_module
from scipy_reference import cart_rhs, relative_error, solve_with_doses

RTOL, ATOL = 1e-8, 1e-12
CLOSED_FORM_TOL = 1e-6


def predator_prey_params(n, rng, r=None, k=None, b=None, d=None):
    """[n, 4] parameters (r, k, b, d), random around the model's typical values
    unless given."""
    columns = []
    for value, typical in ((r, 0.03), (k, 0.15), (b, 0.05), (d, 0.2)):
        columns.append(np.broadcast_to(value, (n,)) if value is not None
                       else typical * np.exp(0.3 * rng.standard_normal(n)))
    return np.column_stack(columns).astype(float)


# ------------------------------------------------------------ exponential growth

def test_exponential_growth(predator_prey):
    """E0 = 0: T(t) = T0 exp(r t), through value_at, save_at, auc, max/argmax,
    min/argmin and cross_up (with NaN where the level is never reached)."""
    rng = np.random.default_rng(1)
    n, t1, level = 40, 60.0, 100.0
    r = rng.uniform(0.01, 0.3, n)
    T0 = 10.0 * np.exp(rng.standard_normal(n))
    params = predator_prey_params(n, rng, r=r)
    y0 = np.column_stack([T0, np.zeros(n)])
    times = np.array([0.0, 1.0, 12.34, 30.25, 59.9, t1])
    feats = [F.value_at("T", t) for t in times] + [
        F.auc("T"), F.maximum("T"), F.argmax("T"), F.minimum("T"), F.argmin("T"),
        F.cross_up("T", level)]
    sol = solve(predator_prey, y0, params, 0.0, t1, rtol=RTOL, atol=ATOL, save_at=times,
                features=feats)
    assert np.all(sol.status == 0)

    exact = T0[:, None] * np.exp(r[:, None] * times[None, :])
    assert np.all(relative_error(sol.saved[:, :, 0], exact) <= CLOSED_FORM_TOL)
    assert np.all(sol.saved[:, :, 1] == 0.0)
    assert np.all(relative_error(sol.features[:, :6], exact) <= CLOSED_FORM_TOL)
    auc = T0 * np.expm1(r * t1) / r
    assert np.all(relative_error(sol.features[:, 6], auc) <= CLOSED_FORM_TOL)
    assert np.all(relative_error(sol.features[:, 7], exact[:, -1]) <= CLOSED_FORM_TOL)
    assert np.all(sol.features[:, 8] == t1)
    assert np.all(sol.features[:, 9] == T0)
    assert np.all(sol.features[:, 10] == 0.0)

    crossing = np.maximum(np.log(level / T0) / r, 0.0)
    crossing[crossing > t1] = np.nan
    assert 0 < np.isnan(crossing).sum() < n, "the sample should cross and not cross"
    np.testing.assert_array_equal(np.isnan(sol.features[:, 11]), np.isnan(crossing))
    ok = ~np.isnan(crossing)
    assert np.all(relative_error(sol.features[ok, 11], crossing[ok], 1.0) <= CLOSED_FORM_TOL)


def test_exponential_decay_cross_down(predator_prey):
    """r = b = d = 0: E stays E0 and T(t) = T0 exp(-k E0 t); cross_down of a
    level crosses at ln(T0/level)/(k E0)."""
    rng = np.random.default_rng(2)
    n, t1, level = 20, 100.0, 1.0
    k, E0 = 0.15 * np.exp(0.3 * rng.standard_normal(n)), rng.uniform(0.5, 1.5, n)
    T0 = 10.0 * np.exp(0.5 * rng.standard_normal(n))
    params = predator_prey_params(n, rng, r=0.0, k=k, b=0.0, d=0.0)
    sol = solve(predator_prey, np.column_stack([T0, E0]), params, 0.0, t1, rtol=RTOL,
                atol=ATOL, features=[F.cross_down("T", level), F.value_at("T", 17.0)])
    rate = k * E0
    crossing = np.log(T0 / level) / rate
    assert np.all(crossing < t1)
    assert np.all(relative_error(sol.features[:, 0], crossing, 1.0) <= CLOSED_FORM_TOL)
    assert np.all(relative_error(sol.features[:, 1], T0 * np.exp(-rate * 17.0)) <= CLOSED_FORM_TOL)


# ------------------------------------------------------------ linear IL-6 ODE

def test_cytokine_constant_drive(predator_prey_cytokine):
    """b = d = 0 and r = k E0 keep T and E exactly constant, so IL-6 solves
    dI/dt = D - gamma I with D = sigma k E0 T0: I(t) matches
    ``cytokine_constant_drive`` (itself checked against the formula) at save_at
    and value_at times."""
    model = predator_prey_cytokine
    rng = np.random.default_rng(3)
    n, t1 = 25, 10.0
    k = 0.15 * np.exp(0.5 * rng.standard_normal(n))
    E0 = rng.uniform(0.05, 2.0, n)
    T0 = 10.0 * np.exp(rng.standard_normal(n))
    sigma, gamma = 200.0 * np.exp(0.5 * rng.standard_normal(n)), rng.uniform(0.5, 4.0, n)
    I0 = rng.uniform(0.0, 50.0, n)
    params = np.column_stack([k * E0, k, np.zeros(n), np.zeros(n), sigma, gamma])
    times = np.array([0.0, 0.1, 0.5, 1.3, 2.0, 4.4, t1])
    sol = solve(model, np.column_stack([T0, E0, I0]), params, 0.0, t1, rtol=RTOL, atol=ATOL,
                save_at=times, features=[F.value_at("I", t) for t in times])
    assert np.all(sol.status == 0)
    # T and E do not move at all: their derivatives are exactly zero
    np.testing.assert_array_equal(sol.saved[:, :, 0], np.repeat(T0[:, None], times.size, 1))
    np.testing.assert_array_equal(sol.saved[:, :, 1], np.repeat(E0[:, None], times.size, 1))

    drive = sigma * k * E0 * T0
    exact = np.array([[pp_module.cytokine_constant_drive(I0[i], drive[i], gamma[i], t)
                       for t in times] for i in range(n)])
    formula = drive[:, None] / gamma[:, None] + (I0 - drive / gamma)[:, None] * np.exp(
        -gamma[:, None] * times[None, :])
    np.testing.assert_allclose(exact, formula, rtol=1e-14)
    assert np.all(relative_error(sol.saved[:, :, 2], exact) <= CLOSED_FORM_TOL)
    assert np.all(relative_error(sol.features, exact) <= CLOSED_FORM_TOL)


# ------------------------------------------------------------ exposure identity

@pytest.mark.parametrize("b_T0_over_d", [(0.0, 0.8), (1.5, 3.0)], ids=["contracting", "expanding"])
def test_surviving_fraction_equals_exp_minus_k_auc(predator_prey, b_T0_over_d):
    """r = 0: T(t)/T0 = exp(-k int_0^t E) whatever E does: E contracting from
    the start (b T0 < d) or first expanding on antigen, as CAR T do (b T0 > d),
    then contracting once T < d / b. Checked at two interior times (auc with
    ``until``, value_at) and at t1 = 200 days, where E has decayed (T(inf))."""
    rng = np.random.default_rng(4)
    n, t1 = 30, 200.0
    T0 = 10.0 * np.exp(0.5 * rng.standard_normal(n))
    E0 = rng.uniform(0.05, 1.0, n)
    k = 0.15 * np.exp(0.3 * rng.standard_normal(n))
    d = rng.uniform(0.15, 0.4, n)
    b = rng.uniform(*b_T0_over_d, n) * d / T0
    params = np.column_stack([np.zeros(n), k, b, d])
    times = (3.7, 37.25)
    feats = [F.value_at("T", t) for t in times] + [F.value_at("T", t1)] + [
        F.auc("E", until=t) for t in times] + [F.auc("E"), F.maximum("E")]
    sol = solve(predator_prey, np.column_stack([T0, E0]), params, 0.0, t1, rtol=RTOL,
                atol=ATOL, features=feats, save_at=[t1])
    assert np.all(sol.status == 0)
    assert np.all(sol.saved[:, 0, 1] < 1e-6 * E0), "E has not decayed by t1"
    expands = sol.features[:, 6] > E0
    assert np.all(expands) if b_T0_over_d[0] > 1 else not np.any(expands)
    for j in range(3):
        fraction = sol.features[:, j] / T0
        expected = np.array([pp_module.surviving_fraction(k[i], sol.features[i, 3 + j])
                             for i in range(n)])
        np.testing.assert_allclose(expected, np.exp(-k * sol.features[:, 3 + j]), rtol=1e-15)
        assert np.all(relative_error(fraction, expected) <= CLOSED_FORM_TOL), j
    assert np.all(sol.features[:, 5] > sol.features[:, 4]), "AUC must grow with time"


# ------------------------------------------------------------ efficacy condition

@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 2.0])
def test_efficacy_condition(predator_prey, factor):
    """k E0 = factor * r: the tumour falls at first iff ``efficacy_condition``
    (k E0 > r) holds, seen in T at 0.01 days (within which E moves by a few
    percent, less than the 20% margin of the factors)."""
    rng = np.random.default_rng(5)
    n = 20
    r = rng.uniform(0.05, 0.5, n)
    k = 0.15 * np.exp(0.3 * rng.standard_normal(n))
    E0 = factor * r / k
    T0 = 10.0 * np.exp(rng.standard_normal(n))
    params = predator_prey_params(n, rng, r=r, k=k)
    sol = solve(predator_prey, np.column_stack([T0, E0]), params, 0.0, 0.01, rtol=RTOL,
                atol=ATOL, features=[F.value_at("T", 0.01)], save_at=[0.01])
    assert np.all(np.abs(sol.saved[:, 0, 1] / E0 - 1) < 0.1)
    falls = sol.features[:, 0] < T0
    expected = np.array([pp_module.efficacy_condition(k[i], E0[i], r[i]) for i in range(n)])
    assert np.all(expected == (factor > 1.0))
    np.testing.assert_array_equal(falls, expected)


# ------------------------------------------------------------ doses

DOSE_TIMES = np.array([0.0, 3.3, 3.3, 7.1])
DOSE_STATES = np.array(["E", "E", "M", "E"])


@pytest.fixture(scope="module")
def dosed(cart, cart_patients):
    """20 cart patients dosed at days 0, 3.3 (into E and into M) and 7.1 with
    per-patient amounts, the kernel at rtol 1e-8, and a piecewise DOP853
    reference (restarted at each dose time with the amounts added)."""
    cohort = cart_patients(20, 7)
    rng = np.random.default_rng(8)
    amounts = rng.uniform(0.02, 0.3, (len(cohort), DOSE_TIMES.size))
    save_at = np.array([0.0, 1.0, 3.3, 5.0, 7.1, 10.0, 28.0, 60.0])
    landmarks = (0.0, 3.3, 7.1)
    feats = [F.value_at(s, t) for t in landmarks for s in ("E", "M", "T")]
    sol = solve(cart, cohort.y0, cohort.params, 0.0, 60.0, rtol=RTOL, atol=ATOL,
                save_at=save_at, doses=Doses(DOSE_TIMES, DOSE_STATES, amounts), features=feats)
    states = [cart.state_index(s) for s in DOSE_STATES]
    references = [solve_with_doses(cart_rhs(cohort.params[i]), cohort.y0[i], 0.0, 60.0,
                                   DOSE_TIMES, states, amounts[i])
                  for i in range(len(cohort))]
    return dict(cart=cart, cohort=cohort, amounts=amounts, save_at=save_at, landmarks=landmarks,
                sol=sol, references=references)


def test_doses_match_piecewise_reference(dosed):
    """Doses at 0, 3.3 (two states) and 7.1 days: every saved state, including
    those at the dose times (after the dose), within 1e-6 relative of the
    piecewise scipy solution (floor 1e-3, i.e. 1e6 cells or 1e-3 pg/mL)."""
    sol, refs = dosed["sol"], dosed["references"]
    assert np.all(sol.status == 0)
    expected = np.array([[ref(t, "post") for t in dosed["save_at"]] for ref in refs])
    errors = relative_error(sol.saved, expected, 1e-3)
    assert np.all(errors <= CLOSED_FORM_TOL), f"worst {errors.max():.3g} at {np.unravel_index(errors.argmax(), errors.shape)}"


def test_value_at_a_dose_time_is_post_dose(dosed):
    """value_at E, M and T at the dose times 0, 3.3 and 7.1 is the state after
    the dose: it matches the reference's post-dose state, and E and M differ from
    the pre-dose state by the amounts given."""
    sol, refs, cart = dosed["sol"], dosed["references"], dosed["cart"]
    names = ("E", "M", "T")
    for a, t in enumerate(dosed["landmarks"]):
        post = np.array([ref(t, "post") for ref in refs])
        values = sol.features[:, 3 * a: 3 * a + 3]
        expected = post[:, [cart.state_index(s) for s in names]]
        assert np.all(relative_error(values, expected, 1e-3) <= CLOSED_FORM_TOL), t
        if t > 0:
            pre = np.array([ref(t, "pre") for ref in refs])
            given = sum(dosed["amounts"][:, d] for d in range(DOSE_TIMES.size)
                        if DOSE_TIMES[d] == t and DOSE_STATES[d] == "E")
            jump = values[:, 0] - pre[:, cart.state_index("E")]
            np.testing.assert_allclose(jump, given, rtol=1e-5)


def test_save_at_a_dose_time_is_post_dose(cart, cart_patients):
    """save_at just before (1e-9 days) and exactly at a dose time: the state
    jumps by exactly the amount (to the interpolation error), in the dosed state
    only; at t0 the saved state already holds the t0 dose."""
    cohort = cart_patients(10, 9)
    amounts = np.column_stack([np.full(10, 0.1), np.linspace(0.5, 2.0, 10)])
    doses = Doses(np.array([0.0, 5.5]), np.array(["E", "X"]), amounts)
    sol = solve(cart, cohort.y0, cohort.params, 0.0, 20.0, rtol=RTOL, atol=ATOL,
                save_at=[0.0, 5.5 - 1e-9, 5.5], doses=doses)
    assert np.all(sol.status == 0)
    e, x = cart.state_index("E"), cart.state_index("X")
    np.testing.assert_array_equal(sol.saved[:, 0, :], cohort.y0_dosed)
    jump = sol.saved[:, 2, :] - sol.saved[:, 1, :]
    np.testing.assert_allclose(jump[:, x], amounts[:, 1], rtol=1e-6)
    others = np.delete(jump, x, axis=1)
    scale = np.abs(np.delete(sol.saved[:, 2, :], x, axis=1)) + 1.0
    assert np.all(np.abs(others) <= 1e-6 * scale), "only X may jump"
    assert np.all(np.abs(jump[:, e]) < 1e-6)


def test_two_doses_at_one_time_add_up(cart, cart_patients):
    """Two doses into E at the same time act as one dose of their sum."""
    cohort = cart_patients(8, 10)
    a, b = np.full(8, 0.05), np.linspace(0.01, 0.2, 8)
    two = Doses(np.array([0.0, 2.0, 2.0]), np.array(["E", "E", "E"]),
                np.column_stack([np.full(8, 0.1), a, b]))
    one = Doses(np.array([0.0, 2.0]), np.array(["E", "E"]), np.column_stack([np.full(8, 0.1), a + b]))
    feats = [F.value_at("E", 2.0), F.maximum("I"), F.value_at("T", 30.0)]
    s2 = solve(cart, cohort.y0, cohort.params, 0.0, 30.0, rtol=RTOL, atol=ATOL, doses=two, features=feats)
    s1 = solve(cart, cohort.y0, cohort.params, 0.0, 30.0, rtol=RTOL, atol=ATOL, doses=one, features=feats)
    np.testing.assert_allclose(s2.features, s1.features, rtol=1e-12)


# ------------------------------------------------------------ peak time

def chain(n, rng):
    """predator_prey with IL-6, r = b = d = 0 and I0 = 0: T decays as
    exp(-ka t) with ka = k E0 and feeds I, cleared at gamma, a linear
    two-compartment chain with I(t) = D (exp(-ka t) - exp(-gamma t)) / (gamma - ka),
    D = sigma ka T0, peaking at t* = ln(gamma/ka)/(gamma - ka)."""
    k = 0.15 * np.exp(0.3 * rng.standard_normal(n))
    E0 = rng.uniform(0.5, 5.0, n)
    gamma = 2.0 * np.exp(0.3 * rng.standard_normal(n))
    sigma = 200.0 * np.exp(0.5 * rng.standard_normal(n))
    T0 = 10.0 * np.exp(rng.standard_normal(n))
    params = np.column_stack([np.zeros(n), k, np.zeros(n), np.zeros(n), sigma, gamma])
    y0 = np.column_stack([T0, E0, np.zeros(n)])
    ka = k * E0
    t_peak = np.log(gamma / ka) / (gamma - ka)
    peak = sigma * ka * T0 / (gamma - ka) * (np.exp(-ka * t_peak) - np.exp(-gamma * t_peak))
    return y0, params, t_peak, peak


def test_peak_time_to_1e4_days_on_coarse_steps(predator_prey_cytokine):
    """The two-compartment chain's peak time t* (0.5..2.6 days) to 1e-4 days at
    kernel rtol 1e-6, each patient solved over [0, 2 t*], where its steps average
    0.05..0.2 days (initial steps included), i.e. 500x-2000x coarser than 1e-4
    days: the peak is refined on the interpolant, not read off the step grid.
    (See the report for the errors observed at coarser tolerances.)"""
    rng = np.random.default_rng(11)
    n = 100
    y0, params, t_peak, peak = chain(n, rng)
    found, mean_step = np.empty((n, 2)), np.empty(n)
    for i in range(n):
        t1 = 2.0 * t_peak[i]
        sol = solve(predator_prey_cytokine, y0[i:i + 1], params[i:i + 1], 0.0, t1, rtol=1e-6,
                    atol=1e-9, features=[F.argmax("I"), F.maximum("I")])
        assert sol.status[0] == 0
        found[i] = sol.features[0]
        mean_step[i] = t1 / sol.n_steps[0]
    errors = np.abs(found[:, 0] - t_peak)
    assert np.all(relative_error(found[:, 1], peak) <= 1e-6)
    assert np.all(mean_step >= 0.04), f"mean steps {mean_step.min():.3g}..{mean_step.max():.3g} days"
    assert np.all(errors <= 1e-4), f"worst {errors.max():.3g} days; mean step {mean_step.mean():.3g}"


def test_peak_time_independent_of_step_grid(predator_prey_cytokine):
    """The same chain with the step grid changed by doses of zero amount (each
    forces a step to land on it and restarts the controller): the peak time moves
    by less than 1e-4 days, although the steps are ~0.1-0.4 days."""
    rng = np.random.default_rng(12)
    n = 50
    y0, params, t_peak, _ = chain(n, rng)
    t1 = 8.0
    plain = solve(predator_prey_cytokine, y0, params, 0.0, t1, rtol=1e-6, atol=1e-9,
                  features=[F.argmax("I")])
    zero = Doses(np.array([0.173, 0.61, 1.37, 2.05]), np.array(["I"] * 4), np.zeros((n, 4)))
    moved = solve(predator_prey_cytokine, y0, params, 0.0, t1, rtol=1e-6, atol=1e-9,
                  features=[F.argmax("I")], doses=zero)
    assert np.all(moved.n_steps > plain.n_steps), "the zero doses should add steps"
    assert np.all(np.abs(plain.features[:, 0] - moved.features[:, 0]) <= 1e-4)
    assert np.all(np.abs(moved.features[:, 0] - t_peak) <= 1e-4)
