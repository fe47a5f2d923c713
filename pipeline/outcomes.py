"""Clinical outcomes of a virtual patient, from features computed in the kernel.

The kernel computes, inside its step loop, the features :func:`kernel_features`
lists (peak IL-6 and its day, CAR T peak and AUC, tumour minimum and its day,
tumour at the response landmark and at the horizon, the day the tumour climbs
back after a response, the CAR T AUC to day 28, and IL-6 and CAR T on days 1-3
after infusion: the early levels a clinician can observe, :data:`EARLY_DAYS`).
:func:`outcome_columns` turns them into the dataset's columns with these rules
(thresholds from the scenario's ``[outcomes]`` table, defaults in
:mod:`pipeline.config`):

* ``responded``: tumour at ``response_day`` <= ``response_fraction`` x T0 (a
  landmark response relative to T0, the tumour at infusion, after any debulking);
* ``no_detectable_disease``: tumour at ``response_day`` <= ``no_detectable_disease_cells``
  (an absolute landmark response: about 1 mL of tumour at ~1e9 cells/mL by default,
  near what PET-CT resolves, an approximate conversion). Unlike ``responded`` it
  does not scale with T0: a debulked patient is judged by the tumour left, as
  imaging sees it, not by a fall from an already reduced T0;
* ``best_response_log10``: log10(tumour minimum / T0), the depth of response;
* ``relapsed``: the tumour fell to <= ``response_fraction`` x T0 at some time
  and later climbed back above ``relapse_fraction`` x T0 (a rebound, found on
  the integrator's interpolant); ``t_relapse_d`` its day, NaN otherwise;
* ``crs_grade``: the number of thresholds in ``crs_il6_thresholds_pg_ml``
  that peak IL-6 reaches (0..4). A stated proxy rule on peak IL-6 (Teachey et
  al. 2016 found peak IL-6 among the strongest correlates of severe CRS), not
  the Lee 2014, ASTCT 2019 or Penn clinical grading, which need symptoms;
* ``severe_crs``: ``crs_grade`` >= ``severe_crs_grade``.

The scenario's ``lead_response`` names which of the two response columns
(:data:`RESPONSES`) the report leads with; :func:`response_label` words them.

Patients whose integration failed (status != 0) have NaN features; their
booleans are False and must be excluded from rates (``pipeline.aggregate`` does).
"""
import numpy as np

from kernels import features as kf

# days after infusion of the early features a clinician can observe (IL-6 and CAR T
# levels on days 1-3, the inputs of an early risk score, pipeline.risk)
EARLY_DAYS = (1, 2, 3)

# the response columns, either of which a scenario may lead with (``lead_response``)
RESPONSES = ("responded", "no_detectable_disease")

# column, how to compute it from the model's roles, whether it counts cells
_FEATURES = (
    ("il6_peak_pg_ml", lambda m, o, t1: kf.maximum(m.role("il6")), False),
    ("t_il6_peak_d", lambda m, o, t1: kf.argmax(m.role("il6")), False),
    ("cart_peak_cells", lambda m, o, t1: kf.maximum(m.role("car_t")), True),
    ("t_cart_peak_d", lambda m, o, t1: kf.argmax(m.role("car_t")), False),
    ("cart_auc_cells_d", lambda m, o, t1: kf.auc(m.role("car_t")), True),
    ("tumour_min_cells", lambda m, o, t1: kf.minimum(m.role("tumour")), True),
    ("t_tumour_min_d", lambda m, o, t1: kf.argmin(m.role("tumour")), False),
    ("tumour_response_day_cells", lambda m, o, t1: kf.value_at(m.role("tumour"), o.response_day), True),
    ("tumour_end_cells", lambda m, o, t1: kf.value_at(m.role("tumour"), t1), True),
    ("t_rebound_d", lambda m, o, t1: kf.rebound(m.role("tumour"), o.relapse_fraction), False),
    ("cart_auc_d28_cells_d", lambda m, o, t1: kf.auc(m.role("car_t"), until=28.0), True),
    *((f"il6_d{day}_pg_ml", lambda m, o, t1, day=day: kf.value_at(m.role("il6"), day), False)
      for day in EARLY_DAYS),
    *((f"cart_d{day}_cells", lambda m, o, t1, day=day: kf.value_at(m.role("car_t"), day), True)
      for day in EARLY_DAYS),
)
FEATURE_COLUMNS = tuple(name for name, _, _ in _FEATURES)


