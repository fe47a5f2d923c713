"""The cohort sampler (pipeline/cohort.py): shard layout, per-shard random
streams independent of scheduling, and the distributions it draws from."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from kernels.models import get_model
from pipeline.cohort import (CohortSpec, Covariate, CovariateEffect, ParameterDistribution,
                             Shard, sample_shard, shard_bounds, shard_generator)

N_BIG = 200_000     # patients in the one-shard statistics cohort
Z = 5.0             # tolerance in standard errors for every statistical check

# A correlated subset of cart parameters (kill rate, IL-6 release, IL-6 clearance)
# and a valid (positive definite) correlation matrix between their normals.
CORR_NAMES = ("k", "s", "c")
CORR_MATRIX = ((1.0, 0.6, -0.3),
               (0.6, 1.0, 0.2),
               (-0.3, 0.2, 1.0))


@pytest.fixture(scope="module")
def spec():
    """The real cart model's parameters (typical, sd_log, model order) with the two
    covariates the pipeline always samples; no effects, no correlation."""
    model = get_model("cart")
    parameters = tuple(ParameterDistribution(p.name, p.typical, p.sd_log)
                       for p in model.parameters)
    covariates = (Covariate("tumour_burden_cells", 1e10, 1.0),
                  Covariate("weight_kg", 75.0, 0.2))
    return CohortSpec(parameters=parameters, covariates=covariates)


def names(spec):
    return [p.name for p in spec.parameters]


def log_params(shard, spec, name):
    return np.log(shard.params[:, names(spec).index(name)])


def same(a, b):
    """Bitwise equality of two shards' arrays."""
    assert a.index == b.index
    assert a.patient_ids.tobytes() == b.patient_ids.tobytes()
    assert list(a.covariates) == list(b.covariates)
    for key in a.covariates:
        assert a.covariates[key].tobytes() == b.covariates[key].tobytes(), key
    assert a.params.shape == b.params.shape and a.params.tobytes() == b.params.tobytes()


# --------------------------------------------------------------------------
# 1. shard_bounds
# --------------------------------------------------------------------------

@pytest.mark.parametrize("n, size, expected", [
    (9, 3, [(0, 3), (3, 6), (6, 9)]),            # exact multiple
    (10, 3, [(0, 3), (3, 6), (6, 9), (9, 10)]),  # remainder: last shard short
    (5, 5, [(0, 5)]),                            # one shard, exactly full
    (4, 100, [(0, 4)]),                          # shard_size > n: one short shard
    (1, 1, [(0, 1)]),
    (0, 7, []),                                  # no patients, no shards
])
def test_shard_bounds_edge_cases(n, size, expected):
    """Half-open ranges that tile 0..n-1 in order, all full except possibly the last."""
    bounds = shard_bounds(n, size)
    assert bounds == expected
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))


def test_shard_bounds_rejects_bad_arguments():
    """shard_size < 1 and negative n_patients are errors, not empty lists."""
    with pytest.raises(ValueError, match="shard_size"):
        shard_bounds(10, 0)
    with pytest.raises(ValueError, match="n_patients"):
        shard_bounds(-1, 3)


def test_shard_index_out_of_range(spec):
    """A shard index outside 0..n_shards-1 is a ValueError naming the valid range."""
    with pytest.raises(ValueError, match=r"out of range.*4 shard"):
        sample_shard(spec, 1, 4, 3, 10)          # 10 patients / 3 -> shards 0..3
    with pytest.raises(ValueError, match="out of range"):
        sample_shard(spec, 1, -1, 3, 10)
    with pytest.raises(ValueError, match="out of range"):
        sample_shard(spec, 1, 0, 3, 0)


