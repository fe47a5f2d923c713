"""The run directory's layout and its shard files: a Hive-partitioned Parquet
dataset, written durably (pipeline.durable) and checksummed.

    <run>/config.toml                                  the scenario's exact text
    <run>/_manifest.json                               config hash, seed, version, shard states,
                                                       and every done shard's files (bytes,
                                                       rows, sha256; pipeline.manifest)
    <run>/.cartcohort.lock                             flock'ed by the run writing here
                                                       (pipeline.runlock)
    <run>/patients/arm=<arm>/part-<shard:05d>.parquet  one row per patient and arm
    <run>/trajectories/arm=<arm>/part-<shard:05d>.parquet  daily states of a sample

Checksums: :func:`write_shard` returns each file's size, row count and sha256,
which the manifest records; :func:`check_file` checks a file against its record,
and :func:`inspect_file` / :func:`inspect_shard` check the files no manifest
records (they read back whole, for this very scenario).

Each Parquet file carries the scenario text, its hash and the command-line
overrides in its key-value metadata, and page checksums (CRC32).
"""
from concurrent.futures import ThreadPoolExecutor
import hashlib
import json
import os
from pathlib import Path
import re
import shlex

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.digest import code_digest
from pipeline.durable import commit_bytes

MANIFEST = "_manifest.json"
CONFIG = "config.toml"
LOCK = ".cartcohort.lock"
DATASETS = ("patients", "trajectories")
PARQUET_OPTIONS = {"write_page_checksum": True}
# a shard file's path inside the run directory: dataset, arm, shard
PART = re.compile(r"(patients|trajectories)/arm=([^/]+)/part-(\d{5,})\.parquet")
_HASH_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1)


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (one line, names the path)."""


def relative_part(dataset, arm, shard):
    """A shard file's path inside the run directory, as the manifest records it."""
    return f"{dataset}/arm={arm}/part-{shard:05d}.parquet"


def part_path(run_dir, dataset, arm, shard):
    return Path(run_dir) / relative_part(dataset, arm, shard)


def quote(path):
    """A path as one shell word, for the commands the messages suggest."""
    return shlex.quote(str(path))


def parallel_map(function, items):
    """``map`` on a few threads (hashing and Parquet decoding release the GIL)."""
    items = list(items)
    if len(items) < 2 or _HASH_THREADS < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        return list(pool.map(function, items))


# -- shard files --------------------------------------------------------------------

def _file_metadata(scenario):
    return {b"cartcohort.config": scenario.text.encode(),
            b"cartcohort.config_sha256": scenario.sha256.encode(),
            b"cartcohort.code_sha256": code_digest().encode(),
            b"cartcohort.overrides": json.dumps(dict(scenario.overrides),
                                                sort_keys=True).encode()}


def write_shard(run_dir, scenario, shard, tables):
    """Write one shard's {arm: (patients, trajectories)} tables; patients last,
    since their presence marks the shard as written. Returns the files' records
    for the manifest: {relative path: {"bytes", "rows", "sha256"}}."""
    meta = _file_metadata(scenario)
    records = {}
    for dataset, position in (("trajectories", 1), ("patients", 0)):
        for arm, pair in tables.items():
            table = pair[position]
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, **PARQUET_OPTIONS)
            data = sink.getvalue()
            relative = relative_part(dataset, arm, shard)
            commit_bytes(Path(run_dir) / relative, data)
            records[relative] = {"bytes": data.size, "rows": table.num_rows,
                                 "sha256": hashlib.sha256(data).hexdigest()}
    return dict(sorted(records.items()))


def shard_done(run_dir, scenario, shard):
    """Whether every arm's patients file of the shard exists (unverified: the
    SLURM array tasks, which write no manifest, go by this)."""
    return all(part_path(run_dir, "patients", arm.name, shard).exists() for arm in scenario.arms)


def expected_files(arms, shard):
    """The relative paths a shard writes: both datasets of every arm."""
    return {relative_part(dataset, arm, shard) for dataset in DATASETS for arm in arms}


def shard_patients(scenario, shard):
    return min(scenario.shard_size, scenario.patients - shard * scenario.shard_size)


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_file(path, record):
    """What is wrong with a shard file against its manifest record (size, then
    sha256, then the row count in its footer), in a few words; None if nothing."""
    try:
        size = os.stat(path).st_size
        if size != record["bytes"]:
            return (f"size differs from the manifest ({size:,} bytes, recorded "
                    f"{record['bytes']:,}: truncated or overwritten)")
        digest = sha256_of(path)
    except FileNotFoundError:
        return "missing (recorded in the manifest)"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if digest != record["sha256"]:
        return (f"checksum differs from the manifest (sha256 {digest[:12]}, recorded "
                f"{record['sha256'][:12]})")
    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:                    # noqa: BLE001 - any failure: unreadable
        return f"not a readable Parquet file ({_one_line(exc)})"
    if rows != record["rows"]:
        return f"row count differs from the manifest ({rows:,} rows, recorded {record['rows']:,})"
    return None


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def inspect_file(path, scenario, rows=None):
    """Check a shard file that no manifest records: it reads back whole as
    Parquet (page checksums verified), was written for this very scenario and
    code (its metadata's config and code hashes) and, given ``rows``, has that many rows. Returns
    ``(record, None)`` or ``(None, reason)``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        table = parquet.read()
        metadata = parquet.schema_arrow.metadata or {}
    except Exception as exc:                    # noqa: BLE001 - any failure: damaged
        return None, f"damaged: not a readable Parquet file ({_one_line(exc)})"
    if metadata.get(b"cartcohort.config_sha256") != scenario.sha256.encode():
        return None, "written for another configuration (its config_sha256 differs)"
    code = metadata.get(b"cartcohort.code_sha256")      # absent: an earlier cartcohort's
    if code is not None and code != code_digest().encode():
        return None, "written by other code (its code_sha256 differs: the model or kernel changed)"
    if rows is not None and table.num_rows != rows:
        return None, f"{table.num_rows:,} rows, expected {rows:,} (the shard's patients)"
    return {"bytes": len(data), "rows": table.num_rows,
            "sha256": hashlib.sha256(data).hexdigest()}, None


def inspect_shard(run_dir, scenario, shard):
    """:func:`inspect_file` for every file of a shard: ``(records, None)``, or
    ``(None, "<file>: <reason>")`` for the first that fails."""
    records = {}
    for relative in sorted(expected_files([arm.name for arm in scenario.arms], shard)):
        rows = shard_patients(scenario, shard) if relative.startswith("patients/") else None
        record, reason = inspect_file(Path(run_dir) / relative, scenario, rows)
        if reason is not None:
            return None, f"{Path(run_dir) / relative}: {reason}"
        records[relative] = record
    return records, None


def inspect_shards(run_dir, scenario, shards):
    """{shard: records} of the shards whose files pass :func:`inspect_shard`, and
    {shard: problem} of the others."""
    shards = list(shards)
    results = parallel_map(lambda s: inspect_shard(run_dir, scenario, s), shards)
    kept = {s: records for s, (records, _) in zip(shards, results) if records is not None}
    failed = {s: problem for s, (_, problem) in zip(shards, results) if problem is not None}
    return kept, failed


def shard_listing(shards, shown=20):
    """'0, 3, 7': shard numbers for a message, sorted, at most ``shown`` of them."""
    shards = sorted(shards)
    return ", ".join(map(str, shards[:shown])) + (", ..." if len(shards) > shown else "")
