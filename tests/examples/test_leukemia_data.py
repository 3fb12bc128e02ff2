import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from examples.leukemia import data
from examples.leukemia.presets import get_preset
from PIL import Image


def test_scan_finds_every_class_and_the_duplicate(leukemia_root, caplog):
    with caplog.at_level(logging.INFO, logger="examples.leukemia.data"):
        scan = data.scan_dataset(leukemia_root)
    assert scan.counts() == {"Benign": 12, "Early": 12, "Pre": 12, "Pro": 12}
    assert scan.duplicates == (("Pro/Pro-001.png", "Pro/Pro-002.png"),)
    assert "1 groups of exact duplicates" in caplog.text
    assert scan.manifest is None
    assert scan.skipped == ()


def test_truncated_image_error_names_the_file(leukemia_copy):
    victim = leukemia_copy / "Early" / "Early-003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(data.BadImageError, match=r"Early-003\.png") as caught:
        data.scan_dataset(leukemia_copy)
    assert caught.value.path == victim
    assert isinstance(caught.value, ValueError)


def test_unreadable_file_error_names_the_file(leukemia_copy):
    (leukemia_copy / "Pre" / "notes.txt").write_text("not an image")
    with pytest.raises(data.BadImageError, match=r"notes\.txt.*not an image"):
        data.scan_dataset(leukemia_copy)


def test_empty_class_folder(leukemia_copy):
    for path in (leukemia_copy / "Benign").iterdir():
        path.unlink()
    with pytest.raises(data.EmptyClassError, match="Benign"):
        data.scan_dataset(leukemia_copy)


def test_missing_class_folder(leukemia_copy):
    for path in (leukemia_copy / "Pre").iterdir():
        path.unlink()
    (leukemia_copy / "Pre").rmdir()
    with pytest.raises(data.MissingClassError, match=r"\['Pre'\]"):
        data.scan_dataset(leukemia_copy)


def test_unknown_class_folder(leukemia_copy):
    (leukemia_copy / "Healthy").mkdir()
    with pytest.raises(data.UnknownClassError, match="Healthy"):
        data.scan_dataset(leukemia_copy)


def test_skip_bad_lists_what_it_skipped(leukemia_copy):
    victim = leukemia_copy / "Early" / "Early-003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    (leukemia_copy / "Healthy").mkdir()
    scan = data.scan_dataset(leukemia_copy, skip_bad=True)
    skipped = {item.path: item.reason for item in scan.skipped}
    assert set(skipped) == {"Early/Early-003.png", "Healthy/"}
    assert (
        "truncated" in skipped["Early/Early-003.png"] or "OSError" in skipped["Early/Early-003.png"]
    )
    assert scan.counts()["Early"] == 11


def test_grey_and_rgba_images_become_rgb(leukemia_copy):
    grey = leukemia_copy / "Benign" / "grey.png"
    rgba = leukemia_copy / "Benign" / "rgba.tif"
    Image.new("L", (20, 20), 90).save(grey)
    Image.new("RGBA", (20, 20), (10, 20, 30, 128)).save(rgba)
    scan = data.scan_dataset(leukemia_copy)
    assert {"Benign/grey.png", "Benign/rgba.tif"} <= {r.path for r in scan.records}
    assert data.load_rgb(grey).mode == "RGB"
    assert data.load_rgb(rgba).getpixel((0, 0)) == (10, 20, 30)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    # Pillow opens a 16-bit greyscale PNG as mode I;16, and its convert("RGB") clips every
    # value above 255: a mid-grey 16-bit image used to be read as white.
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")
    assert data.load_rgb(path).getpixel((0, 0)) == (128, 128, 128)


def test_original_parent_and_case_are_accepted(leukemia_root, tmp_path):
    original = tmp_path / "kaggle" / "Original"
    original.parent.mkdir()
    original.symlink_to(leukemia_root, target_is_directory=True)
    (tmp_path / "kaggle" / "Segmented").mkdir()
    scan = data.scan_dataset(tmp_path / "kaggle")
    assert scan.root == original
    assert len(scan.records) == 48
    with pytest.raises(data.ClassFolderError, match="Segmented"):
        data.scan_dataset(tmp_path / "kaggle", variant="Segmented")
    with pytest.raises(data.ClassFolderError, match="holds the variants"):
        data.scan_dataset(tmp_path / "kaggle", variant="Other")


def test_class_folders_match_without_case(leukemia_copy):
    (leukemia_copy / "Benign").rename(leukemia_copy / "benign")
    (leukemia_copy / "Early").rename(leukemia_copy / "EARLY")
    scan = data.scan_dataset(leukemia_copy)
    assert scan.counts() == {"Benign": 12, "Early": 12, "Pre": 12, "Pro": 12}
    assert any(r.path.startswith("EARLY/") and r.label == "Early" for r in scan.records)


