"""Saving is atomic; loading reads only checksummed files inside the folder, never the network."""

import errno
import hashlib
import json
import os
import pickle
import re
import socket
import stat

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, CascadeMLWarning, SerializationError, _files
from cascademl import _io_format as fmt
from cascademl import io as cio
from cascademl.abstention import ABSTAIN
from cascademl.calibration import TemperatureScaledStage
from cascademl.io import CONFIG_FILE, TENSORS_FILE, load_cascade, save_cascade
from cascademl.stages import SklearnStage
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


# --------------------------------------------------------------------------- cascade.json checks
# The checks load_cascade makes on cascade.json, called directly on small dicts: no fitting
# or files, so every rule of the format gets a fast case that fails if the rule is broken.

SHA = "0" * 64
NOT_A_NAME = (
    r"^W: S\.file '/a\.skops' is not the name of a file inside the folder \(a saved cascade's "
    r"files are plain names: no folders, absolute paths, '\.\.' or hidden names\); refusing to "
    r"read it$"
)
UNLISTED = (
    r"^W: S\.file 'h\.onnx' is not listed \(with its checksum\) under 'files'; refusing to read "
    r"it$"
)


def _timm_config(**arch):
    base = {"source": "timm", "name": "test_resnet", "num_classes": 2, "kwargs": {}}
    return {"architecture": {**base, **arch}, "classes": [0, 1]}


@pytest.mark.parametrize("config", [None, [], {}, {"architecture": "x"}, {"architecture": None}])
def test_torch_config_needs_an_architecture_object(config):
    with pytest.raises(SerializationError, match=r"^W: K must be an object with an 'architecture'"):
        fmt._check_torch_config(config, "K", "W")


def test_torch_config_of_a_plain_module_needs_nothing_more():
    assert fmt._check_torch_config({"architecture": {"source": "module"}}, "K", "W") is None


@pytest.mark.parametrize("source", [None, "hub", "Timm"])
def test_torch_config_source_is_timm_or_module(source):
    with pytest.raises(SerializationError, match=rf"^W: K\.architecture\.source .*{source!r}"):
        fmt._check_torch_config({"architecture": {"source": source}}, "K", "W")


def test_torch_config_name_message_says_why():
    with pytest.raises(SerializationError) as info:
        fmt._check_torch_config(_timm_config(name="../x"), "K", "W")
    assert str(info.value) == (
        "W: K.architecture.name '../x' is not a timm model name; loading builds timm models "
        "by name only (no 'hf-hub:' prefix, URL or path) and reads weights only from the folder"
    )


def test_a_valid_timm_config_passes():
    assert fmt._check_torch_config(_timm_config(kwargs={"drop_rate": 0.1}), "K", "W") is None
    one_class = _timm_config(num_classes=1)
    one_class["classes"] = ["only"]
    assert fmt._check_torch_config(one_class, "K", "W") is None
    no_kwargs = _timm_config()
    del no_kwargs["architecture"]["kwargs"]
    assert fmt._check_torch_config(no_kwargs, "K", "W") is None


@pytest.mark.parametrize(
    ("num_classes", "classes", "shown"),
    [(True, [0], "1"), (2.0, [0, 1], "2"), (3, [0, 1], "2"), (0, [], "0"), (2, "ab", "?")],
)
def test_torch_config_num_classes_is_the_class_count(num_classes, classes, shown):
    config = _timm_config(num_classes=num_classes)
    config["classes"] = classes
    count = re.escape(shown)
    pattern = rf"^W: K\.architecture\.num_classes must be the number of classes \({count}\), got"
    with pytest.raises(SerializationError, match=pattern):
        fmt._check_torch_config(config, "K", "W")


