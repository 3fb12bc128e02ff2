import dataclasses
import logging
import shutil

import numpy as np
import pytest
import timm
import torch
from examples.leukemia import data, presets, training, transforms

from cascademl.torch_stage import Preprocessing, TorchStage


@pytest.fixture(scope="module")
def split(leukemia_root):
    return data.split_dataset(data.scan_dataset(leukemia_root), seed=0)


@pytest.fixture(scope="module")
def images(split):
    return transforms.load_images(split, size=32)


def _datasets(split, images, model, *, double=True):
    prep = transforms.preprocessing_for(model, 32)
    train = transforms.ImageArrayDataset(
        images.subset(split, "train"),
        split.targets("train"),
        prep,
        augment=transforms.build_augmentation(),
        double=double,
    )
    val = transforms.ImageArrayDataset(images.subset(split, "val"), split.targets("val"), prep)
    return train, val


CONFIG = training.TrainConfig(epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0.0, seed=1)


def test_tiny_model_trains_one_epoch(split, images, tmp_path):
    model = training.create_backbone("test_resnet", seed=0)
    train, val = _datasets(split, images, model)
    weights = training.class_weights(split.targets("train"), 4)
    result = training.train_model(
        model, train, val, config=CONFIG, out_dir=tmp_path, weights=weights
    )
    assert len(result.history) == 1
    stats = result.history[0]
    assert np.isfinite(stats.train_loss)
    assert 0.0 <= stats.val_acc <= 1.0
    assert stats.seconds > 0
    assert (tmp_path / training.CHECKPOINT_NAME).is_file()
    assert (tmp_path / training.BEST_NAME).is_file()
    # The library's stage, with the preprocessing object the training transforms used.
    prep = transforms.preprocessing_for(model, 32)
    stage = TorchStage(
        result.model,
        classes=range(4),
        input_size=prep.input_size,
        interpolation=prep.interpolation,
        mean=prep.mean,
        std=prep.std,
        crop_pct=prep.crop_pct,
        device="cpu",
    )
    proba = stage.predict_proba(val.images)
    assert proba.shape == (len(val), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_training_transforms_and_the_saved_stage_share_one_preprocessing():
    from examples.leukemia import backbones

    model = training.create_backbone("test_resnet", seed=0)
    prep = transforms.preprocessing_for(model, 24)
    assert isinstance(prep, Preprocessing)
    assert prep.input_size == (3, 24, 24)
    spec = presets.BackboneSpec("TestResNet", "test_resnet", 24)
    stage = backbones._stage(spec, model, presets.SMOKE, "cpu")
    assert stage.preprocessing_ == prep
    # The dataset normalizes each item as the stage's preprocessing does.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    dataset = transforms.ImageArrayDataset(images, [0, 1], prep)
    expected = prep(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(dataset[1][0].numpy(), expected[1].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="a mean and a std"):
        transforms.ImageArrayDataset(images, [0, 1], Preprocessing((3, 24, 24)))


def test_augmenting_in_worker_processes_is_repeatable(split, images, tmp_path):
    config = dataclasses.replace(CONFIG, num_workers=2)
    states = []
    for name in ("first", "second"):
        model = training.create_backbone("test_resnet", seed=0)
        train, val = _datasets(split, images, model)
        result = training.train_model(model, train, val, config=config, out_dir=tmp_path / name)
        states.append(result.model.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, msg=key)
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        training.TrainConfig(num_workers=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_class_weighted_training_on_cuda(split, images, tmp_path):
    model = training.create_backbone("test_resnet", seed=0)
    train, val = _datasets(split, images, model)
    weights = training.class_weights(split.targets("train"), 4)
    config = dataclasses.replace(CONFIG, precision="auto", num_workers=2)
    result = training.train_model(
        model, train, val, config=config, out_dir=tmp_path, weights=weights, device="cuda"
    )
    assert next(result.model.parameters()).device.type == "cuda"
    assert np.isfinite(result.history[0].val_loss)


class SimulatedCrashError(RuntimeError):
    pass


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(
    split, images, tmp_path, ema_decay
):
    config = dataclasses.replace(CONFIG, epochs=2, patience=5, ema_decay=ema_decay)

    def fresh():
        model = training.create_backbone("test_resnet", seed=0)
        return (model, *_datasets(split, images, model))

    model, train, val = fresh()
    reference = training.train_model(
        model, train, val, config=config, out_dir=tmp_path / "straight"
    )

    def stop_after_first(stats):
        if stats.epoch == 1:
            raise SimulatedCrashError

    model, train, val = fresh()
    with pytest.raises(SimulatedCrashError):
        training.train_model(
            model,
            train,
            val,
            config=config,
            out_dir=tmp_path / "resumed",
            on_epoch_end=stop_after_first,
        )
    seen = []
    model, train, val = fresh()
    resumed = training.train_model(
        model, train, val, config=config, out_dir=tmp_path / "resumed", on_epoch_end=seen.append
    )
    assert resumed.resumed_from == 1
    assert [s.epoch for s in seen] == [2]
    assert [s.epoch for s in resumed.history] == [1, 2]
    assert resumed.best_epoch == reference.best_epoch
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)

    again = []
    model, train, val = fresh()
    finished = training.train_model(
        model, train, val, config=config, out_dir=tmp_path / "resumed", on_epoch_end=again.append
    )
    assert again == []
    assert finished.resumed_from == 2
    assert len(finished.history) == 2


def test_weight_average_is_what_is_validated_kept_and_returned(split, images, tmp_path):
    config = dataclasses.replace(CONFIG, ema_decay=0.9)
    model = training.create_backbone("test_resnet", seed=0)
    train, val = _datasets(split, images, model)
    result = training.train_model(model, train, val, config=config, out_dir=tmp_path)
    saved = torch.load(tmp_path / training.CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == len(train) // config.batch_size
    kept = result.model.state_dict()
    averaged = [k for k, v in saved["ema"].items() if v.is_floating_point()]
    for key in averaged:
        torch.testing.assert_close(kept[key], saved["ema"][key], msg=key)
    # The average is not the last step's weights.
    assert any(not torch.equal(saved["ema"][k], saved["model"][k]) for k in averaged)
    _, accuracy = training._evaluate(
        result.model, val, torch.nn.CrossEntropyLoss(), config, torch.device("cpu")
    )
    assert accuracy == pytest.approx(result.best_val_acc)
    with pytest.raises(ValueError, match="ema_decay"):
        dataclasses.replace(config, ema_decay=1.0)


def test_checkpoint_from_other_settings_is_refused(split, images, tmp_path):
    model = training.create_backbone("test_resnet", seed=0)
    train, val = _datasets(split, images, model)
    training.train_model(model, train, val, config=CONFIG, out_dir=tmp_path)
    other = dataclasses.replace(CONFIG, lr=1e-4)
    with pytest.raises(training.CheckpointMismatchError, match="other settings"):
        training.train_model(model, train, val, config=other, out_dir=tmp_path)


def test_pretrained_unavailable_names_the_ways_out(offline):
    with pytest.raises(training.PretrainedWeightsUnavailableError) as caught:
        training.create_backbone("test_resnet", pretrained=True)
    message = str(caught.value)
    assert "--no-pretrained" in message
    assert "--checkpoint test_resnet=PATH" in message
    assert "hf download timm/test_resnet" in message
    assert offline == [], "create_backbone must not download without allow_download"


def test_pretrained_from_a_local_checkpoint(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = training.create_backbone("test_resnet", pretrained=True, checkpoint=path)
    loaded, original = model.state_dict(), source.state_dict()
    backbone_keys = [k for k in original if not k.startswith("fc.")]
    assert backbone_keys
    for key in backbone_keys:
        torch.testing.assert_close(loaded[key], original[key], msg=key)
    assert model.get_classifier().out_features == 4
    with pytest.raises(FileNotFoundError, match="missing"):
        training.create_backbone("test_resnet", pretrained=True, checkpoint=tmp_path / "missing")


def test_class_weights_are_balanced():
    weights = training.class_weights([0, 0, 0, 1, 2, 3], 4)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.5, 1.5, 1.5]))
    with pytest.raises(ValueError, match=r"\[3\]"):
        training.class_weights([0, 1, 2], 4)


def test_stain_reference_is_fitted_on_training_images_only(split, tmp_path):
    train_paths = {row.path for row in split.select("train")}
    normalizer = transforms.fit_stain_normalizer(split, size=32, per_class=2, seed=0)
    assert normalizer.fitted
    assert len(normalizer.reference_paths) == 8
    assert set(normalizer.reference_paths) <= train_paths

    damaged = tmp_path / "data"
    shutil.copytree(split.root, damaged)
    for row in split.select("val") + split.select("test"):
        (damaged / row.path).write_bytes(b"")
    moved = dataclasses.replace(split, root=damaged)
    refit = transforms.fit_stain_normalizer(moved, size=32, per_class=2, seed=0)
    assert refit.he_ref == normalizer.he_ref
    assert refit.max_c_ref == normalizer.max_c_ref


def test_stain_normalization_is_cached_and_falls_back(split, tmp_path, monkeypatch):
    normalizer = transforms.fit_stain_normalizer(split, size=32)
    white = np.full((32, 32, 3), 250, np.uint8)
    same, reason = normalizer.transform(white)
    assert reason is not None
    assert "stained pixels" in reason
    np.testing.assert_array_equal(same, white)

    first = transforms.load_images(split, size=32, normalizer=normalizer, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("stain-*.npy"))) == 1
    assert first.images.shape == (len(split.rows), 32, 32, 3)

    def fail(image):
        pytest.fail("the cache was not used")

    monkeypatch.setattr(normalizer, "transform", fail)
    second = transforms.load_images(split, size=32, normalizer=normalizer, cache_dir=tmp_path)
    np.testing.assert_array_equal(second.images, first.images)

    restored = transforms.StainNormalizer.from_dict(normalizer.to_dict())
    assert restored.fingerprint() == normalizer.fingerprint()


