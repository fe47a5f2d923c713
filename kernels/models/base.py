"""The model interface: a jitted right-hand side plus metadata with provenance.

A model's right-hand side works on a block of lanes (patients), lanes contiguous:

    rhs(n, t[L], y[S, L], p[P, L], dydt[S, L])   for lanes 0..n-1

so its loop over lanes vectorises. It is compiled once, with the fixed signature
:data:`RHS_SIGNATURE`, and passed to the integrator as a first-class function:
one compiled and disk-cached integrator serves every model. Adding a model
touches one file: write the rhs with :func:`rhs_kernel` and describe its states
and parameters.
"""
from dataclasses import dataclass, field

import numba as nb
import numpy as np
from numba import types

from kernels.jit import jit_options

RHS_SIGNATURE = types.void(types.int64, types.float64[::1], types.float64[:, ::1],
                           types.float64[:, ::1], types.float64[:, ::1])
RHS_TYPE = types.FunctionType(RHS_SIGNATURE)


def rhs_kernel(function):
    """Compile a model's right-hand side with the signature the integrator calls.

    Compiled at import (a fraction of a second) rather than cached on disk:
    Numba's cache would not notice a change to anything outside the model's file.
    """
    return nb.njit(RHS_SIGNATURE, **jit_options())(function)


def kill_over_growth(parameters, kill="k", growth="r"):
    """``efficacy_ratio`` for models whose per-capita kill at small tumour is
    ``kill * E`` and whose tumour grows at rate ``growth``: k E0 / r_T."""
    names = [p.name for p in parameters]
    k, r = names.index(kill), names.index(growth)

    def efficacy_ratio(params, E0):
        return params[:, k] * E0 / params[:, r]
    return efficacy_ratio


@dataclass(frozen=True)
class State:
    name: str
    unit: str
    description: str
    typical_initial: float = 0.0


@dataclass(frozen=True)
class Parameter:
    """A model parameter: typical (median) value and between-patient spread as
    the standard deviation of its logarithm, with the source of both."""

    name: str
    unit: str
    typical: float
    sd_log: float
    description: str
    source: str


@dataclass(frozen=True)
class Model:
    """A model: states, parameters, the compiled right-hand side, and the roles
    its states play (``roles["tumour"]``, ``roles["car_t"]``, ``roles["il6"]``:
    tuples of state names whose sum is that quantity; ``roles["infusion"]``: the
    state an infused CAR T dose enters), which the pipeline reads instead of
    hard-coding state names. Cell counts are in units of
    ``cells_per_unit`` cells.

    Optional, for models that need more than the defaults:

    ``parameter_sets``
        named sets of typical values, {set name: {parameter: value}} (a CD28 and
        a 4-1BB construct, a preclinical and a clinical setting), which a
        scenario's arm selects with ``parameter_set``;
    ``tumour_split(params[N, P]) -> float64[N, len(roles["tumour"])]``
        the multiplier of the baseline tumour burden for each tumour state at
        infusion (antigen subclones; the default puts the whole burden in the
        first tumour state);
    ``efficacy_ratio(params[N, P], E0[N]) -> float64[N]``
        the initial efficacy ratio k E0 / r_T (> 1: the tumour shrinks at
        infusion), E0 the infused dose in model units;
    ``extra_features(outcomes, horizon_days) -> [(column, feature, counts cells)]``
        kernel features (:mod:`kernels.features`) the model adds to the
        standard ones; ``outcomes`` is any object with the scenario's outcome
        settings (``response_day``, ...);
    ``extra_outcomes(columns, params[N, P]) -> {column: values}``
        outcome columns derived from the feature and standard outcome columns
        (``pipeline.outcomes``: ``responded``, ``relapsed``, ...; cells in cells).
    """

    name: str
    description: str
    states: tuple
    parameters: tuple
    rhs: object = field(repr=False, compare=False)
    roles: dict = field(default_factory=dict, compare=False)
    cells_per_unit: float = 1e9
    parameter_sets: dict = field(default_factory=dict, compare=False)
    tumour_split: object = field(default=None, repr=False, compare=False)
    efficacy_ratio: object = field(default=None, repr=False, compare=False)
    extra_features: object = field(default=None, repr=False, compare=False)
    extra_outcomes: object = field(default=None, repr=False, compare=False)

    def role(self, name):
        """The weights {state: 1.0} of a role's quantity; KeyError if the model lacks it."""
        if name not in self.roles:
            raise KeyError(f"model {self.name!r} has no {name!r} quantity; it has "
                           f"{sorted(self.roles)}")
        return {state: 1.0 for state in self.roles[name]}

    @property
    def state_names(self):
        return tuple(s.name for s in self.states)

    @property
    def parameter_names(self):
        return tuple(p.name for p in self.parameters)

    def state_index(self, name):
        try:
            return self.state_names.index(name)
        except ValueError:
            raise KeyError(f"model {self.name!r} has no state {name!r}; states are "
                           f"{list(self.state_names)}") from None

    def parameter_index(self, name):
        try:
            return self.parameter_names.index(name)
        except ValueError:
            raise KeyError(f"model {self.name!r} has no parameter {name!r}; parameters are "
                           f"{list(self.parameter_names)}") from None

    def typical_parameters(self, **overrides):
        """Typical values as a float64[P] vector, with named overrides."""
        values = np.array([p.typical for p in self.parameters], dtype=np.float64)
        for name, value in overrides.items():
            values[self.parameter_index(name)] = value
        return values

    def initial_states(self, tumour0, params):
        """y0[N, S] at infusion: typical initial values, with the baseline
        tumour ``tumour0[N]`` (model units) spread over the tumour states by
        ``tumour_split`` (all in the first tumour state by default)."""
        tumour0 = np.asarray(tumour0, dtype=np.float64)
        y0 = np.tile(self.typical_initial_state(), (tumour0.shape[0], 1))
        states = [self.state_index(name) for name in self.roles["tumour"]]
        if self.tumour_split is None:
            y0[:, states[0]] = tumour0
        else:
            y0[:, states] = tumour0[:, None] * self.tumour_split(params)
        return y0

    def parameter_set(self, name):
        """The typical values {parameter: value} of a named parameter set."""
        try:
            return dict(self.parameter_sets[name])
        except KeyError:
            raise KeyError(f"model {self.name!r} has no parameter set {name!r}; sets are "
                           f"{sorted(self.parameter_sets)}") from None

    def typical_initial_state(self, **overrides):
        """Typical initial state as a float64[S] vector, with named overrides."""
        values = np.array([s.typical_initial for s in self.states], dtype=np.float64)
        for name, value in overrides.items():
            values[self.state_index(name)] = value
        return values
