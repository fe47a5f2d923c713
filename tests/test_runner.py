"""The pipeline end to end on a real Dask LocalCluster with real Parquet files:
determinism across worker counts and scheduling orders, atomic resume after a
SIGKILL of the whole process group, and refusal of a changed configuration."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from pipeline.config import load_scenario
from pipeline.layout import RunDirectoryError
from pipeline.manifest import read_manifest
from small_run import SCENARIO, local_reference, patients, write_config
from pipeline.runner import _shard_task, run
from pipeline.store import prepare



@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """An uninterrupted run on two worker processes."""
    return local_reference(config, tmp_path_factory, workers=2)


def test_one_and_two_workers_and_any_order_give_identical_data(config, reference, tmp_path):
    """Same config and seed: identical data columns with 1 worker, 2 workers,
    and shards computed in reverse order without Dask."""
    scenario = load_scenario(config)
    one = tmp_path / "one_worker"
    run(scenario, one, workers=1)
    reverse = tmp_path / "reverse"
    prepare(reverse, scenario, resume=False)
    for shard in reversed(range(scenario.n_shards)):
        _shard_task(scenario, str(reverse), shard)
    assert len(reference) == 2 * 600
    pd.testing.assert_frame_equal(patients(one), reference)
    pd.testing.assert_frame_equal(patients(reverse), reference)


def test_killed_run_resumes_to_the_same_data(config, reference, tmp_path):
    """SIGKILL the whole process group mid-run, then --resume: exactly the data
    of an uninterrupted run, no missing, duplicate or partial shard."""
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "pipeline.cli", "run", str(config), "--out", str(run_dir),
               "--workers", "1", "--no-report"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        parts = list((run_dir / "patients").glob("arm=adaptive/*.parquet"))
        if parts:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list((run_dir / "patients").glob("arm=adaptive/*.parquet")))
    assert 1 <= written < 6, "the kill should land mid-run"
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run_dir.rglob("*.tmp"))
    pd.testing.assert_frame_equal(patients(run_dir), reference)
    manifest = read_manifest(run_dir)
    assert set(manifest["shards"].values()) == {"done"}


def test_resume_refuses_a_changed_config_and_a_rerun_needs_resume(config, tmp_path):
    """A second run into the same directory needs --resume; a changed config is refused."""
    scenario = load_scenario(config)
    run_dir = tmp_path / "run"
    prepare(run_dir, scenario, resume=False)
    with pytest.raises(RunDirectoryError, match="--resume"):
        prepare(run_dir, scenario, resume=False)
    changed = config.parent / "changed.toml"
    changed.write_text(SCENARIO.replace("seed = 7", "seed = 8"))
    with pytest.raises(RunDirectoryError, match=r"cannot resume, changed .*: seed 7 -> 8 "):
        prepare(run_dir, load_scenario(changed), resume=True)


def test_run_with_a_bad_config_fails_before_writing(tmp_path):
    """`cartcohort run` on a malformed scenario: one line naming the key, exit 2,
    nothing written."""
    bad = tmp_path / "bad.toml"
    bad.write_text(SCENARIO.replace("dose_cells = 1e8", "dose_cells = -1e8"))
    before = set(tmp_path.iterdir())
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(bad), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "arms[0].dose_cells" in result.stderr
    assert set(tmp_path.iterdir()) == before