def test_shard_layout(spec):
    """Ids, shapes, dtypes, covariate order, and read-only arrays (arms share a shard)."""
    shard = sample_shard(spec, 7, 3, 4, 14)      # shards (0,4) (4,8) (8,12) (12,14)
    assert isinstance(shard, Shard) and shard.index == 3 and len(shard) == 2
    assert shard.patient_ids.dtype == np.int64 and shard.patient_ids.tolist() == [12, 13]
    assert list(shard.covariates) == ["tumour_burden_cells", "weight_kg"]
    for values in shard.covariates.values():
        assert values.dtype == np.float64 and values.shape == (2,)
    assert shard.params.dtype == np.float64 and shard.params.shape == (2, len(spec.parameters))
    assert np.all(shard.params > 0) and np.all(np.isfinite(shard.params))
    with pytest.raises(ValueError):
        shard.params[0, 0] = 1.0
    with pytest.raises(ValueError):
        shard.covariates["weight_kg"][0] = 1.0


# --------------------------------------------------------------------------
# 2. Determinism and independence from scheduling
# --------------------------------------------------------------------------

def test_order_of_sampling_does_not_matter(spec):
    """Shards sampled 0,1,2,3 and 3,1,0,2 (and one alone) are bitwise identical."""
    forward = {s: sample_shard(spec, 2024, s, 50, 180) for s in range(4)}
    backward = {s: sample_shard(spec, 2024, s, 50, 180) for s in (3, 1, 0, 2)}
    for s in range(4):
        same(forward[s], backward[s])
    same(forward[2], sample_shard(spec, 2024, 2, 50, 180))


def _sample(args):
    return sample_shard(*args)


def test_worker_processes_give_the_same_shards(spec):
    """Shards sampled by two worker processes (spawned, fresh interpreters) are
    bitwise identical to the same shards sampled in this process."""
    jobs = [(spec, 99, s, 40, 150) for s in range(4)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        # Submit pipeline.cohort.sample_shard itself, so that a worker imports only
        # that module (not this test module and the compiled model).
        remote = list(pool.map(sample_shard, *zip(*reversed(jobs))))[::-1]
    for job, shard in zip(jobs, remote):
        same(_sample(job), shard)


def test_full_shards_do_not_depend_on_the_number_of_shards(spec):
    """A full shard is the same whether the cohort has 2 or 20 shards."""
    small = sample_shard(spec, 5, 1, 64, 128)
    large = sample_shard(spec, 5, 1, 64, 64 * 20)
    same(small, large)


def test_patients_do_not_depend_on_shard_length(spec):
    """A short last shard keeps its patients (as a prefix) when the cohort grows."""
    short = sample_shard(spec, 5, 1, 64, 64 + 10)
    full = sample_shard(spec, 5, 1, 64, 128)
    assert short.params.tobytes() == full.params[:10].tobytes()
    assert short.covariates["weight_kg"].tobytes() == full.covariates["weight_kg"][:10].tobytes()


def test_stream_equals_seedsequence_spawn(spec):
    """Shard s's stream is SeedSequence(seed).spawn(k)[s] for any k > s; the
    sampler's arrays equal a construction from that spawned stream using the
    documented draw (one row of normals per patient: covariates, then parameters)."""
    seed, s, k_values = 31337, 5, (6, 7, 64)
    reference = shard_generator(seed, s).standard_normal(1000)
    for k in k_values:
        child = np.random.SeedSequence(seed).spawn(k)[s]
        spawned = np.random.Generator(np.random.PCG64(child)).standard_normal(1000)
        assert spawned.tobytes() == reference.tobytes()

    n_patients, size = 10 * 30, 30
    shard = sample_shard(spec, seed, s, size, n_patients)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed).spawn(10)[s]))
    z = rng.standard_normal((size, 2 + len(spec.parameters)))
    z_cov, z_par = z[:, :2], z[:, 2:]
    medians = np.array([c.median for c in spec.covariates])
    cov_sd = np.array([c.sd_log for c in spec.covariates])
    typical = np.array([p.typical for p in spec.parameters])
    sd_log = np.array([p.sd_log for p in spec.parameters])
    expected_cov = medians * np.exp(cov_sd * z_cov)
    expected_par = typical * np.exp(sd_log * z_par)
    assert shard.covariates["tumour_burden_cells"].tobytes() == expected_cov[:, 0].tobytes()
    assert shard.covariates["weight_kg"].tobytes() == expected_cov[:, 1].tobytes()
    assert shard.params.tobytes() == expected_par.tobytes()


