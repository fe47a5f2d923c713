"""Acceptance: the kernel against scipy on random patients of the reference
models, ``cart2`` and the superseded ``cart``.

For 300 random patients of ``cart`` (100 of ``cart2``) the six features (peak IL-6 and its time,
CAR T AUC of E + M + X, tumour minimum, tumour at day 28 and day 365) agree with
a tight scipy DOP853 reference (rtol 1e-10) within a relative error of 1e-4 when
the kernel runs at rtol 1e-7; and, at equal tolerances, with scipy RK45 to the
tolerance's order.

The reference integrates an independent numpy transcription of the equations
(scipy_reference.py), with an extra state dAUC/dt = E + M + X so
the AUC is exact, and locates the extrema by brentq on the model's derivative.
"""
import numpy as np
import pytest

from kernels import features as F
from kernels.dopri5 import solve
from conftest import sample_patients
from kernels.models import get_model
from scipy_reference import (REFERENCE_RHS, describe_worst, extremum_interpolant,
                             extremum_rhs, relative_error, segment_integral, solve_dense)

N_PATIENTS = {"cart": 300, "cart2": 100}
SEED = 20240611
T1 = 365.0
CAR_T = {"E": 1.0, "M": 1.0, "X": 1.0}
FEATURES = (F.maximum("I"), F.argmax("I"), F.auc(CAR_T), F.minimum("T"),
            F.value_at("T", 28.0), F.value_at("T", T1))
NAMES = ("peak IL-6", "time of peak IL-6", "CAR T AUC", "tumour minimum",
         "tumour at day 28", "tumour at day 365")
# Relative error floors: tumour values under 1e3 cells (1e-6 in units of 1e9
# cells) are compared absolutely at that scale; times under 1 day likewise.
FLOORS = np.array([0.0, 1.0, 0.0, 1e-6, 1e-6, 1e-6])
ATOL = 1e-12
TIGHT_ATOL = 1e-14

RK45_PATIENTS = 30
RK45_RTOL = 1e-6


def reference_features(model, y0_dosed, params, mode):
    """The six features from a scipy solution: ``mode="tight"`` is DOP853 at
    rtol 1e-10 with the AUC as an extra state and extrema refined on the
    derivative; ``mode="rk45"`` is RK45 at the kernel's tolerance, features taken
    from its quartic interpolant as the kernel defines them."""
    rhs = REFERENCE_RHS[model.name]
    il6, tumour = model.state_index("I"), model.state_index("T")
    if mode == "tight":
        f = rhs(params, auc_of_car_t=True)
        sol = solve_dense(f, np.append(y0_dosed, 0.0), 0.0, T1, atol=TIGHT_ATOL)
        peak, t_peak = extremum_rhs(sol, f, il6, +1.0)
        tumour_min, _ = extremum_rhs(sol, f, tumour, -1.0)
        auc = sol.y[-1, -1]
    else:
        f = rhs(params)
        sol = solve_dense(f, y0_dosed, 0.0, T1, method="RK45", rtol=RK45_RTOL, atol=ATOL)
        peak, t_peak = extremum_interpolant(sol, il6, +1.0)
        tumour_min, _ = extremum_interpolant(sol, tumour, -1.0)
        auc = segment_integral(sol, [1.0 if name in CAR_T else 0.0
                                     for name in model.state_names])
    values = [peak, t_peak, auc, tumour_min, sol.sol(28.0)[tumour], sol.y[tumour, -1]]
    return np.array(values), sol.t.size - 1


@pytest.fixture(scope="module", params=sorted(N_PATIENTS))
def model(request):
    return get_model(request.param)


@pytest.fixture(scope="module")
def cohort(model):
    return sample_patients(N_PATIENTS[model.name], SEED, model.name)


@pytest.fixture(scope="module")
def tight(model, cohort):
    """Tight DOP853 features for every patient, [N, 6]."""
    return np.array([reference_features(model, cohort.y0_dosed[i], cohort.params[i], "tight")[0]
                     for i in range(len(cohort))])


def kernel_features(model, cohort, rtol):
    sol = solve(model, cohort.y0, cohort.params, 0.0, T1, rtol=rtol, atol=ATOL,
                doses=cohort.doses, features=FEATURES)
    assert np.all(sol.status == 0), f"statuses {np.unique(sol.status)}"
    return sol


def test_features_match_tight_dop853(model, cohort, tight):
    """300 random cart (100 cart2) patients at kernel rtol 1e-7: every feature within 1e-4
    relative of scipy DOP853 at rtol 1e-10 (tumour values floored at 1e3 cells,
    times at 1 day)."""
    sol = kernel_features(model, cohort, 1e-7)
    errors = relative_error(sol.features, tight, FLOORS)
    assert np.all(errors <= 1e-4), describe_worst(errors, NAMES, sol.features, tight)


