"""A calibration's targets file: published summary statistics and what to fit.

``load_targets(path)`` reads and validates a TOML file like
``configs/targets_dlbcl.toml`` into a :class:`TargetsSpec`; any problem is a
:class:`pipeline.config.ConfigError`, one line naming the file and the key.

Keys
----

[calibration]
    scenario         str, required: the scenario file whose model, cohort, arm and
                     outcome rules define the virtual cohort (relative to this file)
    arm              str, required: the scenario arm the targets describe
    patients         int >= 10, default 4000: the fixed virtual cohort (common random
                     numbers: the same patients at every evaluation, so the objective
                     is a deterministic function of the parameters)
    seed             int >= 0, default the scenario's seed
    fit              array of >= 1 distinct model parameter names, required: the
                     typical values fitted (on the log scale)
    bound_factor     number > 1, default 10: each fitted value stays within
                     [start / bound_factor, start x bound_factor]
    screen           array of model parameter names, default []: parameters not
                     fitted whose local sensitivity is reported
    smoothing_log10  number > 0, default 0.05: width (log10 units) of the logistic
                     that replaces a rate's 0/1 threshold in the objective
    max_evaluations  int >= 1, default 400: cohort simulations the optimiser may use
                     (about: it stops at the first iteration past them)

[[targets]]                       at least one
    name             str, required, unique: a label
    statistic        str, required: "rate" (fraction of patients with a boolean
                     outcome), "median" (of a column) or "median_ratio" (median over
                     patients of numerator / denominator)
    outcome          str: for "rate", one of responded, no_detectable_disease,
                     severe_crs
    tertile          int 1..3, optional: for "rate", only the patients in that
                     tertile of tumour burden at infusion (1: the smallest)
    column           str: for "median", a dataset column (e.g. t_cart_peak_d)
    numerator, denominator  str: for "median_ratio", dataset columns
    value            number, required (> 0 when scale is "log")
    sd               number > 0, required: residual = (achieved - value) / sd, or on
                     the natural-log scale (ln achieved - ln value) / sd
    scale            "linear" (default) or "log"
    source           str, required: where the number comes from
"""
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:           # Python 3.10
    import tomli as tomllib

from pipeline.config import ConfigError, read_text

STATISTICS = ("rate", "median", "median_ratio")
RATE_OUTCOMES = ("responded", "no_detectable_disease", "severe_crs")
_STATISTIC_KEYS = {"rate": {"outcome"}, "median": {"column"},
                   "median_ratio": {"numerator", "denominator"}}
_CALIBRATION_KEYS = {"scenario", "arm", "patients", "seed", "fit", "bound_factor", "screen",
                     "smoothing_log10", "max_evaluations"}
_TARGET_KEYS = {"name", "statistic", "outcome", "tertile", "column", "numerator",
                "denominator", "value", "sd", "scale", "source"}


@dataclass(frozen=True)
class Target:
    name: str
    statistic: str
    value: float
    sd: float
    source: str
    scale: str = "linear"
    outcome: str = None
    tertile: int = None
    column: str = None
    numerator: str = None
    denominator: str = None

    def describe(self):
        """'rate of responded (tertile 3)', 'median t_cart_peak_d', ..."""
        if self.statistic == "rate":
            where = f" (burden tertile {self.tertile})" if self.tertile else ""
            return f"rate of {self.outcome}{where}"
        if self.statistic == "median":
            return f"median {self.column}"
        return f"median {self.numerator} / {self.denominator}"


@dataclass(frozen=True)
class TargetsSpec:
    source: str
    scenario_path: str
    arm: str
    patients: int
    seed: int              # None: the scenario's
    fit: tuple
    bound_factor: float
    screen: tuple
    smoothing_log10: float
    max_evaluations: int
    targets: tuple


