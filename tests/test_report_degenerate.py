"""The report of runs it cannot say much about, made by the real pipeline (the
batch path: the same data as a Dask run): every patient failed (max_steps too
small), some failed, and a single-patient run. Each report is written, exits
cleanly and says what could not be computed."""
import io

import pytest

from pipeline import batch
from pipeline.config import scenario_from_text
from pipeline.report import build_report, console_summary

ARMS = """
[[arms]]
name = "low"
policy = "fixed"
dose_cells = 1e8

[[arms]]
name = "high"
policy = "fixed"
dose_cells = 3e8
"""


def run(tmp_path, name, patients, extra=""):
    text = (f'[scenario]\nname = "{name}"\nmodel = "cart"\nseed = 3\npatients = {patients}\n'
            f"shard_size = 10\nhorizon_days = 120.0\n{extra}\n" + ARMS)
    scenario = scenario_from_text(text, source=f"{name}.toml")
    run_dir = tmp_path / name
    batch.run_shards(scenario, run_dir, 0, scenario.n_shards, stream=io.StringIO())
    batch.finalize(scenario, run_dir)
    return run_dir


def test_a_run_where_every_patient_failed_says_so_and_draws_nothing(tmp_path):
    run_dir = run(tmp_path, "failed", 12, "max_steps = 5")
    files = build_report(run_dir)
    assert set(files) == {"summary", "paired", "strata", "report"}       # no plots
    text = files["report"].read_text()
    assert "Cannot say: no patient-arm integrated successfully" in text
    assert "**24 of 24 patient-arms failed integration** (24 max_steps)" in text
    assert "## Not computed" in text and "## Status" in text and "## Rates per arm" not in text
    summary = console_summary(run_dir)
    assert summary.startswith("Does the policy beat the reference? Cannot say")
    assert "24 of 24 patient-arms failed" in summary


def test_a_partly_failed_run_counts_its_failures_at_the_top(tmp_path):
    """A step budget between the fewest and the most steps the cohort's
    patients take (about 170 to 320 over 120 days): the slow ones fail, the
    others succeed, and the report says how many failed."""
    run_dir = run(tmp_path, "partly", 12, "max_steps = 230")
    import pyarrow.dataset as ds
    status = ds.dataset(run_dir / "patients", partitioning="hive").to_table(
        columns=["status"]).column("status").to_numpy()
    failed = int((status != 0).sum())
    if not 0 < failed < status.size:
        pytest.fail(f"the scenario no longer fails some patients only ({failed} of "
                    f"{status.size}); choose another max_steps")
    text = build_report(run_dir)["report"].read_text()
    assert f"**{failed} of {status.size} patient-arms failed integration**" in text
    assert "## Rates per arm" in text and "max_steps" in text


def test_a_single_patient_run_has_a_report(tmp_path):
    run_dir = run(tmp_path, "one", 1)
    files = build_report(run_dir)
    text = files["report"].read_text()
    assert "No strata (fewer than two distinct finite baseline tumour burdens)." in text
    assert {"rates", "trajectories"} <= set(files)
    assert "| low | fixed | 1 |" in text
    # two fixed arms: the dose varies between arms (peak IL-6 vs dose drawn) but
    # within none (no dose distribution), and no arm has predictions
    assert "il6_vs_dose" in files and "adaptive_doses" not in files
    assert "## Adaptive predictor" not in text
