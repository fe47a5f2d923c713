"""Clinical data files: reading, validation errors naming row and column, round trips."""
import numpy as np
import pandas as pd
import pytest

from pipeline.estimate.data import DataError, make_dataset, read_dataset, write_dataset
from pipeline.estimate.individual import fit_individuals
from pipeline.estimate.structural import get_structural

GOOD = """id,time,name,value,blq,evid,amount,weight_kg,sex
P1,0,,,,1,1e8,70,F
P1,1,cart,100,0,0,,70,F
P1,2,cart,50,1,0,,70,F
P2,0,cart,3,0,0,,80,M
P2,5,cart,7,0,0,,80,M
P1,3,cart,20,0,0,,70,F
"""


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_a_valid_file(tmp_path):
    data = read_dataset(write(tmp_path, GOOD))
    assert list(data.ids) == ["P1", "P2"]
    # grouped by individual, in time order; rows are file lines (header = 1)
    assert list(data.individual) == [0, 0, 0, 1, 1]
    assert list(data.time) == [1.0, 2.0, 3.0, 0.0, 5.0]
    assert list(data.rows) == [3, 4, 7, 5, 6]
    assert list(data.value) == [100.0, 50.0, 20.0, 3.0, 7.0]
    assert list(data.blq) == [False, True, False, False, False]
    assert list(data.dose_individual) == [0] and list(data.dose_amount) == [1e8]
    assert list(data.covariates["weight_kg"]) == [70.0, 80.0]
    assert list(data.covariates["sex"]) == ["F", "M"]
    assert data.n_individuals == 2 and data.n_observations == 5


