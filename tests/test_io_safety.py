"""Saving is atomic; loading reads only checksummed files inside the folder, never the network."""

import errno
import hashlib
import json
import os
import pickle
import socket
import stat

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, CascadeMLWarning, SerializationError, _files
from cascademl import io as cio
from cascademl.io import CONFIG_FILE, TENSORS_FILE, load_cascade, save_cascade
from cascademl.torch_stage import TorchStage


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _cascade(X, y, c=1.0):
    return CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(C=c, max_iter=500))]
    ).fit(X, y)


def _unsavable(X, y):
    """A cascade whose second stage holds a generator: neither pickle nor skops stores it."""
    cascade = _cascade(X, y)
    cascade.stages_[1].estimator_.hook = (i for i in range(3))
    return cascade


def _files_of(folder):
    return sorted(p.name for p in folder.iterdir())


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


# --------------------------------------------------------------------------- atomic saves
@pytest.mark.parametrize("sklearn_format", ["skops", "pickle"])
def test_a_failing_stage_leaves_the_old_folder_loadable(tmp_path, iris, sklearn_format):
    X, y = iris
    folder = tmp_path / "model"
    old = _cascade(X, y)
    save_cascade(old, folder, sklearn_format=sklearn_format)
    before = _files_of(folder)
    with pytest.raises(SerializationError, match="'lr'"):
        save_cascade(_unsavable(X, y), folder, overwrite=True, sklearn_format=sklearn_format)
    assert _files_of(folder) == before
    assert _siblings(folder) == []  # no temporary folder left behind
    loaded = load_cascade(folder, allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict_proba(X), old.predict_proba(X))


def test_a_full_disk_mid_save_leaves_the_old_folder_loadable(tmp_path, iris, monkeypatch):
    X, y = iris
    folder = tmp_path / "model"
    old = _cascade(X, y)
    save_cascade(old, folder)
    real = _files.write_new_file
    calls = []

    def full_disk(path, data):
        calls.append(path.name)
        if len(calls) == 2:  # the first file made it, the second does not fit
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(_files, "write_new_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_cascade(_cascade(X, y, c=0.01), folder, overwrite=True)
    assert len(calls) == 2
    assert _siblings(folder) == []
    monkeypatch.undo()
    loaded = load_cascade(folder)
    np.testing.assert_array_equal(loaded.predict_proba(X), old.predict_proba(X))


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, iris, monkeypatch):
    X, y = iris
    folder = tmp_path / "model"
    old = _cascade(X, y)
    save_cascade(old, folder)
    real_rename = type(folder).rename

    def rename(self, target):
        if self.name.startswith(".model.new-"):
            raise OSError(errno.EIO, "I/O error")
        return real_rename(self, target)

    monkeypatch.setattr(type(folder), "rename", rename)
    with pytest.raises(OSError, match="I/O error"):
        save_cascade(_cascade(X, y, c=0.01), folder, overwrite=True)
    monkeypatch.undo()
    assert _siblings(folder) == []
    np.testing.assert_array_equal(load_cascade(folder).predict_proba(X), old.predict_proba(X))


def test_overwrite_replaces_the_model_and_keeps_other_files(tmp_path, iris):
    X, y = iris
    folder = tmp_path / "model"
    save_cascade(_cascade(X, y), folder, sklearn_format="pickle")
    (folder / "notes.txt").write_text("mine")
    (folder / "plots").mkdir()
    (folder / "plots" / "a.png").write_bytes(b"png")
    new = _cascade(X, y, c=0.01)
    save_cascade(new, folder, overwrite=True)
    names = [CONFIG_FILE, "notes.txt", "plots", "stage_0.skops", "stage_1.skops"]
    assert _files_of(folder) == names
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "plots" / "a.png").read_bytes() == b"png"
    assert _siblings(folder) == []
    np.testing.assert_array_equal(load_cascade(folder).predict_proba(X), new.predict_proba(X))


