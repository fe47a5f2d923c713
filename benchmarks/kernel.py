"""Throughput of the batched Dormand-Prince kernel against scipy, measured in one run.

    .venv/bin/python benchmarks/kernel.py [--sizes 1000,10000,100000] [--threads 1,2]
                                          [--scipy-patients 20] [--quick] [--json FILE]

The problem (:func:`problem`) is built by the pipeline itself from the scenario
:data:`SCENARIO`: the reference ``cart`` model over 365 days, rtol 1e-6, atol
1e-9, one fixed arm of 1e8 CAR T cells infused into E at day 0, the cohort at the
configuration's defaults (each parameter log-normal around the model's typical
value with its own ``sd_log``; tumour burden log-normal around 1e10 cells, sd of
log 1.0), a fixed seed. The patients are one shard of N sampled by
:func:`pipeline.cohort.sample_shard`, the arm's initial states, parameters and
dose come from :func:`pipeline.shard.arm_problem` (what ``run_shard``
integrates), and the six features computed in the step loop are six of the
pipeline's own (:func:`pipeline.outcomes.kernel_features`): peak IL-6 and its
time, CAR T AUC of E+M+X, tumour minimum, tumour at day 28 (the scenario's
``response_day``) and at day 365. A patient depends on the seed, the shard and
its index in the shard only, so patient i is the same for every N and the scipy
subset is the first patients of every kernel batch (each child checks this).

What is measured, and how:

* JIT: a fresh interpreter with ``NUMBA_CACHE_DIR`` set to a new, empty
  temporary directory times the import (the models' right-hand sides compile at
  import) and the first 64-patient solve (the parallel kernel compiles); a second
  fresh interpreter with the same directory times the same steps, now loaded from
  the disk cache. The cache files' modification times are compared across the
  second run: unchanged files prove it did not recompile.
* Throughput: each (N, threads) runs in its own child process (same cache), after
  a 64-patient warm-up solve; the time of ``solve`` alone (sampling excluded),
  best of 3 repetitions for N <= 100,000 (a single run of 1e5 patients
  varies by 15% on a shared machine) and a single run above. Steps/patient is
  the mean number of accepted steps.
* Memory: in each child, after the warm-up, the peak-RSS high-water mark is
  reset (``/proc/self/clear_refs``, Linux) and read back (``VmHWM``) after the
  repetitions: the peak resident set of the N-patient work, which covers the
  interpreter, Numba and the compiled code, the sampled inputs and their
  temporaries, the outputs and the kernel's native workspaces (invisible to
  tracemalloc). "+N MB" is that peak minus the resident set just before
  sampling. Where the reset is not possible, ``ru_maxrss`` is used instead.
  The outputs' size is listed separately.
* Integrity: each child hashes the ``kernels`` sources and times its warm-up; a
  warm-up that took seconds means it recompiled, and differing hashes mean the
  kernel changed during the run (both are reported).
* scipy: ``solve_ivp(method="RK45", dense_output=True)`` in a Python loop over the
  first patients, single-threaded, after a one-patient warm-up, best of 3 passes
  (its rate drifts by up to 1.5x between passes), rhs in numpy, the same tolerances and the same
  six features extracted from its dense output (exact quartic quadrature for the
  AUC, roots of the interpolant's slope for the extrema). Its rate includes the
  feature extraction, as the kernel's does; the integration-only rate is shown
  too. The kernel's features for the same patients are compared with scipy's.
"""
import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

if __package__ in (None, ""):
    # run as a file: put the repository first, or benchmarks/pipeline.py would
    # shadow the pipeline package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEED = 20240601
WARMUP_PATIENTS = 64
SMALL_N_REPEATS, LARGE_N = 3, 100_000


# ------------------------------------------------------------------ the problem

# One fixed arm of the reference model; the cohort, every tolerance not given and
# the outcome rules at pipeline/config.py's defaults. {n} patients in one shard.
SCENARIO = """
[scenario]
name = "kernel-benchmark"
model = "cart"
seed = {seed}
patients = {n}
shard_size = {n}
horizon_days = 365.0
rtol = 1e-6
atol = 1e-9

[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8

[outcomes]
response_day = 28.0
"""

# (name in this report, the pipeline.outcomes column whose kernel feature it is)
FEATURES = (("peak_il6", "il6_peak_pg_ml"), ("t_peak_il6", "t_il6_peak_d"),
            ("car_t_auc", "cart_auc_cells_d"), ("tumour_min", "tumour_min_cells"),
            ("tumour_day28", "tumour_response_day_cells"), ("tumour_day365", "tumour_end_cells"))