def test_different_seeds_and_shards_differ(spec):
    """Another seed, or another shard of the same seed, gives different patients."""
    a = sample_shard(spec, 1, 0, 100, 300)
    b = sample_shard(spec, 2, 0, 100, 300)
    c = sample_shard(spec, 1, 1, 100, 300)
    for other in (b, c):
        assert not np.any(a.params == other.params)
        for key in a.covariates:
            assert not np.any(a.covariates[key] == other.covariates[key])


# --------------------------------------------------------------------------
# 3. Statistics on one large shard
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big(spec):
    return sample_shard(spec, 12345, 0, N_BIG, N_BIG)


def test_log_parameters_have_the_model_mean_and_sd(spec, big):
    """log(param) ~ N(log typical, sd_log^2): sample mean within 5 SE
    (SE = sd_log/sqrt(n)) and sample sd within 5 SE (SE ~ sd_log/sqrt(2n))."""
    n = N_BIG
    for j, p in enumerate(spec.parameters):
        x = np.log(big.params[:, j])
        assert abs(x.mean() - np.log(p.typical)) < Z * p.sd_log / np.sqrt(n), p.name
        assert abs(x.std(ddof=1) - p.sd_log) < Z * p.sd_log / np.sqrt(2 * n), p.name


def test_log_covariates_have_the_requested_median_and_sd(spec, big):
    """log(covariate) ~ N(log median, sd_log^2), same tolerances as parameters."""
    n = N_BIG
    for c in spec.covariates:
        x = np.log(big.covariates[c.name])
        assert abs(x.mean() - np.log(c.median)) < Z * c.sd_log / np.sqrt(n), c.name
        assert abs(x.std(ddof=1) - c.sd_log) < Z * c.sd_log / np.sqrt(2 * n), c.name


def test_no_correlation_without_a_matrix(spec, big):
    """Without a correlation matrix all log parameters and covariates are pairwise
    uncorrelated: |r| < 5/sqrt(n) for every pair."""
    columns = np.column_stack([np.log(big.params)]
                              + [np.log(v) for v in big.covariates.values()])
    r = np.corrcoef(columns, rowvar=False)
    off = r[~np.eye(r.shape[0], dtype=bool)]
    assert np.max(np.abs(off)) < Z / np.sqrt(N_BIG)


def test_correlation_matrix_is_reproduced(spec):
    """With a correlation among k, s and c, the sample correlation of their logs
    matches the matrix within 5 SE (SE = (1 - rho^2)/sqrt(n)); their marginal
    sd stays sd_log; every pair involving another parameter is uncorrelated."""
    corr_spec = replace(spec, correlation=(CORR_NAMES, CORR_MATRIX))
    shard = sample_shard(corr_spec, 777, 0, N_BIG, N_BIG)
    n = N_BIG
    logs = np.log(shard.params)
    r = np.corrcoef(logs, rowvar=False)
    index = [names(spec).index(name) for name in CORR_NAMES]
    target = np.array(CORR_MATRIX)
    for a in range(3):
        for b in range(a + 1, 3):
            rho = target[a, b]
            assert abs(r[index[a], index[b]] - rho) < Z * (1 - rho ** 2) / np.sqrt(n)
    for i in index:
        sd = spec.parameters[i].sd_log
        assert abs(logs[:, i].std(ddof=1) - sd) < Z * sd / np.sqrt(2 * n)
        assert abs(logs[:, i].mean() - np.log(spec.parameters[i].typical)) < Z * sd / np.sqrt(n)
    others = [i for i in range(len(spec.parameters)) if i not in index]
    for i in others:
        for j in range(len(spec.parameters)):
            if j != i:
                assert abs(r[i, j]) < Z / np.sqrt(n), (names(spec)[i], names(spec)[j])


