"""One Dormand-Prince 5(4) step for every lane of a block: try it, then commit it.

``trial_step`` computes stages k2..k7 (k1 is carried over: first same as last),
the fifth-order solution, the error estimate and the PI step control, for all
lanes at once and without branches; ``commit`` moves the accepted lanes on.

Error norm: err = sqrt(mean_s ((h sum_j E_j k_js) / (atol_s + rtol max(|y_s|, |y5_s|)))^2),
as in Hairer's DOPRI5 and scipy's RK45. A step is accepted when err <= 1.
Steps land exactly on each lane's next stop (a dose time or t1); a step that
would end within 1% of it is stretched onto it, as in DOPRI5.
"""
import numba as nb
import numpy as np
from numba import literal_unroll

from kernels.controller import ERR_CEILING, LOG2_MIN_ERR_PREV, step_factor_log2
from kernels.jit import jit_options
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
    lanes beyond n hold a finished patient's stale numbers (possibly not
    finite), which are computed on but never read back.
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
    inv_S = 1.0 / S
    for l in range(n):
        # err^2, without the square root: err <= 1 iff err^2 <= 1, log2 err = log2(err^2) / 2
        err2 = row2[l] * inv_S
        err2 = err2 if err2 < ERR_CEILING else ERR_CEILING   # NaN -> reject
        hl = h_try[l]
        attempts = n_attempted[l] + 1
        n_attempted[l] = attempts
        st = status[l]
        underflow = not (hl > 10.0 * _EPS * abs(t[l]))
        st = STEP_UNDERFLOW if ((st == OK) & underflow) else st
        st = MAX_STEPS if ((st == OK) & (attempts > max_steps)) else st
        status[l] = st
        ok = (err2 <= 1.0) & (st == OK)
        le = 0.5 * log2(err2)
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
            if B.accepted[l]:
                B.y[s, l] = B.y_new[s, l]
                B.K[0, s, l] = B.K[6, s, l]
    for l in range(n):
        ok = B.accepted[l]
        if ok:
            B.t[l] = B.t_new[l]
            B.log2_err_prev[l] = max(B.log2_err[l], LOG2_MIN_ERR_PREV)
        B.n_accepted[l] += 1 if ok else 0
        B.rejected_last[l] = not ok