def test_torch_config_kwargs_must_be_an_object():
    with pytest.raises(SerializationError, match=r"^W: K\.architecture\.kwargs must be an object"):
        fmt._check_torch_config(_timm_config(kwargs=[1]), "K", "W")


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"a": [1, {"file": 2}]}, r"K\.architecture\.kwargs\.a\[1\]\.file"),
        ({"a": [0, "https://x"]}, r"K\.architecture\.kwargs\.a\[1\]"),
        ({"a": {"b": "timm:x"}}, r"K\.architecture\.kwargs\.a\.b"),
        ({"Cache_Dir": "x"}, r"K\.architecture\.kwargs\.Cache_Dir"),
    ],
)
def test_forbidden_kwargs_are_found_at_any_depth_and_named(kwargs, path):
    why = (
        "would make loading read weights from elsewhere or download them; a saved stage's "
        "weights come only from tensors.safetensors"
    )
    with pytest.raises(SerializationError, match=rf"^W: {path} = .* {re.escape(why)}$"):
        fmt._check_torch_config(_timm_config(kwargs=kwargs), "K", "W")


def test_walk_visits_every_value_with_its_path():
    assert list(fmt._walk({"a": [1, {"b": None}], "c": 2}, "k")) == [
        ("k", {"a": [1, {"b": None}], "c": 2}),
        ("k.a", [1, {"b": None}]),
        ("k.a[0]", 1),
        ("k.a[1]", {"b": None}),
        ("k.a[1].b", None),
        ("k.c", 2),
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"kind": "onnx", "file": "g.onnx", "output": "logits"}, None),
        ({"kind": "onnx", "file": "g.onnx", "output": "probabilities"}, None),
        ({"kind": "onnx", "file": "h.onnx", "output": "logits"}, UNLISTED),
        ({"kind": "onnx", "file": "../g.onnx", "output": "logits"}, r"^W: S\.file '\.\./g\.onnx'"),
        ({"kind": "onnx", "file": "g.onnx"}, r"^W: S\.output must be 'logits' or .*, got None$"),
        ({"kind": "onnx", "file": "g.onnx", "output": "x"}, r"^W: S\.output .* got 'x'$"),
    ],
)
def test_onnx_specs_list_their_graph_and_output(spec, expected):
    """An ONNX stage's graph must be listed with a checksum; its output kind must be known."""
    files = {"g.onnx": SHA}
    if expected is None:
        assert fmt._check_spec(spec, "S", "W", files, depth=0) is None
    else:
        with pytest.raises(SerializationError, match=expected):
            fmt._check_spec(spec, "S", "W", files, depth=0)


@pytest.mark.parametrize(
    ("classes", "dtype"),
    [
        (np.array([3, 1, 2], dtype=np.int64), "<i8"),
        (np.array([3, 1], dtype=np.uint8), "|u1"),
        (np.array([True, False]), "|b1"),
        (np.array([0.5, 2.0], dtype=np.float32), "<f4"),
        (np.array(["b", "a"]), "<U1"),
    ],
)
def test_classes_round_trip_with_their_dtype(classes, dtype):
    encoded = fmt._encode_classes(classes)
    assert encoded == {"dtype": dtype, "values": classes.tolist()}
    decoded = fmt._decode_classes(json.loads(json.dumps(encoded)), "W")
    assert decoded.dtype == classes.dtype
    np.testing.assert_array_equal(decoded, classes)


