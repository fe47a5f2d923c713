"""Kernel events: parameter changes at a time or at the first crossing of a level.

References are independent: scipy's DOP853 dense solution of the model
equations transcribed in tests/scipy_reference.py, its first crossing found
with brentq on the dense output, the piecewise solution restarted there with
the changed parameter, and closed forms for exponential growth.
"""
import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from conftest import sample_cart_patients
from kernels import dopri5
from kernels import events as ke
from kernels import features as kf
from kernels.models import get_model
from scipy_reference import TIGHT, cart_rhs, predator_prey_rhs

HORIZON = 120.0
LEVEL = 500.0                 # pg/mL of IL-6
FACTOR = 0.2                  # the event scales IL-6 production s by this
RTOL, ATOL = 1e-9, 1e-12


@pytest.fixture(scope="module")
def cart():
    return get_model("cart")


@pytest.fixture(scope="module")
def cohort():
    return sample_cart_patients(48, seed=11)


def _solve(cart, cohort, events=(), threads=1):
    return dopri5.solve(cart, cohort.y0, cohort.params, 0.0, HORIZON, rtol=RTOL, atol=ATOL,
                        doses=cohort.doses, events=events, threads=threads,
                        features=[kf.maximum("I"), kf.value_at("T", HORIZON),
                                  kf.value_at("E", HORIZON)])


def _event(cart):
    return [ke.cross_up("I", LEVEL, "s", FACTOR)]


def _scipy_first_crossing(params, y0_dosed):
    """First time IL-6 reaches LEVEL on scipy's tight dense solution (brentq on
    the interpolant), or None."""
    sol = solve_ivp(cart_rhs(params), (0.0, HORIZON), y0_dosed, dense_output=True, **TIGHT)
    grid = np.linspace(0.0, HORIZON, 24001)
    g = sol.sol(grid)[4] - LEVEL
    above = np.flatnonzero(g >= 0.0)
    if above.size == 0:
        return None, sol
    i = above[0]
    return brentq(lambda t: sol.sol(t)[4] - LEVEL, grid[i - 1], grid[i], xtol=1e-13), sol


def test_crossing_fires_at_the_root_of_the_scipy_dense_solution(cart, cohort):
    fired = _solve(cart, cohort, _event(cart)).event_times[:, 0]
    crossers = 0
    for i in range(len(cohort)):
        root, _ = _scipy_first_crossing(cohort.params[i], cohort.y0_dosed[i])
        if root is None:
            assert np.isnan(fired[i]), i
            continue
        crossers += 1
        assert fired[i] == pytest.approx(root, rel=1e-6, abs=1e-6), i
    assert 5 <= crossers <= len(cohort) - 5      # both kinds of patient are tested


def test_only_the_patients_who_cross_change(cart, cohort):
    plain = _solve(cart, cohort)
    treated = _solve(cart, cohort, _event(cart))
    crossed = np.isfinite(treated.event_times[:, 0])
    assert np.array_equal(crossed, plain.features[:, 0] >= LEVEL)
    assert np.array_equal(treated.features[~crossed], plain.features[~crossed])
    assert np.array_equal(treated.n_steps[~crossed], plain.n_steps[~crossed])
    # the crossers' IL-6 peak is lower: production falls fivefold at the crossing
    assert np.all(treated.features[crossed, 0] < plain.features[crossed, 0])


def test_the_course_after_the_event_matches_scipy_restarted_at_the_crossing(cart, cohort):
    treated = _solve(cart, cohort, _event(cart))
    s = cart.parameter_index("s")
    checked = 0
    for i in np.flatnonzero(np.isfinite(treated.event_times[:, 0]))[:6]:
        root, before = _scipy_first_crossing(cohort.params[i], cohort.y0_dosed[i])
        changed = cohort.params[i].copy()
        changed[s] *= FACTOR
        after = solve_ivp(cart_rhs(changed), (root, HORIZON), before.sol(root), **TIGHT)
        T_end, E_end = after.y[0, -1], after.y[1, -1]
        assert treated.features[i, 1] == pytest.approx(T_end, rel=1e-5, abs=1e-9)
        assert treated.features[i, 2] == pytest.approx(E_end, rel=1e-5, abs=1e-9)
        checked += 1
    assert checked == 6


