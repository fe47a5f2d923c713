"""The "observed" CRS grades of a virtual cohort: a stated, noisy grading model.

The run's own ``crs_grade`` column is a deterministic proxy on peak IL-6 alone
(:mod:`pipeline.outcomes`). A risk score fitted to it would only rediscover
that rule. Clinical grading (Lee 2014, ASTCT 2019, Penn) grades symptoms, which
the biology drives but does not determine. So the training and test grades here
come from a latent-variable (ordered probit) model of the simulated biology:

    z     = log10(L_ref) + a_il6 log10(L_max / L_ref)
          + a_exp log10(C_max / C_ref) + a_tum log10(T0 / T_ref) + sd eps
    grade = #{k : z >= c_k}                          (0..4, c_1 < ... < c_4)

(L_max the peak IL-6 in pg/mL, C_max the CAR T peak in cells, T0 the tumour at
infusion in cells; z is on the scale of log10 pg/mL of IL-6), with eps standard
normal (``noise = "normal"``) or logistic scaled to unit variance
(``noise = "logistic"``: eps = (sqrt(3)/pi) log(u / (1 - u))), drawn per patient
from :func:`pipeline.risk.features.hash_uniform` (stream ``GRADING_STREAM``), so
a patient's noise depends on (seed, patient_id) only.

Default values (assumptions, stated; none is a fitted clinical estimate):

* cut points c_k = log10 of the scenario's ``crs_il6_thresholds_pg_ml``
  (default scenario: 100, 500, 1500, 5000 pg/mL): with a_il6 = 1 and
  a_exp = a_tum = sd = 0 the model reproduces the run's proxy grade exactly;
* ``a_il6 = 0.7`` around ``L_ref``, the model's median peak IL-6 (below): IL-6
  carries most, not all, of the grade (Teachey et al. 2016, Cancer Discov
  6:664);
* ``a_exp = 0.3`` per log10 of the CAR T peak: a 10x larger expansion acts like
  a 2x (10^0.3) higher IL-6 peak (Cmax rises with grade, Mueller et al. 2018,
  Clin Cancer Res), around ``C_ref``, the model's typical expansion. The
  absolute peak, not the fold over the dose: a dose-adapted arm's low doses
  would otherwise read as high expansion;
* ``a_tum = 0.2`` per log10 cells around ``T_ref``, the cohort's median burden:
  a direct effect of tumour burden beyond what it does to IL-6 in the model
  (high burden is a clinical CRS risk factor; the size is an assumption);
* ``sd = 0.3`` log10 units: symptoms vary at a given IL-6 peak by a factor of
  about 2 (10^0.3) either way, one sd (assumption).

The references centre z on the typical patient of the model's default scenario,
whose scales differ between models, so they are set per model
(:data:`REFERENCES`, used by :meth:`GradingModel.for_model`; the report section
and ``cartcohort risk fit`` take the run's model from its scenario). Each is the
median over the default scenario's fixed arm (1e8 cells), rounded:

* ``cart2`` (the reference model; configs/default.toml: tumour median 1e11
  cells, sd of log 1.2; measured by running that scenario with its fixed arm
  only, 100,000 patients, seed 20240601, the patients of its fixed arm): peak
  IL-6 median 438.5 pg/mL -> ``L_ref = 440``;
  ``cart_peak_cells`` median 1.05e10 cells (105x the dose) -> ``C_ref = 1e10``;
  tumour at infusion median 9.96e10 cells -> ``T_ref = 1e11``. With these, the
  fixed arm of ``cartcohort run configs/default.toml --patients 20000`` has
  grades 0-4 in 12.9, 41.2, 28.6, 14.7 and 2.7% (grade >= 3: 17.4%, in the
  trials' 10-25% band: ZUMA-1 13%, Neelapu et al. 2017, NEJM 377:2531; JULIET
  22%, Schuster et al. 2019, NEJM 380:45; any CRS 87%, between JULIET's 58% and
  ZUMA-1's 93%, above Hay et al. 2017's 70%, Blood 130:2295; grade 4: 2.7%,
  below Hay 2017's 7.6% for grade 4-5), against 11.4, 42.8, 32.3, 12.4 and 1.2%
  for the proxy (grade >= 3: 13.6%).
* ``cart`` (superseded, kept so that its runs reproduce; its default scenario
  had tumour median 1e10 cells, sd of log 1.4; fixed arm, 20,000 patients):
  peak IL-6 median 255 pg/mL -> ``L_ref = 250``; CAR T peak median 1.1e10
  cells -> ``C_ref = 1e10``; ``T_ref = 1e10``. Its fixed arm had grades 0-4 in
  32.0, 30.8, 18.0, 12.2 and 6.9% (grade >= 3: 19.1%; any CRS 68%; grade 4:
  6.9%), against 31.4, 32.8, 19.2, 11.7 and 4.9% for the proxy.

The score of :mod:`pipeline.risk.score` uses L_max and A_C = C_max / dose only,
on a linear or log scale, never T0 nor the noise: fitting it is a real
statistical problem. With ``sd = 0`` the continuous latent z is an exact linear
function of the log features, and OLS of z on log10 (L_max, C_max, T0) returns
(a_il6, a_exp, a_tum) and the intercept (1 - a_il6) log10 L_ref
- a_exp log10 C_ref - a_tum log10 T_ref exactly (in a fixed-dose arm the same
holds on log10 A_C with the intercept raised by a_exp log10 dose). The grade is
z cut at c_k, so OLS of the grade on the same features returns coefficients
proportional to the planted ones only approximately (exactly in expectation
when the log features are jointly Gaussian: Brillinger 1982; Li & Duan 1989,
Ann Stat 17:1009).
"""
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.special import ndtri

