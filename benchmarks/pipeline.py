"""End-to-end throughput and peak memory of a scenario run, on demand.

    .venv/bin/python benchmarks/pipeline.py [--config configs/default.toml]
                                            [--sizes 10000,100000,1000000] [--workers 2]

For each cohort size the scenario (all its arms) runs into a temporary
directory on a fresh LocalCluster of single-threaded worker processes, as
``cartcohort run`` does. Reported: patients/s and patient-arms/s (wall time of
the run, cluster start included), and the peak resident memory of the driver
and of each worker process (``ru_maxrss``), which must not grow with the cohort
at a fixed shard size: a worker holds one shard at a time.
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    # run as a file: put the repository first, or benchmarks/pipeline.py would
    # shadow the pipeline package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.config import load_scenario, with_overrides  # noqa: E402
from pipeline.runner import local_client, run  # noqa: E402


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(scenario, n, workers):
    scenario = with_overrides(scenario, patients=n)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        client = local_client(workers)
        try:
            run(scenario, Path(tmp) / "run", client=client)
            seconds = time.monotonic() - started
            worker_mb = sorted(client.run(_peak_rss_mb).values())
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()
    return seconds, worker_mb


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    scenario = load_scenario(args.config)
    arms = len(scenario.arms)
    print(f"scenario {scenario.name}: {arms} arms ({', '.join(a.policy for a in scenario.arms)}), "
          f"shard size {scenario.shard_size}, {args.workers} worker process(es), "
          f"{os.cpu_count()} CPUs")
    print(f"{'patients':>10} {'seconds':>9} {'patients/s':>11} {'patient-arms/s':>15} "
          f"{'worker peak RSS MB':>20} {'driver MB':>10}")
    for n in (int(s) for s in args.sizes.split(",")):
        seconds, worker_mb = measure(scenario, n, args.workers)
        print(f"{n:>10,} {seconds:>9.1f} {n / seconds:>11,.0f} {n * arms / seconds:>15,.0f} "
              f"{'/'.join(f'{m:.0f}' for m in worker_mb):>20} {_peak_rss_mb():>10.0f}", flush=True)


if __name__ == "__main__":
    main()
