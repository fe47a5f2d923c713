"""The lock-step block: a structure of arrays holding up to ``LANES`` patients.

Every per-patient quantity is a row with the lanes contiguous (``y[state, lane]``),
so loops over lanes vectorise (4 doubles per AVX2 instruction). Each lane carries
its own patient, time, step size and controller history: nothing is shared
between lanes except the instruction stream.
"""
from collections import namedtuple

import numba as nb
import numpy as np

from kernels.jit import jit_options
from kernels.tableau import N_STAGES

# Lanes per block, measured on the reference model (2-core AMD EPYC with AVX-512,
# N = 1e5, 2 threads, patients/s): 16: 35k, 32: 40k, 64: 53k, 96: 50k, 128: 48k.
# Wider blocks amortise each pass's set-up over more patients until the block
# (about 40 KB at 64 lanes for the cart model) outgrows the L1 cache.
LANES = 64

Problem = namedtuple("Problem", [
    "y0", "params", "t0", "t1", "rtol", "atol", "save_at",
    "dose_times", "dose_states", "dose_amounts",
    "tracker_kinds", "tracker_weights", "tracker_args", "tracker_states",
    "output_trackers", "output_times", "max_steps",
    "event_kinds", "event_weights", "event_args", "event_params", "event_actions", "event_values",
])

Outputs = namedtuple("Outputs", ["features", "saved", "status", "n_steps", "event_times"])

Block = namedtuple("Block", [
    # patient state
    "patient", "t", "y", "p", "K",
    # step control
    "h", "h_try", "log2_err_prev", "rejected_last", "t_stop", "next_dose", "next_save",
    "n_accepted", "n_attempted", "status",
    # one trial step
    "t_new", "y_new", "y_stage", "t_stage", "row", "row2", "log2_err", "accepted", "landed",
    # lane bookkeeping
    "rare", "restart", "done",
    # features
    "f_value", "f_time", "f_armed", "coeffs", "y_point",
    # flat views of the state rows for fused passes over every (state, lane)
    "y_flat", "y_new_flat", "y_stage_flat", "K_flat", "h_flat", "atol_flat", "err_flat",
    "integral_flat", "integral",
    # events: the time each is pending at (landing), the time it fired (NaN: not yet)
    "e_pending", "e_fired",
])


@nb.njit(**jit_options(allocates=True))
def allocate_block(n_states, n_params, n_features, n_events, atol):
    L = LANES
    SL = n_states * L
    y, y_new, y_stage, integral = np.zeros(SL), np.zeros(SL), np.zeros(SL), np.zeros(SL)
    K = np.zeros((N_STAGES, SL))
    atol_flat = np.empty(SL)
    for s in range(n_states):
        atol_flat[s * L:(s + 1) * L] = atol[s]
    return Block(
        np.zeros(L, np.int64), np.zeros(L), y.reshape((n_states, L)), np.zeros((n_params, L)),
        K.reshape((N_STAGES, n_states, L)),
        np.zeros(L), np.zeros(L), np.zeros(L), np.zeros(L, np.bool_), np.zeros(L),
        np.zeros(L, np.int64), np.zeros(L, np.int64),
        np.zeros(L, np.int64), np.zeros(L, np.int64), np.zeros(L, np.int8),
        np.zeros(L), y_new.reshape((n_states, L)), y_stage.reshape((n_states, L)), np.zeros(L),
        np.zeros(L), np.zeros(L), np.zeros(L), np.zeros(L, np.bool_), np.zeros(L, np.bool_),
        np.zeros(L, np.bool_), np.zeros(L, np.bool_), np.zeros(L, np.bool_),
        np.zeros((n_features, L)), np.zeros((n_features, L)), np.zeros((n_features, L), np.bool_),
        np.zeros(4), np.zeros(n_states),
        y, y_new, y_stage, K, np.zeros(SL), atol_flat, np.zeros(SL),
        integral, integral.reshape((n_states, L)),
        np.full((n_events, L), np.nan), np.full((n_events, L), np.nan),
    )


@nb.njit(**jit_options(inline="always"))
def move_lane(B, src, dst):
    """Copy everything lane ``src`` carries between steps into lane ``dst``."""
    B.patient[dst] = B.patient[src]
    B.t[dst] = B.t[src]
    B.h[dst] = B.h[src]
    B.log2_err_prev[dst] = B.log2_err_prev[src]
    B.rejected_last[dst] = B.rejected_last[src]
    B.t_stop[dst] = B.t_stop[src]
    B.next_dose[dst] = B.next_dose[src]
    B.next_save[dst] = B.next_save[src]
    B.n_accepted[dst] = B.n_accepted[src]
    B.n_attempted[dst] = B.n_attempted[src]
    B.status[dst] = B.status[src]
    B.restart[dst] = B.restart[src]
    B.done[dst] = B.done[src]
    for s in range(B.y.shape[0]):
        B.y[s, dst] = B.y[s, src]
        B.K[0, s, dst] = B.K[0, s, src]
    for i in range(B.p.shape[0]):
        B.p[i, dst] = B.p[i, src]
    for e in range(B.e_fired.shape[0]):
        B.e_pending[e, dst] = B.e_pending[e, src]
        B.e_fired[e, dst] = B.e_fired[e, src]
    for f in range(B.f_value.shape[0]):
        B.f_value[f, dst] = B.f_value[f, src]
        B.f_time[f, dst] = B.f_time[f, src]
        B.f_armed[f, dst] = B.f_armed[f, src]
