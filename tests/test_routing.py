import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascademl import ConfidencePolicy, RoutingRule, _engine
from cascademl._routing import check_stage_proba, confidence_scores, exit_mask
from cascademl.exceptions import PolicyError, StageOutputError
from strategies import proba_tables


def _reference_confidence(p, measure):
    """From the definitions, row by row, with no clipping."""
    from scipy.stats import entropy

    top = np.sort(p, axis=1)[:, ::-1]
    if measure == "max_proba":
        return top[:, 0]
    if measure == "margin":
        return top[:, 0] - (top[:, 1] if p.shape[1] > 1 else 0.0)
    if p.shape[1] == 1:
        return np.ones(p.shape[0])
    return 1 - entropy(p, axis=1) / np.log(p.shape[1])


@pytest.mark.parametrize("measure", ["max_proba", "margin", "entropy"])
@given(tables=proba_tables(max_stages=1), drift=st.floats(1 - 1e-3, 1 + 1e-3))
def test_confidence_matches_the_definition_and_is_clipped_to_unit_interval(measure, tables, drift):
    # Rows off by the drift check_stage_proba tolerates: without the clip, max_proba and
    # margin of a near one-hot row exceed 1.
    p = tables[0] * drift
    conf = confidence_scores(p, measure)
    assert conf.shape == (tables.shape[1],)
    assert conf.dtype == np.float64
    assert np.all((conf >= 0) & (conf <= 1))
    expected = np.clip(_reference_confidence(p / p.sum(axis=1, keepdims=True), measure), 0, 1)
    np.testing.assert_allclose(conf, expected, atol=2e-3)


@pytest.mark.parametrize("measure", ["max_proba", "margin"])
def test_confidence_of_a_drifted_one_hot_row_is_exactly_one(measure):
    conf = confidence_scores(np.array([[1.0005, 0.0, 0.0]]), measure)
    assert conf.tolist() == [1.0]


