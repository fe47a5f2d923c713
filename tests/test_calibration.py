"""``cartcohort calibrate``: targets files, the objective, recovery of planted
typical values, the command's files, and one-line errors for bad input."""
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from kernels.models import get_model
from pipeline.calibration import objective
from pipeline.calibration.fit import calibrate
from pipeline.calibration.targets import targets_from_text
from pipeline.config import ConfigError

SCENARIO = """
[scenario]
name = "calibration_small"
model = "cart2"
seed = 11
patients = 300
horizon_days = 120.0

[cohort.covariates.tumour_burden_cells]
median = 1e11
sd_log = 1.2

[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8

[outcomes]
response_day = 90.0
crs_il6_thresholds_pg_ml = [100.0, 500.0, 1500.0, 5000.0]
"""

# planted typical values: cart2's typical values times these factors
PLANTED = {"a": 1.25, "dE": 0.8, "sI": 1.3}
# statistics that see the three parameters (a: the CAR T peak day and the
# response; dE: the contraction; sI: severe CRS)
STATISTICS = [
    dict(name="peak day", statistic="median", column="t_cart_peak_d", sd=0.5),
    dict(name="contraction", statistic="median_ratio", numerator="cart_d14_cells",
         denominator="cart_d7_cells", sd=0.2, scale="log"),
    dict(name="severe CRS", statistic="rate", outcome="severe_crs", sd=0.03),
    dict(name="response", statistic="rate", outcome="no_detectable_disease", sd=0.03),
]


def _toml_value(value):
    return f'"{value}"' if isinstance(value, str) else repr(value)


def targets_text(values, fit=tuple(PLANTED), scenario="scenario.toml", patients=300):
    lines = ["[calibration]", f'scenario = "{scenario}"', 'arm = "fixed"',
             f"patients = {patients}", f"fit = {list(fit)!r}".replace("'", '"'),
             'screen = ["k"]', "max_evaluations = 120", ""]
    for statistic, value in zip(STATISTICS, values):
        lines.append("[[targets]]")
        lines += [f"{key} = {_toml_value(v)}" for key, v in statistic.items()]
        lines += [f"value = {value!r}", 'source = "planted"', ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration")
    (path / "scenario.toml").write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def planted(folder):
    """(planted typical values, the targets file whose values are the statistics
    at the planted values, so that the planted values are an exact solution)."""
    model = get_model("cart2")
    typical = dict(zip(model.parameter_names, model.typical_parameters()))
    values = {name: typical[name] * factor for name, factor in PLANTED.items()}
    probe = targets_from_text(targets_text([1.0] * len(STATISTICS)),
                              str(folder / "probe.toml"))
    scenario = objective.cohort_scenario(probe)
    _, stats = objective.evaluate(probe, scenario, {**typical, **values})
    path = folder / "targets.toml"
    path.write_text(targets_text([smooth for smooth, _ in stats]))
    return values, path


def test_recovers_planted_typical_values(planted):
    """From cart2's typical values (planted ones are 20-30% away), the fit finds
    the planted a, dE and sI within 3% and the objective falls to ~0."""
    from pipeline.calibration.targets import load_targets

    values, path = planted
    result = calibrate(load_targets(path))
    for name, value in values.items():
        assert result.fitted[name] == pytest.approx(value, rel=0.03), (name, result.fitted)
    assert result.cost < 1e-3
    # the start was away from the planted values, so the fit had work to do
    assert result.trace[0][1] > 1.0


def test_smoothed_rate_tracks_plain_rate(folder):
    """The objective's smoothed rate differs from the plain one by less than the
    fraction of patients within a few smoothing widths of the threshold."""
    spec = targets_from_text(targets_text([1.0] * len(STATISTICS)), str(folder / "t.toml"))
    scenario = objective.cohort_scenario(spec)
    columns = objective.simulate(scenario)
    for target in spec.targets[2:]:
        smooth, plain = objective.statistic(target, columns, scenario.outcomes, 0.05)
        margins = objective.margins(target.outcome, columns, scenario.outcomes)
        near = np.mean(np.abs(margins) < 0.25)
        assert abs(smooth - plain) <= near + 1e-3
        assert 0.0 < plain < 1.0


def test_cli_writes_files_and_png(planted, tmp_path):
    _, path = planted
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "calibrate", str(path),
                           "--out", str(out), "--perturb", "0.3", "--perturb-seed", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "## Targets" in proc.stdout and "What the targets pin" in proc.stdout
    targets = pd.read_csv(out / "targets.csv")
    assert list(targets["target"]) == [s["name"] for s in STATISTICS]
    assert np.all(np.abs(targets["residual"]) < 0.1)
    parameters = pd.read_csv(out / "parameters.csv")
    assert set(parameters["parameter"]) == set(PLANTED) | {"k"}
    fitted = (out / "fitted.toml").read_text()
    assert "[cohort.parameters.sI]" in fitted
    image = matplotlib.image.imread(out / "calibration.png")
    assert image.shape[0] > 100 and image.shape[1] > 100 and np.ptp(image[..., :3]) > 0.5


@pytest.mark.parametrize("change, key", [
    (('arm = "fixed"', 'arm = "nope"'), "calibration.arm"),
    (('fit = ["a", "dE", "sI"]', 'fit = ["a", "zz"]'), "calibration.fit"),
    (('statistic = "median"', 'statistic = "mean"'), "targets[0].statistic"),
    (('column = "t_cart_peak_d"', 'column = "no_such_column"'), "targets[0].column"),
    (("patients = 300", "patients = 3"), "calibration.patients"),
    (('screen = ["k"]', 'screen = ["a"]'), "calibration.screen"),
])
def test_bad_targets_are_one_line_errors(planted, tmp_path, change, key):
    """Each mistake exits 2 with one line naming the file and the key, and
    writes nothing."""
    _, path = planted
    text = path.read_text()
    assert change[0] in text
    bad = Path(path).parent / f"bad_{key.replace('[', '_').replace(']', '_')}.toml"
    bad.write_text(text.replace(change[0], change[1]))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "calibrate", str(bad),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and str(bad) in lines[0], proc.stderr
    assert not out.exists()


def test_missing_targets_file_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "calibrate",
                           str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "none.toml" in proc.stderr


def test_targets_need_a_value_on_the_log_scale_above_zero():
    text = targets_text([1.0] * len(STATISTICS)).replace("value = 1.0", "value = -1.0", 2)
    with pytest.raises(ConfigError, match=r"targets\[1\]\.value"):
        targets_from_text(text)