def test_object_classes_round_trip_as_objects():
    classes = np.array(["a", 1, None], dtype=object)
    decoded = fmt._decode_classes(fmt._encode_classes(classes), "W")
    assert decoded.dtype == object
    assert decoded.tolist() == ["a", 1, None]
    pairs = fmt._decode_classes({"dtype": "|O", "values": [[1, 2], [3, 4]]}, "W")
    assert pairs.shape == (2,)  # one label per entry, even when a label is a list
    assert pairs[1] == [3, 4]


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (np.array([1 + 2j]), r"^class labels of dtype complex128 cannot be saved as JSON$"),
        (np.array([float("nan")]), r"^class labels \[nan\]\.\.\. are not JSON-able: "),
        (
            np.array([0, 1, 2, 3, 4, float("nan")]),  # the message shows the first five
            r"^class labels \[0\.0, 1\.0, 2\.0, 3\.0, 4\.0\]\.\.\. are not JSON-able: ",
        ),
        (np.array([{1, 2}], dtype=object), r"^class labels \[\{1, 2\}\]\.\.\. are not JSON-able"),
    ],
)
def test_classes_that_json_cannot_hold_are_refused(classes, expected):
    with pytest.raises(SerializationError, match=expected):
        fmt._encode_classes(classes)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"dtype": "<c16", "values": [1]}, r"^W: invalid .*\(W: class dtype complex128 is not"),
        ({"dtype": "nope", "values": [1]}, r"^W: invalid classes entry .*'nope'"),
        ({"values": [1]}, r"^W: invalid classes entry .*\('dtype'\)"),
        ({"dtype": "<i8", "values": ["x"]}, r"^W: invalid classes entry"),
        ({"dtype": "|O"}, r"^W: invalid classes entry .*\('values'\)"),
    ],
)
def test_bad_classes_entries_are_refused(spec, expected):
    with pytest.raises(SerializationError, match=expected):
        fmt._decode_classes(spec, "W")


@pytest.mark.parametrize(
    ("label", "encoded"),
    [
        (None, None),
        (ABSTAIN, {"sentinel": "ABSTAIN"}),
        (-1, {"dtype": "<i8", "values": [-1]}),
        ("unsure", {"dtype": "<U6", "values": ["unsure"]}),
    ],
)
def test_abstain_labels_round_trip(label, encoded):
    assert fmt._encode_abstain_label(label) == encoded
    decoded = fmt._decode_abstain_label(encoded, "W")
    if label is None or label is ABSTAIN:
        assert decoded is label
    else:
        assert decoded == label
        assert type(decoded) is type(np.asarray([label])[0])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ABSTAIN", r"^W: params\.abstain_label must be null or an object, got 'ABSTAIN'$"),
        ({"sentinel": "other"}, r"^W: params\.abstain_label: invalid classes entry"),
        ({"dtype": "<i8", "values": [1, 2]}, r"^W: params\.abstain_label must hold one label"),
        ({"dtype": "<i8", "values": []}, r"^W: params\.abstain_label must hold one label"),
    ],
)
def test_bad_abstain_labels_are_refused(spec, expected):
    with pytest.raises(SerializationError, match=expected):
        fmt._decode_abstain_label(spec, "W")


def test_weights_are_saved_as_plain_floats():
    assert fmt._json_weights(np.float32(0.5)) == 0.5
    assert type(fmt._json_weights(2)) is float
    weights = fmt._json_weights((1, np.float64(0.25)))
    assert weights == [1.0, 0.25]
    assert all(type(w) is float for w in weights)


def test_policies_decode_one_or_per_stage_thresholds():
    one = fmt._decode_policy({"measure": "margin", "thresholds": 0.75}, "W")
    assert (one.measure, one.thresholds) == ("margin", 0.75)
    per_stage = fmt._decode_policy({"measure": "entropy", "thresholds": [0.5, "Infinity"]}, "W")
    assert per_stage.measure == "entropy"
    assert per_stage.thresholds == (0.5, float("inf"))
    with pytest.raises(SerializationError, match=r"^W: thresholds must be a number, got 'hi'$"):
        fmt._decode_policy({"measure": "max", "thresholds": [0.5, "hi"]}, "W")
    with pytest.raises(SerializationError, match=r"^W: thresholds must be a number, got 'hi'$"):
        fmt._decode_policy({"measure": "max", "thresholds": "hi"}, "W")


def _config_bytes(**changes):
    config = {"format": fmt.FORMAT, "format_version": 2, **changes}
    return json.dumps(config).encode()


