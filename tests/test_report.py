"""Query and report on a synthetic run directory that follows the runner's dataset
contract (pipeline/query.py): Hive-partitioned Parquet per arm and shard, a
manifest, the scenario text and a few trajectories. No kernel runs here."""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.config import scenario_from_text
from pipeline.query import open_patients, open_trajectories, query
from pipeline.report import (FILES, build_report, console_summary, format_arm_table,
                             read_arm_tables)
from pipeline.verdict import verdict
from small_run import FIXED_AND_ADAPTIVE_ARMS

ARMS = ("fixed", "adaptive", "oracle")
PATIENTS, SHARD_SIZE = 300, 150
THRESHOLDS = (100.0, 500.0, 2000.0, 5000.0)
PARAMETERS = ("rho", "kappa", "k_il6")

CONFIG = """\
[scenario]
name = "synthetic"
description = "synthetic run for the report tests"
model = "cart"
seed = 7
patients = 300
shard_size = 150
horizon_days = 365.0

""" + FIXED_AND_ADAPTIVE_ARMS + """
[[arms]]
name = "oracle"
policy = "oracle"
target_il6_pg_ml = 1000.0
min_dose_cells = 1e7
max_dose_cells = 1e9
"""


def _patients(arm, shard, ids, rng_base):
    """One shard of one arm: baseline draws depend on the patient only (common
    random numbers), arm effects on the arm."""
    n = ids.size
    base = np.random.default_rng([rng_base, shard])
    burden = 1e10 * np.exp(base.standard_normal(n))
    weight = 75.0 * np.exp(0.2 * base.standard_normal(n))
    params = {f"param_{p}": np.exp(0.3 * base.standard_normal(n)) for p in PARAMETERS}
    sensitivity = np.exp(0.5 * base.standard_normal(n))         # patient's IL-6 per dose
    u_response, u_relapse = base.random(n), base.random(n)
    noise = np.random.default_rng([rng_base, shard, ARMS.index(arm) + 1])

    il6_per_cell = 1000.0 / 1e8 * sensitivity * (burden / 1e10) ** 0.5
    predicted = np.full(n, np.nan)
    if arm == "fixed":
        dose = np.full(n, 1e8)
    elif arm == "adaptive":
        guess = il6_per_cell * np.exp(0.4 * noise.standard_normal(n))
        dose = np.clip(1000.0 / guess, 1e7, 1e9)
        predicted = guess * dose
    else:
        dose = np.clip(1000.0 / il6_per_cell, 1e7, 1e9)
    il6 = il6_per_cell * dose * np.exp(0.05 * noise.standard_normal(n))
    grade = np.searchsorted(np.asarray(THRESHOLDS), il6, side="right").astype(np.int8)
    responded = u_response < 0.25 + 0.2 * np.log10(dose / 1e7) / 2
    relapsed = responded & (u_relapse < 0.3)
    status = np.zeros(n, dtype=np.int8)
    status[ids % 97 == 5] = 1                                    # a few failed patients
    nan = np.full(n, np.nan)
    frame = pd.DataFrame({
        "patient_id": ids.astype(np.int64), "shard": np.full(n, shard, np.int32),
        "tumour_burden_cells": burden, "weight_kg": weight, **params,
        "debulking_factor": np.ones(n), "tumour0_cells": burden, "dose_cells": dose,
        "il6_peak_predicted_pg_ml": predicted, "il6_peak_pg_ml": il6,
        "t_il6_peak_d": 6.0 + noise.random(n), "cart_peak_cells": dose * 50.0,
        "t_cart_peak_d": 9.0 + noise.random(n), "cart_auc_cells_d": dose * 400.0,
        "tumour_min_cells": burden * 1e-3, "t_tumour_min_d": 30.0 + noise.random(n),
        "tumour_response_day_cells": np.where(responded, burden * 1e-3, burden * 0.5),
        "tumour_end_cells": burden * 1e-2, "t_rebound_d": np.where(relapsed, 120.0, np.nan),
        "responded": responded, "best_response_log10": -3.0 + noise.random(n),
        "no_detectable_disease": np.where(responded, burden * 1e-3, burden * 0.5) <= 1e9,
        "relapsed": relapsed, "t_relapse_d": np.where(relapsed, 150.0, np.nan),
        "crs_grade": grade, "severe_crs": grade >= 3, "status": status,
        "n_steps": np.full(n, 500, np.int64)})
    failed = status != 0
    for column in ("il6_peak_pg_ml", "cart_peak_cells", "tumour_end_cells"):
        frame.loc[failed, column] = nan[failed]
    frame.loc[failed, ["responded", "no_detectable_disease", "relapsed", "severe_crs"]] = False
    return frame


