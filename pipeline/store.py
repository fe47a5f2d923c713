"""A run directory as a whole (its files: pipeline.layout): verify it against
its manifest, start or resume a run in it, repair its manifest.

``--resume`` (:func:`prepare`) verifies every file it keeps and recomputes the
shards that fail, and those written but not recorded yet (a run killed between
a file and a manifest update); :func:`verify` checks the whole directory
against the manifest (missing, extra, changed files, pending shards);
:func:`check_run` is what the commands that read a run call first. A manifest
without ``files`` (written by an earlier cartcohort) is read as before,
unverified; resume and :func:`repair` check its shards' files and record their
checksums.

:func:`repair` rebuilds the manifest from config.toml and the shard files that
read back whole (:func:`pipeline.layout.inspect_shard`).

A run, resume and repair write under RUN's lock (pipeline.runlock).
"""
from contextlib import nullcontext
from fnmatch import fnmatch
import json
from pathlib import Path
import sys

import pyarrow.parquet as pq

from pipeline.digest import scenario_digest
from pipeline.durable import TEMPORARY, commit_text
from pipeline.layout import (CONFIG, DATASETS, LOCK, MANIFEST, PART, RunDirectoryError,
                             check_file, expected_files, inspect_shards, parallel_map, part_path,
                             quote, shard_listing)
from pipeline.manifest import (OVERRIDES, is_legacy, read_manifest, resume_command,
                               resume_refusal, write_manifest)
from pipeline.runlock import RunLock, remove_temporaries, require_lock


# -- verification ------------------------------------------------------------------

def _dataset_files(run_dir):
    for dataset in DATASETS:
        folder = Path(run_dir) / dataset
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*") if not p.is_dir())


def _config_problem(run_dir, manifest):
    path = Path(run_dir) / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return (f"{path}: missing; copy the scenario file the run was made with here "
                f"(every shard file also holds its text, metadata key cartcohort.config)")
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})"
    overrides = tuple(sorted(manifest["overrides"].items()))
    if scenario_digest(text, overrides) != manifest["config_sha256"]:
        return (f"{path}: differs from the configuration the run was made with (its "
                f"config_sha256 in {MANIFEST}); restore the scenario file the run was made with")
    return None


def verify(run_dir):
    """Check the run directory against its manifest: the manifest itself,
    config.toml, pending shards, every recorded file (size, sha256, rows) and
    files the manifest does not record. Returns one line per problem (the path,
    what is wrong, what to run); [] when the run matches its manifest."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: no such run directory")
    try:
        manifest = read_manifest(run_dir)
    except RunDirectoryError as exc:
        return [str(exc)]
    if is_legacy(manifest):
        return [f"{run_dir / MANIFEST}: records no checksums (an earlier cartcohort wrote it); "
                f"run cartcohort repair {quote(run_dir)} to check the shard files and record "
                f"theirs"]
    resume = resume_command(run_dir, manifest)
    problems = [p for p in [_config_problem(run_dir, manifest)] if p]
    shards, files, arms = manifest["shards"], manifest["files"], manifest["arms"]
    pending = [int(s) for s, state in shards.items() if state == "pending"]
    if pending:
        problems.append(f"{run_dir}: {len(pending)} of {len(shards)} shard(s) pending "
                        f"({shard_listing(pending)}); run {resume} to compute them")
    items = []
    for shard, records in sorted(files.items(), key=lambda item: int(item[0])):
        for relative in sorted(expected_files(arms, int(shard)) - set(records)):
            problems.append(f"{run_dir / MANIFEST}: shard {shard} is done but records no "
                            f"{relative}; run cartcohort repair {quote(run_dir)}")
        items += sorted(records.items())
    reasons = parallel_map(lambda item: check_file(run_dir / item[0], item[1]), items)
    problems += [f"{run_dir / relative}: {reason}; run {resume} to recompute it"
                 for (relative, _), reason in zip(items, reasons) if reason is not None]
    recorded = {relative for records in files.values() for relative in records}
    for path in _dataset_files(run_dir):
        relative = path.relative_to(run_dir).as_posix()
        if relative in recorded:
            continue
        part = PART.fullmatch(relative)
        if fnmatch(path.name, TEMPORARY):
            problems.append(f"{path}: a temporary file of a writer, killed or still "
                            f"running (readers skip it); {resume} removes it")
        elif part and shards.get(str(int(part[3]))) == "pending" and part[2] in arms:
            problems.append(f"{path}: not in the manifest (shard {int(part[3])} is pending: "
                            f"the run stopped before recording it); run {resume} to compute it")
        else:
            problems.append(f"{path}: not in the manifest, and readers of the dataset may "
                            f"include it; remove it")
    return problems


def check_run(run_dir):
    """For the commands that read a run (report, query): RunDirectoryError, one
    line naming the first problem :func:`verify` finds, unless the run matches
    its manifest. A manifest without checksums (an earlier cartcohort's) is read
    as before, unverified."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: no such run directory")
    if is_legacy(read_manifest(run_dir, complete=False)):
        return
    problems = verify(run_dir)
    if problems:
        more = (f" ({len(problems) - 1} more problem(s): cartcohort verify {quote(run_dir)} "
                f"lists them)" if len(problems) > 1 else "")
        raise RunDirectoryError(problems[0] + more)



