"""Scenario configuration: the shipped configs, overrides and malformed files.

A malformed scenario fails before any compute with one line naming the file and
the key path (``pipeline/config.py``); ``cartcohort validate`` turns that into
exit status 2 with nothing written.
"""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels.models import get_model
from pipeline.cohort import CohortSpec
from pipeline.config import (ConfigError, load_scenario, scenario_from_text,
                             with_overrides)
from small_run import FIXED_AND_ADAPTIVE_ARMS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SOURCE = "bad.toml"

BASE = """\
[scenario]
name = "t"
model = "cart"
seed = 1
patients = 100
horizon_days = 365.0

""" + FIXED_AND_ADAPTIVE_ARMS


def rep(old, new):
    """A mutation: replace the one occurrence of ``old`` in the text."""
    def mutate(text):
        assert text.count(old) == 1, old
        return text.replace(old, new)
    return mutate


def add(extra):
    """A mutation: append TOML tables."""
    return lambda text: text + "\n" + extra


def only_scenario(text):
    return text.split("[[arms]]")[0]


ARM_INTERVENTION = ('[[arms]]\nname = "treated"\npolicy = "fixed"\ndose_cells = 1e8\n'
                    '[[arms.interventions]]\nname = "toci"\n')
SEED_LINE = BASE.splitlines().index("seed = 1") + 1
CORRELATION = "[cohort.correlation]\nparameters = {names}\nmatrix = {matrix}\n"

