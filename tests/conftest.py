"""Shared fixtures: models and random virtual patients for the kernel tests, and
``slurm_cluster``, a SLURM node that takes jobs, for the tests of real SLURM jobs."""
import os
import shutil
import subprocess
from dataclasses import dataclass

# The determinism tests compare one thread with two; give Numba two threads even
# on a one-core machine (set before Numba is first imported).
if (os.cpu_count() or 1) < 2:
    os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels.dopri5 import Doses  # noqa: E402
from kernels.models import get_model  # noqa: E402

DOSE = 0.1          # 1e8 CAR T cells, in units of 1e9 cells
# baseline tumour (units of 1e9 cells: median, sd of log) of each model's random
# patients: cart's starting point (1e10 cells) and cart2's DLBCL-like cohort
# (1e11 cells, configs/default.toml)
TUMOUR0 = {"cart": (10.0, 1.0), "cart2": (100.0, 1.2)}


@dataclass(frozen=True)
class Cohort:
    """N patients: ``y0`` before the infusion (E = 0), ``params`` [N, P],
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


def sample_patients(n, seed, model_name="cart"):
    """N patients of a reference model (``cart`` or ``cart2``): every parameter
    log-normal around its typical value with its own ``sd_log``; T0 log-normal
    (:data:`TUMOUR0`); other states at their typical initial values, CAR T at 0
    before a dose of 0.1 into E at t = 0."""
    model = get_model(model_name)
    rng = np.random.default_rng(seed)
    typical = model.typical_parameters()
    sd_log = np.array([p.sd_log for p in model.parameters])
    params = typical * np.exp(sd_log * rng.standard_normal((n, typical.size)))
    y0 = np.tile(model.typical_initial_state(E=0.0, M=0.0, X=0.0), (n, 1))
    median, sd = TUMOUR0[model_name]
    y0[:, model.state_index("T")] = median * np.exp(sd * rng.standard_normal(n))
    e = model.state_index("E")
    doses = Doses(np.array([0.0]), np.array(["E"]), np.full((n, 1), DOSE))
    y0_dosed = y0.copy()
    y0_dosed[:, e] += DOSE
    return Cohort(np.ascontiguousarray(y0), np.ascontiguousarray(params), doses, y0_dosed)


def sample_cart_patients(n, seed):
    """N patients of the ``cart`` model (:func:`sample_patients`)."""
    return sample_patients(n, seed, "cart")


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


# -- SLURM ----------------------------------------------------------------------
#
# The SLURM tests submit real jobs. They are skipped only where ``sbatch`` is
# absent and ``CI`` is unset. Under CI (``.ci/run`` brings the cluster up) they
# must run. Where ``sbatch`` exists but no node takes jobs, the fixture starts the
# local single-node cluster itself (slurm/local-cluster.sh up) and stops it after
# the session; if it cannot, the tests fail with the reason.

IN_CI = bool(os.environ.get("CI"))
LOCAL_CLUSTER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "slurm", "local-cluster.sh")
USABLE_STATES = {"idle", "mix", "alloc", "comp"}


def _node_states():
    try:
        return subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True,
                              text=True, timeout=60).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return []


def _local_cluster(action):
    return subprocess.run(["bash", LOCAL_CLUSTER, action], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM node that takes jobs (see above); use it with
    ``pytestmark = pytest.mark.usefixtures("slurm_cluster")``."""
    if shutil.which("sbatch") is None:
        if IN_CI:
            pytest.fail("CI is set but sbatch is not installed: run slurm/local-cluster.sh up")
        pytest.skip("sbatch is not installed (slurm/local-cluster.sh up installs a local SLURM)")
    started = False
    if not set(_node_states()) & USABLE_STATES:
        result = _local_cluster("up")
        if result.returncode != 0 or not set(_node_states()) & USABLE_STATES:
            output = (result.stderr or result.stdout).strip().splitlines()
            reason = output[-1] if output else f"exit status {result.returncode}"
            pytest.fail(f"no usable SLURM node, and slurm/local-cluster.sh up failed: {reason}")
        started = True
    yield
    if started:
        _local_cluster("down")