# (file text, row, column, words in the message)
MALFORMED = {
    "negative time": ("id,time,name,value\n1,0,cart,1\n1,-1,cart,2\n", 3, "time", "negative"),
    "unsorted times": ("id,time,name,value\n1,2,cart,1\n2,0,cart,1\n1,1,cart,2\n", 4, "time",
                       "not sorted"),
    "missing covariate": ("id,time,name,value,weight_kg\n1,2,cart,1,70\n1,3,cart,2,\n", 3,
                          "weight_kg", "missing covariate"),
    "covariate changes": ("id,time,name,value,weight_kg\n1,2,cart,1,70\n1,3,cart,2,71\n", 3,
                          "weight_kg", "changes within id"),
    "non-numeric value": ("id,time,name,value\n1,2,cart,abc\n", 2, "value", "not a finite"),
    "missing value": ("id,time,name,value\n1,2,cart,1\n1,3,cart,\n", 3, "value", "missing"),
    "blq not 0/1": ("id,time,name,value,blq\n1,2,cart,1,0\n1,3,cart,1,2\n", 3, "blq",
                    "0 or 1"),
    "evid not 0/1": ("id,time,name,value,evid,amount\n1,2,cart,1,3,\n", 2, "evid", "0 or 1"),
    "dose of unknown id": (("id,time,name,value,evid,amount\n1,0,,,1,5e7\n2,0,,,1,5e7\n"
                            "1,1,cart,3,0,\n"), 3, "id", "unknown id"),
    "dose not positive": ("id,time,name,value,evid,amount\n1,0,,,1,-5\n1,1,cart,3,0,\n", 2,
                          "amount", "> 0"),
    "missing id": ("id,time,name,value\n1,0,cart,1\n,1,cart,1\n", 3, "id", "missing id"),
    "missing name": ("id,time,name,value\n1,0,,1\n", 2, "name", "missing observation name"),
    "infinite time": ("id,time,name,value\n1,inf,cart,1\n", 2, "time", "not a finite"),
    "repeated observation": ("id,time,name,value\n1,0,cart,5\n1,2,cart,1\n1,2,il6,3\n"
                             "1,2,cart,1\n", 5, "name",
                             "a second 'cart' observation of id '1' at time 2 (first at row 3, "
                             "the same value)"),
    "conflicting observation": ("id,time,name,value\n1,2,cart,1\n2,2,cart,7\n1,2,cart,10\n",
                                4, "name", "(first at row 2, 1 there, 10 here); keep one row"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_names_row_and_column(tmp_path, case):
    text, row, column, words = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_dataset(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: row {row}, column {column}: "), message
    assert words in message


def test_missing_required_column(tmp_path):
    path = write(tmp_path, "id,time,name\n1,0,cart\n")
    with pytest.raises(DataError, match=r"data.csv: missing required column 'value'"):
        read_dataset(path)


def test_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_dataset(tmp_path / "absent.csv")


def test_parquet_errors_name_the_record_row(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"id": [1, 1, 1], "time": [0.0, 1.0, 2.0], "name": ["cart"] * 3,
                  "value": [1.0, np.nan, 3.0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"data.parquet: row 3, column value: missing value"):
        read_dataset(path)


def test_value_not_positive_under_lognormal_error_fails_at_fit_time(tmp_path):
    path = write(tmp_path, "id,time,name,value\n1,1,cart,5\n1,2,cart,0\n")
    data = read_dataset(path)          # fine for reading: additive errors allow 0
    with pytest.raises(DataError, match=r"data.csv: row 3, column value: must be > 0 for the "
                                        r"lognormal error model, got 0"):
        fit_individuals(get_structural("stein"), data, "lognormal", 0.5)


def test_observation_the_model_does_not_predict_fails_at_fit_time(tmp_path):
    path = write(tmp_path, "id,time,name,value\n1,1,cart,5\n1,2,il6,3\n")
    with pytest.raises(DataError, match=r"row 3, column name: model 'stein' predicts cart; "
                                        r"got 'il6'"):
        fit_individuals(get_structural("stein"), read_dataset(path), "additive", 1.0)


def _random_dataset(seed):
    rng = np.random.default_rng(seed)
    n, per = 5, 4
    individual = np.repeat(np.arange(n), per)
    return make_dataset(
        np.array([f"pt-{i:03d}" for i in range(n)], dtype=object), individual,
        np.tile(np.arange(per, dtype=float) * 1.5, n) + rng.random(n * per) / 10,
        np.where(rng.random(n * per) < 0.5, "cart", "tumour").astype(object),
        rng.lognormal(size=n * per), rng.random(n * per) < 0.2,
        [0, 2, 2], [0.0, 0.0, 1.5], [1e8, 2e7, 3e7],
        {"weight_kg": rng.uniform(50, 90, n), "site": np.array(list("ABABA"), dtype=object)})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_then_read_round_trip(tmp_path, suffix):
    data = _random_dataset(1)
    path = tmp_path / f"data{suffix}"
    write_dataset(data, path)
    back = read_dataset(path)
    for name in ("ids", "individual", "time", "name", "value", "blq", "dose_individual",
                 "dose_time", "dose_amount"):
        assert np.array_equal(getattr(back, name), getattr(data, name)), name
    assert back.covariates.keys() == data.covariates.keys()
    for name, values in data.covariates.items():
        assert np.array_equal(back.covariates[name], values), name


def test_integer_ids_stay_integers_but_padded_ids_stay_text(tmp_path):
    ints = read_dataset(write(tmp_path, "id,time,name,value\n3,0,cart,1\n12,0,cart,1\n"))
    assert ints.ids.dtype == np.int64 and list(ints.ids) == [3, 12]
    text = read_dataset(write(tmp_path, "id,time,name,value\n007,0,cart,1\n", "b.csv"))
    assert list(text.ids) == ["007"]


def test_subset_keeps_observations_doses_and_covariates():
    data = _random_dataset(2)
    sub = data.subset([2, 0])
    assert list(sub.ids) == [data.ids[2], data.ids[0]]
    for new, old in enumerate([2, 0]):
        assert np.array_equal(sub.time[sub.individual == new], data.time[data.individual == old])
        assert np.array_equal(sub.dose_time[sub.dose_individual == new],
                              data.dose_time[data.dose_individual == old])
        assert sub.covariates["weight_kg"][new] == data.covariates["weight_kg"][old]