MALFORMED = [
    # (description, mutation of BASE, key path the one-line error must name)
    ("unknown top-level table", add("[bogus]\nx = 1\n"), "bogus"),
    ("unknown key in scenario", rep("seed = 1", "seed = 1\nsede = 2"), "scenario.sede"),
    ("unknown key in an arm", rep("dose_cells = 1e8", "dose_cells = 1e8\ndose = 1"),
     "arms[0].dose"),
    ("adaptive key in a fixed arm", rep("dose_cells = 1e8", "dose_cells = 1e8\n"
                                        "target_il6_pg_ml = 5.0"), "arms[0].target_il6_pg_ml"),
    ("scenario.name missing", rep('name = "t"\n', ""), "scenario.name"),
    ("scenario.seed missing", rep("seed = 1\n", ""), "scenario.seed"),
    ("[scenario] missing", lambda t: t[t.index("[[arms]]"):],
     "scenario"),
    ("name with a space", rep('name = "t"', 'name = "a b"'), "scenario.name"),
    ("string for patients", rep("patients = 100", 'patients = "100"'), "scenario.patients"),
    ("bool for a float", rep("horizon_days = 365.0", "horizon_days = true"),
     "scenario.horizon_days"),
    ("float for an int", rep("patients = 100", "patients = 100.0"), "scenario.patients"),
    ("date for an int", rep("seed = 1", "seed = 1979-05-27"), "scenario.seed"),
    ("patients 0", rep("patients = 100", "patients = 0"), "scenario.patients"),
    ("shard_size negative", rep("patients = 100", "patients = 100\nshard_size = -5"),
     "scenario.shard_size"),
    ("seed negative", rep("seed = 1", "seed = -1"), "scenario.seed"),
    ("rtol 0", rep("seed = 1", "seed = 1\nrtol = 0.0"), "scenario.rtol"),
    ("rtol 1", rep("seed = 1", "seed = 1\nrtol = 1"), "scenario.rtol"),
    ("atol negative", rep("seed = 1", "seed = 1\natol = -1e-9"), "scenario.atol"),
    ("atol zero fails every patient", rep("seed = 1", "seed = 1\natol = 0.0"), "scenario.atol"),
    ("max_steps 0", rep("seed = 1", "seed = 1\nmax_steps = 0"), "scenario.max_steps"),
    ("horizon 0", rep("horizon_days = 365.0", "horizon_days = 0.0"), "scenario.horizon_days"),
    ("horizon infinite", rep("horizon_days = 365.0", "horizon_days = inf"),
     "scenario.horizon_days"),
    ("unknown model", rep('model = "cart"', 'model = "carts"'), "scenario.model"),
    ("model without the scenario quantities", rep('model = "cart"', 'model = "predator_prey"'),
     "scenario.model"),
    ("unknown policy", rep('policy = "adaptive"', 'policy = "smart"'), "arms[1].policy"),
    ("no arms", only_scenario, "arms"),
    ("empty arms list", lambda t: "arms = []\n" + only_scenario(t), "arms"),
    ("arms not tables", lambda t: "arms = [1]\n" + only_scenario(t), "arms[0]"),
    ("arm name missing", rep('name = "adaptive"\n', ""), "arms[1].name"),
    ("duplicate arm names", rep('name = "adaptive"', 'name = "fixed"'), "arms[1].name"),
    ("negative dose", rep("dose_cells = 1e8", "dose_cells = -5.0"), "arms[0].dose_cells"),
    ("both dose_cells and dose_cells_per_kg",
     rep("dose_cells = 1e8", "dose_cells = 1e8\ndose_cells_per_kg = 2e6"), "arms[0].dose_cells"),
    ("fixed arm without a dose", rep("dose_cells = 1e8\n", ""), "arms[0].dose_cells"),
    ("negative dose per kg", rep("dose_cells = 1e8", "dose_cells_per_kg = -2e6"),
     "arms[0].dose_cells_per_kg"),
    ("adaptive missing target", rep("target_il6_pg_ml = 1000.0\n", ""),
     "arms[1].target_il6_pg_ml"),
    ("max_dose < min_dose", rep("max_dose_cells = 1e9", "max_dose_cells = 1e6"),
     "arms[1].max_dose_cells"),
    ("debulking_factor 0", rep("dose_cells = 1e8", "dose_cells = 1e8\ndebulking_factor = 0"),
     "arms[0].debulking_factor"),
    ("debulking_factor > 1", rep("dose_cells = 1e8", "dose_cells = 1e8\ndebulking_factor = 1.5"),
     "arms[0].debulking_factor"),
    ("unknown parameter override", add("[cohort.parameters.zz]\ntypical = 1.0\n"),
     "cohort.parameters.zz"),
    ("parameter override not a table", add("[cohort.parameters]\nk = 0.2\n"),
     "cohort.parameters.k"),
    ("negative sd_log", add("[cohort.parameters.k]\nsd_log = -0.1\n"), "cohort.parameters.k.sd_log"),
    ("typical 0", add("[cohort.parameters.k]\ntypical = 0.0\n"), "cohort.parameters.k.typical"),
    ("unknown key in a parameter override", add("[cohort.parameters.k]\nmedian = 0.1\n"),
     "cohort.parameters.k.median"),
    ("correlation not symmetric",
     add(CORRELATION.format(names='["k", "a"]', matrix="[[1.0, 0.3], [0.2, 1.0]]")),
     "cohort.correlation.matrix[1][0]"),
    ("correlation not positive definite",
     add(CORRELATION.format(names='["k", "a", "r"]', matrix="[[1.0, 0.9, -0.9], "
                            "[0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]")),
     "cohort.correlation.matrix"),
    ("correlation unknown name",
     add(CORRELATION.format(names='["k", "zz"]', matrix="[[1.0, 0.3], [0.3, 1.0]]")),
     "cohort.correlation.parameters[1]"),
    ("correlation name twice",
     add(CORRELATION.format(names='["k", "k"]', matrix="[[1.0, 0.3], [0.3, 1.0]]")),
     "cohort.correlation.parameters[1]"),
    ("correlation of one parameter", add(CORRELATION.format(names='["k"]', matrix="[[1.0]]")),
     "cohort.correlation.parameters"),
    ("correlation matrix of the wrong size",
     add(CORRELATION.format(names='["k", "a", "r"]', matrix="[[1.0, 0.3], [0.3, 1.0]]")),
     "cohort.correlation.matrix"),
    ("correlation row too short",
     add(CORRELATION.format(names='["k", "a"]', matrix="[[1.0, 0.3], [0.3]]")),
     "cohort.correlation.matrix[1]"),
    ("correlation diagonal not 1",
     add(CORRELATION.format(names='["k", "a"]', matrix="[[2.0, 0.3], [0.3, 1.0]]")),
     "cohort.correlation.matrix[0][0]"),
    ("correlation matrix missing", add('[cohort.correlation]\nparameters = ["k", "a"]\n'),
     "cohort.correlation.matrix"),
    ("unknown covariate", add("[cohort.covariates.age_years]\nmedian = 60.0\n"),
     "cohort.covariates.age_years"),
    ("covariate median 0", add("[cohort.covariates.weight_kg]\nmedian = 0.0\n"),
     "cohort.covariates.weight_kg.median"),
    ("effect on an unknown covariate",
     add('[[cohort.effects]]\nparameter = "k"\ncovariate = "age"\nexponent = 1.0\n'
         "reference = 1.0\n"), "cohort.effects[0].covariate"),
    ("effect on an unknown parameter",
     add('[[cohort.effects]]\nparameter = "zz"\ncovariate = "weight_kg"\nexponent = 1.0\n'
         "reference = 75.0\n"), "cohort.effects[0].parameter"),
    ("effect reference 0",
     add('[[cohort.effects]]\nparameter = "k"\ncovariate = "weight_kg"\nexponent = 1.0\n'
         "reference = 0.0\n"), "cohort.effects[0].reference"),
    ("effect without exponent",
     add('[[cohort.effects]]\nparameter = "k"\ncovariate = "weight_kg"\nreference = 75.0\n'),
     "cohort.effects[0].exponent"),
    ("arm parameter unknown", rep("dose_cells = 1e8", "dose_cells = 1e8\nparameters = {zz = 1.0}"),
     "arms[0].parameters.zz"),
    ("arm parameter negative", rep("dose_cells = 1e8", "dose_cells = 1e8\nparameters = {k = -0.1}"),
     "arms[0].parameters.k"),
    ("arm parameters not a table", rep("dose_cells = 1e8", "dose_cells = 1e8\nparameters = 1.0"),
     "arms[0].parameters"),
    ("arm parameter set unknown", rep("dose_cells = 1e8", 'dose_cells = 1e8\nparameter_set = "cd28"'),
     "arms[0].parameter_set"),
    ("waterfall arm unknown", add('[report.waterfall]\nbaseline = "fixed"\nfull = "adaptive"\n'
                                  'steps = ["zz"]\n'), "report.waterfall.steps[0]"),
    ("waterfall baseline unknown", add('[report.waterfall]\nbaseline = "zz"\nfull = "adaptive"\n'
                                       'steps = ["fixed"]\n'), "report.waterfall.baseline"),
    ("waterfall step is the baseline", add('[report.waterfall]\nbaseline = "fixed"\n'
                                           'full = "adaptive"\nsteps = ["fixed"]\n'),
     "report.waterfall.steps[0]"),
    ("waterfall without steps", add('[report.waterfall]\nbaseline = "fixed"\nfull = "adaptive"\n'
                                    'steps = []\n'), "report.waterfall.steps"),
    ("unknown key in report", add("[report]\nwaterfal = 1\n"), "report.waterfal"),
    ("intervention without a trigger", add(ARM_INTERVENTION + "scale = {s = 0.3}\n"),
     "arms[2].interventions[0].at_day"),
    ("intervention with two triggers", add(ARM_INTERVENTION + "at_day = 0.0\n"
                                           "il6_above_pg_ml = 500.0\nscale = {s = 0.3}\n"),
     "arms[2].interventions[0].at_day"),
    ("intervention after the horizon", add(ARM_INTERVENTION + "at_day = 400.0\nscale = {s = 0.3}\n"),
     "arms[2].interventions[0].at_day"),
    ("intervention threshold 0", add(ARM_INTERVENTION + "il6_above_pg_ml = 0.0\nscale = {s = 0.3}\n"),
     "arms[2].interventions[0].il6_above_pg_ml"),
    ("intervention changes nothing", add(ARM_INTERVENTION + "at_day = 1.0\n"),
     "arms[2].interventions[0].scale"),
    ("intervention on an unknown parameter", add(ARM_INTERVENTION + "at_day = 1.0\nscale = {zz = 2.0}\n"),
     "arms[2].interventions[0].scale.zz"),
    ("intervention scales and sets one parameter",
     add(ARM_INTERVENTION + "at_day = 1.0\nscale = {s = 0.3}\nset = {s = 1.0}\n"),
     "arms[2].interventions[0].set.s"),
    ("intervention negative factor", add(ARM_INTERVENTION + "at_day = 1.0\nscale = {s = -0.3}\n"),
     "arms[2].interventions[0].scale.s"),
    ("intervention names twice", add(ARM_INTERVENTION + "at_day = 1.0\nscale = {s = 0.3}\n"
                                     '[[arms.interventions]]\nname = "toci"\nat_day = 2.0\n'
                                     "scale = {s = 0.3}\n"),
     "arms[2].interventions[1].name"),
    ("response_day beyond horizon", add("[outcomes]\nresponse_day = 400.0\n"),
     "outcomes.response_day"),
    ("response_fraction 1", add("[outcomes]\nresponse_fraction = 1.0\n"),
     "outcomes.response_fraction"),
    ("relapse_fraction 0", add("[outcomes]\nrelapse_fraction = 0.0\n"),
     "outcomes.relapse_fraction"),
    ("thresholds not increasing",
     add("[outcomes]\ncrs_il6_thresholds_pg_ml = [100.0, 50.0, 2000.0, 5000.0]\n"),
     "outcomes.crs_il6_thresholds_pg_ml"),
    ("three thresholds", add("[outcomes]\ncrs_il6_thresholds_pg_ml = [100.0, 500.0, 2000.0]\n"),
     "outcomes.crs_il6_thresholds_pg_ml"),
    ("threshold not a number",
     add('[outcomes]\ncrs_il6_thresholds_pg_ml = [100.0, "500", 2000.0, 5000.0]\n'),
     "outcomes.crs_il6_thresholds_pg_ml[1]"),
    ("severe_crs_grade 5", add("[outcomes]\nsevere_crs_grade = 5\n"), "outcomes.severe_crs_grade"),
    ("no_detectable_disease_cells 0", add("[outcomes]\nno_detectable_disease_cells = 0.0\n"),
     "outcomes.no_detectable_disease_cells"),
    ("no_detectable_disease_cells a string",
     add('[outcomes]\nno_detectable_disease_cells = "1e9"\n'),
     "outcomes.no_detectable_disease_cells"),
    ("lead_response unknown", add('[outcomes]\nlead_response = "complete_response"\n'),
     "outcomes.lead_response"),
    ("lead_response not a string", add("[outcomes]\nlead_response = 1\n"),
     "outcomes.lead_response"),
    ("unknown key in outcomes", add("[outcomes]\nresponse_days = 28.0\n"),
     "outcomes.response_days"),
    ("unknown quoted key with a newline", add('[outcomes]\n"a\\nb" = 1\n'),
     'outcomes."a\\nb"'),
    ("empty output dir", add('[output]\ndir = ""\n'), "output.dir"),
    ("output dir not a string", add("[output]\ndir = 3\n"), "output.dir"),
    ("TOML syntax error", rep("seed = 1", "seed = "), f"line {SEED_LINE}"),
    ("table declared twice", add("[output]\ndir = \"a\"\n[output]\ndir = \"b\"\n"),
     f"line {len(BASE.splitlines()) + 4}"),
]


