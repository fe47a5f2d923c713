"""Batched Dormand-Prince 5(4) integration of many patients at once.

Each patient has its own adaptive step: no step is shared across patients.
Patients run in lock-step blocks of :data:`kernels.block.LANES` lanes (a
structure of arrays, lanes contiguous), so each pass of a step vectorises across
patients; a lane whose patient finishes is refilled from the queue at once.
Blocks of patients ("chunks") run in parallel under ``numba.prange``.

One step, per block (``_solve_chunk``):

1. ``restart_lanes``  (vector, only when a lane needs it) k1 and initial step
2. ``trial_step``     (vector) the six new stages, error norm, PI control
3. ``features_vector_pass`` (vector) running max/min/AUC, flags for rare work
4. ``step_events``    (scalar, flagged lanes) interpolant refinement, landmarks,
                       save points, doses, end of integration
5. ``commit``         (vector) accepted lanes move to t_new (FSAL: k1 <- k7)
6. ``turnover``       (scalar, finished lanes) outputs, refill or compaction

Error norm: err = sqrt(mean_s ((h sum_j E_j k_js) / (atol_s + rtol max(|y_s|, |y5_s|)))^2),
as in Hairer's DOPRI5 and scipy's RK45. A step is accepted when err <= 1.
Steps land exactly on dose times and on t1 (a step that would end within 1% of
one is stretched onto it, as in DOPRI5).
"""
from dataclasses import dataclass
import math

import numba as nb
import numpy as np
from numba import types

from kernels.block import LANES, Outputs, Problem, allocate_block
from kernels.controller import ERR_CEILING, LOG2_MIN_ERR_PREV, restart_lanes, step_factor_log2
from kernels.features import compile_features, features_vector_pass
from kernels.jit import jit_options
from kernels.lanes import start_lane, step_events, turnover, finish_lane
from kernels.models.base import RHS_TYPE
from kernels.status import MAX_STEPS, OK, STEP_UNDERFLOW
from kernels.tableau import A, C, E
from kernels.vecmath import exp2, log2

_EPS = np.finfo(np.float64).eps


@nb.njit(**jit_options())
def trial_step(rhs, P, B, n):
    """Stages k2..k7, the fifth-order solution y_new, the error norm, the new
    step size and the accept/reject decision for the first n lanes."""
    S = B.y.shape[0]
    for l in range(n):
        land = B.t[l] + 1.01 * B.h[l] >= B.t_stop[l]
        B.landed[l] = land
        B.h_try[l] = B.t_stop[l] - B.t[l] if land else B.h[l]
    for i in range(1, 7):
        c = C[i]
        for l in range(n):
            B.t_stage[l] = B.t[l] + c * B.h_try[l]
        dest = B.y_new if i == 6 else B.y_stage
        for s in range(S):
            a0 = A[i, 0]
            for l in range(n):
                B.row[l] = a0 * B.K[0, s, l]
            for j in range(1, i):
                a = A[i, j]
                if a != 0.0:
                    for l in range(n):
                        B.row[l] += a * B.K[j, s, l]
            for l in range(n):
                dest[s, l] = B.y[s, l] + B.h_try[l] * B.row[l]
        rhs(n, B.t_stage, dest, B.p, B.K[i])

    for l in range(n):
        B.row2[l] = 0.0
    for s in range(S):
        e0 = E[0]
        for l in range(n):
            B.row[l] = e0 * B.K[0, s, l]
        for j in range(1, 7):
            e = E[j]
            if e != 0.0:
                for l in range(n):
                    B.row[l] += e * B.K[j, s, l]
        atol, rtol = P.atol[s], P.rtol
        for l in range(n):
            scale = atol + rtol * max(abs(B.y[s, l]), abs(B.y_new[s, l]))
            r = B.h_try[l] * B.row[l] / scale
            B.row2[l] += r * r

    for l in range(n):
        err = math.sqrt(B.row2[l] / S)
        err = err if err < ERR_CEILING else ERR_CEILING   # NaN -> reject
        h = B.h_try[l]
        attempts = B.n_attempted[l] + 1
        B.n_attempted[l] = attempts
        status = B.status[l]
        underflow = not (h > 10.0 * _EPS * abs(B.t[l]))
        status = STEP_UNDERFLOW if (status == OK and underflow) else status
        status = MAX_STEPS if (status == OK and attempts > P.max_steps) else status
        B.status[l] = status
        ok = err <= 1.0 and status == OK
        log2_err = log2(err)
        h_new = h * exp2(step_factor_log2(log2_err, B.log2_err_prev[l], ok))
        h_new = min(h_new, h) if (ok and B.rejected_last[l]) else h_new
        B.h[l] = h_new
        B.log2_err[l] = log2_err
        B.accepted[l] = ok
        B.t_new[l] = B.t_stop[l] if B.landed[l] else B.t[l] + h
        B.rare[l] = status != OK or (ok and B.landed[l])

    n_save = P.save_at.shape[0]
    if n_save > 0:
        for l in range(n):
            k = min(B.next_save[l], n_save - 1)
            due = B.next_save[l] < n_save and P.save_at[k] <= B.t_new[l]
            B.rare[l] = B.rare[l] or (B.accepted[l] and due)


