"""TorchStage: preprocessing from timm's config, predictions, cloning, config round trips."""

import json
import os

import numpy as np
import pytest
import timm
import timm.data
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from cascademl import (
    CascadeClassifier,
    ConfidencePolicy,
    DeviceWarning,
    PolicyError,
    SerializationError,
    Stage,
    StageError,
    StageInterfaceError,
    StageOutputError,
)
from cascademl.torch_stage import Preprocessing, TorchStage

TEST_DEVICE = os.environ.get("CASCADEML_TEST_DEVICE", "cuda")


def tiny(name="test_resnet", **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("input_size", (3, 32, 32))
    kwargs.setdefault("device", "cpu")
    return TorchStage.from_timm(name, num_classes=3, **kwargs)


def images(n=6, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


# --------------------------------------------------------------------------- preprocessing
def test_preprocessing_comes_from_timms_data_config():
    for name in ("test_resnet", "test_efficientnet", "test_vit"):
        stage = TorchStage.from_timm(name, num_classes=3, device="cpu")
        cfg = timm.data.resolve_model_data_config(stage.module_)
        prep = stage.preprocessing_
        assert prep.input_size == tuple(cfg["input_size"])
        assert prep.interpolation == cfg["interpolation"]
        assert prep.mean == tuple(cfg["mean"])
        assert prep.std == tuple(cfg["std"])
        assert prep.crop_pct == cfg["crop_pct"]


# timm's own eval transform is the reference: PIL resize of the uint8 image, centre crop,
# ToTensor, Normalize. PIL resizes in uint8 (rounding) and its antialias filter is not
# torch's, so the two differ by up to about 2/255 at a pixel (1.9/255 seen for bicubic) and
# 0.3/255 on average. The bounds below, in units of 1/255 of the unnormalised image, keep
# that margin and fail for a wrong interpolation (max 3.9/255 or more), a mean off by 0.01
# (2.5/255 on every pixel), a std off by 5% (max 6.8/255), crop_pct 1 instead of 0.95 or
# nearest instead of the model's filter (tens of /255): test_timm_bounds_reject_* below.
TIMM_MAX_DIFF = 2.5  # /255, any pixel
TIMM_MEAN_DIFF = 0.4  # /255, mean over pixels


def smooth_image(height, width, seed=0):
    """A uint8 RGB image with structure at 8-pixel scale, as photographs have."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3)).astype(np.uint8)
    return np.array(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def timm_eval_difference(stage_or_prep, model, image):
    """Max and mean |ours - timm's eval transform| in 1/255 of the unnormalised image."""
    from PIL import Image

    config = timm.data.resolve_model_data_config(model)
    reference = timm.data.create_transform(**config, is_training=False)(Image.fromarray(image))
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).contiguous()
    ours = stage_or_prep(x)[0]
    assert ours.shape == reference.shape
    pixels = (ours - reference).abs() * torch.tensor(config["std"]).view(3, 1, 1) * 255
    return pixels.max().item(), pixels.mean().item()


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit"])
@pytest.mark.parametrize(("height", "width"), [(200, 260), (161, 143)])
def test_preprocessing_matches_timms_eval_transform(name, height, width):
    """Independent reference: timm.data.create_transform(..., is_training=False) on PIL."""
    stage = TorchStage.from_timm(name, num_classes=3, device="cpu")
    worst, mean = timm_eval_difference(
        stage.preprocessing_, stage.module_, smooth_image(height, width)
    )
    assert worst <= TIMM_MAX_DIFF
    assert mean <= TIMM_MEAN_DIFF


@pytest.mark.parametrize(
    "wrong",
    [
        {"interpolation": "bilinear"},  # the model's is bicubic
        {"interpolation": "nearest"},
        {"crop_pct": 1.0},  # the model's is 0.95
        {"mean": (0.495, 0.466, 0.416)},  # each off by 0.01
        {"std": (0.229 * 1.05, 0.224 * 1.05, 0.225 * 1.05)},
    ],
)
def test_timm_bounds_reject_a_wrong_preprocessing(wrong):
    """The bounds above are tight enough to catch each plausible mistake."""
    import dataclasses

    stage = TorchStage.from_timm("test_efficientnet", num_classes=3, device="cpu")
    prep = dataclasses.replace(stage.preprocessing_, **wrong)
    worst, mean = timm_eval_difference(prep, stage.module_, smooth_image(161, 143))
    assert worst > TIMM_MAX_DIFF or mean > TIMM_MEAN_DIFF


def test_timm_defaults_differ_between_models():
    """ImageNet statistics are not hard-coded: two test models disagree on mean/std."""
    resnet = TorchStage.from_timm("test_resnet", num_classes=3, device="cpu").preprocessing_
    effnet = TorchStage.from_timm("test_efficientnet", num_classes=3, device="cpu").preprocessing_
    assert resnet.mean != effnet.mean
    assert resnet.interpolation != effnet.interpolation


def test_explicit_arguments_override_timms_config():
    stage = tiny(input_size=(3, 48, 48), mean=(0.1, 0.2, 0.3), std=(1, 1, 1), crop_pct=1.0)
    assert stage.preprocessing_ == Preprocessing(
        (3, 48, 48), "bilinear", (0.1, 0.2, 0.3), (1.0, 1.0, 1.0), 1.0
    )


def test_plain_modules_get_no_preprocessing_by_default():
    stage = TorchStage(torch.nn.Flatten(), classes=[0, 1], device="cpu")
    assert stage.preprocessing_ == Preprocessing()
    x = torch.rand(2, 1, 1, 2)
    assert torch.equal(stage.preprocessing_(x), x)


def test_uint8_is_scaled_then_normalised():
    prep = Preprocessing(None, "bilinear", (0.5,), (0.25,))
    x = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(prep(x).flatten().numpy(), [-2.0, 2.0])


@pytest.mark.parametrize("crop_pct", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("size", [4, 8])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("normalise", [True, False])
def test_preprocessing_never_modifies_its_input_and_matches_the_formula(
    crop_pct, size, dtype, normalise
):
    mean, std = ((0.5, 0.4, 0.3), (0.2, 0.3, 0.4)) if normalise else (None, None)
    prep = Preprocessing((3, size, size), "bilinear", mean, std, crop_pct)
    x = (torch.rand(2, 3, 8, 8) * 255).to(dtype)
    before = x.clone()
    out = prep(x)
    assert torch.equal(x, before)
    expected = x.double() / 255 if dtype == torch.uint8 else x.double()
    expected = Preprocessing((3, size, size), "bilinear", crop_pct=crop_pct)(expected.float())
    if normalise:
        expected = (expected - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
            1, 3, 1, 1
        )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected.float(), atol=1e-4, rtol=1e-5)


def test_crop_pct_resizes_then_centre_crops():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    out = Preprocessing((1, 4, 4), "nearest", crop_pct=0.5)(x)
    # resize 8 -> floor(4 / 0.5) = 8 is a no-op, then the centre 4x4 is kept
    assert torch.equal(out, x[:, :, 2:6, 2:6])
    wide = Preprocessing((1, 4, 4), "bilinear", crop_pct=0.8)(torch.rand(2, 1, 10, 20))
    assert wide.shape == (2, 1, 4, 4)


def test_same_size_without_crop_skips_the_resize():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(Preprocessing((3, 8, 8), "bicubic")(x), x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": (3, 0, 4)}, "input_size"),
        ({"input_size": (4, 4)}, "input_size"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"mean": (0.5,)}, "both"),
        ({"mean": (0.5,), "std": (0.0,)}, "positive"),
        ({"crop_pct": 1.5}, "crop_pct"),
    ],
)
def test_preprocessing_validates(kwargs, match):
    with pytest.raises(PolicyError, match=match):
        Preprocessing(**kwargs)


