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
import functools
import math

import numba as nb
import numpy as np
from numba import literal_unroll, types

from kernels.block import LANES, Outputs, Problem, allocate_block
from kernels.cache import compile_cached
from kernels.controller import ERR_CEILING, LOG2_MIN_ERR_PREV, restart_lanes, step_factor_log2
from kernels.features import compile_features, features_vector_pass
from kernels.jit import jit_options
from kernels.lanes import finish_lane, start_lane, step_event, turnover
from kernels.models.base import RHS_TYPE
from kernels.passes import combine, scaled_error_squares
from kernels.status import MAX_STEPS, OK, STEP_UNDERFLOW
from kernels.tableau import A, C, E
from kernels.vecmath import exp2, log2

_EPS = np.finfo(np.float64).eps


# Row i of the tableau up to the diagonal, as tuples (see kernels.passes).
_STAGE_ROWS = tuple(tuple(float(a) for a in A[i, :i]) for i in range(1, 7))
_ERROR_ROW = tuple(float(e) for e in E)


@nb.njit(**jit_options(inline="always"))
def trial_step(rhs, P, B, n):
    """Stages k2..k7, the fifth-order solution y_new, the error norm, the new
    step size and the accept/reject decision for the first n lanes.

    Stage sums run over every (state, lane) of the block in one fused pass;
    lanes beyond n hold a finished patient's stale, finite numbers and are
    never read back.
    """
    t, h, h_try, t_stop, t_stage = B.t, B.h, B.h_try, B.t_stop, B.t_stage
    landed, accepted, rare, status = B.landed, B.accepted, B.rare, B.status
    S, L = B.y.shape[0], B.y.shape[1]
    for l in range(n):
        land = t[l] + 1.01 * h[l] >= t_stop[l]
        landed[l] = land
        h_try[l] = t_stop[l] - t[l] if land else h[l]
    for s in range(S):
        for l in range(n):
            B.h_flat[s * L + l] = h_try[l]
    i = 1
    for coeffs in literal_unroll(_STAGE_ROWS):
        c = C[i]
        for l in range(n):
            t_stage[l] = t[l] + c * h_try[l]
        last = len(coeffs) == 6
        combine(B.y_new_flat if last else B.y_stage_flat, B.y_flat, B.h_flat, B.K_flat, coeffs)
        rhs(n, t_stage, B.y_new if last else B.y_stage, B.p, B.K[i])
        i += 1

    scaled_error_squares(B.err_flat, B.y_flat, B.y_new_flat, B.h_flat, B.K_flat, _ERROR_ROW,
                         B.atol_flat, P.rtol)
    row2 = B.row2
    for l in range(n):
        row2[l] = 0.0
    for s in range(S):
        for l in range(n):
            row2[l] += B.err_flat[s * L + l]

    n_attempted, log2_err_prev, rejected_last = B.n_attempted, B.log2_err_prev, B.rejected_last
    log2_err, t_new, max_steps = B.log2_err, B.t_new, P.max_steps
    for l in range(n):
        err = np.sqrt(row2[l] / S)
        err = err if err < ERR_CEILING else ERR_CEILING   # NaN -> reject
        hl = h_try[l]
        attempts = n_attempted[l] + 1
        n_attempted[l] = attempts
        st = status[l]
        underflow = not (hl > 10.0 * _EPS * abs(t[l]))
        st = STEP_UNDERFLOW if ((st == OK) & underflow) else st
        st = MAX_STEPS if ((st == OK) & (attempts > max_steps)) else st
        status[l] = st
        ok = (err <= 1.0) & (st == OK)
        le = log2(err)
        h_new = hl * exp2(step_factor_log2(le, log2_err_prev[l], ok))
        h_new = min(h_new, hl) if (ok & rejected_last[l]) else h_new
        h[l] = h_new
        log2_err[l] = le
        accepted[l] = ok
        t_new[l] = t_stop[l] if landed[l] else t[l] + hl
        rare[l] = (st != OK) | (ok & landed[l])

    n_save = P.save_at.shape[0]
    if n_save > 0:
        save_at, next_save = P.save_at, B.next_save
        for l in range(n):
            k = min(next_save[l], n_save - 1)
            due = (next_save[l] < n_save) & (save_at[k] <= t_new[l])
            rare[l] = rare[l] | (accepted[l] & due)


@nb.njit(**jit_options(inline="always"))
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


@nb.njit(**jit_options(inline="always"))
def _any(flags, n):
    for l in range(n):
        if flags[l]:
            return True
    return False


@nb.njit(**jit_options())
def _run_block(rhs, P, out, B, begin, end):
    """Integrate patients [begin, end) through the lock-step block B."""
    n = 0
    next_patient = begin
    while n < LANES and next_patient < end:
        start_lane(P, B, out, n, next_patient)
        next_patient += 1
        if B.done[n]:
            finish_lane(P, B, out, n)
        else:
            n += 1
    has_features = P.tracker_kinds.shape[0] > 0
    while n > 0:
        if _any(B.restart, n):
            restart_lanes(rhs, P, B, n)
        trial_step(rhs, P, B, n)
        if has_features:
            features_vector_pass(P, B, n)
        for l in range(n):
            if B.rare[l]:
                step_event(P, B, out, l)
        commit(B, n)
        if _any(B.done, n):
            n, next_patient = turnover(P, B, out, n, next_patient, end)