@nb.njit(**jit_options())
def commit(B, n):
    """Accepted lanes move to t_new; k1 <- k7 (first same as last)."""
    for s in range(B.y.shape[0]):
        for l in range(n):
            B.y[s, l] = B.y_new[s, l] if B.accepted[l] else B.y[s, l]
            B.K[0, s, l] = B.K[6, s, l] if B.accepted[l] else B.K[0, s, l]
    for l in range(n):
        ok = B.accepted[l]
        B.t[l] = B.t_new[l] if ok else B.t[l]
        B.log2_err_prev[l] = max(B.log2_err[l], LOG2_MIN_ERR_PREV) if ok else B.log2_err_prev[l]
        B.n_accepted[l] += 1 if ok else 0
        B.rejected_last[l] = not ok


@nb.njit(**jit_options())
def _any(flags, n):
    for l in range(n):
        if flags[l]:
            return True
    return False


@nb.njit(**jit_options())
def _solve_chunk(rhs, P, out, begin, end):
    """Integrate patients [begin, end) through one lock-step block."""
    B = allocate_block(P.y0.shape[1], P.params.shape[1], P.feature_kinds.shape[0])
    n = 0
    next_patient = begin
    while n < LANES and next_patient < end:
        start_lane(P, B, out, n, next_patient)
        next_patient += 1
        if B.done[n]:
            finish_lane(P, B, out, n)
        else:
            n += 1
    has_features = P.feature_kinds.shape[0] > 0
    while n > 0:
        if _any(B.restart, n):
            restart_lanes(rhs, P, B, n)
        trial_step(rhs, P, B, n)
        if has_features:
            features_vector_pass(P, B, n)
        step_events(P, B, out, n)
        commit(B, n)
        if _any(B.done, n):
            n, next_patient = turnover(P, B, out, n, next_patient, end)


def _solve_all(rhs, y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
               dose_amounts, feature_kinds, feature_weights, feature_args, max_steps,
               chunk, features, saved, status, n_steps):
    P = Problem(y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
                dose_amounts, feature_kinds, feature_weights, feature_args, max_steps)
    out = Outputs(features, saved, status, n_steps)
    n_patients = y0.shape[0]
    n_chunks = (n_patients + chunk - 1) // chunk
    for c in nb.prange(n_chunks):
        _solve_chunk(rhs, P, out, c * chunk, min(n_patients, (c + 1) * chunk))


_f8_1d, _f8_2d, _f8_3d = types.float64[::1], types.float64[:, ::1], types.float64[:, :, ::1]
_i8_1d = types.int64[::1]
_SOLVE_SIGNATURE = types.void(
    RHS_TYPE, _f8_2d, _f8_2d, types.float64, types.float64, types.float64, _f8_1d, _f8_1d,
    _f8_1d, _i8_1d, _f8_2d, _i8_1d, _f8_2d, _f8_1d, types.int64,
    types.int64, _f8_2d, _f8_3d, types.int8[::1], _i8_1d)

_compiled = None


def _kernel():
    """The parallel kernel, compiled on first use (or loaded from the disk cache).

    The right-hand side is passed as a first-class function of a fixed
    signature, so one compiled (and cached) kernel serves every model.
    """
    global _compiled
    if _compiled is None:
        _compiled = nb.njit(_SOLVE_SIGNATURE, parallel=True, **jit_options())(_solve_all)
    return _compiled


@dataclass(frozen=True)
class Doses:
    """Doses at given times: ``amounts[patient, d]`` is added to state
    ``states[d]`` at ``times[d]`` (days, non-decreasing, >= t0). Several doses may
    share a time; values reported at a dose time are taken after the dose."""

    times: np.ndarray
    states: np.ndarray
    amounts: np.ndarray


