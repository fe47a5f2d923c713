"""Longitudinal clinical data for model fitting: read, validate, write.

A data file is a long-format table (CSV, or Parquet by the ``.parquet`` /
``.pq`` suffix), one row per observation or dose record:

==========  ===============================================================
``id``      required; the individual (patient) identifier
``time``    required; days since the reference time (the infusion), >= 0,
            non-decreasing within an id in file order (NONMEM-like)
``name``    required on observation rows; what was measured, e.g. ``cart``
            (CAR T), ``tumour``, ``il6``; the structural model says which it
            predicts (:mod:`pipeline.estimate.structural`)
``value``   required on observation rows; the observed value in the model's
            unit for that name; on a row with ``blq = 1`` the limit of
            quantification
``blq``     optional; 0 or 1 on observation rows: 1 = below the limit of
            quantification (a censored observation)
``evid``    optional; 0 = observation (default), 1 = dose record
``amount``  on dose rows (``evid = 1``) only: the dose in cells, > 0
any other   a covariate: one value per id, repeated on every row of the id;
            numeric (float) if every value is a number, otherwise categorical
==========  ===============================================================

Dose rows may leave ``name``, ``value`` and ``blq`` empty. Every id needs at
least one observation row, and has at most one observation per time and name.

Errors are :class:`DataError`, one line naming the file, the row and the column::

    data.csv: row 7, column time: negative time -1.5
    data.csv: missing required column 'value'; columns are id, time, name

Rows are numbered as lines of the CSV file with the header as row 1 (so the
first record is row 2); a Parquet file's records are numbered the same way.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED = ("id", "time", "name", "value")
OPTIONAL = ("blq", "evid", "amount")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUFFIXES = (".csv",) + PARQUET_SUFFIXES        # what write_dataset writes


class DataError(ValueError):
    """A data-file problem: ``<file>: row <R>, column <C>: <what>`` or ``<file>: <what>``."""

    def __init__(self, source, message, row=None, column=None):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column}")
        prefix = f"{source}: " + (", ".join(where) + ": " if where else "")
        super().__init__(prefix + message)
        self.source, self.row, self.column, self.message = source, row, column, message


@dataclass(frozen=True)
class Dataset:
    """Observations, doses and covariates of N individuals.

    ``ids[N]`` the ids in order of first appearance; per observation (M of them,
    grouped by individual, sorted by time within an individual):
    ``individual`` int64 index into ``ids``, ``time`` float64 days, ``name``
    object, ``value`` float64 (the limit of quantification on BLQ rows),
    ``blq`` bool. Doses (D of them, sorted by individual then time):
    ``dose_individual`` int64, ``dose_time`` float64 days, ``dose_amount``
    float64 cells. ``covariates``: name -> float64[N] or object[N].
    ``rows``: int64[M], the file row of each observation (for error messages;
    None when the data were not read from a file), ``source`` the file name.
    """

    ids: np.ndarray
    individual: np.ndarray
    time: np.ndarray
    name: np.ndarray
    value: np.ndarray
    blq: np.ndarray
    dose_individual: np.ndarray
    dose_time: np.ndarray
    dose_amount: np.ndarray
    covariates: dict = field(default_factory=dict)
    rows: np.ndarray = None
    source: str = "<data>"

    @property
    def n_individuals(self):
        return int(self.ids.shape[0])

    @property
    def n_observations(self):
        return int(self.time.shape[0])

    @property
    def starts(self):
        """int64[N + 1]: individual i's observations are rows starts[i]:starts[i+1]."""
        counts = np.bincount(self.individual, minlength=self.n_individuals)
        return np.concatenate(([0], np.cumsum(counts)))

    def observation_indices(self, individuals):
        """int64: the observation rows of the given individuals, in that order."""
        return _segments(self.starts, individuals)[0]

    def subset(self, individuals):
        """The Dataset of the given individuals (indices into ``ids``, in that
        order; an index may repeat: each copy is a separate individual)."""
        individuals = np.asarray(individuals, dtype=np.int64)
        obs, new_individual = _segments(self.starts, individuals)
        dose_counts = np.bincount(self.dose_individual, minlength=self.n_individuals)
        doses, new_dose_individual = _segments(np.concatenate(([0], np.cumsum(dose_counts))),
                                               individuals)
        return Dataset(
            self.ids[individuals], new_individual, self.time[obs], self.name[obs],
            self.value[obs], self.blq[obs], new_dose_individual, self.dose_time[doses],
            self.dose_amount[doses], {k: v[individuals] for k, v in self.covariates.items()},
            None if self.rows is None else self.rows[obs], self.source)

    def error(self, observation, column, message):
        """A DataError at observation ``observation`` (index into the M rows)."""
        row = None if self.rows is None else int(self.rows[observation])
        who = f" (id {_show(self.ids[self.individual[observation]])})" if self.rows is None else ""
        return DataError(self.source, message + who, row, column)


