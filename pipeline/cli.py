"""The ``cartcohort`` command.

    cartcohort models                 the model library: states and parameters
    cartcohort run CONFIG [--out DIR] [--patients N] [--shard-size N] [--seed S]
                   [--workers N] [--resume] [--no-report]
                                      run a scenario on a local Dask cluster
                   [--cluster local|slurm|scheduler-file] [SLURM flags]
    cartcohort run-shards CONFIG --out DIR --shards A:B   shards without Dask (array task)
    cartcohort finalize CONFIG --out DIR                  manifest and report after an array
    cartcohort validate CONFIG        check a scenario file and summarise it
    cartcohort report RUN             write a run's report (tables, Markdown, plots)
    cartcohort query RUN "SQL"        run SQL over a run's results (views patients,
                                      trajectories)
    cartcohort verify RUN             check every file of a run against its manifest
    cartcohort repair RUN [--patients N] [--shard-size N] [--seed S]
                                      rebuild a lost or damaged manifest
    cartcohort calibrate TARGETS.toml --out DIR [--patients N] [--perturb F]
                                      fit typical values to published summary statistics

Results go to stdout, progress and timing to stderr. A usage or input error is
one line on stderr and exit status 2. ``report`` and ``query`` first check the
run against its manifest (pipeline.store.check_run) and refuse, in one line
naming the file, a run that does not match it.
"""
import argparse
import errno
import inspect
import math
import os
import sys
import time
import traceback
from pathlib import Path

from pipeline.tables import text_table


class _Parser(argparse.ArgumentParser):
    """argparse, with errors reported as a single line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer_at_least(minimum, description):
    """An argparse type: an integer >= minimum, else a one-line error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {description}, got {text!r}")
        return value
    return parse


_positive_int = _integer_at_least(1, "positive integer")
_seed = _integer_at_least(0, "non-negative integer")


def _erase_status():
    """What erases a transient status line on a terminal stderr ("" elsewhere)."""
    return "\r\x1b[K" if sys.stderr.isatty() else ""


