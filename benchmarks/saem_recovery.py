"""SAEM simulation and re-estimation study (issue 6, acceptance 1 and 2).

    .venv/bin/python benchmarks/saem_recovery.py [--replicates 20] [--patients 200]
                                                 [--study both|base|covariate]
                                                 [--workers 1] [--seed 1]

Each replicate simulates ``--patients`` virtual patients of Stein et al.
2019's closed-form kinetic model (CPT Pharmacometrics Syst Pharmacol 8:285;
docs/references.md#stein-2019) with its published typical values and omega^2, sampled
10 times over a year (days 1, 4, 7, 10, 14, 21, 28, 91, 182, 365), lognormal
residual error sigma = 0.56, and refits them with SAEM using the settings and
the deliberately rough initial values of configs/fit_stein.toml.

base study (acceptance 1): per parameter, the mean over replicates of the
relative error of the typical value and of omega^2 (with the standard
deviation over replicates and the min..max), and the coverage of the 95%
intervals exp(mu +- 1.96 SE) of the typical values.

covariate study (acceptance 2): the patients carry a baseline tumour burden
(log-normal, median 1e10 cells, sd of log 1.0: pipeline.config's cohort
default) with a planted effect foldx *= (tumour_burden_cells / 1e10) ** 0.5,
and a body weight (log-normal, median 75 kg, sd of log 0.2: also the cohort
default) with no effect. The fit estimates both effects (the weight on
alpha); reported: the planted exponent's mean estimate, relative error and
sign, the fraction of replicates within 25%, and how often each effect is
significant (Wald p < 0.05): power for the planted one, the false
significance rate for the absent one.
"""
import argparse
import dataclasses
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    # run as a file: put the repository first, or benchmarks/pipeline.py would
    # shadow the pipeline package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.estimate.data import make_dataset  # noqa: E402
from pipeline.estimate.fitconfig import load_fit_config  # noqa: E402
from pipeline.estimate.likelihood import Observations  # noqa: E402
from pipeline.estimate.population import Effect  # noqa: E402
from pipeline.estimate.saem import Z95, fit  # noqa: E402
from pipeline.estimate.structural import get_structural  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "fit_stein.toml"
# Stein 2019 (docs/references.md#stein-2019): typical values and omega^2 of the log parameters
TYPICAL = {"foldx": 3900.0, "Tmax": 9.3, "Cmax": 24000.0, "alpha": 0.16, "FB": 0.0079,
           "beta": 0.0032}
OMEGA2 = {"foldx": 2.4, "Tmax": 0.38, "Cmax": 0.65, "alpha": 0.91, "FB": 0.80, "beta": 0.86}
SIGMA = 0.56                       # Stein 2019: additive error on the log scale
DAYS = np.array([1.0, 4.0, 7.0, 10.0, 14.0, 21.0, 28.0, 91.0, 182.0, 365.0])
TUMOUR = (1e10, 1.0)               # (median cells, sd of log): pipeline.config default
WEIGHT = (75.0, 0.2)               # (median kg, sd of log): pipeline.config default
PLANTED = ("foldx", "tumour_burden_cells", 0.5)     # parameter, covariate, exponent
ABSENT = ("alpha", "weight_kg")


def simulate(n_patients, seed, planted_exponent):
    """A Dataset of ``n_patients`` Stein patients (module docstring), with the
    covariates tumour_burden_cells and weight_kg; ``planted_exponent`` the
    exponent of the tumour burden on foldx (0: none)."""
    rng = np.random.default_rng(seed)
    structural = get_structural("stein")
    names = structural.parameter_names
    tumour = TUMOUR[0] * np.exp(TUMOUR[1] * rng.standard_normal(n_patients))
    weight = WEIGHT[0] * np.exp(WEIGHT[1] * rng.standard_normal(n_patients))
    individual = np.repeat(np.arange(n_patients), DAYS.size)
    template = make_dataset(np.arange(n_patients), individual, np.tile(DAYS, n_patients),
                            np.full(individual.size, "cart", object), np.ones(individual.size),
                            covariates={"tumour_burden_cells": tumour, "weight_kg": weight})
    population = np.tile(np.log([TYPICAL[p] for p in names]), (n_patients, 1))
    population[:, names.index(PLANTED[0])] += planted_exponent * np.log(tumour / TUMOUR[0])
    omega = np.diag([OMEGA2[p] for p in names])
    observations = Observations.bind(structural, template, "lognormal", names, {})
    values = observations.simulate_population(population, omega, np.array([SIGMA]), 1, rng)
    return dataclasses.replace(template, value=values[0])