def test_base_is_valid():
    scenario = scenario_from_text(BASE, SOURCE)
    assert [a.name for a in scenario.arms] == ["fixed", "adaptive"]
    assert scenario.shard_size == 10_000 and scenario.rtol == 1e-6 and scenario.atol == 1e-9
    assert scenario.outcomes.crs_il6_thresholds_pg_ml == (100.0, 500.0, 2000.0, 5000.0)
    assert scenario.output.dir == "out" and scenario.run_dir == Path("out", "t")


def test_response_keys_default_and_read():
    """The absolute response threshold and the lead response: defaults, then set."""
    outcomes = scenario_from_text(BASE, SOURCE).outcomes
    assert (outcomes.no_detectable_disease_cells, outcomes.lead_response) == (1e9, "responded")
    text = add('[outcomes]\nno_detectable_disease_cells = 5e8\n'
               'lead_response = "no_detectable_disease"\n')(BASE)
    outcomes = scenario_from_text(text, SOURCE).outcomes
    assert (outcomes.no_detectable_disease_cells, outcomes.lead_response) == (
        5e8, "no_detectable_disease")


def test_lead_response_message_lists_the_choices():
    with pytest.raises(ConfigError) as caught:
        scenario_from_text(add('[outcomes]\nlead_response = "cr"\n')(BASE), SOURCE)
    assert str(caught.value) == ("bad.toml: outcomes.lead_response: expected one of "
                                 "responded, no_detectable_disease, got 'cr'")