def test_load_during_a_replacing_save_gets_the_old_or_the_new_cascade(tmp_path, iris, monkeypatch):
    X, y = iris
    folder = tmp_path / "model"
    old, new = _cascade(X, y), _cascade(X, y, c=0.01)
    save_cascade(old, folder)
    real_parse = cio._parse_config
    swaps = []

    def parse_then_swap(data, where):
        config = real_parse(data, where)
        if not swaps:  # the reader holds the old config; a save replaces the folder now
            swaps.append(1)
            save_cascade(new, folder, overwrite=True)
        return config

    monkeypatch.setattr(cio, "_parse_config", parse_then_swap)
    loaded = load_cascade(folder)
    assert swaps == [1]
    got = loaded.predict_proba(X)
    assert np.array_equal(got, old.predict_proba(X)) or np.array_equal(got, new.predict_proba(X))


def test_load_recovers_the_old_folder_left_aside_by_an_interrupted_save(tmp_path, iris):
    X, y = iris
    folder = tmp_path / "model"
    old = _cascade(X, y)
    save_cascade(old, folder)
    folder.rename(tmp_path / ".model.old-123-abcd1234")  # killed between the two renames
    with pytest.warns(CascadeMLWarning, match="interrupted save_cascade"):
        loaded = load_cascade(folder)
    np.testing.assert_array_equal(loaded.predict_proba(X), old.predict_proba(X))


def test_temporary_names_are_per_process_and_keep_the_suffix(tmp_path):
    a = _files.temporary_sibling(tmp_path / "metrics.json")
    b = _files.temporary_sibling(tmp_path / "metrics.json")
    assert a != b
    assert a.parent == tmp_path
    assert a.name.startswith(".metrics.json.tmp-")
    assert str(os.getpid()) in a.name
    assert a.suffix == ".json"


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "report.md"
    _files.write_text(target, "old")

    def write_half():
        with _files.atomic_open(target) as handle:
            handle.write("half of the new")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_half()
    assert target.read_text() == "old"
    assert _files_of(tmp_path) == ["report.md"]
    _files.write_text(target, "new")
    assert target.read_text() == "new"


# --------------------------------------------------------------------------- permissions
def _torch_cascade():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 2))
    stage = TorchStage(module, classes=[0, 1], device="cpu")
    images = torch.rand(4, 3, 2, 2)
    return CascadeClassifier([("net", stage)]).fit(images, [0, 1, 0, 1]), images


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_umask_permissions(tmp_path, iris, umask):
    X, y = iris
    torch_cascade, _ = _torch_cascade()
    previous = os.umask(umask)
    try:
        save_cascade(torch_cascade, tmp_path / "torch")
        save_cascade(_cascade(X, y), tmp_path / "sk", sklearn_format="pickle")
        _files.write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(previous)
    want = 0o666 & ~umask
    for path in [*(tmp_path / "torch").iterdir(), *(tmp_path / "sk").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == want, path.name
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "torch").stat().st_mode) == 0o777 & ~umask
    assert (tmp_path / "torch" / TENSORS_FILE).is_file()


