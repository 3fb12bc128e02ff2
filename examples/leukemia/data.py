"""Discovery, checks, duplicate grouping and leak-free splits for the Kaggle ALL layout.

The dataset is a folder with one sub-folder per class (``Benign``, ``Early``, ``Pre``,
``Pro``; case does not matter), or a folder holding the Kaggle ``Original/`` and
``Segmented/`` variants with those class folders inside. Every image Pillow can decode
is accepted and converted to RGB.

The dataset has no patient IDs but holds exact duplicates (same sha256) and near
duplicates (repeated captures of the same field, found with a 64-bit difference hash).
:func:`group_records` joins both kinds, and optionally blocks of consecutive file
numbers, into groups with a union-find, and :func:`split_dataset` keeps every group on
one side of the train/validation/test split.

Exceptions (all are ``ValueError``)::

    LeukemiaDataError
    ├── BadImageError          an image that cannot be decoded (names the file)
    ├── ClassFolderError       a problem with the class folders
    │   ├── MissingClassError  a class folder is absent
    │   ├── EmptyClassError    a class folder holds no usable image
    │   └── UnknownClassError  a folder that is not one of the classes
    ├── ManifestError          ``MANIFEST.sha256`` disagrees with the files on disk
    └── SplitError             a split cannot be made, reloaded or is leaky
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import StratifiedGroupKFold

from cascademl import _files
from cascademl._images import to_uint8_image  # torch-free; cascademl.torch_stage's

logger = logging.getLogger(__name__)

#: The four classes of the Kaggle ALL dataset, in label order.
CLASS_NAMES: Final[tuple[str, ...]] = ("Benign", "Early", "Pre", "Pro")
#: Dataset variants a root may hold instead of class folders.
VARIANTS: Final[tuple[str, ...]] = ("Original", "Segmented")
#: Name of the optional checksum file (``sha256sum`` format, paths relative to its folder).
MANIFEST_NAME: Final = "MANIFEST.sha256"
#: Split names, in manifest order.
SPLITS: Final[tuple[str, ...]] = ("train", "val", "test")
#: Columns of the split manifest CSV.
SPLIT_COLUMNS: Final[tuple[str, ...]] = ("path", "label", "group", "split", "sha256")
#: Default Hamming threshold (of 64 bits) for near duplicates. On the ALL data, thresholds
#: up to 11 join no two images of different classes; 6 finds the ~40 near-duplicate pairs
#: SOURCE.md describes without merging unrelated images.
DEFAULT_NEAR_THRESHOLD: Final = 6
_MAX_LISTED: Final = 10
_HASH_BITS: Final = 64
_MAX_UINT8: Final = 255
_FRACTION_TOLERANCE: Final = 1e-6


class LeukemiaDataError(ValueError):
    """Base class of the data errors of the leukemia example."""


class BadImageError(LeukemiaDataError):
    """An image file cannot be opened or fully decoded.

    Attributes:
        path: The file at fault.
    """

    def __init__(self, path: Path, reason: str) -> None:
        """Store the file and build the message.

        Args:
            path: The file at fault.
            reason: Why it could not be read.
        """
        self.path = path
        super().__init__(f"cannot read image {path}: {reason}")


class ClassFolderError(LeukemiaDataError):
    """A problem with the class folders of the dataset root."""


class MissingClassError(ClassFolderError):
    """A class folder is absent."""


class EmptyClassError(ClassFolderError):
    """A class folder holds no usable image."""


class UnknownClassError(ClassFolderError):
    """A folder in the dataset root is not one of the classes."""


class ManifestError(LeukemiaDataError):
    """``MANIFEST.sha256`` disagrees with the files on disk."""


class SplitError(LeukemiaDataError):
    """A split cannot be made or reloaded, or a group crosses two splits."""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One readable image of the dataset.

    Attributes:
        path: Path relative to the class root, with ``/`` separators.
        label: Canonical class name, one of :data:`CLASS_NAMES`.
        sha256: Hex digest of the file's bytes.
        dhash: 64-bit difference hash of the decoded image.
    """

    path: str
    label: str
    sha256: str
    dhash: int


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file left out by ``skip_bad=True``.

    Attributes:
        path: Path relative to the class root.
        reason: Why it was skipped.
    """

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ManifestCheck:
    """Result of comparing the files with ``MANIFEST.sha256``.

    Attributes:
        manifest: The checksum file that was read.
        checked: Number of files whose hash matched.
        mismatched: Files whose hash differs from the manifest.
        missing: Files listed in the manifest but absent on disk.
        unlisted: Images on disk that the manifest does not list.
    """

    manifest: Path
    checked: int
    mismatched: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unlisted: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every file matches and nothing is missing or unlisted."""
        return not (self.mismatched or self.missing or self.unlisted)

    def describe(self) -> str:
        """Return a human-readable summary naming the files at fault."""
        parts = [f"{self.manifest}: {self.checked} files match"]
        for title, items in (
            ("hash mismatch", self.mismatched),
            ("missing on disk", self.missing),
            ("not in the manifest", self.unlisted),
        ):
            if items:
                parts.append(f"{len(items)} {title}: {_listing(items)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class DatasetScan:
    """What :func:`scan_dataset` found.

    Attributes:
        root: The folder that holds the class folders.
        records: Readable images, sorted by path.
        skipped: Files or folders left out because ``skip_bad=True``.
        duplicates: Groups of paths with identical bytes (exact duplicates).
        manifest: The ``MANIFEST.sha256`` check, or ``None`` when there was none.
        classes: The class names, in label order.
    """

    root: Path
    records: tuple[ImageRecord, ...]
    skipped: tuple[SkippedFile, ...] = ()
    duplicates: tuple[tuple[str, ...], ...] = ()
    manifest: ManifestCheck | None = None
    classes: tuple[str, ...] = CLASS_NAMES

    def counts(self) -> dict[str, int]:
        """Return the number of images per class, in class order."""
        counter = Counter(record.label for record in self.records)
        return {name: counter[name] for name in self.classes}


@dataclass(frozen=True, slots=True)
class SplitRow:
    """One row of the split manifest.

    Attributes:
        path: Path relative to the class root, with ``/`` separators.
        label: Canonical class name.
        group: Duplicate group; a group never spans two splits.
        split: ``"train"``, ``"val"`` or ``"test"``.
        sha256: Hex digest of the file's bytes.
    """

    path: str
    label: str
    group: int
    split: str
    sha256: str


@dataclass(frozen=True)
class SplitManifest:
    """A grouped, stratified train/validation/test split of one dataset root.

    Attributes:
        root: The folder that holds the class folders.
        rows: One row per image, sorted by path.
        classes: The class names, in label order.
    """

    root: Path
    rows: tuple[SplitRow, ...]
    classes: tuple[str, ...] = CLASS_NAMES

    def select(self, split: str) -> tuple[SplitRow, ...]:
        """Return the rows of one split.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.

        Raises:
            SplitError: When ``split`` is not a split name.
        """
        if split not in SPLITS:
            msg = f"split must be one of {SPLITS}, got {split!r}"
            raise SplitError(msg)
        return tuple(row for row in self.rows if row.split == split)

    def paths(self, split: str) -> list[Path]:
        """Return the absolute image paths of one split."""
        return [self.root / row.path for row in self.select(split)]

    def targets(self, split: str) -> NDArray[np.int64]:
        """Return the integer labels (indices into ``classes``) of one split."""
        lookup = {name: index for index, name in enumerate(self.classes)}
        return np.array([lookup[row.label] for row in self.select(split)], dtype=np.int64)

    def counts(self) -> dict[str, dict[str, int]]:
        """Return the number of images per split and class."""
        return {
            split: {
                name: sum(row.label == name for row in self.select(split)) for name in self.classes
            }
            for split in SPLITS
        }

    def digest(self) -> str:
        """Return a sha256 over the rows; it keys caches derived from this split."""
        hasher = hashlib.sha256()
        for row in self.rows:
            hasher.update(f"{row.path}\t{row.label}\t{row.split}\t{row.sha256}\n".encode())
        return hasher.hexdigest()


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown}, and {more} more" if more > 0 else shown