@pytest.mark.parametrize("description, mutate, key", MALFORMED,
                         ids=[case[0] for case in MALFORMED])
def test_malformed_config_names_the_key(description, mutate, key):
    text = mutate(BASE)
    assert text != BASE
    with pytest.raises(ConfigError) as caught:
        scenario_from_text(text, SOURCE)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{SOURCE}: {key}: "), message
    assert len(message) > len(f"{SOURCE}: {key}: ")


def test_enough_malformed_cases():
    assert len(MALFORMED) >= 24


def test_messages_say_what_is_wrong():
    def error(text):
        with pytest.raises(ConfigError) as caught:
            scenario_from_text(text, SOURCE)
        return str(caught.value)

    assert error(rep("dose_cells = 1e8", "dose_cells = -5.0")(BASE)) == (
        "bad.toml: arms[0].dose_cells: must be > 0, got -5.0")
    assert error(rep("seed = 1", "seed = 1\nsede = 2")(BASE)) == (
        "bad.toml: scenario.sede: unknown key; allowed keys: name, description, model, seed, "
        "patients, shard_size, horizon_days, rtol, atol, max_steps")
    assert "expected an integer, got float 100.0" in error(
        rep("patients = 100", "patients = 100.0")(BASE))
    assert "expected a number, got boolean true" in error(
        rep("horizon_days = 365.0", "horizon_days = true")(BASE))
    assert "expected one of " in error(
        rep('model = "cart"', 'model = "carts"')(BASE))
    assert "unknown key for policy 'fixed'" in error(
        rep("dose_cells = 1e8", "dose_cells = 1e8\ntarget_il6_pg_ml = 5.0")(BASE))
    assert error(rep("seed = 1", "seed = ")(BASE)).startswith(
        f"bad.toml: line {SEED_LINE}: Invalid value (column ")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.toml")            # scenarios, not fit configs
                 if "[scenario]" in p.read_text(encoding="utf-8"))
