"""Events: a patient's parameter changes at a time or at a state's first crossing.

An event has a trigger and an action on one parameter:

=============  ==============================================================
``at_time``    fires at ``time`` (the step lands exactly on it, like a dose)
``cross_up``   fires at the first time q(t) = w . y(t) reaches ``level`` from
               below (an IL-6 threshold); at t0 already when q(t0) >= level
``cross_down`` fires at the first time q(t) falls to ``level``
=============  ==============================================================

action: ``scale`` multiplies the parameter by ``value``, ``set`` replaces it.
Each event fires at most once per patient; several events may share a trigger
(one per parameter they change). The change holds from the firing time on, and
the step controller restarts there (the right-hand side has a jump).

Locating a crossing: when an accepted trial step [t, t + h] ends past the
level, the crossing time t* is the root of the step's quartic interpolant
(:func:`kernels.dense.level_root`, to 2**-50 of the step). The trial
step is then turned into a rejection and the lane steps again from t, landing
exactly on t* (as on a dose time), where the event fires. The error of t* is
that of the dense output, of the order of the tolerance. A crossing that goes
in and out of the level inside one step is not seen (as for the ``cross_up``
feature). After any event fires, pending crossing times of the lane's other
events are forgotten and found again on the new trajectory.
"""
from dataclasses import dataclass
import math

import numba as nb
import numpy as np

from kernels import dense
from kernels.features import _dot, _weights
from kernels.jit import jit_options

AT_TIME, CROSS_UP, CROSS_DOWN = range(3)
SCALE, SET = range(2)
_TRIGGERS = {"at_time": AT_TIME, "cross_up": CROSS_UP, "cross_down": CROSS_DOWN}
_ACTIONS = {"scale": SCALE, "set": SET}


@dataclass(frozen=True)
class Event:
    """A trigger (``at_time`` with ``time``, or a crossing of ``level`` by the
    weighted states ``weights``) and the change of ``parameter`` it makes."""

    trigger: str
    parameter: str
    value: float
    action: str = "scale"
    weights: tuple = ()
    level: float = math.nan
    time: float = math.nan

    def __post_init__(self):
        if self.trigger not in _TRIGGERS:
            raise ValueError(f"unknown event trigger {self.trigger!r}; expected one of "
                             f"{sorted(_TRIGGERS)}")
        if self.action not in _ACTIONS:
            raise ValueError(f"unknown event action {self.action!r}; expected scale or set")
        if not math.isfinite(self.value):
            raise ValueError(f"event value must be finite, got {self.value}")
        if self.trigger == "at_time" and not math.isfinite(self.time):
            raise ValueError("an at_time event needs a finite time")
        if self.trigger != "at_time" and not (self.weights and math.isfinite(self.level)):
            raise ValueError(f"a {self.trigger} event needs a quantity and a finite level")


def at_time(time, parameter, value, action="scale"):
    """``parameter`` changes at ``time``."""
    return Event("at_time", parameter, float(value), action, time=float(time))


def cross_up(quantity, level, parameter, value, action="scale"):
    """``parameter`` changes when ``quantity`` first reaches ``level`` from below."""
    return Event("cross_up", parameter, float(value), action, _weights(quantity), float(level))


def cross_down(quantity, level, parameter, value, action="scale"):
    """``parameter`` changes when ``quantity`` first falls to ``level``."""
    return Event("cross_down", parameter, float(value), action, _weights(quantity), float(level))


@dataclass(frozen=True)
class CompiledEvents:
    """Arrays the kernel reads, one entry per event."""

    kinds: np.ndarray        # int64[E]: AT_TIME, CROSS_UP, CROSS_DOWN
    weights: np.ndarray      # float64[E, S]
    args: np.ndarray         # float64[E]: the time or the level
    params: np.ndarray       # int64[E]: the parameter changed
    actions: np.ndarray      # int64[E]: SCALE or SET
    values: np.ndarray       # float64[E]


def compile_events(events, model):
    """Event specs -> :class:`CompiledEvents` for ``model`` (names to indices)."""
    n, S = len(events), len(model.states)
    weights = np.zeros((n, S))
    for e, event in enumerate(events):
        for name, w in event.weights:
            weights[e, model.state_index(name)] += w
    return CompiledEvents(
        np.array([_TRIGGERS[e.trigger] for e in events], dtype=np.int64),
        weights,
        np.array([e.time if e.trigger == "at_time" else e.level for e in events], dtype=np.float64),
        np.array([model.parameter_index(e.parameter) for e in events], dtype=np.int64),
        np.array([_ACTIONS[e.action] for e in events], dtype=np.int64),
        np.array([e.value for e in events], dtype=np.float64))


# ---------------------------------------------------------------- jitted passes

@nb.njit(**jit_options(inline="always"))
def _reached(kind, q, level):
    return q >= level if kind == CROSS_UP else q <= level


