"""Efficacy and exposure: the per-patient columns ``efficacy_ratio`` (k E0 / r_T)
and ``effector_to_target``, the efficacy condition behind them, and the report
section pipeline/sections/efficacy.py.

The exposure identity T(t)/T0 = exp(-k AUC_E) (predator-prey, r = 0) and the
efficacy condition seen in an integration are in tests/test_closed_form.py; here
the condition is checked on the models' own right-hand sides through the
``efficacy_ratio`` hook the pipeline calls.
"""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from kernels.models import get_model
from pipeline.config import scenario_from_text
from pipeline.sections import efficacy
from pipeline.shard import run_shard

CELLS_PER_UNIT = 1e9


def _initial_slope(model, y0, params):
    """dT/dt at t = 0 from the model's compiled rhs (T is the first tumour state)."""
    n = y0.shape[0]
    dydt = np.zeros((len(model.states), n))
    model.rhs(n, np.zeros(n), np.ascontiguousarray(y0.T), np.ascontiguousarray(params.T), dydt)
    return dydt[model.state_index(model.roles["tumour"][0])]


@pytest.mark.parametrize("name, tumour", [("predator_prey", 10.0), ("cart", 1e-6)])
def test_tumour_shrinks_at_infusion_iff_k_E0_over_r_exceeds_1(name, tumour):
    """dT/dt at 0+ < 0 iff efficacy_ratio = k E0 / r > 1, for ratios 0.5..2 (none
    within 1e-3 of 1). Exact for predator_prey (dT/dt = (r - k E0) T); for cart,
    dT/dt = T (r (1 - T/Tmax) - k E0 / (1 + T/Kk)), so the condition holds at a
    small tumour (1e3 cells here; the ratio then moves the threshold by ~1e-7)."""
    model = get_model(name)
    rng = np.random.default_rng(21)
    n = 400
    params = model.typical_parameters() * np.exp(0.3 * rng.standard_normal((n, len(model.parameters))))
    k, r = params[:, model.parameter_index("k")], params[:, model.parameter_index("r")]
    target = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
    target[np.abs(target - 1.0) <= 1e-3] = 2.0
    E0 = target * r / k
    y0 = np.tile(model.typical_initial_state(), (n, 1))
    y0[:, model.state_index("T")] = tumour
    y0[:, model.state_index(model.roles["infusion"][0])] = E0
    ratio = model.efficacy_ratio(params, E0)
    np.testing.assert_allclose(ratio, k * E0 / r, rtol=1e-14)
    shrinks = _initial_slope(model, y0, params) < 0.0
    assert shrinks.any() and (~shrinks).any()
    np.testing.assert_array_equal(shrinks, ratio > 1.0)


# ------------------------------------------------------------ decile rates

def _synthetic(n=1500, seed=3):
    """Two arms on the same patients: efficacy ratio and AUC log-normal, response
    more likely at higher values; some failed patients, NaN and <= 0 values."""
    rng = np.random.default_rng(seed)
    frames = []
    for arm, shift in (("fixed", 0.0), ("adaptive", 0.4)):
        ratio = np.exp(rng.normal(shift, 1.0, n))
        auc = 1e10 * np.exp(rng.normal(shift, 0.8, n))
        responded = rng.random(n) < 1.0 / (1.0 + 1.0 / ratio)
        status = np.where(rng.random(n) < 0.03, 2, 0).astype(np.int8)
        ratio[rng.random(n) < 0.02] = np.nan
        ratio[:5] = 0.0
        frames.append(pd.DataFrame({"patient_id": np.arange(n), "arm": arm, "status": status,
                                    "efficacy_ratio": ratio, "cart_auc_cells_d": auc,
                                    "responded": responded}))
    return pd.concat(frames, ignore_index=True)


