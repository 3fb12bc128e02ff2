import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascademl._routing import check_stage_proba, confidence_scores, exit_mask, route
from cascademl.exceptions import PolicyError, StageOutputError
from strategies import proba_tables


@pytest.mark.parametrize("measure", ["max_proba", "margin", "entropy"])
@given(tables=proba_tables(max_stages=1))
def test_confidence_lies_in_unit_interval(measure, tables):
    conf = confidence_scores(tables[0], measure)
    assert conf.shape == (tables.shape[1],)
    assert np.all((conf >= 0) & (conf <= 1))


@pytest.mark.parametrize("measure", ["max_proba", "margin", "entropy"])
def test_one_hot_is_fully_confident_and_uniform_is_not(measure):
    proba = np.array([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    conf = confidence_scores(proba, measure)
    assert conf[0] == pytest.approx(1.0)
    expected_uniform = 1 / 3 if measure == "max_proba" else 0.0
    assert conf[1] == pytest.approx(expected_uniform, abs=1e-12)


def test_margin_is_top1_minus_top2():
    proba = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(confidence_scores(proba, "margin"), [0.2, 0.4])


def test_entropy_matches_scipy():
    from scipy.stats import entropy

    proba = np.array([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]])
    expected = 1 - entropy(proba, axis=1) / np.log(3)
    np.testing.assert_allclose(confidence_scores(proba, "entropy"), expected)


def test_unknown_measure_is_named():
    with pytest.raises(PolicyError, match="'softmax'"):
        confidence_scores(np.array([[1.0, 0.0]]), "softmax")  # type: ignore[arg-type]


def test_check_stage_proba_rejects_nan_and_names_stage_and_row():
    proba = np.array([[0.5, 0.5], [np.nan, 1.0]])
    with pytest.raises(StageOutputError, match=r"stage 'cnn'.*NaN.*row 1"):
        check_stage_proba(proba, n_samples=2, n_classes=2, stage_name="cnn")


def test_check_stage_proba_rejects_negative_values():
    with pytest.raises(StageOutputError, match="negative"):
        check_stage_proba(np.array([[1.2, -0.2]]), n_samples=1, n_classes=2, stage_name="s")


def test_check_stage_proba_rejects_logits_and_wrong_shape():
    with pytest.raises(StageOutputError, match="logits"):
        check_stage_proba(np.array([[3.0, 1.0]]), n_samples=1, n_classes=2, stage_name="s")
    with pytest.raises(StageOutputError, match=r"shape \(1, 3\)"):
        check_stage_proba(np.ones((1, 3)) / 3, n_samples=1, n_classes=2, stage_name="s")


def test_check_stage_proba_renormalises_tiny_drift():
    out = check_stage_proba(np.array([[0.5, 0.5004]]), n_samples=1, n_classes=2, stage_name="s")
    assert out.sum() == pytest.approx(1.0)


def test_exit_mask_threshold_is_inclusive_and_last_stage_takes_all():
    conf = np.array([0.5, 0.7, 0.9])
    assert exit_mask(conf, 0.7, is_last=False).tolist() == [False, True, True]
    assert exit_mask(conf, 2.0, is_last=True).all()


@given(tables=proba_tables(min_stages=2), data=st.data())
def test_route_calls_each_stage_once_with_only_the_samples_that_reached_it(tables, data):
    n_stages, n_samples, n_classes = tables.shape
    ts = data.draw(st.lists(st.floats(0, 1), min_size=n_stages, max_size=n_stages))
    seen: list[np.ndarray] = []

    def predict(stage, idx):
        seen.append(idx.copy())
        return tables[stage, idx]

    arrays = route(
        predict, n_samples=n_samples, n_classes=n_classes, thresholds=ts, measure="max_proba"
    )
    assert len(seen) <= n_stages
    for s, idx in enumerate(seen):
        np.testing.assert_array_equal(np.flatnonzero(arrays.visited[s]), idx)
    assert np.all(arrays.exit_stage >= 0)
    # A sample visited exactly the stages up to and including its exit stage.
    for i in range(n_samples):
        assert arrays.visited[: arrays.exit_stage[i] + 1, i].all()
        assert not arrays.visited[arrays.exit_stage[i] + 1 :, i].any()


def test_route_needs_a_stage():
    with pytest.raises(PolicyError, match="at least one stage"):
        route(
            lambda s, i: np.ones((i.size, 2)) / 2,
            n_samples=1,
            n_classes=2,
            thresholds=[],
            measure="max_proba",
        )