@pytest.mark.parametrize("version", [1, 2])
def test_both_format_versions_parse(version):
    config = fmt._parse_config(_config_bytes(format_version=version), "W")
    assert config == {"format": fmt.FORMAT, "format_version": version}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{", r"^W: not valid JSON \("),
        (b"\xff", r"^W: not valid JSON \("),
        (b"[1]", r"^W: not a saved cascade \(format 'list', expected 'cascademl\.Cascade"),
        (b'{"format": "x"}', r"^W: not a saved cascade \(format 'x', expected"),
        (_config_bytes(format_version=3), r"^W: format_version 3 is not supported; .* reads "),
        (_config_bytes(format_version=None), r"format_version 1, 2$"),
        (_config_bytes(format_version=True), r"^W: format_version True is not supported"),
        (_config_bytes(format_version="2"), r"^W: format_version '2' is not supported"),
    ],
)
def test_configs_that_are_not_a_saved_cascade_are_refused(data, expected):
    with pytest.raises(SerializationError, match=expected):
        fmt._parse_config(data, "W")


@pytest.mark.parametrize("name", ["stage_0.skops", "a", "A-1+b.pkl", "_x", "x" * 255])
def test_plain_file_names_are_accepted(name):
    assert fmt._check_name(name, "K", "W") == name


@pytest.mark.parametrize(
    "name", [None, 3, "", ".hidden", "a/b", "../a", "/etc/x", "a\\b", "x" * 256, "cascade.json"]
)
def test_other_file_names_are_refused(name):
    with pytest.raises(SerializationError, match=rf"^W: K {re.escape(repr(name))} is not the name"):
        fmt._check_name(name, "K", "W")


def test_files_map_names_to_sha256_digests():
    files = {"a.skops": SHA, "b.pkl": "f" * 64}
    assert fmt._check_files(files, "W") == files
    for bad, expected in [
        ([], r"^W: 'files' must map file names to SHA-256 digests, got \[\]$"),
        ({"a": "F" * 64}, r"^W: files\['a'\] must be a SHA-256 hex digest, got 'F"),
        ({"a": "0" * 63}, r"^W: files\['a'\] must be a SHA-256"),
        ({"a": 5}, r"^W: files\['a'\] must be a SHA-256 hex digest, got 5$"),
        ({"../a": SHA}, r"^W: a 'files' key '\.\./a' is not the name"),
    ]:
        with pytest.raises(SerializationError, match=expected):
            fmt._check_files(bad, "W")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"kind": "sklearn", "file": "a.skops", "serializer": "skops"}, None),
        ({"kind": "sklearn", "file": "a.skops"}, None),  # format 1: pickle, the default
        ({"kind": "temperature", "stage": {"kind": "sklearn", "file": "a.skops"}}, None),
        ({"kind": "torch", "config": {"architecture": {"source": "module"}}}, None),
        ("x", r"^W: S must be an object, got 'x'$"),
        ({"kind": "sklearn", "file": "h.onnx"}, UNLISTED),
        ({"kind": "sklearn", "file": "/a.skops"}, NOT_A_NAME),
        (
            {"kind": "sklearn", "file": "a.skops", "serializer": "json"},
            r"^W: S\.serializer must be 'skops' or 'pickle', got 'json'$",
        ),
        ({"kind": "temperature", "stage": 1}, r"^W: S\.stage must be an object, got 1$"),
        ({"kind": "torch", "config": None}, r"^W: S\.config must be an object with"),
        ({"stage": {}}, r"^W: S\.kind must be 'sklearn', 'torch', 'onnx' or 'temperature', got No"),
    ],
)
def test_stage_specs(spec, expected):
    files = {"a.skops": SHA}
    if expected is None:
        assert fmt._check_spec(spec, "S", "W", files, depth=0) is None
    else:
        with pytest.raises(SerializationError, match=expected):
            fmt._check_spec(spec, "S", "W", files, depth=0)