def _wilson(events, n):
    z = norm.ppf(0.975)
    p = events / n
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    centre = p + z * z / (2 * n)
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("column", ["efficacy_ratio", "cart_auc_cells_d"])
def test_decile_rates_match_pandas(column):
    """Against pandas' qcut over the pooled arms (status 0, finite positive
    values): per decile and arm n, events, rate, Wilson bounds and the decile's
    median value."""
    frame = _synthetic()
    table = efficacy.decile_rates(frame, column)
    ok = frame[(frame["status"] == 0) & (frame[column] > 0)].copy()   # NaN > 0 is False
    ok["decile"] = pd.qcut(ok[column], 10, labels=False)
    grouped = ok.groupby(["decile", "arm"])["responded"].agg(["size", "sum"]).reset_index()
    grouped["median_value"] = grouped["decile"].map(ok.groupby("decile")[column].median())
    lower, upper = _wilson(grouped["sum"].to_numpy(float), grouped["size"].to_numpy(float))
    expected = grouped.assign(rate=grouped["sum"] / grouped["size"], lower=lower, upper=upper)

    assert len(table) == 20 and set(table["quantity"]) == {column}
    assert table["n"].sum() == len(ok)
    got = table.sort_values(["median_value", "arm"]).reset_index(drop=True)
    expected = expected.sort_values(["median_value", "arm"]).reset_index(drop=True)
    np.testing.assert_array_equal(got["arm"], expected["arm"])
    np.testing.assert_array_equal(got["n"], expected["size"])
    np.testing.assert_array_equal(got["events"], expected["sum"])
    for name in ("median_value", "rate", "lower", "upper"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, err_msg=name)


