"""Where a run's shards are computed: the Dask client for ``cartcohort run --cluster``.

* ``local`` (default): no client here; the runner starts a LocalCluster of
  single-threaded worker processes, one per core (pipeline.runner).
* ``scheduler-file``: connect to a cluster started inside an allocation (the
  scheduler and ``srun`` workers of slurm/cohort.sbatch) through its scheduler
  file; the cluster belongs to the allocation, so only the client is closed.
* ``slurm``: dask-jobqueue's SLURMCluster submits worker jobs, configured by the
  scenario's ``[cluster.slurm]`` table and the command-line flags.
"""
import contextlib
import dataclasses
import signal
import sys
import threading

# Numba (and any BLAS) runs one thread inside each single-threaded worker process.
_SINGLE_THREADED = ("export NUMBA_NUM_THREADS=1", "export OMP_NUM_THREADS=1",
                    "export OPENBLAS_NUM_THREADS=1", "export MKL_NUM_THREADS=1")


@contextlib.contextmanager
def client_for(kind, scenario, options):
    """A context yielding the distributed.Client for ``kind`` (None for local)."""
    if kind == "local":
        yield None
    elif kind == "scheduler-file":
        if not options.scheduler_file:
            raise ValueError("--cluster scheduler-file needs --scheduler-file F")
        from distributed import Client

        with Client(scheduler_file=options.scheduler_file) as client:
            yield client
    elif kind == "slurm":
        with _slurm_client(slurm_settings(scenario, options)) as client:
            yield client
    else:
        raise ValueError(f"--cluster {kind}: unknown cluster kind")


# command-line option -> [cluster.slurm] key
_FLAGS = {"partition": "partition", "account": "account", "cores": "cores",
          "memory": "memory", "walltime": "walltime", "jobs": "jobs",
          "interface": "interface", "job_name": "job_name", "job_extra": "job_extra"}


def slurm_settings(scenario, options):
    """The scenario's ``[cluster.slurm]`` settings with the command-line flags given
    (those not None) in their place."""
    given = {key: getattr(options, flag, None) for flag, key in _FLAGS.items()}
    given = {key: (tuple(value) if key == "job_extra" else value)
             for key, value in given.items() if value is not None}
    settings = dataclasses.replace(scenario.cluster_slurm, **given)
    if settings.processes > settings.cores:
        raise ValueError(f"--cores {settings.cores}: fewer than the {settings.processes} "
                         f"worker processes per job of [cluster.slurm] processes")
    return settings


def slurm_cluster(settings):
    """A dask_jobqueue.SLURMCluster (no jobs submitted yet): each job books
    ``cores`` CPUs and runs ``processes`` single-threaded worker processes."""
    SLURMCluster = _import_slurm_cluster()
    interface = settings.interface
    return SLURMCluster(
        queue=settings.partition, account=settings.account,
        cores=settings.processes, processes=settings.processes,   # one thread a process
        job_cpu=settings.cores, memory=settings.memory, walltime=settings.walltime,
        interface=interface, job_name=settings.job_name,
        job_extra_directives=list(settings.job_extra),
        job_script_prologue=list(_SINGLE_THREADED),
        scheduler_options={"interface": interface} if interface else {})


def _import_slurm_cluster():
    """dask_jobqueue.SLURMCluster, keeping Ctrl-C a KeyboardInterrupt: importing
    dask_jobqueue (0.9) replaces the SIGINT handler with ``sys.exit()`` (exit status
    0, as if the run had succeeded); the handler in place before is restored."""
    before = signal.getsignal(signal.SIGINT)
    try:
        from dask_jobqueue import SLURMCluster
    finally:
        if (before is not None and signal.getsignal(signal.SIGINT) is not before
                and threading.current_thread() is threading.main_thread()):
            signal.signal(signal.SIGINT, before)
    return SLURMCluster


@contextlib.contextmanager
def _slurm_client(settings, stream=sys.stderr):
    """Submit ``settings.jobs`` worker jobs and yield a Client of them; the cluster is
    closed (its worker jobs cancelled) however the block ends, Ctrl-C included."""
    from distributed import Client

    cluster = slurm_cluster(settings)
    try:
        stream.write(f"SLURM worker jobs ({settings.jobs}), each with this header:\n"
                     f"{cluster.job_header}\n")
        stream.flush()
        cluster.scale(jobs=settings.jobs)
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
