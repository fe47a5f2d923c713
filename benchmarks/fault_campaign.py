"""Fault campaign: random injections into a multi-shard run, each followed by
the recovery a user would make; every final dataset must be the uninterrupted
run's, byte for byte, or a one-line refusal. Run on demand:

    .venv/bin/python benchmarks/fault_campaign.py [--injections 50] [--seed 1]
                                                  [--workers 2] [--json out.json]

The scenario: the ``cart`` model, 400 patients in 8 shards of 50, a fixed and
an adaptive arm. The reference is an uninterrupted run (``cartcohort run``).
Each injection starts from an empty directory (a kill during a run) or from a
copy of the finished reference (damage to its files), chosen at random:

- ``kill-driver``: SIGKILL of ``cartcohort run`` after a random delay (its
  Dask workers then die with it: the process group is killed);
- ``kill-worker``: SIGKILL of one worker process of the run after a random
  delay (Dask retries its shard elsewhere; the run may still succeed);
- ``flip-shard`` / ``truncate-shard``: one byte flipped / the file cut at a
  random length, in a random shard file;
- ``flip-manifest`` / ``truncate-manifest`` / ``delete-manifest``: the same to
  ``_manifest.json``, or the file removed.

Recovery is what the error messages say: ``cartcohort run CONFIG --resume
--out RUN``; when that refuses in one line suggesting ``cartcohort repair``,
``repair`` then ``--resume``. Outcomes: ``identical`` (``verify`` clean and
every shard file the reference's bytes), ``refused`` (a command exited 2 with
one line of stderr and the dataset was not passed off as good), ``silent``
(a command said the dataset was good but it differs: must be zero) and
``other`` (anything else: a traceback, an unexpected exit status).
"""
import argparse
import json
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SCENARIO = """\
[scenario]
name = "campaign"
model = "cart"
seed = 5
patients = 400
shard_size = 50
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
KINDS = ("kill-driver", "kill-worker", "flip-shard", "truncate-shard", "flip-manifest",
         "truncate-manifest", "delete-manifest")
TIMEOUT = 600
ROOT = Path(__file__).resolve().parents[1]


def cartcohort(*args, wait=True, timeout=TIMEOUT, **kwargs):
    command = [sys.executable, "-m", "pipeline.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, cwd=ROOT, **kwargs)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          **kwargs)


def shard_files(run_dir):
    return sorted(p.relative_to(run_dir) for p in Path(run_dir).glob("*/arm=*/part-*.parquet"))


def same_bytes(run_dir, reference):
    files = shard_files(reference)
    return files == shard_files(run_dir) and all(
        (run_dir / f).read_bytes() == (reference / f).read_bytes() for f in files)


def descendants(pid):
    """Every process below ``pid`` (from /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_during_run(config, run_dir, rng, target, workers):
    """Start a run, SIGKILL the driver or one worker after a random delay."""
    process = cartcohort("run", config, "--out", run_dir, "--workers", workers,
                         "--no-report", wait=False)
    delay = rng.uniform(2.0, 14.0)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    what = "the run finished before the kill"
    if process.poll() is None:
        if target == "kill-driver":
            os.killpg(process.pid, signal.SIGKILL)
            what = f"driver killed at {delay:.1f} s"
        else:
            workers_now = [p for p in descendants(process.pid)
                           if b"spawn_main" in _cmdline(p)]
            if workers_now:
                os.kill(rng.choice(workers_now), signal.SIGKILL)
                what = f"one of {len(workers_now)} worker processes killed at {delay:.1f} s"
            else:
                what = f"no worker process yet at {delay:.1f} s"
    process.communicate(timeout=TIMEOUT)
    try:
        os.killpg(process.pid, signal.SIGKILL)        # workers orphaned by a killed driver
    except ProcessLookupError:
        pass
    return what


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def damage(run_dir, rng, kind):
    if kind == "delete-manifest":
        (run_dir / "_manifest.json").unlink()
        return "_manifest.json removed"
    path = (run_dir / "_manifest.json" if kind.endswith("manifest")
            else run_dir / rng.choice(shard_files(run_dir)))
    data = bytearray(path.read_bytes())
    if kind.startswith("flip"):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        what = f"byte {at} of {path.relative_to(run_dir)} flipped"
    else:
        at = rng.randrange(len(data))
        del data[at:]
        what = f"{path.relative_to(run_dir)} cut at {at} of {path.stat().st_size} bytes"
    path.write_bytes(bytes(data))
    return what


def one_line_refusal(result):
    lines = result.stderr.strip().splitlines()
    return result.returncode == 2 and len(lines) >= 1 and "Traceback" not in result.stderr \
        and lines[-1].startswith("cartcohort ") and ": error: " in lines[-1]


def recover(config, run_dir, workers):
    """--resume; on a refusal that suggests repair, repair then --resume. Returns
    the commands' results."""
    results = [cartcohort("run", config, "--out", run_dir, "--resume", "--workers", workers,
                          "--no-report")]
    if results[-1].returncode == 2 and "cartcohort repair" in results[-1].stderr:
        results.append(cartcohort("repair", run_dir))
        if results[-1].returncode == 0:
            results.append(cartcohort("run", config, "--out", run_dir, "--resume",
                                      "--workers", workers, "--no-report"))
    return results


def classify(results, run_dir, reference):
    last = results[-1]
    if last.returncode == 0:
        clean = cartcohort("verify", run_dir).returncode == 0
        if clean and same_bytes(run_dir, reference):
            return "identical"
        return "silent" if clean else "other"
    if all(r.returncode in (0, 2) for r in results) and one_line_refusal(last):
        return "refused"
    return "other"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--injections", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    counts, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "campaign.toml"
        config.write_text(SCENARIO)
        reference = tmp / "reference"
        made = cartcohort("run", config, "--out", reference, "--workers", args.workers,
                          "--no-report", timeout=3 * TIMEOUT)       # may compile the kernel
        if made.returncode != 0:
            sys.exit(f"fault_campaign: the reference run failed: {made.stderr.strip()}")
        started = time.monotonic()
        for i in range(args.injections):
            kind = rng.choice(KINDS)
            run_dir = tmp / f"run{i}"
            if kind.startswith("kill"):
                what = kill_during_run(config, run_dir, rng, kind, args.workers)
            else:
                shutil.copytree(reference, run_dir)
                what = damage(run_dir, rng, kind)
            results = recover(config, run_dir, args.workers)
            outcome = classify(results, run_dir, reference)
            counts[outcome] = counts.get(outcome, 0) + 1
            said = results[-1].stderr.strip().splitlines()[-1:] or [""]
            rows.append({"injection": i, "kind": kind, "what": what, "outcome": outcome,
                         "commands": len(results), "last_line": said[0]})
            print(f"{i:3d} {kind:18s} {outcome:9s} {what} | {said[0][:100]}", flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
        elapsed = time.monotonic() - started
    load = os.getloadavg()
    print(f"\n{args.injections} injections in {elapsed:.0f} s (load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}): "
          + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("identical", "refused", "silent",
                                                          "other")))
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "injections": rows}, indent=1))
    return 0 if counts.get("silent", 0) == 0 and counts.get("other", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
