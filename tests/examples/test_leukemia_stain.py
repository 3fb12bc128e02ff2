"""Macenko stain normalization on Giemsa-like smears (two stains of similar red density)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchstain
from examples.leukemia import transforms
from examples.leukemia.data import load_rgb
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

IO = 240.0
# Unit optical-density vectors (columns): a purple nuclear stain that absorbs green most,
# and a grey-blue second stain that absorbs red at least as much as the nuclear one.
GIEMSA = np.array([[0.45, 0.60], [0.88, 0.55], [0.15, 0.58]])
# The same two stains under another staining batch: a bluer nucleus, a pinker second stain.
OTHER_BATCH = np.array([[0.62, 0.35], [0.76, 0.80], [0.20, 0.49]])


def _unit(stains: np.ndarray) -> np.ndarray:
    return stains / np.linalg.norm(stains, axis=0, keepdims=True)


def concentrations(seed: int, size: int = 64) -> np.ndarray:
    """A smear: empty background, red cells (second stain) and a few nuclei (both stains)."""
    rng = np.random.default_rng(seed)
    conc = np.abs(rng.normal(0, 0.01, (2, size, size)))
    yy, xx = np.mgrid[:size, :size]
    for _ in range(14):
        cy, cx = rng.integers(0, size, 2)
        conc[1][(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(16, 40)] += rng.uniform(0.3, 0.5)
    for _ in range(3):
        cy, cx = rng.integers(8, size - 8, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(25, 60)
        conc[0][disc] += rng.uniform(0.9, 1.3)
        conc[1][disc] += 0.1
    return conc.reshape(2, -1)


def render(stains: np.ndarray, conc: np.ndarray, size: int = 64) -> np.ndarray:
    """Beer-Lambert: the uint8 image of ``conc`` under the (3, 2) ``stains``."""
    pixels = IO * np.exp(-_unit(stains) @ conc)
    return np.clip(pixels, 0, 255).round().T.reshape(size, size, 3).astype(np.uint8)


@pytest.fixture(scope="module")
def normalizer() -> transforms.StainNormalizer:
    images = [render(GIEMSA, concentrations(seed)) for seed in range(6)]
    return transforms.StainNormalizer().fit(images, [f"smear-{i}" for i in range(6)])


def test_torchstain_alone_puts_the_second_stain_first():
    """The premise of the reordering: torchstain's red-density rule fails on Giemsa."""
    macenko = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    image = render(GIEMSA, concentrations(0))
    macenko.fit(torch.from_numpy(image).permute(2, 0, 1), Io=IO, beta=0.05)
    first = macenko.HERef[:, 0].numpy()
    unit = _unit(GIEMSA)
    assert first @ unit[:, 1] > first @ unit[:, 0]


def test_reference_has_the_nuclear_stain_first(normalizer):
    reference = np.array(normalizer.he_ref)
    unit = _unit(GIEMSA)
    assert reference[:, 0] @ unit[:, 0] > 0.98
    assert reference[:, 1] @ unit[:, 1] > 0.98
    assert normalizer.reference_paths == tuple(f"smear-{i}" for i in range(6))


def test_same_stains_keep_their_colours(normalizer):
    image = render(GIEMSA, concentrations(10))
    out, reason = normalizer.transform(image)
    assert reason is None
    assert out.dtype == np.uint8
    assert out.shape == image.shape
    # Only the concentration scale moves (to the reference's 99th percentile).
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 8


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_another_staining_batch_is_mapped_to_the_same_colours(normalizer, seed):
    conc = concentrations(seed)
    nuclei = conc[0] > 0.5
    reference_batch = render(GIEMSA, conc)
    other_batch = render(OTHER_BATCH, conc)
    expected, _ = normalizer.transform(reference_batch)
    out, reason = normalizer.transform(other_batch)
    assert reason is None

    def nuclear_colour_gap(a: np.ndarray, b: np.ndarray) -> float:
        gap = a.reshape(-1, 3)[nuclei].astype(float) - b.reshape(-1, 3)[nuclei].astype(float)
        return float(np.abs(gap.mean(axis=0)).sum())

    before = nuclear_colour_gap(other_batch, reference_batch)
    assert before > 15
    assert nuclear_colour_gap(out, expected) < before / 5


def test_fit_names_every_unusable_reference():
    blank = np.full((32, 32, 3), 250, np.uint8)
    with pytest.raises(ValueError, match=r"blank-a: only 0 stained pixels.*blank-b"):
        transforms.StainNormalizer().fit([blank, blank], ["blank-a", "blank-b"])
    with pytest.raises(ValueError, match="at least one"):
        transforms.StainNormalizer().fit([])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    angle=st.floats(0.15, 0.8),
)
def test_nonnegative_concentrations_are_the_nnls_solution(seed, angle):
    """Per pixel, the two-stain solve matches scipy's NNLS, including the clamped pixels."""
    rng = np.random.default_rng(seed)
    first = _unit(rng.uniform(0.05, 1, (3, 1)))[:, 0]
    other = rng.normal(size=3)
    other -= (other @ first) * first
    other /= np.linalg.norm(other)
    second = np.cos(angle) * first + np.sin(angle) * other
    stains = np.stack([first, second], axis=1)
    density = rng.uniform(-0.05, 1.5, (200, 3))
    got = transforms._nonnegative_concentrations(
        torch.tensor(stains, dtype=torch.float64), torch.tensor(density, dtype=torch.float64)
    ).numpy()
    assert got.shape == (2, 200)
    assert (got >= 0).all()
    expected = np.stack([nnls(stains, d)[0] for d in density], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.data
def test_nonnegative_concentrations_keep_a_pale_smear_from_blowing_out(real_data):
    """Pre-560 has little of the second stain: unconstrained concentrations whiten it."""
    names = [
        f"{folder}/WBC-{kind}-{number}.jpg"
        for folder, kind in [
            ("Benign", "Benign"),
            ("Early", "Malignant-Early"),
            ("Pre", "Malignant-Pre"),
            ("Pro", "Malignant-Pro"),
        ]
        for number in ("001", "100")
    ]
    references = [transforms.to_array(load_rgb(real_data / name), 224) for name in names]
    image = transforms.to_array(load_rgb(real_data / "Pre/WBC-Malignant-Pre-560.jpg"), 224)

    def white_share(array: np.ndarray) -> float:
        return float((array.min(axis=2) >= 250).mean())

    assert white_share(image) < 0.05
    shares = {}
    for nonnegative in (False, True):
        fitted = transforms.StainNormalizer(nonnegative=nonnegative).fit(references, names)
        out, reason = fitted.transform(image)
        assert reason is None
        shares[nonnegative] = white_share(out)
    assert shares[False] > 0.5
    assert shares[True] < 0.05


def test_state_without_the_option_loads_as_unconstrained(normalizer):
    state = normalizer.to_dict()
    assert state["nonnegative"] is True
    assert transforms.StainNormalizer.from_dict(state).nonnegative is True
    del state["nonnegative"]
    assert transforms.StainNormalizer.from_dict(state).nonnegative is False
