"""Tests for the shared input checks in `cascademl._validation`."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cascademl import CascadeClassifier
from cascademl._validation import check_batch_size, check_fitted, check_positive_int, take_rows
from cascademl.exceptions import NotFittedError, PolicyError


def test_take_rows_numpy_keeps_type() -> None:
    X = np.arange(10).reshape(5, 2)
    out = take_rows(X, np.array([3, 0]))
    assert isinstance(out, np.ndarray)
    assert out.tolist() == [[6, 7], [0, 1]]


def test_take_rows_list_and_tuple_give_lists() -> None:
    assert take_rows(["a", "b", "c"], np.array([2, 0])) == ["c", "a"]
    assert take_rows(("a", "b", "c"), [1]) == ["b"]


def test_take_rows_dataframe_uses_positions_not_labels() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2, 3], "s": ["x", "y", "z"]}, index=[10, 20, 30])
    out = take_rows(frame, np.array([2, 0]))
    assert isinstance(out, pd.DataFrame)
    assert out["s"].tolist() == ["z", "x"]
    series = take_rows(frame["a"], [1])
    assert isinstance(series, pd.Series)
    assert series.tolist() == [2]


def test_take_rows_torch_tensor() -> None:
    torch = pytest.importorskip("torch")
    X = torch.arange(6).reshape(3, 2)
    out = take_rows(X, np.array([2, 1]))
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [[4, 5], [2, 3]]


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_take_rows_sparse(fmt: str) -> None:
    X = sp.random(6, 4, density=0.5, format=fmt, random_state=0)
    out = take_rows(X, np.array([5, 1]))
    assert sp.issparse(out)
    np.testing.assert_array_equal(out.toarray(), X.toarray()[[5, 1]])


def test_check_positive_int_accepts_numpy_integers() -> None:
    value = check_positive_int(np.int64(7), "batch_size")
    assert value == 7
    assert type(value) is int


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", np.float64(2.0)])
def test_check_positive_int_rejects(bad: object) -> None:
    with pytest.raises(PolicyError, match=r"n_jobs must be a positive integer, got"):
        check_positive_int(bad, "n_jobs")


def test_check_batch_size_none() -> None:
    assert check_batch_size(None, allow_none=True) is None
    assert check_batch_size(np.int32(3), allow_none=True) == 3
    with pytest.raises(PolicyError, match="batch_size must be a positive integer, got None"):
        check_batch_size(None)
    with pytest.raises(PolicyError, match="positive integer or None, got 0"):
        check_batch_size(0, allow_none=True)


def test_check_fitted_one_message() -> None:
    cascade = CascadeClassifier([("a", object())])
    with pytest.raises(
        NotFittedError, match=r"CascadeClassifier is not fitted yet; call fit before save"
    ):
        check_fitted(cascade, before="save")
