"""Fan the shards of a scenario out over a Dask cluster and store the results.

One task per shard. A task integrates its shard (pipeline.shard) and writes its
files (pipeline.store) on the worker, so results never travel back through the
scheduler and a worker holds one shard at a time: memory is bounded by the
shard size, not the cohort size. Tasks are retried on failure; the driver
records finished shards in the manifest and shows progress on stderr.

By default a LocalCluster with one single-threaded worker process per core
(Numba runs one thread inside each task, so Dask and Numba never
oversubscribe the cores). Pass your own ``distributed.Client`` to run on any
cluster (SLURM through dask-jobqueue, a scheduler file, ...).
"""
import os
import sys
import time
from pathlib import Path

from pipeline import store
from pipeline.shard import run_shard

TASK_RETRIES = 2


def _shard_task(scenario, run_dir, shard):
    store.write_shard(run_dir, scenario, shard, run_shard(scenario, shard))
    return shard


def _progress(done, total, started, patients_per_shard, stream):
    elapsed = time.monotonic() - started
    rate = done * patients_per_shard / elapsed if elapsed > 0 else 0.0
    stream.write(f"\rshards {done}/{total} ({100 * done // max(total, 1)}%), "
                 f"{rate:,.0f} patients/s, {elapsed:.0f} s")
    stream.flush()


def local_client(workers=None):
    """A LocalCluster client: ``workers`` single-threaded processes (default: one per core)."""
    from distributed import Client, LocalCluster

    n = workers or len(os.sched_getaffinity(0))
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":0", host="127.0.0.1")
    return Client(cluster)


def run(scenario, run_dir=None, *, client=None, workers=None, resume=False, stream=sys.stderr):
    """Run every pending shard of ``scenario`` into ``run_dir`` (default:
    ``scenario.run_dir``); returns the run directory. With ``resume``, shards
    already written are kept and only the missing ones are computed."""
    from distributed import as_completed

    run_dir = Path(run_dir or scenario.run_dir)
    done = store.prepare(run_dir, scenario, resume)
    pending = [s for s in range(scenario.n_shards) if s not in done]
    total = scenario.n_shards
    if resume and done:
        stream.write(f"resuming: {len(done)}/{total} shards already done\n")
    if not pending:
        return run_dir
    own_client = client is None
    client = local_client(workers) if own_client else client
    started = time.monotonic()
    try:
        futures = [client.submit(_shard_task, scenario, str(run_dir), s, retries=TASK_RETRIES,
                                 pure=False, key=f"shard-{scenario.sha256[:12]}-{s}")
                   for s in pending]
        computed = 0
        for future in as_completed(futures):
            done.add(future.result())
            computed += 1
            store.write_manifest(run_dir, scenario, done)
            _progress(computed, len(pending), started, scenario.shard_size, stream)
        stream.write("\n")
        store.remove_temporaries(run_dir)   # from workers lost mid-write
    finally:
        if own_client:
            cluster = client.cluster
            client.close()
            cluster.close()
    return run_dir