def _version():
    from importlib import metadata

    try:
        return metadata.version("cartcohort")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser():
    # no import of kernels (nor pipeline.shard) here: the model library takes seconds
    # to load, and commands such as verify and query never need it
    parser = _Parser(prog="cartcohort",
                     description="Virtual-cohort simulation of CAR T cell therapy.")
    parser.add_argument("--version", action="version", version=f"cartcohort {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback after the one-line message")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser(
        "models", help="list the models with their states and parameters",
        description="List the model library: each model's states (name, unit) and "
                    "parameters (name, unit, typical value, between-patient sd of log, source). "
                    "With NAME: that model only, with its equations.")
    models.add_argument("name", nargs="?", metavar="NAME",
                        help="one model (e.g. cart2): also print its equations")
    models.set_defaults(handler=cmd_models)

    run = commands.add_parser(
        "run", help="run a scenario: every arm on the same virtual patients",
        description="Validate the scenario, then integrate its shards on a local Dask "
                    "cluster (one single-threaded worker process per core) into a Parquet "
                    "dataset RUN/patients/arm=<arm>/part-<shard>.parquet with "
                    "RUN/_manifest.json, write the report (RUN/report/) and print whether "
                    "each arm beats the reference (lead response and severe CRS), the "
                    "per-arm rates and paired differences. RUN is --out, or the scenario's "
                    "[output] dir / name. A killed run is finished with --resume.")
    run.add_argument("config", metavar="CONFIG", help="scenario file (TOML)")
    run.add_argument("--out", metavar="DIR", default=None,
                     help="run directory (default: [output] dir / scenario name)")
    run.add_argument("--patients", type=_positive_int, default=None, metavar="N",
                     help="override scenario.patients")
    run.add_argument("--shard-size", type=_positive_int, default=None, metavar="N",
                     help="override scenario.shard_size")
    run.add_argument("--seed", type=_seed, default=None, metavar="S",
                     help="override scenario.seed")
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="worker processes (default: one per core)")
    run.add_argument("--resume", action="store_true",
                     help="finish an interrupted run: compute only missing shards (the "
                          "configuration must be unchanged)")
    run.add_argument("--no-report", action="store_true", help="skip the report")
    where = run.add_argument_group(
        "where to run", "local (default): a LocalCluster on this machine; slurm: "
        "dask-jobqueue SLURMCluster worker jobs, configured by the scenario's "
        "[cluster.slurm] table and these flags; scheduler-file: connect to a "
        "cluster started inside an allocation (slurm/cohort.sbatch)")
    where.add_argument("--cluster", choices=("local", "slurm", "scheduler-file"),
                       default="local")
    where.add_argument("--scheduler-file", metavar="F", default=None,
                       help="the Dask scheduler file (with --cluster scheduler-file)")
    for flag, kind, text in (("--partition", str, "SLURM partition (queue)"),
                             ("--account", str, "SLURM account"),
                             ("--cores", _positive_int, "cores per worker job"),
                             ("--memory", str, "memory per worker job, e.g. 4GB"),
                             ("--walltime", str, "wall time per worker job, HH:MM:SS"),
                             ("--jobs", _positive_int, "number of worker jobs"),
                             ("--interface", str, "network interface of workers and "
                                                  "scheduler (the cluster's fast network)"),
                             ("--job-name", str, "SLURM job name of the worker jobs")):
        where.add_argument(flag, type=kind, default=None, help=text)
    where.add_argument("--job-extra", action="append", default=None, metavar="DIRECTIVE",
                       help="extra #SBATCH directive for worker jobs (repeatable)")
    run.set_defaults(handler=cmd_run)

    shards = commands.add_parser(
        "run-shards", help="compute a range of shards without Dask (a SLURM array task)",
        description="Compute shards [START, STOP) of a scenario into RUN and write "
                    "their files, without Dask: one task of slurm/array.sbatch. Shards "
                    "already written are kept. Finish with `cartcohort finalize`.")
    shards.add_argument("config", metavar="CONFIG", help="scenario file (TOML)")
    shards.add_argument("--out", metavar="DIR", required=True, help="run directory")
    shards.add_argument("--shards", metavar="START:STOP", required=True,
                        help="half-open range of shard indices")
    shards.set_defaults(handler=cmd_run_shards)

    finalize = commands.add_parser(
        "finalize", help="check a run's shards, write its manifest and report",
        description="After the array tasks: check that every shard of RUN is written "
                    "(exit 2 naming the missing ones otherwise), record them in the "
                    "manifest, write the report and print the verdicts and the per-arm table.")
    finalize.add_argument("config", metavar="CONFIG", help="scenario file (TOML)")
    finalize.add_argument("--out", metavar="DIR", required=True, help="run directory")
    finalize.set_defaults(handler=cmd_finalize)

    validate = commands.add_parser(
        "validate", help="check a scenario file and summarise it",
        description="Read a scenario TOML file and validate every key (see "
                    "pipeline/config.py) without computing or writing anything; print a "
                    "summary and the scenario's sha256. An error is one line naming the "
                    "file and the key, exit status 2.")
    validate.add_argument("config", metavar="CONFIG", help="scenario file (TOML)")
    validate.set_defaults(handler=cmd_validate)

    report = commands.add_parser(
        "report", help="write a run's report: tables, Markdown and plots",
        description="Read a run directory's patients dataset, manifest and config and "
                    "write RUN/report/: summary.csv, paired.csv, strata.csv, report.md and "
                    "PNG plots (see pipeline/report.py). The verdict per arm against the "
                    "reference and the per-arm table (rates with Wilson 95% intervals, "
                    "paired differences with exact intervals) go to stdout, the paths "
                    "written to stderr. The run is first checked against its manifest "
                    "(as `cartcohort verify` does) and refused, in one line naming the file, "
                    "when it does not match.")
    report.add_argument("run", metavar="RUN", help="run directory (<output.dir>/<scenario>)")
    report.set_defaults(handler=cmd_report)

    verify = commands.add_parser(
        "verify", help="check every file of a run against its manifest",
        description="Check RUN against its _manifest.json: the manifest's shape, "
                    "config.toml, pending shards, every recorded shard file (size, sha256, "
                    "row count) and files the manifest does not record. Prints one line per "
                    "problem (the file, what is wrong, what to run) and exits 2, or one "
                    "line and exit 0 when the run matches its manifest.")
    verify.add_argument("run", metavar="RUN", help="run directory")
    verify.set_defaults(handler=cmd_verify)

    repair = commands.add_parser(
        "repair", help="rebuild a lost or damaged manifest from the shard files",
        description="Rebuild RUN/_manifest.json from RUN/config.toml and the shard files "
                    "that read back whole (Parquet page checksums, the scenario's hash in "
                    "their metadata, the shard's row count), recording their checksums; "
                    "the other shards become pending (one line each on stderr), and "
                    "`cartcohort run CONFIG --resume --out RUN` computes them. Give the "
                    "run's --patients/--shard-size/--seed only when neither the files nor "
                    "the old manifest record them.")
    repair.add_argument("run", metavar="RUN", help="run directory")
    repair.add_argument("--patients", type=_positive_int, default=None, metavar="N",
                        help="the run's --patients override")
    repair.add_argument("--shard-size", type=_positive_int, default=None, metavar="N",
                        help="the run's --shard-size override")
    repair.add_argument("--seed", type=_seed, default=None, metavar="S",
                        help="the run's --seed override")
    repair.set_defaults(handler=cmd_repair)

    query = commands.add_parser(
        "query", help="run SQL over a run's results",
        description="Run one DuckDB SQL statement over a run's results: the view "
                    "'patients' (one row per patient and arm; the arm column comes from "
                    "the arm=<arm> directories) and, when the run has one, 'trajectories'. "
                    "The result is printed as a text table (or CSV with --csv); the row "
                    "count goes to stderr. The run is first checked against its manifest "
                    "and refused, in one line naming the file, when it does not match.")
    query.add_argument("run", metavar="RUN", help="run directory (<output.dir>/<scenario>)")
    query.add_argument("sql", metavar="SQL",
                       help="the statement, e.g. \"SELECT arm, avg(responded::INT) "
                            "FROM patients GROUP BY arm\"")
    query.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    query.set_defaults(handler=cmd_query)
    _add_risk(commands)

    fit = commands.add_parser(
        "fit",
        help="fit a model to longitudinal data: population SAEM with individual estimates",
        description="Fit a structural model (stein, stein_ode or a kernel model; an unknown "
                    "--model lists them) to a "
                    "long-format data file (CSV or Parquet: id, time, name, value, "
                    "optional blq, evid/amount dose records and covariate columns) as "
                    "FIT.toml describes (pipeline/estimate/fitconfig.py): population NLME "
                    "by SAEM with standard errors, individual estimates (conditional "
                    "modes, EBEs), -2LL by importance sampling. Observations of names the "
                    "model does not predict are ignored, and one line on stderr names them. "
                    "Writes estimates.csv, omega.csv, individual.csv, summary.md, "
                    "goodness-of-fit, VPC and convergence plots and cohort.toml (the fitted "
                    "population as a scenario's [cohort] tables) into DIR. Estimates with "
                    "an RSE above the limit summary.md states (or no SE) are flagged on stderr and in "
                    "summary.md and left out of cohort.toml. (Individual fits without a population "
                    "model are pipeline.estimate.individual.fit_individuals, not a command.)")
    fit.add_argument("data", metavar="DATA", help="data file (.csv, .parquet or .pq)")
    fit.add_argument("--model", required=True,
                     help="structural model: stein (closed form), stein_ode, or a kernel model "
                          "of `cartcohort models` (an unknown name lists the choices)")
    fit.add_argument("--config", metavar="FIT.toml", required=True, help="fit settings")
    fit.add_argument("--out", metavar="DIR", required=True, help="output directory")
    fit.set_defaults(handler=cmd_fit)

    simulate = commands.add_parser(
        "simulate-data", help="a virtual clinical dataset from a scenario",
        description="Sample a scenario's virtual patients, treat them as one of its arms, "
                    "observe tumour (cells), CAR T (cells) and IL-6 (pg/mL) at the sampling "
                    "days with measurement error and write the long-format data file that "
                    "`cartcohort fit` reads (CSV or Parquet by the suffix of --out).")
    simulate.add_argument("config", metavar="SCENARIO", help="scenario file (TOML)")
    simulate.add_argument("--out", metavar="FILE", required=True,
                          help="data file (.csv, .parquet or .pq; another suffix is refused)")
    simulate.add_argument("--days", type=_numbers, required=True, metavar="D1,D2,...",
                          help="sampling days after the infusion, e.g. 1,3,7,14,28,90,180,365")
    simulate.add_argument("--error", choices=("additive", "proportional", "lognormal"),
                          default="lognormal", help="measurement error model")
    simulate.add_argument("--sigma", type=_per_observation, default=0.2, metavar="S",
                          help="error size: one number or name=value,... (default 0.2)")
    simulate.add_argument("--loq", type=_per_observation, default=None, metavar="L",
                          help="limits of quantification: one number or name=value,... "
                               "(values below are flagged blq); needed with lognormal error "
                               "when tumour or IL-6 fall to 0")
    simulate.add_argument("--observations", default="tumour,cart,il6", metavar="NAMES",
                          help="observed quantities (default: tumour,cart,il6)")
    simulate.add_argument("--arm", default=None, help="arm (default: the first)")
    simulate.add_argument("--patients", type=_positive_int, default=None, metavar="N",
                          help="override scenario.patients")
    simulate.add_argument("--seed", type=_seed, default=0, help="measurement-error seed")
    simulate.set_defaults(handler=cmd_simulate_data)

    calibrate = commands.add_parser(
        "calibrate", help="fit a model's typical values to published summary statistics",
        description="Fit the typical values that TARGETS.toml lists to its published "
                    "summary statistics (response and severe-CRS rates, rates by burden "
                    "tertile, CAR T kinetic medians, ...) on a fixed virtual cohort of its "
                    "scenario (common random numbers: a deterministic objective), by "
                    "least squares on the log scale (scipy). Writes fitted.toml, "
                    "targets.csv, parameters.csv (with which parameters the targets do not "
                    "identify), trace.csv, calibration.png and calibration.md into DIR "
                    "(pipeline/calibration). Progress goes to stderr.")
    calibrate.add_argument("targets", metavar="TARGETS.toml", help="targets file")
    calibrate.add_argument("--out", metavar="DIR", required=True, help="output directory")
    calibrate.add_argument("--patients", type=_integer_at_least(10, "integer >= 10"),
                           default=None, metavar="N", help="override calibration.patients")
    calibrate.add_argument("--perturb", type=_fraction, default=None, metavar="F",
                           help="start from the typical values each multiplied by a random "
                                "factor in [1 - F, 1 + F] (a robustness check)")
    calibrate.add_argument("--perturb-seed", type=_seed, default=0, metavar="S",
                           help="seed of the --perturb factors (default: %(default)s)")
    calibrate.set_defaults(handler=cmd_calibrate)
    return parser