FEATURE_NAMES = tuple(name for name, _ in FEATURES)


class Problem:
    """The benchmark problem: ``arm`` (a :class:`pipeline.shard.ArmProblem`: model,
    y0[N, 5] before the dose, params[N, 14], doses, t0, t1, rtol, atol) and the six
    kernel features in :data:`FEATURE_NAMES` order."""

    def __init__(self, arm, features):
        self.arm, self.features = arm, features

    def solve(self, threads=1):
        return self.arm.solve(features=self.features, threads=threads)


def scenario(n_patients, seed=SEED):
    """The validated benchmark scenario for N patients (one shard of N)."""
    from pipeline.config import scenario_from_text
    return scenario_from_text(SCENARIO.format(n=int(n_patients), seed=int(seed)),
                              "benchmarks/kernel.py")


def problem(n_patients, seed=SEED):
    """The benchmark problem for N patients, as the pipeline builds a shard's:
    :func:`pipeline.cohort.sample_shard` (shard 0 of :func:`scenario`),
    :func:`pipeline.shard.arm_problem` for its arm, and the features of
    :func:`pipeline.outcomes.kernel_features` named in :data:`FEATURES`."""
    from kernels.models import get_model
    from pipeline import outcomes
    from pipeline.cohort import sample_shard
    from pipeline.shard import arm_problem

    s = scenario(n_patients, seed)
    model = get_model(s.model)
    shard = sample_shard(s.cohort, s.seed, 0, s.shard_size, s.patients)
    every = outcomes.kernel_features(model, s.outcomes, s.horizon_days)
    features = tuple(every[outcomes.FEATURE_COLUMNS.index(column)] for _, column in FEATURES)
    return Problem(arm_problem(model, s, s.arms[0], shard), features)


def same_patients(small, large):
    """Whether ``small``'s patients are the first patients of ``large``."""
    k = len(small.arm)
    a, b = small.arm, large.arm
    return bool(np.array_equal(a.y0, b.y0[:k]) and np.array_equal(a.params, b.params[:k])
                and np.array_equal(a.doses.amounts, b.doses.amounts[:k]))


# ------------------------------------------------------------------ the machine

def machine():
    import numba
    import scipy

    cpu = "unknown"
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu == "unknown":
                    cpu = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        cpu = platform.processor() or "unknown"
    simd = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "simd": simd,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "numba_threads_max": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------ child processes

def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def _child_jit(spec):
    """Import and first solve in a fresh interpreter (cold or warm disk cache)."""
    begin = time.perf_counter()
    import numba  # noqa: F401
    import kernels.dopri5  # noqa: F401
    import kernels.models  # noqa: F401   (compiles or loads the right-hand sides)
    t_import = time.perf_counter() - begin
    begin = time.perf_counter()
    import pipeline.config, pipeline.cohort, pipeline.outcomes, pipeline.shard  # noqa: F401,E401
    t_pipeline_import = time.perf_counter() - begin
    p = problem(WARMUP_PATIENTS, SEED)
    begin = time.perf_counter()
    p.solve(threads=1)
    t_first = time.perf_counter() - begin
    begin = time.perf_counter()
    p.solve(threads=1)
    t_second = time.perf_counter() - begin
    result = {"import_s": t_import, "pipeline_import_s": t_pipeline_import,
              "first_solve_s": t_first, "second_solve_s": t_second,
              "kernel_sources": _kernel_sources_hash()}
    n_compare = spec.get("compare", 0)
    if n_compare:
        sol = problem(n_compare, SEED).solve(threads=1)
        result["features"] = sol.features.tolist()
        result["status"] = sol.status.tolist()
    return result


def _proc_status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss():
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _kernel_sources_hash():
    """A hash of kernels/'s Python sources: a change during the run shows here."""
    import hashlib
    import kernels

    root = os.path.dirname(kernels.__file__)
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()[:12]


