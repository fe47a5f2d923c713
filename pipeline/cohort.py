"""Virtual patients: parameters, covariates and per-shard random streams.

Specification objects (built by :mod:`pipeline.config` from a scenario's
``[cohort]`` table) live here with the sampler that reads them.
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ParameterDistribution:
    """Log-normal between-patient variability of one model parameter:
    value = typical * exp(sd_log * z), z ~ N(0, 1) (correlated through
    :attr:`CohortSpec.correlation` when given)."""

    name: str
    typical: float
    sd_log: float


@dataclass(frozen=True)
class Covariate:
    """A log-normal patient covariate: value = median * exp(sd_log * z).

    ``tumour_burden_cells`` (baseline tumour, cells) and ``weight_kg`` are the
    two the pipeline always samples."""

    name: str
    median: float
    sd_log: float


@dataclass(frozen=True)
class CovariateEffect:
    """Power-law effect of a covariate on a parameter:
    parameter *= (covariate / reference) ** exponent."""

    parameter: str
    covariate: str
    exponent: float
    reference: float


@dataclass(frozen=True)
class CohortSpec:
    """Everything needed to sample virtual patients for one model.

    ``parameters`` lists every model parameter in model order. ``correlation``
    is an optional (names, matrix) pair: a correlation matrix between the
    standard normals of the named parameters (the full covariance of the log
    parameters is then diag(sd) C diag(sd))."""

    parameters: tuple                      # ParameterDistribution, model order
    covariates: tuple                      # Covariate
    effects: tuple = ()                    # CovariateEffect
    correlation: tuple = field(default=None)   # (names tuple, matrix as tuple of tuples) or None


# --------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------


def shard_bounds(n_patients, shard_size):
    """Half-open patient ranges ``[(start, stop), ...]`` of the shards.

    Shard ``s`` holds the patients with global ids ``s * shard_size`` up to
    ``min((s + 1) * shard_size, n_patients) - 1``; every shard is full except
    possibly the last. ``n_patients == 0`` gives no shards.
    """
    n_patients, shard_size = int(n_patients), int(shard_size)
    if n_patients < 0:
        raise ValueError(f"n_patients must be >= 0, got {n_patients}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, n_patients))
            for start in range(0, n_patients, shard_size)]


@dataclass(frozen=True, eq=False)
class Shard:
    """The virtual patients of one shard.

    ``index``        shard number s (0-based).
    ``patient_ids``  int64[n], global ids start..stop-1 (see :func:`shard_bounds`).
    ``covariates``   dict name -> float64[n], in ``CohortSpec.covariates`` order.
    ``params``       float64[n, P], columns in ``CohortSpec.parameters`` order
                     (the model's parameter order), covariate effects applied.

    The arrays are read-only: every arm of a scenario shares one Shard (common
    random numbers), so an arm that changes parameters (a dose policy, an
    intervention) must work on a copy. ``eq=False``: shards compare by identity
    (compare the arrays with ``np.array_equal`` when needed).
    """

    index: int
    patient_ids: np.ndarray
    covariates: dict
    params: np.ndarray

    def __len__(self):
        return int(self.patient_ids.shape[0])


def shard_generator(seed, shard_index):
    """The random stream of shard ``s``:

        Generator(PCG64(SeedSequence(seed, spawn_key=(s,))))

    which is the same stream as ``SeedSequence(seed).spawn(k)[s]`` for any
    ``k >= s + 1``: it depends on the root seed and the shard number only,
    never on how many shards or workers a run has.
    """
    sequence = np.random.SeedSequence(int(seed), spawn_key=(int(shard_index),))
    return np.random.Generator(np.random.PCG64(sequence))


def _correlation_factor(spec, names):
    """(indices into spec.parameters, lower Cholesky factor L) for the
    correlated subset, or (None, None) when ``spec.correlation`` is None."""
    if spec.correlation is None:
        return None, None
    corr_names, matrix = spec.correlation
    corr_names = tuple(corr_names)
    matrix = np.asarray(matrix, dtype=np.float64)
    missing = [n for n in corr_names if n not in names]
    if missing:
        raise ValueError(f"cohort correlation names {missing} are not model parameters "
                         f"{list(names)}")
    if matrix.shape != (len(corr_names), len(corr_names)):
        raise ValueError(f"cohort correlation matrix has shape {matrix.shape}; expected "
                         f"({len(corr_names)}, {len(corr_names)}) for {list(corr_names)}")
    try:
        factor = np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        raise ValueError(f"cohort correlation matrix for {list(corr_names)} is not "
                         f"positive definite") from None
    return np.array([names.index(n) for n in corr_names], dtype=np.intp), factor


def sample_shard(spec, seed, shard_index, shard_size, n_patients):
    """Sample the virtual patients of shard ``shard_index``.

    Patients are those of :func:`shard_bounds` ``(n_patients, shard_size)[s]``;
    ``n = stop - start``. The stream is :func:`shard_generator` ``(seed, s)``
    and the draw inside a shard is fixed (changing it changes every cohort, so
    it is part of the reproducibility contract): one ``(n, n_covariates + P)``
    array of standard normals, a row per patient in order, split into the
    covariate normals ``Zc`` (first columns) and the parameter normals ``Zp``.

    A patient's values therefore depend on (seed, shard, index in shard) only,
    not on the shard's length: a short last shard keeps its patients when the
    cohort grows. Equations, for patient i, covariate j and parameter p (all float64):

        covariate_j    = median_j * exp(sd_log_j * Zc[i, j])
        z              = Zp[i]; z[S] = L @ z[S]       S: the parameters named in
                                                      ``spec.correlation``, L the
                                                      lower Cholesky factor of its
                                                      correlation matrix C; the
                                                      other parameters stay independent
        param_p        = typical_p * exp(sd_log_p * z_p)
        param_p       *= (covariate_c / reference) ** exponent
                                                      for each CovariateEffect on p,
                                                      in ``spec.effects`` order

    So log(param) is normal with mean log(typical) + sum exponent *
    log(covariate / reference) and, for the correlated subset, covariance
    diag(sd_log) C diag(sd_log). Where the numbers come from: typical values
    and ``sd_log`` are the model's (:class:`kernels.models.base.Parameter`,
    with their ``source``) unless the scenario's ``[cohort]`` table overrides
    them; covariate medians and spreads, effects and correlations are the
    scenario's (read and validated by :mod:`pipeline.config`).

    Arms: the sampler knows nothing of arms. Every arm of a scenario uses the
    same Shard (common random numbers), so differences between arms are paired
    patient by patient.

    Raises ValueError when ``shard_index`` is outside
    ``0 .. len(shard_bounds(n_patients, shard_size)) - 1``.
    """
    bounds = shard_bounds(n_patients, shard_size)
    s = int(shard_index)
    if not 0 <= s < len(bounds):
        raise ValueError(f"shard_index {shard_index} is out of range: {n_patients} patients "
                         f"in shards of {shard_size} give {len(bounds)} shard(s), "
                         f"indices 0..{len(bounds) - 1}")
    start, stop = bounds[s]
    n = stop - start

    names = [p.name for p in spec.parameters]
    typical = np.array([p.typical for p in spec.parameters], dtype=np.float64)
    sd_log = np.array([p.sd_log for p in spec.parameters], dtype=np.float64)
    cov_median = np.array([c.median for c in spec.covariates], dtype=np.float64)
    cov_sd_log = np.array([c.sd_log for c in spec.covariates], dtype=np.float64)
    corr_index, factor = _correlation_factor(spec, names)

    n_cov = len(spec.covariates)
    z = shard_generator(seed, s).standard_normal((n, n_cov + len(spec.parameters)))
    z_cov, z_par = z[:, :n_cov], z[:, n_cov:]

    cov_values = cov_median * np.exp(cov_sd_log * z_cov)
    covariates = {c.name: np.ascontiguousarray(cov_values[:, j])
                  for j, c in enumerate(spec.covariates)}

    if corr_index is not None:
        z_par[:, corr_index] = z_par[:, corr_index] @ factor.T
    params = typical * np.exp(sd_log * z_par)

    for effect in spec.effects:
        try:
            p = names.index(effect.parameter)
            covariate = covariates[effect.covariate]
        except (ValueError, KeyError):
            raise ValueError(f"covariate effect {effect.covariate!r} -> {effect.parameter!r} "
                             f"names an unknown parameter or covariate") from None
        params[:, p] *= (covariate / effect.reference) ** effect.exponent

    patient_ids = np.arange(start, stop, dtype=np.int64)
    for array in (patient_ids, params, *covariates.values()):
        array.setflags(write=False)
    return Shard(index=s, patient_ids=patient_ids, covariates=covariates,
                 params=params)