def _numbers(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _per_observation(text):
    """'0.2' -> 0.2; 'tumour=0.3,cart=0.2' -> {'tumour': 0.3, 'cart': 0.2}."""
    try:
        if "=" not in text:
            return float(text)
        return {name.strip(): float(value) for name, value in
                (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or name=number,..., got {text!r}")


def _fraction(text):
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _add_risk(commands):
    """``cartcohort risk fit|score|decide`` (pipeline.risk)."""
    risk = commands.add_parser(
        "risk", help="CRS risk score and prophylaxis decisions from a run",
        description="From a run's simulated patients: observed CRS grades from a stated "
                    "noisy grading model (pipeline/risk/grading.py; its references are "
                    "those of the run's model, from RUN/config.toml), an OLS risk score on "
                    "peak IL-6 and CAR T expansion, calibrated probabilities of severe CRS "
                    "(from the score and from day 1-3 features), and the expected-utility "
                    "decision to give prophylaxis (pipeline/risk).")
    actions = risk.add_subparsers(dest="action", metavar="ACTION", required=True)

    fit = actions.add_parser(
        "fit", help="fit the score and probabilities on a training cohort",
        description="Split the arm's patients into training and test cohorts (a seeded "
                    "hash of patient_id), grade them, fit the scores and probabilities on "
                    "the training cohort and evaluate them on the test cohort (R^2, AUC for "
                    "severe CRS, calibration, Brier). Writes DIR/risk_model.json, metrics, "
                    "calibration table, risk_fit.md and plots (score by grade, ROC, "
                    "calibration).")
    fit.add_argument("run", metavar="RUN", help="run directory")
    fit.add_argument("--out", metavar="DIR", required=True, help="output directory")
    fit.add_argument("--arm", default=None, help="arm to use (default: the reference arm)")
    fit.add_argument("--seed", type=_seed, default=0, help="split and grading-noise seed")
    fit.add_argument("--test-fraction", type=_fraction, default=0.5, metavar="F",
                     help="share of patients held out (default: %(default)s)")
    fit.add_argument("--expansion", choices=("fold", "auc28"), default="fold",
                     help="A_C: CAR T peak / dose (fold) or AUC0-28 / dose (auc28)")
    fit.add_argument("--calibrate", choices=("log", "linear"), default="log",
                     help="the score turned into a probability (default: log features)")
    fit.add_argument("--assay-sd", type=float, default=0.1, metavar="SD",
                     help="error of the day 1-3 measurements, sd of log10 (default: 0.1)")
    for name, help_text in (("il6", "weight of log10 peak IL-6"),
                            ("expansion", "weight of log10 CAR T peak"),
                            ("tumour", "weight of log10 baseline tumour"),
                            ("noise-sd", "sd of the latent noise (0: noise-free)")):
        fit.add_argument(f"--grading-{name}", type=float, default=None, metavar="X",
                         help=f"grading model: {help_text}")
    fit.add_argument("--grading-noise", choices=("normal", "logistic"), default=None,
                     help="grading model: distribution of the latent noise")
    fit.set_defaults(handler=cmd_risk_fit)

    score = actions.add_parser(
        "score", help="score a run's patients with a fitted model",
        description="Apply DIR's risk_model.json to a run (the same arm, or another "
                    "run) and report AUC, calibration and Brier score. One warning line on "
                    "stderr (and a training_check column in DIR/risk_score_metrics.csv) "
                    "names the arm the model was trained on and each scored arm of another "
                    "dosing policy or outside its dose range: a model fitted under one "
                    "policy need not hold under another.")
    score.add_argument("run", metavar="RUN", help="run directory")
    score.add_argument("model", metavar="MODEL", help="risk_model.json from `risk fit`")
    score.add_argument("--out", metavar="DIR", required=True, help="output directory")
    score.add_argument("--split", choices=("test", "all"), default="test",
                       help="patients scored (default: the held-out test cohort)")
    score.set_defaults(handler=cmd_risk_score)

    decide = actions.add_parser(
        "decide", help="expected-utility prophylaxis decision and decision curve",
        description="tau = (U_TN - U_FP) / ((U_TN - U_FP) + (U_TP - U_FN)): give "
                    "prophylaxis when p > tau. Compares that policy with treat-all and "
                    "treat-none by expected utility per patient (paired intervals) and "
                    "writes the decision curve (net benefit across thresholds).")
    decide.add_argument("run", metavar="RUN", help="run directory")
    decide.add_argument("model", metavar="MODEL", help="risk_model.json from `risk fit`")
    decide.add_argument("--out", metavar="DIR", required=True, help="output directory")
    for name, default, meaning in (("tp", 0.8, "severe CRS, prophylaxis given"),
                                   ("fp", 0.95, "no severe CRS, prophylaxis given"),
                                   ("tn", 1.0, "no severe CRS, none given"),
                                   ("fn", 0.6, "severe CRS, none given")):
        decide.add_argument(f"--u-{name}", type=float, default=default, metavar="U",
                            help=f"utility: {meaning} (default: %(default)s)")
    decide.add_argument("--arm", default=None, help="arm (default: the model's)")
    decide.add_argument("--split", choices=("test", "all"), default="test",
                        help="patients evaluated (default: the held-out test cohort)")
    decide.set_defaults(handler=cmd_risk_decide)


def _variants(factory):
    """The factory's default model, then one per boolean option switched on
    (``predator_prey`` -> model() and model(cytokine=True))."""
    options = [{}]
    for name, param in inspect.signature(factory).parameters.items():
        if isinstance(param.default, bool) and param.default is False:
            options.append({name: True})
    return options


def cmd_models(args, out):
    from kernels.models import MODELS

    if args.name is not None and args.name not in MODELS:
        raise ValueError(f"no model {args.name!r}; models are {', '.join(MODELS)}")
    blocks = []
    for key, factory in MODELS.items():
        if args.name is not None and key != args.name:
            continue
        if args.name is not None:
            blocks.append(inspect.getdoc(inspect.getmodule(factory)) or "")
        for options in _variants(factory):
            model = factory(**options)
            call = ", ".join(f"{k}={v!r}" for k, v in options.items())
            title = f"{model.name}  [get_model({key!r}{', ' + call if call else ''})]"
            states = text_table(("state", "unit", "initial", "description"),
                            [(s.name, s.unit, f"{s.typical_initial:g}", s.description)
                             for s in model.states])
            params = text_table(("parameter", "unit", "typical", "sd_log", "source"),
                            [(p.name, p.unit, f"{p.typical:g}", f"{p.sd_log:g}", p.source)
                             for p in model.parameters])
            blocks.append(f"{title}\n{model.description}\n\n{states}\n\n{params}")
    print(("\n\n" + "=" * 72 + "\n\n").join(blocks), file=out)
    return 0


def cmd_validate(args, out):
    from pipeline.config import load_scenario
    from pipeline.estimate.fitconfig import is_fit_config

    if is_fit_config(args.config):
        raise ValueError(f"{args.config}: this is a fit configuration (for cartcohort fit "
                         f"--config), not a scenario")
    s = load_scenario(args.config)
    rows = [("scenario", f"{s.name} ({s.source_path})"),
            ("model", s.model),
            ("patients", f"{s.patients} in {s.n_shards} shard(s) of up to {s.shard_size}"),
            ("seed", s.seed),
            ("horizon", f"{s.horizon_days:g} days, rtol {s.rtol:g}, atol {s.atol:g}")]
    rows += [(f"arm {arm.name}", arm.describe()) for arm in s.arms]
    rows += [("output", s.run_dir), ("sha256", s.sha256)]
    width = max(len(label) for label, _ in rows) + 2
    print("\n".join(f"{label:<{width}}{value}" for label, value in rows), file=out)
    return 0


def cmd_run(args, out):
    from pipeline.layout import LOCK, MANIFEST
    from pipeline.manifest import read_manifest
    from pipeline.runlock import RunLock
    from pipeline.store import lock_for_run

    if sys.stderr.isatty():     # a first line at once (the imports take seconds), erased
        sys.stderr.write(f"cartcohort {_version()}: loading {args.config} and the model "
                         f"library ...\r")
        sys.stderr.flush()
    # a directory cartcohort has locked before is locked first, before the seconds
    # the model library takes to load: a run still writing there is named at once
    early = (RunLock(args.out).acquire()
             if args.out is not None and (Path(args.out) / LOCK).exists() else None)
    try:
        if args.out is not None and args.resume and (Path(args.out) / MANIFEST).exists():
            read_manifest(args.out)         # a damaged one is named at once, too
        from pipeline import clusters
        from pipeline.config import load_scenario, with_overrides
        from pipeline.runner import run

        scenario = with_overrides(load_scenario(args.config), patients=args.patients,
                                  shard_size=args.shard_size, seed=args.seed)
        run_dir = Path(args.out or scenario.run_dir)
        # the directory and its lock before the cluster: a refused run starts none
        with lock_for_run(run_dir, scenario, args.resume, lock=early) as lock:
            print(f"{_erase_status()}running {scenario.name}: {scenario.patients:,} patients x "
                  f"{len(scenario.arms)} arms in {scenario.n_shards} shard(s)",
                  file=sys.stderr)
            with clusters.client_for(args.cluster, scenario, args) as client:
                run_dir = run(scenario, run_dir, client=client, workers=args.workers,
                              resume=args.resume, lock=lock)
    finally:
        if early is not None:
            early.release()
    print(f"dataset: {run_dir / 'patients'}", file=sys.stderr)
    if args.no_report:
        return 0
    args.run = run_dir
    args.verified = True        # its kept files were verified, the others just written
    return cmd_report(args, out)


def cmd_run_shards(args, out):
    from pipeline import batch
    from pipeline.config import load_scenario

    start, _, stop = args.shards.partition(":")
    if not (start.isdigit() and stop.isdigit() and int(start) < int(stop)):
        raise ValueError(f"--shards: expected START:STOP with START < STOP, got {args.shards!r}")
    batch.run_shards(load_scenario(args.config), args.out, int(start), int(stop))
    return 0


def cmd_finalize(args, out):
    from pipeline import batch
    from pipeline.config import load_scenario

    args.run = batch.finalize(load_scenario(args.config), args.out)
    args.verified = True        # finalize read every file back and recorded its checksum
    return cmd_report(args, out)


def cmd_report(args, out):
    from pipeline import store

    if not getattr(args, "verified", False):
        store.check_run(args.run)      # before importing the report (and the models)
    from pipeline.report import build_report, console_summary

    try:
        paths = build_report(args.run)
    except OSError as exc:
        raise ValueError(f"{exc.filename or args.run}: {exc.strerror or exc}") from None
    print(console_summary(args.run), file=out)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _print_written(paths, summary, out):
    print(Path(paths[summary]).read_text(encoding="utf-8"), file=out)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_risk_fit(args, out):
    from pipeline.risk import FitOptions, risk_fit

    grading = {key: value for key, value in (
        ("il6", args.grading_il6), ("expansion", args.grading_expansion),
        ("tumour", args.grading_tumour), ("noise_sd", args.grading_noise_sd),
        ("noise", args.grading_noise)) if value is not None}
    options = FitOptions(args.arm, args.seed, args.test_fraction, args.expansion,
                         args.calibrate, args.assay_sd, grading)
    return _print_written(risk_fit(args.run, args.out, options), "summary", out)


def cmd_risk_score(args, out):
    import pandas as pd

    from pipeline.risk import risk_score

    paths = risk_score(args.run, args.model, args.out, args.split)
    metrics = pd.read_csv(paths["metrics"])
    shown = [c for c in metrics.columns if c in ("arm", "n", "severe_rate") or c.endswith("_auc")]
    rows = [[_cell(v) for v in row] for row in metrics[shown].itertuples(index=False, name=None)]
    print(text_table(shown, rows), file=out)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_risk_decide(args, out):
    from pipeline.risk import Utilities, risk_decide

    utilities = Utilities(args.u_tp, args.u_fp, args.u_tn, args.u_fn)
    return _print_written(risk_decide(args.run, args.model, args.out, utilities, args.arm,
                                      args.split), "summary", out)


def cmd_fit(args, out):
    from pipeline.estimate.report import run_fit

    paths = run_fit(args.data, args.model, args.config, args.out)
    if "summary" in paths:
        print(Path(paths["summary"]).read_text(encoding="utf-8"), file=out)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_calibrate(args, out):
    from dataclasses import replace

    from kernels.models import get_model
    from pipeline.calibration import objective
    from pipeline.calibration.fit import calibrate, perturbed_start
    from pipeline.calibration.output import write_calibration
    from pipeline.calibration.targets import load_targets

    spec = load_targets(args.targets)
    if args.patients is not None:
        spec = replace(spec, patients=args.patients)
    scenario = objective.cohort_scenario(spec)
    start = (perturbed_start(spec, objective.typical_values(scenario), args.perturb,
                             args.perturb_seed) if args.perturb else None)
    started = time.perf_counter()

    def progress(evaluation, cost):
        if evaluation == 1:        # the input has been checked by then
            print(f"calibrating {len(spec.fit)} typical values of {scenario.model} to "
                  f"{len(spec.targets)} targets on {spec.patients:,} patients",
                  file=sys.stderr)
        if evaluation == 1 or evaluation % 10 == 0:
            print(f"  simulation {evaluation}: objective {cost:.4g} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    result = calibrate(spec, start=start, progress=progress)
    paths = write_calibration(result, get_model(scenario.model), args.out)
    print(Path(paths["calibration.md"]).read_text(encoding="utf-8"), file=out)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_simulate_data(args, out):
    from pipeline.estimate.data import check_data_path, write_dataset

    check_data_path(args.out)              # before the seconds of sampling and solving
    from pipeline.estimate.simulate import simulate_from_scenario

    observations = tuple(v.strip() for v in args.observations.split(",") if v.strip())
    data = simulate_from_scenario(args.config, args.days, error_model=args.error,
                                  sigma=args.sigma, seed=args.seed, observations=observations,
                                  arm=args.arm, patients=args.patients, loq=args.loq)
    write_dataset(data, args.out)
    print(f"{data.n_individuals:,} patients, {data.n_observations:,} observations "
          f"({int(data.blq.sum()):,} below the limit of quantification)", file=out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cell(value):
    """A query result's value as text: floats to 6 significant digits (NaN as NaN:
    the dataset stores missing floats as NaN), NULL for other missing values."""
    import pandas as pd

    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    if value is None or value is pd.NA or value is pd.NaT:
        return "NULL"
    return str(value)


def cmd_verify(args, out):
    from pipeline import store
    from pipeline.manifest import read_manifest

    started = time.perf_counter()
    problems = store.verify(args.run)
    seconds = time.perf_counter() - started
    if problems:
        print("\n".join(problems), file=out)
        print(f"{args.run}: {len(problems)} problem(s) ({seconds:.2f} s)", file=sys.stderr)
        return 2
    manifest = read_manifest(args.run)
    files = sum(len(records) for records in manifest["files"].values())
    print(f"{args.run}: ok: {len(manifest['shards'])} shard(s) done, {files} file(s) match "
          f"the manifest (size, sha256, rows) ({seconds:.2f} s)", file=out)
    return 0


def cmd_repair(args, out):
    from pipeline import store
    from pipeline.layout import CONFIG, MANIFEST
    from pipeline.manifest import read_manifest, resume_command

    given = {key: value for key, value in (("patients", args.patients),
                                            ("shard_size", args.shard_size),
                                            ("seed", args.seed)) if value is not None}
    scenario, kept = store.repair(args.run, given or None)
    run_dir = Path(args.run)
    line = (f"{run_dir / MANIFEST}: rebuilt from {CONFIG} and the shard files: "
            f"{len(kept)} of {scenario.n_shards} shard(s) verified and recorded")
    pending = scenario.n_shards - len(kept)
    if pending:
        line += (f"; {pending} pending: run "
                 f"{resume_command(run_dir, read_manifest(run_dir))} to compute them")
    print(line, file=out)
    return 0


def cmd_query(args, out):
    from pipeline import store
    from pipeline.query import query

    store.check_run(args.run)
    try:
        result = query(args.run, args.sql)
    except OSError as exc:
        raise ValueError(f"{exc.filename or args.run}: {exc.strerror or exc}") from None
    if args.csv:
        result.to_csv(out, index=False)
    elif len(result.columns):
        rows = [[_cell(v) for v in row] for row in result.itertuples(index=False, name=None)]
        print(text_table(result.columns, rows), file=out)
    print(f"({len(result)} row{'s' if len(result) != 1 else ''})", file=sys.stderr)
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args, sys.stdout)
    except BrokenPipeError:
        # the reader went away (`cartcohort models | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, KeyError, OSError) as exc:
        # OSError: what the machine refused (a full disk, a read-only or unwritable
        # folder, a path that is a file): the path and the reason, in one line
        if isinstance(exc, OSError):
            message = os_error_line(exc)
        else:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{_erase_status()}cartcohort {args.command}: error: {message}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return 2
    except KeyboardInterrupt:
        print("cartcohort: interrupted", file=sys.stderr)
        return 130


def os_error_line(exc):
    """``PATH: reason`` of an OSError, with what to do for a full disk."""
    where = f"{exc.filename}: " if exc.filename is not None else ""
    line = f"{where}{exc.strerror or exc}"
    if exc.errno == errno.ENOSPC:
        line += ("; free space (or choose another --out), then finish the run with "
                 "--resume: the shards already written are kept")
    return line


if __name__ == "__main__":
    sys.exit(main())
