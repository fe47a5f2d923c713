"""Features computed inside the step loop, never from a stored trajectory.

Each feature watches a quantity q(t) = w . y(t), a weighted sum of states, over
[t0, t1]:

=============  ==============================================================
``max``        max q; ``argmax`` its time. Refined on the step's interpolant
               when dq/dt changes sign inside a step, so it does not depend on
               the step grid.
``min``        min q; ``argmin`` its time (refined likewise).
``auc``        int_{t0}^{min(t1, until)} q dt, exact quadrature of the quartic
               interpolant (``P_INTEGRAL`` in :mod:`kernels.tableau`).
``value_at``   q(time); NaN when time lies outside [t0, t1].
``cross_up``   first time q(t) >= level (root of the interpolant); NaN if never.
``cross_down`` first time q(t) <= level; NaN if never.
=============  ==============================================================

At a dose time the state jumps; values at that time are taken after the dose.
"""
from dataclasses import dataclass
import math

import numba as nb
import numpy as np

from kernels import dense
from kernels.jit import jit_options
from kernels.tableau import P_INTEGRAL

MAX, ARGMAX, MIN, ARGMIN, AUC, VALUE_AT, CROSS_UP, CROSS_DOWN = range(8)
KINDS = {"max": MAX, "argmax": ARGMAX, "min": MIN, "argmin": ARGMIN, "auc": AUC,
         "value_at": VALUE_AT, "cross_up": CROSS_UP, "cross_down": CROSS_DOWN}
_ARG_NAME = {AUC: "until", VALUE_AT: "time", CROSS_UP: "level", CROSS_DOWN: "level"}


@dataclass(frozen=True)
class Feature:
    """One feature: ``kind`` (see module docstring), the quantity's weights by
    state name, and the kind's argument (``until`` for auc, ``time`` for
    value_at, ``level`` for crossings)."""

    kind: str
    weights: tuple
    arg: float = math.nan

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown feature kind {self.kind!r}; expected one of {sorted(KINDS)}")
        code = KINDS[self.kind]
        if code in _ARG_NAME and math.isnan(self.arg):
            raise ValueError(f"feature {self.kind!r} needs {_ARG_NAME[code]}")


def _weights(quantity):
    """'I' -> (('I', 1.0),); {'E': 1, 'M': 1} -> (('E', 1.0), ('M', 1.0))."""
    if isinstance(quantity, str):
        return ((quantity, 1.0),)
    return tuple((str(k), float(v)) for k, v in dict(quantity).items())


def maximum(quantity):
    return Feature("max", _weights(quantity))


def argmax(quantity):
    return Feature("argmax", _weights(quantity))


def minimum(quantity):
    return Feature("min", _weights(quantity))


def argmin(quantity):
    return Feature("argmin", _weights(quantity))


def auc(quantity, until=math.inf):
    return Feature("auc", _weights(quantity), float(until))


def value_at(quantity, time):
    return Feature("value_at", _weights(quantity), float(time))


def cross_up(quantity, level):
    return Feature("cross_up", _weights(quantity), float(level))


def cross_down(quantity, level):
    return Feature("cross_down", _weights(quantity), float(level))


def compile_features(features, state_names):
    """Feature specs -> (kinds int64[F], weights float64[F, S], args float64[F])."""
    index = {name: i for i, name in enumerate(state_names)}
    kinds = np.empty(len(features), np.int64)
    weights = np.zeros((len(features), len(state_names)))
    args = np.full(len(features), math.nan)
    for f, feature in enumerate(features):
        kinds[f] = KINDS[feature.kind]
        args[f] = feature.arg
        for name, w in feature.weights:
            if name not in index:
                raise ValueError(f"feature {f} ({feature.kind}) names unknown state {name!r}; "
                                 f"states are {list(state_names)}")
            weights[f, index[name]] += w
    return kinds, weights, args


# ---------------------------------------------------------------- jitted passes

@nb.njit(**jit_options())
def _project(weights, Y, n, out):
    """out[l] = sum_s weights[s] * Y[s, l] for the first n lanes."""
    for l in range(n):
        out[l] = 0.0
    for s in range(weights.shape[0]):
        w = weights[s]
        if w != 0.0:
            for l in range(n):
                out[l] += w * Y[s, l]


@nb.njit(**jit_options())
def _dot(weights, Y, lane):
    q = 0.0
    for s in range(weights.shape[0]):
        if weights[s] != 0.0:
            q += weights[s] * Y[s, lane]
    return q


@nb.njit(**jit_options())
def start_features(P, B, lane):
    """Reset a lane's features at t0 and observe the initial (post-dose) state."""
    for f in range(P.feature_kinds.shape[0]):
        kind = P.feature_kinds[f]
        B.f_value[f, lane] = -np.inf if (kind == MAX or kind == ARGMAX) else (
            np.inf if (kind == MIN or kind == ARGMIN) else (0.0 if kind == AUC else np.nan))
        B.f_time[f, lane] = np.nan
    observe_point(P, B, B.y, lane, B.t[lane])


@nb.njit(**jit_options())
def observe_point(P, B, Y, lane, t):
    """Update features with the exact state ``Y[:, lane]`` at time t."""
    for f in range(P.feature_kinds.shape[0]):
        kind = P.feature_kinds[f]
        if kind == AUC:
            continue
        q = _dot(P.feature_weights[f], Y, lane)
        arg = P.feature_args[f]
        if kind == MAX or kind == ARGMAX:
            if q > B.f_value[f, lane]:
                B.f_value[f, lane] = q
                B.f_time[f, lane] = t
        elif kind == MIN or kind == ARGMIN:
            if q < B.f_value[f, lane]:
                B.f_value[f, lane] = q
                B.f_time[f, lane] = t
        elif kind == VALUE_AT:
            if arg == t:
                B.f_value[f, lane] = q
        elif kind == CROSS_UP:
            if np.isnan(B.f_time[f, lane]) and q >= arg:
                B.f_time[f, lane] = t
        elif kind == CROSS_DOWN:
            if np.isnan(B.f_time[f, lane]) and q <= arg:
                B.f_time[f, lane] = t


