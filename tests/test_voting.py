import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascademl.exceptions import PolicyError
from cascademl.voting import combine_votes, vote_weights
from strategies import proba_tables


def _full_visit(n_stages, n_samples):
    return np.ones((n_stages, n_samples), dtype=bool), np.full(n_samples, n_stages - 1)


def test_vote_carries_escalated_votes_with_lowered_weight():
    # stage 0 says class 0 (0.8) but escalates; stage 1 weakly says class 1 (0.6).
    proba = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])
    visited, exit_stage = _full_visit(2, 1)
    heavy = combine_votes(proba, visited, exit_stage, method="vote", escalation_weight=1.0)
    light = combine_votes(proba, visited, exit_stage, method="vote", escalation_weight=0.1)
    assert heavy.argmax() == 0  # accumulated: 1.2 vs 0.8
    assert light.argmax() == 1  # accumulated: 0.48 vs 0.62
    np.testing.assert_allclose(light, [[0.48 / 1.1, 0.62 / 1.1]])


def test_last_ignores_earlier_stages_and_mean_weights_all_equally():
    proba = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[np.nan, np.nan]]])
    visited = np.array([[True], [True], [False]])
    exit_stage = np.array([1])
    last = combine_votes(proba, visited, exit_stage, method="last")
    mean = combine_votes(proba, visited, exit_stage, method="mean")
    np.testing.assert_allclose(last, [[0.0, 1.0]])
    np.testing.assert_allclose(mean, [[0.5, 0.5]])


@pytest.mark.parametrize("method", ["vote", "last", "mean"])
@given(tables=proba_tables(), data=st.data())
def test_combined_rows_sum_to_one(method, tables, data):
    n_stages, n_samples, _ = tables.shape
    exit_stage = np.array(
        data.draw(st.lists(st.integers(0, n_stages - 1), min_size=n_samples, max_size=n_samples))
    )
    visited = np.arange(n_stages)[:, None] <= exit_stage[None, :]
    masked = np.where(visited[:, :, None], tables, np.nan)
    out = combine_votes(masked, visited, exit_stage, method=method, escalation_weight=0.3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert np.all(out >= 0)


def test_weight_schedule_per_stage():
    visited, exit_stage = _full_visit(3, 1)
    w = vote_weights(visited, exit_stage, method="vote", escalation_weight=[0.2, 0.7, 0.0])
    np.testing.assert_allclose(w[:, 0], [0.2, 0.7, 1.0])


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (1.5, r"\[0, 1\]"),
        (-0.1, r"\[0, 1\]"),
        ([0.5], "1 values but the cascade has 2"),
        ("x", "got 'x'"),
    ],
)
def test_invalid_weights(weight, match):
    visited, exit_stage = _full_visit(2, 1)
    with pytest.raises(PolicyError, match=match):
        vote_weights(visited, exit_stage, method="vote", escalation_weight=weight)


def test_unknown_method():
    visited, exit_stage = _full_visit(2, 1)
    with pytest.raises(PolicyError, match="'max'"):
        vote_weights(visited, exit_stage, method="max")  # type: ignore[arg-type]


# ------------------------------------------------------------------ defaults, zeros and dtype
def test_the_default_escalation_weight_is_one_half():
    """Stage 0 escalates with weight 0.5 by default: 0.5 * [0.6, 0.4] + [0.1, 0.9] = [0.4, 1.1]."""
    proba = np.array([[[0.6, 0.4]], [[0.1, 0.9]]])
    visited = np.array([[True], [True]])
    exit_stage = np.array([1])
    weights = vote_weights(visited, exit_stage, method="vote")
    np.testing.assert_array_equal(weights, [[0.5], [1.0]])
    got = combine_votes(proba, visited, exit_stage, method="vote")
    np.testing.assert_allclose(got, [[0.4 / 1.5, 1.1 / 1.5]])


@pytest.mark.parametrize("method", ["vote", "mean", "last"])
def test_stages_a_sample_did_not_visit_get_weight_zero(method):
    visited = np.array([[True, True], [False, True], [False, False]])
    exit_stage = np.array([0, 1])
    weights = vote_weights(visited, exit_stage, method=method, escalation_weight=0.25)
    escalating = {"vote": 0.25, "mean": 1.0, "last": 0.0}[method]
    np.testing.assert_array_equal(weights, [[1.0, escalating], [0.0, 1.0], [0.0, 0.0]])


def test_float32_probabilities_combine_to_float64_rows():
    proba = np.array([[[0.6, 0.4]], [[0.1, 0.9]]], dtype=np.float32)
    got = combine_votes(
        proba, np.array([[True], [True]]), np.array([1]), method="mean", escalation_weight=0.5
    )
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [[0.35, 0.65]], rtol=1e-6)
