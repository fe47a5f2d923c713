"""Real jobs on a SLURM cluster (locally: ``slurm/local-cluster.sh up``).

Under CI (``CI`` set; ``.ci/run`` brings the cluster up) these tests must run: a
missing ``sbatch`` or an unusable cluster fails them. Elsewhere they are skipped
when ``sbatch`` is missing or no node takes jobs, with the command to start one,
so ``make test`` stays green on a workstation where SLURM is installed but down
(the ``slurm_cluster`` fixture of tests/conftest.py).
"""
import re
import subprocess

import pytest

TIMEOUT_S = 60  # every subprocess; a job here takes seconds (sbatch --wait notices late)

pytestmark = pytest.mark.usefixtures("slurm_cluster")   # tests/conftest.py


def _run(*args, check=False):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=check)


def _script(path, body):
    path.write_text("#!/bin/bash\n" + body)
    return path


def _job_id(sbatch_stdout):
    # --parsable prints "ID" or "ID;cluster"
    return sbatch_stdout.strip().splitlines()[-1].split(";")[0]


def test_sbatch_wait_runs_a_job(tmp_path):
    marker = tmp_path / "ran.txt"
    script = _script(tmp_path / "job.sh", f'echo "$SLURM_JOB_ID" > "{marker}"\n'
                                          'echo "job $SLURM_JOB_ID"\n')
    res = _run("sbatch", "--wait", "--parsable", "--job-name=cartcohort-ok", "--ntasks=1",
               "--time=1", f"--chdir={tmp_path}", f"--output={tmp_path}/out-%j.txt",
               str(script))
    assert res.returncode == 0, res.stderr
    job_id = _job_id(res.stdout)
    assert marker.exists()
    assert marker.read_text().strip() == job_id
    assert (tmp_path / f"out-{job_id}.txt").read_text().strip() == f"job {job_id}"


def test_failing_job_reports_exit_code(tmp_path):
    script = _script(tmp_path / "fail.sh", "exit 3\n")
    res = _run("sbatch", "--wait", "--parsable", "--job-name=cartcohort-fail", "--ntasks=1",
               "--time=1", f"--chdir={tmp_path}", f"--output={tmp_path}/out-%j.txt",
               str(script))
    assert res.returncode != 0
    job_id = _job_id(res.stdout)
    assert re.fullmatch(r"\d+", job_id), res.stdout
    info = _run("scontrol", "show", "job", job_id, check=True).stdout
    assert re.search(r"\bExitCode=3:0\b", info), info
    assert "JobState=FAILED" in info, info


def test_srun_runs_two_tasks():
    res = _run("srun", "--ntasks=2", "--time=1", "hostname")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2, res.stdout
    assert all(line.strip() for line in lines)
