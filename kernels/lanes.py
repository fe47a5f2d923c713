"""Scalar lane work: loading a patient, doses, landmarks, finishing, refilling.

Everything here runs for one lane at a time and only when a lane needs it
(about once per patient, per dose and per landmark), outside the vector pass.
"""
import math

import numba as nb

from kernels import dense
from kernels.block import move_lane
from kernels.controller import LOG2_MIN_ERR_PREV
from kernels.events import fire_due_events, limit_stop, start_events
from kernels.features import features_inside_step, observe_point, start_features, write_features
from kernels.jit import jit_options
from kernels.status import NON_FINITE, OK


@nb.njit(**jit_options(inline="always"))
def apply_doses(P, B, Y, lane, t):
    """Add every dose due at time t to ``Y[:, lane]``; set the lane's next stop
    (the next dose time or t1). Returns whether any dose was given."""
    given = False
    d = B.next_dose[lane]
    while d < P.dose_times.shape[0] and P.dose_times[d] == t:
        Y[P.dose_states[d], lane] += P.dose_amounts[B.patient[lane], d]
        given = True
        d += 1
    B.next_dose[lane] = d
    B.t_stop[lane] = min(P.dose_times[d], P.t1) if d < P.dose_times.shape[0] else P.t1
    return given


@nb.njit(**jit_options(inline="always"))
def save_point(P, B, Y, saved, lane, t):
    """Store ``Y[:, lane]`` for a ``save_at`` time equal to t (after any dose at t)."""
    k = B.next_save[lane]
    while k < P.save_at.shape[0] and P.save_at[k] == t:
        for s in range(Y.shape[0]):
            saved[B.patient[lane], k, s] = Y[s, lane]
        k += 1
    B.next_save[lane] = k


@nb.njit(**jit_options(inline="always"))
def save_inside_step(P, B, saved, lane):
    """Interpolate ``save_at`` times strictly inside the accepted step (t, t_new)."""
    k = B.next_save[lane]
    t, h = B.t[lane], B.h_try[lane]
    while k < P.save_at.shape[0] and P.save_at[k] < B.t_new[lane]:
        dense.interpolate_state(B.y, B.K, lane, h, (P.save_at[k] - t) / h, B.y_point)
        for s in range(B.y_point.shape[0]):
            saved[B.patient[lane], k, s] = B.y_point[s]
        k += 1
    B.next_save[lane] = k


@nb.njit(**jit_options(inline="always"))
def start_lane(P, B, out, lane, patient):
    """Load a patient into a lane at t0: state, parameters, doses due at t0,
    features and save points at t0. Flags the lane for an initial step, or as
    done when its inputs are not finite or t0 == t1."""
    B.patient[lane] = patient
    B.t[lane] = P.t0
    B.n_accepted[lane] = 0
    B.n_attempted[lane] = 0
    B.status[lane] = OK
    B.next_dose[lane] = 0
    B.next_save[lane] = 0
    B.rejected_last[lane] = False
    B.log2_err_prev[lane] = LOG2_MIN_ERR_PREV
    B.restart[lane] = True
    B.done[lane] = False
    finite = True
    for s in range(B.y.shape[0]):
        B.y[s, lane] = P.y0[patient, s]
        finite = finite and math.isfinite(B.y[s, lane])
    for i in range(B.p.shape[0]):
        B.p[i, lane] = P.params[patient, i]
        finite = finite and math.isfinite(B.p[i, lane])
    if not finite:
        B.status[lane] = NON_FINITE
        B.done[lane] = True
        return
    apply_doses(P, B, B.y, lane, P.t0)
    start_events(P, B, B.y, lane, P.t0)
    start_features(P, B, lane)
    save_point(P, B, B.y, out.saved, lane, P.t0)
    B.done[lane] = P.t0 >= P.t1


@nb.njit(**jit_options(inline="always"))
def finish_lane(P, B, out, lane):
    """Write a finished lane's features, status and step count."""
    patient = B.patient[lane]
    out.status[patient] = B.status[lane]
    out.n_steps[patient] = B.n_accepted[lane]
    write_features(P, B, lane, out.features[patient])
    for e in range(B.e_fired.shape[0]):
        out.event_times[patient, e] = B.e_fired[e, lane]


@nb.njit(**jit_options(inline="always"))
def step_event(P, B, out, lane):
    """Rare work of a lane's step just tried, before it is committed:
    interpolated features and save points inside the step, doses at its end
    (added to ``y_new``, so the committed state is post-dose) and events due
    there (:mod:`kernels.events`), values at its end, and whether the lane is
    done (t1 reached or a bad status)."""
    B.rare[lane] = False
    if B.status[lane] != OK:
        B.done[lane] = True
        return
    if not B.accepted[lane]:
        return
    features_inside_step(P, B, lane)
    save_inside_step(P, B, out.saved, lane)
    t_new = B.t_new[lane]
    if B.landed[lane]:
        dosed = apply_doses(P, B, B.y_new, lane, t_new)
        B.restart[lane] = fire_due_events(P, B, lane, t_new) or dosed
        limit_stop(P, B, lane)
        B.done[lane] = t_new >= P.t1
    observe_point(P, B, B.y_new, lane, t_new)
    save_point(P, B, B.y_new, out.saved, lane, t_new)


@nb.njit(**jit_options(inline="always"))
def turnover(P, B, out, n, next_patient, end):
    """Finish done lanes and refill them from the chunk's queue; when the queue
    is empty, compact the block by moving the last active lane into the gap.
    Returns the new number of active lanes and the next queued patient."""
    for l in range(n - 1, -1, -1):
        if not B.done[l]:
            continue
        finish_lane(P, B, out, l)
        loaded = False
        while next_patient < end and not loaded:
            start_lane(P, B, out, l, next_patient)
            next_patient += 1
            if B.done[l]:
                finish_lane(P, B, out, l)
            else:
                loaded = True
        if not loaded:
            n -= 1
            if l != n:
                move_lane(B, n, l)
    return n, next_patient
