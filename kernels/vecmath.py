"""Branch-free ``log2``, ``exp2`` and ``exp`` that LLVM vectorises across patients.

libm's ``pow``/``log``/``exp`` are opaque calls: inside a loop over patients they
stop vectorisation (README.md#how-the-kernel-works; measured when the kernel was
built, the step controller's ``x ** a`` cost about 35% of a step). These
replacements use only +, *, /, selects and reinterpretations of a double's
bits, so they vectorise and give bit-identical results in vector and scalar
code.

Accuracy: relative error below 1e-14 on the stated ranges (tested against numpy).
"""
import math

from llvmlite import ir
import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

from kernels.jit import jit_options

_LN2 = math.log(2.0)
_INV_LN2 = 1.0 / _LN2
_SQRT2 = math.sqrt(2.0)
# ln 2 split for the argument reduction of exp (Cody and Waite): _LN2_HI has
# trailing zero bits, so k * _LN2_HI is exact for |k| < 2**11
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


@intrinsic
def _float_bits(typingctx, x):
    """The IEEE-754 bits of a float64 as an int64 (an LLVM bitcast, which vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float64 whose IEEE-754 bits are ``bits`` (int64)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_MANTISSA = 0x000FFFFFFFFFFFFF
_EXPONENT_OF_ONE = 0x3FF0000000000000


@nb.njit(**jit_options(inline="always"))
def log2(x):
    """log2(x) for finite x > 0; x is clamped to [2**-63, 2**63].

    x = 2**e * m read off the IEEE-754 bits (m in [1, 2)), m moved to
    [sqrt(1/2), sqrt(2)), then ln(m) = 2 atanh(s), s = (m - 1)/(m + 1),
    |s| <= 0.172, summed to s**17.
    """
    x = max(x, 1.0842021724855044e-19)
    x = min(x, 9.223372036854776e18)
    bits = _float_bits(x)
    e = float((bits >> 52) - 1023)
    m = _bits_float((bits & _MANTISSA) | _EXPONENT_OF_ONE)
    big = m >= _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = 1.0 / 17.0
    series = series * s2 + 1.0 / 15.0
    series = series * s2 + 1.0 / 13.0
    series = series * s2 + 1.0 / 11.0
    series = series * s2 + 1.0 / 9.0
    series = series * s2 + 1.0 / 7.0
    series = series * s2 + 1.0 / 5.0
    series = series * s2 + 1.0 / 3.0
    series = series * s2 + 1.0
    return e + 2.0 * s * series * _INV_LN2


@nb.njit(**jit_options(inline="always"))
def _exp_reduced(k, r):
    """2**k * exp(r) for an integer-valued k in [-1022, 1023] and |r| <= 0.347:
    Taylor series of exp(r) to r**13 (truncation below 1e-17), 2**k from its
    IEEE-754 bits."""
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _bits_float((np.int64(k) + 1023) << 52)


@nb.njit(**jit_options(inline="always"))
def exp2(z):
    """2**z for z clamped to [-16, 16]: 2**z = 2**k * exp(r) with k the integer
    nearest z and r = (z - k) ln2."""
    z = max(z, -16.0)
    z = min(z, 16.0)
    k = np.floor(z + 0.5)
    return _exp_reduced(k, (z - k) * _LN2)


@nb.njit(**jit_options(inline="always"))
def exp(x):
    """e**x for x clamped to [-708, 709] (e**-708 = 3e-308, the smallest normal
    double's neighbourhood; beyond 709 a double overflows): e**x = 2**k * exp(r),
    k the integer nearest x / ln2, r = x - k ln2 in two parts (exact product
    with the high part), so the error does not grow with |x|."""
    x = max(x, -708.0)
    x = min(x, 709.0)
    k = np.floor(x * _INV_LN2 + 0.5)
    return _exp_reduced(k, (x - k * _LN2_HI) - k * _LN2_LO)
