"""A small two-arm scenario and a canonical reader, shared by the tests that run
the pipeline (locally, on Dask, on SLURM) and compare their datasets."""
import time
from pathlib import Path

import pyarrow.dataset as ds

# the fixed and adaptive arms most test scenarios share
FIXED_AND_ADAPTIVE_ARMS = """\
[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8

[[arms]]
name = "adaptive"
policy = "adaptive"
target_il6_pg_ml = 1000.0
min_dose_cells = 1e7
max_dose_cells = 1e9
"""

SCENARIO = """
[scenario]
name = "small"
model = "cart"
seed = 7
patients = 600
shard_size = 100
horizon_days = 365.0

""" + FIXED_AND_ADAPTIVE_ARMS


def patients(run_dir):
    """All patient rows, in a canonical order, with the arm from the partition."""
    table = ds.dataset(Path(run_dir) / "patients", format="parquet",
                       partitioning="hive").to_table()
    frame = table.to_pandas()
    frame["arm"] = frame["arm"].astype(str)
    return frame.sort_values(["arm", "patient_id"]).reset_index(drop=True)


def write_config(tmp_path_factory, text=SCENARIO):
    """The scenario text as a file in a fresh temporary folder."""
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text(text)
    return path


def local_reference(config, tmp_path_factory, workers):
    """The data of a local (LocalCluster) run of ``config``."""
    from pipeline.config import load_scenario
    from pipeline.runner import run

    run_dir = tmp_path_factory.mktemp("runs") / "local"
    run(load_scenario(config), run_dir, workers=workers)
    return patients(run_dir)


def wait_for_first_shard(run_dir, process, timeout_s):
    """Poll until a patients file exists or ``process`` ends (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if list((Path(run_dir) / "patients").glob("arm=*/*.parquet")):
            return
        time.sleep(0.05)
