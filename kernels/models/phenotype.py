"""CAR T phenotype and kinetic landmarks, for models with effector, memory and
exhausted CAR T states named ``E``, ``M`` and ``X``.

:func:`landmarks` ``(days)`` returns the pair (``extra_features``,
``extra_outcomes``) of :class:`kernels.models.base.Model` that add, for every
landmark day within the horizon (``d28`` for day 28):

* features ``cart_d28_cells`` (E + M + X), ``cart_memory_d28_cells`` (M) and
  ``cart_exhausted_d28_cells`` (X), cells;
* outcomes ``memory_fraction_d28`` = M / (E + M + X) and
  ``exhausted_fraction_d28`` = X / (E + M + X);
* ``durable_response``: responded at the landmark (``responded``) and not
  relapsed (``relapsed``, :mod:`pipeline.outcomes`) up to the horizon.
"""
import numpy as np

from kernels import features as kf

CAR_T = ("E", "M", "X")
PHENOTYPES = (("memory", "M"), ("exhausted", "X"))


def tag(day):
    """28.0 -> "d28", the landmark day in a column name."""
    return f"d{day:g}"


def landmarks(days):
    """(extra_features, extra_outcomes) for the landmark ``days`` (module docstring)."""
    days = tuple(float(d) for d in days)

    def extra_features(outcomes, horizon_days):
        features = []
        for day in (d for d in days if d <= horizon_days):
            features.append((f"cart_{tag(day)}_cells",
                             kf.value_at(dict.fromkeys(CAR_T, 1.0), day), True))
            features += [(f"cart_{name}_{tag(day)}_cells", kf.value_at(state, day), True)
                         for name, state in PHENOTYPES]
        return features

    def extra_outcomes(columns, params):
        extra = {}
        for label in (tag(day) for day in days if f"cart_{tag(day)}_cells" in columns):
            for name, _ in PHENOTYPES:
                extra[f"{name}_fraction_{label}"] = (columns[f"cart_{name}_{label}_cells"]
                                                     / columns[f"cart_{label}_cells"])
        extra["durable_response"] = (np.asarray(columns["responded"])
                                     & ~np.asarray(columns["relapsed"]))
        return extra

    return extra_features, extra_outcomes
