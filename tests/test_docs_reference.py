"""The user reference in docs/ says what the code does.

(a) docs/dataset.md documents every column the real code writes. Each shipped
scenario in configs/ is run for one 3-patient shard (``run_shard``), and so is a
small scenario for every model that can run a scenario but has no shipped one.
Every column of both tables must have a row in the doc's column tables:
patients columns under "## The patients dataset", trajectories columns under
"## The trajectories dataset". No row may name a column that no run writes, and
every renamed column must list its old spelling under "## Renamed columns".
The shipped horizons are kept (``with_overrides`` changes only patients,
shard_size and seed). With the kernel already compiled the 9 runs take about
1 s; compiling it the first time (shared with every test that runs the kernel)
takes minutes on 2 cores.
(b) docs/configuration.md documents every key of the scenario schema
(``pipeline.config``'s ``_Key`` tables). Each key has a row in its table's
section, and the row gives the key's type and its default.
"""
import re
import time
from pathlib import Path

import pytest

from kernels.models import MODELS, get_model
from pipeline import config
from pipeline.config import ConfigError, load_scenario, scenario_from_text, with_overrides
from pipeline.estimate.fitconfig import is_fit_config
from pipeline.query import old_spelling
from pipeline.shard import run_shard

try:
    import tomllib
except ModuleNotFoundError:           # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DATASET_DOC = ROOT / "docs" / "dataset.md"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
CONFIGS = ROOT / "configs"
PATIENTS = 3                # patients (and shard size) of each run: one small shard

# Families of columns that may be documented by a pattern instead of by name,
# and when a column belongs to one: param_<name> and arm_param_<name> for a
# parameter of the scenario's model, t_<name>_d for an intervention of the scenario.
PATTERNS = ("param_<name>", "arm_param_<name>", "t_<name>_d")
# added by the readers from the arm=<arm> folders, not stored in the files
READER_COLUMNS = {"arm"}

# a scenario for a model without a shipped one (its landmark days up to 90 fit)
MODEL_SCENARIO = """
[scenario]
name = "docs_{model}"
model = "{model}"
seed = 1
patients = 3
shard_size = 3
horizon_days = 120.0

[[arms]]
name = "fixed"
policy = "fixed"
dose_cells = 1e8
"""


# -- reading the docs -----------------------------------------------------------

def _headings(text):
    """[(line index, level, heading text)] outside code fences."""
    found, fenced = [], False
    for i, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"(#{1,6})\s+(.*?)\s*$", line)
        if match:
            found.append((i, len(match.group(1)), match.group(2)))
    return found


def section(text, wanted, nested):
    """The lines of the section whose heading contains ``wanted``, up to the next
    heading (``nested``: the next of the same or a higher level, so that its
    subsections are included). AssertionError if there is none, or several."""
    lines = text.splitlines()
    heads = _headings(text)
    hits = [k for k, (_, _, heading) in enumerate(heads) if wanted in heading]
    assert len(hits) == 1, f"expected one heading with {wanted!r}, found {len(hits)}"
    k = hits[0]
    start, level, _ = heads[k]
    end = len(lines)
    for i, other, _ in heads[k + 1:]:
        if not nested or other <= level:
            end = i
            break
    return lines[start + 1:end]


def cells(line):
    """The cells of a Markdown table row (``\\|`` is a pipe inside a cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def column_rows(lines):
    """Names in backticks in the first cell of the rows of the tables whose
    header's first cell is "column"."""
    names, in_table = set(), False
    for line in lines:
        if not line.startswith("|"):
            in_table = False
            continue
        row = cells(line)
        if not in_table:
            in_table = bool(row) and row[0] == "column"
            continue
        if set(row[0]) <= set("-: "):
            continue                      # the separator row
        names.update(re.findall(r"`([^`]+)`", row[0]))
    return names


def key_rows(lines):
    """{key: cells} of the table rows whose first cell is a key in backticks."""
    rows = {}
    for line in lines:
        if line.startswith("|"):
            row = cells(line)
            match = re.fullmatch(r"`([\w-]+)`", row[0]) if row else None
            if match:
                rows[match.group(1)] = row
    return rows


# -- running the code -----------------------------------------------------------

def can_run_scenario(model):
    return all(role in model.roles for role in config.SCENARIO_ROLES)