def test_a_timed_change_matches_the_closed_form():
    # predator-prey without effectors: T = T0 exp(r t); r -> r2 at day 10, k doubled at day 30
    model = get_model("predator_prey")
    y0 = np.array([[1.0, 0.0], [2.0, 0.0]])
    params = np.array([[0.05, 0.15, 0.05, 0.2], [0.02, 0.15, 0.05, 0.2]])
    events = [ke.at_time(10.0, "r", 0.01, "set"), ke.at_time(30.0, "k", 2.0)]
    sol = dopri5.solve(model, y0, params, 0.0, 50.0, rtol=1e-10, atol=1e-14, events=events,
                       save_at=[10.0, 50.0])
    expected = y0[:, 0] * np.exp(params[:, 0] * 10.0 + 0.01 * 40.0)
    assert np.allclose(sol.saved[:, 1, 0], expected, rtol=1e-8)
    assert np.allclose(sol.saved[:, 0, 0], y0[:, 0] * np.exp(params[:, 0] * 10.0), rtol=1e-8)
    assert np.array_equal(sol.event_times, [[10.0, 30.0], [10.0, 30.0]])


def test_a_level_reached_at_the_start_fires_at_the_start():
    model = get_model("predator_prey")
    events = [ke.cross_up("T", 5.0, "r", 0.0, "set"), ke.cross_down("T", 1.0, "r", 0.0, "set")]
    sol = dopri5.solve(model, [[6.0, 0.0], [2.0, 0.0]], [0.1, 0.15, 0.05, 0.2], 0.0, 20.0,
                       rtol=1e-10, atol=1e-14, events=events, save_at=[20.0])
    assert sol.event_times[0, 0] == 0.0 and np.isnan(sol.event_times[0, 1])
    assert sol.saved[0, 0, 0] == pytest.approx(6.0, rel=1e-12)          # r = 0 from t0
    # the other grows from 2 through 5 at t = ln(2.5)/0.1 and stops there
    assert sol.event_times[1, 0] == pytest.approx(math.log(2.5) / 0.1, rel=1e-8)
    assert sol.saved[1, 0, 0] == pytest.approx(5.0, rel=1e-7)


def test_a_falling_crossing_matches_the_closed_form():
    # T = T0 exp(-k E t) with E constant (b = d = 0): falls to 1 at t = ln(T0)/(k E); then k = 0
    model = get_model("predator_prey")
    T0, k, E = 8.0, 0.3, 0.5
    events = [ke.cross_down("T", 1.0, "k", 0.0, "set")]
    sol = dopri5.solve(model, [T0, E], [0.0, k, 0.0, 0.0], 0.0, 30.0, rtol=1e-10,
                       atol=1e-14, events=events, save_at=[30.0])
    reference = solve_ivp(predator_prey_rhs([0.0, k, 0.0, 0.0]), (0.0, 30.0), [T0, E], **TIGHT)
    assert reference.y[0, -1] < 1.0                       # without the event it goes below
    assert sol.event_times[0, 0] == pytest.approx(math.log(T0) / (k * E), rel=1e-8)
    assert sol.saved[0, 0, 0] == pytest.approx(1.0, rel=1e-7)


def test_events_give_the_same_numbers_on_one_or_two_threads(cart, cohort):
    one = _solve(cart, cohort, _event(cart), threads=1)
    two = _solve(cart, cohort, _event(cart), threads=2)
    assert np.array_equal(one.features, two.features, equal_nan=True)
    assert np.array_equal(one.event_times, two.event_times, equal_nan=True)


@pytest.mark.parametrize("make, message", [
    (lambda: ke.Event("when", "r", 1.0), "unknown event trigger"),
    (lambda: ke.Event("at_time", "r", 1.0, action="add", time=1.0), "unknown event action"),
    (lambda: ke.Event("at_time", "r", 1.0), "needs a finite time"),
    (lambda: ke.Event("cross_up", "r", 1.0), "needs a quantity"),
])
def test_malformed_events_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_an_unknown_parameter_is_named(cart):
    with pytest.raises(KeyError, match="no parameter 'zz'"):
        dopri5.solve(cart, cart.typical_initial_state(), cart.typical_parameters(), 0.0, 1.0,
                     events=[ke.at_time(0.5, "zz", 1.0)])
