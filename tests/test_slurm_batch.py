"""The batch scripts on a real SLURM cluster (locally: ``slurm/local-cluster.sh up``):
slurm/cohort.sbatch (Dask inside one allocation) and slurm/submit-array.sh (a job
array without Dask, then a dependent finalize job) give the dataset of a local
run; a bad scenario through cohort.sbatch fails the job with the run's exit code
and a one-line error in its log, leaving nothing that looks complete.

Skip/fail policy: the ``slurm_cluster`` fixture of tests/conftest.py. The jobs run on the
loopback interface (CARTCOHORT_INTERFACE=lo) with this interpreter's environment
first on PATH (--export=ALL), and share one Numba cache, compiled once up front.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.layout import MANIFEST
from pipeline.manifest import read_manifest
from small_run import SCENARIO, local_reference, patients, write_config

pytestmark = pytest.mark.usefixtures("slurm_cluster")   # tests/conftest.py
ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 300     # one job of this small scenario takes seconds once compiled
COMPILE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory)


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    """The jobs' environment: this interpreter's bin first on PATH, loopback."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CARTCOHORT_INTERFACE"] = "lo"
    env["NUMBA_CACHE_DIR"] = str(tmp_path_factory.mktemp("numba-cache"))
    env.pop("CARTCOHORT_PYTHON", None)
    return env


@pytest.fixture(scope="module")
def job_env(tmp_path_factory, config, base_env):
    """base_env with its Numba cache warmed by one process (otherwise every
    worker compiles the kernels at once, on few cores)."""
    warm = tmp_path_factory.mktemp("warm") / "run"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run-shards", str(config),
                             "--out", str(warm), "--shards", "0:1"], env=base_env,
                            capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return base_env


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    return local_reference(config, tmp_path_factory, workers=2)


def _job_id(sbatch_stdout):
    # --parsable prints "ID" or "ID;cluster"
    return sbatch_stdout.strip().splitlines()[-1].split(";")[0]


def _job_info(job_id):
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def _wait_gone(job_id, timeout_s=JOB_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True,
                                timeout=60).stdout
        if not queued.strip():
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], timeout=60)
    pytest.fail(f"job {job_id} still queued after {timeout_s} s")


def _sbatch_cohort(tmp_path, env, *args):
    return subprocess.run(["sbatch", "--wait", "--parsable", "--export=ALL", "--time=10",
                           str(ROOT / "slurm" / "cohort.sbatch"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S)


def test_cohort_sbatch_gives_the_local_data(config, job_env, reference, tmp_path):
    out = tmp_path / "runs" / "cohort"
    result = _sbatch_cohort(tmp_path, job_env, str(config), str(out))
    job_id = _job_id(result.stdout)
    log = tmp_path / f"cartcohort-{job_id}.log"
    assert result.returncode == 0, log.read_text() if log.exists() else result.stderr
    assert re.search(r"\bExitCode=0:0\b", _job_info(job_id))
    text = log.read_text()
    assert "worker(s) connected" in text and "exited with status 0" in text, text
    pd.testing.assert_frame_equal(patients(out), reference)
    assert set(read_manifest(out)["shards"].values()) == {"done"}
    assert (out / "report" / "summary.csv").exists()
    # the scheduler file's folder is gone: the cluster was shut down with the job
    assert not list(out.parent.glob(".cartcohort-dask-*"))


def test_array_path_gives_the_local_data(config, job_env, reference, tmp_path):
    out = tmp_path / "runs" / "array"
    submitted = subprocess.run([str(ROOT / "slurm" / "submit-array.sh"), str(config), str(out),
                                "2", "--", "--time=10"], cwd=tmp_path, env=job_env,
                               capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    ids = dict(line.split() for line in submitted.stdout.splitlines())
    assert set(ids) == {"array", "finalize"}, submitted.stdout
    _wait_gone(ids["finalize"])
    info = _job_info(ids["finalize"])
    log = tmp_path / f"cartcohort-finalize-{ids['finalize']}.log"
    assert "JobState=COMPLETED" in info and re.search(r"\bExitCode=0:0\b", info), \
        log.read_text() if log.exists() else info
    assert sorted(p.name for p in tmp_path.glob(f"cartcohort-{ids['array']}_*.log")) == \
        [f"cartcohort-{ids['array']}_{i}.log" for i in range(3)]
    pd.testing.assert_frame_equal(patients(out), reference)
    assert set(read_manifest(out)["shards"].values()) == {"done"}


def test_a_bad_config_fails_the_job(base_env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SCENARIO.replace("dose_cells = 1e8", "dose_cells = -1e8"))
    out = tmp_path / "runs" / "bad"
    result = _sbatch_cohort(tmp_path, base_env, str(bad), str(out))
    assert result.returncode != 0
    job_id = _job_id(result.stdout)
    info = _job_info(job_id)
    assert "JobState=FAILED" in info and re.search(r"\bExitCode=2:0\b", info), info
    errors = [line for line in (tmp_path / f"cartcohort-{job_id}.log").read_text().splitlines()
              if "error" in line]
    assert len(errors) == 1 and "arms[0].dose_cells" in errors[0], errors
    assert not (out / MANIFEST).exists()
    assert not list(out.rglob("*.parquet")) if out.exists() else True
