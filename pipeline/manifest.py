"""The manifest, ``RUN/_manifest.json``: its format, writing, reading and the
check of its shape.

It records the scenario (name, model, config hash, command-line overrides,
seed, size), the cartcohort version, every shard's state and, under ``files``,
every done shard's files (bytes, rows, sha256: the records
:func:`pipeline.layout.write_shard` returns); a shard is done when the manifest
records its files. A manifest without ``files`` (written by an earlier
cartcohort) is read as before, unverified (:func:`is_legacy`).

:func:`read_manifest` checks the manifest's shape (:func:`manifest_problem`)
and fails in one line that suggests ``cartcohort repair RUN``.
"""
from importlib import metadata
import json
from pathlib import Path
import re

from pipeline.digest import code_digest, code_files
from pipeline.durable import commit_text
from pipeline.layout import CONFIG, DATASETS, MANIFEST, PART, RunDirectoryError, quote

# manifest format: 2 records every done shard's files under "files"; a manifest
# without "format" and "files" is an earlier cartcohort's (shard states only)
FORMAT = 2


def _version():
    try:
        return metadata.version("cartcohort")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_manifest(run_dir, scenario, files):
    """Write the manifest; ``files``: {shard: records} of the shards done (the
    records :func:`pipeline.layout.write_shard` returns); the others are pending."""
    manifest = {
        "format": FORMAT,
        "scenario": scenario.name, "model": scenario.model,
        "config_sha256": scenario.sha256, "overrides": dict(scenario.overrides),
        "seed": scenario.seed,
        "patients": scenario.patients, "shard_size": scenario.shard_size,
        "n_shards": scenario.n_shards, "version": _version(),
        "code_sha256": code_digest(), "code_files": code_files(),
        "arms": [arm.name for arm in scenario.arms], "reference_arm": scenario.arms[0].name,
        "shards": {str(s): ("done" if s in files else "pending")
                   for s in range(scenario.n_shards)},
        "files": {str(s): dict(sorted(files[s].items())) for s in sorted(files)},
    }
    commit_text(Path(run_dir) / MANIFEST, json.dumps(manifest, indent=1) + "\n")


_KEYS = {"scenario": str, "model": str, "config_sha256": str, "overrides": dict, "seed": int,
         "patients": int, "shard_size": int, "n_shards": int, "version": str, "arms": list,
         "reference_arm": str, "shards": dict}
_KINDS = {dict: "an object", list: "an array", str: "a string", int: "an integer"}
OVERRIDES = ("patients", "shard_size", "seed")       # those a manifest may record


def _json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), "?")


def _is(value, kind):
    return isinstance(value, kind) and not isinstance(value, bool)


def is_legacy(manifest):
    """A manifest of an earlier cartcohort: shard states, no file checksums."""
    return "format" not in manifest and "files" not in manifest


def manifest_problem(manifest, complete=True):
    """What is wrong with the shape of a manifest parsed from JSON, in a few
    words; None when nothing. ``complete``: every key must be there (else only
    those present are checked, as the readers of results need)."""
    if not isinstance(manifest, dict):
        return f"{_json_type(manifest)} instead of an object"
    for key, kind in _KEYS.items():
        if key not in manifest:
            if complete:
                return f"no {key!r} key"
        elif not _is(manifest[key], kind):
            return f"{key!r} is {_json_type(manifest[key])}, expected {_KINDS[kind]}"
    arms = manifest.get("arms", [])
    if not all(_is(arm, str) for arm in arms) or (complete and not arms):
        return "'arms' is not a list of arm names"
    if "reference_arm" in manifest and arms and manifest["reference_arm"] not in arms:
        return "'reference_arm' is not one of 'arms'"
    overrides = manifest.get("overrides", {})
    if not all(key in OVERRIDES and _is(value, int) for key, value in overrides.items()):
        return "'overrides' holds other than patients, shard_size, seed integers"
    shards = manifest.get("shards", {})
    if "n_shards" in manifest and set(shards) != {str(s) for s in range(manifest["n_shards"])}:
        return f"'shards' does not list shards 0 to {manifest['n_shards'] - 1}"
    if any(state not in ("done", "pending") for state in shards.values()):
        return "'shards' has a state other than \"done\" or \"pending\""
    if is_legacy(manifest):
        return None
    code = manifest.get("code_files", {})
    if not _is(manifest.get("code_sha256", ""), str) or not (
            _is(code, dict) and all(_is(v, str) for v in code.values())):
        return "'code_sha256' or 'code_files' is not what cartcohort writes"
    if not _is(manifest.get("format"), int) or manifest["format"] != FORMAT:
        return f"'format' is {manifest.get('format')!r}, expected {FORMAT}"
    files = manifest.get("files")
    if not _is(files, dict):
        return f"'files' is {_json_type(files)}, expected an object"
    for shard, state in shards.items():
        if (state == "done") != (shard in files):
            return (f"shard {shard} is {state} but 'files' "
                    f"{'has no' if state == 'done' else 'has an'} entry for it")
    for shard, records in files.items():
        if shard not in shards:
            return f"'files' lists shard {shard!r}, which 'shards' does not"
        if not _is(records, dict) or not records:
            return f"'files' of shard {shard} is not an object of file records"
        for relative, record in records.items():
            part = PART.fullmatch(relative)
            if not part or int(part[3]) != int(shard) or (arms and part[2] not in arms):
                return f"'files' of shard {shard} lists {relative!r}, not one of its files"
            if (not _is(record, dict) or set(record) != {"bytes", "rows", "sha256"}
                    or not all(_is(record[k], int) and record[k] >= 0 for k in ("bytes", "rows"))
                    or not (_is(record["sha256"], str)
                            and re.fullmatch(r"[0-9a-f]{64}", record["sha256"]))):
                return f"the record of {relative} is not {{bytes, rows, sha256}}"
    return None


