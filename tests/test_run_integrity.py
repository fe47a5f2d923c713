"""A run directory that never lies: checksummed shard files, ``cartcohort
verify``, report and query refusing a run that does not match its manifest,
``--resume`` recomputing damaged shards, ``cartcohort repair`` of a damaged
manifest, the run directory's lock and durable commits.

Real files and real ``python -m pipeline.cli`` subprocesses on a small
scenario (200 patients in 4 shards, two arms). The reference is an
uninterrupted run made without Dask (pipeline.batch: the same data as a Dask
run, tests/test_batch.py); every damaged copy of it must come back to exactly
its data, and to the very same bytes."""
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipeline.layout import CONFIG, MANIFEST, write_shard
from pipeline.manifest import read_manifest, write_manifest
from pipeline.runlock import RunLock, remove_temporaries
from pipeline.store import prepare
from small_run import FIXED_AND_ADAPTIVE_ARMS, write_config

TIMEOUT = 300
DATASETS = ("patients", "trajectories")
SCENARIO = """
[scenario]
name = "integrity"
model = "cart"
seed = 11
patients = 200
shard_size = 50
horizon_days = 365.0

""" + FIXED_AND_ADAPTIVE_ARMS


def cartcohort_all(*commands):
    """Run ``python -m pipeline.cli`` commands at once; their CompletedProcesses."""
    processes = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, command)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in commands]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def cartcohort(*args):
    return cartcohort_all(args)[0]


def dataset(run_dir, name):
    """A dataset's rows in a canonical order, the arm from the partition."""
    frame = ds.dataset(run_dir / name, format="parquet", partitioning="hive").to_table()
    frame = frame.to_pandas()
    frame["arm"] = frame["arm"].astype(str)
    keys = ["arm", "patient_id"] + (["t_d"] if "t_d" in frame.columns else [])
    return frame.sort_values(keys).reset_index(drop=True)


def assert_same_data(run_dir, reference):
    """Both datasets equal, value for value (NaN where NaN), and every shard file
    the very bytes of the reference's."""
    for name in DATASETS:
        got, want = dataset(run_dir, name), dataset(reference, name)
        assert list(got.columns) == list(want.columns) and got.dtypes.equals(want.dtypes)
        for column in want.columns:
            a, b = got[column].to_numpy(), want[column].to_numpy()
            if a.dtype.kind == "f":
                assert np.array_equal(a.view(np.uint64), b.view(np.uint64)), column
            else:
                assert np.array_equal(a, b), column
    parts = sorted(p.relative_to(reference) for p in reference.glob("*/arm=*/part-*.parquet"))
    assert parts == sorted(p.relative_to(run_dir) for p in run_dir.glob("*/arm=*/part-*.parquet"))
    for part in parts:
        assert (run_dir / part).read_bytes() == (reference / part).read_bytes(), part


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory, SCENARIO)


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """An uninterrupted run: every shard computed in this process, then finalized."""
    from pipeline import batch
    from pipeline.config import load_scenario

    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    scenario = load_scenario(config)
    assert scenario.n_shards == 4
    batch.run_shards(scenario, run_dir, 0, scenario.n_shards, stream=io.StringIO())
    batch.finalize(scenario, run_dir)
    return run_dir


def copy_run(reference, tmp_path, name="run"):
    run_dir = tmp_path / name
    shutil.copytree(reference, run_dir)
    return run_dir


