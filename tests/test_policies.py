"""Dosing policies (pipeline.policies) for the cart model."""
from types import SimpleNamespace

import numpy as np
import pytest

from kernels.models import get_model
from pipeline import policies

MODEL = get_model("cart")
ARM = SimpleNamespace(name="a", policy="adaptive", debulking_factor=0.5, dose_cells=None,
                      dose_cells_per_kg=2e6, target_il6_pg_ml=1000.0, min_dose_cells=1e7,
                      max_dose_cells=1e9)


@pytest.fixture(scope="module")
def patients():
    n = 300
    rng = np.random.default_rng(11)
    sd = np.array([p.sd_log for p in MODEL.parameters])
    params = MODEL.typical_parameters() * np.exp(sd * rng.standard_normal((n, sd.size)))
    tumour0 = 1e10 * np.exp(rng.standard_normal(n))
    y0 = np.tile(MODEL.typical_initial_state(), (n, 1))
    y0[:, MODEL.state_index("T")] = tumour0 / MODEL.cells_per_unit
    return y0, params, tumour0


def test_fixed_and_debulking():
    """Per-kg doses scale with weight; debulking multiplies the baseline tumour."""
    weight = np.array([50.0, 100.0])
    assert policies.fixed_dose(ARM, weight).tolist() == [1e8, 2e8]
    flat = SimpleNamespace(dose_cells=3e8, dose_cells_per_kg=None)
    assert policies.fixed_dose(flat, weight).tolist() == [3e8, 3e8]
    assert policies.tumour_at_infusion(ARM, [1e10]).tolist() == [5e9]


def test_adaptive_dose_inverts_the_predictor():
    """Where the dose is not capped, the predictor gives exactly the target."""
    tumour0 = np.geomspace(1e8, 1e11, 50)
    clearance = np.full(50, 2.0)
    dose = policies.adaptive_dose(MODEL, ARM, tumour0, clearance)
    inside = (dose > ARM.min_dose_cells) & (dose < ARM.max_dose_cells)
    assert inside.any()
    predicted = policies.predicted_peak_il6(MODEL, dose[inside], tumour0[inside], clearance[inside])
    assert np.allclose(predicted, ARM.target_il6_pg_ml, rtol=1e-12)
    assert np.all((dose >= ARM.min_dose_cells) & (dose <= ARM.max_dose_cells))


def test_predictor_tracks_the_full_model(patients):
    """The linearised prediction of peak IL-6 follows the full model across
    patients (log-scale correlation > 0.8 at the maximum dose, where the
    linearisation's expansion phase is longest) -- a loose check of the
    derivation, whose error the pipeline reports."""
    y0, params, tumour0 = patients
    dose = np.full(len(tumour0), 1e9)
    actual = policies.peak_il6(MODEL, y0, params, dose, 365.0, 1e-6, 1e-9)
    clearance = params[:, MODEL.parameter_index("c")]
    predicted = policies.predicted_peak_il6(MODEL, dose, tumour0, clearance)
    good = predicted > 0
    assert good.mean() > 0.9
    assert np.corrcoef(np.log(predicted[good]), np.log(actual[good]))[0, 1] > 0.8


def test_oracle_doses_meet_the_target(patients):
    """Every oracle dose above the minimum keeps the full model's peak IL-6 at or
    below the target; the maximum dose is given exactly where it already does."""
    y0, params, _ = patients
    dose = policies.oracle_dose(MODEL, ARM, y0, params, 365.0, 1e-6, 1e-9)
    assert np.all((dose >= ARM.min_dose_cells) & (dose <= ARM.max_dose_cells))
    peak = policies.peak_il6(MODEL, y0, params, dose, 365.0, 1e-6, 1e-9)
    above_min = dose > ARM.min_dose_cells
    assert np.all(peak[above_min] <= ARM.target_il6_pg_ml)
    peak_at_max = policies.peak_il6(MODEL, y0, params, np.full(len(dose), ARM.max_dose_cells),
                                    365.0, 1e-6, 1e-9)
    assert np.array_equal(dose == ARM.max_dose_cells, peak_at_max <= ARM.target_il6_pg_ml)
