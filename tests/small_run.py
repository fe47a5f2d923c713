"""A small two-arm scenario and a canonical reader, shared by the tests that run
the pipeline (locally, on Dask, on SLURM) and compare their datasets."""
from pathlib import Path

import pyarrow.dataset as ds

SCENARIO = """
[scenario]
name = "small"
model = "cart"
seed = 7
patients = 600
shard_size = 100
horizon_days = 365.0

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


def patients(run_dir):
    """All patient rows, in a canonical order, with the arm from the partition."""
    table = ds.dataset(Path(run_dir) / "patients", format="parquet",
                       partitioning="hive").to_table()
    frame = table.to_pandas()
    frame["arm"] = frame["arm"].astype(str)
    return frame.sort_values(["arm", "patient_id"]).reset_index(drop=True)