def _child_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_class_root(root: str | os.PathLike[str], variant: str = "Original") -> Path:
    """Find the folder that holds the class folders.

    ``root`` may hold the class folders itself, or the Kaggle variants ``Original/`` and
    ``Segmented/`` (matched without regard to case), in which case ``variant`` picks one.

    Args:
        root: The dataset folder given by the user.
        variant: Which variant to use when ``root`` holds variants.

    Returns:
        The folder with the class folders.

    Raises:
        ClassFolderError: When ``root`` is not a folder, or the variant is absent.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        msg = f"dataset root {root_path} is not a folder"
        raise ClassFolderError(msg)
    dirs = {p.name.casefold(): p for p in _child_dirs(root_path)}
    classes = {name.casefold() for name in CLASS_NAMES}
    variants = {name.casefold() for name in VARIANTS}
    if dirs.keys() & classes or not dirs.keys() & variants:
        return root_path
    chosen = dirs.get(variant.casefold())
    if chosen is None:
        present = sorted(dirs[key].name for key in dirs.keys() & variants)
        msg = (
            f"dataset root {root_path} holds the variants {present}, not {variant!r}; "
            f"pick one of them"
        )
        raise ClassFolderError(msg)
    return chosen


def dhash(image: Image.Image, hash_size: int = 8) -> int:
    """Compute a difference hash of ``hash_size**2`` bits.

    The image is reduced to grey ``(hash_size + 1) x hash_size`` pixels; each bit tells
    whether a pixel is brighter than its right neighbour.

    Args:
        image: Any Pillow image.
        hash_size: Side of the hash grid; 8 gives a 64-bit hash.

    Returns:
        The hash as a Python integer.
    """
    grey = image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image, decode it fully and convert it to RGB.

    Args:
        path: The image file.

    Returns:
        The decoded RGB image.

    Raises:
        BadImageError: When the file is not an image, is truncated or corrupt.
    """
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as error:  # a folder, a dangling or looping link, no permission
        raise BadImageError(target, f"{type(error).__name__}: {error.strerror}") from error
    return _decode(target, data)