def _driver_template(cache_key):
    """The parallel driver over chunks of patients (see kernels.cache for ``cache_key``)."""

    def solve_all(rhs, y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
                  dose_amounts, tracker_kinds, tracker_weights, tracker_args, tracker_states,
                  output_trackers, output_times, max_steps, chunk, features, saved, status,
                  n_steps):
        cache_key  # noqa: B018 -- part of Numba's cache index
        P = Problem(y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
                    dose_amounts, tracker_kinds, tracker_weights, tracker_args, tracker_states,
                    output_trackers, output_times, max_steps)
        out = Outputs(features, saved, status, n_steps)
        n_patients = y0.shape[0]
        n_chunks = (n_patients + chunk - 1) // chunk
        for c in nb.prange(n_chunks):
            B = allocate_block(y0.shape[1], params.shape[1], tracker_kinds.shape[0], atol)
            _run_block(rhs, P, out, B, c * chunk, min(n_patients, (c + 1) * chunk))

    return solve_all


_f8_1d, _f8_2d, _f8_3d = types.float64[::1], types.float64[:, ::1], types.float64[:, :, ::1]
_i8_1d = types.int64[::1]
_SOLVE_SIGNATURE = types.void(
    RHS_TYPE, _f8_2d, _f8_2d, types.float64, types.float64, types.float64, _f8_1d, _f8_1d,
    _f8_1d, _i8_1d, _f8_2d, _i8_1d, _f8_2d, _f8_1d, _i8_1d, _i8_1d, types.boolean[::1],
    types.int64, types.int64, _f8_2d, _f8_3d, types.int8[::1], _i8_1d)


@functools.cache
def kernel():
    """The parallel kernel, compiled on first use or loaded from the disk cache.

    The model's right-hand side is passed as a first-class function of a fixed
    signature (measured as fast as a direct call), so one compiled kernel
    serves every model.
    """
    return compile_cached(_driver_template, _SOLVE_SIGNATURE, parallel=True,
                          **jit_options(allocates=True))


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
    """A fresh, writable float64[rows, cols]; a vector of length cols is shared by every row."""
    array = np.array(values, dtype=np.float64, order="C")
    if array.ndim == 1 and array.shape[0] == cols:
        array = np.repeat(array[None, :], rows, axis=0)
    if array.shape != (rows, cols):
        raise ValueError(f"{name} has shape {array.shape}; expected ({rows}, {cols}) "
                         f"or ({cols},)")
    return array


def _doses(model, doses, n_patients, t0):
    if doses is None:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros((n_patients, 0))
    times = np.array(doses.times, dtype=np.float64).ravel()
    states = doses.states
    states = [states] if isinstance(states, (str, int, np.integer)) else list(np.ravel(states))
    states = np.array([model.state_index(str(s)) if isinstance(s, (str, np.str_)) else int(s)
                       for s in states], dtype=np.int64)
    if states.size != times.size:
        raise ValueError(f"doses: {times.size} times but {states.size} states")
    amounts = _as_rows("doses.amounts", doses.amounts, n_patients, times.size)
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
    y0, params = np.asarray(y0, dtype=np.float64), np.asarray(params, dtype=np.float64)
    n_patients = y0.shape[0] if y0.ndim == 2 else (params.shape[0] if params.ndim == 2 else 1)
    y0 = _as_rows("y0", y0, n_patients, n_states)
    params = _as_rows("params", params, n_patients, n_params)
    t0, t1, rtol = float(t0), float(t1), float(rtol)
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 >= t0):
        raise ValueError(f"need finite t0 <= t1, got t0={t0}, t1={t1}")
    if not (rtol > 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be positive and finite, got {rtol}")
    atol = np.array(atol, dtype=np.float64).ravel()
    if atol.size == 1:
        atol = np.full(n_states, atol[0])
    if atol.size != n_states or np.any(~(atol >= 0)) or np.any(~np.isfinite(atol)):
        raise ValueError(f"atol must be a finite number >= 0 or {n_states} of them")
    save_at = np.array(save_at, dtype=np.float64).ravel()
    if np.any(np.diff(save_at) < 0) or np.any((save_at < t0) | (save_at > t1)):
        raise ValueError("save_at must be sorted and lie in [t0, t1]")
    dose_times, dose_states, dose_amounts = _doses(model, doses, n_patients, t0)
    compiled = compile_features(tuple(features), model.state_names)
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")

    out_features = np.full((n_patients, compiled.output_trackers.size), np.nan)
    saved = np.full((n_patients, save_at.size, n_states), np.nan)
    status = np.zeros(n_patients, np.int8)
    n_steps = np.zeros(n_patients, np.int64)
    previous = nb.get_num_threads()
    n_threads = previous if threads is None else int(threads)
    # a few chunks per thread balance the load; results do not depend on chunking
    chunk = max(LANES, -(-n_patients // (4 * n_threads)))
    nb.set_num_threads(n_threads)
    try:
        kernel()(model.rhs, y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
               dose_amounts, compiled.tracker_kinds, compiled.tracker_weights,
               compiled.tracker_args, compiled.tracker_states, compiled.output_trackers,
               compiled.output_times, int(max_steps), chunk,
               out_features, saved, status, n_steps)
    finally:
        nb.set_num_threads(previous)
    return Solution(out_features, saved, status, n_steps)