def test_wrong_channel_count_is_named():
    with pytest.raises(StageInterfaceError, match="3-channel images, got 1"):
        tiny().predict_proba(torch.rand(2, 1, 32, 32))


# --------------------------------------------------------------------------- predictions
def test_stages_with_different_input_sizes_share_source_images():
    small = tiny(input_size=(3, 24, 24))
    large = tiny("test_efficientnet", input_size=(3, 40, 40))
    X = images(4, size=32)
    assert small.predict_proba(X).shape == large.predict_proba(X).shape == (4, 3)


def test_predict_proba_returns_float64_rows_summing_to_one():
    proba = tiny().predict_proba(images())
    assert proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_tensor_numpy_and_float_inputs_agree():
    stage = tiny()
    X = images()
    from_tensor = stage.predict_proba(X)
    np.testing.assert_array_equal(stage.predict_proba(X.numpy()), from_tensor)
    as_float = X.double() / 255
    np.testing.assert_allclose(stage.predict_proba(as_float.numpy()), from_tensor, atol=1e-6)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_size=st.integers(1, 8), n=st.integers(0, 9))
def test_batch_size_does_not_change_predictions(batch_size, n):
    X = images(9)[:n]
    reference = tiny(batch_size=16).predict_proba(X)
    np.testing.assert_allclose(tiny(batch_size=batch_size).predict_proba(X), reference, atol=1e-6)
    assert reference.shape == (n, 3)


def test_predict_proba_batched_yields_cpu_numpy_batches():
    batches = list(tiny(batch_size=4).predict_proba_batched(images(10)))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert all(isinstance(b, np.ndarray) for b in batches)


def test_predict_returns_labels():
    stage = tiny(classes=["x", "y", "z"])
    labels = stage.predict(images())
    assert set(labels.tolist()) <= {"x", "y", "z"}
    assert labels.tolist() == stage.classes_[stage.predict_proba(images()).argmax(1)].tolist()


