"""SLURM array tasks without SLURM: pipeline.batch.run_shards over ranges of
shards, then finalize, give the data of a Dask run; finalize refuses a run with
a missing shard, naming it; a directory of another configuration is refused."""
import json

import pandas as pd
import pytest

from pipeline import batch
from pipeline.layout import CONFIG, MANIFEST, RunDirectoryError, part_path
from pipeline.manifest import read_manifest
from pipeline.config import load_scenario
from pipeline.runner import run
from tests.test_runner import SCENARIO, patients


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text(SCENARIO)
    return path


def test_two_ranges_then_finalize_equal_a_local_run(config, tmp_path):
    scenario = load_scenario(config)
    assert scenario.n_shards == 6
    local = run(scenario, tmp_path / "local", workers=2)
    array = tmp_path / "array"
    assert batch.run_shards(scenario, array, 3, 10) == [3, 4, 5]   # stop past the end
    assert not (array / MANIFEST).exists()                    # tasks never write it
    assert (array / CONFIG).read_text() == scenario.text
    assert batch.run_shards(scenario, array, 0, 3) == [0, 1, 2]
    assert batch.run_shards(scenario, array, 0, 6) == []            # a rerun keeps them
    assert batch.finalize(scenario, array) == array
    manifest = read_manifest(array)
    assert set(manifest["shards"].values()) == {"done"}
    assert manifest["config_sha256"] == scenario.sha256
    reference = json.loads((local / MANIFEST).read_text())
    assert {k: v for k, v in manifest.items() if k != "version"} == \
        {k: v for k, v in reference.items() if k != "version"}
    pd.testing.assert_frame_equal(patients(array), patients(local))


def test_finalize_names_the_missing_shards(config, tmp_path):
    scenario = load_scenario(config)
    run_dir = tmp_path / "run"
    batch.run_shards(scenario, run_dir, 0, 2)
    batch.run_shards(scenario, run_dir, 3, 4)
    batch.run_shards(scenario, run_dir, 5, 6)
    with pytest.raises(ValueError, match=r"2 of 6 shard\(s\) missing: 2, 4$") as info:
        batch.finalize(scenario, run_dir)
    assert "\n" not in str(info.value)
    assert not (run_dir / MANIFEST).exists()
    # one partial shard: only one arm's file
    part_path(run_dir, "patients", "adaptive", 5).unlink()
    with pytest.raises(ValueError, match=r"missing: 2, 4, 5$"):
        batch.finalize(scenario, run_dir)


def test_another_configuration_is_refused(config, tmp_path):
    scenario = load_scenario(config)
    changed = config.parent / "changed.toml"
    changed.write_text(SCENARIO.replace("seed = 7", "seed = 8"))
    other = load_scenario(changed)
    run_dir = tmp_path / "run"
    batch.run_shards(scenario, run_dir, 0, 1)
    with pytest.raises(RunDirectoryError, match="another configuration"):
        batch.run_shards(other, run_dir, 1, 2)
    with pytest.raises(RunDirectoryError, match="another configuration"):
        batch.finalize(other, run_dir)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not a cartcohort run"):
        batch.run_shards(scenario, stranger, 0, 1)
    with pytest.raises(ValueError, match="START < STOP"):
        batch.run_shards(scenario, run_dir, 2, 2)