@nb.njit(**jit_options())
def features_vector_pass(P, B, n):
    """Per accepted step, for all lanes at once: update running maxima, minima
    and integrals at the step's end, and flag lanes whose step holds rare work
    (an interior extremum, a landmark, a crossing) for :func:`features_inside_step`.
    """
    row, err = B.row, B.row2   # scratch rows
    K0, K6 = B.K[0], B.K[6]
    for f in range(P.feature_kinds.shape[0]):
        kind = P.feature_kinds[f]
        w = P.feature_weights[f]
        arg = P.feature_args[f]
        value, time = B.f_value[f], B.f_time[f]
        if kind == MAX or kind == ARGMAX or kind == MIN or kind == ARGMIN:
            sign = 1.0 if (kind == MAX or kind == ARGMAX) else -1.0
            _project(w, B.y_new, n, row)
            for l in range(n):
                better = B.accepted[l] and sign * row[l] > sign * value[l]
                value[l] = row[l] if better else value[l]
                time[l] = B.t_new[l] if better else time[l]
            _project(w, K0, n, row)
            _project(w, K6, n, err)
            for l in range(n):
                turns = sign * row[l] > 0.0 and sign * err[l] < 0.0
                B.rare[l] = B.rare[l] or (B.accepted[l] and turns)
        elif kind == AUC:
            # int over the step = h * (q0 + h * sum_j P_INTEGRAL_j (w . k_j))
            for l in range(n):
                err[l] = 0.0
            for j in range(7):
                c = P_INTEGRAL[j]
                if c != 0.0:
                    _project(w, B.K[j], n, row)
                    for l in range(n):
                        err[l] += c * row[l]
            _project(w, B.y, n, row)
            for l in range(n):
                h = B.h_try[l]
                whole = B.accepted[l] and B.t_new[l] <= arg
                value[l] = value[l] + h * (row[l] + h * err[l]) if whole else value[l]
                partial = B.accepted[l] and B.t[l] < arg and arg < B.t_new[l]
                B.rare[l] = B.rare[l] or partial
        elif kind == VALUE_AT:
            for l in range(n):
                inside = B.accepted[l] and B.t[l] < arg and arg <= B.t_new[l]
                B.rare[l] = B.rare[l] or inside
        else:  # CROSS_UP, CROSS_DOWN
            sign = 1.0 if kind == CROSS_UP else -1.0
            _project(w, B.y, n, row)
            _project(w, B.y_new, n, err)
            for l in range(n):
                crosses = sign * row[l] < sign * arg and sign * err[l] >= sign * arg
                pending = time[l] != time[l]
                B.rare[l] = B.rare[l] or (B.accepted[l] and pending and crosses)


@nb.njit(**jit_options())
def features_inside_step(P, B, lane):
    """The rare work for one lane's accepted step [t, t_new], on its interpolant."""
    t, h = B.t[lane], B.h_try[lane]
    c = B.coeffs
    for f in range(P.feature_kinds.shape[0]):
        kind = P.feature_kinds[f]
        w = P.feature_weights[f]
        arg = P.feature_args[f]
        q0 = _dot(w, B.y, lane)
        q1 = _dot(w, B.y_new, lane)
        if kind == MAX or kind == ARGMAX or kind == MIN or kind == ARGMIN:
            sign = 1.0 if (kind == MAX or kind == ARGMAX) else -1.0
            dense.quantity_coefficients(w, B.K, lane, c)
            if sign * dense.quantity_slope(c, 0.0) > 0.0 and sign * dense.quantity_slope(c, 1.0) < 0.0:
                theta = dense.slope_root(c)
                q = dense.quantity_at(q0, h, c, theta)
                if sign * q > sign * B.f_value[f, lane]:
                    B.f_value[f, lane] = q
                    B.f_time[f, lane] = t + theta * h
        elif kind == AUC:
            if t < arg and arg < B.t_new[lane]:
                dense.quantity_coefficients(w, B.K, lane, c)
                theta = (arg - t) / h
                B.f_value[f, lane] += h * dense.quantity_integral(q0, h, c, theta)
        elif kind == VALUE_AT:
            if t < arg and arg < B.t_new[lane]:
                dense.quantity_coefficients(w, B.K, lane, c)
                B.f_value[f, lane] = dense.quantity_at(q0, h, c, (arg - t) / h)
        else:
            sign = 1.0 if kind == CROSS_UP else -1.0
            if np.isnan(B.f_time[f, lane]) and sign * q0 < sign * arg and sign * q1 >= sign * arg:
                dense.quantity_coefficients(w, B.K, lane, c)
                B.f_time[f, lane] = t + dense.level_root(q0, h, c, arg) * h


@nb.njit(**jit_options())
def write_features(P, B, lane, out):
    """A finished lane's features into its output row (NaN unless status is ok)."""
    for f in range(P.feature_kinds.shape[0]):
        kind = P.feature_kinds[f]
        use_time = kind == ARGMAX or kind == ARGMIN or kind == CROSS_UP or kind == CROSS_DOWN
        value = B.f_time[f, lane] if use_time else B.f_value[f, lane]
        out[f] = value if B.status[lane] == 0 else np.nan
