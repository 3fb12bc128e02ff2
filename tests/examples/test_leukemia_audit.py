"""The shortcut audit: colour statistics, the scale-bar mask, cached routing, exits per class."""

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from examples.leukemia import audit, data
from examples.leukemia.__main__ import main
from examples.leukemia.pipeline import Predictor, read_images
from examples.leukemia.presets import get_preset
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.tuning import stage_probabilities


def test_colour_features_of_constant_images():
    images = np.zeros((2, 3, 4, 5), dtype=np.uint8)
    images[0, 0] = 255  # red channel of image 0 saturated
    images[1] = 100
    features = audit.colour_features(torch.from_numpy(images))
    assert features.shape == (2, 30)
    per_channel = features.reshape(2, 3, 10)
    np.testing.assert_allclose(per_channel[0, :, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(per_channel[:, :, 1], 0.0, atol=1e-12)
    # 255 falls in the last of 8 bins, 0 in the first, 100 in the fourth (96-127).
    np.testing.assert_allclose(per_channel[0, 0, 2:], [0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(per_channel[0, 1, 2:], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(per_channel[1, 2, 2:], [0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(features.reshape(2, 3, 10)[:, :, 2:].sum(axis=2), 1.0)


def test_colour_features_reject_other_layouts():
    with pytest.raises(ValueError, match=r"shape \(n, 3, H, W\)"):
        audit.colour_features(np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        audit.colour_features(np.zeros((2, 3, 4, 4), dtype=np.float32))


def test_colour_statistics_is_a_transformer_with_names():
    transformer = audit.ColourStatistics().fit(np.zeros((1, 3, 2, 2), dtype=np.uint8))
    names = transformer.get_feature_names_out()
    assert len(names) == transformer.n_features_out_ == 30
    assert names[0] == "R_mean"
    assert names[-1] == "B_hist7"


def test_mask_fills_the_bottom_rows_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (2, 16, 8, 3), dtype=np.uint8)
    masked = data.mask_bottom_strip(images, 0.125)
    assert (masked[:, -2:] == data.MASK_FILL).all()
    np.testing.assert_array_equal(masked[:, :-2], images[:, :-2])
    assert not (images[:, -2:] == data.MASK_FILL).all(), "the input must not change"
    single = data.mask_bottom_strip(images[0], 0.25)
    assert (single[-4:] == data.MASK_FILL).all()
    assert data.mask_bottom_strip(images, 0.0) is images
    with pytest.raises(ValueError, match="mask_bottom must be in"):
        data.mask_bottom_strip(images, 1.0)


def test_preset_masks_the_scale_bar_by_default():
    assert get_preset("cpu").mask_bottom == data.SCALE_BAR_FRACTION
    assert get_preset("cpu", ["mask_bottom=0"]).mask_bottom == 0
    with pytest.raises(ValueError, match="mask_bottom must be in"):
        get_preset("cpu", ["mask_bottom=1.5"])


def test_prediction_applies_the_saved_mask(leukemia_root):
    path = leukemia_root / "Pre" / "Pre-001.png"
    masked = Predictor(None, 32, None, mask_bottom=0.25)  # type: ignore[arg-type]
    plain = Predictor(None, 32, None)  # type: ignore[arg-type]
    x_masked, _ = read_images([path], masked)
    x_plain, _ = read_images([path], plain)
    assert x_masked.shape == (1, 3, 32, 32)
    assert (x_masked[0, :, -8:] == data.MASK_FILL).all()
    assert torch.equal(x_masked[0, :, :-8], x_plain[0, :, :-8])
    assert not (x_plain[0, :, -8:] == data.MASK_FILL).all()


def test_greyscale_and_variants():
    rng = np.random.default_rng(1)
    original = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    normalized = 255 - original
    grey = audit.greyscale(original)
    assert (grey[..., 0] == grey[..., 1]).all()
    assert (grey[..., 1] == grey[..., 2]).all()
    by_name = {v.name: v for v in audit.VARIANTS}
    out = audit.apply_variant(
        by_name["normalized + masked"], original=original, normalized=normalized, mask_bottom=0.25
    )
    np.testing.assert_array_equal(out[:, :6], normalized[:, :6])
    assert (out[:, 6:] == data.MASK_FILL).all()
    trained = audit.trained_variant(stain_normalize=False, mask_bottom=0.125)
    assert trained.name == "masked"


def test_route_cached_equals_routing_the_models():
    x, y = load_iris(return_X_y=True)
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=500))],
        policy=ConfidencePolicy("max_proba", thresholds=0.97),
    ).fit(x, y)
    proba = stage_probabilities(cascade, x)
    replay = audit.route_cached(cascade, {"nb": proba[0], "lr": proba[1]})
    routed = cascade.route(x)
    np.testing.assert_array_equal(replay.labels, routed.labels)
    np.testing.assert_array_equal(replay.exit_stage, routed.exit_stage)
    assert 0 < routed.exit_counts[0] < len(x), "both stages must end some samples"
    exits = audit.exits_per_class(routed, y, [0, 1, 2])
    assert list(exits) == ["nb", "lr"]
    assert sum(sum(c.values()) for c in exits.values()) == len(x)
    assert [sum(exits[s][str(k)] for s in exits) for k in range(3)] == [50, 50, 50]
    with pytest.raises(KeyError, match="lr"):
        audit.route_cached(cascade, {"nb": proba[0]})


def test_colour_baseline_reads_the_synthetic_colours(leukemia_root):
    manifest = data.split_dataset(data.scan_dataset(leukemia_root), seed=0)
    images = np.stack(
        [np.asarray(data.load_rgb(manifest.root / row.path)) for row in manifest.rows]
    )
    result = audit.colour_baseline(images, manifest, variant="original")
    # Each synthetic class has its own disc colour: colour alone separates them.
    assert result.test.accuracy == 1.0
    grey = audit.colour_baseline(audit.greyscale(images), manifest, variant="grey")
    assert grey.variant == "grey"
    assert 0 <= grey.val_accuracy <= 1
    assert len(result.test_labels) == len(manifest.select("test"))


def test_audit_command_writes_the_baseline_per_variant(leukemia_root, tmp_path):
    out = tmp_path / "audit"
    with redirect_stdout(io.StringIO()) as printed:
        status = main(
            ["audit", "--data-root", str(leukemia_root), "--preset", "smoke", "--out", str(out)]
        )
    assert status == 0
    result = json.loads((out / "audit.json").read_text())
    assert list(result["colour_baseline"]) == [v.name for v in audit.VARIANTS]
    assert result["trained_variant"] == "normalized + masked"
    assert (out / "split.csv").is_file()
    assert "no cell" in (out / "audit.md").read_text()
    assert "(the backbones' preprocessing)" in printed.getvalue()
