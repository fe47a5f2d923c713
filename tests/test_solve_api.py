"""``solve``'s input validation and its shape conventions."""
import math

import numpy as np
import pytest

from kernels import features as F
from kernels.dopri5 import Doses, solve


@pytest.fixture()
def problem(cart, cart_patients):
    cohort = cart_patients(3, 81)
    return cart, cohort.y0, cohort.params


@pytest.mark.parametrize("change, message", [
    (dict(y0=np.ones((3, 4))), r"y0 has shape \(3, 4\); expected \(3, 5\)"),
    (dict(params=np.ones((2, 14))), r"params has shape \(2, 14\); expected \(3, 14\)"),
    (dict(rtol=0.0), "rtol must be positive"),
    (dict(rtol=-1e-6), "rtol must be positive"),
    (dict(rtol=math.nan), "rtol must be positive"),
    (dict(atol=-1.0), "atol must be a finite number >= 0"),
    (dict(atol=[1e-9, 1e-9, -1e-9, 1e-9, 1e-9]), "atol must be a finite number >= 0"),
    (dict(t1=-1.0), "need finite t0 <= t1"),
    (dict(t1=math.inf), "need finite t0 <= t1"),
    (dict(save_at=[5.0, 1.0]), "save_at must be sorted"),
    (dict(save_at=[1.0, 400.0]), r"save_at must be sorted and lie in \[t0, t1\]"),
    (dict(save_at=[-1.0]), r"lie in \[t0, t1\]"),
    (dict(max_steps=0), "max_steps must be >= 1"),
], ids=["y0-shape", "params-shape", "rtol-zero", "rtol-negative", "rtol-nan", "atol-negative",
        "atol-state-negative", "t1-before-t0", "t1-infinite", "save_at-unsorted",
        "save_at-after-t1", "save_at-before-t0", "max_steps-zero"])
def test_invalid_arguments_raise_value_error(problem, change, message):
    """Bad shapes, rtol <= 0 or NaN, negative atol, t1 < t0, unsorted or
    out-of-range save_at and max_steps < 1 raise ValueError with a clear message."""
    model, y0, params = problem
    kwargs = dict(y0=y0, params=params, t0=0.0, t1=365.0)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        solve(model, **kwargs)


@pytest.mark.parametrize("doses, message", [
    (Doses(np.array([-1.0]), np.array(["E"]), np.full((3, 1), 0.1)), "doses.times must be .* >= t0"),
    (Doses(np.array([5.0, 2.0]), np.array(["E", "E"]), np.full((3, 2), 0.1)), "non-decreasing"),
    (Doses(np.array([math.nan]), np.array(["E"]), np.full((3, 1), 0.1)), "must be finite"),
    (Doses(np.array([0.0, 1.0]), np.array(["E"]), np.full((3, 2), 0.1)), "2 times but 1 states"),
    (Doses(np.array([0.0]), np.array([7]), np.full((3, 1), 0.1)), "must index the model's 5 states"),
    (Doses(np.array([0.0]), np.array(["E"]), np.full((2, 1), 0.1)), r"doses.amounts has shape"),
], ids=["before-t0", "unsorted", "nan-time", "states-mismatch", "state-out-of-range",
        "amounts-shape"])
def test_invalid_doses_raise_value_error(problem, doses, message):
    """A dose before t0, unsorted or non-finite dose times, mismatched states or
    amounts, and state indices out of range raise ValueError."""
    model, y0, params = problem
    with pytest.raises(ValueError, match=message):
        solve(model, y0, params, 0.0, 365.0, doses=doses)


@pytest.mark.parametrize("name, value", [("y0", np.ones(4)), ("params", np.ones(13))])
def test_wrong_length_shared_vector_names_the_argument(problem, name, value):
    """A shared vector (y0 [S] or params [P]) of the wrong length raises a
    ValueError that names the argument and the expected length."""
    model, y0, params = problem
    kwargs = dict(y0=y0, params=params, t0=0.0, t1=10.0)
    kwargs[name] = value
    expected = len(model.states) if name == "y0" else len(model.parameters)
    with pytest.raises(ValueError, match=rf"{name}.*{expected}"):
        solve(model, **kwargs)


def test_dose_time_before_nonzero_t0(problem):
    """With t0 = 10, a dose at day 5 is rejected."""
    model, y0, params = problem
    doses = Doses(np.array([5.0]), np.array(["E"]), np.full((3, 1), 0.1))
    with pytest.raises(ValueError, match=">= t0"):
        solve(model, y0, params, 10.0, 365.0, doses=doses)


def test_unknown_dose_state_name_raises_key_error(problem):
    """A dose into a state name the model lacks raises KeyError naming it."""
    model, y0, params = problem
    doses = Doses(np.array([0.0]), np.array(["Q"]), np.full((3, 1), 0.1))
    with pytest.raises(KeyError, match="no state .*Q"):
        solve(model, y0, params, 0.0, 365.0, doses=doses)


def test_invalid_features_raise_value_error(problem):
    """A feature naming an unknown state, an unknown kind, or a kind missing its
    argument raises ValueError."""
    model, y0, params = problem
    with pytest.raises(ValueError, match="unknown state 'Q'"):
        solve(model, y0, params, 0.0, 10.0, features=[F.maximum("Q")])
    with pytest.raises(ValueError, match="unknown feature kind"):
        F.Feature("median", (("T", 1.0),))
    with pytest.raises(ValueError, match="needs time"):
        F.Feature("value_at", (("T", 1.0),))
    with pytest.raises(ValueError, match="needs level"):
        F.Feature("cross_up", (("T", 1.0),))