# Bound on the error of the IL-6 peak time (days). cart2's IL-6 is made by a
# lagged myeloid pool (two first-order stages between CAR T and IL-6), so its
# peak is flatter than cart's and its time less sharply defined by the values:
# worst measured 2.8e-4 days (24 s) over the 100 patients.
PEAK_TIME_BOUND = {"cart": 1e-4, "cart2": 5e-4}


def test_peak_time_within_bound(model, cohort, tight):
    """The time of peak IL-6 at kernel rtol 1e-7 is within PEAK_TIME_BOUND
    days of the tight reference for every patient, although the kernel's steps
    average 0.4 days or more (thousands of times coarser): the peak is refined
    on the interpolant."""
    sol = kernel_features(model, cohort, 1e-7)
    error = np.abs(sol.features[:, 1] - tight[:, 1])
    mean_step = T1 / sol.n_steps
    assert np.all(mean_step > 0.1)
    bound = PEAK_TIME_BOUND[model.name]
    assert np.all(error <= bound), f"worst {error.max():.3g} days (patient {error.argmax()})"


def test_reference_cohort_is_varied(tight):
    """Guards the acceptance test's meaning: the sampled patients cover IL-6
    peaks over orders of magnitude, peak times spread over days, and tumours both
    cleared below the floor and above it at day 365."""
    assert tight[:, 0].max() / tight[:, 0].min() > 100
    assert np.ptp(tight[:, 1]) > 5.0
    assert np.any(tight[:, 5] < 1e-6) and np.any(tight[:, 5] > 1e-3)
    assert np.any(tight[:, 3] > 1e-6)


@pytest.fixture(scope="module")
def rk45(model, cohort):
    """RK45 at rtol 1e-6 for the first patients: features [n, 6] and steps [n]."""
    results = [reference_features(model, cohort.y0_dosed[i], cohort.params[i], "rk45")
               for i in range(RK45_PATIENTS)]
    return np.array([r[0] for r in results]), np.array([r[1] for r in results])


def test_same_order_as_rk45_at_equal_tolerance(model, cohort, tight, rk45):
    """Kernel and scipy RK45, both at rtol 1e-6 and atol 1e-12, on 30 patients.

    Same method and same error norm, so (1) each patient takes within
    0.8x..1.25x RK45's number of steps (a tolerance off by 10x changes the steps
    by 10**(1/5) = 1.6x); (2) for every feature the RMS over patients of the
    kernel's error against the tight reference is within a factor 10 of RK45's
    (both ways: neither markedly worse nor implausibly better); (3) no feature
    error exceeds 100 rtol.
    """
    rk45_values, rk45_steps = rk45
    sub = cohort.subset(np.arange(RK45_PATIENTS))
    sol = kernel_features(model, sub, RK45_RTOL)
    ref = tight[:RK45_PATIENTS]

    ratio = sol.n_steps / rk45_steps
    assert np.all((ratio >= 0.8) & (ratio <= 1.25)), f"step ratios {ratio.min()}..{ratio.max()}"

    e_kernel = relative_error(sol.features, ref, FLOORS)
    e_rk45 = relative_error(rk45_values, ref, FLOORS)
    rms_kernel = np.sqrt(np.mean(e_kernel ** 2, axis=0))
    rms_rk45 = np.sqrt(np.mean(e_rk45 ** 2, axis=0))
    report = "\n".join(f"{n}: kernel rms {a:.3g}, RK45 rms {b:.3g}"
                       for n, a, b in zip(NAMES, rms_kernel, rms_rk45))
    assert np.all(rms_kernel <= 10 * rms_rk45), report
    assert np.all(rms_kernel >= 0.1 * rms_rk45), report
    assert np.all(e_kernel <= 100 * RK45_RTOL), describe_worst(e_kernel, NAMES, sol.features, ref)


def test_errors_shrink_with_tolerance(model, cohort, tight):
    """Tolerance proportionality on the RK45 subset: from rtol 1e-5 to 1e-8
    the RMS error of every feature falls by at least 100x (global errors of an
    error-per-step controlled method scale with the tolerance: ~1000x expected;
    500x..2000x observed)."""
    sub = cohort.subset(np.arange(RK45_PATIENTS))
    ref = tight[:RK45_PATIENTS]
    rms = []
    for rtol in (1e-5, 1e-8):
        e = relative_error(kernel_features(model, sub, rtol).features, ref, FLOORS)
        rms.append(np.sqrt(np.mean(e ** 2, axis=0)))
    assert np.all(rms[1] * 100 <= rms[0]), f"rms at 1e-5: {rms[0]}, at 1e-8: {rms[1]}"