def _segments(starts, groups):
    """(rows, position): the rows starts[g]:starts[g+1] of each group g in
    ``groups``, concatenated in that order, and the position in ``groups``
    of each row's group."""
    lengths = starts[groups + 1] - starts[groups]
    position = np.repeat(np.arange(groups.size, dtype=np.int64), lengths)
    offsets = np.repeat(starts[groups] - np.cumsum(lengths) + lengths, lengths)
    return offsets + np.arange(int(lengths.sum()), dtype=np.int64), position


def make_dataset(ids, individual, time, name, value, blq=None, dose_individual=(),
                 dose_time=(), dose_amount=(), covariates=None, rows=None, source="<data>"):
    """A Dataset from arrays in any order: sorts observations by (individual,
    time) and doses likewise (stable), and converts dtypes."""
    individual = np.asarray(individual, dtype=np.int64)
    time = np.asarray(time, dtype=np.float64)
    order = np.lexsort((time, individual))
    dose_individual = np.asarray(dose_individual, dtype=np.int64)
    dose_time = np.asarray(dose_time, dtype=np.float64)
    dose_order = np.lexsort((dose_time, dose_individual))
    blq = np.zeros(time.shape, bool) if blq is None else np.asarray(blq, dtype=bool)
    return Dataset(
        np.asarray(ids), individual[order], time[order],
        np.asarray(name, dtype=object)[order], np.asarray(value, dtype=np.float64)[order],
        blq[order], dose_individual[dose_order], dose_time[dose_order],
        np.asarray(dose_amount, dtype=np.float64)[dose_order],
        dict(covariates or {}), None if rows is None else np.asarray(rows, np.int64)[order],
        source)


