"""Stain normalization, its disk cache, augmentation and the training-set doubling.

Order of operations for every image::

    decode (RGB) -> resize to the cache size -> Macenko stain normalization (cached)
      -> resize to the backbone's input size -> [training copy: augmentation]
      -> float in [0, 1] -> normalize with the backbone's timm mean/std

**Stain reference.** :func:`fit_stain_normalizer` fits the Macenko reference on training
images only: a seeded choice of ``per_class`` images of each class from the training
split, resized to the cache size, each estimated with torchstain, and the median of those
estimates taken (see :class:`StainNormalizer` for why not torchstain's own H&E fit). The
same fitted reference is applied to every split, and to new images at prediction time
(see :meth:`StainNormalizer.to_dict`).

**Fallback.** Macenko needs stained pixels; on a near-white or blank image it fails (empty
percentiles, singular covariance). Such an image is kept unnormalized and its path and
reason are recorded in :attr:`NormalizedImages.fallbacks`; nothing is raised.

**Doubling.** As in the paper (3,256 -> 6,512 images), every training image appears twice
per epoch: once plain and once through the random augmentation
(:class:`ImageArrayDataset` with ``double=True``). Unlike the paper, augmentation is
applied after the split and to the training split only.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torchstain
from numpy.typing import NDArray
from PIL import Image
from timm.data.config import resolve_model_data_config
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual torch alias
from torchvision.transforms import v2

from cascademl import _files
from cascademl.torch_stage import Preprocessing, to_uint8_image

from .data import SplitManifest, load_rgb

logger = logging.getLogger(__name__)

#: Bumped whenever the cached arrays would change for the same inputs.
CACHE_VERSION: Final = 2
_MAX_UINT8: Final = 255

Transform = Callable[[torch.Tensor], torch.Tensor]


def _tensor(array: NDArray[np.uint8]) -> torch.Tensor:
    """Wrap an array as a tensor, copying it when it is read-only or not contiguous."""
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    return torch.from_numpy(array)


def to_array(image: Image.Image, size: int | None = None) -> NDArray[np.uint8]:
    """Convert an image to a ``(H, W, 3)`` uint8 array, resized to ``size x size``.

    Args:
        image: A Pillow image (converted to RGB; 16-bit images scaled to 8 bits by
            :func:`cascademl.torch_stage.to_uint8_image`, not clipped).
        size: Square side in pixels; ``None`` keeps the image's size.

    Returns:
        The RGB pixels.
    """
    rgb = to_uint8_image(image, "RGB")
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.array(rgb, dtype=np.uint8)


def _nuclear_first(stains: torch.Tensor) -> list[int]:
    """Column order that puts the nuclear (purple: most green-minus-blue) stain first."""
    purple = stains[1] - stains[2]
    return [0, 1] if bool(purple[0] >= purple[1]) else [1, 0]


def _swapped(stains: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``stains``' columns match ``reference``'s better in the crossed order."""
    similarity = reference.T @ stains
    return bool(similarity[0, 1] + similarity[1, 0] > similarity[0, 0] + similarity[1, 1])