@dataclass(frozen=True)
class Solution:
    """``features[N, F]``, ``saved[N, K, S]`` (NaN where not reached),
    ``status[N]`` (int8, :mod:`kernels.status`), ``n_steps[N]`` accepted steps."""

    features: np.ndarray
    saved: np.ndarray
    status: np.ndarray
    n_steps: np.ndarray


def _as_rows(name, values, rows, cols):
    array = np.ascontiguousarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = np.ascontiguousarray(np.broadcast_to(array, (rows, cols)))
    if array.shape != (rows, cols):
        raise ValueError(f"{name} has shape {array.shape}; expected ({rows}, {cols})")
    return array


def _doses(model, doses, n_patients, t0):
    if doses is None:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros((n_patients, 0))
    times = np.ascontiguousarray(doses.times, dtype=np.float64).ravel()
    states = np.array([model.state_index(s) if isinstance(s, str) else int(s)
                       for s in np.atleast_1d(doses.states)], dtype=np.int64)
    amounts = _as_rows("doses.amounts", doses.amounts, n_patients, times.size)
    if states.size != times.size:
        raise ValueError(f"doses: {times.size} times but {states.size} states")
    if np.any(~np.isfinite(times)) or np.any(np.diff(times) < 0) or np.any(times < t0):
        raise ValueError("doses.times must be finite, non-decreasing and >= t0")
    if np.any((states < 0) | (states >= len(model.states))):
        raise ValueError(f"doses.states must index the model's {len(model.states)} states")
    return times, states, amounts


def solve(model, y0, params, t0, t1, *, rtol=1e-6, atol=1e-9, save_at=(), doses=None,
          features=(), max_steps=100_000, threads=None):
    """Integrate N patients of ``model`` from t0 to t1, each with its own adaptive step.

    Parameters
    ----------
    model : kernels.models.Model
    y0 : float[N, S] or float[S]   initial states (a vector is shared by all patients)
    params : float[N, P] or float[P]
    t0, t1 : float                 time span (days in the CAR T models)
    rtol : float > 0;  atol : float >= 0 or float[S]
    save_at : float[K]             sorted times in [t0, t1] at which to store the state
    doses : Doses or None          per-patient amounts at shared times
    features : sequence of kernels.features.Feature, computed inside the step loop
    max_steps : int                most attempted steps per patient (status MAX_STEPS beyond)
    threads : int or None          Numba threads (default: Numba's current setting)

    Returns
    -------
    Solution; a patient that fails is reported in ``status`` and never raises.
    """
    n_states, n_params = len(model.states), len(model.parameters)
    y0 = np.asarray(y0, dtype=np.float64)
    n_patients = y0.shape[0] if y0.ndim == 2 else np.asarray(params).shape[0]
    y0 = _as_rows("y0", y0, n_patients, n_states)
    params = _as_rows("params", params, n_patients, n_params)
    t0, t1, rtol = float(t0), float(t1), float(rtol)
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 >= t0):
        raise ValueError(f"need finite t0 <= t1, got t0={t0}, t1={t1}")
    if not (rtol > 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be positive and finite, got {rtol}")
    atol = np.ascontiguousarray(np.broadcast_to(np.asarray(atol, np.float64), (n_states,)))
    if np.any(~(atol >= 0)) or np.any(~np.isfinite(atol)):
        raise ValueError("atol must be finite and >= 0")
    save_at = np.ascontiguousarray(save_at, dtype=np.float64).ravel()
    if np.any(np.diff(save_at) < 0) or np.any((save_at < t0) | (save_at > t1)):
        raise ValueError("save_at must be sorted and lie in [t0, t1]")
    dose_times, dose_states, dose_amounts = _doses(model, doses, n_patients, t0)
    kinds, weights, args = compile_features(tuple(features), model.state_names)
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")

    out_features = np.full((n_patients, kinds.size), np.nan)
    saved = np.full((n_patients, save_at.size, n_states), np.nan)
    status = np.zeros(n_patients, np.int8)
    n_steps = np.zeros(n_patients, np.int64)
    kernel = _kernel()
    previous = nb.get_num_threads()
    n_threads = previous if threads is None else int(threads)
    # a few chunks per thread balance the load; results do not depend on chunking
    chunk = max(LANES, -(-n_patients // (4 * n_threads)))
    nb.set_num_threads(n_threads)
    try:
        kernel(model.rhs, y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
               dose_amounts, kinds, weights, args, int(max_steps), chunk,
               out_features, saved, status, n_steps)
    finally:
        nb.set_num_threads(previous)
    return Solution(out_features, saved, status, n_steps)
