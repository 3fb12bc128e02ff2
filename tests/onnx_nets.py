"""Small torch networks and uint8 images shared by the ONNX export tests."""

from __future__ import annotations

import numpy as np
import torch


def conv_net(seed: int) -> torch.nn.Module:
    """A seeded three-class conv net: conv, ReLU, 2x2 adaptive pooling, linear."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    ).eval()


def uint8_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` random RGB images of ``height`` x ``width``, uint8, channels first."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, height, width), dtype=np.uint8)