def test_two_classes_have_a_runner_up_and_an_entropy():
    proba = np.array([[0.8, 0.2], [0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(confidence_scores(proba, "margin"), [0.6, 0.0, 1.0])
    np.testing.assert_allclose(
        confidence_scores(proba, "entropy"), _reference_confidence(proba, "entropy")
    )
    # A zero probability adds nothing to the entropy (0 log 0 = 0).
    half = confidence_scores(np.array([[0.5, 0.5, 0.0]]), "entropy")
    np.testing.assert_allclose(half, [1 - np.log(2) / np.log(3)])
    assert confidence_scores(np.array([[1.0]]), "margin").tolist() == [1.0]
    assert confidence_scores(np.array([[1.0]]), "entropy").tolist() == [1.0]


def test_check_stage_proba_accepts_zeros_and_returns_float64():
    out = check_stage_proba(np.array([[1, 0], [0, 1]]), n_samples=2, n_classes=2, stage_name="s")
    assert out.dtype == np.float64
    assert out.tolist() == [[1.0, 0.0], [0.0, 1.0]]


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


def test_check_stage_proba_reorders_columns_without_touching_the_input():
    raw = np.array([[0.2, 0.3, 0.5004]])
    before = raw.copy()
    out = check_stage_proba(
        raw, n_samples=1, n_classes=3, stage_name="s", columns=np.array([2, 0, 1])
    )
    np.testing.assert_allclose(out, np.array([[0.5004, 0.2, 0.3]]) / 1.0004)
    np.testing.assert_array_equal(raw, before)
    plain = check_stage_proba(raw, n_samples=1, n_classes=3, stage_name="s")
    np.testing.assert_array_equal(raw, before)
    assert plain.sum() == pytest.approx(1.0)


def test_exit_mask_threshold_is_inclusive_and_last_stage_takes_all():
    conf = np.array([0.5, 0.7, 0.9])
    assert exit_mask(conf, 0.7, is_last=False).tolist() == [False, True, True]
    assert exit_mask(conf, 2.0, is_last=True).all()


class RecordingStage:
    """Looks its rows up by sample id (``X[:, 0]``) and records which ids it saw."""

    def __init__(self, table, seen, index):
        self.table, self.seen, self.index = table, seen, index

    def predict_proba(self, X):
        ids = np.asarray(X)[:, 0]
        self.seen.append((self.index, ids.copy()))
        return self.table[ids]


def _run_in_memory(tables, thresholds, seen, **options):
    n_stages, n_samples, n_classes = tables.shape
    stages = [RecordingStage(t, seen, s) for s, t in enumerate(tables)]
    ids = np.arange(n_samples).reshape(-1, 1)
    return _engine.run(
        stages,
        _engine.MemorySource(ids, n_samples),
        rule=RoutingRule("max_proba", tuple(thresholds)),
        stage_names=[f"s{i}" for i in range(n_stages)],
        classes=np.arange(n_classes),
        **options,
    )


@given(tables=proba_tables(min_stages=2), data=st.data())
def test_engine_calls_each_stage_once_with_only_the_samples_that_reached_it(tables, data):
    n_stages, n_samples, _ = tables.shape
    ts = data.draw(st.lists(st.floats(0, 1), min_size=n_stages, max_size=n_stages))
    seen: list[tuple[int, np.ndarray]] = []
    result = _run_in_memory(tables, ts, seen).result
    assert len(seen) <= n_stages
    assert [s for s, _ in seen] == list(range(len(seen)))  # in order, once each
    for s, idx in seen:
        np.testing.assert_array_equal(np.flatnonzero(result.visited[s]), idx)
    assert np.all(result.exit_stage >= 0)
    # A sample visited exactly the stages up to and including its exit stage.
    for i in range(n_samples):
        assert result.visited[: result.exit_stage[i] + 1, i].all()
        assert not result.visited[result.exit_stage[i] + 1 :, i].any()


@given(tables=proba_tables(min_stages=2), data=st.data())
def test_engine_batches_never_exceed_the_batch_size(tables, data):
    n_stages, n_samples, _ = tables.shape
    ts = data.draw(st.lists(st.floats(0, 1), min_size=n_stages, max_size=n_stages))
    size = data.draw(st.integers(1, n_samples + 1))
    seen: list[tuple[int, np.ndarray]] = []
    batched = _run_in_memory(tables, ts, seen, batch_size=size).result
    whole = _run_in_memory(tables, ts, []).result
    assert all(0 < idx.size <= size for _, idx in seen)
    np.testing.assert_array_equal(batched.exit_stage, whole.exit_stage)
    np.testing.assert_array_equal(batched.proba, whole.proba)


def test_engine_needs_a_stage():
    with pytest.raises(PolicyError, match="non-zero length"):
        _engine.run(
            [],
            _engine.MemorySource(np.zeros((1, 1)), 1),
            rule=RoutingRule("max_proba", (1.0,)),
            stage_names=[],
            classes=np.arange(2),
        )


def test_the_negative_message_counts_and_names_the_rows_at_fault():
    """Only row 1 is negative; row 0 holds a zero and every row values below 1."""
    proba = np.array([[0.0, 1.0], [-0.1, 1.1], [0.5, 0.5]])
    with pytest.raises(StageOutputError, match=r"for 1 sample\(s\), first at row 1 \(min -0.1\)"):
        check_stage_proba(proba, n_samples=3, n_classes=2, stage_name="s")


@pytest.mark.parametrize("measure", ["max_proba", "margin", "entropy"])
def test_one_class_gives_full_confidence_to_every_sample(measure):
    scores = confidence_scores(np.ones((3, 1)), measure)
    np.testing.assert_array_equal(scores, [1.0, 1.0, 1.0])


def test_float32_rows_are_scored_in_float64():
    """ConfidencePolicy.confidence passes a user's table through: float32 input is scored in
    float64, exactly as its float64 copy (float32 arithmetic would differ in the last bits)."""
    rng = np.random.default_rng(3)
    p32 = rng.dirichlet(np.ones(5), size=50).astype(np.float32)
    p32 /= p32.sum(axis=1, keepdims=True)
    for measure in ("margin", "entropy"):
        got = ConfidencePolicy(measure, 0.5).confidence(p32)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, confidence_scores(p32.astype(np.float64), measure))


@pytest.mark.parametrize(
    ("row", "margin"),
    [
        ([0.1, 0.7, 0.2], 0.5),
        ([0.7, 0.1, 0.2], 0.5),
        ([0.2, 0.1, 0.7], 0.5),
        ([0.4, 0.3, 0.2, 0.1], 0.1),
        ([0.1, 0.2, 0.3, 0.4], 0.1),
        ([0.3, 0.1, 0.4, 0.2], 0.1),
    ],
)
def test_margin_is_the_top_probability_minus_the_runner_up(row, margin):
    np.testing.assert_allclose(confidence_scores(np.array([row]), "margin"), [margin])
