"""The run directory: a Hive-partitioned Parquet dataset, written atomically.

    <run>/config.toml                                  the scenario's exact text
    <run>/_manifest.json                               config hash, seed, version, shard states
    <run>/patients/arm=<arm>/part-<shard:05d>.parquet  one row per patient and arm
    <run>/trajectories/arm=<arm>/part-<shard:05d>.parquet  daily states of a sample

Every file is written under a temporary name in its folder and renamed into
place, so a killed run leaves whole files or none. A shard is done when all
its arms' patient files exist; the manifest records that, but the files are
the ground truth, so a run killed between a file and a manifest update resumes
to the same result. Each Parquet file carries the scenario text and its hash
in its key-value metadata.
"""
from importlib import metadata
import json
import os
from pathlib import Path

import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
CONFIG = "config.toml"


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (one line, names the path)."""


def part_path(run_dir, dataset, arm, shard):
    return Path(run_dir) / dataset / f"arm={arm}" / f"part-{shard:05d}.parquet"


def _replace_atomically(path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_shard(run_dir, scenario, shard, tables):
    """Write one shard's {arm: (patients, trajectories)} tables; patients last,
    since their presence marks the shard as done."""
    meta = {b"cartcohort.config": scenario.text.encode(),
            b"cartcohort.config_sha256": scenario.sha256.encode()}
    for dataset, position in (("trajectories", 1), ("patients", 0)):
        for arm, pair in tables.items():
            table = pair[position]
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
            _replace_atomically(part_path(run_dir, dataset, arm, shard),
                                lambda tmp, t=table: pq.write_table(t, tmp))


def shard_done(run_dir, scenario, shard):
    return all(part_path(run_dir, "patients", arm.name, shard).exists() for arm in scenario.arms)


def _version():
    try:
        return metadata.version("cartcohort")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_manifest(run_dir, scenario, done_shards):
    manifest = {
        "scenario": scenario.name, "model": scenario.model,
        "config_sha256": scenario.sha256, "overrides": dict(scenario.overrides),
        "seed": scenario.seed,
        "patients": scenario.patients, "shard_size": scenario.shard_size,
        "n_shards": scenario.n_shards, "version": _version(),
        "arms": [arm.name for arm in scenario.arms], "reference_arm": scenario.arms[0].name,
        "shards": {str(s): ("done" if s in done_shards else "pending")
                   for s in range(scenario.n_shards)},
    }
    _replace_atomically(Path(run_dir) / MANIFEST,
                        lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n"))


def read_manifest(run_dir):
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirectoryError(f"{run_dir}: not a cartcohort run (no {MANIFEST})") from None


def remove_temporaries(run_dir):
    """Delete the temporary files a killed writer left (never read as data)."""
    for stale in Path(run_dir).rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def prepare(run_dir, scenario, resume):
    """Create a new run directory, or check that a resumed one holds this very
    scenario. Returns the shards already done."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if manifest_path.exists():
        if not resume:
            raise RunDirectoryError(f"{run_dir}: a run exists here; use --resume to finish it, "
                                    f"or choose another --out")
        recorded = read_manifest(run_dir)["config_sha256"]
        if recorded != scenario.sha256:
            raise RunDirectoryError(f"{run_dir}: the run was made with another configuration "
                                    f"(sha256 {recorded[:12]}, now {scenario.sha256[:12]}); "
                                    f"refusing to resume")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirectoryError(f"{run_dir}: exists and is not a cartcohort run")
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(run_dir)
    _replace_atomically(run_dir / CONFIG, lambda tmp: tmp.write_text(scenario.text))
    done = {s for s in range(scenario.n_shards) if shard_done(run_dir, scenario, s)}
    write_manifest(run_dir, scenario, done)
    return done