def test_covariate_effect_slopes(spec):
    """Effects k *= (T/1e10)^0.5 * (W/70)^-0.75 and dE *= (W/70)^1.2: a least-squares
    regression of log(param) on log(cov/reference) recovers each exponent within
    5 SE (SE = sd_log_param / (sd_log_cov sqrt(n))) and the intercept log(typical)
    within 5 SE; a parameter without an effect has slope ~0."""
    effects = (CovariateEffect("k", "tumour_burden_cells", 0.5, 1e10),
               CovariateEffect("k", "weight_kg", -0.75, 70.0),
               CovariateEffect("dE", "weight_kg", 1.2, 70.0))
    shard = sample_shard(replace(spec, effects=effects), 4242, 0, N_BIG, N_BIG)
    n = N_BIG
    x_t = np.log(shard.covariates["tumour_burden_cells"] / 1e10)
    x_w = np.log(shard.covariates["weight_kg"] / 70.0)
    design = np.column_stack([np.ones(n), x_t, x_w])
    cases = {"k": (0.5, -0.75), "dE": (0.0, 1.2), "Kk": (0.0, 0.0)}
    for name, (e_t, e_w) in cases.items():
        p = spec.parameters[names(spec).index(name)]
        coef, *_ = np.linalg.lstsq(design, log_params(shard, spec, name), rcond=None)
        intercept, slope_t, slope_w = coef
        assert abs(slope_t - e_t) < Z * p.sd_log / (1.0 * np.sqrt(n)), name
        assert abs(slope_w - e_w) < Z * p.sd_log / (0.2 * np.sqrt(n)), name
        # Intercept SE ~ sd_log * sqrt(1/n + mean(x)^2/var(x)) summed over covariates
        se_intercept = p.sd_log * np.sqrt((1 + (np.log(75 / 70) / 0.2) ** 2) / n)
        assert abs(intercept - np.log(p.typical)) < Z * se_intercept, name


def test_effects_do_not_change_the_random_numbers(spec):
    """Adding effects multiplies parameters by the exact factor and leaves the
    covariates and the unaffected parameters bitwise unchanged (same stream)."""
    effect = CovariateEffect("s", "tumour_burden_cells", 0.3, 1e10)
    plain = sample_shard(spec, 8, 2, 100, 1000)
    with_effect = sample_shard(replace(spec, effects=(effect,)), 8, 2, 100, 1000)
    j = names(spec).index("s")
    factor = (plain.covariates["tumour_burden_cells"] / 1e10) ** 0.3
    np.testing.assert_array_equal(with_effect.params[:, j], plain.params[:, j] * factor)
    keep = [i for i in range(len(spec.parameters)) if i != j]
    assert with_effect.params[:, keep].tobytes() == plain.params[:, keep].tobytes()
    for key in plain.covariates:
        assert with_effect.covariates[key].tobytes() == plain.covariates[key].tobytes()


def test_non_positive_definite_correlation_is_rejected(spec):
    """A correlation matrix that is not positive definite is a ValueError."""
    bad = replace(spec, correlation=(("k", "s"), ((1.0, 1.5), (1.5, 1.0))))
    with pytest.raises(ValueError, match="positive definite"):
        sample_shard(bad, 1, 0, 10, 10)


# --------------------------------------------------------------------------
# 4. sd_log = 0
# --------------------------------------------------------------------------

def test_zero_spread_gives_exactly_the_typical_values(spec):
    """With every sd_log = 0 (parameters and covariates), even with a correlation
    matrix and an effect whose reference equals the covariate median, every
    patient has exactly the typical parameters and the median covariates."""
    zero = CohortSpec(
        parameters=tuple(replace(p, sd_log=0.0) for p in spec.parameters),
        covariates=tuple(replace(c, sd_log=0.0) for c in spec.covariates),
        effects=(CovariateEffect("k", "weight_kg", 0.75, 75.0),),
        correlation=(CORR_NAMES, CORR_MATRIX))
    shard = sample_shard(zero, 3, 1, 50, 120)
    typical = np.array([p.typical for p in spec.parameters])
    assert np.array_equal(shard.params, np.tile(typical, (50, 1)))
    for c in spec.covariates:
        assert np.array_equal(shard.covariates[c.name], np.full(50, c.median))
