"""Pretrained weights: checked before any work, downloaded only when asked, files named.

No test here touches the network: the ``offline`` fixture (conftest.py) replaces the hub
caches and timm's download.
"""

import dataclasses
import logging

import huggingface_hub
import pytest
import timm
import torch
from examples.leukemia import pipeline, presets, training
from examples.leukemia.__main__ import main

SMOKE_PRETRAINED = dataclasses.replace(presets.SMOKE, pretrained=True)


def _weights_file(tmp_path, name="test_resnet"):
    path = tmp_path / f"{name}.pth"
    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    return path


def test_missing_weights_are_all_listed_before_any_work(offline, leukemia_root, tmp_path, caplog):
    out = tmp_path / "run"
    argv = ["run", "--data-root", str(leukemia_root), "--preset", "smoke", "--out", str(out)]
    assert main([*argv, "--set", "pretrained=true", "--no-progress"]) == 2
    assert "test_resnet, test_efficientnet are not available offline" in caplog.text
    assert "--download-weights" in caplog.text
    assert "--checkpoint test_efficientnet=PATH" in caplog.text
    assert not out.exists(), "the run must stop before the split and the stain cache"
    assert offline == [], "nothing may be downloaded without --download-weights"


def test_checkpoints_are_matched_by_timm_or_display_name(offline, tmp_path):
    resnet = _weights_file(tmp_path)
    effnet = _weights_file(tmp_path, "test_efficientnet")
    resolved = pipeline.check_pretrained_weights(
        SMOKE_PRETRAINED, {"TESTRESNET": resnet, "test_efficientnet": str(effnet)}
    )
    assert resolved == {"test_resnet": str(resnet), "test_efficientnet": str(effnet)}
    with pytest.raises(training.PretrainedWeightsUnavailableError, match="test_efficientnet"):
        pipeline.check_pretrained_weights(SMOKE_PRETRAINED, {"test_resnet": resnet})
    # With the download allowed, the backbone without a file is left to timm.
    allowed = pipeline.check_pretrained_weights(
        SMOKE_PRETRAINED, {"test_resnet": resnet}, allow_download=True
    )
    assert allowed == {"test_resnet": str(resnet)}


def test_bad_checkpoint_arguments_are_named(tmp_path):
    resnet = _weights_file(tmp_path)
    with pytest.raises(ValueError, match="'resnet51' is not a backbone of the 'smoke' preset"):
        pipeline.check_pretrained_weights(SMOKE_PRETRAINED, {"resnet51": resnet})
    missing = tmp_path / "nothing.pth"
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        pipeline.check_pretrained_weights(SMOKE_PRETRAINED, {"test_resnet": missing})
    with pytest.raises(ValueError, match="trains from scratch"):
        pipeline.check_pretrained_weights(presets.SMOKE, {"test_resnet": resnet})


def test_checkpoint_without_a_path_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["run", "--data-root", str(tmp_path), "--out", str(tmp_path), "--checkpoint", "x"])
    assert caught.value.code == 2
    assert "expected NAME=PATH" in capsys.readouterr().err


def test_bad_setting_value_is_an_error_not_a_traceback(tmp_path, caplog):
    argv = ["run", "--data-root", str(tmp_path), "--out", str(tmp_path), "--set", "epochs=abc"]
    assert main(argv) == 2
    assert "Preset.epochs: cannot read 'abc'" in caplog.text


def test_download_weights_flag_reaches_timm(offline, leukemia_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    resnet = _weights_file(tmp_path)
    argv = ["run", "--data-root", str(leukemia_root), "--preset", "smoke", "--no-progress"]
    argv += ["--out", str(tmp_path / "run"), "--set", "pretrained=true"]
    argv += ["--checkpoint", f"test_resnet={resnet}", "--download-weights"]
    assert main(argv) == 2
    assert offline == ["test_efficientnet"], "only the backbone without a file is downloaded"
    assert f"loading test_resnet weights from {resnet}" in caplog.text
    message = caplog.records[-1].getMessage()
    assert "downloading ImageNet weights for 'test_efficientnet' failed" in message
    assert "Network is unreachable" in message
    assert "--download-weights" not in message, "the download was tried already"


def test_unloadable_weights_file_is_named(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(training.PretrainedWeightsUnavailableError, match=r"garbage\.pth"):
        training.create_backbone("test_resnet", pretrained=True, checkpoint=garbage)
    other = _weights_file(tmp_path, "test_efficientnet")
    with pytest.raises(training.PretrainedWeightsUnavailableError) as caught:
        training.create_backbone("test_resnet", pretrained=True, checkpoint=other)
    assert "test_efficientnet.pth" in str(caught.value)
    assert "weights for 'test_resnet'" in str(caught.value)


def test_weights_from_the_hub_cache_in_safetensors(monkeypatch, tmp_path):
    """The Hugging Face hub cache holds timm's weights as model.safetensors."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = timm.create_model("test_resnet", pretrained=False)
    cached = tmp_path / "model.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(cached))
    asked = []

    def cache_lookup(repo_id, filename, *args, **kwargs):
        asked.append((repo_id, filename))
        return str(cached) if filename == "model.safetensors" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache_lookup)
    assert training.pretrained_available("test_resnet")
    assert pipeline.check_pretrained_weights(SMOKE_PRETRAINED, {}) == {}
    model = training.create_backbone("test_resnet", pretrained=True, num_classes=4)
    assert asked[0][0].startswith("timm/test_resnet")
    loaded, original = model.state_dict(), source.state_dict()
    first = next(iter(original))
    torch.testing.assert_close(loaded[first], original[first])


@pytest.mark.parametrize(
    "case",
    [
        ("--max-cost-ratio", "0", "in (0, 1]"),
        ("--max-cost-ratio", "1.5", "in (0, 1]"),
        ("--max-cost-ratio", "cheap", "in (0, 1]"),
        ("--scoring", "neg_logloss", "did you mean neg_log_loss"),
        ("--scoring", "bogus", "not a scikit-learn scorer name"),
    ],
)
@pytest.mark.parametrize("command", ["run", "seeds"])
def test_tuning_options_are_checked_before_any_work(capsys, tmp_path, command, case):
    # A bad score or budget used to surface only after every backbone had trained (or,
    # for a budget of 0 or above 1, not at all).
    option, value, message = case
    argv = [command, "--data-root", str(tmp_path), "--out", str(tmp_path), option, value]
    if command == "seeds":
        argv += ["--seeds", "0"]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing split, cached or trained


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("epochs=0", "TrainConfig.epochs must be at least 1"),
        ("test_resnet.lr=-1", "TrainConfig.lr must be positive"),
        ("test_fraction=0.3", "test_fraction must be 1/k"),
    ],
)
def test_a_setting_training_or_splitting_would_refuse_is_refused_first(
    tmp_path, caplog, setting, message
):
    data = tmp_path / "data"
    data.mkdir()
    argv = ["run", "--data-root", str(data), "--out", str(tmp_path / "out"), "--preset", "smoke"]
    assert main([*argv, "--set", setting]) == 2
    assert message in caplog.text
    assert not (tmp_path / "out").exists()  # refused before the split or any training