def _child_throughput(spec):
    """One (N, threads) configuration: warm up, then time ``solve`` alone."""
    n, threads, repeats = spec["n"], spec["threads"], spec["repeats"]
    sources = _kernel_sources_hash()
    warm = problem(WARMUP_PATIENTS, SEED)
    begin = time.perf_counter()
    warm.solve(threads=threads)
    warmup = time.perf_counter() - begin
    # Peak RSS of the N-patient work alone: reset the high-water mark after the
    # warm-up (compilation transients would otherwise dominate it).
    reset = _reset_peak_rss()
    rss_base = _proc_status_kb("VmRSS") / 1024.0 if reset else _maxrss_mb()
    p = problem(n, SEED)
    prefix = same_patients(problem(min(n, WARMUP_PATIENTS), SEED), p)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        sol = p.solve(threads=threads)
        times.append(time.perf_counter() - begin)
    counts = np.bincount(sol.status.astype(np.int64), minlength=4)
    peer = _peer_in_child(p, sol, threads, repeats) if spec.get("peer") else None
    outputs = sol.features.nbytes + sol.saved.nbytes + sol.status.nbytes + sol.n_steps.nbytes
    inputs = p.arm.y0.nbytes + p.arm.params.nbytes + p.arm.doses.amounts.nbytes
    peak = _proc_status_kb("VmHWM") / 1024.0 if reset else _maxrss_mb()
    return {
        "n": n, "threads": threads, "times_s": times, "best_s": min(times),
        "patients_per_s": n / min(times),
        "steps_per_patient": float(sol.n_steps.mean()),
        "status_counts": counts.tolist(),
        "warmup_s": warmup, "kernel_sources": sources, "same_first_patients": prefix,
        "peak_rss_mb": peak, "base_rss_mb": rss_base, "peak_reset": reset,
        "process_maxrss_mb": _maxrss_mb(),
        "outputs_mb": outputs / 2**20, "inputs_mb": inputs / 2**20,
        "peer": peer,
    }


def _peer_in_child(p, sol, threads, repeats):
    """numbalsoda's DOP853 on the same patients and threads, right after the
    kernel; its tumour at days 28 and 365 compared with the kernel's."""
    from benchmarks import peer_numbalsoda
    result = peer_numbalsoda.run(p, threads, repeats)
    mine = sol.features[:, [FEATURE_NAMES.index("tumour_day28"),
                            FEATURE_NAMES.index("tumour_day365")]]
    theirs = result.pop("tumour_day28_365")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(mine - theirs) / np.abs(theirs)
    result["median_rel_diff"] = float(np.nanmedian(rel))
    return result