def _write_manifest(root: Path) -> Path:
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
        for p in sorted(root.glob("*/*.png"))
    ]
    manifest = root / data.MANIFEST_NAME
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_sha256_manifest_matches_and_mismatches(leukemia_copy):
    _write_manifest(leukemia_copy)
    scan = data.scan_dataset(leukemia_copy)
    assert scan.manifest is not None
    assert scan.manifest.ok
    assert scan.manifest.checked == 48

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(leukemia_copy / "Pre" / "Pre-004.png")
    (leukemia_copy / "Pro" / "Pro-010.png").unlink()
    with pytest.raises(data.ManifestError, match=r"hash mismatch: Pre/Pre-004\.png") as caught:
        data.scan_dataset(leukemia_copy)
    assert "missing on disk: Pro/Pro-010.png" in str(caught.value)

    scan = data.scan_dataset(leukemia_copy, skip_bad=True)
    assert [s.path for s in scan.skipped] == ["Pre/Pre-004.png"]
    assert scan.manifest is not None
    assert scan.manifest.missing == ("Pro/Pro-010.png",)


def test_near_duplicates_and_blocks_are_grouped(leukemia_copy):
    near = np.asarray(Image.open(leukemia_copy / "Pre" / "Pre-005.png")).copy()
    near[0, 0] = near[0, 0] // 2 + 1
    Image.fromarray(near).save(leukemia_copy / "Pre" / "Pre-099.png")
    scan = data.scan_dataset(leukemia_copy)
    index = {r.path: i for i, r in enumerate(scan.records)}
    groups = data.group_records(scan.records)
    assert groups[index["Pre/Pre-005.png"]] == groups[index["Pre/Pre-099.png"]]
    assert groups[index["Pro/Pro-001.png"]] == groups[index["Pro/Pro-002.png"]]
    assert groups[index["Pre/Pre-005.png"]] != groups[index["Pre/Pre-006.png"]]
    blocks = data.group_records(scan.records, near_threshold=None, block_size=5)
    assert blocks[index["Benign/Benign-001.png"]] == blocks[index["Benign/Benign-004.png"]]
    assert blocks[index["Benign/Benign-004.png"]] != blocks[index["Benign/Benign-005.png"]]
    assert blocks[index["Benign/Benign-001.png"]] != blocks[index["Early/Early-001.png"]]


def test_near_duplicate_pairs_respect_the_threshold():
    hashes = [0, 0b111, 0b1111_1111, 2**64 - 1]
    assert data.near_duplicate_pairs(hashes, threshold=3) == [(0, 1)]
    assert data.near_duplicate_pairs(hashes, threshold=8) == [(0, 1), (0, 2), (1, 2)]


def test_split_is_grouped_stratified_seeded_and_reloadable(leukemia_root, tmp_path):
    scan = data.scan_dataset(leukemia_root)
    split = data.split_dataset(scan, seed=3)
    by_path = {row.path: row for row in split.rows}
    assert by_path["Pro/Pro-001.png"].split == by_path["Pro/Pro-002.png"].split
    counts = split.counts()
    for name in data.CLASS_NAMES:
        assert counts["val"][name] >= 1
        assert counts["test"][name] >= 1
        assert counts["train"][name] >= 8
    assert data.split_dataset(scan, seed=3) == split
    other_seeds = [data.split_dataset(scan, seed=s).rows for s in range(4, 8)]
    assert any(rows != split.rows for rows in other_seeds)

    csv_path = data.save_split_manifest(split, tmp_path / "split.csv")
    assert csv_path.read_text().splitlines()[0] == "path,label,group,split,sha256"
    reloaded = data.load_split_manifest(csv_path, leukemia_root)
    assert reloaded == split
    assert reloaded.digest() == split.digest()
    assert list(split.targets("test")) == [
        data.CLASS_NAMES.index(row.label) for row in split.select("test")
    ]


def test_prepare_split_reuses_the_csv(leukemia_root, tmp_path):
    first, scan = data.prepare_split(leukemia_root, tmp_path / "split.csv", seed=1)
    assert scan is not None
    second, rescanned = data.prepare_split(leukemia_root, tmp_path / "split.csv", seed=99)
    assert rescanned is None
    assert second == first