def shipped_scenarios():
    """Scenario files of configs/. Targets and FIT.toml files are skipped. A file
    with a [scenario] table must validate; any other file must be one of those
    two kinds."""
    scenarios = []
    for path in sorted(CONFIGS.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        try:
            scenarios.append(load_scenario(path))
        except ConfigError as exc:
            if "scenario" in data:
                pytest.fail(f"shipped scenario does not validate: {exc}")
            assert is_fit_config(path) or "calibration" in data, (
                f"{path.name}: neither a scenario, a FIT.toml nor a targets file ({exc})")
    return scenarios


@pytest.fixture(scope="module")
def runs():
    """[(label, scenario, patients columns, trajectories columns)]: one
    ``PATIENTS``-patient shard of every shipped scenario, then of every model
    that can run a scenario but has no shipped one (``MODEL_SCENARIO``)."""
    scenarios = [(Path(s.source_path).name, with_overrides(s, patients=PATIENTS,
                                                             shard_size=PATIENTS))
                 for s in shipped_scenarios()]
    shipped_models = {s.model for _, s in scenarios}
    for name in MODELS:
        if name not in shipped_models and can_run_scenario(get_model(name)):
            scenarios.append((f"model {name}",
                              scenario_from_text(MODEL_SCENARIO.format(model=name))))
    started = time.monotonic()
    results = []
    for label, scenario in scenarios:
        tables = run_shard(scenario, 0)
        patients = [table.schema.names for table, _ in tables.values()]
        trajectories = [table.schema.names for _, table in tables.values()]
        assert all(names == patients[0] for names in patients), f"{label}: arms differ"
        assert all(names == trajectories[0] for names in trajectories), label
        results.append((label, scenario, patients[0], trajectories[0]))
    print(f"\nrun_shard of {len(results)} scenarios, {PATIENTS} patients each: "
          f"{time.monotonic() - started:.1f} s")
    return results


def pattern_of(column, scenario):
    """The family of :data:`PATTERNS` ``column`` belongs to, or None."""
    parameters = get_model(scenario.model).parameter_names
    interventions = {i.name for arm in scenario.arms for i in arm.interventions}
    if column.startswith("arm_param_") and column[len("arm_param_"):] in parameters:
        return "arm_param_<name>"
    if column.startswith("param_") and column[len("param_"):] in parameters:
        return "param_<name>"
    match = re.fullmatch(r"t_(\w+)_d", column)
    if match and match.group(1) in interventions:
        return "t_<name>_d"
    return None


def undocumented(columns, documented, scenario):
    return [c for c in columns
            if c not in documented and pattern_of(c, scenario) not in documented]


# -- (a) docs/dataset.md -----------------------------------------------------------

@pytest.fixture(scope="module")
def dataset_doc():
    text = DATASET_DOC.read_text(encoding="utf-8")
    return {"patients": column_rows(section(text, "The patients dataset", nested=True)),
            "trajectories": column_rows(section(text, "The trajectories dataset", nested=True)),
            "renamed": "\n".join(section(text, "Renamed columns", nested=True))}


def test_every_model_that_runs_a_scenario_is_covered(runs):
    covered = {scenario.model for _, scenario, _, _ in runs}
    runnable = {name for name in MODELS if can_run_scenario(get_model(name))}
    assert covered == runnable
    text = DATASET_DOC.read_text(encoding="utf-8")
    for name in set(MODELS) - runnable:          # e.g. predator_prey, kinetics
        with pytest.raises(ConfigError, match="cannot run a scenario"):
            scenario_from_text(MODEL_SCENARIO.format(model=name))
        assert f"`{name}`" in text, f"dataset.md does not say that {name} writes no dataset"


def test_every_patients_column_is_documented(runs, dataset_doc):
    documented = dataset_doc["patients"]
    assert READER_COLUMNS <= documented
    for label, scenario, patients, _ in runs:
        missing = undocumented(patients, documented, scenario)
        assert not missing, (f"{label} ({scenario.model}): patients columns missing from "
                             f"docs/dataset.md: {missing}")


def test_every_trajectories_column_is_documented(runs, dataset_doc):
    documented = dataset_doc["trajectories"]
    assert READER_COLUMNS <= documented
    for label, scenario, _, trajectories in runs:
        missing = undocumented(trajectories, documented, scenario)
        assert not missing, (f"{label} ({scenario.model}): trajectories columns missing "
                             f"from docs/dataset.md: {missing}")


def test_no_documented_column_is_stale(runs, dataset_doc):
    """Every name in a column row is written by some run, is a pattern of
    :data:`PATTERNS`, or is added by the readers."""
    for dataset, position in (("patients", 2), ("trajectories", 3)):
        written = {c for run in runs for c in run[position]}
        stale = dataset_doc[dataset] - written - set(PATTERNS) - READER_COLUMNS
        assert not stale, f"docs/dataset.md documents {dataset} columns no run writes: {stale}"


def test_renamed_columns_list_their_old_names(runs, dataset_doc):
    renamed = {c for _, _, patients, trajectories in runs for c in patients + trajectories
               if old_spelling(c)}
    assert "tumour_min_cells" in renamed
    for column in sorted(renamed):
        for name in (column, old_spelling(column)):
            assert f"`{name}`" in dataset_doc["renamed"], (
                f"docs/dataset.md, Renamed columns: no `{name}`")


# -- (b) docs/configuration.md -----------------------------------------------------

def allowed_keys(text, path):
    """The keys of a table that ``pipeline.config`` builds inside a function: the
    "allowed keys" of the error for an unknown key there."""
    with pytest.raises(ConfigError) as error:
        scenario_from_text(text)
    assert error.value.key == path, str(error.value)
    return error.value.message.split("allowed keys: ")[1].split(", ")


_ONE_ARM = '[[arms]]\nname = "a"\npolicy = "fixed"\ndose_cells = 1e8\n'
_BASE = ('[scenario]\nname = "x"\nmodel = "cart2"\nseed = 1\npatients = 1\n'
         'horizon_days = 10.0\n' + _ONE_ARM)


def schema_sections():
    """[(heading token, {key: _Key or None})]: every schema table and where
    docs/configuration.md documents it (None: a key whose type and default the
    module keeps inside a function; only its presence is checked)."""
    Key = config._Key
    policy_keys = {}
    for keys in config._POLICY_KEYS.values():
        policy_keys.update(keys)
    effects = allowed_keys(_BASE + "[[cohort.effects]]\nunknown = 1\n",
                           "cohort.effects[0].unknown")
    sections = [
        ("Top-level tables", config._TOP),
        ("`[scenario]`", config._SCENARIO),
        ("`[cohort]`", config._COHORT),
        ("`[cohort.parameters.<parameter>]`", config._PARAMETER),
        ("`[cohort.correlation]`", config._CORRELATION),
        ("`[cohort.covariates]`", {name: Key(dict, {}) for name in config.COVARIATES}),
        ("`[[cohort.effects]]`", dict.fromkeys(effects)),
        ("`[[arms]]`", config._ARM),
        ("`[[arms]]`", policy_keys),
        ("`[[arms.interventions]]`", config._INTERVENTION),
        ("`[outcomes]`", config._OUTCOMES),
        ("`[report]`", config._REPORT),
        ("`[report.waterfall]`", config._WATERFALL),
        ("`[output]`", config._OUTPUT),
        ("`[cluster]`", config._CLUSTER),
        ("`[cluster.slurm]`", config._SLURM),
    ]
    for name, (median, sd_log) in config.COVARIATES.items():
        keys = allowed_keys(_BASE + f"[cohort.covariates.{name}]\nunknown = 1\n",
                            f"cohort.covariates.{name}.unknown")
        assert keys == ["median", "sd_log"], keys
        sections.append((f"`[cohort.covariates.{name}]`", {"median": Key(float, median),
                                                           "sd_log": Key(float, sd_log)}))
    return sections


def type_name(kind):
    """How the doc names a _Key kind: "number", "array of strings", ..."""
    plural = {str: "strings", int: "integers", float: "numbers", dict: "tables"}

    def many(inner):
        return "arrays of " + many(inner[0]) if isinstance(inner, list) else plural[inner]
    if isinstance(kind, list):
        return "array of " + many(kind[0])
    return {str: "string", int: "integer", float: "number", dict: "table"}[kind]


def documented_default(cell):
    """A default cell: "required...", "none..." or a TOML value in backticks."""
    if cell.startswith("required"):
        return config._REQUIRED
    if cell.startswith("none"):
        return None
    match = re.match(r"`([^`]*)`", cell)
    assert match, f"default {cell!r} is neither required, none nor a `TOML value`"
    return tomllib.loads("v = " + match.group(1))["v"]


def test_every_schema_table_has_a_section():
    """A new ``_Key`` table in pipeline.config must be mapped (and documented)."""
    mapped = {id(keys) for _, keys in schema_sections()}
    tables = [name for name, value in vars(config).items()
              if isinstance(value, dict) and value
              and all(isinstance(v, config._Key) for v in value.values())]
    assert {"_SCENARIO", "_ARM", "_OUTCOMES", "_SLURM"} <= set(tables)
    assert [name for name in tables if id(getattr(config, name)) not in mapped] == []
    assert set(config._POLICY_KEYS) == set(config.POLICIES)


def test_every_config_key_is_documented_with_its_type_and_default():
    text = CONFIGURATION_DOC.read_text(encoding="utf-8")
    for heading, keys in schema_sections():
        rows = key_rows(section(text, heading, nested=False))
        missing = [key for key in keys if key not in rows]
        assert not missing, f"docs/configuration.md, {heading}: no row for {missing}"
        for key, spec in keys.items():
            if spec is None:
                continue
            _, kind, default = rows[key][:3]
            assert kind.startswith(type_name(spec.kind)), (
                f"{heading} {key}: type {kind!r}, the schema's is {type_name(spec.kind)!r}")
            if spec.kind is dict or isinstance(spec.kind, list) and spec.kind[0] is dict:
                continue                  # a table's default is described in words
            expected = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            assert documented_default(default) == expected, (
                f"{heading} {key}: default {default!r}, the schema's is {spec.default!r}")


def test_policies_and_models_are_named_in_configuration_doc():
    text = CONFIGURATION_DOC.read_text(encoding="utf-8")
    for name in config.POLICIES:
        assert f"`{name}`" in text, name
    for name in MODELS:
        assert f"`{name}`" in text, name
