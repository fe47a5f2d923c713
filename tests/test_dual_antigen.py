"""The dual_antigen model (kernels/models/dual_antigen.py): the jitted equations
against an independent transcription in antigen-set form solved with scipy,
the properties each gate must have, the outcome columns, and the logic-gates
scenario run through a shard and its report section."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy_reference import solve_dense

from kernels import dopri5
from kernels import features as kf
from kernels.models import get_model
from kernels.models.dual_antigen import END_COLUMNS, GATES, NORMAL_MIN_COLUMNS
from pipeline.aggregate import paired_difference

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DOSE = 0.1                     # 1e8 CAR T cells in units of 1e9 cells
TIGHT = {"rtol": 1e-10, "atol": 1e-14}
ALL_POSITIVE = 1e300           # odds of antigen-positive cells: f = 1 exactly
# antigen loss and normal tissue switched well up
STRONG_LOSS = {"odds_A": 30.0, "odds_B": 30.0, "loss_A": 1e-3, "loss_B": 1e-3,
               "loss_pressure": 0.05, "phi_NA": 0.3, "phi_NB": 0.3}
# only A+B+ cells, no antigen loss, no normal tissue
SINGLE_CLONE = {"odds_A": ALL_POSITIVE, "odds_B": ALL_POSITIVE, "loss_A": 0.0, "loss_B": 0.0,
                "loss_pressure": 0.0, "phi_NA": 0.0, "phi_NB": 0.0}

# The model written again from its docstring, in terms of antigen sets: each
# tumour subclone is the set of antigens it carries, a gate is (binders, logic).
CLONES = {"T_AB": frozenset("AB"), "T_A": frozenset("A"), "T_B": frozenset("B"),
          "T_neg": frozenset()}
CLONE_OF = {antigens: name for name, antigens in CLONES.items()}
TISSUES = {"N_A": "A", "N_B": "B"}
GATE_SETS = {"mono_A": (frozenset("A"), "or"), "or_gate": (frozenset("AB"), "or"),
             "and_gate": (frozenset("AB"), "and")}


def recognised(antigens, gate):
    binders, logic = gate
    return float(bool(antigens & binders) if logic == "or" else binders <= antigens)


def reference_rhs(model, params, gate):
    """f(t, y) of the model for one patient and a gate of GATE_SETS."""
    p = dict(zip(model.parameter_names, (float(v) for v in params)))
    names = model.state_names
    binders = gate[0]

    def f(t, y):
        v = dict(zip(names, y.tolist()))
        rec = {c: recognised(a, gate) for c, a in CLONES.items()}
        rec.update({n: recognised(frozenset(a), gate) for n, a in TISSUES.items()})
        sink = {n: rec[n] * p[f"phi_N{a}"] * p[f"S_N{a}"] * v[n] for n, a in TISSUES.items()}
        load = sum(rec[c] * v[c] for c in CLONES) + sum(sink.values())
        E, M, X, I = v["E"], v["M"], v["X"], v["I"]
        h = p["k"] * E / (1.0 + load / p["Kk"])
        stim = load / (p["Ks"] + load)
        growth = p["r"] * (1.0 - sum(v[c] for c in CLONES) / p["Tmax"])
        d = dict.fromkeys(names, 0.0)
        for clone, antigens in CLONES.items():
            d[clone] += (growth - rec[clone] * h) * v[clone]
            for antigen in antigens:
                pressure = p["loss_pressure"] * (antigen in binders) * rec[clone] * h
                rate = p[f"loss_{antigen}"] + pressure
                d[clone] -= rate * v[clone]
                d[CLONE_OF[antigens - {antigen}]] += rate * v[clone]
        for tissue, antigen in TISSUES.items():
            d[tissue] = (p["g_N"] * (1.0 - v[tissue])
                         - p[f"phi_N{antigen}"] * rec[tissue] * h * v[tissue])
        d["E"] = (p["a"] * stim * E - p["dE"] * E - p["gx"] * stim * E - p["m"] * E
                  + p["rho"] * M * stim)
        d["M"] = p["m"] * E - p["dM"] * M - p["rho"] * M * stim
        d["X"] = p["gx"] * stim * E - p["dX"] * X
        d["I"] = p["s"] * h * load - p["c"] * I
        return np.array([d[n] for n in names])

    return f


@pytest.fixture(scope="module")
def model():
    return get_model("dual_antigen")


def patients(model, n, gate, seed, **fixed):
    """n patients: every parameter log-normal around its typical value with its
    own sd_log, the gate's switches, ``fixed`` values; y0 with the tumour split
    by the model and the CAR T dose already in E."""
    rng = np.random.default_rng(seed)
    typical = model.typical_parameters(**GATES[gate])
    sd = np.array([q.sd_log for q in model.parameters])
    params = typical * np.exp(sd * rng.standard_normal((n, typical.size)))
    for name, value in fixed.items():
        params[:, model.parameter_index(name)] = value
    tumour0 = 10.0 * np.exp(0.5 * rng.standard_normal(n))
    y0 = model.initial_states(tumour0, params)
    y0[:, model.state_index("E")] = DOSE
    return np.ascontiguousarray(y0), np.ascontiguousarray(params)


def trajectories(model, y0, params, times, features=(), **tolerances):
    solution = dopri5.solve(model, y0, params, 0.0, times[-1], save_at=times,
                            features=features, **(tolerances or TIGHT))
    assert np.all(solution.status == 0)
    return solution


def states(model, saved, names):
    return saved[:, :, [model.state_index(n) for n in names]]


@pytest.mark.parametrize("gate", sorted(GATE_SETS))
def test_rhs_matches_reference(model, gate):
    """The jitted rhs equals the antigen-set transcription at random states."""
    rng = np.random.default_rng(1)
    y0, params = patients(model, 20, gate, seed=2)
    y = np.exp(rng.uniform(np.log(1e-6), np.log(1e3), y0.shape))
    y[:, [model.state_index("N_A"), model.state_index("N_B")]] = rng.uniform(0, 1, (20, 2))
    dydt = np.zeros((y.shape[1], y.shape[0]))
    model.rhs(y.shape[0], np.zeros(y.shape[0]), np.ascontiguousarray(y.T),
              np.ascontiguousarray(params.T), dydt)
    expected = np.array([reference_rhs(model, params[i], GATE_SETS[gate])(0.0, y[i])
                         for i in range(y.shape[0])])
    np.testing.assert_allclose(dydt.T, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gate", sorted(GATE_SETS))
def test_kernel_matches_scipy(model, gate):
    """Antigen loss (spontaneous and under pressure) and normal tissue switched
    well up, two patients per gate: the kernel's saved states match scipy's
    DOP853 solution of the transcription."""
    times = np.array([0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 150.0])
    y0, params = patients(model, 2, gate, seed=3, **STRONG_LOSS)
    saved = trajectories(model, y0, params, times).saved
    for i in range(2):
        sol = solve_dense(reference_rhs(model, params[i], GATE_SETS[gate]), y0[i], 0.0,
                          times[-1])
        np.testing.assert_allclose(saved[i], sol.sol(times).T, rtol=1e-6, atol=1e-10)


def test_single_clone_is_the_cart_model(model):
    """Only A+B+ cells, a mono-specific CAR, no normal tissue and no antigen loss:
    tumour, CAR T and IL-6 follow the cart model (L = T_AB)."""
    cart = get_model("cart")
    times = np.linspace(0.0, 200.0, 21)
    y0, params = patients(model, 8, "mono_A", seed=4, **SINGLE_CLONE)
    dual = states(model, trajectories(model, y0, params, times).saved,
                  ("T_AB", "E", "M", "X", "I"))
    cart_params = params[:, [model.parameter_index(n) for n in cart.parameter_names]]
    cart_y0 = y0[:, [model.state_index(n) for n in ("T_AB", "E", "M", "X", "I")]]
    reference = trajectories(cart, cart_y0, cart_params, times).saved
    np.testing.assert_allclose(dual, reference, rtol=1e-7, atol=1e-12)


def test_or_and_mono_agree_without_antigen_negative_cells(model):
    """No antigen-negative cells, no antigen loss (and no normal tissue that
    expresses B alone): the OR gate and the mono-specific CAR give the same
    tumour course; with A-B+ cells present they do not."""
    times = np.linspace(0.0, 365.0, 74)
    no_loss = {"odds_A": ALL_POSITIVE, "odds_B": ALL_POSITIVE, "loss_A": 0.0, "loss_B": 0.0,
               "loss_pressure": 0.0, "phi_NB": 0.0}
    courses = {}
    for gate in ("mono_A", "or_gate"):
        y0, params = patients(model, 16, gate, seed=5, **no_loss)
        saved = trajectories(model, y0, params, times, rtol=1e-8, atol=1e-12).saved
        courses[gate] = states(model, saved, CLONES).sum(axis=2)
    np.testing.assert_allclose(courses["or_gate"], courses["mono_A"], rtol=1e-9, atol=1e-15)

    for gate in ("mono_A", "or_gate"):
        y0, params = patients(model, 16, gate, seed=5, **{**no_loss, "odds_A": 1e3})
        saved = trajectories(model, y0, params, times, rtol=1e-8, atol=1e-12).saved
        courses[gate] = states(model, saved, CLONES).sum(axis=2)
    assert np.all(courses["mono_A"][:, -1] > 10.0 * courses["or_gate"][:, -1])


def test_and_gate_never_kills_single_positive_cells(model):
    """AND gate, no antigen loss: A+B-, A-B+ and A-B- cells all grow at the shared
    rate G(t) and none is killed, so T_A / T_neg and T_B / T_neg stay at their
    initial values while the CAR T cells expand; under the OR gate they fall."""
    times = np.linspace(0.0, 365.0, 74)
    no_loss = {"odds_A": 100.0, "odds_B": 100.0, "loss_A": 0.0, "loss_B": 0.0,
               "loss_pressure": 0.0}
    ratios = {}
    for gate in ("and_gate", "or_gate"):
        y0, params = patients(model, 16, gate, seed=6, **no_loss)
        solution = trajectories(model, y0, params, times, rtol=1e-9, atol=1e-14,
                                features=[kf.maximum("E")])
        assert np.all(solution.features[:, 0] > 10 * DOSE)       # the CAR T cells did expand
        T = {n: states(model, solution.saved, (n,))[:, :, 0] for n in CLONES}
        ratios[gate] = (T["T_A"] / T["T_neg"], T["T_B"] / T["T_neg"])
    for ratio in ratios["and_gate"]:
        np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-6)
    for ratio in ratios["or_gate"]:
        assert np.all(ratio.min(axis=1) < 1e-2 * ratio[:, 0])


def extra_columns(model, params, solution, relapsed):
    """The model's extra outcome columns from kernel features (cells in cells)."""
    specs = model.extra_features(None, 365.0)
    columns = {name: solution.features[:, j] * (model.cells_per_unit if cells else 1.0)
               for j, (name, _, cells) in enumerate(specs)}
    return model.extra_outcomes({**columns, "relapsed": relapsed}, params)


