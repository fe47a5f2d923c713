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
``rebound``    first time q(t) climbs back to ``fraction * q(t0)`` after having
               fallen below it (a relapse); NaN if never. The level is
               per patient, relative to its own post-dose q(t0).
=============  ==============================================================

At a dose time the state jumps; values at that time are taken after the dose.

Features are compiled into *trackers*: ``max`` and ``argmax`` of the same
quantity share one tracker (value and time), and so on, so asking for both
costs one.
"""
from dataclasses import dataclass
import math

import numba as nb
import numpy as np

from kernels import dense
from kernels.jit import jit_options
from kernels.passes import combine
from kernels.tableau import P_INTEGRAL

# tracker kinds
MAX, MIN, AUC, VALUE_AT, CROSS_UP, CROSS_DOWN, REBOUND = range(7)
# feature kind -> (tracker kind, reports the tracker's time rather than its value)
KINDS = {"max": (MAX, False), "argmax": (MAX, True), "min": (MIN, False), "argmin": (MIN, True),
         "auc": (AUC, False), "value_at": (VALUE_AT, False),
         "cross_up": (CROSS_UP, True), "cross_down": (CROSS_DOWN, True),
         "rebound": (REBOUND, True)}
_ARG_NAME = {"auc": "until", "value_at": "time", "cross_up": "level", "cross_down": "level",
             "rebound": "fraction"}
# int_t^{t+h} y ds = h * (y + h * sum_j P_INTEGRAL_j k_j)
_INTEGRAL_ROW = tuple(float(c) for c in P_INTEGRAL)


@dataclass(frozen=True)
class Feature:
    """One feature: ``kind`` (see module docstring), the quantity's weights by
    state name, and the kind's argument (``until`` for auc, ``time`` for
    value_at, ``level`` for crossings, ``fraction`` for rebound)."""

    kind: str
    weights: tuple
    arg: float = math.nan

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown feature kind {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.kind in _ARG_NAME and math.isnan(self.arg):
            raise ValueError(f"feature {self.kind!r} needs {_ARG_NAME[self.kind]}")


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


def rebound(quantity, fraction):
    return Feature("rebound", _weights(quantity), float(fraction))


@dataclass(frozen=True)
class CompiledFeatures:
    """Arrays the kernel reads: per tracker its kind, weights[T, S], argument and
    single state (index, or -1 for a weighted sum); per feature its tracker and
    whether it reports the tracker's time."""

    tracker_kinds: np.ndarray
    tracker_weights: np.ndarray
    tracker_args: np.ndarray
    tracker_states: np.ndarray
    output_trackers: np.ndarray
    output_times: np.ndarray


def compile_features(features, state_names):
    """Feature specs -> :class:`CompiledFeatures`, sharing trackers between features."""
    index = {name: i for i, name in enumerate(state_names)}
    trackers = {}
    outputs = []
    for f, feature in enumerate(features):
        weights = np.zeros(len(state_names))
        for name, w in feature.weights:
            if name not in index:
                raise ValueError(f"feature {f} ({feature.kind}) names unknown state {name!r}; "
                                 f"states are {list(state_names)}")
            weights[index[name]] += w
        kind, reports_time = KINDS[feature.kind]
        arg = feature.arg if kind in (AUC, VALUE_AT, CROSS_UP, CROSS_DOWN, REBOUND) else math.nan
        key = (kind, tuple(weights), arg)
        trackers[key] = None          # one tracker per distinct (kind, quantity, argument)
        outputs.append((key, reports_time))
    # trackers in (kind, argument) order: landmarks of one day sit together, and
    # the vector pass tests a day once (outputs name their tracker, so the order
    # is free)
    keys = sorted(trackers, key=lambda k: (k[0], 0.0 if math.isnan(k[2]) else k[2]))
    rank = {key: r for r, key in enumerate(keys)}
    weights = np.array([k[1] for k in keys], dtype=np.float64).reshape(len(keys), len(state_names))
    single = [int(np.flatnonzero(w)[0]) if (np.count_nonzero(w) == 1 and w.max() == 1.0) else -1
              for w in weights]
    return CompiledFeatures(
        np.array([k[0] for k in keys], dtype=np.int64), np.ascontiguousarray(weights),
        np.array([k[2] for k in keys], dtype=np.float64), np.array(single, dtype=np.int64),
        np.array([rank[key] for key, _ in outputs], dtype=np.int64),
        np.array([o[1] for o in outputs], dtype=np.bool_))


# ---------------------------------------------------------------- jitted passes