# -- a run: start, resume, repair ---------------------------------------------------

def check_target(run_dir, scenario, resume):
    """Check, writing nothing, that ``run_dir`` can take a run of ``scenario``:
    new or empty, or (with ``resume``) a run of this very scenario. Returns its
    manifest, None when there is none yet."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if manifest_path.exists() or manifest_path.is_symlink():
        if not resume:
            raise RunDirectoryError(f"{run_dir}: a run exists here; use --resume to finish it, "
                                    f"or choose another --out")
        manifest = read_manifest(run_dir)
        refusal = resume_refusal(run_dir, manifest, scenario)
        if refusal is not None:
            raise RunDirectoryError(refusal)
        return manifest
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: exists and is not a directory")
    if run_dir.is_dir():
        entries = {p.name for p in run_dir.iterdir()
                   if p.name != LOCK and not fnmatch(p.name, TEMPORARY)}
        if entries == {CONFIG} and (run_dir / CONFIG).read_bytes() == scenario.text.encode():
            return None                     # stopped between config.toml and the manifest
        if DATASETS[0] in entries or DATASETS[1] in entries or CONFIG in entries:
            raise RunDirectoryError(f"{run_dir}: a run without its {MANIFEST}; run cartcohort "
                                    f"repair {quote(run_dir)} to rebuild it, then --resume")
        if entries:
            raise RunDirectoryError(f"{run_dir}: exists and is not a cartcohort run")
    return None


def lock_for_run(run_dir, scenario, resume, lock=None):
    """RUN's lock, taken for a run of ``scenario`` (a held RunLock, a context
    manager), after :func:`check_target`. A directory without a lock file is
    checked before it is locked, so that no lock file is left where the run
    cannot go; one with a lock file is locked first, so that a run still
    writing there is named (RunDirectoryError) whatever state its files are in.
    ``lock``: RUN's lock, already held (then only checked)."""
    run_dir = Path(run_dir)
    if lock is not None:
        require_lock(run_dir, lock)
    elif not (run_dir / LOCK).exists():
        check_target(run_dir, scenario, resume)
    lock = lock or RunLock(run_dir).acquire()
    try:
        check_target(run_dir, scenario, resume)
    except BaseException:
        lock.release()
        raise
    return lock


def _kept_shards(run_dir, scenario, manifest, stream):
    """The shards a resumed run keeps: those the manifest records whose files
    all verify, or (an earlier cartcohort's manifest, without checksums) whose
    files read back whole. One line on ``stream`` per shard that fails."""
    if is_legacy(manifest):
        stream.write(f"{run_dir / MANIFEST}: records no checksums (an earlier cartcohort "
                     f"wrote it); checking the shard files and recording theirs\n")
        written = [s for s in range(scenario.n_shards)
                   if any(part_path(run_dir, "patients", arm.name, s).exists()
                          for arm in scenario.arms)]
        kept, failed = inspect_shards(run_dir, scenario, written)
    else:
        arms = [arm.name for arm in scenario.arms]
        recorded = {int(s): records for s, records in manifest["files"].items()}
        items = [(s, relative, record) for s, records in sorted(recorded.items())
                 for relative, record in sorted(records.items())]
        reasons = parallel_map(lambda item: check_file(Path(run_dir) / item[1], item[2]), items)
        problems = {}
        for (shard, relative, _), reason in zip(items, reasons):
            if reason is not None:
                problems.setdefault(shard, []).append(f"{Path(run_dir) / relative}: {reason}")
        for shard, records in recorded.items():
            for relative in sorted(expected_files(arms, shard) - set(records)):
                problems.setdefault(shard, []).append(
                    f"{Path(run_dir) / relative}: not recorded in the manifest")
        kept = {s: records for s, records in recorded.items() if s not in problems}
        failed = {s: lines[0] + (f" (and {len(lines) - 1} more file(s))" if len(lines) > 1
                                 else "") for s, lines in problems.items()}
    for shard in sorted(failed):
        stream.write(f"shard {shard}: {failed[shard]}; recomputing it\n")
    stream.flush()
    return kept