def test_efficacy_section_writes_its_files(tmp_path):
    """The section writes the deciles CSV (both quantities, as decile_rates) and
    a PNG, links both, and states each arm's share meeting k E0 > r_T; without
    an efficacy_ratio column it does not apply."""
    frame = _synthetic()
    result = efficacy.section(frame, None, tmp_path)
    assert result.title == "Efficacy and exposure"
    assert set(result.files) == set(efficacy.FILES)
    for key, name in efficacy.FILES.items():
        assert result.files[key] == tmp_path / name and result.files[key].stat().st_size > 0
        assert f"({name})" in result.markdown
    assert (tmp_path / "efficacy_exposure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = pd.read_csv(tmp_path / "efficacy_deciles.csv")
    expected = pd.concat([efficacy.decile_rates(frame, c) for c, _ in efficacy.QUANTITIES],
                         ignore_index=True)
    np.testing.assert_array_equal(written["quantity"], expected["quantity"])
    np.testing.assert_allclose(written[["median_value", "rate", "lower", "upper"]],
                               expected[["median_value", "rate", "lower", "upper"]], rtol=1e-9)
    for arm, g in frame[frame["status"] == 0].groupby("arm"):
        assert f"| {arm} | {100 * (g['efficacy_ratio'] > 1).mean():.1f}% |" in result.markdown
    assert efficacy.section(frame.drop(columns="efficacy_ratio"), None, tmp_path) is None


def test_efficacy_section_with_deciles_at_0_and_100_percent(tmp_path):
    """Response decided by k E0 / r_T > 1: whole deciles respond or do not. The
    Wilson bounds still bracket each rate (0 and 1 included) and the plot is
    written. (Fails while pipeline.aggregate.wilson_interval returns a lower
    bound of ~1e-17 > 0 at 0 events and an upper one below 1 at n of n.)"""
    frame = _synthetic()
    frame["responded"] = frame["efficacy_ratio"] > 1.0
    table = efficacy.decile_rates(frame, "efficacy_ratio")
    assert set(table["rate"]) >= {0.0, 1.0}
    assert np.all((table["lower"] <= table["rate"]) & (table["rate"] <= table["upper"]))
    result = efficacy.section(frame, None, tmp_path)
    assert result.files["efficacy_exposure"].stat().st_size > 0


# ------------------------------------------------------------ columns of a real shard

SHARD_SCENARIO = """
[scenario]
name = "efficacy"
model = "cart"
seed = 11
patients = 120
shard_size = 120
horizon_days = 120.0

[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8

[[arms]]
name = "slow_kill_debulked"
policy = "fixed"
dose_cells = 3e8
debulking_factor = 0.2
parameters = { k = 0.05 }
"""


def test_shard_columns_from_parameters():
    """In a real shard: efficacy_ratio = k dose / r from the parameter columns
    (the arm's k where the arm sets it), effector_to_target = dose / (burden x
    debulking factor), and a positive CAR T AUC for every patient."""
    tables = run_shard(scenario_from_text(SHARD_SCENARIO), 0)
    for arm, k_column, factor in (("fixed", "param_k", 1.0),
                                  ("slow_kill_debulked", "arm_param_k", 0.2)):
        p = tables[arm][0].to_pandas()
        assert (p["status"] == 0).all()
        expected = p[k_column] * (p["dose_cells"] / CELLS_PER_UNIT) / p["param_r"]
        np.testing.assert_allclose(p["efficacy_ratio"], expected, rtol=1e-14)
        np.testing.assert_allclose(p["effector_to_target"],
                                   p["dose_cells"] / (p["tumour_burden_cells"] * factor),
                                   rtol=1e-14)
        assert (p["cart_auc_cells_d"] > 0).all()
    slow = tables["slow_kill_debulked"][0].to_pandas()
    np.testing.assert_allclose(slow["arm_param_k"], slow["param_k"] * 0.05 / 0.15, rtol=1e-14)


# ------------------------------------------------------------ x tick labels (issue 13)

def _visible_x_labels(ax):
    """The drawn x tick labels of an axis (major and minor, inside the limits)."""
    low, high = sorted(ax.get_xlim())
    found = []
    for tick in [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks()]:
        label = tick.label1
        if (tick.get_visible() and label.get_visible() and label.get_text()
                and low <= tick.get_loc() <= high):
            found.append(label)
    return found


@pytest.mark.parametrize("spread", [None, 0.25])
def test_efficacy_exposure_x_tick_labels_do_not_overlap(tmp_path, monkeypatch, spread):
    """efficacy_exposure.png: on a log axis spanning about a decade matplotlib
    labelled the minor ticks too ('3x10^-1' over '4x10^-1'); now at most
    efficacy.MAX_TICKS labels per panel, at least two, none overlapping another
    once drawn, for the synthetic cohort and a narrow spread of the quantities."""
    figures, real = [], efficacy.save

    def capture(fig, path):
        fig.tight_layout()
        fig.canvas.draw()
        figures.append([[(label.get_text(), label.get_window_extent())
                         for label in _visible_x_labels(ax)] for ax in fig.axes])
        real(fig, path)
    monkeypatch.setattr(efficacy, "save", capture)
    frame = _synthetic()                 # about 1.4 and 1.2 decades of decile medians
    if spread is not None:
        rng = np.random.default_rng(5)
        frame["efficacy_ratio"] = 2.0 * np.exp(spread * rng.standard_normal(len(frame)))
        frame["cart_auc_cells_d"] = 3e10 * np.exp(spread * rng.standard_normal(len(frame)))
    efficacy.section(frame, None, tmp_path)
    (panels,) = figures
    assert len(panels) == 2
    for labels in panels:
        boxes = sorted((box.x0, box.x1, text) for text, box in labels)
        for (_, right, text), (left, _, following) in zip(boxes, boxes[1:]):
            assert right < left, f"tick labels {text!r} and {following!r} overlap"
        assert 2 <= len(labels) <= efficacy.MAX_TICKS, [t for t, _ in labels]


def test_log_ticks_and_labels():
    assert efficacy.log_ticks(0.2, 8.0) == pytest.approx([0.2, 0.5, 1, 2, 5])
    assert efficacy.log_ticks(1e5, 1e9) == pytest.approx([1e5, 1e6, 1e7, 1e8, 1e9])
    assert efficacy.log_ticks(1e-3, 1e12) == pytest.approx([1e-3, 1, 1e3, 1e6, 1e9, 1e12])
    assert efficacy.log_ticks(1.4, 2.8) == pytest.approx([1.5, 2, 2.5])
    for low, high in ((0.2, 8.0), (2.5e9, 6e10), (1.4, 2.8), (2.1, 2.6), (1e-3, 1e12),
                      (0.501, 0.502), (3e-7, 9e-7)):
        ticks = efficacy.log_ticks(low, high)
        assert 2 <= len(ticks) <= efficacy.MAX_TICKS and low <= min(ticks) <= max(ticks) <= high
        assert len({efficacy.tick_label(t) for t in ticks}) == len(ticks)
    assert [efficacy.tick_label(v) for v in (0.3, 2.0, 1500.0, 2e10, 2.5e10, 5e-5)] == [
        "0.3", "2", "1500", "2e10", "2.5e10", "5e-5"]