SAME_PATIENTS_AS_DEFAULT = ("debulking", "dose_response", "prophylaxis")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_is_valid_and_named_after_its_file(name):
    path = CONFIGS / f"{name}.toml"
    scenario = load_scenario(path)
    assert scenario.name == name
    assert scenario.text == path.read_text(encoding="utf-8")
    assert scenario.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert scenario.source_path == str(path) and scenario.overrides == ()


def test_the_default_config():
    scenario = load_scenario(CONFIGS / "default.toml")
    model = get_model(scenario.model)
    assert scenario.model == "cart2"
    assert (scenario.patients, scenario.shard_size, scenario.seed) == (100_000, 10_000, 20240601)
    assert scenario.horizon_days == 365.0 and scenario.n_shards == 10
    assert {a.name: a.policy for a in scenario.arms} == {
        "fixed": "fixed", "adaptive": "adaptive", "oracle": "oracle"}
    cohort = scenario.cohort
    assert isinstance(cohort, CohortSpec)
    assert tuple(p.name for p in cohort.parameters) == model.parameter_names
    for spec, parameter in zip(cohort.parameters, model.parameters):
        assert (spec.typical, spec.sd_log) == (parameter.typical, parameter.sd_log)
    assert [(c.name, c.median, c.sd_log) for c in cohort.covariates] == [
        ("tumour_burden_cells", 1e11, 1.2), ("weight_kg", 75.0, 0.2)]
    assert cohort.effects == () and cohort.correlation is None
    for arm in scenario.arms:
        if arm.policy == "fixed":
            assert arm.dose_cells == 1e8 and arm.dose_cells_per_kg is None
        else:
            assert (arm.target_il6_pg_ml, arm.min_dose_cells, arm.max_dose_cells) == (
                700.0, 1e7, 1e9)
        assert arm.debulking_factor == 1.0
    assert scenario.outcomes.lead_response == "no_detectable_disease"
    assert scenario.outcomes.no_detectable_disease_cells == 1e9


def test_the_debulking_config_sweeps_the_factor():
    scenario = load_scenario(CONFIGS / "debulking.toml")
    assert [a.debulking_factor for a in scenario.arms if a.policy == "fixed"] == [
        1.0, 0.5, 0.2, 0.1, 0.05, 0.01]
    assert all(a.dose_cells == 1e8 for a in scenario.arms if a.policy == "fixed")


@pytest.mark.parametrize("name", SAME_PATIENTS_AS_DEFAULT)
def test_shipped_configs_share_the_default_patients(name):
    # a patient's draws depend on (seed, shard, index in shard) only: the same
    # cohort, seed and shard size give the default scenario's first patients
    default, other = load_scenario(CONFIGS / "default.toml"), load_scenario(CONFIGS / f"{name}.toml")
    assert (default.model, default.cohort, default.seed, default.shard_size) == (
        other.model, other.cohort, other.seed, other.shard_size)
    assert other.patients <= default.patients


