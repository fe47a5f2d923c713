"""Individual fits: time per batched Levenberg-Marquardt iteration (issue 6, acceptance 3).

    .venv/bin/python benchmarks/fit.py [--sizes 1000,10000] [--models stein,stein_ode]
                                       [--sigma 0.005] [--seed 1]

For each model and N: N virtual patients of Stein et al. 2019's model
(CPT Pharmacometrics Syst Pharmacol 8:285; typical values and omega^2 of
docs/references.md#stein-2019, through ``pipeline.estimate.simulate``) sampled 30 times
over a year (the dense design of tests/test_estimate_individual.py) with
lognormal error ``--sigma``, fitted by ``fit_individuals`` from the model's
three starts per patient (S = 3), so each iteration evaluates up to
3 N (P + 1) = 21 N parameter vectors, in ONE structural call: for
``stein_ode`` one batched kernel call with 21 N lanes.

Reported per (model, N):

* one iteration at full batch: a fit stopped after one iteration
  (``max_iterations=1``) does two full evaluations (the starts and one trial),
  so it is half that fit's time; best of 3;
* the complete fit: wall time, batched iterations (passes of the loop, each
  over the individuals still running), mean time per pass, and the share of
  patients whose every parameter is within 5% of the truth.

Numba's thread count is the machine's default (``NUMBA_NUM_THREADS``); the
kernel is compiled (or loaded from the disk cache) by a warm-up fit first.
"""
import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):
    # run as a file: put the repository first, or benchmarks/pipeline.py would
    # shadow the pipeline package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numba  # noqa: E402

from pipeline.estimate.individual import fit_individuals  # noqa: E402
from pipeline.estimate.simulate import sample_parameters, simulate_observations  # noqa: E402
from pipeline.estimate.structural import get_structural  # noqa: E402

DENSE_DAYS = np.array([0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 18, 21, 24, 28,
                       35, 42, 56, 70, 90, 120, 150, 180, 270, 365], dtype=float)


def dataset(n, sigma, seed):
    stein = get_structural("stein")
    theta = sample_parameters(stein, n, seed=seed)
    return theta, simulate_observations(stein, theta, DENSE_DAYS, sigma=sigma, seed=seed)


def one_iteration_s(model, data, sigma, repeats=3):
    """Seconds per full-batch iteration: half of a one-iteration fit, best of ``repeats``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit_individuals(model, data, "lognormal", sigma, max_iterations=1)
        times.append(time.perf_counter() - start)
    return min(times) / 2


def full_fit(model, data, theta, sigma):
    start = time.perf_counter()
    fit = fit_individuals(model, data, "lognormal", sigma)
    seconds = time.perf_counter() - start
    within = (np.abs(fit.estimates / theta - 1) < 0.05).all(axis=1).mean()
    return seconds, int(fit.iterations.max()), within, fit.converged.mean()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--models", default="stein,stein_ode")
    parser.add_argument("--sigma", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    models = [get_structural(name) for name in args.models.split(",")]

    _, warm = dataset(8, args.sigma, args.seed)
    for model in models:
        fit_individuals(model, warm, "lognormal", args.sigma)
    print(f"numba threads {numba.get_num_threads()}, {DENSE_DAYS.size} samples per patient, "
          f"lognormal sigma {args.sigma}, 3 starts per patient")
    header = ("model", "N", "rows/iteration", "s/iteration", "fit s", "passes", "s/pass",
              "within 5%", "converged")
    print("  ".join(f"{h:>14}" for h in header))
    for n in sizes:
        theta, data = dataset(n, args.sigma, args.seed)
        for model in models:
            per_iteration = one_iteration_s(model, data, args.sigma)
            seconds, passes, within, converged = full_fit(model, data, theta, args.sigma)
            rows = 3 * n * (model.n_parameters + 1)
            cells = (model.name, n, rows, f"{per_iteration:.3f}", f"{seconds:.2f}", passes,
                     f"{seconds / passes:.3f}", f"{within:.1%}", f"{converged:.1%}")
            print("  ".join(f"{c:>14}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
