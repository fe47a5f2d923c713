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


HEARTBEAT_S = 10.0      # a progress line at least this often, even between shards


def _is_terminal(stream):
    return getattr(stream, "isatty", lambda: False)()


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def _progress(done, total, started, patients_per_shard, stream):
    """One progress line, redrawn in place on a terminal, one line each in a
    log: shards done, patients/s, elapsed time and the ETA (from the mean time
    per shard so far; unknown before the first)."""
    elapsed = time.monotonic() - started
    rate = done * patients_per_shard / elapsed if elapsed > 0 else 0.0
    eta = _clock(elapsed / done * (total - done)) if done else "after the first shard"
    line = (f"shards {done}/{total} ({100 * done // max(total, 1)}%), "
            f"{rate:,.0f} patients/s, {_clock(elapsed)} elapsed, ETA {eta}")
    stream.write(f"\r{line}\x1b[K" if _is_terminal(stream) else f"{line}\n")
    stream.flush()


def _end_progress(computed, stream):
    if _is_terminal(stream):
        stream.write("\n")


def prepare_kernel(scenario, stream):
    """Compile the scenario's kernel in this process, or load it from Numba's
    disk cache, before any worker starts: one patient of the scenario through
    :func:`run_shard` (every arm, so every specialisation the shards use). The
    workers then load the compiled kernel from the cache instead of each
    compiling it on its own (minutes and ~800 MB each on a first run)."""
    from pipeline.config import with_overrides

    stream.write(f"preparing the kernel of {scenario.model} (compiled on the first run, "
                 f"about a minute; loaded from the cache afterwards) ...\n")
    stream.flush()
    started = time.monotonic()
    run_shard(with_overrides(scenario, patients=1, shard_size=1), 0)
    stream.write(f"kernel ready ({time.monotonic() - started:.1f} s)\n")
    stream.flush()


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
    from distributed import wait

    run_dir = Path(run_dir or scenario.run_dir)
    with nullcontext(lock) if lock else lock_for_run(run_dir, scenario, resume) as held:
        done = prepare(run_dir, scenario, resume, lock=held, stream=stream)
        pending = [s for s in range(scenario.n_shards) if s not in done]
        total = scenario.n_shards
        if resume and done:
            stream.write(f"resuming: {len(done)}/{total} shards already done\n")
        if not pending:
            return run_dir
        prepare_kernel(scenario, stream)
        own_client = client is None
        client = local_client(workers) if own_client else client
        if getattr(client, "dashboard_link", None):
            stream.write(f"dashboard: {client.dashboard_link}\n")
        started = time.monotonic()
        try:
            futures = [client.submit(_shard_task, scenario, str(run_dir), s,
                                     retries=TASK_RETRIES, pure=False,
                                     key=f"shard-{scenario.sha256[:12]}-{s}")
                       for s in pending]
            computed, remaining = 0, set(futures)
            _progress(computed, len(pending), started, scenario.shard_size, stream)
            while remaining:
                try:
                    finished = wait(remaining, timeout=HEARTBEAT_S,
                                    return_when="FIRST_COMPLETED").done
                except TimeoutError:                    # none finished: a heartbeat
                    finished = ()
                refused = None
                for future in sorted(finished, key=lambda f: f.key):
                    shard, records, refusal = future.result()
                    if refusal is not None:
                        refused = refused or refusal
                        continue
                    done[shard] = records
                    computed += 1
                if refused is not None:           # keep the shards of this batch, then stop
                    client.cancel(futures)
                    write_manifest(run_dir, scenario, done)
                    _end_progress(computed, stream)
                    raise refused
                remaining -= set(finished)
                if finished:
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