def test_damaged_shard_files_are_refused_then_recomputed(config, reference, tmp_path):
    """A byte flipped in one finished shard file, another shard's file cut in
    half: verify names both (exit 2), report and query refuse in one line naming
    the file (exit 2), --resume says on stderr which file of which shard failed
    and why and recomputes just those shards, to the reference's bytes."""
    run_dir = copy_run(reference, tmp_path)
    manifest = read_manifest(run_dir)
    flipped = run_dir / "patients" / "arm=fixed" / "part-00001.parquet"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = run_dir / "trajectories" / "arm=adaptive" / "part-00002.parquet"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    untouched = {p: p.stat().st_mtime_ns for shard in (0, 3)
                 for p in run_dir.glob(f"*/arm=*/part-{shard:05d}.parquet")}

    verify, report, query = cartcohort_all(("verify", run_dir), ("report", run_dir),
                                           ("query", run_dir, "SELECT count(*) FROM patients"))
    assert verify.returncode == 2, verify.stderr
    lines = verify.stdout.splitlines()
    assert len(lines) == 2, verify.stdout
    resume_hint = f"--resume --out {run_dir}"
    assert lines[0].startswith(f"{flipped}: checksum differs from the manifest")
    assert lines[1].startswith(f"{truncated}: size differs from the manifest")
    assert all(resume_hint in line for line in lines)
    for command, result in (("report", report), ("query", query)):
        assert result.returncode == 2 and result.stdout == ""
        assert one_line(result).startswith(
            f"cartcohort {command}: error: {flipped}: checksum differs from the manifest")
        assert resume_hint in result.stderr
    assert not (run_dir / "report").exists()

    resumed = cartcohort("run", config, "--out", run_dir, "--resume", "--workers", "1",
                         "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    said = resumed.stderr.splitlines()
    assert [line for line in said if line.startswith("shard 1:")] == [
        f"shard 1: {flipped}: " + lines[0][len(f"{flipped}: "):].split(";")[0]
        + "; recomputing it"]
    shard2 = [line for line in said if line.startswith("shard 2:")]
    assert len(shard2) == 1 and shard2[0].startswith(f"shard 2: {truncated}: size differs")
    assert "resuming: 2/4 shards already done" in resumed.stderr
    # only the two damaged shards were recomputed (all their files)
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    again = cartcohort("verify", run_dir)
    assert again.returncode == 0, again.stdout
    assert read_manifest(run_dir)["files"] == manifest["files"]
    assert_same_data(run_dir, reference)


def test_a_deleted_shard_file_is_refused_not_read_as_a_smaller_cohort(config, reference,
                                                                      tmp_path):
    """A shard file the manifest records, deleted: report refuses in one line
    naming it (not a report on fewer patients); --resume recomputes the shard."""
    run_dir = copy_run(reference, tmp_path)
    deleted = run_dir / "patients" / "arm=adaptive" / "part-00003.parquet"
    deleted.unlink()
    report = cartcohort("report", run_dir)
    assert report.returncode == 2 and report.stdout == ""
    assert one_line(report).startswith(
        f"cartcohort report: error: {deleted}: missing (recorded in the manifest); run "
        f"cartcohort run {run_dir / CONFIG} --resume")
    resumed = cartcohort("run", config, "--out", run_dir, "--resume", "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    assert f"shard 3: {deleted}: missing (recorded in the manifest); recomputing it" \
        in resumed.stderr
    assert_same_data(run_dir, reference)


def _truncated(raw):
    return raw[: len(raw) // 2]


def _empty(raw):
    return b""


def _missing_keys(raw):
    manifest = json.loads(raw)
    del manifest["shards"], manifest["config_sha256"]
    return json.dumps(manifest).encode()


def _wrong_type(raw):
    return json.dumps(list(json.loads(raw).items())).encode()


DAMAGES = {"truncated": _truncated, "empty": _empty, "missing keys": _missing_keys,
           "wrong JSON type": _wrong_type}


def test_damaged_manifest_gives_one_line_errors_and_repair_restores_it(config, reference,
                                                                       tmp_path):
    """The manifest truncated, empty, without keys, or a JSON array: verify,
    report, query and run --resume fail in one line naming the manifest and
    suggesting repair (exit 2, never a traceback); repair rebuilds the very
    manifest from config.toml and the shard files, after which verify is clean
    and --resume works, and the data are the reference's."""
    original = (reference / MANIFEST).read_bytes()
    runs = {}
    for name, damage in DAMAGES.items():
        runs[name] = copy_run(reference, tmp_path, name.replace(" ", "_"))
        (runs[name] / MANIFEST).write_bytes(damage(original))
    checks = [(name, command) for name in DAMAGES for command in ("verify", "report", "query")]
    refused = [("wrong JSON type", "run")]     # read_manifest checks the shape for all
    results = cartcohort_all(*[
        (command, runs[name]) + (("SELECT 1",) if command == "query" else ())
        for name, command in checks] + [
        ("run", config, "--out", runs[name], "--resume", "--no-report")
        for name, _ in refused])
    for (name, command), result in zip(checks + refused, results):
        assert result.returncode == 2, (name, command, result.stderr)
        assert "Traceback" not in result.stderr
        manifest_path = runs[name] / MANIFEST
        line = result.stdout.strip() if command == "verify" else one_line(result)
        assert "\n" not in line and f"{manifest_path}: damaged manifest" in line, (name, line)
        assert f"cartcohort repair {runs[name]}" in line, (name, line)

    repaired = cartcohort_all(*[("repair", runs[name]) for name in DAMAGES])
    for name, result in zip(DAMAGES, repaired):
        assert result.returncode == 0, (name, result.stderr)
        assert "4 of 4 shard(s) verified and recorded" in result.stdout
        assert json.loads((runs[name] / MANIFEST).read_bytes()) == json.loads(original)
    after = cartcohort_all(*[("verify", runs[name]) for name in DAMAGES],
                           ("run", config, "--out", runs["truncated"], "--resume",
                            "--no-report"))
    for result in after:
        assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming: 4/4 shards already done" in after[-1].stderr
    for run_dir in runs.values():
        assert_same_data(run_dir, reference)


def test_repair_of_a_lost_manifest_leaves_a_damaged_shard_pending(config, reference,
                                                                  tmp_path):
    """No manifest and a shard file cut short: report refuses naming the lost
    manifest, repair records the three whole shards and leaves the damaged one
    pending (one line), and verify then names the pending shard."""
    run_dir = copy_run(reference, tmp_path)
    (run_dir / MANIFEST).unlink()
    cut = run_dir / "patients" / "arm=adaptive" / "part-00003.parquet"
    cut.write_bytes(cut.read_bytes()[:-64])
    report = cartcohort("report", run_dir)
    assert report.returncode == 2
    assert f"no {MANIFEST}" in one_line(report) and "cartcohort repair" in report.stderr
    repaired = cartcohort("repair", run_dir)
    assert repaired.returncode == 0, repaired.stderr
    assert one_line(repaired).startswith(f"shard 3: {cut}: damaged")
    assert "3 of 4 shard(s) verified and recorded; 1 pending" in repaired.stdout
    manifest = read_manifest(run_dir)
    assert manifest["shards"] == {"0": "done", "1": "done", "2": "done", "3": "pending"}
    verify = cartcohort("verify", run_dir)
    assert verify.returncode == 2
    assert "1 of 4 shard(s) pending (3)" in verify.stdout
    assert f"{cut}: not in the manifest (shard 3 is pending" in verify.stdout


def test_a_second_run_into_the_same_directory_is_refused(config, tmp_path):
    """While a run holds the directory (stopped with SIGSTOP, so it surely
    does), a second run exits 2 with one line naming the holder's pid and host;
    once the holder is killed the kernel has released the lock."""
    run_dir = tmp_path / "run"
    lock_file = run_dir / ".cartcohort.lock"
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(config),
                              "--out", str(run_dir), "--workers", "1", "--no-report"],
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        holder = None
        while time.monotonic() < deadline and first.poll() is None and holder is None:
            try:
                holder = json.loads(lock_file.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)
        assert holder == first.pid, "the first run never held the lock"
        os.killpg(first.pid, signal.SIGSTOP)
        second = cartcohort("run", config, "--out", run_dir, "--resume", "--workers", "1",
                            "--no-report")
        assert second.returncode == 2
        line = one_line(second)
        assert line.startswith(f"cartcohort run: error: {run_dir}: another cartcohort run")
        assert f"pid {first.pid} on host {socket.gethostname()}" in line
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    with RunLock(run_dir) as lock:            # released by the kernel
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        remove_temporaries(run_dir, lock)
    with pytest.raises(RuntimeError, match="lock"):
        remove_temporaries(run_dir, RunLock(run_dir))    # not held


def test_every_commit_is_fsynced_before_and_after_its_rename(tmp_path, monkeypatch):
    """Each os.replace of a shard file, config.toml and the manifest follows an
    fsync of that very temporary file and is followed by an fsync of its folder
    (new folders are fsynced into their parents too)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    text = "[scenario]\nname = 'durable'\n"
    scenario = SimpleNamespace(name="durable", model="cart", text=text,
                               sha256=hashlib.sha256(text.encode()).hexdigest(), overrides=(),
                               seed=1, patients=3, shard_size=3, n_shards=1,
                               arms=(SimpleNamespace(name="a"), SimpleNamespace(name="b")))
    run_dir = tmp_path / "run"
    prepare(run_dir, scenario, resume=False)
    table = pa.table({"patient_id": np.arange(3), "shard": np.zeros(3, np.int32),
                      "dose_cells": np.full(3, 1e8)})
    records = write_shard(run_dir, scenario, 0, {"a": (table, table), "b": (table, table)})
    write_manifest(run_dir, scenario, {0: records})

    real = os.path.realpath(run_dir)
    renames = [(i, e[1], e[2]) for i, e in enumerate(events) if e[0] == "replace"]
    targets = [os.path.relpath(dst, real) for _, _, dst in renames]
    assert targets.count(MANIFEST) == 2 and targets.count(CONFIG) == 1
    assert sorted(t for t in targets if t.endswith(".parquet")) == sorted(
        f"{d}/arm={arm}/part-00000.parquet" for d in DATASETS for arm in ("a", "b"))
    for n, (i, src, dst) in enumerate(renames):
        previous = renames[n - 1][0] if n else -1
        following = renames[n + 1][0] if n + 1 < len(renames) else len(events)
        assert ("fsync", src) in events[previous + 1:i], f"no fsync of {src} before its rename"
        assert ("fsync", os.path.dirname(dst)) in events[i + 1:following], \
            f"no fsync of the folder of {dst} after the rename"
    synced = {e[1] for e in events if e[0] == "fsync"}
    assert {os.path.realpath(tmp_path), real, os.path.join(real, "patients")} <= synced


def test_resume_names_what_changed_seed_keys_or_code(config, reference, tmp_path):
    """--resume refuses, in one line naming it, a changed seed (or patients,
    shard size), changed configuration keys, and changed code: a manifest whose
    recorded source of kernels/models/cart.py differs from the code running now
    (what editing the model between the run and its resume leaves)."""
    from pipeline.config import load_scenario, with_overrides
    from pipeline.digest import code_digest
    from pipeline.layout import RunDirectoryError

    run_dir = copy_run(reference, tmp_path)
    scenario = load_scenario(config)
    with pytest.raises(RunDirectoryError, match=r"changed since the run was made: seed 11 -> 12 "
                                                r"\(its shards would mix"):
        prepare(run_dir, with_overrides(scenario, seed=12), resume=True)
    with pytest.raises(RunDirectoryError, match=r": patients 200 -> 150; shard size 50 -> 30 "):
        prepare(run_dir, with_overrides(scenario, patients=150, shard_size=30), resume=True)
    edited = tmp_path / "edited.toml"
    edited.write_text(config.read_text().replace("horizon_days = 365.0", "horizon_days = 300.0")
                      + "\n# a comment\n")
    with pytest.raises(RunDirectoryError,
                       match=r": the configuration: scenario\.horizon_days \(its shards"):
        prepare(run_dir, load_scenario(edited), resume=True)

    manifest = json.loads((run_dir / MANIFEST).read_text())
    manifest["code_files"]["kernels/models/cart.py"] = "0" * 64
    manifest["code_sha256"] = code_digest(manifest["code_files"])
    (run_dir / MANIFEST).write_text(json.dumps(manifest))
    resumed = cartcohort("run", config, "--out", run_dir, "--resume", "--no-report")
    assert resumed.returncode == 2
    assert one_line(resumed).endswith(
        "cannot resume, changed since the run was made: the code: kernels/models/cart.py (its "
        "shards would mix two different computations); choose another --out")


def test_a_shard_file_written_by_other_code_is_not_kept(config, reference, tmp_path):
    """repair (which goes by the shard files alone) keeps no file whose recorded
    code hash differs from the code running now: that shard becomes pending."""
    import pyarrow.parquet as pq

    run_dir = copy_run(reference, tmp_path)
    (run_dir / MANIFEST).unlink()
    path = run_dir / "patients" / "arm=fixed" / "part-00002.parquet"
    table = pq.read_table(path)
    metadata = {**table.schema.metadata, b"cartcohort.code_sha256": b"0" * 64}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    repaired = cartcohort("repair", run_dir)
    assert repaired.returncode == 0, repaired.stderr
    assert f"shard 2: {path}: written by other code" in repaired.stderr
    assert read_manifest(run_dir)["shards"]["2"] == "pending"


def test_the_code_hash_covers_every_module_a_shard_task_imports():
    """DATA_CODE lists every source of the kernels and pipeline packages that the
    worker's entry points import (in a fresh interpreter)."""
    from pipeline.digest import code_files

    probe = ("import json, sys, pipeline.shard, pipeline.config, pipeline.layout; "
             "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
             "if n.split('.')[0] in ('kernels', 'pipeline'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], check=True,
                                       capture_output=True, text=True).stdout)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    covered = set(code_files())
    assert len(loaded) > 20
    assert [f for f in loaded if os.path.relpath(f, root) not in covered] == []


def test_strace_shows_an_fsync_before_every_rename(config, tmp_path):
    """`strace -f` of a real run (a Dask local cluster of one worker process):
    every rename of a shard file, config.toml and the manifest follows an fsync
    of that very temporary file in the same process, and is followed by an
    fsync of the folder it lands in."""
    import re

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    probe = subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode().strip()}")
    trace = tmp_path / "trace.txt"
    run_dir = tmp_path / "run"
    result = subprocess.run(["strace", "-f", "-y", "-qq", "-o", str(trace), "-e",
                             "trace=fsync,fdatasync,rename,renameat,renameat2",
                             sys.executable, "-m", "pipeline.cli", "run", str(config),
                             "--out", str(run_dir), "--workers", "1", "--no-report"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    events = {}                 # pid -> [("fsync", path) | ("rename", src, dst)]
    real = os.path.realpath(run_dir)
    for line in trace.read_text().splitlines():
        pid, call = line.split(None, 1)
        # a call another thread interrupts is printed in two lines: "fsync(5</a/b>
        # <unfinished ...>" then "<... fsync resumed>) = 0"; the first names the file
        if m := re.match(r"f(?:data)?sync\(\d+<([^>]*)>(?:\) = 0| <unfinished)", call):
            events.setdefault(pid, []).append(("fsync", m[1]))
        elif m := re.match(r'rename(?:at2?)?\((?:AT_FDCWD(?:<[^>]*>)?, )?"([^"]+)", '
                           r'(?:AT_FDCWD(?:<[^>]*>)?, )?"([^"]+)"', call):
            src, dst = (os.path.realpath(p) for p in m.groups())
            if dst.startswith(real + os.sep):
                events.setdefault(pid, []).append(("rename", src, dst))
    renames = [(pid, i, e) for pid, seq in events.items() for i, e in enumerate(seq)
               if e[0] == "rename"]
    targets = sorted(os.path.relpath(e[2], real) for _, _, e in renames)
    assert targets.count(MANIFEST) >= 2 and targets.count(CONFIG) == 1
    assert sum(t.endswith(".parquet") for t in targets) == 4 * 2 * 2     # shards x arms x datasets
    for pid, i, (_, src, dst) in renames:
        seq = events[pid]
        before = [e for e in seq[:i] if e[0] == "fsync"]
        assert ("fsync", src) in before, f"no fsync of {src} before its rename"
        after = seq[i + 1:]
        stop = next((k for k, e in enumerate(after) if e[0] == "rename"), len(after))
        assert ("fsync", os.path.dirname(dst)) in after[:stop], \
            f"no fsync of the folder of {dst} after its rename"


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs folder (unmounted afterwards)."""
    mounted = []

    def mount(options):
        if os.geteuid() != 0:
            pytest.skip("mounting a size-limited or read-only tmpfs needs root (CI runs as root)")
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(config, reference,
                                                                      tmpfs):
    """A disk that holds about two of the four shards: the run stops with one
    line naming the file it could not write and what to do (exit 2, no
    traceback, no Dask log per worker or retry); once there is room, --resume
    finishes it to the reference's bytes."""
    disk = tmpfs("size=400k")
    run_dir = disk / "run"
    full = cartcohort("run", config, "--out", run_dir, "--workers", "2", "--no-report")
    assert full.returncode == 2
    said = full.stderr.splitlines()
    errors = [line for line in said if "error" in line.lower()]
    assert len(errors) == 1 and said[-1] == errors[0], full.stderr     # once, and last
    line = errors[0]
    assert line.startswith(f"cartcohort run: error: {run_dir}/") and \
        ".parquet: No space left on device; free space" in line and "--resume" in line
    assert "Traceback" not in full.stderr and "distributed" not in full.stderr
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    resumed = cartcohort("run", config, "--out", run_dir, "--resume", "--workers", "2",
                         "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    assert cartcohort("verify", run_dir).returncode == 0
    assert_same_data(run_dir, reference)


def test_unwritable_outputs_get_one_line_and_exit_2(config, reference, tmpfs, tmp_path):
    """--out on a read-only file system, --out naming a file, and a report into
    a read-only run directory: one line naming the path, exit 2, no traceback;
    --debug adds the traceback."""
    readonly = tmpfs("ro,size=1m")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, expected in ((readonly / "run", f"{readonly / 'run' / '.cartcohort.lock'}: cannot create the lock file "
                                           f"(Read-only file system)"),
                          (a_file, f"{a_file}: exists and is not a directory")):
        result = cartcohort("run", config, "--out", out, "--no-report")
        assert result.returncode == 2 and expected in one_line(result), result.stderr
    frozen = tmpfs("size=5m")
    shutil.copytree(reference, frozen / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(frozen)], check=True)
    report = cartcohort("report", frozen / "run")
    assert report.returncode == 2
    assert one_line(report) == (f"cartcohort report: error: {frozen / 'run' / 'report'}: "
                                f"Read-only file system")
    debug = cartcohort("--debug", "report", frozen / "run")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
