"""kernels.vecmath.log2 / exp2 / exp against numpy on their documented ranges
(relative error below 1e-14), their documented clamping, and vector/scalar
bitwise agreement."""
import numba as nb
import numpy as np

from kernels.vecmath import exp, exp2, log2

REL_TOL = 1e-14


def scalar(f, xs):
    return np.array([f(float(x)) for x in xs])


@nb.njit
def _log2_loop(xs, out):
    for i in range(xs.size):
        out[i] = log2(xs[i])


@nb.njit
def _exp2_loop(zs, out):
    for i in range(zs.size):
        out[i] = exp2(zs[i])


@nb.njit
def _exp_loop(xs, out):
    for i in range(xs.size):
        out[i] = exp(xs[i])


def log2_points():
    rng = np.random.default_rng(61)
    powers = np.ldexp(1.0, np.arange(-63, 64))
    sqrt2 = np.sqrt(2.0)
    special = np.concatenate([
        powers, np.nextafter(powers, 0.0), np.nextafter(powers, np.inf),
        powers * sqrt2, np.nextafter(powers * sqrt2, 0.0), np.nextafter(powers * sqrt2, np.inf),
        powers / sqrt2,
        1.0 + np.array([1e-15, 1e-12, 1e-9, 1e-6, 1e-3]), 1.0 - np.array([1e-15, 1e-12, 1e-9, 1e-6, 1e-3]),
        np.array([1e-9, 1e-6, 0.1, 0.3, 3.0, 10.0, 1e6, 1e12, 1e18]),
    ])
    special = special[(special >= 2.0 ** -63) & (special <= 2.0 ** 63)]
    random = np.exp2(rng.uniform(-63, 63, 20_000))
    return np.concatenate([special, random])


def test_log2_relative_error():
    """log2(x) for x in [2**-63, 2**63] (random, exact powers of two, their
    neighbours, the sqrt(2) reduction boundaries, x near 1): relative error
    < 1e-14 against numpy; log2(1) is exactly 0."""
    x = log2_points()
    got, ref = scalar(log2, x), np.log2(x)
    nonzero = ref != 0
    rel = np.abs(got[nonzero] - ref[nonzero]) / np.abs(ref[nonzero])
    assert rel.max() < REL_TOL, f"worst x={x[nonzero][rel.argmax()]!r}, rel err {rel.max():.3g}"
    assert np.all(got[~nonzero] == 0.0)


def test_log2_exact_powers_of_two():
    """log2(2**k) is k to within 1e-14 relative for every k in [-63, 63]."""
    k = np.arange(-63, 64)
    got = scalar(log2, np.ldexp(1.0, k))
    assert np.all(np.abs(got - k) <= REL_TOL * np.maximum(np.abs(k), 1))


def test_log2_clamps():
    """x is clamped to [2**-63, 2**63] as documented."""
    assert abs(log2(2.0 ** -80) + 63.0) < 1e-13
    assert abs(log2(1e-300) + 63.0) < 1e-13
    assert abs(log2(2.0 ** 80) - 63.0) < 1e-13
    assert abs(log2(1e300) - 63.0) < 1e-13


def exp2_points():
    rng = np.random.default_rng(62)
    ints = np.arange(-16, 17, dtype=float)
    special = np.concatenate([ints, np.nextafter(ints, -np.inf), np.nextafter(ints, np.inf),
                              ints + 0.5, [1e-300, -1e-300, 1e-12, -1e-12]])
    special = special[(special >= -16) & (special <= 16)]
    return np.concatenate([special, rng.uniform(-16, 16, 20_000)])


def test_exp2_relative_error():
    """exp2(z) for z in [-16, 16] (random, integers and neighbours, halves, near
    0): relative error < 1e-14 against numpy."""
    z = exp2_points()
    got, ref = scalar(exp2, z), np.exp2(z)
    rel = np.abs(got - ref) / ref
    assert rel.max() < REL_TOL, f"worst z={z[rel.argmax()]!r}, rel err {rel.max():.3g}"


def test_exp2_clamps():
    """z is clamped to [-16, 16] as documented."""
    assert abs(exp2(40.0) / 2.0 ** 16 - 1) < REL_TOL
    assert abs(exp2(-40.0) / 2.0 ** -16 - 1) < REL_TOL


def test_exp2_log2_round_trip():
    """exp2(log2(x)) returns x to 1e-13 for x in [2**-16, 2**16]."""
    x = np.exp2(np.random.default_rng(63).uniform(-16, 16, 5000))
    back = scalar(exp2, scalar(log2, x))
    assert np.max(np.abs(back / x - 1)) < 1e-13


def exp_points():
    rng = np.random.default_rng(64)
    ln2 = np.log(2.0)
    halves = (np.arange(-1021, 1023) + 0.5) * ln2          # the reduction's switch points
    special = np.concatenate([halves, np.nextafter(halves, -np.inf), np.nextafter(halves, np.inf),
                              [0.0, 1e-300, -1e-300, 1e-12, -1e-12, 1.0, -1.0, -708.0, 709.0]])
    special = special[(special >= -708.0) & (special <= 709.0)]
    return np.concatenate([special, rng.uniform(-708.0, 709.0, 20_000),
                           rng.uniform(-5.0, 5.0, 20_000)])


def test_exp_relative_error():
    """exp(x) for x in [-708, 709] (random over the range and near 0, the points
    where the nearest power of two changes, and their neighbours): relative
    error < 1e-14 against numpy, whatever the size of x."""
    x = exp_points()
    got, ref = scalar(exp, x), np.exp(x)
    rel = np.abs(got - ref) / ref
    assert rel.max() < REL_TOL, f"worst x={x[rel.argmax()]!r}, rel err {rel.max():.3g}"
    assert exp(0.0) == 1.0


def test_exp_clamps():
    """x is clamped to [-708, 709] as documented (no inf, no subnormals)."""
    assert exp(-1000.0) == exp(-708.0) and abs(exp(-708.0) / np.exp(-708.0) - 1) < REL_TOL
    assert exp(1000.0) == exp(709.0) and np.isfinite(exp(1000.0))


def test_vector_loop_equals_scalar_calls():
    """Inside a jitted loop (which LLVM may vectorise) the results are bitwise
    those of scalar calls."""
    x = log2_points()
    out = np.empty_like(x)
    _log2_loop(x, out)
    assert out.tobytes() == scalar(log2, x).tobytes()
    z = exp2_points()
    out = np.empty_like(z)
    _exp2_loop(z, out)
    assert out.tobytes() == scalar(exp2, z).tobytes()
    x = exp_points()
    out = np.empty_like(x)
    _exp_loop(x, out)
    assert out.tobytes() == scalar(exp, x).tobytes()
