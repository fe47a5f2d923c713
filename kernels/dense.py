"""Dense output of one Dormand-Prince step, evaluated for single patients.

Used by the integrator's scalar pass (the rare work: extremum refinement,
landmark values, threshold crossings, ``save_at`` output). For a quantity
q = w . y the interpolant over a step [t, t + h] is the quartic

    q(theta) = q0 + h * sum_{m=0..3} c_m theta^(m+1),   c_m = sum_j (w . k_j) P_jm,

with theta = (tau - t)/h in [0, 1] and P from :mod:`kernels.tableau`.
"""
import numba as nb

from kernels.jit import jit_options
from kernels.tableau import N_STAGES, P

# bisection to 2**-60 of a step: below rounding of any time in days
_BISECTION_STEPS = 60


@nb.njit(**jit_options())
def quantity_coefficients(weights, K, lane, out):
    """c_m = sum_j (w . k_j) P_jm for one lane into ``out[4]``."""
    for m in range(4):
        out[m] = 0.0
    for j in range(N_STAGES):
        z = 0.0
        for s in range(weights.shape[0]):
            z += weights[s] * K[j, s, lane]
        for m in range(4):
            out[m] += z * P[j, m]


@nb.njit(**jit_options())
def quantity_at(q0, h, c, theta):
    """q(theta) = q0 + h * theta * (c0 + theta*(c1 + theta*(c2 + theta*c3)))."""
    return q0 + h * theta * (c[0] + theta * (c[1] + theta * (c[2] + theta * c[3])))


@nb.njit(**jit_options())
def quantity_slope(c, theta):
    """dq/dtheta divided by h: c0 + 2 c1 theta + 3 c2 theta^2 + 4 c3 theta^3."""
    return c[0] + theta * (2.0 * c[1] + theta * (3.0 * c[2] + theta * 4.0 * c[3]))


@nb.njit(**jit_options())
def quantity_integral(q0, h, c, theta):
    """int_0^theta q(s) ds (in units of theta; multiply by h for time units)."""
    return theta * q0 + h * theta * theta * (
        c[0] / 2.0 + theta * (c[1] / 3.0 + theta * (c[2] / 4.0 + theta * c[3] / 5.0)))


@nb.njit(**jit_options())
def slope_root(c):
    """theta in (0, 1) where dq/dtheta changes sign, by bisection.

    The caller guarantees a sign change between theta = 0 and theta = 1.
    """
    lo, hi = 0.0, 1.0
    slope_lo = quantity_slope(c, lo)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        slope_mid = quantity_slope(c, mid)
        if (slope_mid > 0.0) == (slope_lo > 0.0):
            lo, slope_lo = mid, slope_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@nb.njit(**jit_options())
def level_root(q0, h, c, level):
    """Smallest theta in (0, 1] with q(theta) = level, by bisection.

    The caller guarantees q(0) and q(1) lie on opposite sides of ``level``.
    """
    lo, hi = 0.0, 1.0
    below_lo = q0 < level
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if (quantity_at(q0, h, c, mid) < level) == below_lo:
            lo = mid
        else:
            hi = mid
    return hi


@nb.njit(**jit_options())
def interpolate_state(y, K, lane, h, theta, out):
    """y(t + theta h) for every state of one lane into ``out[S]``."""
    for s in range(y.shape[0]):
        acc = 0.0
        for j in range(N_STAGES):
            b = theta * (P[j, 0] + theta * (P[j, 1] + theta * (P[j, 2] + theta * P[j, 3])))
            acc += K[j, s, lane] * b
        out[s] = y[s, lane] + h * acc