# --------------------------------------------------------------------------- tampered folders
def _rewrite(folder, change):
    path = folder / CONFIG_FILE
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _sentinel_pickle(path, sentinel):
    """A pickle whose loading creates ``sentinel`` (stands in for an attacker's code)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    path.write_bytes(pickle.dumps(Payload()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("value", "listed"),
    [
        ("../outside.pkl", True),
        ("../outside.pkl", False),
        (None, True),  # the absolute path of outside.pkl
        ("sub/../../outside.pkl", True),
    ],
)
def test_a_stage_file_outside_the_folder_is_never_unpickled(tmp_path, iris, value, listed):
    X, y = iris
    folder = tmp_path / "model"
    save_cascade(_cascade(X, y), folder, sklearn_format="pickle")
    sentinel = tmp_path / "code-ran"
    digest = _sentinel_pickle(tmp_path / "outside.pkl", sentinel)
    value = str(tmp_path / "outside.pkl") if value is None else value

    def change(config):
        config["stages"][0]["spec"]["file"] = value
        if listed:
            config["files"][value] = digest

    _rewrite(folder, change)
    with pytest.raises(SerializationError) as info:
        load_cascade(folder, allow_pickle=True)
    assert value in str(info.value)
    assert "files" in str(info.value) if listed else "stages[0].spec.file" in str(info.value)
    assert not sentinel.exists()


def test_an_unlisted_stage_file_inside_the_folder_is_not_read(tmp_path, iris):
    X, y = iris
    folder = tmp_path / "model"
    save_cascade(_cascade(X, y), folder, sklearn_format="pickle")
    sentinel = tmp_path / "code-ran"
    _sentinel_pickle(folder / "extra.pkl", sentinel)
    _rewrite(folder, lambda c: c["stages"][0]["spec"].update(file="extra.pkl"))
    with pytest.raises(SerializationError, match=r"stages\[0\]\.spec\.file 'extra.pkl'") as info:
        load_cascade(folder, allow_pickle=True)
    assert "not listed" in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", ".hidden", "a/b", "..", ""])
def test_files_keys_outside_the_folder_are_refused_before_reading(tmp_path, iris, key, monkeypatch):
    X, y = iris
    folder = tmp_path / "model"
    save_cascade(_cascade(X, y), folder)
    _rewrite(folder, lambda c: c["files"].update({key: "0" * 64}))
    read = []
    real = cio._FolderReader.read

    def spy(self, name, **kwargs):
        read.append(name)
        return real(self, name, **kwargs)

    monkeypatch.setattr(cio._FolderReader, "read", spy)
    with pytest.raises(SerializationError, match="a 'files' key") as info:
        load_cascade(folder)
    assert repr(key) in str(info.value)
    assert read == [CONFIG_FILE]  # only the config was read


@pytest.mark.skipif(os.name != "posix", reason="symbolic links and FIFOs")
@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_listed_names_that_are_not_regular_files_are_refused(tmp_path, iris, kind):
    X, y = iris
    folder = tmp_path / "model"
    save_cascade(_cascade(X, y), folder)
    stage_file = folder / "stage_0.skops"
    data = stage_file.read_bytes()
    stage_file.unlink()
    if kind == "symlink":
        (tmp_path / "elsewhere.skops").write_bytes(data)
        stage_file.symlink_to(tmp_path / "elsewhere.skops")
    elif kind == "fifo":
        os.mkfifo(stage_file)  # opening it for reading would block a naive loader
    else:
        stage_file.mkdir()
    with pytest.raises(SerializationError, match="regular files only") as info:
        load_cascade(folder)
    assert "stage_0.skops" in str(info.value)


def _timm_cascade():
    stage = TorchStage.from_timm(
        "test_resnet", num_classes=2, pretrained=False, device="cpu", input_size=(3, 32, 32)
    )
    images = torch.rand(2, 3, 32, 32)
    return CascadeClassifier([("net", stage)]).fit(images, [0, 1]), images


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("name", "hf-hub:timm/resnet18.a1_in1k", "not a timm model name"),
        ("name", "https://example.com/model", "not a timm model name"),
        ("name", "no_such_model_xyz", "not a model of the installed timm"),
        ("name", ["resnet18"], "not a timm model name"),
        ("kwargs", {"checkpoint_path": "/etc/weights.pth"}, "checkpoint_path"),
        ("kwargs", {"pretrained_cfg_overlay": {"file": "w.pth"}}, "pretrained_cfg_overlay"),
        ("kwargs", {"pretrained": True}, "pretrained"),
        ("kwargs", {"drop_rate": "hf-hub:timm/x"}, "drop_rate"),
        ("num_classes", 10**12, "num_classes"),
    ],
)
def test_a_torch_stage_config_cannot_reach_other_files_or_the_network(
    tmp_path, where, value, expected, no_network
):
    cascade, _ = _timm_cascade()
    folder = tmp_path / "model"
    save_cascade(cascade, folder)

    def change(config):
        arch = config["stages"][0]["spec"]["config"]["architecture"]
        if where == "kwargs":
            arch["kwargs"].update(value)
        else:
            arch[where] = value

    _rewrite(folder, change)
    with pytest.raises(SerializationError, match=expected) as info:
        load_cascade(folder)
    assert "stages[0].spec.config.architecture" in str(info.value)
    assert CONFIG_FILE in str(info.value)


def test_timm_stages_load_offline(tmp_path, no_network):
    cascade, images = _timm_cascade()
    save_cascade(cascade, tmp_path / "model")
    loaded = load_cascade(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(images), cascade.predict_proba(images))


def test_integer_weights_are_not_cast_silently(tmp_path):
    import safetensors.torch

    cascade, _ = _torch_cascade()
    folder = tmp_path / "model"
    save_cascade(cascade, folder)
    tensors = safetensors.torch.load((folder / TENSORS_FILE).read_bytes())
    key = "stage_0.1.weight"
    tensors[key] = torch.ones_like(tensors[key], dtype=torch.int64)
    data = safetensors.torch.save(tensors)
    (folder / TENSORS_FILE).write_bytes(data)
    _rewrite(folder, lambda c: c["files"].update({TENSORS_FILE: hashlib.sha256(data).hexdigest()}))
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(SerializationError, match=r"torch\.int64") as info:
        load_cascade(folder, modules={"net": module})
    assert repr(key) in str(info.value)
    assert TENSORS_FILE in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-3, "n_features_in"),
        (0, "n_features_in"),
        (10**15, "n_features_in"),
        (True, "n_features_in"),
        ("4", "n_features_in"),
        (5, "fitted on 4 features"),
    ],
)
def test_bad_n_features_in(tmp_path, iris, value, expected):
    X, y = iris
    save_cascade(_cascade(X, y), tmp_path)
    _rewrite(tmp_path, lambda c: c.update(n_features_in=value))
    with pytest.raises(SerializationError, match=expected) as info:
        load_cascade(tmp_path)
    assert repr(value) in str(info.value) or str(value) in str(info.value)
    assert CONFIG_FILE in str(info.value)


def test_deeply_nested_config(tmp_path, iris):
    X, y = iris
    save_cascade(_cascade(X, y), tmp_path)
    text = (tmp_path / CONFIG_FILE).read_text()
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / CONFIG_FILE).write_text(text.replace('"params":', f'"deep": {deep}, "params":'))
    with pytest.raises(SerializationError, match="nested too deeply") as info:
        load_cascade(tmp_path)
    assert CONFIG_FILE in str(info.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.update(stages="x"), "'stages' must be a non-empty list"),
        (lambda c: c.update(stages=[]), "'stages' must be a non-empty list"),
        (lambda c: c.update(files=[]), "'files' must map"),
        (lambda c: c["files"].update({"stage_0.skops": "abc"}), "SHA-256"),
        (lambda c: c["stages"][0].update(spec=[]), r"stages\[0\]\.spec must be an object"),
        (lambda c: c["stages"][0]["spec"].update(kind="exec"), "'exec'"),
        (lambda c: c["stages"][0]["spec"].update(serializer="marshal"), "'marshal'"),
        (lambda c: c.update(format_version=True), "format_version True"),
    ],
)
def test_malformed_configs_name_the_key(tmp_path, iris, change, expected):
    X, y = iris
    save_cascade(_cascade(X, y), tmp_path)
    _rewrite(tmp_path, change)
    with pytest.raises(SerializationError, match=expected):
        load_cascade(tmp_path)


def test_nested_temperature_stages_are_bounded(tmp_path, iris):
    X, y = iris
    save_cascade(_cascade(X, y), tmp_path)

    def change(config):
        spec = config["stages"][0]["spec"]
        for _ in range(50):
            spec = {"kind": "temperature", "temperature": 1.0, "stage": spec}
        config["stages"][0]["spec"] = spec

    _rewrite(tmp_path, change)
    with pytest.raises(SerializationError, match="nests more than"):
        load_cascade(tmp_path)
