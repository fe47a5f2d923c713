"""The compiled peer of benchmarks/kernel.py: numbalsoda's DOP853 in a ``prange`` loop.

numbalsoda wraps Hairer's DOP853 (C++) behind a Numba-callable function; the
right-hand side is a ``cfunc`` and each patient is one call, so a
``numba.prange`` loop over patients runs them in parallel. It returns the state
at given times only (no dense output, no in-loop features), so it computes two
of the kernel's six features here: the tumour at day 28 and at day 365 (t_eval
= 0, 28, 365). Same model (``cart``), tolerances, patients and dose as the
kernel benchmark; the dose enters E at t = 0 before the call.

numbalsoda is built from source and needs a Fortran compiler: ``make bench``
installs it (the ``bench`` extra) and says how to get gfortran where it is missing.
"""
import time

import numba as nb
import numpy as np
from numba import types

try:
    from numbalsoda import dop853, lsoda_sig
except ImportError:   # the bench extra is not installed
    dop853 = lsoda_sig = None

N_STATES, N_PARAMS = 5, 14
T_EVAL = np.array([0.0, 28.0, 365.0])


def available():
    return dop853 is not None


@nb.njit(inline="always")
def cart_rhs_into(u, p, du):
    """The cart equations for one patient, written again because numbalsoda calls
    a C-pointer cfunc (tests/test_benchmark_peers.py compares them with
    kernels/models/cart.py)."""
    T, E, M, X, I = u[0], u[1], u[2], u[3], u[4]
    r, Tmax, k, Kk, Ks = p[0], p[1], p[2], p[3], p[4]
    a, dE, gx, m, rho = p[5], p[6], p[7], p[8], p[9]
    dM, dX, s, c = p[10], p[11], p[12], p[13]
    inv = 1.0 / ((Ks + T) * (Kk + T))
    stim = T * (Kk + T) * inv
    kill = k * E * T * Kk * (Ks + T) * inv
    du[0] = r * T * (Tmax - T) / Tmax - kill
    du[1] = a * stim * E - dE * E - gx * stim * E - m * E + rho * M * stim
    du[2] = m * E - dM * M - rho * M * stim
    du[3] = gx * stim * E - dX * X
    du[4] = s * kill - c * I


def _compile():
    @nb.cfunc(lsoda_sig)
    def cart_rhs(t, u_, du_, p_):
        cart_rhs_into(nb.carray(u_, (N_STATES,)), nb.carray(p_, (N_PARAMS,)),
                      nb.carray(du_, (N_STATES,)))

    address = cart_rhs.address

    @nb.njit(parallel=True)
    def solve_all(y0, params, t_eval, rtol, atol, out, ok):
        for i in nb.prange(y0.shape[0]):
            usol, success = dop853(address, y0[i].copy(), t_eval, params[i].copy(), rtol, atol,
                                   1_000_000)
            for j in range(t_eval.shape[0]):
                out[i, j] = usol[j, 0]
            ok[i] = success
    return solve_all


_SOLVER = None


def run(problem, threads, repeats=1):
    """Time DOP853 on ``problem`` (a :class:`benchmarks.kernel.Problem`): best of
    ``repeats``. Returns rate, tumour at days 28 and 365 [N, 2] and failures."""
    global _SOLVER
    if _SOLVER is None:
        _SOLVER = _compile()
    arm = problem.arm
    y0 = np.array(arm.y0, dtype=np.float64)
    doses = arm.doses
    for d, state in enumerate(np.ravel(doses.states)):
        y0[:, arm.model.state_index(str(state))] += doses.amounts[:, d]
    params = np.ascontiguousarray(arm.params, dtype=np.float64)
    n = y0.shape[0]
    out = np.empty((n, T_EVAL.size))
    ok = np.zeros(n, np.bool_)
    previous = nb.get_num_threads()
    nb.set_num_threads(threads)
    try:
        _SOLVER(y0[:2], params[:2], T_EVAL, arm.rtol, arm.atol, out[:2], ok[:2])   # compile
        best = np.inf
        for _ in range(repeats):
            begin = time.perf_counter()
            _SOLVER(y0, params, T_EVAL, arm.rtol, arm.atol, out, ok)
            best = min(best, time.perf_counter() - begin)
    finally:
        nb.set_num_threads(previous)
    return {"patients_per_s": n / best, "best_s": best, "tumour_day28_365": out[:, 1:],
            "failures": int((~ok).sum())}
