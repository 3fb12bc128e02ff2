"""Fixtures for the leukemia example: a small synthetic 4-class image folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from PIL import Image

#: The real dataset beside the project (as CI has it); tests that read it skip without it.
REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "all-leukemia"

CLASSES = ("Benign", "Early", "Pre", "Pro")
# Stain-like colours (dark enough in every channel for Macenko) and blob radii per class.
COLOURS = {
    "Benign": (120, 40, 150),
    "Early": (60, 60, 170),
    "Pre": (150, 60, 90),
    "Pro": (90, 120, 60),
}
RADII = {"Benign": 14, "Early": 9, "Pre": 6, "Pro": 11}
PER_CLASS = 12
SIZE = 48


def blob_image(label: str, index: int, size: int = SIZE) -> np.ndarray:
    """A light background with one coloured disc whose colour and size depend on the class."""
    rng = np.random.default_rng([CLASSES.index(label), index])
    image = np.full((size, size, 3), 232, dtype=np.float32) + rng.normal(0, 4, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= RADII[label] ** 2
    image[disc] = np.array(COLOURS[label]) + rng.normal(0, 6, (int(disc.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_leukemia_folder(root: Path, per_class: int = PER_CLASS) -> Path:
    """Write ``root/<class>/<class>-NNN.png``; file 002 of Pro duplicates file 001."""
    for label in CLASSES:
        folder = root / label
        folder.mkdir(parents=True)
        for index in range(1, per_class + 1):
            Image.fromarray(blob_image(label, index)).save(folder / f"{label}-{index:03d}.png")
    shutil.copyfile(root / "Pro" / "Pro-001.png", root / "Pro" / "Pro-002.png")
    return root


@pytest.fixture(scope="session")
def leukemia_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention synthetic dataset shared by the tests."""
    return make_leukemia_folder(tmp_path_factory.mktemp("leukemia") / "data")


@pytest.fixture
def leukemia_copy(leukemia_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset that a test may damage."""
    return Path(shutil.copytree(leukemia_root, tmp_path / "data"))


@pytest.fixture
def real_data() -> Path:
    """``../shared/data/all-leukemia``, or skip the test when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/all-leukemia is absent")
    return REAL_DATA


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Empty hub caches, and a timm whose downloads fail as they do without a network.

    Returns the list of the model names timm was asked to download, for tests to check.
    """
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    real_create = timm.create_model
    downloads: list[str] = []

    def create(name: str, pretrained: bool = False, **kwargs: Any) -> Any:
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            downloads.append(name)
            raise OSError("[Errno 101] Network is unreachable")
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    return downloads


@pytest.fixture(scope="session")
def leukemia_root_40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 images per class (16 for validation): enough to compare two training runs."""
    return make_leukemia_folder(tmp_path_factory.mktemp("leukemia-40") / "data", per_class=40)
