"""Open a run's results: pandas DataFrames (through pyarrow) and DuckDB SQL.

A run directory ``RUN`` holds plain Hive-partitioned Parquet (README.md#running-scenarios)::

    RUN/patients/arm=<arm>/part-<shard:05d>.parquet       one row per patient and arm
    RUN/trajectories/arm=<arm>/part-<shard:05d>.parquet   optional: a sample of patients
    RUN/_manifest.json                                    scenario, arms, shard states
    RUN/config.toml                                       the scenario text

so pandas, pyarrow, Dask and DuckDB read it directly; the ``arm`` column comes
from the directory names. Here:

* :func:`open_patients` / :func:`open_trajectories`: the datasets as DataFrames,
  ``arm`` a string column, rows in the manifest's arm order;
* :func:`connect`: a DuckDB connection with views ``patients`` and, when the run
  has them, ``trajectories``;
* :func:`query`: one SQL statement over those views, as a DataFrame
  (``cartcohort query RUN "SQL"``).

Only files named ``part-*.parquet`` count, so a file still being written under a
temporary name is never read. Problems (no run directory, no patients dataset,
bad SQL) raise :class:`ValueError` with a one-line message. These functions read
the files as they are; ``cartcohort query`` and ``cartcohort report`` first check
the run against its manifest (:func:`pipeline.store.check_run`).
"""
from pathlib import Path
import re

import pandas as pd

from pipeline.layout import CONFIG, MANIFEST
from pipeline.manifest import parse_manifest

PATIENTS = "patients"
TRAJECTORIES = "trajectories"
_PARTS = "arm=*/part-*.parquet"


def _run_path(run_dir):
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"{run}: no such run directory")
    return run


def _parts(run, dataset):
    return sorted((run / dataset).glob(_PARTS))


def _require_patients(run):
    if not _parts(run, PATIENTS):
        raise ValueError(f"{run}: no patients dataset (expected "
                         f"{PATIENTS}/arm=<arm>/part-<shard>.parquet in the run directory)")


def read_manifest(run_dir):
    """The run's ``_manifest.json`` as a dict; ``{}`` when the run has none. The
    keys present are checked for type (pipeline.manifest.manifest_problem); a
    damaged manifest raises ValueError, one line suggesting ``cartcohort repair``."""
    run = _run_path(run_dir)
    path = run / MANIFEST
    if not path.is_file():
        return {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    return parse_manifest(raw, run, complete=False)


def _config_arms(run):
    """Arm names in ``RUN/config.toml`` order; [] when it is missing or unreadable."""
    try:
        import tomllib
    except ModuleNotFoundError:           # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads((run / CONFIG).read_text(encoding="utf-8"))
        return [str(arm["name"]) for arm in data.get("arms", [])]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return []


def arm_order(run_dir, arms=()):
    """Arm names in the manifest's order (the config's, from ``config.toml``
    when the manifest has none), then any others in ``arms`` (e.g. found in the
    data) in sorted order."""
    run = _run_path(run_dir)
    listed = [str(a) for a in read_manifest(run).get("arms", [])] or _config_arms(run)
    listed = list(dict.fromkeys(listed))
    return listed + sorted({str(a) for a in arms} - set(listed))


def _open(run, dataset, columns=None):
    import pyarrow as pa
    import pyarrow.dataset as ds

    files = _parts(run, dataset)
    partitioning = ds.partitioning(pa.schema([("arm", pa.string())]), flavor="hive")
    data = ds.dataset([str(f) for f in files], format="parquet", partitioning=partitioning,
                      partition_base_dir=str(run / dataset))
    frame = data.to_table(columns=columns).to_pandas()
    frame["arm"] = frame["arm"].astype(str)
    order = {arm: i for i, arm in enumerate(arm_order(run, frame["arm"].unique()))}
    keys = [k for k in ("shard", "patient_id", "t_d") if k in frame.columns]
    frame = frame.assign(_arm_rank=frame["arm"].map(order))
    frame = frame.sort_values(["_arm_rank", *keys], kind="stable").drop(columns="_arm_rank")
    return frame.reset_index(drop=True)


def open_patients(run_dir, columns=None):
    """The patients dataset as a DataFrame: one row per patient and arm, ``arm``
    a string column, rows ordered by arm (manifest order), shard and patient_id.
    ``columns``: read only these (``arm`` is always included)."""
    run = _run_path(run_dir)
    _require_patients(run)
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "arm"]))
    return _open(run, PATIENTS, columns)


def has_trajectories(run_dir):
    return bool(_parts(_run_path(run_dir), TRAJECTORIES))


def open_trajectories(run_dir, columns=None):
    """The sampled trajectories as a DataFrame (patient_id, shard, t_d, one
    column per model state, arm), or ``None`` when the run has none."""
    run = _run_path(run_dir)
    if not _parts(run, TRAJECTORIES):
        return None
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "arm"]))
    return _open(run, TRAJECTORIES, columns)


def _sql_string(text):
    return "'" + str(text).replace("'", "''") + "'"


def _one_line(exc):
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def connect(run_dir):
    """An in-memory DuckDB connection with a view ``patients`` over the run's
    patients dataset and, when the run has one, ``trajectories``."""
    import duckdb

    run = _run_path(run_dir)
    _require_patients(run)
    con = duckdb.connect()
    for dataset in (PATIENTS, TRAJECTORIES):
        if _parts(run, dataset):
            pattern = _sql_string((run / dataset).resolve() / _PARTS)
            source = (f"read_parquet({pattern}, hive_partitioning = true, "
                      "hive_types = {'arm': VARCHAR})")
            names = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
            aliases = "".join(f', "{name}" AS "{old_spelling(name)}"' for name in names
                              if old_spelling(name) and old_spelling(name) not in names)
            con.execute(f"CREATE VIEW {dataset} AS SELECT *{aliases} FROM {source}")
    return con


# columns spelled "tumor" before this release; the views keep those names as
# aliases for one release (the dataset schema in docs/dataset.md lists them)
_RENAMED = re.compile(r"(t_)?tumour(0_cells|_min_cells|_min_d|_response_day_cells|_end_cells|"
                      r"_end_[A-Za-z]+_cells|_d[0-9]+_cells)")


def old_spelling(column):
    """The "tumor" name a renamed column had before (None for the others)."""
    return column.replace("tumour", "tumor", 1) if _RENAMED.fullmatch(column) else None


def query(run_dir, sql):
    """Run one SQL statement over the views of :func:`connect`; the result as a
    DataFrame (empty for a statement that returns no rows)."""
    import duckdb

    if not str(sql).strip():
        raise ValueError("empty SQL")
    con = connect(run_dir)
    try:
        relation = con.sql(sql)
        return pd.DataFrame() if relation is None else relation.df()
    except duckdb.Error as exc:
        raise ValueError(_one_line(exc)) from None
    finally:
        con.close()
