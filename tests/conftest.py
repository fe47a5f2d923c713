"""Shared fixtures for the kernel tests: models and random virtual patients."""
import os
from dataclasses import dataclass

# The determinism tests compare one thread with two; give Numba two threads even
# on a one-core machine (set before Numba is first imported).
if (os.cpu_count() or 1) < 2:
    os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels.dopri5 import Doses  # noqa: E402
from kernels.models import get_model  # noqa: E402

DOSE = 0.1          # 1e8 CAR T cells, in units of 1e9 cells (DESIGN.md s3)
T0_MEDIAN, T0_SD_LOG = 10.0, 1.0


@dataclass(frozen=True)
class Cohort:
    """N cart patients: ``y0`` before the infusion (E = 0), ``params`` [N, P],
    ``doses`` (DOSE into E at t = 0, as a kernel ``Doses``) and ``y0_dosed``,
    the same initial state with the dose already added (for scipy)."""

    y0: np.ndarray
    params: np.ndarray
    doses: Doses
    y0_dosed: np.ndarray

    def __len__(self):
        return self.y0.shape[0]

    def subset(self, index):
        index = np.atleast_1d(index)
        return Cohort(self.y0[index], self.params[index],
                      Doses(self.doses.times, self.doses.states, self.doses.amounts[index]),
                      self.y0_dosed[index])


def sample_cart_patients(n, seed):
    """N patients of the reference model: every parameter log-normal around its
    typical value with its own ``sd_log``; T0 log-normal around 10 (sd log 1.0);
    I0 at its typical value; E = M = X = 0 before a dose of 0.1 into E at t = 0."""
    model = get_model("cart")
    rng = np.random.default_rng(seed)
    typical = model.typical_parameters()
    sd_log = np.array([p.sd_log for p in model.parameters])
    params = typical * np.exp(sd_log * rng.standard_normal((n, typical.size)))
    y0 = np.tile(model.typical_initial_state(E=0.0, M=0.0, X=0.0), (n, 1))
    y0[:, model.state_index("T")] = T0_MEDIAN * np.exp(T0_SD_LOG * rng.standard_normal(n))
    e = model.state_index("E")
    doses = Doses(np.array([0.0]), np.array(["E"]), np.full((n, 1), DOSE))
    y0_dosed = y0.copy()
    y0_dosed[:, e] += DOSE
    return Cohort(np.ascontiguousarray(y0), np.ascontiguousarray(params), doses, y0_dosed)


@pytest.fixture(scope="session")
def cart():
    return get_model("cart")


@pytest.fixture(scope="session")
def predator_prey():
    return get_model("predator_prey")


@pytest.fixture(scope="session")
def predator_prey_cytokine():
    return get_model("predator_prey", cytokine=True)


@pytest.fixture(scope="session")
def cart_patients():
    """``cart_patients(n, seed)`` -> :class:`Cohort` (see :func:`sample_cart_patients`)."""
    return sample_cart_patients