def prepare(run_dir, scenario, resume, lock=None, stream=None):
    """Create a new run directory, or check that a resumed one holds this very
    scenario and verify the shards it records. Returns {shard: records} of the
    shards kept (every other is computed). Runs under ``lock`` (RUN's, held),
    else takes RUN's lock for its own duration."""
    run_dir = Path(run_dir)
    if lock is not None:
        require_lock(run_dir, lock)
    with nullcontext(lock) if lock else lock_for_run(run_dir, scenario, resume) as held:
        manifest = check_target(run_dir, scenario, resume)      # (again) under the lock
        remove_temporaries(run_dir, held)
        commit_text(run_dir / CONFIG, scenario.text)
        kept = {} if manifest is None else _kept_shards(run_dir, scenario, manifest,
                                                        stream or sys.stderr)
        write_manifest(run_dir, scenario, kept)
    return kept


def _recorded_overrides(run_dir):
    """Candidate command-line overrides of a run whose manifest is lost: those
    in the shard files' metadata, then those of a damaged manifest that still
    parses, then none."""
    candidates = []
    for dataset in DATASETS:
        for path in sorted((Path(run_dir) / dataset).glob("arm=*/part-*.parquet")):
            try:
                raw = (pq.read_schema(path).metadata or {}).get(b"cartcohort.overrides")
                overrides = json.loads(raw) if raw else None
            except Exception:                   # noqa: BLE001 - damaged: try the next
                continue
            if isinstance(overrides, dict) and overrides not in candidates:
                candidates.append(overrides)
    try:
        old = json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))
        if isinstance(old, dict) and isinstance(old.get("overrides"), dict):
            candidates.append(old["overrides"])
    except (OSError, ValueError, RecursionError):
        pass
    return candidates + [{}]


def _file_config_hashes(run_dir):
    hashes = set()
    for path in (Path(run_dir) / DATASETS[0]).glob("arm=*/part-*.parquet"):
        try:
            raw = (pq.read_schema(path).metadata or {}).get(b"cartcohort.config_sha256")
        except Exception:                       # noqa: BLE001 - damaged: inspect says so
            continue
        if raw:
            hashes.add(raw.decode("ascii", "replace"))
    return hashes


def repair(run_dir, overrides=None, stream=sys.stderr):
    """Rebuild RUN's manifest from its config.toml and the shard files that read
    back whole (:func:`inspect_shard`); the other shards become pending, one line
    each on ``stream``. ``overrides`` ({patients, shard_size, seed}): those the
    run was made with, when neither the files nor the old manifest record them.
    Returns (scenario, {shard: records} of the shards kept)."""
    from pipeline.config import ConfigError, scenario_from_text, with_overrides

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: no such run directory")
    config = run_dir / CONFIG
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunDirectoryError(f"{config}: missing; repair rebuilds the manifest from it: copy "
                                f"the scenario file the run was made with here") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirectoryError(f"{config}: cannot read "
                                f"({getattr(exc, 'strerror', None) or exc})") from None
    base = scenario_from_text(text, source=str(config))
    hashes = _file_config_hashes(run_dir)
    candidates = [overrides] if overrides else _recorded_overrides(run_dir)
    scenario = None
    for given in candidates:
        try:
            candidate = with_overrides(base, **{k: v for k, v in given.items()
                                                if k in OVERRIDES})
        except (ConfigError, TypeError):
            continue
        if not hashes or candidate.sha256 in hashes:
            scenario = candidate
            break
    if scenario is None:
        raise RunDirectoryError(
            f"{run_dir}: the shard files were made with another configuration than {config}, "
            f"or with command-line overrides they do not record; pass the run's --patients, "
            f"--shard-size and --seed to cartcohort repair")
    with RunLock(run_dir) as lock:
        remove_temporaries(run_dir, lock)
        written = [s for s in range(scenario.n_shards)
                   if any((run_dir / relative).exists()
                          for relative in expected_files([a.name for a in scenario.arms], s))]
        kept, failed = inspect_shards(run_dir, scenario, written)
        for shard in sorted(failed):
            stream.write(f"shard {shard}: {failed[shard]}; it stays pending\n")
        expected = set().union(*(expected_files([a.name for a in scenario.arms], s)
                                 for s in range(scenario.n_shards)))
        for path in _dataset_files(run_dir):
            if path.relative_to(run_dir).as_posix() not in expected:
                stream.write(f"{path}: not a file of this run (left in place); readers of "
                             f"the dataset may include it\n")
        stream.flush()
        write_manifest(run_dir, scenario, kept)
    return scenario, kept
