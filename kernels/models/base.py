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
    ``cells_per_unit`` cells."""

    name: str
    description: str
    states: tuple
    parameters: tuple
    rhs: object = field(repr=False, compare=False)
    roles: dict = field(default_factory=dict, compare=False)
    cells_per_unit: float = 1e9

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

    def typical_initial_state(self, **overrides):
        """Typical initial state as a float64[S] vector, with named overrides."""
        values = np.array([s.typical_initial for s in self.states], dtype=np.float64)
        for name, value in overrides.items():
            values[self.state_index(name)] = value
        return values