def _decode(path: Path, data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = to_uint8_image(image, "RGB")  # 16-bit images scaled, not clipped
    except UnidentifiedImageError as error:
        raise BadImageError(path, "not an image Pillow can identify") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(path, f"{type(error).__name__}: {error}") from error
    return rgb


def _read_record(path: Path, relative: str, label: str) -> ImageRecord:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadImageError(path, f"{type(error).__name__}: {error}") from error
    image = _decode(path, data)
    return ImageRecord(relative, label, hashlib.sha256(data).hexdigest(), dhash(image))


def read_sha256_manifest(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a ``sha256sum``-style file into ``{relative path: hex digest}``.

    Args:
        path: The checksum file.

    Returns:
        The digests by path, with ``/`` separators.

    Raises:
        ManifestError: When a line is not ``<64 hex digits>  <path>``.
    """
    entries: dict[str, str] = {}
    pattern = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = pattern.match(line)
        if match is None:
            msg = f"{path}:{number}: not a sha256sum line: {line!r}"
            raise ManifestError(msg)
        entries[match.group(2).strip().replace("\\", "/")] = match.group(1).lower()
    return entries


def check_sha256_manifest(
    manifest: str | os.PathLike[str], base: Path, files: Mapping[str, str]
) -> ManifestCheck:
    """Compare file digests with a ``MANIFEST.sha256``.

    Args:
        manifest: The checksum file.
        base: Folder the manifest's paths are relative to.
        files: ``{path relative to base: sha256}`` of the files found on disk.

    Returns:
        The comparison; nothing is raised here.
    """
    expected = read_sha256_manifest(manifest)
    mismatched = sorted(p for p, h in files.items() if p in expected and expected[p] != h)
    missing = sorted(p for p in expected if p not in files and not (base / p).is_file())
    unlisted = sorted(p for p in files if p not in expected)
    checked = sum(1 for p, h in files.items() if expected.get(p) == h)
    return ManifestCheck(
        Path(manifest), checked, tuple(mismatched), tuple(missing), tuple(unlisted)
    )


def _find_manifest(class_root: Path, given_root: Path) -> tuple[Path, Path] | None:
    """Return ``(manifest, base folder)``, looking in the class root then the given root."""
    for folder in dict.fromkeys((class_root, given_root)):
        candidate = folder / MANIFEST_NAME
        if candidate.is_file():
            return candidate, folder
    return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_dataset(
    root: str | os.PathLike[str],
    *,
    variant: str = "Original",
    skip_bad: bool = False,
    check_manifest: bool = True,
    classes: Sequence[str] = CLASS_NAMES,
) -> DatasetScan:
    """Find, decode, hash and check every image of a dataset root.

    Args:
        root: The dataset folder (class folders, or ``Original/``/``Segmented/`` parents).
        variant: The variant to use when ``root`` holds variants.
        skip_bad: Leave out unreadable images, unknown folders and files that disagree with
            ``MANIFEST.sha256``, and list them in ``skipped`` instead of raising.
        check_manifest: Compare with ``MANIFEST.sha256`` when the file exists.
        classes: The expected class folder names (matched without regard to case).

    Returns:
        The records, the skipped files, the exact duplicates and the manifest check.

    Raises:
        UnknownClassError: A folder in the root is not a class (unless ``skip_bad``).
        MissingClassError: A class folder is absent.
        BadImageError: An image cannot be decoded (unless ``skip_bad``).
        EmptyClassError: A class folder holds no usable image.
        ManifestError: A file's hash differs from ``MANIFEST.sha256``, or a listed file is
            missing (unless ``skip_bad``).
    """
    given_root = Path(root)
    class_root = resolve_class_root(given_root, variant)
    skipped: list[SkippedFile] = []
    found = _class_folders(class_root, classes, skipped, skip_bad=skip_bad)
    records: list[ImageRecord] = []
    for name in classes:
        for path in _image_files(found[name]):
            relative = path.relative_to(class_root).as_posix()
            try:
                records.append(_read_record(path, relative, name))
            except BadImageError as error:
                if not skip_bad:
                    raise
                skipped.append(SkippedFile(relative, str(error)))
                logger.warning("skipped %s", error)

    manifest_check = None
    located = _find_manifest(class_root, given_root) if check_manifest else None
    if located is not None:
        manifest_path, base = located
        prefix = class_root.relative_to(base).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        digests = {prefix + r.path: r.sha256 for r in records}
        manifest_check = check_sha256_manifest(manifest_path, base, digests)
        records, skipped = _apply_manifest(manifest_check, records, skipped, prefix, skip_bad)
        logger.info("%s", manifest_check.describe())

    for name in classes:
        if not any(record.label == name for record in records):
            msg = f"class folder {found[name]} holds no readable image"
            raise EmptyClassError(msg)
    records.sort(key=lambda record: record.path)
    duplicates = find_exact_duplicates(records)
    if duplicates:
        logger.info("%d groups of exact duplicates", len(duplicates))
    return DatasetScan(
        class_root, tuple(records), tuple(skipped), duplicates, manifest_check, tuple(classes)
    )


def _class_folders(
    class_root: Path, classes: Sequence[str], skipped: list[SkippedFile], *, skip_bad: bool
) -> dict[str, Path]:
    """Map each class to its folder; unknown folders raise, or are skipped."""
    wanted = {name.casefold(): name for name in classes}
    found: dict[str, Path] = {}
    for folder in _child_dirs(class_root):
        name = wanted.get(folder.name.casefold())
        if name is None:
            if not skip_bad:
                msg = (
                    f"unknown class folder {folder}: expected only {list(classes)} "
                    f"(case does not matter)"
                )
                raise UnknownClassError(msg)
            skipped.append(SkippedFile(folder.name + "/", "unknown class folder"))
            continue
        if name in found:
            msg = f"class {name!r} has two folders: {found[name]} and {folder}"
            raise ClassFolderError(msg)
        found[name] = folder
    missing = [name for name in classes if name not in found]
    if missing:
        msg = (
            f"dataset root {class_root} has no folder for class(es) {missing}; "
            f"expected folders {list(classes)}"
        )
        raise MissingClassError(msg)
    return found


def _apply_manifest(
    check: ManifestCheck,
    records: list[ImageRecord],
    skipped: list[SkippedFile],
    prefix: str,
    skip_bad: bool,
) -> tuple[list[ImageRecord], list[SkippedFile]]:
    if check.unlisted:
        logger.warning("files not listed in %s: %s", check.manifest, _listing(check.unlisted))
    if not (check.mismatched or check.missing):
        return records, skipped
    if not skip_bad:
        raise ManifestError(check.describe())
    logger.warning("%s", check.describe())
    bad = {path.removeprefix(prefix) for path in check.mismatched}
    skipped = skipped + [
        SkippedFile(path, f"sha256 differs from {check.manifest.name}") for path in sorted(bad)
    ]
    return [r for r in records if r.path not in bad], skipped


def find_exact_duplicates(records: Iterable[ImageRecord]) -> tuple[tuple[str, ...], ...]:
    """Group paths whose files have the same sha256.

    Args:
        records: The scanned images.

    Returns:
        One sorted tuple of paths per digest seen more than once, sorted by first path.
        Duplicates with different labels are logged as warnings.
    """
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_hash[record.sha256].append(record)
    groups = []
    for same in by_hash.values():
        if len(same) > 1:
            if len({r.label for r in same}) > 1:
                logger.warning("identical files with different labels: %s", [r.path for r in same])
            groups.append(tuple(sorted(r.path for r in same)))
    return tuple(sorted(groups))


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        a, b = self.find(first), self.find(second)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def near_duplicate_pairs(
    hashes: Sequence[int], threshold: int = DEFAULT_NEAR_THRESHOLD
) -> list[tuple[int, int]]:
    """Return index pairs whose 64-bit hashes differ in at most ``threshold`` bits.

    Args:
        hashes: One 64-bit hash per image.
        threshold: Largest Hamming distance counted as a near duplicate.

    Returns:
        Pairs ``(i, j)`` with ``i < j``, sorted.
    """
    values = np.array(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    chunk = 512
    for start in range(0, len(values), chunk):
        block = values[start : start + chunk]
        distance = np.bitwise_count(block[:, None] ^ values[None, :])
        rows, cols = np.nonzero(distance <= threshold)
        rows = rows + start
        keep = rows < cols
        pairs.extend(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    return sorted(pairs)


def _file_number(path: str) -> int | None:
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def group_records(
    records: Sequence[ImageRecord],
    *,
    near_threshold: int | None = DEFAULT_NEAR_THRESHOLD,
    block_size: int | None = None,
) -> NDArray[np.int64]:
    """Assign a group to every image so that related images share a group.

    Exact duplicates (same sha256), near duplicates (dHash within ``near_threshold``
    bits) and, when ``block_size`` is given, images of the same class whose file numbers
    fall in the same block of ``block_size`` consecutive numbers are joined.

    Args:
        records: The scanned images.
        near_threshold: Hamming threshold for near duplicates; ``None`` turns them off.
        block_size: Size of the blocks of consecutive file numbers; ``None`` turns them off.

    Returns:
        Group ids numbered 0, 1, ... in order of first appearance, of shape (n_images,).

    Raises:
        ValueError: When ``near_threshold`` or ``block_size`` is out of range.
    """
    if near_threshold is not None and not 0 <= near_threshold < _HASH_BITS:
        msg = f"near_threshold must be in [0, 64), got {near_threshold}"
        raise ValueError(msg)
    if block_size is not None and block_size < 1:
        msg = f"block_size must be at least 1, got {block_size}"
        raise ValueError(msg)
    union = _UnionFind(len(records))
    first_of: dict[tuple[str, object], int] = {}

    def join_key(index: int, key: tuple[str, object]) -> None:
        if key in first_of:
            union.union(first_of[key], index)
        else:
            first_of[key] = index

    for index, record in enumerate(records):
        join_key(index, ("sha256", record.sha256))
        number = _file_number(record.path)
        if block_size is not None and number is not None:
            join_key(index, ("block", (record.label, number // block_size)))
    if near_threshold is not None:
        for first, second in near_duplicate_pairs([r.dhash for r in records], near_threshold):
            union.union(first, second)
    roots = [union.find(index) for index in range(len(records))]
    renumber: dict[int, int] = {}
    return np.array([renumber.setdefault(r, len(renumber)) for r in roots], dtype=np.int64)


def check_fractions(val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Check the split's shares; return the fold counts of the test and validation splits.

    Raises:
        SplitError: When the test share is not ``1/k``, or the validation share not
            ``1/k`` of what the test split leaves.
    """
    test_folds = _fold_count(test_fraction, "test_fraction")
    val_folds = _fold_count(val_fraction / (1 - test_fraction), "val_fraction / (1 - test)")
    return test_folds, val_folds


def _fold_count(fraction: float, name: str) -> int:
    folds = round(1 / fraction) if 0 < fraction < 1 else 0
    if folds < 2 or abs(folds * fraction - 1) > _FRACTION_TOLERANCE:  # noqa: PLR2004
        msg = f"{name} must be 1/k for an integer k >= 2 (e.g. 0.1), got {fraction}"
        raise SplitError(msg)
    return folds


def _pick_fold(
    labels: NDArray[np.int64], groups: NDArray[np.int64], folds: int, seed: int, what: str
) -> NDArray[np.bool_]:
    if len(np.unique(groups)) < folds:
        msg = f"cannot split off {what}: fewer than {folds} duplicate groups"
        raise SplitError(msg)
    smallest = int(np.bincount(labels).min())
    if smallest < folds:
        logger.warning(
            "a class has only %d images for %d folds: %s may miss that class", smallest, folds, what
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # The same fact as the warning logged above, which tiny datasets always trigger.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        try:
            _, chosen = next(splitter.split(np.zeros(len(labels)), labels, groups))
        except ValueError as error:
            msg = f"cannot split off {what}: {error}"
            raise SplitError(msg) from error
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return mask


def _subsample(
    labels: NDArray[np.int64], groups: NDArray[np.int64], limit: int, seed: int
) -> NDArray[np.bool_]:
    """Keep whole groups, in a seeded order, until each class has about ``limit`` images."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    taken = np.zeros(labels.max() + 1, dtype=np.int64)
    for group in rng.permutation(np.unique(groups)):
        members = groups == group
        label = np.bincount(labels[members]).argmax()
        if taken[label] < limit:
            keep |= members
            taken[label] += members.sum()
    return keep


def split_dataset(
    scan: DatasetScan,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    near_threshold: int | None = DEFAULT_NEAR_THRESHOLD,
    block_size: int | None = None,
    max_per_class: int | None = None,
) -> SplitManifest:
    """Make a grouped, stratified, seeded train/validation/test split.

    The test split is one fold of a ``StratifiedGroupKFold`` with ``1 / test_fraction``
    folds; the validation split is one fold of a second one over the rest, sized so that
    it holds ``val_fraction`` of all images. Groups come from :func:`group_records`.

    Args:
        scan: The result of :func:`scan_dataset`.
        seed: Seed of the fold shuffling (and of ``max_per_class`` subsampling).
        val_fraction: Share of validation images, ``1/k``.
        test_fraction: Share of test images, ``1/k``.
        near_threshold: dHash threshold for near duplicates (``None``: off).
        block_size: Also group blocks of consecutive file numbers (``None``: off).
        max_per_class: Keep only about this many images per class, by whole groups.

    Returns:
        The split, verified leak-free.

    Raises:
        SplitError: When the fractions are not ``1/k``, a class is too small, or a group
            would cross two splits.
    """
    test_folds, val_folds = check_fractions(val_fraction, test_fraction)
    records = list(scan.records)
    lookup = {name: index for index, name in enumerate(scan.classes)}
    labels = np.array([lookup[r.label] for r in records], dtype=np.int64)
    groups = group_records(records, near_threshold=near_threshold, block_size=block_size)
    if max_per_class is not None:
        keep = _subsample(labels, groups, max_per_class, seed)
        records = [r for r, k in zip(records, keep, strict=True) if k]
        labels, groups = labels[keep], groups[keep]
    test = _pick_fold(labels, groups, test_folds, seed, "the test split")
    rest = np.flatnonzero(~test)
    val_in_rest = _pick_fold(labels[rest], groups[rest], val_folds, seed + 1, "validation")
    split = np.full(len(records), "train", dtype=object)
    split[test] = "test"
    split[rest[val_in_rest]] = "val"
    rows = tuple(
        SplitRow(r.path, r.label, int(g), str(s), r.sha256)
        for r, g, s in zip(records, groups, split, strict=True)
    )
    manifest = SplitManifest(scan.root, rows, scan.classes)
    verify_split(manifest)
    logger.info("split sizes: %s", {s: len(manifest.select(s)) for s in SPLITS})
    return manifest


def verify_split(manifest: SplitManifest) -> None:
    """Check that no group and no file content appears in two splits, and none is empty.

    Args:
        manifest: The split to check.

    Raises:
        SplitError: Naming the first groups or files that cross splits.
    """
    for name in ("group", "sha256"):
        sides: dict[object, set[str]] = defaultdict(set)
        for row in manifest.rows:
            sides[getattr(row, name)].add(row.split)
        crossing = [str(k) for k, s in sides.items() if len(s) > 1]
        if crossing:
            msg = f"{len(crossing)} {name}(s) fall in more than one split: {_listing(crossing)}"
            raise SplitError(msg)
    empty = [split for split in SPLITS if not manifest.select(split)]
    if empty:
        msg = f"empty split(s): {empty}"
        raise SplitError(msg)


def save_split_manifest(manifest: SplitManifest, path: str | os.PathLike[str]) -> Path:
    """Write the split as CSV (``path,label,group,split,sha256``), atomically.

    Args:
        manifest: The split.
        path: The CSV file to write; parent folders are created.

    Returns:
        The written path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _files.atomic_open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_COLUMNS)
        for row in manifest.rows:
            writer.writerow([row.path, row.label, row.group, row.split, row.sha256])
    return target


def load_split_manifest(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    variant: str = "Original",
    verify_hashes: bool = True,
    classes: Sequence[str] = CLASS_NAMES,
) -> SplitManifest:
    """Reload a split CSV and validate it against the files.

    Args:
        path: The CSV written by :func:`save_split_manifest`.
        root: The dataset folder (as given to :func:`scan_dataset`).
        variant: The variant to use when ``root`` holds variants.
        verify_hashes: Recompute every file's sha256 and compare.
        classes: The class names, in label order.

    Returns:
        The split.

    Raises:
        SplitError: Bad columns or values, a missing file, a changed file, or leakage.
    """
    class_root = resolve_class_root(root, variant)
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != SPLIT_COLUMNS:
            msg = f"{path}: columns must be {SPLIT_COLUMNS}, got {reader.fieldnames}"
            raise SplitError(msg)
        rows = []
        for number, raw in enumerate(reader, start=2):
            if raw["label"] not in classes or raw["split"] not in SPLITS:
                msg = f"{path}:{number}: bad label or split in {raw}"
                raise SplitError(msg)
            try:
                group = int(raw["group"])
            except ValueError as error:
                msg = f"{path}:{number}: group is not an integer"
                raise SplitError(msg) from error
            rows.append(SplitRow(raw["path"], raw["label"], group, raw["split"], raw["sha256"]))
    missing = [row.path for row in rows if not (class_root / row.path).is_file()]
    if missing:
        msg = f"{path}: {len(missing)} file(s) no longer exist: {_listing(missing)}"
        raise SplitError(msg)
    if verify_hashes:
        changed = [
            row.path
            for row in rows
            if hashlib.sha256((class_root / row.path).read_bytes()).hexdigest() != row.sha256
        ]
        if changed:
            msg = (
                f"{path}: {len(changed)} file(s) changed since the split was made: "
                f"{_listing(changed)}"
            )
            raise SplitError(msg)
    manifest = SplitManifest(class_root, tuple(sorted(rows, key=lambda r: r.path)), tuple(classes))
    verify_split(manifest)
    return manifest


def prepare_split(
    root: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str],
    *,
    variant: str = "Original",
    skip_bad: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    near_threshold: int | None = DEFAULT_NEAR_THRESHOLD,
    block_size: int | None = None,
    max_per_class: int | None = None,
) -> tuple[SplitManifest, DatasetScan | None]:
    """Reuse the split CSV at ``manifest_path`` if it exists, or scan, split and save it.

    The settings the split was made with are saved beside the CSV (``split.json``). A
    reused split must have the requested ``val_fraction`` and ``test_fraction``: the
    shares of the data are what every later number rests on, so a mismatch is an error,
    not a silent reuse. Other settings that differ (a new ``seed``, say) are logged as a
    warning and the saved split is kept, so that a run's later commands score the same
    images.

    Args:
        root: The dataset folder.
        manifest_path: Where the split CSV is (or will be).
        variant: The variant to use when ``root`` holds variants.
        skip_bad: Passed to :func:`scan_dataset`.
        seed: Passed to :func:`split_dataset`.
        val_fraction: Passed to :func:`split_dataset`.
        test_fraction: Passed to :func:`split_dataset`.
        near_threshold: Passed to :func:`split_dataset`.
        block_size: Passed to :func:`split_dataset`.
        max_per_class: Passed to :func:`split_dataset`.

    Returns:
        The split, and the scan (``None`` when an existing CSV was reused).

    Raises:
        SplitError: When a saved split was made with other fractions, or as
            :func:`split_dataset` and :func:`load_split_manifest` raise.
    """
    settings: dict[str, object] = {
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "near_threshold": near_threshold,
        "block_size": block_size,
        "max_per_class": max_per_class,
    }
    settings_path = Path(manifest_path).with_suffix(".json")
    if Path(manifest_path).is_file():
        _check_saved_settings(settings_path, settings, manifest_path)
        logger.info("reusing split %s", manifest_path)
        return load_split_manifest(manifest_path, root, variant=variant), None
    scan = scan_dataset(root, variant=variant, skip_bad=skip_bad)
    manifest = split_dataset(
        scan,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        near_threshold=near_threshold,
        block_size=block_size,
        max_per_class=max_per_class,
    )
    # The settings first: another process waits for the CSV, then reads both.
    settings_path.parent.mkdir(parents=True, exist_ok=True)
    with _files.atomic_open(settings_path, "w") as handle:
        json.dump(settings, handle, indent=2)
    save_split_manifest(manifest, manifest_path)
    return manifest, scan


def _check_saved_settings(
    settings_path: Path, wanted: Mapping[str, object], manifest_path: str | os.PathLike[str]
) -> None:
    """Refuse a saved split made with other fractions; warn about other differences."""
    if not settings_path.is_file():  # a split saved before the settings were recorded
        logger.info(
            "%s has no settings file (%s); reusing it as it is", manifest_path, settings_path.name
        )
        return
    try:
        saved = json.loads(settings_path.read_text())
    except (OSError, ValueError) as error:
        msg = (
            f"{settings_path}: cannot read the split's settings ({error}); "
            f"delete it and {manifest_path} to split anew"
        )
        raise SplitError(msg) from error
    for name in ("val_fraction", "test_fraction"):
        if name in saved and saved[name] != wanted[name]:
            msg = (
                f"{manifest_path} was made with {name}={saved[name]}, not {wanted[name]}: "
                f"use another output folder, or delete {manifest_path} and "
                f"{settings_path.name} to split anew (runs in this folder then retrain)"
            )
            raise SplitError(msg)
    changed = {k: (saved[k], v) for k, v in wanted.items() if k in saved and saved[k] != v}
    if changed:
        logger.warning(
            "reusing %s, made with other settings (%s); delete it to split anew",
            manifest_path,
            ", ".join(f"{k}={old} not {new}" for k, (old, new) in changed.items()),
        )


#: Share of image rows, at the bottom, that :func:`mask_bottom_strip` fills by default. The
#: dataset's scale bars sit in rows 207-214 of 224 (the bottom 17 rows); the audit in
#: ``docs/examples/leukemia.md`` found the bottom 14 of 112 rows alone 77% accurate.
SCALE_BAR_FRACTION: Final = 0.125
#: Value the masked strip is filled with: the near-white background of a smear, the same
#: in every channel, so the strip carries nothing about the image it came from.
MASK_FILL: Final = 240


def mask_bottom_strip(
    images: NDArray[np.uint8], fraction: float, *, fill: int = MASK_FILL
) -> NDArray[np.uint8]:
    """Fill the bottom ``fraction`` of the rows of images with one constant value.

    The strip hides the scale bar printed at the bottom of the dataset's images, a cue that
    is not the cell. It is applied after stain normalization, so it is constant whatever
    the normalization did to the rest of the image.

    Args:
        images: uint8 images of shape (H, W, 3) or (n, H, W, 3); not changed.
        fraction: Share of the rows to fill, in ``[0, 1)``; the row count is rounded, and
            ``0`` returns the images unchanged.
        fill: The value every channel of the strip gets.

    Returns:
        A masked copy (or ``images`` itself when nothing is masked).

    Raises:
        ValueError: When ``fraction`` is outside ``[0, 1)``, ``fill`` outside ``[0, 255]``
            or ``images`` is not (..., H, W, 3).
    """
    if not 0 <= fraction < 1:
        msg = f"mask_bottom must be in [0, 1) (a share of the image rows), got {fraction}"
        raise ValueError(msg)
    if not 0 <= fill <= _MAX_UINT8:
        msg = f"fill must be in [0, 255], got {fill}"
        raise ValueError(msg)
    if images.ndim not in (3, 4) or images.shape[-1] != 3:  # noqa: PLR2004 - RGB
        msg = f"images must have shape (H, W, 3) or (n, H, W, 3), got {images.shape}"
        raise ValueError(msg)
    rows = round(fraction * images.shape[-3])
    if rows == 0:
        return images
    masked = images.copy()
    masked[..., -rows:, :, :] = fill
    return masked