@nb.njit(**jit_options(inline="always"))
def fire(P, B, lane, e, t):
    """Event e changes its parameter in the lane at time t."""
    j = P.event_params[e]
    value = P.event_values[e]
    B.p[j, lane] = value if P.event_actions[e] == SET else B.p[j, lane] * value
    B.e_fired[e, lane] = t
    B.e_pending[e, lane] = np.nan


@nb.njit(**jit_options(inline="always"))
def _forget_crossings(P, B, lane):
    """Pending crossing times belong to the old trajectory: drop them."""
    for e in range(P.event_kinds.shape[0]):
        if P.event_kinds[e] != AT_TIME:
            B.e_pending[e, lane] = np.nan


@nb.njit(**jit_options(inline="always"))
def limit_stop(P, B, lane):
    """The lane's next stop is also no later than its earliest pending event."""
    for e in range(P.event_kinds.shape[0]):
        pending = B.e_pending[e, lane]
        if pending < B.t_stop[lane]:
            B.t_stop[lane] = pending


@nb.njit(**jit_options(inline="always"))
def start_events(P, B, Y, lane, t0):
    """Reset a lane's events at t0 and fire those due at t0 (a time event at
    t0, a level already reached by the post-dose state). Returns whether any fired."""
    fired = False
    for e in range(P.event_kinds.shape[0]):
        B.e_fired[e, lane] = np.nan
        kind, arg = P.event_kinds[e], P.event_args[e]
        B.e_pending[e, lane] = arg if (kind == AT_TIME and arg >= t0 and arg <= P.t1) else np.nan
    for e in range(P.event_kinds.shape[0]):
        kind, arg = P.event_kinds[e], P.event_args[e]
        due = arg == t0 if kind == AT_TIME else _reached(kind, _dot(P.event_weights[e], Y, lane), arg)
        if due:
            fire(P, B, lane, e, t0)
            fired = True
    limit_stop(P, B, lane)
    return fired


@nb.njit(**jit_options(inline="always"))
def fire_due_events(P, B, lane, t):
    """At a step's landing time t: fire the events pending at t. Returns
    whether any fired (the controller must then restart)."""
    fired = False
    for e in range(P.event_kinds.shape[0]):
        if B.e_pending[e, lane] == t:
            fire(P, B, lane, e, t)
            fired = True
    if fired:
        _forget_crossings(P, B, lane)
    return fired


@nb.njit(**jit_options(inline="always"))
def _crossing_time(P, B, lane, e):
    """The time event e's level is first crossed inside the lane's trial step
    [t, t_new], or inf when it is not (or e has fired)."""
    kind = P.event_kinds[e]
    if kind == AT_TIME or not np.isnan(B.e_fired[e, lane]):
        return np.inf
    w, level = P.event_weights[e], P.event_args[e]
    q0 = _dot(w, B.y, lane)
    if _reached(kind, q0, level) or not _reached(kind, _dot(w, B.y_new, lane), level):
        return np.inf
    h = B.h_try[lane]
    dense.quantity_coefficients(w, B.K, lane, B.coeffs)
    return B.t[lane] + dense.level_root(q0, h, B.coeffs, level) * h


@nb.njit(**jit_options(inline="always"))
def _land_on_crossing(P, B, lane, t_cross):
    """Events crossing at t_cross (the earliest in the step) become pending
    there: the step ends at t_cross, or is rejected and the lane aims at
    t_cross; a crossing at the step's start (to within rounding) fires at once."""
    t = B.t[lane]
    at_end = t_cross >= B.t_new[lane]
    at_start = not (t_cross - t > 10.0 * np.finfo(np.float64).eps * max(abs(t), 1.0))
    for e in range(P.event_kinds.shape[0]):
        if _crossing_time(P, B, lane, e) == t_cross:
            if at_end:
                B.e_pending[e, lane] = B.t_new[lane]
            elif at_start:
                fire(P, B, lane, e, t)
            else:
                B.e_pending[e, lane] = t_cross
    if at_end:                        # the landing at t_new fires them
        B.landed[lane] = True
        B.rare[lane] = True
        return
    B.accepted[lane] = False
    B.rare[lane] = False
    if at_start:
        _forget_crossings(P, B, lane)
        B.restart[lane] = True
        return
    if t_cross < B.t_stop[lane]:
        B.t_stop[lane] = t_cross
    B.h[lane] = t_cross - t


@nb.njit(**jit_options(inline="always"))
def events_pass(P, B, n):
    """After a trial step, before anything reads it as accepted: a lane whose
    accepted step crosses a pending event's level is sent to the earliest crossing."""
    for l in range(n):
        if not B.accepted[l]:
            continue
        earliest = np.inf
        for e in range(P.event_kinds.shape[0]):
            earliest = min(earliest, _crossing_time(P, B, l, e))
        if earliest < np.inf:
            _land_on_crossing(P, B, l, earliest)
