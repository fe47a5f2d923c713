"""configs/prophylaxis.toml through the shard: interventions as kernel events.

On the same virtual patients, the triggered arm treats exactly the patients
whose IL-6 reaches the threshold without treatment (the course is the same
until the crossing), leaves the others' numbers untouched bit for bit, and
lowers the treated patients' peak IL-6; universal prophylaxis treats everyone
at day 0.
"""
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_scenario, with_overrides
from pipeline.shard import run_shard

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "prophylaxis.toml"
N = 400


@pytest.fixture(scope="module")
def scenario():
    return with_overrides(load_scenario(CONFIG), patients=N, shard_size=N)


@pytest.fixture(scope="module")
def arms(scenario):
    return {name: tables[0].to_pandas() for name, tables in run_shard(scenario, 0).items()}


def test_universal_prophylaxis_is_given_to_everyone_at_infusion(arms):
    assert np.all(arms["universal_tocilizumab"]["t_tocilizumab_d"] == 0.0)
    assert np.all(np.isnan(arms["none"]["t_tocilizumab_d"]))


def test_the_trigger_treats_exactly_the_patients_who_reach_the_threshold(arms):
    none, triggered = arms["none"], arms["triggered_tocilizumab"]
    treated = np.isfinite(triggered["t_tocilizumab_d"].to_numpy())
    assert np.array_equal(treated, none["il6_peak_pg_ml"].to_numpy() >= 500.0)
    assert 0.1 < treated.mean() < 0.9
    # the day given is no later than the untreated peak's day
    assert np.all(triggered["t_tocilizumab_d"][treated] <= none["t_il6_peak_d"][treated])
    # untreated patients are untouched, bit for bit
    features = ["il6_peak_pg_ml", "cart_peak_cells", "tumour_end_cells", "n_steps"]
    assert np.array_equal(triggered.loc[~treated, features].to_numpy(),
                          none.loc[~treated, features].to_numpy())
    # treated patients' IL-6 stops rising as fast: a lower peak
    assert np.all(triggered["il6_peak_pg_ml"][treated] < none["il6_peak_pg_ml"][treated])
    assert triggered["severe_crs"].sum() < none["severe_crs"].sum()


def test_steroids_also_slow_car_t_expansion(arms):
    toci, steroids = arms["triggered_tocilizumab"], arms["triggered_steroids"]
    treated = np.isfinite(steroids["t_steroids_d"].to_numpy())
    assert np.array_equal(treated, np.isfinite(toci["t_tocilizumab_d"].to_numpy()))
    ratio = steroids["cart_auc_cells_d"][treated] / toci["cart_auc_cells_d"][treated]
    assert np.median(ratio) < 0.95


def test_the_report_section_counts_who_was_treated(arms, scenario, tmp_path):
    import pandas as pd

    from pipeline.config import scenario_from_text
    from pipeline.sections import interventions

    patients = pd.concat([frame.assign(arm=name) for name, frame in arms.items()],
                         ignore_index=True)
    section = interventions.section(patients, scenario, tmp_path)
    table = pd.read_csv(section.files["interventions"])
    assert list(table["arm"]) == ["universal_tocilizumab", "triggered_tocilizumab",
                                  "triggered_steroids"]
    triggered = arms["triggered_tocilizumab"]["t_tocilizumab_d"]
    assert table.loc[1, "treated"] == int(np.isfinite(triggered).sum())
    assert table.loc[1, "day_median"] == pytest.approx(np.nanmedian(triggered))
    assert table.loc[0, "share"] == 1.0
    without = scenario_from_text(scenario.text.split("[[arms]]")[0]
                                 + '[[arms]]\nname = "none"\npolicy = "fixed"\ndose_cells = 1e8\n')
    assert interventions.section(patients, without, tmp_path) is None