@nb.njit(**jit_options(inline="always"))
def _quantity_row(P, tracker, Y, n, scratch):
    """Row of q = w . Y over the first n lanes: the state's own row when q is a
    single state, else the weighted sum computed into ``scratch``."""
    single = P.tracker_states[tracker]
    if single >= 0:
        return Y[single]
    weights = P.tracker_weights[tracker]
    for l in range(n):
        scratch[l] = 0.0
    for s in range(weights.shape[0]):
        w = weights[s]
        if w != 0.0:
            for l in range(n):
                scratch[l] += w * Y[s, l]
    return scratch


@nb.njit(**jit_options())
def _dot(weights, Y, lane):
    q = 0.0
    for s in range(weights.shape[0]):
        if weights[s] != 0.0:
            q += weights[s] * Y[s, lane]
    return q


@nb.njit(**jit_options(inline="always"))
def _quantity(P, tracker, Y, lane):
    """q = w . Y[:, lane] for one lane: the state itself when q is a single state."""
    single = P.tracker_states[tracker]
    return Y[single, lane] if single >= 0 else _dot(P.tracker_weights[tracker], Y, lane)


@nb.njit(**jit_options(inline="always"))
def start_features(P, B, lane):
    """Reset a lane's trackers at t0 and observe the initial (post-dose) state."""
    for f in range(P.tracker_kinds.shape[0]):
        kind = P.tracker_kinds[f]
        B.f_value[f, lane] = -np.inf if kind == MAX else (
            np.inf if kind == MIN else (0.0 if kind == AUC else np.nan))
        B.f_time[f, lane] = np.nan
        if kind == REBOUND:
            B.f_value[f, lane] = P.tracker_args[f] * _dot(P.tracker_weights[f], B.y, lane)
            B.f_armed[f, lane] = False
    observe_point(P, B, B.y, lane, B.t[lane])


@nb.njit(**jit_options(inline="always"))
def observe_point(P, B, Y, lane, t):
    """Update trackers with the exact state ``Y[:, lane]`` at time t (each
    quantity computed only where its tracker can still change)."""
    for f in range(P.tracker_kinds.shape[0]):
        kind = P.tracker_kinds[f]
        arg = P.tracker_args[f]
        if kind == MAX or kind == MIN:
            q = _quantity(P, f, Y, lane)
            if (q > B.f_value[f, lane]) if kind == MAX else (q < B.f_value[f, lane]):
                B.f_value[f, lane] = q
                B.f_time[f, lane] = t
        elif kind == VALUE_AT:
            if arg == t:
                B.f_value[f, lane] = _quantity(P, f, Y, lane)
        elif kind == CROSS_UP or kind == CROSS_DOWN:
            if np.isnan(B.f_time[f, lane]):
                q = _quantity(P, f, Y, lane)
                if (q >= arg) if kind == CROSS_UP else (q <= arg):
                    B.f_time[f, lane] = t
        elif kind == REBOUND:
            q = _quantity(P, f, Y, lane)
            level = B.f_value[f, lane]
            if np.isnan(B.f_time[f, lane]) and B.f_armed[f, lane] and q >= level:
                B.f_time[f, lane] = t
            B.f_armed[f, lane] = B.f_armed[f, lane] or q < level


@nb.njit(**jit_options(inline="always"))
def features_vector_pass(P, B, n):
    """Per accepted step, for all lanes at once: update running maxima, minima
    and integrals at the step's end, and flag lanes whose step holds rare work
    (an interior extremum, a landmark, a crossing) for :func:`features_inside_step`.
    """
    kinds = P.tracker_kinds
    for f in range(kinds.shape[0]):
        if kinds[f] == AUC:
            combine(B.integral_flat, B.y_flat, B.h_flat, B.K_flat, _INTEGRAL_ROW)
            break
    for f in range(kinds.shape[0]):
        kind = kinds[f]
        arg = P.tracker_args[f]
        value, time = B.f_value[f], B.f_time[f]
        if kind == MAX or kind == MIN:
            sign = 1.0 if kind == MAX else -1.0
            q = _quantity_row(P, f, B.y_new, n, B.row)
            for l in range(n):
                if B.accepted[l] & (sign * q[l] > sign * value[l]):
                    value[l] = q[l]
                    time[l] = B.t_new[l]
            slope0 = _quantity_row(P, f, B.K[0], n, B.row)
            slope1 = _quantity_row(P, f, B.K[6], n, B.row2)
            for l in range(n):
                turns = (sign * slope0[l] > 0.0) & (sign * slope1[l] < 0.0)
                B.rare[l] = B.rare[l] | (B.accepted[l] & turns)
        elif kind == AUC:
            mean = _quantity_row(P, f, B.integral, n, B.row)
            for l in range(n):
                if B.accepted[l] & (B.t_new[l] <= arg):
                    value[l] = value[l] + B.h_try[l] * mean[l]
                partial = B.accepted[l] & (B.t[l] < arg) & (arg < B.t_new[l])
                B.rare[l] = B.rare[l] | partial
        elif kind == VALUE_AT:
            if f > 0 and kinds[f - 1] == VALUE_AT and P.tracker_args[f - 1] == arg:
                continue                    # the same day, flagged by the tracker before
            for l in range(n):
                inside = B.accepted[l] & (B.t[l] < arg) & (arg <= B.t_new[l])
                B.rare[l] = B.rare[l] | inside
        elif kind == REBOUND:
            armed = B.f_armed[f]
            q0 = _quantity_row(P, f, B.y, n, B.row)
            q1 = _quantity_row(P, f, B.y_new, n, B.row2)
            for l in range(n):
                crosses = armed[l] & (q0[l] < value[l]) & (q1[l] >= value[l])
                pending = time[l] != time[l]
                B.rare[l] = B.rare[l] | (B.accepted[l] & pending & crosses)
                armed[l] = armed[l] | (B.accepted[l] & (q1[l] < value[l]))
        else:  # CROSS_UP, CROSS_DOWN
            sign = 1.0 if kind == CROSS_UP else -1.0
            q0 = _quantity_row(P, f, B.y, n, B.row)
            q1 = _quantity_row(P, f, B.y_new, n, B.row2)
            for l in range(n):
                crosses = (sign * q0[l] < sign * arg) & (sign * q1[l] >= sign * arg)
                pending = time[l] != time[l]
                B.rare[l] = B.rare[l] | (B.accepted[l] & pending & crosses)