def test_prepare_split_uses_the_fractions_and_refuses_a_split_made_with_others(
    leukemia_root, tmp_path, caplog
):
    default, _ = data.prepare_split(leukemia_root, tmp_path / "a" / "split.csv")
    # A quarter for test, a quarter for validation: the shares move with the settings.
    wide, _ = data.prepare_split(
        leukemia_root, tmp_path / "b" / "split.csv", val_fraction=0.25, test_fraction=0.25
    )
    share = {
        name: {s: len(split.select(s)) / len(split.rows) for s in ("val", "test")}
        for name, split in (("default", default), ("wide", wide))
    }
    assert share["wide"]["test"] > share["default"]["test"] + 0.08, share
    assert share["wide"]["val"] > share["default"]["val"] + 0.08, share
    settings = json.loads((tmp_path / "b" / "split.json").read_text())
    assert (settings["val_fraction"], settings["test_fraction"]) == (0.25, 0.25)
    # Reusing b's split with other fractions would silently change every number after it.
    with pytest.raises(data.SplitError, match=r"split\.csv was made with val_fraction=0\.25"):
        data.prepare_split(leukemia_root, tmp_path / "b" / "split.csv", test_fraction=0.25)
    # Another seed keeps the saved split, and says so.
    with caplog.at_level(logging.WARNING, logger=data.logger.name):
        again, _ = data.prepare_split(
            leukemia_root,
            tmp_path / "b" / "split.csv",
            seed=5,
            val_fraction=0.25,
            test_fraction=0.25,
        )
    assert again == wide
    assert "seed=0 not 5" in caplog.text


def test_preset_split_fractions_reach_the_split():
    preset = get_preset("smoke", ["val_fraction=0.2", "test_fraction=0.2"])
    options = preset.split_options()
    assert (options["val_fraction"], options["test_fraction"]) == (0.2, 0.2)


def test_leaky_split_is_rejected(leukemia_root):
    split = data.split_dataset(data.scan_dataset(leukemia_root))
    rows = list(split.rows)
    victim = next(i for i, r in enumerate(rows) if r.path == "Pro/Pro-002.png")
    other = "train" if rows[victim].split != "train" else "test"
    rows[victim] = data.SplitRow(rows[victim].path, "Pro", rows[victim].group, other, "x")
    with pytest.raises(data.SplitError, match="group"):
        data.verify_split(data.SplitManifest(split.root, tuple(rows)))


def test_reloaded_split_detects_changed_and_missing_files(leukemia_copy, tmp_path):
    split = data.split_dataset(data.scan_dataset(leukemia_copy))
    csv_path = data.save_split_manifest(split, tmp_path / "split.csv")
    Image.new("RGB", (8, 8)).save(leukemia_copy / "Early" / "Early-007.png")
    with pytest.raises(data.SplitError, match=r"changed since.*Early-007\.png"):
        data.load_split_manifest(csv_path, leukemia_copy)
    (leukemia_copy / "Early" / "Early-007.png").unlink()
    with pytest.raises(data.SplitError, match=r"no longer exist.*Early-007\.png"):
        data.load_split_manifest(csv_path, leukemia_copy)


def test_split_needs_one_over_k_fractions(leukemia_root):
    scan = data.scan_dataset(leukemia_root)
    with pytest.raises(data.SplitError, match="test_fraction"):
        data.split_dataset(scan, test_fraction=0.3)


def test_split_subsamples_whole_groups(leukemia_root):
    scan = data.scan_dataset(leukemia_root)
    split = data.split_dataset(scan, max_per_class=10)
    totals = [sum(split.counts()[s][c] for s in data.SPLITS) for c in data.CLASS_NAMES]
    assert all(10 <= total <= 11 for total in totals), totals
    pro = {row.path for row in split.rows if row.label == "Pro"}
    assert ("Pro/Pro-001.png" in pro) == ("Pro/Pro-002.png" in pro)


@pytest.mark.data
def test_real_dataset_manifest_and_leak_free_split(real_data, tmp_path):
    scan = data.scan_dataset(real_data)
    assert scan.manifest is not None
    assert scan.manifest.ok, scan.manifest.describe()
    assert scan.counts() == {"Benign": 444, "Early": 865, "Pre": 843, "Pro": 704}
    assert len(scan.duplicates) == 38
    assert all(path.startswith("Pro/") for group in scan.duplicates for path in group)
    split = data.split_dataset(scan, seed=0)
    sizes = {s: len(split.select(s)) for s in data.SPLITS}
    assert abs(sizes["test"] - 286) <= 15
    assert abs(sizes["val"] - 286) <= 15
    for group in scan.duplicates:
        assert len({row.split for row in split.rows if row.path in group}) == 1
    data.verify_split(split)
    csv_path = data.save_split_manifest(split, tmp_path / "split.csv")
    assert data.load_split_manifest(csv_path, real_data) == split