def _nonnegative_concentrations(stains: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """Least-squares stain concentrations constrained to be non-negative.

    Exact non-negative least squares for two stains: the unconstrained solution where both
    concentrations are non-negative, otherwise the better one-stain fit (each clamped at 0).

    Args:
        stains: Stain matrix of shape (3, 2).
        density: Optical densities of shape (n_pixels, 3).

    Returns:
        Concentrations of shape (2, n_pixels), all at least 0.
    """
    both = torch.linalg.lstsq(stains, density.T).solution
    single = ((stains.T @ density.T) / (stains * stains).sum(dim=0)[:, None]).clamp(min=0)
    residual = [((density.T - stains[:, [k]] * single[[k]]) ** 2).sum(dim=0) for k in range(2)]
    first_only = residual[0] <= residual[1]
    fallback = torch.where(
        first_only,
        torch.stack([single[0], torch.zeros_like(single[0])]),
        torch.stack([torch.zeros_like(single[1]), single[1]]),
    )
    return torch.where((both >= 0).all(dim=0), both, fallback)


@dataclass
class StainNormalizer:
    """Macenko stain normalization for Giemsa-stained smears, on torchstain, with a fallback.

    torchstain's :class:`~torchstain.normalizers.MacenkoNormalizer` estimates each image's
    two stain vectors (the eigen-plane of the optical densities and its extreme angles)
    and its 99th-percentile stain concentrations; this class uses that estimate as is.
    Two of torchstain's H&E assumptions do not hold on Giemsa blood smears, and this class
    replaces them (measured on ``../shared/data/all-leukemia``; see the example's docs):

    * **Stain order.** torchstain puts the vector with the larger red optical density
      first ("hematoxylin"). On Giemsa both stains absorb red about equally, so the order
      flips from image to image and normalization paints nuclei in the other stain's
      colour (every image turned blue). Here each image's vectors are matched to the
      reference's by cosine similarity, and the reference itself is ordered with the
      purple nuclear stain (largest green-minus-blue optical density) first.
    * **Reference.** Fitting one Macenko estimate on a mosaic of several smears picks
      its extreme angles from whichever image has the most extreme cast. Here every
      reference image is fitted on its own and the reference is the element-wise median
      of their (ordered, unit-length) stain vectors and of their maximal concentrations.
    * **Negative concentrations.** torchstain solves the concentrations by unconstrained
      least squares. The two Giemsa vectors are close (cosine about 0.8-0.97), so a dark
      nucleus often comes out as a large positive amount of one stain and a negative
      amount of the other; when an image has little of the second stain its 99th
      percentile is tiny, the rescaling multiplies that negative amount several-fold, and
      the recomposed nuclei turn white (hollow cells). Here the concentrations are
      non-negative least squares (as in StainTools' Macenko) and the maxima are taken
      from them, so every stain adds colour and none removes it.

    Args:
        io: Transmitted light intensity (torchstain's ``Io``).
        alpha: Percentile for the robust stain angles (torchstain's ``alpha``).
        beta: Optical density under which a pixel counts as background. Blood smears are
            mostly background: at torchstain's default 0.15 only about 1% of the pixels
            of a typical ALL image count as stained (the blast nuclei), which makes the
            99th-percentile concentration unstable; 0.05 keeps about 16% (nuclei,
            cytoplasm and red cells).
        min_stained_pixels: Images with fewer stained pixels (optical density at least
            ``beta`` in every channel) are not normalized and are reported as fallbacks.
        nonnegative: Constrain the concentrations to be non-negative (see above);
            ``False`` reproduces torchstain's unconstrained solve.

    Attributes:
        reference_paths: The images the reference was fitted on.
        he_ref: Fitted stain matrix of shape (3, 2), nuclear stain first.
        max_c_ref: Fitted 99th percentile stain concentrations, of shape (2,).
    """

    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.05
    min_stained_pixels: int = 32
    nonnegative: bool = True
    reference_paths: tuple[str, ...] = ()
    he_ref: list[list[float]] = field(default_factory=list)
    max_c_ref: list[float] = field(default_factory=list)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run (or a fitted state was loaded)."""
        return bool(self.he_ref)

    def _estimate(
        self, image: NDArray[np.uint8]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the stain matrix (3, 2), concentrations (2, n_pixels) and their maxima (2,).

        The stain vectors are torchstain's. With :attr:`nonnegative`, the concentrations
        are non-negative least squares and the maxima their 99th percentiles; otherwise
        both are torchstain's (unconstrained least squares).
        """
        macenko = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        macenko.fit(self._chw(image), Io=self.io, alpha=self.alpha, beta=self.beta)
        stains = macenko.HERef.float()
        density = -torch.log((torch.from_numpy(image).reshape(-1, 3).float() + 1) / self.io)
        if self.nonnegative:
            concentrations = _nonnegative_concentrations(stains, density)
            max_c = torch.quantile(concentrations, 0.99, dim=1)
        else:
            concentrations = torch.linalg.lstsq(stains, density.T).solution
            max_c = macenko.maxCRef.float()
        if not (torch.isfinite(stains).all() and torch.isfinite(max_c).all()):
            raise ValueError("non-finite stain estimate")
        if bool((max_c <= 0).any()):
            msg = f"non-positive stain concentration {max_c.tolist()}"
            raise ValueError(msg)
        return stains, concentrations, max_c

    def fit(
        self, images: Sequence[NDArray[np.uint8]], paths: Sequence[str] = ()
    ) -> StainNormalizer:
        """Fit the reference: the median of the per-image stain estimates of ``images``.

        Args:
            images: ``(H, W, 3)`` uint8 arrays.
            paths: Names of the images, recorded in ``reference_paths``.

        Returns:
            ``self``.

        Raises:
            ValueError: When ``images`` is empty or no image gives a stain estimate.
        """
        if not images:
            raise ValueError("fit needs at least one reference image")
        names = list(paths) if paths else [f"image {i}" for i in range(len(images))]
        vectors: list[torch.Tensor] = []
        maxima: list[torch.Tensor] = []
        used: list[str] = []
        problems: list[str] = []
        for name, image in zip(names, images, strict=True):
            reason = self._unusable(image)
            if reason is None:
                try:
                    stains, _, max_c = self._estimate(image)
                except (RuntimeError, IndexError, ValueError) as error:
                    reason = f"{type(error).__name__}: {error}"
                else:
                    order = _nuclear_first(stains)
                    vectors.append(stains[:, order])
                    maxima.append(max_c[order])
                    used.append(name)
                    continue
            problems.append(f"{name}: {reason}")
        if not vectors:
            msg = "cannot fit the stain reference: " + "; ".join(problems)
            raise ValueError(msg)
        stains = torch.stack(vectors).median(dim=0).values
        stains = stains / stains.norm(dim=0, keepdim=True)
        self.he_ref = stains.tolist()
        self.max_c_ref = torch.stack(maxima).median(dim=0).values.tolist()
        self.reference_paths = tuple(used)
        return self

    @staticmethod
    def _chw(image: NDArray[np.uint8]) -> torch.Tensor:
        return _tensor(image).permute(2, 0, 1)

    def _unusable(self, image: NDArray[np.uint8]) -> str | None:
        density = -np.log((image.reshape(-1, 3).astype(np.float32) + 1) / self.io)
        stained = int(np.count_nonzero(np.all(density >= self.beta, axis=1)))
        if stained < self.min_stained_pixels:
            return f"only {stained} stained pixels (< {self.min_stained_pixels})"
        return None

    def transform(self, image: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], str | None]:
        """Normalize one image, or return it unchanged with the reason it could not be.

        The image's stain vectors are matched to the reference's, its concentrations are
        solved by least squares, rescaled so that their 99th percentiles match the
        reference's, and recomposed with the reference stains (as in Macenko et al.).

        Args:
            image: ``(H, W, 3)`` uint8 array.

        Returns:
            The normalized (or original) array, and ``None`` or the fallback reason.

        Raises:
            RuntimeError: When the normalizer is not fitted.
        """
        if not self.fitted:
            raise RuntimeError("StainNormalizer.fit must run before transform")
        reason = self._unusable(image)
        if reason is None:
            reference = torch.tensor(self.he_ref, dtype=torch.float32)
            try:
                stains, concentrations, max_c = self._estimate(image)
                if _swapped(stains, reference):
                    concentrations, max_c = concentrations[[1, 0]], max_c[[1, 0]]
            except (RuntimeError, IndexError, ValueError) as error:
                reason = f"Macenko failed: {type(error).__name__}: {error}"
            else:
                scale = torch.tensor(self.max_c_ref) / max_c
                pixels = self.io * torch.exp(-reference @ (concentrations * scale[:, None]))
                if bool(torch.isfinite(pixels).all()):
                    out = pixels.clamp_(0, _MAX_UINT8).round_().T.reshape(image.shape)
                    return out.to(torch.uint8).numpy(), None
                reason = "Macenko produced non-finite values"
        return image, reason

    def fingerprint(self) -> str:
        """Return a short hash of the parameters and fitted reference (a cache key)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable state, to save beside a trained model."""
        return {
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
            "min_stained_pixels": self.min_stained_pixels,
            "nonnegative": self.nonnegative,
            "reference_paths": list(self.reference_paths),
            "he_ref": self.he_ref,
            "max_c_ref": self.max_c_ref,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> StainNormalizer:
        """Rebuild a normalizer from :meth:`to_dict`'s output."""
        return cls(
            io=float(state["io"]),
            alpha=float(state["alpha"]),
            beta=float(state["beta"]),
            min_stained_pixels=int(state["min_stained_pixels"]),
            # States saved before this option existed used unconstrained concentrations.
            nonnegative=bool(state.get("nonnegative", False)),
            reference_paths=tuple(state["reference_paths"]),
            he_ref=[list(map(float, row)) for row in state["he_ref"]],
            max_c_ref=[float(v) for v in state["max_c_ref"]],
        )


def select_reference(manifest: SplitManifest, *, per_class: int = 8, seed: int = 0) -> list[str]:
    """Choose stain reference images from the training split only.

    Args:
        manifest: The split.
        per_class: Images to take from each class (fewer if a class has fewer).
        seed: Seed of the choice.

    Returns:
        Paths relative to ``manifest.root``, class by class.
    """
    rng = np.random.default_rng(seed)
    train = manifest.select("train")
    chosen: list[str] = []
    for name in manifest.classes:
        paths = sorted(row.path for row in train if row.label == name)
        take = min(per_class, len(paths))
        chosen.extend(paths[i] for i in sorted(rng.choice(len(paths), take, replace=False)))
    return chosen


def fit_stain_normalizer(
    manifest: SplitManifest, *, size: int = 224, per_class: int = 8, seed: int = 0
) -> StainNormalizer:
    """Fit a :class:`StainNormalizer` on a seeded mosaic of training images.

    Args:
        manifest: The split; only its training rows are read.
        size: Side the reference images are resized to (use the cache size).
        per_class: Reference images per class.
        seed: Seed of the choice.

    Returns:
        The fitted normalizer.
    """
    paths = select_reference(manifest, per_class=per_class, seed=seed)
    images = [to_array(load_rgb(manifest.root / path), size) for path in paths]
    logger.info("stain reference: %s", paths)
    return StainNormalizer().fit(images, paths)


@dataclass(frozen=True)
class NormalizedImages:
    """Decoded (and stain-normalized) images of a split manifest, in row order.

    Attributes:
        images: uint8 array of shape (n_images, size, size, 3).
        paths: The manifest paths, aligned with ``images``.
        fallbacks: ``{path: reason}`` of images kept unnormalized.
    """

    images: NDArray[np.uint8]
    paths: tuple[str, ...]
    fallbacks: Mapping[str, str]

    def subset(self, manifest: SplitManifest, split: str) -> NDArray[np.uint8]:
        """Return the images of one split, in the manifest's row order."""
        index = {path: i for i, path in enumerate(self.paths)}
        return self.images[[index[row.path] for row in manifest.select(split)]]


def _decode_all(
    root: Path,
    paths: Sequence[str],
    size: int,
    normalizer: StainNormalizer | None,
    workers: int,
) -> tuple[NDArray[np.uint8], dict[str, str]]:
    """Decode, resize and normalize ``paths`` on ``workers`` threads (torch on one each)."""
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(paths)

    def one(index: int) -> None:
        array = to_array(load_rgb(root / paths[index]), size)
        if normalizer is not None:
            array, reasons[index] = normalizer.transform(array)
        images[index] = array

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            # list() re-raises the first error (a corrupt image, named by load_rgb).
            list(pool.map(one, range(len(paths))))
    finally:
        torch.set_num_threads(threads)
    fallbacks = {path: reason for path, reason in zip(paths, reasons, strict=True) if reason}
    for path, reason in fallbacks.items():
        logger.debug("stain normalization skipped for %s: %s", path, reason)
    return images, fallbacks


def load_images(
    manifest: SplitManifest,
    *,
    size: int,
    normalizer: StainNormalizer | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    write_cache: bool = True,
) -> NormalizedImages:
    """Decode every image of the manifest, resize it and stain-normalize it, with a cache.

    Images are decoded and normalized by ``workers`` threads at once, each torch operation
    on one thread: an image's tensors (50,000 pixels) are too small to gain from torch's
    intra-op threads, and on a CPU shared with other work those threads wait for each
    other at every operation (on a busy 2-core machine, 0.5 s per image instead of a few
    hundredths). The result does not depend on ``workers``.

    With a cache folder, the result is stored as ``stain-<key>.npy`` plus a JSON sidecar,
    where the key hashes the manifest's digest, the normalizer's fingerprint and the size;
    a later call with the same inputs loads it instead of recomputing.

    Args:
        manifest: The split (all its rows are loaded).
        size: Square side the images are resized to before normalization.
        normalizer: A fitted normalizer, or ``None`` to skip stain normalization.
        cache_dir: Folder of the cache; ``None`` disables it.
        workers: Threads that decode and normalize images; ``None``: one per CPU (at most 8).
        write_cache: Store the result in ``cache_dir`` when it is not there yet; ``False``
            only reads the cache (the processes other than rank 0 of a ``torchrun`` run,
            which read what rank 0 wrote).

    Returns:
        The images and the fallbacks.

    Raises:
        ValueError: When ``workers`` is below 1.
    """
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        msg = f"workers must be at least 1, got {workers}"
        raise ValueError(msg)
    stain_key = normalizer.fingerprint() if normalizer is not None else "none"
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{manifest.digest()}|{stain_key}|{size}".encode()
    ).hexdigest()[:20]
    paths = tuple(row.path for row in manifest.rows)
    array_file = sidecar = None
    if cache_dir is not None:
        array_file = Path(cache_dir) / f"stain-{key}.npy"
        sidecar = array_file.with_suffix(".json")
        if array_file.is_file() and sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            if tuple(meta["paths"]) == paths:
                logger.info("loading cached images %s", array_file)
                return NormalizedImages(np.load(array_file), paths, meta["fallbacks"])
    images, fallbacks = _decode_all(manifest.root, paths, size, normalizer, workers)
    if fallbacks:
        logger.warning(
            "stain normalization fell back to the original image for %d of %d images",
            len(fallbacks),
            len(paths),
        )
    if write_cache and array_file is not None and sidecar is not None:
        array_file.parent.mkdir(parents=True, exist_ok=True)
        with _files.atomic_path(array_file) as tmp:
            np.save(tmp, images)
        _files.write_text(sidecar, json.dumps({"paths": list(paths), "fallbacks": fallbacks}))
    return NormalizedImages(images, paths, fallbacks)