def test_module_must_return_logits_per_class():
    stage = TorchStage(torch.nn.Flatten(), classes=["a", "b"], device="cpu")
    with pytest.raises(StageOutputError, match=r"expected logits of shape \(2, 2\)"):
        stage.predict_proba(torch.rand(2, 1, 1, 3))


def test_inference_mode_and_eval_mode():
    stage = tiny()
    stage.module_.train()
    proba = stage.predict_proba(images())
    assert not stage.module_.training
    np.testing.assert_allclose(stage.predict_proba(images()), proba)
    assert all(p.grad is None for p in stage.module_.parameters())


def test_bf16_on_cpu_stays_close_to_fp32():
    X = images()
    np.testing.assert_allclose(
        tiny(precision="bf16").predict_proba(X), tiny().predict_proba(X), atol=3e-2
    )


def test_fp16_on_cpu_warns_and_runs_fp32():
    X = images()
    with pytest.warns(DeviceWarning, match="fp16"):
        proba = tiny(precision="fp16").predict_proba(X)
    np.testing.assert_allclose(proba, tiny().predict_proba(X), atol=1e-6)


def test_channels_last_gives_the_same_probabilities():
    X = images()
    np.testing.assert_allclose(
        tiny(channels_last=True).predict_proba(X), tiny().predict_proba(X), atol=1e-5
    )


def test_device_is_resolved_once_on_first_use():
    stage = TorchStage(torch.nn.Flatten(), classes=[0], device="auto")
    assert stage._device is None
    assert stage.device_ == torch.device("cpu") or torch.cuda.is_available()
    assert stage.device_ is stage.device_


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, PolicyError, "batch_size"),
        ({"batch_size": True}, PolicyError, "batch_size"),
        ({"precision": "fp64"}, PolicyError, "precision"),
        ({"classes": []}, StageInterfaceError, "classes"),
    ],
)
def test_constructor_validates(kwargs, error, match):
    kwargs = {"classes": [0, 1], **kwargs}
    with pytest.raises(error, match=match):
        TorchStage(torch.nn.Flatten(), **kwargs)


def test_module_must_be_a_torch_module():
    with pytest.raises(StageInterfaceError, match=r"torch\.nn\.Module"):
        TorchStage(lambda x: x, classes=[0, 1])


# --------------------------------------------------------------------------- sklearn
def test_is_a_stage_and_never_copied_or_refit():
    stage = tiny()
    assert isinstance(stage, Stage)
    assert clone(stage) is stage
    cascade = CascadeClassifier([("a", stage), ("b", tiny("test_efficientnet"))])
    cloned = clone(cascade)
    assert cloned.stages[0][1] is stage
    weights = {k: v.clone() for k, v in stage.module_.state_dict().items()}
    cloned.fit(images(3), np.arange(3))
    assert cloned.stages_[0] is stage
    for key, value in stage.module_.state_dict().items():
        assert torch.equal(value, weights[key])


def test_cascade_of_torch_stages_predicts():
    cascade = CascadeClassifier(
        [("a", tiny()), ("b", tiny("test_efficientnet"))],
        policy=ConfidencePolicy(thresholds=0.0),
    ).fit(images(3), np.arange(3))
    result = cascade.route(images(5))
    assert result.exit_counts.tolist() == [5, 0]


def test_cost_per_sample_feeds_the_result():
    cascade = CascadeClassifier(
        [("a", tiny(cost_per_sample=2.0)), ("b", tiny("test_efficientnet", cost_per_sample=8.0))],
        policy=ConfidencePolicy(thresholds=2.0),
    ).fit(images(3), np.arange(3))
    result = cascade.route(images(4))
    assert result.stage_cost.tolist() == [2.0, 8.0]
    assert result.mean_cost == 10.0


def test_flops_per_sample_is_cached_per_source_shape():
    stage = tiny()
    first = stage.flops_per_sample(images(2))
    assert first > 0
    assert stage.flops_per_sample(images(5)) == first
    assert len(stage._flops) == 1
    stage.flops_per_sample(images(1, size=48))
    assert len(stage._flops) == 2


# --------------------------------------------------------------------------- weights
def test_pretrained_weights_unavailable_offline_names_the_ways_out(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StageError, match="checkpoint_path") as info:
        TorchStage.from_timm("test_resnet", num_classes=3, pretrained=True)
    message = str(info.value)
    assert "Hugging Face hub cache" in message
    assert "pretrained=False" in message
    assert isinstance(info.value.__cause__, OSError)


