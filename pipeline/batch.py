"""Shards without Dask: the tasks of a SLURM job array, then one finalize step.

``run_shards(scenario, run_dir, start, stop)`` is one array task: it computes the
shards of [start, stop) that are not written yet, in this process, one after
the other. Many tasks run at once on the same run directory, so none of them
writes the manifest: a task only checks the directory (new, or a run of this
very configuration), writes ``config.toml`` if it is absent (atomically, first
writer wins, the text is identical) and its own shard files, each renamed into
place (pipeline.durable). ``finalize(scenario, run_dir)`` runs once after all
tasks, under the run directory's lock: it checks that every shard is written
and reads back whole (pipeline.layout.inspect_shard), then writes the manifest
with all shards done and their files' checksums. The dataset is the same as a
Dask run's: a shard's data depends on the scenario and the shard index only.
The tasks take no lock (they run at once by design).
"""
import os
import sys
import time
from pathlib import Path

from pipeline.durable import commit_text
from pipeline.layout import (CONFIG, MANIFEST, RunDirectoryError, inspect_shards, shard_done,
                             shard_listing, write_shard)
from pipeline.manifest import read_manifest, resume_refusal, write_manifest
from pipeline.runlock import RunLock, remove_temporaries
from pipeline.shard import run_shard


def _check_run_dir(run_dir, scenario):
    """Accept a new or empty directory, or one holding a run of this scenario
    (its config.toml or manifest has the same sha256); raise RunDirectoryError
    otherwise. Writes config.toml when absent; never the manifest."""
    config_path = run_dir / CONFIG
    manifest_path = run_dir / MANIFEST
    if manifest_path.exists():
        refusal = resume_refusal(run_dir, read_manifest(run_dir), scenario)
        if refusal is not None:
            raise RunDirectoryError(refusal)
    elif config_path.exists():
        text = config_path.read_text()
        if text != scenario.text:
            raise RunDirectoryError(
                f"{run_dir}: holds another configuration ({CONFIG} differs); "
                f"refusing to add shards")
    elif run_dir.exists() and any(p.name not in {"patients", "trajectories"}
                                  and not p.name.startswith(".")
                                  for p in run_dir.iterdir()):
        raise RunDirectoryError(f"{run_dir}: exists and is not a cartcohort run")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not config_path.exists():
        # several tasks may get here at once: each writes its own temporary file
        # and renames it; the texts are identical, so the last rename is harmless
        commit_text(config_path, scenario.text)


def run_shards(scenario, run_dir, start, stop, stream=sys.stderr):
    """Compute the shards of [start, stop) ∩ [0, n_shards) of ``scenario`` that
    are not done into ``run_dir``; returns the shard indices computed here."""
    if start < 0 or stop <= start:
        raise ValueError(f"shards {start}:{stop}: expected 0 <= START < STOP")
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, scenario)
    wanted = range(start, min(stop, scenario.n_shards))
    pending = [s for s in wanted if not shard_done(run_dir, scenario, s)]
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    who = f"task {task}: " if task is not None else ""
    stream.write(f"{who}shards {start}:{stop} of {scenario.n_shards}: "
                 f"{len(wanted) - len(pending)} already done, {len(pending)} to compute\n")
    stream.flush()
    started = time.monotonic()
    for i, shard in enumerate(pending, 1):
        write_shard(run_dir, scenario, shard, run_shard(scenario, shard))
        stream.write(f"{who}shard {shard} done ({i}/{len(pending)}, "
                     f"{time.monotonic() - started:.1f} s)\n")
        stream.flush()
    return pending


def finalize(scenario, run_dir):
    """Check that every shard of ``scenario`` is written in ``run_dir`` and reads
    back whole, then write the manifest with all shards done and their files'
    checksums; returns the run directory. Raises ValueError (one line, naming
    the missing or damaged shards) otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: no such run directory")
    _check_run_dir(run_dir, scenario)
    with RunLock(run_dir) as lock:
        remove_temporaries(run_dir, lock)     # left by killed tasks; none runs now
        missing = [s for s in range(scenario.n_shards)
                   if not shard_done(run_dir, scenario, s)]
        if missing:
            raise ValueError(f"{run_dir}: {len(missing)} of {scenario.n_shards} shard(s) "
                             f"missing: {shard_listing(missing)}")
        files, damaged = inspect_shards(run_dir, scenario, range(scenario.n_shards))
        if damaged:
            first = min(damaged)
            raise ValueError(f"{run_dir}: {len(damaged)} of {scenario.n_shards} shard(s) "
                             f"damaged: {shard_listing(damaged)} ({damaged[first]}); delete their "
                             f"files and rerun their tasks (cartcohort run-shards CONFIG "
                             f"--out {run_dir} --shards {first}:{first + 1})")
        write_manifest(run_dir, scenario, files)
    return run_dir