def build_augmentation(*, rotation: float = 20.0, fill: int = 240) -> Transform:
    """Build the training augmentation for uint8 ``(3, H, W)`` tensors.

    Horizontal and vertical flips, a random affine map (rotation up to ``rotation``
    degrees, shift up to 10% of the side, zoom 0.9-1.2) and a colour jitter (brightness,
    contrast, saturation, hue).

    Args:
        rotation: Largest rotation in degrees.
        fill: Value of the pixels uncovered by the affine map. The default is the
            near-white background of a smear (and Macenko's ``Io``), so that rotated and
            shifted copies do not gain black corners that no real image has.

    Returns:
        A torchvision ``v2`` transform.
    """
    compose: Transform = v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=rotation, translate=(0.1, 0.1), scale=(0.9, 1.2), fill=fill),
            v2.ColorJitter(brightness=0.2, contrast=0.15, saturation=0.15, hue=0.02),
        ]
    )
    return compose


def preprocessing_for(model: nn.Module, image_size: int | None = None) -> Preprocessing:
    """The preprocessing of one backbone, from timm's data config.

    The same object describes the training transforms (:class:`ImageArrayDataset`) and
    the backbone's `TorchStage` at inference: a square input, bilinear resizing without a
    crop, timm's mean and standard deviation.

    Args:
        model: A timm model.
        image_size: Override of the input side; ``None`` uses the model's own.

    Returns:
        The library's :class:`cascademl.torch_stage.Preprocessing`.
    """
    config = resolve_model_data_config(model)  # type: ignore[no-untyped-call]
    channels, _, width = (int(v) for v in config["input_size"])
    size = image_size if image_size is not None else width
    return Preprocessing(
        input_size=(channels, size, size),
        interpolation="bilinear",
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        crop_pct=1.0,
    )


class ImageArrayDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """In-memory dataset over uint8 image arrays, resized once to the backbone's size.

    With ``double=True`` the dataset has ``2 * n`` items: item ``i < n`` is image ``i``
    plain, item ``n + i`` is image ``i`` through ``augment`` (the paper's doubling).
    With ``double=False`` every item goes through ``augment`` when one is given.

    Args:
        images: uint8 array of shape (n_images, H, W, 3).
        targets: Integer labels of shape (n_images,).
        preprocessing: Input size and mean/std of the backbone (from
            :func:`preprocessing_for`). The images are resized once, bilinearly with
            antialiasing, to its ``input_size`` and rounded back to uint8; each item is
            then scaled to ``[0, 1]`` and normalized with its ``mean`` and ``std``.

    Raises:
        ValueError: When ``preprocessing`` lacks an input size, a mean or a std, or the
            images and targets differ in number.
        augment: Random transform for uint8 ``(3, H, W)`` tensors, or ``None``.
        double: Serve every image twice, plain and augmented.
    """

    def __init__(
        self,
        images: NDArray[np.uint8],
        targets: NDArray[np.int64] | Sequence[int],
        preprocessing: Preprocessing,
        *,
        augment: Transform | None = None,
        double: bool = False,
    ) -> None:
        if len(images) != len(targets):
            msg = f"{len(images)} images but {len(targets)} targets"
            raise ValueError(msg)
        if double and augment is None:
            raise ValueError("double=True needs an augment transform")
        self.targets = [int(t) for t in targets]
        self.augment = augment
        self.double = double
        size, mean, std = preprocessing.input_size, preprocessing.mean, preprocessing.std
        if size is None or mean is None or std is None:
            msg = f"preprocessing must have an input_size, a mean and a std, got {preprocessing!r}"
            raise ValueError(msg)
        _, height, width = size
        tensor = _tensor(images).permute(0, 3, 1, 2)
        if tensor.shape[-1] != width or tensor.shape[-2] != height:
            chunks = [
                F.interpolate(
                    chunk.float(),
                    size=(height, width),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
                for chunk in torch.split(tensor, 256)
            ]
            tensor = torch.cat(chunks) if chunks else tensor.new_empty((0, 3, height, width))
        self.images = tensor.contiguous()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        """Return the number of items (twice the images when doubling)."""
        return len(self.targets) * (2 if self.double else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return one ``(float image, label)`` pair."""
        count = len(self.targets)
        base = index % count
        image = self.images[base]
        if self.augment is not None and (not self.double or index >= count):
            image = self.augment(image)
        return (image.float() / 255 - self.mean) / self.std, self.targets[base]