@pytest.mark.parametrize(("depth", "fails"), [(0, False), (1, False), (2, True)])
def test_temperature_nesting_stops_at_the_limit(monkeypatch, depth, fails):
    """With the limit at 3 wrappers, 3 nested temperature stages load and 4 do not."""
    monkeypatch.setattr(fmt, "_MAX_WRAPPERS", 3)
    spec = {"kind": "sklearn", "file": "a.skops"}
    for _ in range(2 + depth):
        spec = {"kind": "temperature", "stage": spec}
    if fails:
        with pytest.raises(SerializationError, match=r"^W: S(\.stage){3} nests more than 3 temp"):
            fmt._check_spec(spec, "S", "W", {"a.skops": SHA}, depth=0)
    else:
        assert fmt._check_spec(spec, "S", "W", {"a.skops": SHA}, depth=0) is None


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, (None, None)),
        ({"n_features_in": 1}, (1, None)),
        ({"n_features_in": 2**31 - 1}, (2**31 - 1, None)),
        ({"n_features_in": 2, "feature_names_in": ["a", "b"]}, (2, ["a", "b"])),
    ],
)
def test_feature_counts_and_names_are_read(config, expected):
    assert fmt._check_features(config, "W") == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"n_features_in": 2**31}, r"^W: n_features_in must be null or an integer in \[1, 2147"),
        ({"n_features_in": 1.0}, r"^W: n_features_in must be null .* got 1\.0$"),
        ({"n_features_in": False}, r"got False$"),
        ({"feature_names_in": ["a"]}, r"^W: feature_names_in must be null or a list of n_featu"),
        ({"n_features_in": 2, "feature_names_in": "ab"}, r"\(2\) strings, got 'ab'$"),
        ({"n_features_in": 2, "feature_names_in": ["a", 1]}, r"got \['a', 1\]$"),
        ({"n_features_in": 2, "feature_names_in": ["a"]}, r"got \['a'\]$"),
    ],
)
def test_bad_feature_counts_and_names_are_refused(config, expected):
    with pytest.raises(SerializationError, match=expected):
        fmt._check_features(config, "W")


def test_stage_feature_counts_must_match_the_cascade(iris):
    X, y = iris
    nb, lr = GaussianNB().fit(X, y), LogisticRegression(max_iter=500).fit(X, y)
    stages = [("nb", SklearnStage(nb)), ("t", TemperatureScaledStage(SklearnStage(lr), 2.0))]
    assert fmt._check_stage_features(stages, 4, "W") is None
    assert fmt._check_stage_features(stages, None, "W") is None
    with pytest.raises(SerializationError, match=r"^W: n_features_in is 3 but stage 'nb' was fit"):
        fmt._check_stage_features(stages, 3, "W")
    with pytest.raises(SerializationError, match=r"^W: n_features_in is 3 but stage 't' was fitte"):
        fmt._check_stage_features(stages[1:], 3, "W")


def test_stage_lists_are_checked_entry_by_entry():
    good = {"spec": {"kind": "sklearn", "file": "a.skops"}}
    assert fmt._check_stages([good, good], "W", {"a.skops": SHA}) == [good, good]
    with pytest.raises(SerializationError, match=r"^W: 'stages' must be a non-empty list, got \{"):
        fmt._check_stages({}, "W", {})
    with pytest.raises(SerializationError, match=r"^W: stages\[1\] must be an object, got 'x'$"):
        fmt._check_stages([good, "x"], "W", {"a.skops": SHA})
    with pytest.raises(SerializationError, match=r"^W: stages\[1\]\.spec\.file 'b' is not listed"):
        fmt._check_stages([good, {"spec": {"kind": "sklearn", "file": "b"}}], "W", {"a.skops": SHA})


def test_stage_lists_start_counting_temperature_wrappers_at_zero(monkeypatch):
    monkeypatch.setattr(fmt, "_MAX_WRAPPERS", 1)
    wrapped = {"kind": "temperature", "stage": {"kind": "sklearn", "file": "a.skops"}}
    assert fmt._check_stages([{"spec": wrapped}], "W", {"a.skops": SHA}) == [{"spec": wrapped}]
    twice = {"kind": "temperature", "stage": wrapped}
    with pytest.raises(SerializationError, match=r"^W: stages\[0\]\.spec\.stage nests more than 1"):
        fmt._check_stages([{"spec": twice}], "W", {"a.skops": SHA})