def _damaged(path, run_dir, what):
    return RunDirectoryError(f"{path}: damaged manifest ({what}); run cartcohort repair "
                             f"{quote(run_dir)} to rebuild it from {CONFIG} and the shard files")


def parse_manifest(raw, run_dir, complete=True):
    """The manifest from the bytes of ``RUN/_manifest.json``, its shape checked
    (:func:`manifest_problem`); RunDirectoryError (one line) when damaged."""
    path = Path(run_dir) / MANIFEST
    if not raw.strip():
        raise _damaged(path, run_dir, "empty")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _damaged(path, run_dir, "not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        where = (f"{exc.msg} at line {exc.lineno} column {exc.colno}"
                 if isinstance(exc, json.JSONDecodeError) else "nested too deeply")
        raise _damaged(path, run_dir, f"not valid JSON, truncated? {where}") from None
    problem = manifest_problem(manifest, complete)
    if problem is not None:
        raise _damaged(path, run_dir, problem)
    return manifest


def _has_run_files(run_dir):
    return any((Path(run_dir) / name).exists() for name in (CONFIG, *DATASETS))


def read_manifest(run_dir, complete=True):
    """The run's manifest, its shape checked; RunDirectoryError (one line,
    suggesting ``cartcohort repair``) when it is missing, unreadable or damaged."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = (f"; run cartcohort repair {quote(run_dir)} to rebuild it from {CONFIG} "
                f"and the shard files" if _has_run_files(run_dir) else "")
        raise RunDirectoryError(f"{run_dir}: not a cartcohort run (no {MANIFEST}){hint}") \
            from None
    except OSError as exc:
        raise RunDirectoryError(f"{path}: cannot read the manifest "
                                f"({exc.strerror or exc})") from None
    return parse_manifest(raw, run_dir, complete)


def resume_command(run_dir, manifest):
    """The command that finishes or repairs the run's shards: ``cartcohort run
    RUN/config.toml --resume --out RUN`` with the run's overrides."""
    flags = "".join(f" --{key.replace('_', '-')} {value}"
                    for key, value in sorted(manifest.get("overrides", {}).items()))
    return (f"cartcohort run {quote(Path(run_dir) / CONFIG)} --resume "
            f"--out {quote(run_dir)}{flags}")


def _flat(table, prefix=""):
    if isinstance(table, dict):
        for key, value in table.items():
            yield from _flat(value, f"{prefix}{key}.")
    elif isinstance(table, list) and table and all(isinstance(v, dict) for v in table):
        for i, value in enumerate(table):
            yield from _flat(value, f"{prefix[:-1]}[{i}].")
    else:
        yield prefix[:-1], table


def _changed_keys(old_text, new_text, shown=4):
    """The dotted keys whose values differ between two TOML texts, a few of them."""
    try:
        import tomllib
    except ModuleNotFoundError:                 # Python < 3.11
        import tomli as tomllib
    try:
        old, new = (dict(_flat(tomllib.loads(text))) for text in (old_text, new_text))
    except (tomllib.TOMLDecodeError, TypeError):
        return "its text"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, ...) != new.get(k, ...))
    if not keys:
        return "its text (comments or layout only)"
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown
                                      else "")


def resume_refusal(run_dir, manifest, scenario):
    """Why a run of ``scenario`` cannot resume the run its manifest describes, in
    one line naming what changed (seed, patients, shard size, configuration keys,
    code files); None when it can. A manifest that records no code hash (an
    earlier cartcohort's) is taken on its configuration alone."""
    changes = [f"{key.replace('_', ' ')} {manifest[key]} -> {getattr(scenario, key)}"
               for key in OVERRIDES if manifest[key] != getattr(scenario, key)]
    if not changes and manifest["config_sha256"] != scenario.sha256:
        try:
            old_text = (Path(run_dir) / CONFIG).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            old_text = None
        changes.append("the configuration: " + (_changed_keys(old_text, scenario.text)
                                                if old_text is not None else "its text"))
    recorded = manifest.get("code_files")
    if recorded is not None and manifest.get("code_sha256") != code_digest():
        current = code_files()
        files = sorted(path for path in recorded.keys() | current.keys()
                       if recorded.get(path) != current.get(path))
        changes.append("the code: " + ", ".join(files[:4])
                       + (f" and {len(files) - 4} more" if len(files) > 4 else ""))
    if not changes:
        return None
    return (f"{run_dir}: cannot resume, changed since the run was made: {'; '.join(changes)} "
            f"(its shards would mix two different computations); choose another --out")
