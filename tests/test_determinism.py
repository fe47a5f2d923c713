"""Bitwise reproducibility: a patient's results do not depend on the number of
threads, on how the batch is chunked, or on which other patients share its block."""
import numpy as np
import pytest

from kernels import features as F
from conftest import sample_patients
from kernels.dopri5 import Doses, solve
from kernels.models import get_model

FEATURES = (F.maximum("I"), F.argmax("I"), F.auc({"E": 1, "M": 1, "X": 1}),
            F.auc("E", until=20.0), F.minimum("T"), F.argmin("T"), F.value_at("T", 28.0),
            F.cross_down("T", 0.01), F.cross_up("E", 1.0))
SAVE_AT = (0.0, 3.0, 7.5, 28.0, 100.0, 365.0)
FIELDS = ("features", "saved", "status", "n_steps")


def run(model, cohort, amounts, **options):
    doses = Doses(np.array([0.0, 7.5]), np.array(["E", "E"]), amounts)
    return solve(model, cohort.y0, cohort.params, 0.0, 365.0, rtol=1e-6, atol=1e-9,
                 save_at=SAVE_AT, doses=doses, features=FEATURES, **options)


def assert_bitwise(a, b, rows_a=slice(None), rows_b=slice(None)):
    for field in FIELDS:
        x = np.ascontiguousarray(getattr(a, field)[rows_a])
        y = np.ascontiguousarray(getattr(b, field)[rows_b])
        assert x.shape == y.shape and x.tobytes() == y.tobytes(), field


@pytest.fixture(scope="module", params=["cart", "cart2"])
def model(request):
    return get_model(request.param)


@pytest.fixture(scope="module")
def cohort(model):
    c = sample_patients(600, 51, model.name)
    amounts = np.column_stack([np.full(len(c), 0.1), np.random.default_rng(52).uniform(0, 0.2, len(c))])
    return c, amounts


def test_one_thread_equals_two_threads(model, cohort):
    """600 patients with threads=1 and threads=2 (which also chunk the batch
    differently: 150 vs 75 patients per chunk): bitwise identical features,
    saved states, statuses and step counts."""
    c, amounts = cohort
    one = run(model, c, amounts, threads=1)
    two = run(model, c, amounts, threads=2)
    assert np.all(one.status == 0)
    assert_bitwise(one, two)


def test_alone_equals_in_batch(model, cohort):
    """Three patients, each solved alone and placed first, in the middle and last
    of a 100-patient batch of other (different) patients: bitwise identical."""
    c, amounts = cohort
    rng = np.random.default_rng(53)
    for patient in (3, 250, 599):
        alone = run(model, c.subset([patient]), amounts[[patient]])
        for position in (0, 50, 99):
            others = rng.choice(np.delete(np.arange(len(c)), patient), 99, replace=False)
            order = np.insert(others, position, patient)
            batch = run(model, c.subset(order), amounts[order])
            assert_bitwise(alone, batch, slice(None), [position])


def test_repeat_and_reverse_order(model, cohort):
    """The same 200 patients solved in reverse order give the reversed results
    bitwise (lane assignment and refill order differ completely)."""
    c, amounts = cohort
    idx = np.arange(200)
    forward = run(model, c.subset(idx), amounts[idx])
    backward = run(model, c.subset(idx[::-1]), amounts[idx[::-1]])
    assert_bitwise(forward, backward, slice(None), slice(None, None, -1))