def _show(value):
    """A value for an error message: numbers as %g, text quoted."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{float(value):g}"
    return repr(str(value))


# -- checks used at fit time ----------------------------------------------------

def require_positive(dataset, why):
    """DataError at the first observation with value <= 0 (``why``: e.g. "the
    lognormal error model")."""
    bad = np.flatnonzero(~(dataset.value > 0))
    if bad.size:
        m = bad[0]
        raise dataset.error(m, "value", f"must be > 0 for {why}, got {_show(dataset.value[m])}")


def keep_names(dataset, names):
    """(the Dataset of the observations whose name is among ``names``, {other
    name: observation rows left out}, in order of first appearance).
    Individuals left with no observation are left out too, with their doses
    and covariates; with no other name the dataset itself comes back."""
    keep = np.isin(dataset.name, list(names))
    other, first, counts = np.unique(dataset.name[~keep].astype(str), return_index=True,
                                     return_counts=True)
    left_out = {str(other[k]): int(counts[k]) for k in np.argsort(first)}
    if not left_out:
        return dataset, {}
    kept = np.unique(dataset.individual[keep])
    index = np.full(dataset.n_individuals, -1, dtype=np.int64)
    index[kept] = np.arange(kept.size)
    doses = np.isin(dataset.dose_individual, kept)
    return make_dataset(
        dataset.ids[kept], index[dataset.individual[keep]], dataset.time[keep],
        dataset.name[keep], dataset.value[keep], dataset.blq[keep],
        index[dataset.dose_individual[doses]], dataset.dose_time[doses],
        dataset.dose_amount[doses], {k: v[kept] for k, v in dataset.covariates.items()},
        None if dataset.rows is None else dataset.rows[keep], dataset.source), left_out


def require_names(dataset, names, model_name):
    """DataError at the first observation whose name is not among ``names``."""
    bad = np.flatnonzero(~np.isin(dataset.name, list(names)))
    if bad.size:
        m = bad[0]
        raise dataset.error(m, "name", f"model {model_name!r} predicts "
                                       f"{', '.join(names)}; got {_show(dataset.name[m])}")


# -- reading ----------------------------------------------------------------------

def _is_parquet(path):
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def check_data_path(path):
    """DataError unless ``path`` ends in a data file suffix (:data:`SUFFIXES`)."""
    suffix = Path(path).suffix
    if suffix.lower() not in SUFFIXES:
        raise DataError(str(path), f"unknown data file type {suffix or '(no suffix)'!r}; "
                                   f"data files are {', '.join(SUFFIXES)}")


def _load_table(path, source):
    """The file as a DataFrame; text is stripped and missing cells are NaN."""
    try:
        if _is_parquet(path):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(source, f"cannot read: {exc}".splitlines()[0]) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in frame.columns:
        if not (pd.api.types.is_numeric_dtype(frame[column])
                or pd.api.types.is_bool_dtype(frame[column])):
            text = frame[column].astype(object).where(frame[column].notna(), "")
            frame[column] = text.astype(str).str.strip().replace("", np.nan)
    return frame


class _Table:
    """The raw table with its file name and row numbers, for checks that name rows."""

    def __init__(self, frame, source):
        self.frame, self.source = frame, source
        self.rows = np.arange(len(frame), dtype=np.int64) + 2

    def fail(self, index, column, message):
        raise DataError(self.source, message, int(self.rows[index]), column)

    def missing(self, column):
        return self.frame[column].isna().to_numpy(bool)

    def numbers(self, column, where):
        """float64 values of ``column`` on rows ``where``; error at the first row
        there that is missing or not a finite number (NaN elsewhere)."""
        raw = self.frame[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        missing = self.missing(column)
        bad = np.flatnonzero(where & (missing | ~np.isfinite(values)))
        if bad.size:
            i = bad[0]
            what = "missing value" if missing[i] else f"not a finite number: {_show(raw.iloc[i])}"
            self.fail(i, column, what)
        return np.where(where, values, np.nan)

    def flags(self, column, where):
        """0/1 column as bool on rows ``where``."""
        values = self.numbers(column, where)
        bad = np.flatnonzero(where & (values != 0) & (values != 1))
        if bad.size:
            self.fail(bad[0], column, f"must be 0 or 1, got {_show(self.frame[column].iloc[bad[0]])}")
        return values == 1


def _ids(table):
    raw = table.frame["id"]
    missing = table.missing("id")
    if missing.any():
        table.fail(np.flatnonzero(missing)[0], "id", "missing id")
    text = raw.astype(str).to_numpy(object)
    number = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
    if np.isfinite(number).all() and (number == np.round(number)).all():
        integers = number.astype(np.int64)
        # integer ids stay integers, unless that would change them ("007")
        if pd.api.types.is_numeric_dtype(raw) or (integers.astype(str) == text).all():
            return integers
    return text


def _check_sorted(table, individual, time):
    """Times within an id non-decreasing in file order."""
    order = np.argsort(individual, kind="stable")
    same = individual[order][1:] == individual[order][:-1]
    back = np.flatnonzero(same & (np.diff(time[order]) < 0))
    if back.size:
        here, before = order[back[0] + 1], order[back[0]]
        table.fail(here, "time", f"times of id {table.frame['id'].iloc[here]!r} are not "
                                 f"sorted: {_show(time[here])} after {_show(time[before])} "
                                 f"(row {table.rows[before]})")


def _check_unique(table, individual, time, names, value, obs):
    """One observation per (id, time, name): a repeated one (a copied row, or a
    conflicting value) would count as a second, independent measurement."""
    rows = np.flatnonzero(obs)
    keys = pd.DataFrame({"id": individual[rows], "time": time[rows], "name": names[rows]})
    repeated = np.flatnonzero(keys.duplicated(keep="first").to_numpy())
    if repeated.size == 0:
        return
    here = rows[repeated[0]]
    same = (keys == keys.iloc[repeated[0]]).all(axis=1).to_numpy()
    first = rows[np.flatnonzero(same)[0]]
    agree = ("the same value" if value[here] == value[first]
             else f"{_show(value[first])} there, {_show(value[here])} here")
    table.fail(here, "name", f"a second {names[here]!r} observation of id "
                             f"{table.frame['id'].iloc[here]!r} at time {_show(time[here])} "
                             f"(first at row {table.rows[first]}, {agree}); keep one row per "
                             f"id, time and name ({repeated.size} repeated row(s) in all)")


def _covariate(table, column, individual, first_row):
    """One value per individual, checked present and constant within the id."""
    missing = table.missing(column)
    if missing.any():
        i = np.flatnonzero(missing)[0]
        table.fail(i, column, f"missing covariate value (id {table.frame['id'].iloc[i]!r})")
    raw = table.frame[column]
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all():
        values = numeric.to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            table.fail(bad[0], column, f"not a finite number: {_show(raw.iloc[bad[0]])}")
    else:
        values = raw.astype(str).to_numpy(object)
    per_id = values[first_row]
    changed = np.flatnonzero(values != per_id[individual])
    if changed.size:
        i = changed[0]
        table.fail(i, column, f"covariate changes within id {table.frame['id'].iloc[i]!r}: "
                              f"{_show(values[i])} here, {_show(per_id[individual[i]])} at row "
                              f"{table.rows[first_row[individual[i]]]}")
    return per_id


def read_dataset(path):
    """Read and validate a long-format data file (module docstring) into a Dataset."""
    source = str(path)
    table = _Table(_load_table(path, source), source)
    frame = table.frame
    columns = list(frame.columns)
    for column in REQUIRED:
        if column not in columns:
            raise DataError(source, f"missing required column {column!r}; columns are "
                                    f"{', '.join(columns) or 'none'}")
    if "amount" in columns and "evid" not in columns:
        raise DataError(source, "column 'amount' needs an 'evid' column (1 on dose rows)")
    if len(frame) == 0:
        raise DataError(source, "no rows")
    n_rows = len(frame)
    everywhere = np.ones(n_rows, bool)

    raw_ids = _ids(table)
    ids, first_row, individual = np.unique(raw_ids, return_index=True, return_inverse=True)
    appearance = np.argsort(first_row, kind="stable")
    rank = np.empty_like(appearance)
    rank[appearance] = np.arange(appearance.size)
    ids, first_row, individual = ids[appearance], first_row[appearance], rank[individual]

    dose = (table.flags("evid", everywhere) if "evid" in columns
            else np.zeros(n_rows, bool))
    obs = ~dose
    time = table.numbers("time", everywhere)
    negative = np.flatnonzero(time < 0)
    if negative.size:
        table.fail(negative[0], "time", f"negative time {_show(time[negative[0]])}")
    _check_sorted(table, individual, time)

    names = frame["name"].astype(str).to_numpy(object)
    no_name = np.flatnonzero(obs & table.missing("name"))
    if no_name.size:
        table.fail(no_name[0], "name", "missing observation name")
    value = table.numbers("value", obs)
    _check_unique(table, individual, time, names, value, obs)
    blq = table.flags("blq", obs) if "blq" in columns else np.zeros(n_rows, bool)
    amount = (table.numbers("amount", dose) if "amount" in columns
              else np.full(n_rows, np.nan))
    if dose.any() and "amount" not in columns:
        table.fail(np.flatnonzero(dose)[0], "amount", "dose row (evid 1) needs an 'amount' "
                                                      "column")
    not_positive = np.flatnonzero(dose & ~(amount > 0))
    if not_positive.size:
        table.fail(not_positive[0], "amount", f"dose must be > 0 cells, got "
                                              f"{_show(amount[not_positive[0]])}")

    observed = np.zeros(len(ids), bool)
    observed[individual[obs]] = True
    unknown = np.flatnonzero(dose & ~observed[individual])
    if unknown.size:
        i = unknown[0]
        table.fail(i, "id", f"unknown id {frame['id'].iloc[i]!r}: a dose record of an id "
                            f"with no observation rows")

    covariates = {c: _covariate(table, c, individual, first_row)
                  for c in columns if c not in REQUIRED + OPTIONAL}
    return make_dataset(ids, individual[obs], time[obs], names[obs], value[obs], blq[obs],
                        individual[dose], time[dose], amount[dose], covariates,
                        table.rows[obs], source)


# -- writing ----------------------------------------------------------------------

def to_frame(dataset):
    """The long-format table of a Dataset (observations and doses, sorted by
    individual then time, doses first at equal times)."""
    n_obs, n_dose = dataset.n_observations, dataset.dose_time.shape[0]
    individual = np.concatenate([dataset.dose_individual, dataset.individual])
    time = np.concatenate([dataset.dose_time, dataset.time])
    order = np.lexsort((time, individual))
    is_dose = np.arange(n_obs + n_dose) < n_dose
    columns = {
        "id": dataset.ids[individual],
        "time": time,
        "name": np.concatenate([np.full(n_dose, "", object), dataset.name]),
        "value": np.concatenate([np.full(n_dose, np.nan), dataset.value]),
        "blq": np.concatenate([np.zeros(n_dose, np.int64), dataset.blq.astype(np.int64)]),
        "evid": is_dose.astype(np.int64),
        "amount": np.concatenate([dataset.dose_amount, np.full(n_obs, np.nan)]),
        **{name: values[individual] for name, values in dataset.covariates.items()},
    }
    return pd.DataFrame({k: v[order] for k, v in columns.items()})


def write_dataset(dataset, path):
    """Write a Dataset as CSV or Parquet (by the suffix) in the format
    :func:`read_dataset` reads; missing cells are empty. Another suffix is a
    DataError (:func:`check_data_path`)."""
    check_data_path(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = to_frame(dataset)
    if _is_parquet(path):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, float_format="%.17g")