def _run_child(spec, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    begin = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - begin
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def _cache_state(cache_dir):
    state = {}
    for root, _, files in os.walk(cache_dir):
        for name in files:
            path = os.path.join(root, name)
            state[os.path.relpath(path, cache_dir)] = os.stat(path).st_mtime_ns
    return state


# ------------------------------------------------------------------ scipy

_W_CART_T = np.array([0.0, 1.0, 1.0, 1.0, 0.0])    # E + M + X
_INTEGRAL = np.array([1 / 2, 1 / 3, 1 / 4, 1 / 5])   # int_0^1 x^j dx, j = 1..4


def cart_rhs_numpy(t, y, p):
    """The cart model's right-hand side for one patient (p: a list of 14 floats)."""
    T, E, M, X, I = y
    r, Tmax, k, Kk, Ks, a, dE, gx, m, rho, dM, dX, s, c = p
    stim = T / (Ks + T)
    kill = k * E * T / (1.0 + T / Kk)
    return np.array([
        r * T * (1.0 - T / Tmax) - kill,
        a * stim * E - dE * E - gx * stim * E - m * E + rho * M * stim,
        m * E - dM * M - rho * M * stim,
        gx * stim * E - dX * X,
        s * kill - c * I,
    ])


def _extremum(sol, w, sign):
    """max (sign 1) or min (sign -1) of w.y(t) and its time, on scipy's dense output
    (the interpolant y(t_i + x h) = y_i + h Q [x, x^2, x^3, x^4])."""
    q = w @ sol.y
    i = int(np.argmax(sign * q))
    best, best_t = q[i], sol.t[i]
    interps = sol.sol.interpolants
    Q = np.stack([ip.Q for ip in interps])                 # [segments, S, 4]
    qQ = np.einsum("s,nsj->nj", w, Q)                      # dq/dt = qQ . [1, 2x, 3x^2, 4x^3]
    start, end = qQ[:, 0], qQ @ np.array([1.0, 2.0, 3.0, 4.0])
    for seg in np.nonzero((sign * start > 0) & (sign * end < 0))[0]:
        ip = interps[seg]
        roots = np.roots([4 * qQ[seg, 3], 3 * qQ[seg, 2], 2 * qQ[seg, 1], qQ[seg, 0]])
        for x in roots[np.isreal(roots)].real:
            if 0.0 < x < 1.0:
                value = w @ ip.y_old + ip.h * (qQ[seg] @ x ** np.arange(1, 5))
                if sign * value > sign * best:
                    best, best_t = value, ip.t_old + x * ip.h
    return best, best_t


def scipy_features(sol):
    """The six benchmark features from a solve_ivp(dense_output=True) result."""
    w_I, w_T = np.eye(5)[4], np.eye(5)[0]
    peak, t_peak = _extremum(sol, w_I, 1.0)
    t_min, _ = _extremum(sol, w_T, -1.0)
    interps = sol.sol.interpolants
    h = np.diff(sol.t)
    y_old = sol.y[:, :-1]
    qQ = np.einsum("s,nsj->nj", _W_CART_T, np.stack([ip.Q for ip in interps]))
    auc = float(np.sum(h * (_W_CART_T @ y_old) + h * h * (qQ @ _INTEGRAL)))
    return [peak, t_peak, auc, t_min, float(sol.sol(28.0)[0]), float(sol.y[0, -1])]


SCIPY_REPEATS = 3


def run_scipy(p, n):
    """Best of SCIPY_REPEATS passes over the first n patients, after a one-patient
    warm-up, so scipy is timed as favourably as the kernel (best of 3)."""
    _scipy_pass(p, 1)
    runs = [_scipy_pass(p, n) for _ in range(SCIPY_REPEATS)]
    return max(runs, key=lambda run: run["patients_per_s"])


def _scipy_pass(p, n):
    from scipy.integrate import solve_ivp

    p = p.arm
    y0 = p.y0[:n].copy()
    y0[:, p.model.state_index(p.model.roles["infusion"][0])] += p.doses.amounts[:n, 0]  # at t0
    feats, steps, statuses = [], [], []
    t_solve = t_features = 0.0
    for i in range(n):
        params = p.params[i].tolist()
        begin = time.perf_counter()
        sol = solve_ivp(cart_rhs_numpy, (p.t0, p.t1), y0[i], method="RK45", rtol=p.rtol,
                        atol=p.atol, dense_output=True, args=(params,))
        middle = time.perf_counter()
        feats.append(scipy_features(sol) if sol.success else [math.nan] * 6)
        t_features += time.perf_counter() - middle
        t_solve += middle - begin
        steps.append(sol.t.size - 1)
        statuses.append(sol.status)
    return {
        "patients": n, "solve_s": t_solve, "features_s": t_features,
        "patients_per_s": n / (t_solve + t_features),
        "patients_per_s_integration_only": n / t_solve,
        "steps_per_patient": float(np.mean(steps)),
        "failures": int(sum(s != 0 for s in statuses)),
        "features": feats,
    }


# ------------------------------------------------------------------ the report

def _print_table(rows, scipy_rate):
    head = (f"{'N':>8} {'threads':>7} {'patients/s':>11} {'x scipy':>9} {'steps/pt':>9} "
            f"{'peak RSS MB':>11} {'+N MB':>7} {'out MB':>7} {'not ok':>6}  times (s)")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["patients_per_s"] / scipy_rate
        times = ", ".join(f"{t:.3f}" for t in r["times_s"])
        not_ok = sum(r["status_counts"][1:])
        print(f"{r['n']:>8} {r['threads']:>7} {r['patients_per_s']:>11,.0f} {ratio:>9,.0f} "
              f"{r['steps_per_patient']:>9.1f} {r['peak_rss_mb']:>11.0f} "
              f"{r['peak_rss_mb'] - r['base_rss_mb']:>7.0f} {r['outputs_mb']:>7.2f} "
              f"{not_ok:>6}  {times}")


def _print_peer(rows):
    print("compiled peer: numbalsoda DOP853 (Hairer's 8th-order pair, C++), one call per "
          "patient in a numba prange loop,")
    print("  same patients, threads, tolerances and repetitions, run in the same child right "
          "after the kernel; it")
    print("  returns states at days 0, 28 and 365 only, so it computes 2 of the six "
          "features (tumour at days 28, 365)")
    head = (f"{'N':>8} {'threads':>7} {'kernel/s':>11} {'DOP853/s':>11} {'kernel / DOP853':>16} "
            f"{'not ok':>6} {'median |rel diff|':>18}")
    print(head)
    print("-" * len(head))
    for r in rows:
        q = r["peer"]
        print(f"{r['n']:>8} {r['threads']:>7} {r['patients_per_s']:>11,.0f} "
              f"{q['patients_per_s']:>11,.0f} {r['patients_per_s'] / q['patients_per_s']:>16.2f} "
              f"{q['failures']:>6} {q['median_rel_diff']:>18.1e}")
    print()


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_int_list, default=None,
                        help="comma-separated cohort sizes (default 1000,10000,100000)")
    parser.add_argument("--threads", type=_int_list, default=[1, 2],
                        help="comma-separated Numba thread counts (default 1,2)")
    parser.add_argument("--scipy-patients", type=int, default=None,
                        help="patients integrated with scipy (default 20)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: sizes 500,5000 and 5 scipy patients unless given")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        result = _child_jit(spec) if spec["mode"] == "jit" else _child_throughput(spec)
        print(json.dumps(result))
        return 0

    sizes = args.sizes or ([500, 5000] if args.quick else [1000, 10_000, 100_000])
    n_scipy = args.scipy_patients if args.scipy_patients is not None else (5 if args.quick else 20)
    if n_scipy < 1:
        parser.error("--scipy-patients must be >= 1")

    info = machine()
    threads = [t for t in args.threads if t <= info["numba_threads_max"]]
    skipped = sorted(set(args.threads) - set(threads))
    load_start = os.getloadavg()
    print("cartcohort kernel benchmark: model cart, 365 days, rtol 1e-6, atol 1e-9, "
          "one dose, six in-loop features")
    print(f"problem: scenario SCENARIO (seed {SEED}), one shard of N patients sampled by "
          "pipeline.cohort.sample_shard, arm built by pipeline.shard.arm_problem")
    print(f"machine: {info['cpu']} ({', '.join(info['simd']) or 'no AVX2'}), "
          f"{info['logical_cpus']} logical CPUs ({info['usable_cpus']} usable), "
          f"Numba up to {info['numba_threads_max']} threads")
    print(f"versions: python {info['python']}, numpy {info['numpy']}, numba {info['numba']}, "
          f"scipy {info['scipy']}")
    print(f"load average at start (1/5/15 min): {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f}")
    if load_start[0] > 0.5:
        print("WARNING: the machine is busy; other processes compete for the cores and "
              "the rates below are lower bounds")
    if skipped:
        print(f"skipped thread counts above NUMBA_NUM_THREADS: {skipped}")
    print(flush=True)

    from benchmarks import peer_numbalsoda
    peer = peer_numbalsoda.available()
    if not peer:
        print("compiled peer: numbalsoda is not installed, so no DOP853 column "
              "(`make bench` installs it)")
    cache_dir = tempfile.mkdtemp(prefix="cartcohort-bench-numba-")
    try:
        # 1. JIT: cold, then warm, in fresh interpreters sharing one new cache.
        cold = _run_child({"mode": "jit"}, cache_dir)
        before = _cache_state(cache_dir)
        warm = _run_child({"mode": "jit", "compare": n_scipy}, cache_dir)
        after = _cache_state(cache_dir)
        rewritten = sorted(k for k in after if before.get(k) != after[k])
        print("JIT (fresh interpreter each; NUMBA_CACHE_DIR = a new temporary directory)")
        print(f"  {'':<28}{'import':>9}{'1st solve':>11}{'2nd solve':>11}{'process':>10}")
        for label, r in (("cold cache (compiles)", cold), ("warm cache (loads)", warm)):
            print(f"  {label:<28}{r['import_s']:>8.2f}s{r['first_solve_s']:>10.2f}s"
                  f"{r['second_solve_s']:>10.3f}s{r['process_wall_s']:>9.2f}s")
        print(f"  cache: {len(after)} files written by the cold run; "
              f"{len(rewritten)} rewritten by the warm run"
              f"{' (it recompiled: ' + ', '.join(rewritten[:4]) + ')' if rewritten else ' (no recompilation)'}")
        if cold["kernel_sources"] != warm["kernel_sources"]:
            print("  WARNING: the kernels/ sources changed between the cold and the warm run, "
                  "so the warm run had to recompile; rerun when the sources are stable")
        print("  (import: numba and kernels/, including compiling the models' right-hand "
              "sides; the pipeline")
        print(f"  modules, pyarrow included, took {warm['pipeline_import_s']:.2f} s more, not "
              f"counted; 1st solve of {WARMUP_PATIENTS} patients")
        print("  includes compiling or loading the kernel)")
        print(flush=True)

        # 2. scipy on the first patients, in this process.
        os.environ["NUMBA_CACHE_DIR"] = cache_dir   # importing kernels.models loads the rhs
        sp = run_scipy(problem(n_scipy), n_scipy)
        kernel_feats = np.array(warm["features"])
        scipy_feats = np.array(sp["features"])
        print(f"scipy solve_ivp RK45 (Python loop, {n_scipy} patients, best of {SCIPY_REPEATS}, "
              f"1 thread, numpy rhs, "
              f"dense output + the same six features)")
        print(f"  {sp['patients_per_s']:.1f} patients/s with features "
              f"({sp['patients_per_s_integration_only']:.1f} integration only), "
              f"{sp['steps_per_patient']:.1f} steps/patient, {sp['failures']} failures")
        print("  kernel vs scipy on these patients, |kernel - scipy| / |scipy| "
              "(median, max):")
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(kernel_feats - scipy_feats) / np.abs(scipy_feats)
        agreement = {}
        for j, name in enumerate(FEATURE_NAMES):
            agreement[name] = (float(np.nanmedian(rel[:, j])), float(np.nanmax(rel[:, j])))
            print(f"    {name:<15}{agreement[name][0]:>10.1e}{agreement[name][1]:>10.1e}")
        print("  (tumour values far below atol = 1e-9, i.e. a single cell, carry no "
              "relative accuracy in either solver)")
        print(flush=True)

        # 3. kernel throughput, one child per configuration.
        rows = []
        for n in sizes:
            repeats = SMALL_N_REPEATS if n <= LARGE_N else 1
            for t in threads:
                print(f"  running N={n}, threads={t} ({repeats} repetition(s)) ...",
                      file=sys.stderr, flush=True)
                rows.append(_run_child({"mode": "throughput", "n": n, "threads": t,
                                        "repeats": repeats, "peer": peer}, cache_dir))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    load_end = os.getloadavg()
    print(f"kernel throughput (solve() only; best of {SMALL_N_REPEATS} for N <= {LARGE_N:,}, "
          f"one run above; x scipy = kernel patients/s / scipy patients/s with features, "
          f"this run)")
    _print_table(rows, sp["patients_per_s"])
    print()
    if peer:
        _print_peer(rows)
    print("memory: 'peak RSS MB' = peak resident set of each child process during the "
          "N-patient work (sampling +")
    print("  solve repetitions; high-water mark reset after the warm-up), including the "
          "interpreter, numba and the")
    print("  compiled code; '+N MB' = that peak minus the resident set before sampling; "
          "'out MB' = returned arrays.")
    if not all(r["peak_reset"] for r in rows):
        print("  (peak reset unavailable here: ru_maxrss of the whole child was used, "
              "compilation included)")
    compiled = [f"N={r['n']}/threads={r['threads']} ({r['warmup_s']:.0f} s)"
                for r in rows if r["warmup_s"] > 5.0]
    if compiled:
        print(f"WARNING: these children recompiled the kernel during warm-up (its sources "
              f"changed during the run?): {', '.join(compiled)}")
    hashes = sorted({r["kernel_sources"] for r in rows})
    mixed = [f"N={r['n']}/threads={r['threads']}" for r in rows
             if not r["same_first_patients"]]
    if mixed:
        print(f"WARNING: these children's first patients differ from a smaller cohort's "
              f"(the sampler is not prefix-stable?): {', '.join(mixed)}")
    if len(hashes) > 1:
        print(f"WARNING: the kernels/ sources changed during the run ({len(hashes)} versions: "
              f"{', '.join(hashes)}); rows are not comparable")
    else:
        print(f"kernels/ sources hash: {hashes[0]} (unchanged during the throughput runs)")
    print(f"load average at end (1/5/15 min): {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")

    if args.json:
        sp_out = {k: v for k, v in sp.items() if k != "features"}
        for r in rows:
            r["ratio_vs_scipy"] = r["patients_per_s"] / sp["patients_per_s"]
            if r["peer"]:
                r["ratio_vs_dop853"] = r["patients_per_s"] / r["peer"]["patients_per_s"]
        cold.pop("features", None)
        warm.pop("features", None)
        warm.pop("status", None)
        result = {
            "problem": {"model": "cart", "t1_days": 365.0, "rtol": 1e-6, "atol": 1e-9,
                        "dose": 0.1, "features": list(FEATURE_NAMES),
                        "pipeline_columns": [column for _, column in FEATURES], "seed": SEED,
                        "scenario": SCENARIO},
            "machine": info, "load_average_start": load_start, "load_average_end": load_end,
            "jit": {"cold": cold, "warm": warm, "cache_files": len(after),
                    "rewritten_by_warm_run": rewritten},
            "scipy": sp_out, "agreement_median_max_rel": agreement, "kernel": rows,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
