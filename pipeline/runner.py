"""Fan the shards of a scenario out over a Dask cluster and store the results.

One task per shard. A task integrates its shard (pipeline.shard) and writes its
files (pipeline.layout) on the worker, so results never travel back through the
scheduler and a worker holds one shard at a time: memory is bounded by the
shard size, not the cohort size. Tasks are retried on failure; a task returns
its files' checksums, and the driver records finished shards with them in the
manifest and shows progress on stderr. A write the machine refuses (a full
disk, an unwritable folder) is not retried: the run stops, the shards already
recorded are kept, and the error is raised once, in the driver. The driver holds the run directory's
lock (pipeline.runlock.RunLock) for the whole run, so a second run into the same
directory is refused and the clean-up of temporaries never touches another
live run's files.

By default a LocalCluster with one single-threaded worker process per core
(Numba runs one thread inside each task, so Dask and Numba never
oversubscribe the cores). Pass your own ``distributed.Client`` to run on any
cluster (SLURM through dask-jobqueue, a scheduler file, ...).
"""
from contextlib import nullcontext
import logging
import os
import sys
import time
from pathlib import Path

from pipeline.layout import write_shard
from pipeline.manifest import write_manifest
from pipeline.runlock import remove_temporaries
from pipeline.shard import run_shard
from pipeline.store import lock_for_run, prepare

TASK_RETRIES = 2


def _shard_task(scenario, run_dir, shard):
    """Compute and write one shard; returns (shard, its files' records, None),
    or (shard, None, the OSError) when the machine refuses the write (a full
    disk, an unwritable folder): returned, not raised, so that Dask neither
    retries it nor logs it per worker, and the driver reports it once."""
    tables = run_shard(scenario, shard)
    try:
        return shard, write_shard(run_dir, scenario, shard, tables), None
    except OSError as exc:
        return shard, None, OSError(exc.errno, exc.strerror, exc.filename)


def _is_terminal(stream):
    return getattr(stream, "isatty", lambda: False)()


def _progress(done, total, started, patients_per_shard, stream):
    """One progress line: redrawn in place on a terminal, one line each in a log."""
    elapsed = time.monotonic() - started
    rate = done * patients_per_shard / elapsed if elapsed > 0 else 0.0
    line = (f"shards {done}/{total} ({100 * done // max(total, 1)}%), "
            f"{rate:,.0f} patients/s, {elapsed:.0f} s")
    stream.write(f"\r{line}" if _is_terminal(stream) else f"{line}\n")
    stream.flush()


def _end_progress(computed, stream):
    if computed and _is_terminal(stream):
        stream.write("\n")


def local_client(workers=None):
    """A LocalCluster client: ``workers`` single-threaded processes (default: one per core)."""
    from distributed import Client, LocalCluster

    n = workers or len(os.sched_getaffinity(0))
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":0", host="127.0.0.1",
                           silence_logs=logging.CRITICAL)
    return Client(cluster)


def run(scenario, run_dir=None, *, client=None, workers=None, resume=False, stream=sys.stderr,
        lock=None):
    """Run every pending shard of ``scenario`` into ``run_dir`` (default:
    ``scenario.run_dir``); returns the run directory. With ``resume``, shards
    already written are verified against the manifest and kept, and only the
    missing or failing ones are computed. Holds the run directory's lock
    throughout: ``lock``, a held RunLock of it, else one taken here."""
    from distributed import as_completed

    run_dir = Path(run_dir or scenario.run_dir)
    with nullcontext(lock) if lock else lock_for_run(run_dir, scenario, resume) as held:
        done = prepare(run_dir, scenario, resume, lock=held, stream=stream)
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
            futures = [client.submit(_shard_task, scenario, str(run_dir), s,
                                     retries=TASK_RETRIES, pure=False,
                                     key=f"shard-{scenario.sha256[:12]}-{s}")
                       for s in pending]
            computed = 0
            for future in as_completed(futures):
                shard, records, refused = future.result()
                if refused is not None:
                    client.cancel(futures)
                    _end_progress(computed, stream)
                    raise refused
                done[shard] = records
                computed += 1
                write_manifest(run_dir, scenario, done)
                _progress(computed, len(pending), started, scenario.shard_size, stream)
            _end_progress(computed, stream)
            remove_temporaries(run_dir, held)     # from workers lost mid-write
        finally:
            if own_client:
                cluster = client.cluster
                client.close()
                cluster.close()
    return run_dir