def test_output_shapes_and_types(problem):
    """features [N, F], saved [N, K, S] (float64), status int8 [N], n_steps int64 [N]."""
    model, y0, params = problem
    sol = solve(model, y0, params, 0.0, 30.0, save_at=[0.0, 10.0, 30.0],
                features=[F.maximum("T"), F.value_at("T", 5.0)])
    assert sol.features.shape == (3, 2) and sol.features.dtype == np.float64
    assert sol.saved.shape == (3, 3, 5) and sol.saved.dtype == np.float64
    assert sol.status.shape == (3,) and sol.status.dtype == np.int8
    assert sol.n_steps.shape == (3,) and sol.n_steps.dtype == np.int64
    assert np.all(sol.status == 0) and np.all(sol.n_steps > 0)


def test_shared_vectors_broadcast(problem):
    """A y0 vector shared by all patients (with params [N, P]) and a params
    vector shared by all (with y0 [N, S]) equal the explicitly repeated arrays."""
    model, y0, params = problem
    feats = [F.maximum("I"), F.value_at("T", 20.0)]
    shared_y = solve(model, y0[0], params, 0.0, 30.0, features=feats)
    repeated_y = solve(model, np.tile(y0[0], (3, 1)), params, 0.0, 30.0, features=feats)
    assert shared_y.features.tobytes() == repeated_y.features.tobytes()
    shared_p = solve(model, y0, params[0], 0.0, 30.0, features=feats)
    repeated_p = solve(model, y0, np.tile(params[0], (3, 1)), 0.0, 30.0, features=feats)
    assert shared_p.features.tobytes() == repeated_p.features.tobytes()


def test_single_patient_with_shared_vectors(problem):
    """One patient given as a y0 vector and params [1, P] (or both as vectors
    with params [1, P]) solves like the same patient given as [1, S] rows."""
    model, y0, params = problem
    feats = [F.maximum("I"), F.value_at("T", 20.0)]
    rows = solve(model, y0[:1], params[:1], 0.0, 30.0, features=feats)
    vector = solve(model, y0[0], params[:1], 0.0, 30.0, features=feats)
    assert vector.features.tobytes() == rows.features.tobytes()
    vector_p = solve(model, y0[:1], params[0], 0.0, 30.0, features=feats)
    assert vector_p.features.tobytes() == rows.features.tobytes()


def test_read_only_inputs_are_accepted(problem):
    """Read-only input arrays (e.g. memory-mapped or shared) solve like writable ones."""
    model, y0, params = problem
    feats = [F.maximum("I")]
    ro_y, ro_p = y0.copy(), params.copy()
    ro_y.flags.writeable = False
    ro_p.flags.writeable = False
    a = solve(model, ro_y, ro_p, 0.0, 30.0, features=feats)
    b = solve(model, y0, params, 0.0, 30.0, features=feats)
    assert a.features.tobytes() == b.features.tobytes()


def test_zero_length_span(problem):
    """t0 == t1: no step, status ok, the (post-dose) initial state saved and
    reported by value_at; argmax is t0."""
    model, y0, params = problem
    doses = Doses(np.array([2.0]), np.array(["E"]), np.full((3, 1), 0.1))
    sol = solve(model, y0, params, 2.0, 2.0, save_at=[2.0], doses=doses,
                features=[F.value_at("E", 2.0), F.argmax("T")])
    assert np.all(sol.status == 0) and np.all(sol.n_steps == 0)
    expected = y0.copy()
    expected[:, 1] += 0.1
    np.testing.assert_array_equal(sol.saved[:, 0, :], expected)
    np.testing.assert_array_equal(sol.features[:, 0], expected[:, 1])
    np.testing.assert_array_equal(sol.features[:, 1], 2.0)


def test_value_at_outside_span_is_nan(problem):
    """value_at a time outside [t0, t1] is NaN; crossing a level never reached is NaN."""
    model, y0, params = problem
    sol = solve(model, y0, params, 0.0, 10.0,
                features=[F.value_at("T", 11.0), F.value_at("T", -1.0), F.cross_up("I", 1e12)])
    assert np.all(sol.status == 0)
    assert np.all(np.isnan(sol.features))


def test_dose_state_by_index_or_name(problem, cart):
    """Dose states may be given by index as well as by name (same results)."""
    model, y0, params = problem
    by_name = Doses(np.array([0.0]), np.array(["E"]), np.full((3, 1), 0.1))
    by_index = Doses(np.array([0.0]), np.array([cart.state_index("E")]), np.full((3, 1), 0.1))
    a = solve(model, y0, params, 0.0, 30.0, doses=by_name, features=[F.maximum("I")])
    b = solve(model, y0, params, 0.0, 30.0, doses=by_index, features=[F.maximum("I")])
    assert a.features.tobytes() == b.features.tobytes()


def test_per_state_atol(problem):
    """atol given per state (float[S], as documented) equals the same scalar
    atol, and a larger atol on one state changes the result."""
    model, y0, params = problem
    feats = [F.maximum("I"), F.value_at("T", 30.0)]
    a = solve(model, y0, params, 0.0, 30.0, atol=np.full(5, 1e-9), features=feats)
    b = solve(model, y0, params, 0.0, 30.0, atol=1e-9, features=feats)
    assert a.features.tobytes() == b.features.tobytes()
    loose = np.full(5, 1e-9)
    loose[0] = 1.0
    c = solve(model, y0, params, 0.0, 30.0, atol=loose, features=feats)
    assert c.features.tobytes() != b.features.tobytes()


def test_threads_argument_restores_numba_setting(problem):
    """solve(threads=1) runs on one thread and restores Numba's thread count."""
    import numba
    model, y0, params = problem
    before = numba.get_num_threads()
    solve(model, y0, params, 0.0, 10.0, threads=1)
    assert numba.get_num_threads() == before
