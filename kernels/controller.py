"""Step-size control for Dormand-Prince 5(4), vectorised across lanes.

PI controller of Hairer, Norsett & Wanner, Solving ODEs I (2nd ed.), section
II.4 and their code DOPRI5 (defaults beta = 0.04, safety 0.9, step ratio in
[0.2, 10]):

    h_new = h * clip(0.9 * err^(-(0.2 - 0.75 beta)) * err_prev^beta, 0.2, 10)   accepted
    h_new = h * clip(0.9 * err^(-(0.2 - 0.75 beta)), 0.2, 1)                    rejected

with err_prev = max(err of the last accepted step, 1e-4); after a rejection the
next accepted step may not grow. Powers go through :mod:`kernels.vecmath` in
log2 space so the controller vectorises.

Initial step: Hairer's algorithm as in ``scipy.integrate._ivp.common.select_initial_step``.
"""
import math

import numba as nb
import numpy as np

from kernels.jit import jit_options
from kernels.status import NON_FINITE, OK
from kernels.tableau import ERROR_ORDER
from kernels.vecmath import exp2, log2

BETA = 0.04
EXPONENT = 1.0 / (ERROR_ORDER + 1) - 0.75 * BETA
LOG2_SAFETY = math.log2(0.9)
LOG2_MIN_FACTOR = math.log2(0.2)
LOG2_MAX_FACTOR = math.log2(10.0)
LOG2_MIN_ERR_PREV = math.log2(1e-4)
# a squared error norm above this (or NaN) is treated as this: reject and shrink by 0.2
ERR_CEILING = 1e300


@nb.njit(**jit_options(inline="always"))
def step_factor_log2(log2_err, log2_err_prev, accepted):
    """log2 of h_new / h for one lane (PI control; see module docstring)."""
    z_rejected = LOG2_SAFETY - EXPONENT * log2_err
    z_accepted = z_rejected + BETA * log2_err_prev
    z_accepted = min(max(z_accepted, LOG2_MIN_FACTOR), LOG2_MAX_FACTOR)
    z_rejected = min(max(z_rejected, LOG2_MIN_FACTOR), 0.0)
    return z_accepted if accepted else z_rejected


@nb.njit(**jit_options(inline="always"))
def restart_lanes(rhs, P, B, n):
    """For lanes flagged ``restart`` (a new patient or a dose just given):
    k_1 = f(t, y), a fresh initial step and a fresh controller history.

    The two right-hand-side evaluations run for the whole block; lanes that do
    not restart ignore the result (each lane's arithmetic is its own).
    """
    S = B.y.shape[0]
    f0, f1 = B.K[1], B.K[2]   # stage buffers are free between steps
    rhs(n, B.t, B.y, B.p, f0)
    for l in range(n):
        B.row[l] = 0.0
        B.row2[l] = 0.0
    for s in range(S):
        atol, rtol = P.atol[s], P.rtol
        for l in range(n):
            scale = atol + abs(B.y[s, l]) * rtol
            a = B.y[s, l] / scale
            b = f0[s, l] / scale
            B.row[l] += a * a
            B.row2[l] += b * b
    for l in range(n):
        d0 = np.sqrt(B.row[l] / S)
        d1 = np.sqrt(B.row2[l] / S)
        h0 = 1e-6 if ((d0 < 1e-5) | (d1 < 1e-5)) else 0.01 * d0 / d1
        h0 = min(h0, P.t1 - B.t[l])
        B.h_try[l] = h0
        B.t_stage[l] = B.t[l] + h0
        B.row2[l] = d1
        bad = not ((abs(d0) < math.inf) & (abs(d1) < math.inf))
        B.status[l] = NON_FINITE if (B.restart[l] & bad & (B.status[l] == OK)) else B.status[l]
    for s in range(S):
        for l in range(n):
            B.y_stage[s, l] = B.y[s, l] + B.h_try[l] * f0[s, l]
    rhs(n, B.t_stage, B.y_stage, B.p, f1)
    for l in range(n):
        B.row[l] = 0.0
    for s in range(S):
        atol, rtol = P.atol[s], P.rtol
        for l in range(n):
            scale = atol + abs(B.y[s, l]) * rtol
            d = (f1[s, l] - f0[s, l]) / scale
            B.row[l] += d * d
    for l in range(n):
        h0 = B.h_try[l]
        d1 = B.row2[l]
        d2 = np.sqrt(B.row[l] / S) / h0
        largest = max(d1, d2)
        tiny = largest <= 1e-15
        # (0.01 / max(d1, d2)) ** (1 / (order + 1)), order 4 for the error estimate
        h1 = max(1e-6, h0 * 1e-3) if tiny else exp2(log2(0.01 / largest) / (ERROR_ORDER + 1))
        h = min(min(100.0 * h0, h1), P.t1 - B.t[l])
        restart = B.restart[l]
        B.h[l] = h if restart else B.h[l]
        B.log2_err_prev[l] = LOG2_MIN_ERR_PREV if restart else B.log2_err_prev[l]
        B.rejected_last[l] = False if restart else B.rejected_last[l]
    for s in range(S):
        for l in range(n):
            if B.restart[l]:
                B.K[0, s, l] = f0[s, l]
    for l in range(n):
        B.restart[l] = False
