"""The model library: metadata with provenance, lookup, and each jitted
right-hand side against an independent numpy transcription of its equations."""
import math

import numpy as np
import pytest

from kernels.block import LANES
from kernels.models import MODELS, get_model
from scipy_reference import cart_rhs, predator_prey_rhs

ALL_MODELS = [("cart", {}), ("predator_prey", {}), ("predator_prey", {"cytokine": True}),
              ("costim", {}), ("dual_antigen", {}), ("translation", {}), ("kinetics", {})]


@pytest.fixture(params=ALL_MODELS, ids=lambda p: p[0] + ("+cytokine" if p[1] else ""))
def model(request):
    name, options = request.param
    return get_model(name, **options)


def test_parameter_metadata(model):
    """Every parameter has a unit, a finite typical value >= 0, a finite
    sd_log >= 0, a description and a non-empty source; names are unique."""
    assert len(model.parameters) > 0
    for p in model.parameters:
        assert p.unit.strip(), p.name
        assert math.isfinite(p.typical) and p.typical >= 0, p.name   # 0: a switch that is off
        assert math.isfinite(p.sd_log) and p.sd_log >= 0, p.name
        assert p.description.strip(), p.name
        assert p.source.strip(), p.name
    names = model.parameter_names
    assert len(set(names)) == len(names)


def test_state_metadata(model):
    """State names are unique and non-empty, each with a unit and a finite,
    non-negative typical initial value."""
    names = model.state_names
    assert len(set(names)) == len(names) and all(n.strip() for n in names)
    for s in model.states:
        assert s.unit.strip() and s.description.strip(), s.name
        assert math.isfinite(s.typical_initial) and s.typical_initial >= 0, s.name


def test_lookups(model):
    """state_index / parameter_index find every name and raise KeyError,
    naming the model, for unknown ones; typical_* apply overrides."""
    for i, n in enumerate(model.state_names):
        assert model.state_index(n) == i
    for i, n in enumerate(model.parameter_names):
        assert model.parameter_index(n) == i
    with pytest.raises(KeyError, match="no state 'nope'"):
        model.state_index("nope")
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        model.parameter_index("nope")
    first = model.parameter_names[0]
    p = model.typical_parameters(**{first: 123.0})
    assert p[0] == 123.0 and p.dtype == np.float64
    np.testing.assert_array_equal(p[1:], [q.typical for q in model.parameters[1:]])
    y = model.typical_initial_state(**{model.state_names[-1]: 7.0})
    assert y[-1] == 7.0


def test_get_model_unknown_raises_key_error():
    """get_model raises KeyError listing the known models for an unknown name."""
    with pytest.raises(KeyError, match="unknown model 'no_such_model'.*cart"):
        get_model("no_such_model")
    assert {"cart", "predator_prey"} <= set(MODELS)


def test_cart_metadata_matches_design():
    """The cart model has the states of docs/models.md#cart in order and its 14 parameters."""
    cart = get_model("cart")
    assert cart.state_names == ("T", "E", "M", "X", "I")
    assert cart.parameter_names == ("r", "Tmax", "k", "Kk", "Ks", "a", "dE", "gx", "m", "rho",
                                    "dM", "dX", "s", "c")


def random_block(model, rng, n):
    """Random positive states (log-uniform over 1e-6..1e3) and parameters
    (log-normal around typical, widened), lanes contiguous."""
    S, P = len(model.states), len(model.parameters)
    y = np.exp(rng.uniform(np.log(1e-6), np.log(1e3), (S, n)))
    typical = model.typical_parameters()[:, None]
    p = typical * np.exp(1.0 * rng.standard_normal((P, n)))
    t = rng.uniform(0, 365, n)
    return t, np.ascontiguousarray(y), np.ascontiguousarray(p)


def reference_rhs(model, params):
    return cart_rhs(params) if model.name == "cart" else predator_prey_rhs(params)


@pytest.mark.parametrize("name, options", ALL_MODELS[:3])
def test_rhs_matches_numpy_transcription(name, options):
    """The jitted block rhs equals an independent numpy transcription of the
    model's documented equations at 2,000 random points (rtol 1e-12). (The
    other models' transcriptions are in their own test files.)"""
    model = get_model(name, **options)
    rng = np.random.default_rng(71)
    n = 2000
    t, y, p = random_block(model, rng, n)
    out = np.full_like(y, np.nan)
    model.rhs(n, t, y, p, out)
    expected = np.column_stack([reference_rhs(model, p[:, l])(t[l], y[:, l]) for l in range(n)])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=0)


def test_rhs_writes_only_first_n_lanes(model):
    """rhs(n, ...) fills lanes 0..n-1 and leaves the rest of the block alone."""
    rng = np.random.default_rng(72)
    t, y, p = random_block(model, rng, LANES)
    out = np.full_like(y, -7.0)
    n = LANES // 2 + 1
    model.rhs(n, t, y, p, out)
    assert np.all(np.isfinite(out[:, :n])) and np.all(out[:, :n] != -7.0)
    assert np.all(out[:, n:] == -7.0)


def test_cart_rhs_known_values():
    """One hand-worked point of the cart equations: T = Ks = Kk = 1 (stim 1/2,
    kill k E / 2), all rates 1 except those named, checked term by term."""
    cart = get_model("cart")
    names = cart.parameter_names
    values = dict.fromkeys(names, 1.0)
    values.update(r=0.5, Tmax=2.0, k=2.0, a=4.0, s=10.0, c=3.0)
    p = np.array([[values[n]] for n in names])
    y = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])        # T, E, M, X, I
    out = np.zeros_like(y)
    cart.rhs(1, np.zeros(1), y, p, out)
    stim, kill = 0.5, 2.0 * 2.0 * 1.0 / 2.0
    expected = [0.5 * 1 * (1 - 0.5) - kill,
                4 * stim * 2 - 2 - stim * 2 - 2 + 3 * stim,
                2 - 3 - 3 * stim,
                stim * 2 - 4,
                10 * kill - 3 * 5]
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-15)
