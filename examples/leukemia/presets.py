"""Experiment presets: ``paper``, ``cpu``, ``cpu-bf16`` and ``smoke``, with overrides.

* ``paper``: the paper's settings: the five backbones ImageNet-pretrained, InceptionV3 at
  299 px and the others at 224 px, 10 epochs, training set doubled by augmentation,
  Macenko stain normalization. Meant for a GPU.
* ``cpu``: the same experiment from scratch, sized for a 2-core CPU of either kind: one
  without native bfloat16 (float32 on AVX2, the slower case it was sized on) and one with
  it (bfloat16 on AMX). Sizes, batch sizes and epochs were sized with
  ``benchmarks/leukemia_epoch_time.py`` and checked against a full run's logged epoch times
  (see :data:`CPU_BUDGET` and ``docs/examples/leukemia-history.md``). Three epochs per backbone
  (two for VGG19, whose classifier MLP is narrowed to 512), so the backbones are weaker
  than ``cpu-bf16``'s.
* ``cpu-bf16``: the previous release's ``cpu`` preset, 4-10 epochs at up to 80 px, for a
  CPU that trains in bfloat16 natively (about 50 min of training on a 2-core Xeon with
  AMX; about 169 min in float32 on a 2-core AVX2 CPU, where the run warns at its start).
* ``smoke``: tiny timm ``test_*`` models at 32 px, a few images per class, one epoch;
  for tests.

**VGG19.** The ``paper`` preset uses ``vgg19`` (no batch norm), the network the paper
names, which fine-tunes well from ImageNet weights. The ``cpu`` preset trains from
scratch and uses ``vgg19_bn``: without batch normalization a 19-layer VGG trained from
scratch for a few epochs with AdamW often does not leave chance level.

Overrides: top-level fields by name (``epochs=3``), one backbone's field as
``<backbone>.<field>`` where ``<backbone>`` is its timm name or display name, without
regard to case (``resnet50.lr=5e-4``, ``DenseNet201.image_size=96``), and
``backbones=resnet50,densenet201`` to keep a subset (in that order).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict

from .data import SCALE_BAR_FRACTION, check_fractions
from .training import PRECISIONS, TrainConfig


class SplitOptions(TypedDict):
    """The keyword arguments of :func:`examples.leukemia.data.prepare_split` a preset sets."""

    seed: int
    val_fraction: float
    test_fraction: float
    near_threshold: int | None
    block_size: int | None
    max_per_class: int | None


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of an experiment.

    Attributes:
        name: Display name, as the paper writes it (``"DenseNet201"``).
        timm_name: timm model name (``"densenet201"``).
        image_size: Square input side in pixels.
        batch_size: Training batch size.
        lr: Peak AdamW learning rate.
        drop_rate: Dropout before the classifier.
        weight_decay: AdamW weight decay.
        epochs: Epochs for this backbone; ``None`` uses the preset's.
        mlp_ratio: Width of the classifier MLP relative to the architecture's own, passed
            to ``timm.create_model`` (VGG's 4096-wide head: ``0.125`` makes its first layer
            512 wide); ``None`` keeps the architecture's.
    """

    name: str
    timm_name: str
    image_size: int
    batch_size: int = 32
    lr: float = 1e-3
    drop_rate: float = 0.2
    weight_decay: float = 0.05
    epochs: int | None = None
    mlp_ratio: float | None = None

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Architecture arguments for ``timm.create_model`` beyond the class count."""
        return {} if self.mlp_ratio is None else {"mlp_ratio": self.mlp_ratio}

    def __post_init__(self) -> None:
        """Validate the settings."""
        if self.mlp_ratio is not None and not self.mlp_ratio > 0:
            msg = f"{self.name}.mlp_ratio must be positive or None, got {self.mlp_ratio}"
            raise ValueError(msg)
        for field_name in ("image_size", "batch_size"):
            value = getattr(self, field_name)
            if value < 1:
                msg = f"{self.name}.{field_name} must be at least 1, got {value}"
                raise ValueError(msg)
        if not 0 <= self.drop_rate < 1:
            msg = f"{self.name}.drop_rate must be in [0, 1), got {self.drop_rate}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Preset:
    """All settings of one experiment.

    Attributes:
        name: Preset name.
        backbones: The backbones, in the paper's order.
        pretrained: Start from ImageNet weights.
        epochs: Maximum epochs (a backbone's own ``epochs`` wins).
        patience: Early-stopping patience in epochs.
        warmup_epochs: Linear warm-up of the learning rate, in epochs.
        ema_decay: Decay of the weight average that is validated and kept (``None``: off).
        doubling: Show every training image twice per epoch, plain and augmented.
        stain_normalize: Apply Macenko stain normalization.
        mask_bottom: Share of the image rows, at the bottom, filled with a constant in
            every split and at prediction (where the dataset's scale bars sit; ``0``:
            off). See :func:`examples.leukemia.data.mask_bottom_strip`.
        cache_size: Side the images are resized to before stain normalization and caching.
        precision: ``"fp32"``, ``"bf16"`` (bfloat16 autocast for training and inference) or
            ``"auto"``: bfloat16 only where the device runs it natively (CPUs with
            AVX512-BF16 or AMX, CUDA devices that support it), float32 elsewhere. The
            override ``amp=true``/``amp=false`` of earlier versions means ``bf16``/``fp32``.
        channels_last: Channels-last memory format.
        sized_for_bf16: The epochs and sizes were chosen for a CPU that trains in bfloat16
            natively; a run that trains in float32 on a CPU warns that it will take
            several times longer (see :func:`examples.leukemia.experiment.run_experiment`).
        num_workers: Worker processes for the training augmentation (0: the main process).
        seed: Seed of the split, the stain reference and the training.
        near_threshold: dHash Hamming threshold for near duplicates (``None``: off).
        group_block: Also group blocks of this many consecutive file numbers (``None``: off).
        max_images_per_class: Keep about this many images per class (``None``: all).
        val_fraction: Share of images in the validation split.
        test_fraction: Share of images in the test split.
    """

    name: str
    backbones: tuple[BackboneSpec, ...]
    pretrained: bool
    epochs: int
    patience: int = 3
    warmup_epochs: float = 0.5
    ema_decay: float | None = None
    doubling: bool = True
    stain_normalize: bool = True
    mask_bottom: float = SCALE_BAR_FRACTION
    cache_size: int = 224
    precision: str = "fp32"
    channels_last: bool = False
    sized_for_bf16: bool = False
    num_workers: int = 0
    seed: int = 0
    near_threshold: int | None = 6
    group_block: int | None = None
    max_images_per_class: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        """Validate the settings that nothing else checks before the work starts."""
        if self.precision not in PRECISIONS:
            msg = f"precision must be one of {PRECISIONS}, got {self.precision!r}"
            raise ValueError(msg)
        if not 0 <= self.mask_bottom < 1:
            msg = (
                f"mask_bottom must be in [0, 1) (a share of the image rows), got {self.mask_bottom}"
            )
            raise ValueError(msg)
        # What training and splitting would refuse, refused now, before an hour of work.
        for spec in self.backbones:
            self.train_config(spec)
        check_fractions(self.val_fraction, self.test_fraction)

    def backbone(self, key: str) -> BackboneSpec:
        """Return the backbone whose timm or display name is ``key`` (any case).

        Raises:
            KeyError: When no backbone matches.
        """
        return _find_backbone(self.backbones, key, self.name)

    def train_config(self, spec: BackboneSpec) -> TrainConfig:
        """Return the :class:`TrainConfig` of one backbone under this preset."""
        return TrainConfig(
            epochs=spec.epochs if spec.epochs is not None else self.epochs,
            batch_size=spec.batch_size,
            lr=spec.lr,
            weight_decay=spec.weight_decay,
            patience=self.patience,
            warmup_epochs=self.warmup_epochs,
            ema_decay=self.ema_decay,
            precision=self.precision,
            channels_last=self.channels_last,
            num_workers=self.num_workers,
            seed=self.seed,
        )

    def split_options(self) -> SplitOptions:
        """Return the split settings, as keyword arguments of ``data.prepare_split``."""
        return SplitOptions(
            seed=self.seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            near_threshold=self.near_threshold,
            block_size=self.group_block,
            max_per_class=self.max_images_per_class,
        )

    def with_overrides(
        self, overrides: Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> Preset:
        """Return a copy with some settings replaced.

        Values may be typed values or strings (as from :func:`parse_overrides`); strings
        are converted to the field's type.

        Args:
            overrides: ``{key: value}``; keys as in the module docstring.
            **kwargs: More top-level overrides.

        Returns:
            The new preset (validated).

        Raises:
            KeyError: An unknown field or backbone.
            ValueError: A value that does not fit its field.
        """
        items = {**(overrides or {}), **kwargs}
        # Gathered first and applied at once: the preset checks its settings together (the
        # validation share depends on the test share), not after each one.
        changes: dict[str, Any] = {}
        backbones = self.backbones
        for key, value in items.items():
            if key == "amp":  # the setting of earlier versions: bfloat16 autocast on or off
                amp = _convert(_AmpSetting, "amp", value)
                changes["precision"] = "bf16" if amp else "fp32"
            elif key == "backbones" and isinstance(value, str):
                keys = [part.strip() for part in value.split(",") if part.strip()]
                backbones = tuple(_find_backbone(backbones, k, self.name) for k in keys)
            elif key == "backbones":  # a tuple of specs, as a typed value
                backbones = _convert(Preset, key, value)
            elif "." in key:
                backbone_key, field_name = key.rsplit(".", 1)
                spec = _find_backbone(backbones, backbone_key, self.name)
                new = dataclasses.replace(
                    spec, **{field_name: _convert(BackboneSpec, field_name, value)}
                )
                backbones = tuple(new if s is spec else s for s in backbones)
            else:
                changes[key] = _convert(Preset, key, value)
        return dataclasses.replace(self, **changes, backbones=backbones)


def _find_backbone(backbones: tuple[BackboneSpec, ...], key: str, preset: str) -> BackboneSpec:
    """The backbone whose timm or display name is ``key`` (any case), or a KeyError."""
    wanted = key.casefold()
    for spec in backbones:
        if wanted in (spec.name.casefold(), spec.timm_name.casefold()):
            return spec
    known = [spec.timm_name for spec in backbones]
    msg = f"preset {preset!r} has no backbone {key!r}; it has {known}"
    raise KeyError(msg)


@dataclass(frozen=True)
class _AmpSetting:
    """The ``amp`` override of earlier versions (read as a bool, mapped to ``precision``)."""

    amp: bool


def _convert(cls: type, field_name: str, value: Any) -> Any:
    hints = typing.get_type_hints(cls)
    if field_name not in hints:
        known = sorted(hints)
        msg = f"{cls.__name__} has no setting {field_name!r}; known: {known}"
        raise KeyError(msg)
    if not isinstance(value, str):
        return value
    hint = hints[field_name]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    text = value.strip()
    if type(None) in options and text.casefold() in {"none", "null", ""}:
        return None
    for option in options:
        if option is bool:
            if text.casefold() in {"true", "1", "yes", "on"}:
                return True
            if text.casefold() in {"false", "0", "no", "off"}:
                return False
        elif option in (int, float, str):
            try:
                return option(text)
            except ValueError:
                continue
    msg = f"{cls.__name__}.{field_name}: cannot read {value!r} as {hint}"
    raise ValueError(msg)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` strings (as given on a command line) into a dict.

    Args:
        items: Strings such as ``"epochs=3"`` or ``"resnet50.lr=5e-4"``.

    Returns:
        ``{key: raw value}``, for :meth:`Preset.with_overrides`.

    Raises:
        ValueError: When an item has no ``=`` or an empty key.
    """
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            msg = f"override must look like key=value, got {item!r}"
            raise ValueError(msg)
        parsed[key.strip()] = value.strip()
    return parsed


#: Seconds per doubled training epoch (2 x 2,284 images) plus one validation pass, at the
#: ``cpu`` preset's sizes and batch sizes, times its epochs, on two kinds of 2-core CPU.
#:
#: ``"fp32 (AVX2)"``: ``python -m benchmarks.leukemia_epoch_time --preset cpu --steps 3`` on
#: a 2-core AMD EPYC with AVX2 only (no AVX-512, no AMX), where ``precision="auto"``
#: resolves to float32 (torch 2.14.1, channels-last), on a quiet machine, 2026-12-02: about
#: 45 min. The step timing leaves out augmentation and weight averaging, which made the
#: full run's logged epochs about 20% longer (see ``docs/examples/leukemia-history.md``): about
#: 54 min of training, with about 5 min of normalization and evaluation on top. A full run
#: (``seeds``, seed 1, lightly loaded, 2026-12-02) measured 53.1 min: 48.5 min of training,
#: 0.7 min of stain normalization, 4 min of evaluation and audit; seed 2, quiet, 48.7 min
#: (44.3 min of training).
#:
#: ``"bf16 (AMX)"``: the per-epoch times logged by ``python -m examples.leukemia run
#: --preset cpu`` on a 2-core Xeon with AMX (bf16 autocast, channels-last) for the
#: previous release's preset. InceptionV3 and EfficientNetB0 ran at the sizes used here;
#: VGG19-BN (then 48 px with its 4096-wide head), ResNet50 and DenseNet201 (then 80 px)
#: ran at larger inputs, so those three entries are upper bounds. No AMX machine was at
#: hand to time this preset itself.
#:
#: The previous preset (8-10 epochs at up to 80 px) fitted about 50 min on the AMX machine
#: but was measured at about 169 min on the AVX2 one; this one is sized for the slower.
#: Size a new preset with ``python -m benchmarks.leukemia_epoch_time --preset NAME`` on the
#: target machine first, then add the augmentation and weight-averaging overhead.
CPU_BUDGET: Final[Mapping[str, Mapping[str, float]]] = types.MappingProxyType(
    {
        "bf16 (AMX)": types.MappingProxyType(
            {
                "inception_v3 @96 x3": 3 * 52.0,
                "efficientnet_b0 @64 x3": 3 * 48.0,
                "vgg19_bn @32 x2": 2 * 209.0,
                "resnet50 @64 x3": 3 * 66.0,
                "densenet201 @64 x3": 3 * 98.7,
            }
        ),
        "fp32 (AVX2)": types.MappingProxyType(
            {
                "inception_v3 @96 x3": 3 * 204.0,
                "efficientnet_b0 @64 x3": 3 * 75.0,
                "vgg19_bn @32 x2": 2 * 274.0,
                "resnet50 @64 x3": 3 * 190.0,
                "densenet201 @64 x3": 3 * 252.0,
            }
        ),
    }
)


#: :data:`CPU_BUDGET` for the ``cpu-bf16`` preset, measured the same ways (the AMX times
#: logged by full runs, the AVX2 float32 times by the step benchmark on a quiet machine).
CPU_BF16_BUDGET: Final[Mapping[str, Mapping[str, float]]] = types.MappingProxyType(
    {
        "bf16 (AMX)": types.MappingProxyType(
            {
                "inception_v3 @96 x8": 8 * 52.0,
                "efficientnet_b0 @64 x6": 6 * 48.0,
                "vgg19_bn @48 x4": 4 * 209.0,
                "resnet50 @80 x10": 10 * 66.0,
                "densenet201 @80 x8": 8 * 98.7,
            }
        ),
        "fp32 (AVX2)": types.MappingProxyType(
            {
                "inception_v3 @96 x8": 8 * 134.0,
                "efficientnet_b0 @64 x6": 6 * 61.0,
                "vgg19_bn @48 x4": 4 * 1085.0,
                "resnet50 @80 x10": 10 * 217.0,
                "densenet201 @80 x8": 8 * 271.0,
            }
        ),
    }
)


PAPER: Final = Preset(
    name="paper",
    backbones=(
        BackboneSpec("InceptionV3", "inception_v3", 299, lr=1e-4, drop_rate=0.3),
        BackboneSpec("EfficientNetB0", "efficientnet_b0", 224, lr=2e-4, drop_rate=0.2),
        BackboneSpec("VGG19", "vgg19", 224, lr=5e-5, drop_rate=0.5),
        BackboneSpec("ResNet50", "resnet50", 224, lr=1e-4, drop_rate=0.3),
        BackboneSpec("DenseNet201", "densenet201", 224, lr=1e-4, drop_rate=0.3),
    ),
    pretrained=True,
    epochs=10,
    patience=3,
    warmup_epochs=0.5,
    precision="fp32",
    num_workers=8,
)

CPU: Final = Preset(
    name="cpu",
    backbones=(
        BackboneSpec("InceptionV3", "inception_v3", 96, lr=2e-3, drop_rate=0.2),
        BackboneSpec("EfficientNetB0", "efficientnet_b0", 64, lr=3e-3, drop_rate=0.2),
        BackboneSpec("VGG19", "vgg19_bn", 32, lr=5e-4, drop_rate=0.3, epochs=2, mlp_ratio=0.125),
        BackboneSpec("ResNet50", "resnet50", 64, lr=2e-3, drop_rate=0.2),
        BackboneSpec("DenseNet201", "densenet201", 64, lr=2e-3, drop_rate=0.2),
    ),
    pretrained=False,
    epochs=3,
    patience=5,
    warmup_epochs=0.3,
    ema_decay=0.998,
    precision="auto",
    channels_last=True,
)


#: The ``cpu`` preset of the previous release, for CPUs that train in bfloat16 natively
#: (AVX512-BF16 or AMX): about 50 min of training on a 2-core Xeon with AMX, about 169 min
#: in float32 on a 2-core AVX2 CPU (``CPU_BF16_BUDGET``). More epochs and larger inputs
#: than ``cpu``, and better backbones (see ``docs/examples/leukemia-history.md``).
CPU_BF16: Final = Preset(
    name="cpu-bf16",
    backbones=(
        BackboneSpec("InceptionV3", "inception_v3", 96, lr=2e-3, drop_rate=0.2),
        BackboneSpec("EfficientNetB0", "efficientnet_b0", 64, lr=3e-3, drop_rate=0.2, epochs=6),
        BackboneSpec("VGG19", "vgg19_bn", 48, lr=5e-4, drop_rate=0.3, epochs=4),
        BackboneSpec("ResNet50", "resnet50", 80, lr=2e-3, drop_rate=0.2, epochs=10),
        BackboneSpec("DenseNet201", "densenet201", 80, lr=2e-3, drop_rate=0.2, epochs=8),
    ),
    pretrained=False,
    epochs=8,
    patience=5,
    warmup_epochs=0.3,
    ema_decay=0.998,
    precision="auto",
    channels_last=True,
    sized_for_bf16=True,
)


SMOKE: Final = Preset(
    name="smoke",
    backbones=(
        BackboneSpec("TestResNet", "test_resnet", 32, batch_size=8, lr=3e-3, drop_rate=0.0),
        BackboneSpec(
            "TestEfficientNet", "test_efficientnet", 32, batch_size=8, lr=3e-3, drop_rate=0.0
        ),
    ),
    pretrained=False,
    epochs=1,
    patience=1,
    warmup_epochs=0.0,
    cache_size=64,
    max_images_per_class=12,
)

#: The presets by name.
PRESETS: Final[Mapping[str, Preset]] = types.MappingProxyType(
    {preset.name: preset for preset in (PAPER, CPU, CPU_BF16, SMOKE)}
)


def get_preset(name: str, overrides: Iterable[str] = ()) -> Preset:
    """Return a preset by name, with ``key=value`` overrides applied.

    Args:
        name: ``"paper"``, ``"cpu"`` or ``"smoke"``.
        overrides: Strings such as ``"epochs=3"``.

    Returns:
        The preset.

    Raises:
        KeyError: An unknown preset name (or override key).
    """
    if name not in PRESETS:
        msg = f"unknown preset {name!r}; choose one of {sorted(PRESETS)}"
        raise KeyError(msg)
    return PRESETS[name].with_overrides(parse_overrides(overrides))