def test_load_images_gives_the_same_result_on_any_number_of_threads(split, monkeypatch):
    """Threads decode and normalize images; the result and torch's thread count are kept."""
    normalizer = transforms.fit_stain_normalizer(split, size=32)
    original = normalizer.transform

    def transform(image):  # some fallbacks too, decided by the image alone
        if int(image.sum()) % 3 == 0:
            return image, "forced fallback"
        return original(image)

    monkeypatch.setattr(normalizer, "transform", transform)
    threads = torch.get_num_threads()
    serial = transforms.load_images(split, size=32, normalizer=normalizer, workers=1)
    parallel = transforms.load_images(split, size=32, normalizer=normalizer, workers=3)
    np.testing.assert_array_equal(parallel.images, serial.images)
    assert serial.fallbacks
    assert parallel.fallbacks == serial.fallbacks
    assert list(parallel.fallbacks) == sorted(parallel.fallbacks)  # in the split's order
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        transforms.load_images(split, size=32, workers=0)


def test_load_images_names_a_corrupt_image_and_restores_threads(split, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(split.root, root)
    bad = root / split.rows[3].path
    bad.write_bytes(b"not a jpeg")
    moved = dataclasses.replace(split, root=root)
    threads = torch.get_num_threads()
    with pytest.raises(data.BadImageError, match=bad.name):
        transforms.load_images(moved, size=32, workers=2)
    assert torch.get_num_threads() == threads


def test_doubling_serves_plain_then_augmented(split, images):
    model = training.create_backbone("test_resnet", seed=0)
    train, _ = _datasets(split, images, model)
    plain, _ = _datasets(split, images, model, double=False)
    count = len(split.select("train"))
    assert len(train) == 2 * count
    first, label = train[0]
    assert first.shape == (3, 32, 32)
    assert label == train[count][1]
    torch.testing.assert_close(first, train[0][0])
    torch.manual_seed(0)
    assert not torch.equal(train[count][0], first)
    assert len(plain) == count


def test_presets_and_overrides():
    cpu = presets.get_preset("cpu", ["epochs=2", "resnet50.lr=5e-4", "amp=false"])
    assert cpu.epochs == 2
    assert cpu.precision == "fp32"  # the override of earlier versions still works
    assert cpu.backbone("ResNet50").lr == 5e-4
    assert presets.CPU.backbone("resnet50").lr != 5e-4
    assert not cpu.pretrained
    paper = presets.PAPER
    assert paper.backbone("inception_v3").image_size == 299
    assert {s.image_size for s in paper.backbones if s.timm_name != "inception_v3"} == {224}
    assert paper.pretrained
    subset = presets.PAPER.with_overrides(backbones="densenet201,resnet50", group_block="20")
    assert [s.timm_name for s in subset.backbones] == ["densenet201", "resnet50"]
    assert subset.group_block == 20
    assert presets.SMOKE.with_overrides(group_block="none").group_block is None
    # Overrides apply in their order: a typed backbone tuple, then a setting of one of them.
    first = presets.SMOKE.backbones[:1]
    ordered = presets.SMOKE.with_overrides({"backbones": first, "test_resnet.lr": "0.5"})
    assert [(s.timm_name, s.lr) for s in ordered.backbones] == [("test_resnet", 0.5)]
    config = cpu.train_config(cpu.backbone("vgg19_bn"))
    assert config.epochs == cpu.backbone("vgg19_bn").epochs
    assert config.precision == "fp32"
    with pytest.raises(KeyError, match="no setting"):
        presets.CPU.with_overrides(epoch="3")
    with pytest.raises(KeyError, match="no backbone"):
        presets.CPU.with_overrides({"alexnet.lr": "1"})
    with pytest.raises(ValueError, match="key=value"):
        presets.parse_overrides(["epochs"])
    with pytest.raises(ValueError, match="cannot read"):
        presets.CPU.with_overrides(epochs="many")


def test_mlp_ratio_reaches_the_model_the_stage_and_the_overrides():
    """A backbone's mlp_ratio narrows timm's classifier MLP when training and when saved."""
    from examples.leukemia import backbones

    vgg = presets.CPU.backbone("vgg19_bn")
    assert vgg.mlp_ratio == 0.125
    assert vgg.model_kwargs == {"mlp_ratio": 0.125}
    assert presets.CPU.backbone("resnet50").model_kwargs == {}
    wide = presets.get_preset("cpu", ["vgg19_bn.mlp_ratio=1"]).backbone("vgg19_bn")
    assert wide.mlp_ratio == 1.0
    assert presets.get_preset("cpu", ["vgg19.mlp_ratio=none"]).backbone("vgg19").mlp_ratio is None
    with pytest.raises(ValueError, match=r"VGG19\.mlp_ratio must be positive"):
        presets.get_preset("cpu", ["vgg19.mlp_ratio=0"])

    spec = presets.BackboneSpec("TestViT", "test_vit", 32, mlp_ratio=1.0)
    default = sum(p.numel() for p in timm.create_model("test_vit", num_classes=4).parameters())
    narrow = training.create_backbone(
        "test_vit", num_classes=4, pretrained=False, seed=0, **spec.model_kwargs
    )
    assert sum(p.numel() for p in narrow.parameters()) < default
    stage = backbones._stage(spec, narrow, presets.SMOKE, "cpu")  # loads narrow's weights strictly
    assert sum(p.numel() for p in stage.module_.parameters()) < default

    # Runs from before the field existed keep their fingerprint (and so resume).
    plain = presets.SMOKE.backbones[0]
    manifest = type("M", (), {"digest": lambda self: "d"})()
    assert "mlp_ratio" not in backbones._fingerprint(presets.SMOKE, plain, manifest, "x")["spec"]
    assert backbones._fingerprint(presets.SMOKE, spec, manifest, "x")["spec"]["mlp_ratio"] == 1.0


@pytest.mark.parametrize(
    "case", [(presets.CPU, presets.CPU_BUDGET), (presets.CPU_BF16, presets.CPU_BF16_BUDGET)]
)
def test_cpu_budgets_describe_their_presets(case):
    """Each budget: one entry per backbone at the preset's size and epochs, per kind of CPU."""
    preset, budgets = case
    expected = set()
    for spec in preset.backbones:
        epochs = spec.epochs if spec.epochs is not None else preset.epochs
        expected.add(f"{spec.timm_name} @{spec.image_size} x{epochs}")
    assert set(budgets) == {"bf16 (AMX)", "fp32 (AVX2)"}
    for budget in budgets.values():
        assert set(budget) == expected


def test_the_cpu_preset_is_sized_for_either_kind_of_cpu():
    """cpu: within the hour in float32 on AVX2 (training by the step timing, plus margin for
    augmentation, weight averaging, splitting, normalization and evaluation); cpu-bf16 only
    with native bfloat16."""
    minutes = {
        name: {kind: sum(b.values()) / 60 for kind, b in budgets.items()}
        for name, budgets in (("cpu", presets.CPU_BUDGET), ("cpu-bf16", presets.CPU_BF16_BUDGET))
    }
    assert minutes["cpu"]["fp32 (AVX2)"] < 50
    assert minutes["cpu"]["bf16 (AMX)"] < 25
    assert minutes["cpu-bf16"]["bf16 (AMX)"] < 52
    assert minutes["cpu-bf16"]["fp32 (AVX2)"] > 120
    assert not presets.CPU.sized_for_bf16
    assert presets.get_preset("cpu-bf16").sized_for_bf16


@pytest.mark.parametrize(
    "case", [("cpu-bf16", False, True), ("cpu-bf16", True, False), ("cpu", False, False)]
)
def test_a_preset_sized_for_bf16_warns_when_it_would_train_in_fp32(case, monkeypatch, caplog):
    from examples.leukemia import pipeline

    from cascademl import _precision

    name, native, warns = case
    monkeypatch.setattr(_precision.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(_precision, "_cpu_flag", lambda flag: native and flag == "amx_tile")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    with caplog.at_level(logging.WARNING, logger="examples.leukemia.backbones"):
        assert pipeline.warn_if_slow_precision(presets.get_preset(name), "cpu") is warns
    assert ("--preset cpu is sized for either kind" in caplog.text) is warns
    # The two times come from CPU_BF16_BUDGET (49.8 and 168.6 min of training).
    assert ("about 50 min" in caplog.text and "about 169 min" in caplog.text) is warns
    # A preset asked to train in fp32 on purpose is the user's choice: it warns too, once.
    forced = presets.get_preset("cpu-bf16", ["precision=fp32"])
    assert pipeline.warn_if_slow_precision(forced, "cpu")


def test_cpu_preset_asks_for_auto_precision_and_validates_it():
    assert presets.CPU.precision == "auto"
    assert presets.CPU.train_config(presets.CPU.backbones[0]).precision == "auto"
    assert presets.get_preset("cpu", ["amp=true"]).precision == "bf16"
    assert presets.get_preset("cpu", ["precision=fp32"]).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        presets.get_preset("cpu", ["precision=fp64"])
    with pytest.raises(ValueError, match=r"TrainConfig\.precision"):
        training.TrainConfig(precision="half")


@pytest.mark.parametrize("case", [(False, "fp32"), (True, "bf16")])
def test_training_logs_and_uses_the_resolved_precision(split, images, tmp_path, monkeypatch, case):
    """precision='auto' trains in bf16 only where the CPU runs it natively."""
    native, expected = case
    from cascademl import _precision

    monkeypatch.setattr(_precision.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(_precision, "_cpu_flag", lambda name: native and name == "amx_tile")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    entered = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):
        entered.append(kwargs.get("dtype"))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(training.torch, "autocast", spy)
    model = training.create_backbone("test_resnet", seed=0)
    train, val = _datasets(split, images, model)
    config = dataclasses.replace(CONFIG, epochs=1, precision="auto")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    train_logger = logging.getLogger(training.__name__)
    level = train_logger.level
    train_logger.setLevel(logging.INFO)  # setLevel also clears the logger's level cache
    train_logger.addHandler(handler)
    try:
        training.train_model(model, train, val, config=config, out_dir=tmp_path)
    finally:
        train_logger.removeHandler(handler)
        train_logger.setLevel(level)
    assert any(f"training in {expected}" in m for m in messages)
    assert bool(entered) is native
    assert all(dtype == torch.bfloat16 for dtype in entered)