@nb.njit(**jit_options(inline="always"))
def features_inside_step(P, B, lane):
    """The rare work for one lane's accepted step [t, t_new], on its interpolant.

    Each tracker is tested first on what the vector pass tested (the step's
    bounds, the slopes k1 and k7 at its ends), and only a tracker with work
    inside this step builds its interpolant: a lane flagged for one landmark
    does not pay for the other trackers.
    """
    t, h, t_new = B.t[lane], B.h_try[lane], B.t_new[lane]
    c = B.coeffs
    for f in range(P.tracker_kinds.shape[0]):
        kind = P.tracker_kinds[f]
        w = P.tracker_weights[f]
        arg = P.tracker_args[f]
        if kind == MAX or kind == MIN:
            sign = 1.0 if kind == MAX else -1.0
            if (sign * _quantity(P, f, B.K[0], lane) > 0.0) and (
                    sign * _quantity(P, f, B.K[6], lane) < 0.0):
                dense.quantity_coefficients(w, B.K, lane, c)
                if (sign * dense.quantity_slope(c, 0.0) > 0.0
                        and sign * dense.quantity_slope(c, 1.0) < 0.0):
                    theta = dense.slope_root(c)
                    q = dense.quantity_at(_quantity(P, f, B.y, lane), h, c, theta)
                    if sign * q > sign * B.f_value[f, lane]:
                        B.f_value[f, lane] = q
                        B.f_time[f, lane] = t + theta * h
        elif kind == AUC:
            if t < arg and arg < t_new:
                dense.quantity_coefficients(w, B.K, lane, c)
                B.f_value[f, lane] += h * dense.quantity_integral(
                    _quantity(P, f, B.y, lane), h, c, (arg - t) / h)
        elif kind == VALUE_AT:
            if t < arg and arg < t_new:
                dense.quantity_coefficients(w, B.K, lane, c)
                B.f_value[f, lane] = dense.quantity_at(_quantity(P, f, B.y, lane), h, c,
                                                       (arg - t) / h)
        elif np.isnan(B.f_time[f, lane]):
            q0, q1 = _quantity(P, f, B.y, lane), _quantity(P, f, B.y_new, lane)
            if kind == REBOUND:
                # the vector pass armed the lane only if this step ended below the
                # level, so here armed still tells whether it was below before the step
                level = B.f_value[f, lane]
                if B.f_armed[f, lane] and q0 < level <= q1:
                    dense.quantity_coefficients(w, B.K, lane, c)
                    B.f_time[f, lane] = t + dense.level_root(q0, h, c, level) * h
            else:
                sign = 1.0 if kind == CROSS_UP else -1.0
                if sign * q0 < sign * arg and sign * q1 >= sign * arg:
                    dense.quantity_coefficients(w, B.K, lane, c)
                    B.f_time[f, lane] = t + dense.level_root(q0, h, c, arg) * h


@nb.njit(**jit_options(inline="always"))
def write_features(P, B, lane, out):
    """A finished lane's features into its output row (NaN unless status is ok)."""
    ok = B.status[lane] == 0
    for f in range(P.output_trackers.shape[0]):
        tracker = P.output_trackers[f]
        value = B.f_time[tracker, lane] if P.output_times[f] else B.f_value[tracker, lane]
        out[f] = value if ok else np.nan