def replicate(args):
    """Fit one simulated dataset: {label: (estimate, standard error)} and the seconds."""
    study, index, n_patients, seed = args
    structural = get_structural("stein")
    config = load_fit_config(CONFIG, structural.parameter_names, structural.typical)
    spec, settings = config.spec, dataclasses.replace(config.settings, seed=seed + index)
    if study == "covariate":
        spec = dataclasses.replace(spec, effects=(
            Effect(PLANTED[0], PLANTED[1], "continuous", TUMOUR[0]),
            Effect(ABSENT[0], ABSENT[1], "continuous", WEIGHT[0])))
    data = simulate(n_patients, 1000 * seed + index, PLANTED[2] if study == "covariate" else 0)
    result = fit(structural, data, spec, settings)
    estimates = dict(zip(result.labels, zip(
        np.concatenate([result.coef, [result.omega[a, b] for a, b in result.omega_pairs],
                        result.sigma ** 2]), result.standard_errors)))
    return estimates, result.seconds


def _spread(values):
    return (f"{np.mean(values):+7.1%} (sd {np.std(values, ddof=1):5.1%}, "
            f"{np.min(values):+6.1%}..{np.max(values):+6.1%})")


def report_base(results):
    """Print acceptance 1: relative errors, spread and coverage; returns pass/fail.
    SE/SD: the mean reported SE of log(typical) over the standard deviation of
    the estimates across replicates (1 for calibrated standard errors)."""
    ok = True
    print(f"{'parameter':10s} {'typical: mean rel. error (sd, range)':44s} cover95 SE/SD  "
          f"{'omega^2: mean rel. error (sd, range)':44s}")
    for p, truth in TYPICAL.items():
        mu = np.array([r[p][0] for r, _ in results])
        se = np.array([r[p][1] for r, _ in results])
        typical_error = np.exp(mu) / truth - 1
        covered = np.abs(mu - np.log(truth)) <= Z95 * se
        omega_error = np.array([r[f"omega2_{p}"][0] for r, _ in results]) / OMEGA2[p] - 1
        passed = (abs(typical_error.mean()) <= 0.15 and abs(omega_error.mean()) <= 0.35
                  and covered.mean() >= 0.85)
        ok &= passed
        print(f"{p:10s} {_spread(typical_error):44s} {covered.mean():6.0%}  "
              f"{se.mean() / mu.std(ddof=1):4.2f}   {_spread(omega_error):44s} "
              f"{'ok' if passed else 'FAIL'}")
    sigma = np.sqrt([r["sigma2_cart"][0] for r, _ in results])
    print(f"sigma      {_spread(sigma / SIGMA - 1)}")
    return ok


def report_covariate(results):
    """Print acceptance 2: planted effect recovery, false significance; pass/fail."""
    planted = f"beta_{PLANTED[0]}_{PLANTED[1]}"
    absent = f"beta_{ABSENT[0]}_{ABSENT[1]}"

    def significant(label):
        return np.array([abs(r[label][0]) > Z95 * r[label][1] for r, _ in results])

    estimate = np.array([r[planted][0] for r, _ in results])
    se = np.array([r[planted][1] for r, _ in results])
    error = estimate / PLANTED[2] - 1
    right_sign = np.mean(np.sign(estimate) == np.sign(PLANTED[2]))
    false_rate = significant(absent).mean()
    print(f"planted {PLANTED[1]} on {PLANTED[0]}, exponent {PLANTED[2]}: mean estimate "
          f"{estimate.mean():.3f}, relative error {_spread(error)}")
    print(f"  right sign in {right_sign:.0%}, within 25% in {np.mean(np.abs(error) <= 0.25):.0%}"
          f", significant (p < 0.05) in {significant(planted).mean():.0%} of replicates; "
          f"95% interval covers it in {np.mean(np.abs(estimate - PLANTED[2]) <= Z95 * se):.0%}, "
          f"SE/SD {se.mean() / estimate.std(ddof=1):.2f}")
    print(f"absent {ABSENT[1]} on {ABSENT[0]}: mean estimate "
          f"{np.mean([r[absent][0] for r, _ in results]):+.3f}, significant in "
          f"{false_rate:.0%} of replicates (false significance)")
    return right_sign == 1.0 and abs(error.mean()) <= 0.25 and false_rate <= 0.10


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--study", choices=("both", "base", "covariate"), default="both")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    studies = ("base", "covariate") if args.study == "both" else (args.study,)
    ok = True
    for study in studies:
        started = time.perf_counter()
        jobs = [(study, i, args.patients, args.seed) for i in range(args.replicates)]
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                results = list(pool.map(replicate, jobs))
        else:
            results = [replicate(job) for job in jobs]
        seconds = [s for _, s in results]
        print(f"\n== {study} study: {args.replicates} replicates x {args.patients} patients "
              f"x {DAYS.size} samples; fit {np.mean(seconds):.1f} s each (wall "
              f"{time.perf_counter() - started:.0f} s)")
        ok &= report_base(results) if study == "base" else report_covariate(results)
    print("\nall criteria met" if ok else "\nsome criteria NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
