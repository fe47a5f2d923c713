"""Calibration check: per-arm response and severe-CRS rates of a scenario.

    .venv/bin/python benchmarks/calibrate.py [CONFIG ...] [--patients 20000]
                                             [--seeds 20240601,7] [--adaptive] [--oracle]

For each scenario file (default: configs/default.toml and configs/debulking.toml)
and each seed (default: the scenario's own seed and 7), this runs the
scenario's shards exactly as the pipeline does (``pipeline.shard.run_shard``,
without Dask or files) for a cohort of ``--patients`` virtual patients, fixed
arms always, adaptive and oracle arms on request (the oracle bisects on the full
model: ~20 extra kernel calls per shard).

It prints, per arm: patients integrated (status 0), response and severe-CRS
(grade >= severe_crs_grade) rates with Wilson 95% intervals
(``pipeline.aggregate.wilson_interval``), the CRS grade distribution, and the
trajectory sanity checks of DESIGN.md section 3: median day of the CAR T peak,
median CAR T peak / dose (expansion fold), median and 5th-95th percentiles of
peak IL-6. Fixed arms without debulking are checked against the published
outcome bands of science/REFERENCES.md ("Cohort outcomes": response 50-85%,
grade >= 3 CRS 10-25%): "ok" when the whole Wilson interval lies inside the band.

Nothing is written; the run takes seconds (20,000 patients x arms x seeds).
"""
import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

if __package__ in (None, ""):
    # run as a file: put the repository first, or benchmarks/pipeline.py would
    # shadow the pipeline package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.aggregate import wilson_interval  # noqa: E402
from pipeline.config import load_scenario, with_overrides  # noqa: E402
from pipeline.shard import run_shard  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ("configs/default.toml", "configs/debulking.toml")
RESPONSE_BAND = (0.50, 0.85)      # REFERENCES.md, cohort outcomes
SEVERE_CRS_BAND = (0.10, 0.25)


def simulate(scenario, seed, n_patients, policies):
    """{arm: columns} for the arms whose policy is in ``policies``."""
    scenario = with_overrides(scenario, patients=n_patients, seed=seed)
    scenario = dataclasses.replace(
        scenario, arms=tuple(a for a in scenario.arms if a.policy in policies))
    parts = [run_shard(scenario, s) for s in range(scenario.n_shards)]
    return {arm.name: {name: column.to_numpy() for name, column in
                       zip(*_columns(pa.concat_tables([p[arm.name][0] for p in parts])))}
            for arm in scenario.arms}


def _columns(table):
    return table.column_names, table.columns


def rate(flags):
    """(events, n, rate, lower, upper) with the Wilson 95% interval."""
    events, n = int(np.count_nonzero(flags)), int(flags.size)
    lower, upper = wilson_interval(events, n)
    return events, n, events / n, float(lower), float(upper)


def in_band(lower, upper, band):
    return "ok" if band[0] <= lower and upper <= band[1] else "OUT OF BAND"


def report(scenario, arm, columns):
    ok = columns["status"] == 0
    c = {key: value[ok] for key, value in columns.items()}
    n_failed = int(np.count_nonzero(~ok))
    response, severe = rate(c["responded"]), rate(c["severe_crs"])
    grades = np.bincount(c["crs_grade"].astype(int), minlength=5) / max(1, c["crs_grade"].size)
    o = scenario.outcomes
    checked = arm.policy == "fixed" and arm.debulking_factor == 1.0
    print(f"  arm {arm.name} ({arm.policy}, debulking x{arm.debulking_factor:g}): "
          f"{response[1]} patients ok, {n_failed} failed; dose median "
          f"{np.median(c['dose_cells']):.3g} cells")
    print(f"    response (tumour <= {o.response_fraction:g} x T0 at day {o.response_day:g}): "
          f"{100 * response[2]:.2f}% [{100 * response[3]:.2f}, {100 * response[4]:.2f}]"
          + (f"  band 50-85%: {in_band(response[3], response[4], RESPONSE_BAND)}" if checked else ""))
    print(f"    severe CRS (grade >= {o.severe_crs_grade}, peak IL-6 thresholds "
          f"{list(o.crs_il6_thresholds_pg_ml)} pg/mL): "
          f"{100 * severe[2]:.2f}% [{100 * severe[3]:.2f}, {100 * severe[4]:.2f}]"
          + (f"  band 10-25%: {in_band(severe[3], severe[4], SEVERE_CRS_BAND)}" if checked else ""))
    print("    CRS grade 0..4: " + " ".join(f"{100 * g:.1f}%" for g in grades)
          + f"; relapsed {100 * np.mean(c['relapsed']):.1f}%")
    il6 = np.percentile(c["il6_peak_pg_ml"], [5, 50, 95])
    print(f"    medians: CAR T peak day {np.median(c['t_cart_peak_d']):.1f}, "
          f"CAR T peak / dose {np.median(c['cart_peak_cells'] / c['dose_cells']):.0f}x, "
          f"IL-6 peak day {np.median(c['t_il6_peak_d']):.1f}; "
          f"peak IL-6 {il6[1]:.0f} pg/mL (5th-95th {il6[0]:.0f}-{il6[2]:.0f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(DEFAULT_CONFIGS), metavar="CONFIG",
                        help="scenario files, relative to the repository root or absolute "
                             "(default: %(default)s)")
    parser.add_argument("--patients", type=int, default=20_000,
                        help="patients per cohort (default: %(default)s)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated cohort seeds (default: the scenario's and 7)")
    parser.add_argument("--adaptive", action="store_true", help="also evaluate adaptive arms")
    parser.add_argument("--oracle", action="store_true",
                        help="also evaluate oracle arms (slower: bisection on the full model)")
    args = parser.parse_args(argv)
    policies = {"fixed"} | ({"adaptive"} if args.adaptive else set()) | (
        {"oracle"} if args.oracle else set())

    for config in args.configs:
        path = Path(config) if Path(config).is_absolute() else ROOT / config
        scenario = load_scenario(path)
        seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
                 else [scenario.seed, 7])
        for seed in seeds:
            print(f"{config}: scenario {scenario.name}, seed {seed}, {args.patients} patients")
            begin = time.perf_counter()
            results = simulate(scenario, seed, args.patients, policies)
            for arm in scenario.arms:
                if arm.name not in results:
                    print(f"  arm {arm.name} ({arm.policy}): skipped "
                          f"(pass --{arm.policy} to evaluate it)")
                    continue
                report(scenario, arm, results[arm.name])
            print(f"  ({time.perf_counter() - begin:.1f} s)")


if __name__ == "__main__":
    main()
