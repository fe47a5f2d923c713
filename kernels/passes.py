"""Fused elementwise passes over a block's flat (state, lane) rows.

A block stores each per-state quantity as ``S * LANES`` contiguous doubles, so
one loop covers every state of every lane: long enough to vectorise well and
free of per-row loop overhead. Coefficient rows are tuples: each tuple length
is its own compile-time specialisation, so the inner sum is unrolled.
"""
import numba as nb

from kernels.jit import jit_options


@nb.njit(**jit_options(inline="always"))
def combine(out, base, h, K, coeffs):
    """out = base + h * sum_j coeffs[j] K[j], for every (state, lane)."""
    for idx in range(base.shape[0]):
        acc = 0.0
        for j in range(len(coeffs)):
            acc += coeffs[j] * K[j, idx]
        out[idx] = base[idx] + h[idx] * acc


@nb.njit(**jit_options(inline="always"))
def scaled_error_squares(out, y, y_new, h, K, coeffs, atol, rtol):
    """out = (h sum_j coeffs[j] k_j / (atol + rtol max(|y|, |y_new|)))^2 per (state, lane)."""
    for idx in range(y.shape[0]):
        acc = 0.0
        for j in range(len(coeffs)):
            acc += coeffs[j] * K[j, idx]
        scale = atol[idx] + rtol * max(abs(y[idx]), abs(y_new[idx]))
        r = h[idx] * acc / scale
        out[idx] = r * r