def test_cohort_tables_build_the_spec():
    text = BASE + """
[cohort.parameters.k]
typical = 0.3
[cohort.parameters.a]
sd_log = 0
[cohort.correlation]
parameters = ["k", "a"]
matrix = [[1, 0.3], [0.3, 1]]
[cohort.covariates.weight_kg]
median = 70
[[cohort.effects]]
parameter = "k"
covariate = "weight_kg"
exponent = -0.25
reference = 70
[[cohort.effects]]
parameter = "k"
covariate = "tumour_burden_cells"
exponent = 0.1
reference = 1e10
"""
    cohort = scenario_from_text(text, SOURCE).cohort
    by_name = {p.name: p for p in cohort.parameters}
    model = get_model("cart")
    assert (by_name["k"].typical, by_name["k"].sd_log) == (0.3, model.parameters[
        model.parameter_index("k")].sd_log)
    assert by_name["a"].sd_log == 0.0 and isinstance(by_name["a"].sd_log, float)
    assert cohort.correlation == (("k", "a"), ((1.0, 0.3), (0.3, 1.0)))
    assert cohort.covariates[1].median == 70.0 and cohort.covariates[1].sd_log == 0.2
    assert [(e.parameter, e.covariate, e.exponent, e.reference) for e in cohort.effects] == [
        ("k", "weight_kg", -0.25, 70.0), ("k", "tumour_burden_cells", 0.1, 1e10)]


def test_integers_are_accepted_as_numbers():
    scenario = scenario_from_text(rep("horizon_days = 365.0", "horizon_days = 365")(BASE))
    assert scenario.horizon_days == 365.0 and isinstance(scenario.horizon_days, float)
    assert scenario.source_path == "<string>"


def test_overrides():
    scenario = scenario_from_text(BASE, SOURCE)
    changed = with_overrides(scenario, patients=25, shard_size=10, seed=7)
    assert (changed.patients, changed.shard_size, changed.seed, changed.n_shards) == (25, 10, 7, 3)
    assert changed.overrides == (("patients", 25), ("seed", 7), ("shard_size", 10))
    assert changed.sha256 != scenario.sha256
    assert changed.text == scenario.text and changed.arms == scenario.arms
    # the hash depends on the overrides only, not on how they were applied
    step = with_overrides(with_overrides(scenario, seed=7), patients=25, shard_size=10)
    assert step == changed
    assert with_overrides(scenario, seed=8).sha256 not in (scenario.sha256, changed.sha256)
    # an override equal to the file's value (or its default) changes nothing
    assert with_overrides(scenario, patients=100, shard_size=10_000) == scenario
    assert with_overrides(changed, patients=100, shard_size=10_000, seed=1) == scenario
    assert with_overrides(scenario) == scenario


@pytest.mark.parametrize("overrides, key", [
    ({"patients": 0}, "scenario.patients"),
    ({"shard_size": -1}, "scenario.shard_size"),
    ({"seed": -1}, "scenario.seed"),
    ({"patients": True}, "scenario.patients"),
    ({"seed": 1.5}, "scenario.seed"),
])
def test_invalid_overrides(overrides, key):
    with pytest.raises(ConfigError) as caught:
        with_overrides(scenario_from_text(BASE, SOURCE), **overrides)
    assert str(caught.value).startswith(f"{SOURCE}: {key}: ")


