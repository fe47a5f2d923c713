"""`cartcohort run --cluster slurm`: dask-jobqueue worker jobs on a real SLURM
(locally: ``slurm/local-cluster.sh up``; skipped or failed as tests/test_slurm_local.py,
by the ``slurm_cluster`` fixture of tests/conftest.py). No mocks: the runs submit
real worker jobs, and their data must equal a local run of the same scenario."""
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_scenario
from pipeline.manifest import read_manifest
from small_run import (SCENARIO, local_reference, patients, wait_for_first_shard,
                       write_config)

pytestmark = pytest.mark.usefixtures("slurm_cluster")

RUN_TIMEOUT_S = 240      # one whole `cartcohort run` (job start, Numba compile, 6 shards)
SQUEUE_TIMEOUT_S = 30



# The same cohort in 120 shards of 25: about 3 s on two workers, so that a job can
# be cancelled mid-run after the first shard is written (600 patients in 6 shards
# finish within a fraction of a second of the first one).
LONGER = SCENARIO.replace("patients = 600", "patients = 3000").replace(
    "shard_size = 100", "shard_size = 25")


def _config_and_reference(text, tmp_path_factory):
    """A scenario file and the data of a local run of it (a LocalCluster of one worker)."""
    path = write_config(tmp_path_factory, text)
    return path, local_reference(path, tmp_path_factory, workers=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _config_and_reference(SCENARIO, tmp_path_factory)


@pytest.fixture(scope="module")
def longer(tmp_path_factory):
    return _config_and_reference(LONGER, tmp_path_factory)


def cartcohort_run(config, run_dir, job_name, *extra):
    """The `cartcohort run ... --cluster slurm` command line: two worker jobs on loopback."""
    script = Path(sys.executable).with_name("cartcohort")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]
    return command + ["run", str(config), "--out", str(run_dir), "--cluster", "slurm",
                      "--jobs", "2", "--interface", "lo", "--walltime", "00:10:00",
                      "--memory", "1GB", "--job-name", job_name, "--no-report", *extra]


def jobs_named(name):
    """Ids of the queued, running or completing jobs called ``name``."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True,
                         timeout=SQUEUE_TIMEOUT_S, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[1:] == [name]]


def jobs_left(name, grace_s=15):
    """Jobs called ``name`` still queued once SLURM had ``grace_s`` to finish cancelling
    them (a cancelled job shows as completing for a moment); any left are cancelled
    here, so that a failing test leaves no job behind, and returned."""
    deadline = time.monotonic() + grace_s
    while jobs_named(name) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = jobs_named(name)
    if left:
        subprocess.run(["scancel", *left], timeout=SQUEUE_TIMEOUT_S)
    return left


def unique_name(what):
    return f"cc-{what}-{uuid.uuid4().hex[:8]}"


def assert_complete(run_dir, config, reference, killed_writer=False):
    """Exactly the local run's rows, one file per shard and arm, every shard 'done'.
    A worker killed while writing may leave a hidden ``.*.tmp`` file (ignored by the
    readers, swept by the next run or --resume: pipeline.store); no other."""
    n_shards = load_scenario(config).n_shards
    stale = list(Path(run_dir).rglob("*.tmp"))
    if killed_writer:
        stale = [path for path in stale if not path.name.startswith(".")]
    assert stale == []
    pd.testing.assert_frame_equal(patients(run_dir), reference)
    for arm in ("fixed", "adaptive"):
        assert len(list((run_dir / "patients" / f"arm={arm}").glob("*.parquet"))) == n_shards
    manifest = read_manifest(run_dir)
    assert len(manifest["shards"]) == n_shards
    assert set(manifest["shards"].values()) == {"done"}


def test_slurm_run_equals_a_local_run_and_cancels_its_jobs(small, tmp_path):
    config, reference = small
    name = unique_name("run")
    run_dir = tmp_path / "slurm"
    try:
        result = subprocess.run(cartcohort_run(config, run_dir, name), capture_output=True,
                                text=True, cwd=tmp_path, timeout=RUN_TIMEOUT_S)
    finally:
        leftover = jobs_left(name)
    assert result.returncode == 0, result.stderr
    assert "#SBATCH" in result.stderr and f"#SBATCH -J {name}" in result.stderr
    assert result.stderr.count("#SBATCH -J") == 1, "the job header is printed once"
    assert_complete(run_dir, config, reference)
    assert leftover == [], f"worker jobs {leftover} still queued after the run"


def test_a_cancelled_worker_job_loses_and_duplicates_no_shard(longer, tmp_path):
    """scancel one of the two worker jobs mid-run: Dask reschedules its shard on the
    other worker (or, if the run fails, --resume finishes it); the data are exactly a
    local run's, every shard 'done' once."""
    config, reference = longer
    name = unique_name("cancel")
    run_dir = tmp_path / "slurm"
    command = cartcohort_run(config, run_dir, name)
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_shard(run_dir, process, RUN_TIMEOUT_S)
        assert process.poll() is None, "the run ended before any shard was seen"
        running = jobs_named(name)
        assert len(running) == 2, running
        cancelled = running[0]
        subprocess.run(["scancel", cancelled], timeout=SQUEUE_TIMEOUT_S, check=True)
        written = len(list((run_dir / "patients").glob("arm=fixed/*.parquet")))
        _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        leftover = jobs_left(name)
    n_shards = load_scenario(config).n_shards
    print(f"shards written when job {cancelled} was cancelled: {written}/{n_shards}; "
          f"run exit status {process.returncode}")
    assert written < n_shards, "the cancel should land mid-run"
    if process.returncode != 0:
        resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True,
                                 cwd=tmp_path, timeout=RUN_TIMEOUT_S)
        assert resumed.returncode == 0, stderr + resumed.stderr
        assert jobs_left(name) == [], "worker jobs still queued after the resumed run"
    assert_complete(run_dir, config, reference, killed_writer=True)
    assert leftover == [], f"worker jobs {leftover} still queued after the run"


def test_ctrl_c_cancels_the_worker_jobs(longer, tmp_path):
    """Ctrl-C (SIGINT) mid-run: the run stops with status 130, its worker jobs cancelled."""
    config, _ = longer
    name = unique_name("sigint")
    run_dir = tmp_path / "slurm"
    process = subprocess.Popen(cartcohort_run(config, run_dir, name), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_shard(run_dir, process, RUN_TIMEOUT_S)
        assert process.poll() is None, "the run ended before any shard was seen"
        assert len(jobs_named(name)) == 2
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        leftover = jobs_left(name)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert leftover == [], f"worker jobs {leftover} still queued after Ctrl-C"