def _trajectories(arm, shard, ids, dose):
    t = np.concatenate([np.linspace(0.0, 30.0, 61), np.linspace(31.0, 365.0, 60)])
    rows = []
    for pid, d in zip(ids, dose):
        rng = np.random.default_rng(int(pid))
        kill = 0.3 + 0.2 * rng.random() + 0.05 * math.log10(d / 1e7)
        tumour = 10.0 * np.exp(-kill * t) + 1e-4 * np.exp(0.02 * t)
        il6 = 5.0 + d / 1e5 * (t / 6.0) ** 2 * np.exp(2.0 - t / 3.0)
        effector = d / 1e9 * np.exp(0.5 * t - t ** 2 / 40.0)
        rows.append(pd.DataFrame({"patient_id": np.full(t.size, pid, np.int64),
                                  "shard": np.full(t.size, shard, np.int32), "t_d": t,
                                  "T": tumour, "E": effector, "M": 0.1 * effector,
                                  "X": 0.05 * effector, "I": il6}))
    return pd.concat(rows, ignore_index=True)


def make_run(root, trajectories=True, name="synthetic", outcomes="", drop=()):
    """A run directory following the runner's contract; returns (path, patients)
    with ``patients`` the concatenated rows (and an ``arm`` column). ``outcomes``:
    an ``[outcomes]`` table appended to the config; ``drop``: patient columns left
    out (as in runs written before them)."""
    run = root / name
    config = CONFIG + outcomes
    frames = []
    for arm in ARMS:
        for shard in range(PATIENTS // SHARD_SIZE):
            ids = np.arange(shard * SHARD_SIZE, (shard + 1) * SHARD_SIZE)
            frame = _patients(arm, shard, ids, rng_base=11).drop(columns=list(drop))
            target = run / "patients" / f"arm={arm}" / f"part-{shard:05d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), target)
            frames.append(frame.assign(arm=arm))
            if trajectories:
                sample = ids[:4]
                traj = _trajectories(arm, shard, sample, frame["dose_cells"].to_numpy()[:4])
                target = run / "trajectories" / f"arm={arm}" / f"part-{shard:05d}.parquet"
                target.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pandas(traj, preserve_index=False), target)
    scenario = scenario_from_text(config)
    (run / "config.toml").write_text(config, encoding="utf-8")
    manifest = {"scenario": name, "config_sha256": scenario.sha256, "seed": 7,
                "version": "0.1.0", "arms": list(ARMS), "reference_arm": ARMS[0],
                "shards": {"0": "done", "1": "done"}, "model": "cart"}
    (run / "_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return run, pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def report(run):
    return build_report(run[0])


def cartcohort(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


# -- query --------------------------------------------------------------------

def test_query_counts_per_arm(run):
    path, patients = run
    result = query(path, "SELECT arm, count(*) AS n, count(DISTINCT shard) AS shards "
                         "FROM patients GROUP BY arm ORDER BY arm")
    assert list(result["arm"]) == sorted(ARMS)
    assert list(result["n"]) == [PATIENTS] * len(ARMS)
    assert list(result["shards"]) == [2] * len(ARMS)
    rates = query(path, "SELECT arm, avg(responded::INT) AS rate FROM patients "
                        "WHERE status = 0 GROUP BY arm")
    expected = patients[patients["status"] == 0].groupby("arm")["responded"].mean()
    for row in rates.itertuples():
        assert row.rate == pytest.approx(expected[row.arm])
    traj = query(path, "SELECT arm, count(DISTINCT patient_id) AS n FROM trajectories "
                       "GROUP BY arm")
    assert set(traj["arm"]) == set(ARMS) and (traj["n"] == 8).all()


def test_pandas_pyarrow_duckdb_read_the_dataset(run):
    import duckdb

    path, patients = run
    by_pandas = pd.read_parquet(path / "patients")
    assert len(by_pandas) == len(patients)
    assert by_pandas.groupby("arm", observed=True).size().to_dict() == {a: PATIENTS for a in ARMS}
    table = ds.dataset(path / "patients", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(patients) and "arm" in table.column_names
    pattern = str(path / "patients" / "*" / "*.parquet").replace("'", "''")
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}', hive_partitioning=true) "
                   "WHERE arm = 'oracle'").fetchall()[0][0]
    assert n == PATIENTS


def test_open_patients_in_manifest_order(run):
    path, patients = run
    frame = open_patients(path)
    assert list(dict.fromkeys(frame["arm"])) == list(ARMS)
    assert len(frame) == len(patients)
    assert frame["arm"].map(type).eq(str).all()
    assert frame["patient_id"].dtype == np.int64 and frame["responded"].dtype == bool
    first = frame[frame["arm"] == "fixed"]
    assert list(first["patient_id"]) == list(range(PATIENTS))
    trajectories = open_trajectories(path)
    assert {"t_d", "T", "I", "arm"} <= set(trajectories.columns)


def test_query_errors_are_one_line(run, tmp_path):
    with pytest.raises(ValueError, match="no such run directory"):
        query(tmp_path / "absent", "SELECT 1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no patients dataset"):
        query(tmp_path / "empty", "SELECT 1")
    with pytest.raises(ValueError) as info:
        query(run[0], "SELECT nonexistent_column FROM patients")
    assert "\n" not in str(info.value)


# -- report -------------------------------------------------------------------

def test_build_report_writes_every_file(run, report):
    assert set(FILES) <= set(report)                    # and those of the sections that apply
    for path in report.values():
        assert path.parent == run[0] / "report"
        assert path.is_file() and path.stat().st_size > 0


def test_summary_rates_equal_direct_computation(run, report):
    _, patients = run
    summary = pd.read_csv(report["summary"])
    ok = patients[patients["status"] == 0]
    assert len(summary) == len(ARMS) * 4
    assert list(summary["outcome"].iloc[:4]) == ["responded", "no_detectable_disease",
                                                 "severe_crs", "relapsed"]
    for row in summary.itertuples():
        group = ok[ok["arm"] == row.arm]
        assert row.n == len(group)
        assert row.events == int(group[row.outcome].sum())
        assert row.rate == pytest.approx(group[row.outcome].mean(), abs=1e-12)
        assert row.lower <= row.rate <= row.upper


def test_paired_and_strata_tables(run, report):
    _, patients = run
    paired = pd.read_csv(report["paired"])
    assert set(paired["arm"]) == {"adaptive", "oracle"}
    assert (paired["reference"] == "fixed").all()
    ok = patients[patients["status"] == 0]
    base = ok[ok["arm"] == "fixed"].set_index("patient_id")
    for row in paired.itertuples():
        other = ok[ok["arm"] == row.arm].set_index("patient_id")
        common = base.index.intersection(other.index)
        a, b = other.loc[common, row.outcome], base.loc[common, row.outcome]
        assert row.n == len(common)
        assert row.arm_only == int((a & ~b).sum()) and row.reference_only == int((~a & b).sum())
        assert row.difference == pytest.approx(a.mean() - b.mean())
    strata = pd.read_csv(report["strata"])
    assert strata["stratum"].nunique() == 3
    assert strata.groupby("outcome")["n"].sum().eq(len(ok)).all()


def test_report_markdown_has_rates_and_predictor(run, report):
    _, patients = run
    text = report["report"].read_text(encoding="utf-8")
    ok = patients[patients["status"] == 0]
    for arm in ARMS:
        group = ok[ok["arm"] == arm]
        for outcome in ("responded", "no_detectable_disease", "severe_crs"):
            events = int(group[outcome].sum())
            rate = f"{100 * events / len(group):.1f}%"
            assert f"{rate} [" in text and f"({events}/{len(group)})" in text, (arm, outcome)
    adaptive = ok[ok["arm"] == "adaptive"]
    r = np.abs(np.log(adaptive["il6_peak_predicted_pg_ml"] / adaptive["il6_peak_pg_ml"]))
    assert f"{np.median(r):.3f}" in text
    assert f"{100 * np.mean(r <= math.log(2)):.1f}%" in text
    for key in ("rates", "adaptive_doses", "il6_vs_dose", "trajectories"):
        assert f"]({FILES[key]})" in text
    failed = int((patients[patients["arm"] == "fixed"]["status"] != 0).sum())
    assert failed > 0                                               # status counts
    assert f"| fixed | {PATIENTS - failed} | {failed} | {PATIENTS} |" in text


def _verdicts(report_dir, lead):
    """verdict() of each non-reference arm, from the report's paired.csv."""
    _, paired = read_arm_tables(report_dir)
    rows = paired.set_index(["arm", "outcome"])
    return [verdict(arm, "fixed", rows.loc[(arm, lead)], rows.loc[(arm, "severe_crs")])
            for arm in ARMS[1:]]


def test_report_opens_with_the_question(run, report):
    """report.md's first section: the lead response and severe CRS per arm with
    intervals, their differences from the reference, a verdict per arm."""
    _, patients = run
    text = report["report"].read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections[:2] == ["Does the policy beat the reference?", "Scenario"]
    first = text.split("\n## ")[1]
    header = next(line for line in first.splitlines() if line.startswith("| arm |"))
    assert "response (tumour <= 1% of baseline at day 28) % [95% CI]" in header
    assert "severe CRS % [95% CI]" in header and "vs `fixed`" in header
    summary, paired = read_arm_tables(report["summary"].parent)
    adaptive = paired[(paired.arm == "adaptive") & (paired.outcome == "severe_crs")].iloc[0]
    row = next(line for line in first.splitlines() if line.startswith("| adaptive |"))
    assert f"{100 * adaptive.difference:+.2f} [" in row
    assert "| fixed | fixed |" in first and "| reference | reference |" in first
    for line in _verdicts(report["summary"].parent, "responded"):
        assert f"- {line}" in first
    # both response definitions are defined in the scenario table, the lead first
    lead = text.index("| response (tumour <= 1% of baseline at day 28) | tumour at day 28")
    other = text.index("| secondary response (no detectable disease at day 28) | tumour at day "
                       "28 <= 1e+09 cells")
    assert lead < other


def test_lead_response_no_detectable_disease_leads(tmp_path):
    """``lead_response = "no_detectable_disease"``: it comes first in summary.csv,
    the question's table and the verdicts; the relative one is secondary."""
    path, _ = make_run(tmp_path, trajectories=False, name="absolute",
                       outcomes='\n[outcomes]\nlead_response = "no_detectable_disease"\n')
    paths = build_report(path)
    summary = pd.read_csv(paths["summary"])
    assert list(summary["outcome"].iloc[:4]) == ["no_detectable_disease", "responded",
                                                 "severe_crs", "relapsed"]
    text = paths["report"].read_text(encoding="utf-8")
    first = text.split("\n## ")[1]
    assert "| arm | policy | n ok | response (no detectable disease at day 28) % [95% CI] |" \
        in first
    assert "lead response (no detectable disease at day 28)" in first
    for line in _verdicts(paths["summary"].parent, "no_detectable_disease"):
        assert f"- {line}" in first
    assert "secondary response (tumour <= 1% of baseline at day 28)" in text
    assert "the report leads with it" in text.split("| response (no detectable disease")[2]
    printed = console_summary(path)
    assert "lead response (no detectable disease at day 28)" in printed


def test_report_of_a_run_without_the_absolute_response(tmp_path):
    """A run written before ``no_detectable_disease`` existed: the report leads
    with ``responded`` and leaves the other definition out."""
    path, _ = make_run(tmp_path, trajectories=False, name="older",
                       drop=("no_detectable_disease",))
    paths = build_report(path)
    summary = pd.read_csv(paths["summary"])
    assert "no_detectable_disease" not in set(summary["outcome"])
    assert len(summary) == len(ARMS) * 3
    assert "no detectable disease" not in paths["report"].read_text(encoding="utf-8")


@pytest.mark.parametrize("key", ["rates", "adaptive_doses", "il6_vs_dose", "trajectories"])
def test_plots_are_images_with_content(report, key):
    from matplotlib.image import imread

    image = imread(report[key])
    height, width = image.shape[:2]
    assert 300 <= height <= 3000 and 400 <= width <= 4000
    pixels = image[..., :3]
    assert pixels.var() > 1e-3
    assert (pixels.min(axis=2) < 0.9).mean() > 0.01          # not an almost blank page


def test_report_without_trajectories(tmp_path):
    path, _ = make_run(tmp_path, trajectories=False, name="plain")
    paths = build_report(path)
    assert "trajectories" not in paths and not (path / "report" / "trajectories.png").exists()
    assert "no trajectories dataset" in paths["report"].read_text(encoding="utf-8")


def test_format_arm_table(report):
    summary, paired = read_arm_tables(report["summary"].parent)
    text = format_arm_table(summary, paired)
    lines = text.splitlines()
    assert lines[0].startswith("rates per arm")
    for arm in ARMS:
        assert any(line.startswith(arm + " ") for line in lines)
    row = summary[(summary["arm"] == "adaptive") & (summary["outcome"] == "severe_crs")].iloc[0]
    assert f"{100 * row.rate:.1f}% [{100 * row.lower:.1f}, {100 * row.upper:.1f}]" in text
    assert "paired differences vs fixed" in text
    single = format_arm_table(summary[summary["arm"] == "fixed"], paired.iloc[0:0])
    assert "no other arm" in single


# -- the command --------------------------------------------------------------

def test_cli_report(run):
    result = cartcohort("report", run[0])
    assert result.returncode == 0, result.stderr
    assert "rates per arm" in result.stdout and "paired differences vs fixed" in result.stdout
    for arm in ARMS:
        assert re.search(rf"^{arm}\s+\d+\s+\d+\.\d%", result.stdout, re.M)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Does the policy beat the reference?")
    assert lines[1:3] == [f"  {line}" for line in _verdicts(run[0] / "report", "responded")]
    assert "secondary response (no detectable disease at day 28)" in result.stdout
    for name in FILES.values():
        assert name in result.stderr


def test_cli_query(run):
    result = cartcohort("query", run[0], "SELECT arm, count(*) AS n FROM patients "
                                         "GROUP BY arm ORDER BY arm")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["arm", "n"]
    assert [line.split() for line in lines[2:]] == [[a, str(PATIENTS)] for a in sorted(ARMS)]
    csv = cartcohort("query", "--csv", run[0], "SELECT arm, avg(dose_cells) AS mean_dose "
                                               "FROM patients GROUP BY arm ORDER BY arm")
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines()[0] == "arm,mean_dose"
    assert len(csv.stdout.splitlines()) == 1 + len(ARMS)


@pytest.mark.parametrize("args", [("report", "{missing}"),
                                  ("query", "{missing}", "SELECT 1"),
                                  ("query", "{run}", "SELECT * FROM nowhere")])
def test_cli_errors_are_one_line_exit_2(run, tmp_path, args):
    values = {"missing": tmp_path / "no-such-run", "run": run[0]}
    result = cartcohort(*(a.format(**values) for a in args))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"cartcohort {args[0]}: error: ")


def test_arm_order_from_config_without_manifest(tmp_path):
    path, _ = make_run(tmp_path, trajectories=False, name="nomanifest")
    (path / "_manifest.json").unlink()
    assert list(dict.fromkeys(open_patients(path)["arm"])) == list(ARMS)
    paired = pd.read_csv(build_report(path)["paired"])
    assert (paired["reference"] == ARMS[0]).all()


def test_predictor_error_counts_unusable_predictions():
    """A negative or non-finite prediction is counted in not_positive, never
    silently dropped; r is |ln(predicted / simulated)| over the others."""
    from pipeline.report import predictor_error

    patients = pd.DataFrame({
        "arm": ["adaptive"] * 5,
        "status": [0, 0, 0, 0, 1],
        "il6_peak_predicted_pg_ml": [-3.0, np.nan, 100.0, 400.0, 50.0],
        "il6_peak_pg_ml": [80.0, 90.0, 200.0, 100.0, 50.0],
    })
    row = predictor_error(patients).iloc[0]
    assert row.n == 2 and row.not_positive == 2
    assert row.median_abs_log_ratio == pytest.approx(np.median([np.log(2.0), np.log(4.0)]))
    assert row.within_2x == pytest.approx(0.5)
