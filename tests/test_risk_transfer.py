"""A risk model records the arm it was trained on, and ``risk score`` warns when
it scores another dosing policy or doses outside the trained range (issue 13).

A model fitted on a fixed dose and applied to an adaptive arm, whose dose was
chosen from the same early risk factors the model reads, ranked that arm worse
than chance without a word. Here on a small real run of cart2 with a fixed and
an adaptive arm (the default scenario's), computed in-process without Dask: the
fitted model records arm, policy and dose range; scoring the run warns in one
stderr line naming the fixed training arm and the adaptive arm, and notes it
per arm in risk_score_metrics.csv; a model saved before the record existed
still loads and scores, with a line saying it cannot be checked.
"""
import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest

from pipeline import batch
from pipeline.cli import main
from pipeline.config import load_scenario
from pipeline.query import open_patients
from pipeline.risk import FitOptions, RiskModel, risk_fit, risk_score

SCENARIO = """
[scenario]
name = "transfer"
model = "cart2"
seed = 5
patients = 800
shard_size = 800
horizon_days = 60.0

[cohort.covariates.tumour_burden_cells]
median = 1e11
sd_log = 1.2

[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8

[[arms]]
name = "adaptive"
policy = "adaptive"
target_il6_pg_ml = 700.0
min_dose_cells = 1e7
max_dose_cells = 1e9

[outcomes]
crs_il6_thresholds_pg_ml = [100.0, 500.0, 1500.0, 5000.0]
"""
FIXED = "'fixed' (fixed: 1e+08 cells; doses 1e+08 cells)"
ADAPTIVE = "'adaptive' (adaptive: peak IL-6 target 700 pg/mL, doses 1e+07-1e+09 cells; doses "


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "transfer.toml"
    config.write_text(SCENARIO)
    scenario = load_scenario(config)
    path = tmp_path_factory.mktemp("runs") / "transfer"
    batch.run_shards(scenario, path, 0, scenario.n_shards, stream=io.StringIO())
    return batch.finalize(scenario, path)


@pytest.fixture(scope="module")
def fitted(run_dir, tmp_path_factory):
    return risk_fit(run_dir, tmp_path_factory.mktemp("fit") / "fit", FitOptions())


def _warnings(text):
    return [line for line in text.splitlines() if line.startswith("warning:")]


def test_fitted_model_records_its_training_arm(fitted):
    model = RiskModel.load(fitted["model"])
    assert model.training_arm == {"arm": "fixed", "policy": "fixed",
                                  "description": "fixed: 1e+08 cells",
                                  "dose_cells": [1e8, 1e8]}
    assert "Arm `fixed` (fixed: 1e+08 cells; doses 1e+08 cells)" in fitted["summary"].read_text()


def test_score_of_another_policy_warns_once_naming_both(run_dir, fitted, tmp_path, capsys):
    assert main(["risk", "score", str(run_dir), str(fitted["model"]),
                 "--out", str(tmp_path / "score")]) == 0
    err = capsys.readouterr().err
    (line,) = _warnings(err)
    assert f"fitted on arm {FIXED}" in line
    assert f"arm {ADAPTIVE}" in line
    assert "another dosing policy, doses outside the trained range" in line
    assert "arm 'fixed' (" not in line.split("; it scores ")[1]     # the fixed arm matches
    notes = pd.read_csv(tmp_path / "score" / "risk_score_metrics.csv").set_index("arm")
    assert notes.loc["fixed", "training_check"] == "ok"
    note = notes.loc["adaptive", "training_check"]
    assert note.startswith("another dosing policy; doses outside the trained range: arm "
                           + ADAPTIVE) and note.endswith(f"trained on arm {FIXED}")


def test_doses_outside_the_trained_range_alone_warn(run_dir, fitted, tmp_path):
    """The same policy text but doses beyond the trained range; then a model
    whose recorded range and policy cover the arm: no warning."""
    data = json.loads(fitted["model"].read_text())
    narrow = tmp_path / "narrow.json"
    data["training_arm"] = {**data["training_arm"], "arm": "adaptive", "policy": "adaptive",
                            "description": "adaptive: peak IL-6 target 700 pg/mL, doses "
                                           "1e+07-1e+09 cells", "dose_cells": [2e7, 5e8]}
    narrow.write_text(json.dumps(data))
    log = io.StringIO()
    risk_score(run_dir, narrow, tmp_path / "narrow", log=log)
    (line,) = _warnings(log.getvalue())
    assert "arm 'adaptive' (" in line and "doses 2e+07-5e+08 cells" in line
    assert line.count("doses outside the trained range") == 1
    assert "another dosing policy" in line                          # the fixed arm
    model = RiskModel.load(narrow)
    patients = open_patients(run_dir, ["dose_cells"])
    frame_doses = patients.loc[patients["arm"] == "adaptive", "dose_cells"]
    assert model.transfer_problems(data["training_arm"]["description"], frame_doses) == [
        "doses outside the trained range"]
    wide = dataclasses.replace(model, training_arm={**model.training_arm,
                                                    "dose_cells": [1e7, 1e9]})
    assert wide.transfer_problems(data["training_arm"]["description"], frame_doses) == []
    assert wide.transfer_problems(None, frame_doses) == ["dosing policy not recorded, not compared"]


def test_old_model_without_record_loads_and_says_it_cannot_be_checked(run_dir, fitted,
                                                                      tmp_path):
    data = json.loads(fitted["model"].read_text())
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in data.items() if k != "training_arm"}))
    model = RiskModel.load(old)
    assert model.training_arm is None and model.transfer_problems("fixed: 1e+08 cells",
                                                                  np.array([1e8])) is None
    log = io.StringIO()
    paths = risk_score(run_dir, old, tmp_path / "old", log=log)
    (line,) = _warnings(log.getvalue())
    assert "cannot check" in line and "'fixed'" in line and "'adaptive'" in line
    notes = pd.read_csv(paths["metrics"])["training_check"]
    assert all(n.startswith("cannot be checked") for n in notes)
    # the scores themselves are those of the recorded model
    new = pd.read_parquet(risk_score(run_dir, fitted["model"], tmp_path / "new",
                                     log=io.StringIO())["scores"])
    pd.testing.assert_frame_equal(pd.read_parquet(paths["scores"]), new)