from pipeline.risk.features import GRADING_STREAM, hash_uniform

NOISES = ("normal", "logistic")
LATENT_FEATURES = ("L_max", "C_max", "T0")      # risk-frame columns z depends on
DEFAULT_THRESHOLDS_PG_ML = (100.0, 500.0, 1500.0, 5000.0)   # configs/default.toml
# {model: GradingModel reference values}: each model's median peak IL-6 (pg/mL),
# CAR T peak (cells) and tumour at infusion (cells) in its default scenario's
# fixed arm (module docstring). The only place they are set.
REFERENCES = {
    "cart2": {"il6_ref_pg_ml": 440.0, "expansion_ref_cells": 1e10, "tumour_ref_cells": 1e11},
    "cart": {"il6_ref_pg_ml": 250.0, "expansion_ref_cells": 1e10, "tumour_ref_cells": 1e10},
}
REFERENCE_MODEL = "cart2"           # whose references a bare GradingModel() has
REFERENCE_FIELDS = tuple(REFERENCES[REFERENCE_MODEL])


@dataclass(frozen=True)
class GradingModel:
    """The latent-variable grading model of the module docstring."""

    il6: float = 0.7
    expansion: float = 0.3
    tumour: float = 0.2
    il6_ref_pg_ml: float = REFERENCES[REFERENCE_MODEL]["il6_ref_pg_ml"]
    expansion_ref_cells: float = REFERENCES[REFERENCE_MODEL]["expansion_ref_cells"]
    tumour_ref_cells: float = REFERENCES[REFERENCE_MODEL]["tumour_ref_cells"]
    cuts: tuple = tuple(float(np.log10(t)) for t in DEFAULT_THRESHOLDS_PG_ML)
    noise_sd: float = 0.3
    noise: str = "normal"
    seed: int = 0

    def __post_init__(self):
        cuts = tuple(float(c) for c in self.cuts)
        object.__setattr__(self, "cuts", cuts)
        if len(cuts) < 1 or np.any(np.diff(cuts) <= 0):
            raise ValueError(f"grading cut points must increase strictly, got {cuts}")
        if self.noise not in NOISES:
            raise ValueError(f"grading noise must be one of {NOISES}, got {self.noise!r}")
        if not self.noise_sd >= 0:
            raise ValueError(f"grading noise sd must be >= 0, got {self.noise_sd}")
        if min(self.il6_ref_pg_ml, self.expansion_ref_cells, self.tumour_ref_cells) <= 0:
            raise ValueError("grading reference values must be > 0")

    @classmethod
    def for_thresholds(cls, thresholds_pg_ml, **values):
        """The model with cut points log10(thresholds) (a scenario's IL-6 thresholds)."""
        known = {f.name for f in fields(cls)} - {"cuts"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown grading model values {unknown}; known: {sorted(known)}")
        return cls(cuts=tuple(float(np.log10(t)) for t in thresholds_pg_ml), **values)

    @classmethod
    def for_model(cls, model, thresholds_pg_ml, **values):
        """:meth:`for_thresholds` with the references of a run's ``model``
        (:data:`REFERENCES`); ``values`` override them. A model without
        references needs all three in ``values``."""
        missing = [name for name in REFERENCE_FIELDS if name not in values]
        if model not in REFERENCES and missing:
            raise ValueError(f"no grading references for model {model!r} (models with "
                             f"references: {', '.join(REFERENCES)}); give {missing}")
        return cls.for_thresholds(thresholds_pg_ml, **{**REFERENCES.get(model, {}), **values})

    def to_dict(self):
        return {**asdict(self), "cuts": list(self.cuts)}

    def coefficients(self):
        """(a_il6, a_exp, a_tum, intercept) of z on log10 (L_max, C_max, T0)."""
        intercept = (1.0 - self.il6) * np.log10(self.il6_ref_pg_ml) \
            - self.expansion * np.log10(self.expansion_ref_cells) \
            - self.tumour * np.log10(self.tumour_ref_cells)
        return np.array([self.il6, self.expansion, self.tumour, intercept])

    def noise_values(self, patient_ids):
        """eps per patient: unit-variance normal or logistic noise."""
        u = hash_uniform(patient_ids, self.seed, GRADING_STREAM)
        if self.noise == "normal":
            return ndtri(u)
        return np.sqrt(3.0) / np.pi * np.log(u / (1.0 - u))

    def latent(self, frame):
        """z per patient of a :func:`pipeline.risk.features.risk_frame`."""
        x = np.log10(frame[list(LATENT_FEATURES)].to_numpy())
        a = self.coefficients()
        return x @ a[:3] + a[3] + self.noise_sd * self.noise_values(frame["patient_id"].to_numpy())

    def grades(self, frame):
        """Observed grade per patient, 0..len(cuts): how many cut points z reaches."""
        return cut_grades(self.latent(frame), self.cuts)


def cut_grades(latent, cuts):
    """#{k : latent >= cuts[k]} per value."""
    return np.searchsorted(np.asarray(cuts, dtype=float), latent, side="right").astype(np.int64)
