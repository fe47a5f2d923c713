"""The benchmarks' peers integrate the same equations as the kernel's cart model.

benchmarks/kernel.py writes the cart right-hand side in numpy for scipy, and
benchmarks/peer_numbalsoda.py in a numba function for numbalsoda's C-pointer
callback; both must equal kernels/models/cart.py's at random states and
parameters (up to the rounding of their algebraically equal forms)."""
import numpy as np

from benchmarks import kernel as kernel_bench
from benchmarks import peer_numbalsoda
from kernels.models import get_model


def _random_points(n=200, seed=5):
    cart = get_model("cart")
    rng = np.random.default_rng(seed)
    typical = np.array([prm.typical for prm in cart.parameters])
    params = typical[:, None] * np.exp(rng.normal(0.0, 1.0, (typical.size, n)))
    y = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), (len(cart.state_names), n)))
    out = np.zeros_like(y)
    cart.rhs(n, np.zeros(n), y, params, out)
    return y, params, out


def test_scipy_peer_rhs_matches_the_model():
    y, params, expected = _random_points()
    for i in range(y.shape[1]):
        got = kernel_bench.cart_rhs_numpy(0.0, y[:, i], list(params[:, i]))
        np.testing.assert_allclose(got, expected[:, i], rtol=1e-12, atol=1e-300)


def test_numbalsoda_peer_rhs_matches_the_model():
    import numba as nb

    @nb.njit
    def evaluate(y, p, out):
        for i in range(y.shape[1]):
            peer_numbalsoda.cart_rhs_into(y[:, i].copy(), p[:, i].copy(), out[:, i])

    y, params, expected = _random_points()
    got = np.zeros_like(y)
    evaluate(y, params, got)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)
