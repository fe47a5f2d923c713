"""The ``rebound`` feature (relapse time) against a closed form.

predator_prey with b = 0: E(t) = E0 exp(-d t), so
    ln T(t)/T0 = r t - k E0 (1 - exp(-d t)) / d,
which first falls (k E0 > r) and later climbs back as E decays. The rebound time
for a fraction f is the root of ln T/T0 = ln f after the minimum.
"""
import math

import numpy as np
from scipy.optimize import brentq

from kernels import features as F
from kernels.dopri5 import solve
from kernels.models import get_model

MODEL = get_model("predator_prey")


def log_ratio(t, r, k, e0, d):
    return r * t - k * e0 * (1.0 - math.exp(-d * t)) / d


def test_rebound_time_matches_closed_form():
    """Rebound to 10% and 50% of T0 after the nadir, within 1e-6 relative."""
    r, k, d, e0, t1 = 0.05, 0.5, 0.1, 2.0, 400.0
    params = MODEL.typical_parameters(r=r, k=k, b=0.0, d=d)
    y0 = np.array([10.0, e0])
    t_min = math.log(k * e0 / r) / d          # dT/dt = 0 where r = k E0 exp(-d t)
    for fraction in (0.1, 0.5):
        expected = brentq(lambda t: log_ratio(t, r, k, e0, d) - math.log(fraction), t_min, t1)
        sol = solve(MODEL, y0[None], params[None], 0.0, t1, rtol=1e-10, atol=1e-14,
                    features=[F.rebound("T", fraction), F.argmin("T")])
        assert abs(sol.features[0, 0] - expected) <= 1e-6 * expected
        assert abs(sol.features[0, 1] - t_min) <= 1e-6 * t_min


def test_no_rebound_without_a_fall_or_without_recovery():
    """NaN when the tumour never falls below the level, or never climbs back."""
    never_falls = MODEL.typical_parameters(r=0.05, k=0.01, b=0.0, d=0.1)     # k E0 < r
    never_recovers = MODEL.typical_parameters(r=0.0, k=0.5, b=0.0, d=0.1)    # no regrowth
    params = np.stack([never_falls, never_recovers])
    sol = solve(MODEL, np.array([10.0, 2.0]), params, 0.0, 400.0, rtol=1e-8, atol=1e-12,
                features=[F.rebound("T", 0.5)])
    assert np.isnan(sol.features).all() and (sol.status == 0).all()


def test_rebound_level_is_relative_to_each_patients_start():
    """Scaling T0 scales the whole trajectory's level: the rebound time is unchanged
    for a linear-in-T model, whatever the patient's own baseline."""
    params = MODEL.typical_parameters(r=0.05, k=0.5, b=0.0, d=0.1)
    y0 = np.array([[1.0, 2.0], [100.0, 2.0]])
    sol = solve(MODEL, y0, params, 0.0, 400.0, rtol=1e-10, atol=1e-14,
                features=[F.rebound("T", 0.2)])
    assert abs(sol.features[0, 0] - sol.features[1, 0]) <= 1e-6 * sol.features[0, 0]
