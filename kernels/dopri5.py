"""Batched Dormand-Prince 5(4) integration of many patients at once.

Each patient has its own adaptive step: no step is shared across patients.
Patients run in lock-step blocks of :data:`kernels.block.LANES` lanes (a
structure of arrays, lanes contiguous), so each pass of a step vectorises across
patients; a lane whose patient finishes is refilled from the queue at once.
Blocks of patients ("chunks") run in parallel under ``numba.prange``.

One step, per block (``_run_block``):

1. ``restart_lanes``  (vector, only when a lane needs it) k1 and initial step
2. ``trial_step``     (vector) the six new stages, error norm, PI control
3. ``features_vector_pass`` (vector) running max/min/AUC, flags for rare work
4. ``step_event``     (scalar, flagged lanes) interpolant refinement, landmarks,
                       save points, doses, end of integration
5. ``commit``         (vector) accepted lanes move to t_new (FSAL: k1 <- k7)
6. ``turnover``       (scalar, finished lanes) outputs, refill or compaction

The step itself is in :mod:`kernels.step`, step-size control in
:mod:`kernels.controller`. This module holds the driver and the public API,
:func:`solve`.
"""
from dataclasses import dataclass
import functools
import math

import numba as nb
import numpy as np
from numba import types

from kernels.block import LANES, Outputs, Problem, allocate_block
from kernels.cache import compile_cached
from kernels.controller import restart_lanes
from kernels.events import compile_events, events_pass
from kernels.features import compile_features, features_vector_pass
from kernels.jit import jit_options
from kernels.lanes import finish_lane, start_lane, step_event, turnover
from kernels.models.base import RHS_TYPE
from kernels.step import commit, trial_step

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
    has_events = P.event_kinds.shape[0] > 0
    while n > 0:
        if _any(B.restart, n):
            restart_lanes(rhs, P, B, n)
        trial_step(rhs, P, B, n)
        if has_events:
            events_pass(P, B, n)
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
                  output_trackers, output_times, max_steps, event_kinds, event_weights,
                  event_args, event_params, event_actions, event_values, chunk, features, saved,
                  status, n_steps, event_times):
        cache_key  # noqa: B018 -- part of Numba's cache index
        P = Problem(y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
                    dose_amounts, tracker_kinds, tracker_weights, tracker_args, tracker_states,
                    output_trackers, output_times, max_steps, event_kinds, event_weights,
                    event_args, event_params, event_actions, event_values)
        out = Outputs(features, saved, status, n_steps, event_times)
        n_patients = y0.shape[0]
        n_chunks = (n_patients + chunk - 1) // chunk
        for c in nb.prange(n_chunks):
            B = allocate_block(y0.shape[1], params.shape[1], tracker_kinds.shape[0],
                               event_kinds.shape[0], atol)
            _run_block(rhs, P, out, B, c * chunk, min(n_patients, (c + 1) * chunk))

    return solve_all


_f8_1d, _f8_2d, _f8_3d = types.float64[::1], types.float64[:, ::1], types.float64[:, :, ::1]
_i8_1d = types.int64[::1]
_SOLVE_SIGNATURE = types.void(
    RHS_TYPE, _f8_2d, _f8_2d, types.float64, types.float64, types.float64, _f8_1d, _f8_1d,
    _f8_1d, _i8_1d, _f8_2d, _i8_1d, _f8_2d, _f8_1d, _i8_1d, _i8_1d, types.boolean[::1],
    types.int64, _i8_1d, _f8_2d, _f8_1d, _i8_1d, _i8_1d, _f8_1d,
    types.int64, _f8_2d, _f8_3d, types.int8[::1], _i8_1d, _f8_2d)


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
    ``status[N]`` (int8, :mod:`kernels.status`), ``n_steps[N]`` accepted steps,
    ``event_times[N, E]`` when each event fired (NaN: never)."""

    features: np.ndarray
    saved: np.ndarray
    status: np.ndarray
    n_steps: np.ndarray
    event_times: np.ndarray


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
          features=(), events=(), max_steps=100_000, threads=None):
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
    events : sequence of kernels.events.Event, parameter changes at a time or a crossing
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
    events = compile_events(tuple(events), model)
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")

    out_features = np.full((n_patients, compiled.output_trackers.size), np.nan)
    saved = np.full((n_patients, save_at.size, n_states), np.nan)
    status = np.zeros(n_patients, np.int8)
    n_steps = np.zeros(n_patients, np.int64)
    event_times = np.full((n_patients, events.kinds.size), np.nan)
    previous = nb.get_num_threads()
    n_threads = previous if threads is None else int(threads)
    # a few chunks per thread balance the load; results do not depend on chunking
    chunk = max(LANES, -(-n_patients // (4 * n_threads)))
    nb.set_num_threads(n_threads)
    try:
        kernel()(model.rhs, y0, params, t0, t1, rtol, atol, save_at, dose_times, dose_states,
               dose_amounts, compiled.tracker_kinds, compiled.tracker_weights,
               compiled.tracker_args, compiled.tracker_states, compiled.output_trackers,
               compiled.output_times, int(max_steps), events.kinds, events.weights,
               events.args, events.params, events.actions, events.values, chunk,
               out_features, saved, status, n_steps, event_times)
    finally:
        nb.set_num_threads(previous)
    return Solution(out_features, saved, status, n_steps, event_times)