def test_checkpoint_path_loads_local_weights(tmp_path):
    source = tiny()
    path = tmp_path / "weights.pth"
    torch.save(source.module_.state_dict(), path)
    torch.manual_seed(123)  # another initialisation, overwritten by the checkpoint
    loaded = TorchStage.from_timm(
        "test_resnet", num_classes=3, checkpoint_path=path, input_size=(3, 32, 32), device="cpu"
    )
    np.testing.assert_array_equal(loaded.predict_proba(images()), source.predict_proba(images()))


def test_pretrained_from_a_local_file_reinitialises_a_different_head(tmp_path):
    backbone = TorchStage.from_timm("test_resnet", num_classes=1000, device="cpu")
    path = tmp_path / "pretrained.pth"
    torch.save(backbone.module_.state_dict(), path)
    stage = TorchStage.from_timm(
        "test_resnet", num_classes=3, pretrained=True, checkpoint_path=path, device="cpu"
    )
    first_conv = next(iter(backbone.module_.state_dict()))
    assert torch.equal(
        stage.module_.state_dict()[first_conv], backbone.module_.state_dict()[first_conv]
    )
    assert stage.predict_proba(images()).shape == (6, 3)


def test_missing_checkpoint_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        TorchStage.from_timm("test_resnet", num_classes=3, checkpoint_path=tmp_path / "missing.pth")


# --------------------------------------------------------------------------- config
def test_timm_config_round_trips_through_json_and_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    stage = tiny(classes=["b", "a", "c"], batch_size=5, precision="bf16", cost_per_sample=3.5)
    config = stage.to_config()
    assert set(config) == {
        "format",
        "version",
        "architecture",
        "classes",
        "preprocessing",
        "batch_size",
        "device",
        "precision",
        "channels_last",
        "cost_per_sample",
    }
    assert config["architecture"] == {
        "source": "timm",
        "name": "test_resnet",
        "num_classes": 3,
        "kwargs": {},
    }
    save_file(stage.state_dict(), tmp_path / "w.safetensors")
    (tmp_path / "c.json").write_text(json.dumps(config))

    torch.manual_seed(99)
    loaded = TorchStage.from_config(
        json.loads((tmp_path / "c.json").read_text()), load_file(tmp_path / "w.safetensors")
    )
    assert loaded.to_config() == config
    assert loaded.classes_.tolist() == ["b", "a", "c"]
    assert loaded.preprocessing_ == stage.preprocessing_
    X = images()
    np.testing.assert_array_equal(loaded.predict_proba(X), stage.predict_proba(X))


def test_state_dict_is_on_the_cpu_and_contiguous():
    state = tiny(channels_last=True).state_dict()
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state.values())


def test_plain_module_needs_the_module_to_load():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    stage = TorchStage(net, classes=[10, 20], input_size=(1, 2, 2), device="cpu")
    config = stage.to_config()
    assert config["architecture"]["class"] == "torch.nn.modules.container.Sequential"
    with pytest.raises(SerializationError, match="pass a freshly built one"):
        TorchStage.from_config(config, stage.state_dict())
    fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    loaded = TorchStage.from_config(config, stage.state_dict(), module=fresh)
    X = torch.rand(3, 1, 2, 2)
    np.testing.assert_array_equal(loaded.predict_proba(X), stage.predict_proba(X))
    assert loaded.classes_.tolist() == [10, 20]


def test_from_config_rejects_bad_input():
    stage = tiny()
    config = stage.to_config()
    with pytest.raises(SerializationError, match="version"):
        TorchStage.from_config({**config, "version": 99}, stage.state_dict())
    missing = {k: v for k, v in config.items() if k != "preprocessing"}
    with pytest.raises(SerializationError, match="preprocessing"):
        TorchStage.from_config(missing, stage.state_dict())
    with pytest.raises(SerializationError, match="do not fit"):
        TorchStage.from_config(config, {"nope": torch.zeros(1)})


def test_device_can_be_overridden_on_load():
    stage = tiny(device="cuda:7")
    loaded = TorchStage.from_config(stage.to_config(), stage.state_dict(), device="cpu")
    assert loaded.device == "cpu"
    assert loaded.predict_proba(images(2)).shape == (2, 3)


def test_non_json_labels_are_reported():
    stage = TorchStage(torch.nn.Flatten(), classes=np.array([object(), object()]), device="cpu")
    with pytest.raises(SerializationError, match="JSON"):
        stage.to_config()


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_stage_matches_cpu():
    cpu = tiny()
    gpu = tiny(device=TEST_DEVICE)
    assert gpu.device_.type == "cuda"
    np.testing.assert_allclose(gpu.predict_proba(images()), cpu.predict_proba(images()), atol=1e-4)


def test_preprocessing_input_size_takes_numpy_integers():
    prep = Preprocessing(input_size=np.array([3, 8, 8]))
    assert prep.input_size == (3, 8, 8)
    assert all(type(v) is int for v in prep.input_size)
    json.dumps(prep.to_dict())  # numpy integers would not be JSON-able
