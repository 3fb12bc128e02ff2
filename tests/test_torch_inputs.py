"""TorchStage inputs beyond (n, c, h, w) batches: channels-last arrays, lists of images."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from cascademl import (
    CascadeClassifier,
    ConfidencePolicy,
    PolicyError,
    StageInterfaceError,
    torch_stage,
)
from cascademl.torch_stage import TorchStage


def tiny(name="test_resnet", **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("input_size", (3, 32, 32))
    kwargs.setdefault("device", "cpu")
    return TorchStage.from_timm(name, num_classes=3, **kwargs)


def nchw(n=4, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


# --------------------------------------------------------------------------- channels last
def test_nhwc_uint8_arrays_and_tensors_are_read_as_channels_last():
    stage = tiny()
    X = nchw()
    expected = stage.predict_proba(X)
    nhwc = X.permute(0, 2, 3, 1).contiguous()
    np.testing.assert_allclose(stage.predict_proba(nhwc.numpy()), expected, atol=1e-6)
    np.testing.assert_allclose(stage.predict_proba(nhwc), expected, atol=1e-6)


def test_nhwc_float_images_of_another_size_are_resized_like_nchw():
    stage = tiny()
    X = nchw(size=40).float() / 255
    expected = stage.predict_proba(X)
    nhwc = X.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(stage.predict_proba(nhwc), expected, atol=1e-5)


def test_channels_last_is_a_view_not_a_copy():
    nhwc = nchw().permute(0, 2, 3, 1).contiguous()
    out = torch_stage._as_nchw(nhwc, 3)
    assert out.shape == (4, 3, 32, 32)
    assert out.data_ptr() == nhwc.data_ptr()


def test_ambiguous_layouts_are_left_alone():
    x = torch.zeros(2, 3, 8, 3)  # channels first: 3 channels of 8 x 3
    assert torch_stage._as_nchw(x, 3) is x
    assert torch_stage._as_nchw(x, None) is x
    y = torch.zeros(2, 8, 8, 3)
    assert torch_stage._as_nchw(y, None).shape == (2, 3, 8, 8)  # unknown channels: 3 last
    assert torch_stage._as_nchw(y, 8) is y  # a stage of 8 channels reads it as NCHW


def test_wrong_layout_error_says_what_the_stage_takes():
    with pytest.raises(StageInterfaceError, match=r"expected \(n_samples, 3, height, width\)"):
        tiny().predict_proba(torch.rand(2, 5, 32, 7))


def test_cascade_of_torch_stages_routes_channels_last_arrays():
    cascade = CascadeClassifier(
        [("a", tiny()), ("b", tiny("test_efficientnet"))],
        policy=ConfidencePolicy(thresholds=0.5),
    ).fit(nchw(3), np.arange(3))
    X = nchw(6, seed=1)
    expected = cascade.predict_proba(X)
    nhwc = X.permute(0, 2, 3, 1).contiguous().numpy()
    np.testing.assert_allclose(cascade.predict_proba(nhwc), expected, atol=1e-6)


# --------------------------------------------------------------------------- lists
def test_list_of_pil_images_is_stacked():
    image = pytest.importorskip("PIL.Image")
    stage = tiny()
    X = nchw()
    pictures = [image.fromarray(x.permute(1, 2, 0).numpy(), mode="RGB") for x in X]
    np.testing.assert_allclose(stage.predict_proba(pictures), stage.predict_proba(X), atol=1e-6)
    assert stage.flops_per_sample(pictures) == stage.flops_per_sample(X)


def test_grayscale_and_rgba_pil_images_are_converted_to_the_models_channels():
    image = pytest.importorskip("PIL.Image")
    stage = tiny()
    gray = image.fromarray(np.full((32, 32), 128, dtype=np.uint8), mode="L")
    rgba = image.fromarray(np.full((32, 32, 4), 128, dtype=np.uint8), mode="RGBA")
    rgb = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    proba = stage.predict_proba([gray, rgba])
    np.testing.assert_allclose(proba, np.repeat(stage.predict_proba(rgb), 2, axis=0), atol=1e-6)


def test_16_bit_and_float_pil_images_are_scaled_to_8_bits_not_clipped():
    image = pytest.importorskip("PIL.Image")
    stage = tiny()
    values = np.random.default_rng(0).integers(0, 65536, (32, 32), dtype=np.uint16)
    deep = image.fromarray(values)  # mode I;16, as Pillow opens a 16-bit PNG
    assert deep.mode == "I;16"
    # Pillow's convert clips at 255 (the image turns almost white); the stage scales.
    assert np.asarray(deep.convert("L")).mean() > 250
    eight = np.rint(values / 257).astype(np.uint8)
    rgb = torch.from_numpy(np.repeat(eight[None, None], 3, axis=1))
    expected = stage.predict_proba(rgb)
    np.testing.assert_allclose(stage.predict_proba([deep]), expected, atol=1e-6)
    # A 32-bit integer image holding 16-bit values and a float image in [0, 1] likewise.
    wide = image.fromarray(values.astype(np.int32))
    unit = image.fromarray((values / 65535).astype(np.float32))
    assert (wide.mode, unit.mode) == ("I", "F")
    np.testing.assert_allclose(
        stage.predict_proba([wide, unit]), np.repeat(expected, 2, 0), atol=1e-6
    )
    # A one-channel stage gets one 8-bit channel too.
    grey = tiny(input_size=(1, 32, 32), in_chans=1, mean=(0.5,), std=(0.25,))
    np.testing.assert_allclose(
        grey.predict_proba([deep]),
        grey.predict_proba(torch.from_numpy(eight[None, None])),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("dtype", "top", "expected"),
    [
        (np.int32, 200, 200),  # fits 8 bits: kept as it is
        (np.int32, 4000, round(4000 / 257)),  # fits 16 bits: scaled from 65535
        (np.int32, 100_000, 255),  # wider: scaled from its own largest value
        (np.float32, 0.5, 128),  # floats in [0, 1]
        (np.float32, 200.0, 200),  # floats in [0, 255]
    ],
)
def test_to_uint8_image_picks_the_smallest_range_that_holds_the_values(dtype, top, expected):
    image = pytest.importorskip("PIL.Image")
    values = np.zeros((2, 2), dtype=dtype)
    values[0, 0] = top
    values[1, 1] = -5  # negative values become 0
    out = np.asarray(torch_stage.to_uint8_image(image.fromarray(values), "L"))
    assert out.dtype == np.uint8
    assert (out[0, 0], out[1, 1]) == (expected, 0)


def test_pil_images_of_different_sizes_name_the_sizes():
    image = pytest.importorskip("PIL.Image")
    pictures = [image.new("RGB", (32, 32)), image.new("RGB", (40, 30))]
    with pytest.raises(StageInterfaceError, match=r"different sizes .*resize them to one size"):
        tiny().predict_proba(pictures)


def test_list_of_chw_arrays_is_stacked():
    stage = tiny()
    X = nchw()
    expected = stage.predict_proba(X)
    np.testing.assert_allclose(stage.predict_proba(list(X)), expected, atol=1e-6)
    np.testing.assert_allclose(stage.predict_proba([x.numpy() for x in X]), expected, atol=1e-6)
    hwc = [x.permute(1, 2, 0).numpy() for x in X]
    np.testing.assert_allclose(stage.predict_proba(hwc), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("X", "match"),
    [
        ([], "empty list"),
        (["a.png", "b.png"], r"list of str\. TorchStage takes .* PIL\.Image\.open"),
        ([Path("a.png")], "PIL.Image.open"),
        ([np.zeros((3, 8, 8)), np.zeros((3, 9, 9))], "same shape"),
        ([np.zeros((8, 8))], "same shape"),
        ([1, 2], r"list of int\. TorchStage takes a tensor or numpy array"),
    ],
)
def test_unreadable_lists_get_a_hint(X, match):
    with pytest.raises(StageInterfaceError, match=match):
        tiny().predict_proba(X)


# --------------------------------------------------------------------------- options
def test_stage_options_are_the_constructors_keyword_parameters():
    params = inspect.signature(TorchStage).parameters
    keywords = {name for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords - {"classes"} == torch_stage._STAGE_OPTIONS
    assert torch_stage._PREPROCESSING_OPTIONS < torch_stage._STAGE_OPTIONS


def test_from_timm_splits_stage_options_from_model_arguments():
    stage = tiny(
        batch_size=7, crop_pct=0.875, precision="bf16", drop_rate=0.25, drop_path_rate=None
    )
    assert stage.batch_size == 7
    assert stage.precision == "bf16"
    assert stage.preprocessing_.crop_pct == 0.875
    assert stage.to_config()["architecture"]["kwargs"] == {"drop_rate": 0.25}
    with pytest.raises(PolicyError, match="batch_size must be a positive integer, got 0"):
        tiny(batch_size=0)
    with pytest.raises(TypeError, match="no_such_argument"):
        tiny(no_such_argument=1)


def test_from_config_restores_every_option(tmp_path):
    stage = tiny(batch_size=5, channels_last=True, cost_per_sample=3.0, drop_rate=0.1)
    loaded = TorchStage.from_config(stage.to_config(), stage.state_dict())
    assert loaded.to_config() == stage.to_config()
    assert loaded.preprocessing_ == stage.preprocessing_
    assert TorchStage.from_config(stage.to_config(), stage.state_dict(), device="meta").device == (
        "meta"
    )


def test_torch_stage_accepts_a_numpy_integer_batch_size():
    import numpy as np

    from cascademl import PolicyError, TorchStage

    stage = TorchStage.from_timm(
        "test_resnet", num_classes=3, input_size=(3, 32, 32), batch_size=np.int64(7)
    )
    assert stage.batch_size == 7
    assert type(stage.batch_size) is int
    with pytest.raises(PolicyError, match="batch_size"):
        TorchStage.from_timm("test_resnet", num_classes=3, batch_size=np.int64(0))