def cartcohort(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("description", [
    "unknown key in scenario", "negative dose", "unknown model", "no arms",
    "correlation not positive definite", "TOML syntax error", "lead_response unknown"])
def test_validate_rejects(tmp_path, description):
    mutate, key = next((m, k) for d, m, k in MALFORMED if d == description)
    (tmp_path / SOURCE).write_text(mutate(BASE), encoding="utf-8")
    result = cartcohort("validate", SOURCE, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cartcohort validate: error: {SOURCE}: {key}: ")
    assert [p.name for p in tmp_path.iterdir()] == [SOURCE]


def test_validate_missing_file(tmp_path):
    result = cartcohort("validate", "nope.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "cartcohort validate: error: nope.toml: cannot read: No such file or directory\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["default", "debulking", "prophylaxis"])
def test_validate_shipped_config(tmp_path, name):
    path = CONFIGS / f"{name}.toml"
    result = cartcohort("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    scenario = load_scenario(path)
    assert scenario.sha256 in out and f"{scenario.name} (" in out
    for arm in scenario.arms:
        assert f"arm {arm.name}" in out and arm.policy in out
    assert f"{scenario.patients} in {scenario.n_shards} shard(s)" in out
    assert list(tmp_path.iterdir()) == []


# -- [cluster.slurm] ------------------------------------------------------------

SLURM = """\
[cluster.slurm]
partition = "debug"
account = "proj42"
cores = 4
processes = 2
memory = "8GB"
walltime = "02:30:00"
jobs = 10
interface = "ib0"
job_name = "cohort-x"
job_extra = ["--qos=normal", "--exclusive"]
"""


def test_cluster_slurm_defaults_when_absent():
    from pipeline.config import SlurmSettings

    settings = scenario_from_text(BASE, SOURCE).cluster_slurm
    assert settings == SlurmSettings()
    assert (settings.partition, settings.account, settings.interface) == (None, None, None)
    assert (settings.cores, settings.processes, settings.jobs) == (1, 1, 2)
    assert (settings.memory, settings.walltime) == ("2GB", "01:00:00")
    assert settings.job_name == "cartcohort" and settings.job_extra == ()
    assert scenario_from_text(BASE + "\n[cluster.slurm]\n", SOURCE).cluster_slurm == settings


def test_cluster_slurm_table():
    settings = scenario_from_text(BASE + "\n" + SLURM, SOURCE).cluster_slurm
    assert settings.partition == "debug" and settings.account == "proj42"
    assert (settings.cores, settings.processes, settings.jobs) == (4, 2, 10)
    assert (settings.memory, settings.walltime) == ("8GB", "02:30:00")
    assert settings.interface == "ib0" and settings.job_name == "cohort-x"
    assert settings.job_extra == ("--qos=normal", "--exclusive")
    with pytest.raises(Exception):                   # frozen
        settings.jobs = 3


SLURM_MALFORMED = [
    ("unknown cluster table", add("[cluster.pbs]\nqueue = \"q\"\n"), "cluster.pbs"),
    ("unknown slurm key", add("[cluster.slurm]\nqueue = \"debug\"\n"), "cluster.slurm.queue"),
    ("cluster.slurm not a table", add("[cluster]\nslurm = 3\n"), "cluster.slurm"),
    ("zero cores", add("[cluster.slurm]\ncores = 0\n"), "cluster.slurm.cores"),
    ("float jobs", add("[cluster.slurm]\njobs = 2.0\n"), "cluster.slurm.jobs"),
    ("zero jobs", add("[cluster.slurm]\njobs = 0\n"), "cluster.slurm.jobs"),
    ("processes above cores", add("[cluster.slurm]\ncores = 2\nprocesses = 3\n"),
     "cluster.slurm.processes"),
    ("memory without unit", add("[cluster.slurm]\nmemory = \"2\"\n"), "cluster.slurm.memory"),
    ("memory a number", add("[cluster.slurm]\nmemory = 2\n"), "cluster.slurm.memory"),
    ("walltime in minutes", add("[cluster.slurm]\nwalltime = \"90\"\n"),
     "cluster.slurm.walltime"),
    ("walltime with 60 minutes", add("[cluster.slurm]\nwalltime = \"01:60:00\"\n"),
     "cluster.slurm.walltime"),
    ("empty partition", add("[cluster.slurm]\npartition = \"\"\n"), "cluster.slurm.partition"),
    ("job_extra not an array", add("[cluster.slurm]\njob_extra = \"--qos=x\"\n"),
     "cluster.slurm.job_extra"),
    ("job_extra of numbers", add("[cluster.slurm]\njob_extra = [\"--qos=x\", 1]\n"),
     "cluster.slurm.job_extra[1]"),
    ("boolean interface", add("[cluster.slurm]\ninterface = true\n"), "cluster.slurm.interface"),
]


@pytest.mark.parametrize("description, mutate, key", SLURM_MALFORMED,
                         ids=[case[0] for case in SLURM_MALFORMED])
def test_malformed_cluster_slurm_names_the_key(description, mutate, key):
    with pytest.raises(ConfigError) as caught:
        scenario_from_text(mutate(BASE), SOURCE)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{SOURCE}: {key}: "), message
    assert len(message) > len(f"{SOURCE}: {key}: ")


def test_cluster_slurm_messages():
    def error(extra):
        with pytest.raises(ConfigError) as caught:
            scenario_from_text(BASE + "\n" + extra, SOURCE)
        return str(caught.value)

    assert error("[cluster.slurm]\nqueue = \"q\"\n") == (
        "bad.toml: cluster.slurm.queue: unknown key; allowed keys: partition, account, "
        "cores, processes, memory, walltime, jobs, interface, job_name, job_extra")
    assert error("[cluster.slurm]\ncores = 2\nprocesses = 3\n") == (
        "bad.toml: cluster.slurm.processes: must be <= cores (2), got 3")
    assert error("[cluster.slurm]\nwalltime = \"1:00\"\n") == (
        "bad.toml: cluster.slurm.walltime: must be of the form \"HH:MM:SS\", got '1:00'")


def test_cluster_slurm_settings_with_command_line_flags():
    """The flags of `cartcohort run` replace the table's values; absent ones keep them."""
    import argparse

    from pipeline.clusters import slurm_settings

    scenario = scenario_from_text(BASE + "\n" + SLURM, SOURCE)
    flags = dict(partition=None, account=None, cores=None, memory="1GB", walltime=None,
                 jobs=3, interface="lo", job_name=None, job_extra=["--comment=x"])
    settings = slurm_settings(scenario, argparse.Namespace(**flags))
    assert (settings.partition, settings.cores, settings.processes) == ("debug", 4, 2)
    assert (settings.memory, settings.jobs, settings.interface) == ("1GB", 3, "lo")
    assert settings.job_extra == ("--comment=x",) and settings.walltime == "02:30:00"
    with pytest.raises(ValueError, match="--cores 1"):
        slurm_settings(scenario, argparse.Namespace(**{**flags, "cores": 1}))


ARM_PARAMETERS = """\
[scenario]
name = "t"
model = "cart"
seed = 3
patients = 50
horizon_days = 30.0

[cohort.parameters.k]
typical = 0.2
sd_log = 0.5

[[arms]]
name = "reference"
policy = "fixed"
dose_cells = 1e8

[[arms]]
name = "stronger"
policy = "fixed"
dose_cells = 1e8
parameters = {k = 0.4, a = 0.0}
"""


def test_arm_parameters_set_typical_values_and_keep_each_patients_deviation():
    from pipeline.cohort import sample_shard
    from pipeline.shard import arm_parameters

    scenario = scenario_from_text(ARM_PARAMETERS)
    model = get_model("cart")
    reference, stronger = scenario.arms
    assert stronger.parameters == (("k", 0.4), ("a", 0.0))
    assert stronger.describe() == "fixed: 1e+08 cells, k = 0.4, a = 0"
    shard = sample_shard(scenario.cohort, scenario.seed, 0, 50, 50)
    assert arm_parameters(model, scenario, reference, shard.params) is shard.params
    changed = arm_parameters(model, scenario, stronger, shard.params)
    k, a = model.parameter_index("k"), model.parameter_index("a")
    assert np.allclose(changed[:, k], shard.params[:, k] * 2.0, rtol=1e-15)
    assert np.all(changed[:, a] == 0.0)
    untouched = [j for j in range(len(model.parameters)) if j not in (k, a)]
    assert np.array_equal(changed[:, untouched], shard.params[:, untouched])
    assert np.std(np.log(changed[:, k])) > 0.3          # the spread is kept


def test_interventions_are_read_in_order_and_described():
    text = BASE + ARM_INTERVENTION + ('il6_above_pg_ml = 500.0\nscale = {s = 0.3, a = 0.7}\n'
                                      '[[arms.interventions]]\nname = "late"\nat_day = 10.0\n'
                                      'set = {c = 4.0}\n')
    arm = scenario_from_text(text).arms[2]
    assert [i.name for i in arm.interventions] == ["toci", "late"]
    assert arm.interventions[0].scale == (("s", 0.3), ("a", 0.7))
    assert arm.interventions[1].at_day == 10.0 and arm.interventions[1].set == (("c", 4.0),)
    assert arm.describe() == ("fixed: 1e+08 cells, toci at IL-6 >= 500 pg/mL (s x0.3, a x0.7), "
                              "late at day 10 (c = 4)")