def test_and_gate_spares_single_antigen_normal_tissue(model):
    """Off-tumour damage: none under the AND gate, to tissue A only under the
    mono-specific CAR, to both under OR."""
    specs = model.extra_features(None, 365.0)
    damage = {}
    for gate in ("and_gate", "mono_A", "or_gate"):
        y0, params = patients(model, 16, gate, seed=7)
        solution = trajectories(model, y0, params, np.array([365.0]),
                                features=[f for _, f, _ in specs], rtol=1e-8, atol=1e-12)
        extra = extra_columns(model, params, solution, np.zeros(16, bool))
        damage[gate] = (extra["offtumour_damage_A"], extra["offtumour_damage_B"])
    assert np.all(damage["and_gate"][0] == 0.0) and np.all(damage["and_gate"][1] == 0.0)
    assert np.all(damage["mono_A"][0] > 0.01) and np.all(damage["mono_A"][1] == 0.0)
    assert np.all(damage["or_gate"][0] > 0.01) and np.all(damage["or_gate"][1] > 0.01)


def test_tumour_split_closed_form(model):
    """The subclone fractions are f_A f_B, f_A (1-f_B), (1-f_A) f_B,
    (1-f_A)(1-f_B) with f = odds / (1 + odds): they sum to 1 and the A+ and B+
    marginals are f_A and f_B."""
    params = np.tile(model.typical_parameters(), (3, 1))
    params[:, model.parameter_index("odds_A")] = [1.0, 3.0, 99.0]
    params[:, model.parameter_index("odds_B")] = [4.0, 1.0, 0.25]
    split = model.tumour_split(params)
    f_A, f_B = np.array([0.5, 0.75, 0.99]), np.array([0.8, 0.5, 0.2])
    np.testing.assert_allclose(split.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(split[:, 0] + split[:, 1], f_A, rtol=1e-15)
    np.testing.assert_allclose(split[:, 0] + split[:, 2], f_B, rtol=1e-15)
    np.testing.assert_allclose(split[:, 3], (1 - f_A) * (1 - f_B), rtol=1e-14)


def test_extra_outcomes_escape_and_phenotype(model):
    """Escape counts only cells the patient's own gate does not recognise; the
    phenotype is the dominant subclone among the relapsed, "" otherwise."""
    gates = ["mono_A", "or_gate", "and_gate", "mono_A", "or_gate"]
    params = np.array([model.typical_parameters(**GATES[g]) for g in gates])
    ends = np.array([[1, 0, 8, 1],     # mostly A-B+: escapes mono-A ...
                     [1, 0, 8, 1],     # ... not OR
                     [2, 5, 0, 1],     # mostly A+B-: escapes AND
                     [9, 1, 0, 0],     # antigen-positive relapse
                     [0, 0, 3, 7]], float)     # not relapsed
    relapsed = np.array([True, True, True, True, False])
    columns = {c: ends[:, j] for j, c in enumerate(END_COLUMNS)}
    columns.update({c: np.full(5, 0.75) for c in NORMAL_MIN_COLUMNS.values()})
    extra = model.extra_outcomes({**columns, "relapsed": relapsed}, params)
    np.testing.assert_allclose(extra["unrecognised_share_end"], [0.9, 0.1, 0.75, 0.0, 0.7])
    assert extra["escaped"].tolist() == [True, False, True, False, False]
    assert extra["relapse_phenotype"].tolist() == ["A-B+", "A-B+", "A+B-", "A+B+", ""]
    np.testing.assert_allclose(extra["offtumour_damage_A"], 0.25)


@pytest.fixture(scope="module")
def logic_gates_run():
    """One shard of configs/logic_gates.toml with 1,500 patients, as a DataFrame."""
    from pipeline.config import load_scenario, with_overrides
    from pipeline.shard import run_shard

    scenario = with_overrides(load_scenario(CONFIGS / "logic_gates.toml"), patients=1500,
                              shard_size=1500)
    tables = run_shard(scenario, 0)
    return pd.concat([t.to_pandas().assign(arm=arm) for arm, (t, _) in tables.items()],
                     ignore_index=True)


def test_or_escape_below_mono_on_same_patients(logic_gates_run):
    """Same patients, paired: fewer escapes under the OR gate than under the
    mono-specific CAR, the exact 95% interval of the difference below zero."""
    ok = logic_gates_run[logic_gates_run["status"] == 0]
    escaped = {arm: g.set_index("patient_id")["escaped"] for arm, g in ok.groupby("arm")}
    common = escaped["mono_A"].index.intersection(escaped["or_gate"].index)
    assert len(common) == 1500
    difference = paired_difference(escaped["or_gate"][common], escaped["mono_A"][common])
    assert difference.upper < -0.1, difference


def test_antigen_section_writes_its_tables_and_plots(logic_gates_run, tmp_path):
    """The report section applies to the run, writes every file it lists, and its
    phenotype table counts each arm's relapses."""
    from pipeline.sections import antigen

    result = antigen.section(logic_gates_run, None, tmp_path)
    assert result is not None
    for path in result.files.values():
        assert Path(path).stat().st_size > 0
    phenotypes = pd.read_csv(result.files["antigen_phenotypes"]).set_index("arm")
    relapses = logic_gates_run.groupby("arm")["relapsed"].sum()
    assert phenotypes.sum(axis=1).to_dict() == relapses.to_dict()
    assert antigen.section(logic_gates_run.drop(columns="escaped"), None, tmp_path) is None