def _number(src, key, value, low=None, strict=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(src, key, f"expected a number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ConfigError(src, key, f"must be {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def _integer(src, key, value, low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(src, key, f"expected an integer, got {value!r}")
    if value < low:
        raise ConfigError(src, key, f"must be >= {low}, got {value!r}")
    return value


def _names(src, key, value, allow_empty=False):
    if (not isinstance(value, list) or not all(isinstance(v, str) for v in value)
            or (not value and not allow_empty)):
        raise ConfigError(src, key, f"expected {'an' if allow_empty else 'a non-empty'} "
                                    f"array of parameter names, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(src, key, f"names must be distinct, got {value!r}")
    return tuple(value)


def _unknown(src, path, table, allowed):
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(src, f"{path}.{extra[0]}",
                          f"unknown key; allowed keys: {', '.join(sorted(allowed))}")


def _target(src, path, raw, seen):
    if not isinstance(raw, dict):
        raise ConfigError(src, path, "expected a table")
    _unknown(src, path, raw, _TARGET_KEYS)
    for key in ("name", "statistic", "value", "sd", "source"):
        if key not in raw:
            raise ConfigError(src, f"{path}.{key}", "required key is missing")
    for key in ("name", "statistic", "source", "outcome", "column", "numerator",
                "denominator", "scale"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(src, f"{path}.{key}", f"expected a string, got {raw[key]!r}")
    name, statistic = raw["name"], raw["statistic"]
    if name in seen:
        raise ConfigError(src, f"{path}.name", f"duplicate target name {name!r}")
    if statistic not in STATISTICS:
        raise ConfigError(src, f"{path}.statistic",
                          f"expected one of {', '.join(STATISTICS)}, got {statistic!r}")
    needed = _STATISTIC_KEYS[statistic]
    for key in sorted(needed - set(raw)):
        raise ConfigError(src, f"{path}.{key}", f"required for statistic {statistic!r}")
    for key in sorted((_STATISTIC_KEYS["rate"] | _STATISTIC_KEYS["median"]
                       | _STATISTIC_KEYS["median_ratio"] | {"tertile"}) - needed):
        if key in raw and not (key == "tertile" and statistic == "rate"):
            raise ConfigError(src, f"{path}.{key}", f"not used by statistic {statistic!r}")
    if statistic == "rate" and raw["outcome"] not in RATE_OUTCOMES:
        raise ConfigError(src, f"{path}.outcome", f"expected one of "
                                                  f"{', '.join(RATE_OUTCOMES)}, got "
                                                  f"{raw['outcome']!r}")
    scale = raw.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise ConfigError(src, f"{path}.scale", f"expected linear or log, got {scale!r}")
    tertile = raw.get("tertile")
    if tertile is not None and (_integer(src, f"{path}.tertile", tertile, 1) > 3):
        raise ConfigError(src, f"{path}.tertile", f"must be 1, 2 or 3, got {tertile!r}")
    value = _number(src, f"{path}.value", raw["value"], 0.0 if scale == "log" else None)
    return Target(name=name, statistic=statistic, value=value,
                  sd=_number(src, f"{path}.sd", raw["sd"], 0.0), source=raw["source"],
                  scale=scale, outcome=raw.get("outcome"), tertile=tertile,
                  column=raw.get("column"), numerator=raw.get("numerator"),
                  denominator=raw.get("denominator"))


def targets_from_text(text, source="<string>"):
    """Validate a targets file given as text; ``source`` names it (and is the
    folder the scenario path is relative to)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "syntax", str(exc)) from None
    _unknown(source, "<top>", data, {"calibration", "targets"})
    table = data.get("calibration")
    if not isinstance(table, dict):
        raise ConfigError(source, "calibration", "required table is missing")
    _unknown(source, "calibration", table, _CALIBRATION_KEYS)
    for key in ("scenario", "arm", "fit"):
        if key not in table:
            raise ConfigError(source, f"calibration.{key}", "required key is missing")
    for key in ("scenario", "arm"):
        if not isinstance(table[key], str) or not table[key]:
            raise ConfigError(source, f"calibration.{key}",
                              f"expected a non-empty string, got {table[key]!r}")
    raws = data.get("targets")
    if not isinstance(raws, list) or not raws:
        raise ConfigError(source, "targets", "at least one [[targets]] table is required")
    targets, seen = [], set()
    for i, raw in enumerate(raws):
        targets.append(_target(source, f"targets[{i}]", raw, seen))
        seen.add(targets[-1].name)
    seed = table.get("seed")
    return TargetsSpec(
        source=source,
        scenario_path=str(Path(source).parent / table["scenario"]),
        arm=table["arm"],
        patients=_integer(source, "calibration.patients", table.get("patients", 4000), 10),
        seed=None if seed is None else _integer(source, "calibration.seed", seed, 0),
        fit=_names(source, "calibration.fit", table["fit"]),
        bound_factor=_number(source, "calibration.bound_factor",
                             table.get("bound_factor", 10.0), 1.0),
        screen=_names(source, "calibration.screen", table.get("screen", []), allow_empty=True),
        smoothing_log10=_number(source, "calibration.smoothing_log10",
                                table.get("smoothing_log10", 0.05), 0.0),
        max_evaluations=_integer(source, "calibration.max_evaluations",
                                 table.get("max_evaluations", 400), 1),
        targets=tuple(targets))


def load_targets(path):
    """Read and validate a targets file."""
    return targets_from_text(read_text(path), str(path))