def _model_features(model, outcomes, horizon_days):
    """[(column, feature, counts cells)]: the standard ones, then the model's own."""
    standard = [(name, make(model, outcomes, horizon_days), cells)
                for name, make, cells in _FEATURES]
    extra = model.extra_features(outcomes, horizon_days) if model.extra_features else []
    return standard + list(extra)


def kernel_features(model, outcomes, horizon_days):
    """The kernel features: :data:`FEATURE_COLUMNS` order, then the model's
    ``extra_features``."""
    return [feature for _, feature, _ in _model_features(model, outcomes, horizon_days)]


def feature_columns(model, features, outcomes, horizon_days):
    """Kernel feature array [N, F] -> {column: values}, cell counts in cells."""
    specs = _model_features(model, outcomes, horizon_days)
    return {name: features[:, j] * (model.cells_per_unit if cells else 1.0)
            for j, (name, _, cells) in enumerate(specs)}


def crs_grade(il6_peak_pg_ml, thresholds_pg_ml):
    """Number of (increasing) thresholds reached by peak IL-6; 0 for NaN."""
    peak = np.asarray(il6_peak_pg_ml, dtype=float)
    grade = np.searchsorted(np.asarray(thresholds_pg_ml, dtype=float), peak, side="right")
    return np.where(np.isnan(peak), 0, grade).astype(np.int8)


def outcome_columns(columns, tumour0_cells, outcomes):
    """Outcome columns from :func:`feature_columns` output and T0 (cells)."""
    tumour0 = np.asarray(tumour0_cells, dtype=float)
    response_level = outcomes.response_fraction * tumour0
    with np.errstate(divide="ignore", invalid="ignore"):
        best_log10 = np.log10(columns["tumour_min_cells"] / tumour0)
    deep_response = columns["tumour_min_cells"] <= response_level
    relapsed = deep_response & np.isfinite(columns["t_rebound_d"])
    grade = crs_grade(columns["il6_peak_pg_ml"], outcomes.crs_il6_thresholds_pg_ml)
    return {
        "responded": columns["tumour_response_day_cells"] <= response_level,
        "no_detectable_disease": (columns["tumour_response_day_cells"]
                                  <= outcomes.no_detectable_disease_cells),
        "best_response_log10": best_log10,
        "relapsed": relapsed,
        "t_relapse_d": np.where(relapsed, columns["t_rebound_d"], np.nan),
        "crs_grade": grade,
        "severe_crs": grade >= outcomes.severe_crs_grade,
    }


def response_label(column, outcomes=None):
    """A response column of :data:`RESPONSES` in words, e.g. "response (no
    detectable disease at day 90)"; without ``outcomes`` (the scenario's rules,
    None when a run's config cannot be read) without the day and fraction."""
    day = f" at day {outcomes.response_day:g}" if outcomes is not None else ""
    share = (f"{100 * outcomes.response_fraction:g}% of" if outcomes is not None
             else "a fraction of")
    return {"responded": f"response (tumour <= {share} baseline{day})",
            "no_detectable_disease": f"response (no detectable disease{day})"}[column]


def response_rule(column, outcomes):
    """The rule of a response column of :data:`RESPONSES` in words, with the
    scenario's thresholds (``outcomes``)."""
    tumour = f"tumour at day {outcomes.response_day:g}"
    cells = outcomes.no_detectable_disease_cells
    return {"responded": f"{tumour} <= {outcomes.response_fraction:g} x baseline (the "
                         "tumour at infusion)",
            "no_detectable_disease": f"{tumour} <= {cells:.3g} cells (~{cells / 1e9:.3g} mL "
                                     "at ~1e9 cells/mL, near what PET-CT resolves; an "
                                     "approximate conversion)"}[column]
