import json
import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from cascademl import CascadeClassifier, ConfidencePolicy, NotFittedError, SerializationError
from cascademl.calibration import TemperatureScaledStage, with_temperatures
from cascademl.io import CONFIG_FILE, TENSORS_FILE, load_cascade, save_cascade
from cascademl.torch_stage import TorchStage
from strategies import TableStage

TREE = "sklearn.tree._tree.Tree"


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X, y


def _sklearn_cascade(X, labels, **kwargs):
    return CascadeClassifier(
        [
            ("nb", GaussianNB()),
            ("tree", DecisionTreeClassifier(max_depth=3, random_state=0)),
            ("lr", LogisticRegression(max_iter=500)),
        ],
        policy=ConfidencePolicy("margin", (0.8, math.inf)),
        escalation_weight=[0.3, 0.6, 1.0],
        batch_size=17,
        reject_threshold=0.7,
        **kwargs,
    ).fit(X, labels)


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["setosa", "versicolor", "virginica"]),
        np.array([10, 20, 30], dtype=np.int32),
        np.array([-1, 0, 1], dtype=np.int64),
        np.array([0.5, 1.5, 2.5]).astype(int),
    ],
)
def test_sklearn_round_trip_is_identical(tmp_path, iris, labels):
    X, y = iris
    cascade = _sklearn_cascade(X, labels[y])
    save_cascade(cascade, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        CONFIG_FILE,
        "stage_0.skops",
        "stage_1.skops",
        "stage_2.skops",
    ]
    loaded = load_cascade(tmp_path / "saved", trusted=[TREE])
    before, after = cascade.route(X), loaded.route(X)
    np.testing.assert_array_equal(after.labels, before.labels)
    assert after.labels.dtype == before.labels.dtype
    np.testing.assert_array_equal(after.proba, before.proba)
    np.testing.assert_array_equal(after.exit_stage, before.exit_stage)
    assert loaded.classes_.dtype == cascade.classes_.dtype
    assert loaded.policy_ == cascade.policy_
    assert loaded.escalation_weight == [0.3, 0.6, 1.0]
    assert loaded.batch_size == 17
    assert loaded.reject_threshold == 0.7
    assert loaded.n_features_in_ == 4
    assert list(loaded.named_stages_) == ["nb", "tree", "lr"]
    np.testing.assert_array_equal(
        loaded.predict_or_abstain(X).astype(str), cascade.predict_or_abstain(X).astype(str)
    )


def test_loading_pickled_stages_needs_allow_pickle(tmp_path, iris, monkeypatch):
    X, y = iris
    cascade = _sklearn_cascade(X, y)
    save_cascade(cascade, tmp_path, sklearn_format="pickle")
    assert (tmp_path / "stage_0.pkl").is_file()

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickled without allow_pickle")

    with monkeypatch.context() as patch:
        patch.setattr(pickle, "load", forbidden)
        patch.setattr(pickle, "loads", forbidden)
        with pytest.raises(SerializationError, match="allow_pickle=True") as info:
            load_cascade(tmp_path)
    assert "stage_0.pkl" in str(info.value)
    loaded = load_cascade(tmp_path, allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict_proba(X), cascade.predict_proba(X))


def test_untrusted_skops_types_are_named_with_the_way_to_trust_them(tmp_path, iris):
    X, y = iris
    save_cascade(_sklearn_cascade(X, y), tmp_path)
    with pytest.raises(SerializationError, match="trusted=") as info:
        load_cascade(tmp_path)
    assert TREE in str(info.value)
    assert "stage_1.skops" in str(info.value)
    assert "'tree'" in str(info.value)


def test_format_version_1_folders_still_load(tmp_path, iris):
    X, y = iris
    cascade = _sklearn_cascade(X, y)
    save_cascade(cascade, tmp_path, sklearn_format="pickle")
    config_path = tmp_path / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["format_version"] = 1
    for entry in config["stages"]:
        del entry["spec"]["serializer"]  # version 1 had no serializer: always pickle
    config_path.write_text(json.dumps(config))
    loaded = load_cascade(tmp_path, allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict_proba(X), cascade.predict_proba(X))


def test_temperature_stages_round_trip(tmp_path, iris):
    X, y = iris
    calibrated = with_temperatures(_sklearn_cascade(X, y), [2.0, 0.5, 1.25])
    save_cascade(calibrated, tmp_path)
    loaded = load_cascade(tmp_path, trusted=[TREE])
    assert [s.temperature for s in loaded.stages_] == [2.0, 0.5, 1.25]
    assert all(isinstance(s, TemperatureScaledStage) for s in loaded.stages_)
    np.testing.assert_array_equal(loaded.predict_proba(X), calibrated.predict_proba(X))


def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))


def test_torch_stages_round_trip_without_unpickling(tmp_path, monkeypatch):
    images = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    stages = [
        (
            name,
            TorchStage(_net(i), classes=["a", "b", "c"], device="cpu", cost_per_sample=i + 1.0),
        )
        for i, name in enumerate(["small", "big"])
    ]
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy("max_proba", 0.5)).fit(
        images, np.array(["a", "b", "c"] * 6 + ["a", "b"])
    )
    calibrated = with_temperatures(cascade, [1.5, 1.0])
    save_cascade(calibrated, tmp_path)
    assert (tmp_path / TENSORS_FILE).is_file()
    assert not list(tmp_path.glob("*.pkl"))

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    modules = {"small": _net(100), "big": _net(200)}  # fresh weights, overwritten on load
    loaded = load_cascade(tmp_path, modules=modules, device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(images), calibrated.predict_proba(images))
    np.testing.assert_array_equal(loaded.predict(images), calibrated.predict(images))
    assert loaded.stages_[1].stage.cost_per_sample == 2.0
    with pytest.raises(SerializationError, match="module="):
        load_cascade(tmp_path)


def test_corrupt_and_mismatched_files(tmp_path, iris):
    X, y = iris
    save_cascade(_sklearn_cascade(X, y), tmp_path, sklearn_format="pickle")
    config_path = tmp_path / CONFIG_FILE
    original = config_path.read_text()

    config = json.loads(original)
    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(SerializationError, match="format_version 99") as info:
        load_cascade(tmp_path, allow_pickle=True)
    assert CONFIG_FILE in str(info.value)

    config_path.write_text(original[:50])
    with pytest.raises(SerializationError, match="not valid JSON"):
        load_cascade(tmp_path, allow_pickle=True)

    config = json.loads(original)
    del config["params"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(SerializationError, match="missing key 'params'"):
        load_cascade(tmp_path, allow_pickle=True)

    config = json.loads(original)
    config["format"] = "something else"
    config_path.write_text(json.dumps(config))
    with pytest.raises(SerializationError, match="not a saved cascade"):
        load_cascade(tmp_path, allow_pickle=True)

    config_path.write_text(original)
    pkl = tmp_path / "stage_1.pkl"
    pkl.write_bytes(pkl.read_bytes()[:-10])
    with pytest.raises(SerializationError, match="checksum") as info:
        load_cascade(tmp_path, allow_pickle=True)
    assert "stage_1.pkl" in str(info.value)

    pkl.unlink()
    with pytest.raises(SerializationError, match="missing"):
        load_cascade(tmp_path, allow_pickle=True)

    with pytest.raises(SerializationError, match="not found"):
        load_cascade(tmp_path / "nowhere")


def test_corrupt_tensors_file(tmp_path):
    images = torch.rand(6, 3, 4, 4)
    stage = TorchStage(_net(0), classes=[0, 1, 2], device="cpu")
    cascade = CascadeClassifier([("only", stage)]).fit(images, [0, 1, 2, 0, 1, 2])
    save_cascade(cascade, tmp_path)
    tensors = tmp_path / TENSORS_FILE
    tensors.write_bytes(b"garbage")
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["files"][TENSORS_FILE] = __import__("hashlib").sha256(b"garbage").hexdigest()
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SerializationError, match="unreadable safetensors") as info:
        load_cascade(tmp_path, modules={"only": _net(1)})
    assert TENSORS_FILE in str(info.value)


def test_save_errors(tmp_path, iris):
    X, y = iris
    with pytest.raises(NotFittedError):
        save_cascade(CascadeClassifier([("nb", GaussianNB())]), tmp_path)
    cascade = _sklearn_cascade(X, y)
    save_cascade(cascade, tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_cascade(cascade, tmp_path)
    save_cascade(cascade, tmp_path, overwrite=True)
    table = np.full((3, 2), 0.5)
    custom = CascadeClassifier([("t", TableStage(table, np.array([0, 1])))]).fit(
        np.arange(3).reshape(-1, 1), [0, 1, 0]
    )
    with pytest.raises(SerializationError, match="cannot be saved"):
        save_cascade(custom, tmp_path / "custom")


@pytest.mark.parametrize(
    ("labels", "abstain_label"),
    [
        (np.array(["setosa", "versicolor", "virginica"]), "unsure"),
        (np.array([10, 20, 30], dtype=np.int32), -5),
        (np.array([10, 20, 30], dtype=np.int32), None),
    ],
)
def test_abstain_label_survives_a_save(tmp_path, iris, labels, abstain_label):
    X, y = iris
    cascade = _sklearn_cascade(X, labels[y], abstain_label=abstain_label)
    save_cascade(cascade, tmp_path / "saved")
    loaded = load_cascade(tmp_path / "saved", trusted=[TREE])
    assert loaded.abstain_label == abstain_label
    before, after = cascade.predict_or_abstain(X), loaded.predict_or_abstain(X)
    np.testing.assert_array_equal(after, before)
    assert after.dtype == before.dtype
    if abstain_label is not None:
        assert (after == abstain_label).any()


def test_abstain_sentinel_survives_a_save(tmp_path, iris):
    from cascademl import ABSTAIN

    X, y = iris
    cascade = _sklearn_cascade(X, y, abstain_label=ABSTAIN)
    save_cascade(cascade, tmp_path / "saved")
    assert load_cascade(tmp_path / "saved", trusted=[TREE]).abstain_label is ABSTAIN


def test_measure_stage_cost_takes_numpy_integers():
    from cascademl import PolicyError
    from cascademl.cost import measure_stage_cost

    X, y = load_iris(return_X_y=True)
    stage = LogisticRegression(max_iter=500).fit(X, y)
    cost = measure_stage_cost(stage, X[:8], batch_size=np.int64(4), repeats=np.int64(2))
    assert cost.latency_per_sample > 0
    with pytest.raises(PolicyError, match="repeats"):
        measure_stage_cost(stage, X[:8], repeats=np.int64(0))


# Each combiner with another measure than the default: three saves cover both.
@pytest.mark.parametrize(
    ("combine", "measure"), [("vote", "entropy"), ("last", "margin"), ("mean", "max_proba")]
)
def test_every_combiner_and_measure_comes_back_and_routes_the_same(
    tmp_path, iris, combine, measure
):
    X, y = iris
    thresholds = {"max_proba": (0.99, 0.9), "margin": (0.98, 0.8), "entropy": (0.95, 0.8)}
    cascade = CascadeClassifier(
        [
            ("nb", GaussianNB()),
            ("nb_wide", GaussianNB(var_smoothing=0.5)),
            ("lr", LogisticRegression(max_iter=500)),
        ],
        policy=ConfidencePolicy(measure, thresholds[measure]),
        combine=combine,
        escalation_weight=[0.2, 0.7, 1.0],
    ).fit(X, y)
    save_cascade(cascade, tmp_path / "saved")
    restored = load_cascade(tmp_path / "saved")
    assert restored.combine == combine
    assert restored.routing_rule_ == cascade.routing_rule_
    before, after = cascade.route(X), restored.route(X)
    # Samples escalate: a lost threshold, measure or combiner changes their route or proba.
    assert np.count_nonzero(before.exit_stage > 0) >= 10
    np.testing.assert_array_equal(after.exit_stage, before.exit_stage)
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_allclose(after.proba, before.proba, rtol=0, atol=1e-12)


def test_cascade_json_holds_exactly_the_documented_keys(tmp_path, iris):
    """The saved configuration, written out by hand: a change to any entry is a format change."""
    import hashlib

    X, y = iris
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=500))],
        policy=ConfidencePolicy("entropy", (0.25, math.inf)),
        combine="mean",
        escalation_weight=(0.2, 1),
        batch_size=9,
        reject_threshold=0.4,
        abstain_label=-7,
    ).fit(X, np.array([3, 5, 9])[y])
    folder = save_cascade(cascade, tmp_path / "m", sklearn_format="pickle")
    assert folder == tmp_path / "m"
    text = (folder / CONFIG_FILE).read_text()
    assert text.endswith("}\n")
    assert text.startswith('{\n  "format": "cascademl.CascadeClassifier",\n  "format_version": 2,')
    config = json.loads(text)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    del files[CONFIG_FILE]
    assert config == {
        "format": "cascademl.CascadeClassifier",
        "format_version": 2,
        "classes": {"dtype": "<i8", "values": [3, 5, 9]},
        "n_features_in": 4,
        "feature_names_in": None,
        "params": {
            "policy": {"measure": "entropy", "thresholds": [0.25, "inf"]},
            "combine": "mean",
            "escalation_weight": [0.2, 1.0],
            "batch_size": 9,
            "reject_threshold": 0.4,
            "abstain_label": {"dtype": "<i8", "values": [-7]},
        },
        "stages": [
            {"name": "nb", "spec": config["stages"][0]["spec"]},
            {"name": "lr", "spec": config["stages"][1]["spec"]},
        ],
        "files": files,
    }
    assert sorted(files) == ["stage_0.pkl", "stage_1.pkl"]
    assert [s["spec"]["kind"] for s in config["stages"]] == ["sklearn", "sklearn"]
    assert [s["spec"]["serializer"] for s in config["stages"]] == ["pickle", "pickle"]
    loaded = load_cascade(folder, allow_pickle=True)
    assert loaded.policy_ == ConfidencePolicy("entropy", (0.25, math.inf))
    assert (loaded.combine, loaded.batch_size, loaded.reject_threshold) == ("mean", 9, 0.4)
    assert loaded.escalation_weight == [0.2, 1.0]
    assert loaded.abstain_label == -7
    assert loaded.n_features_in_ == 4
    assert not hasattr(loaded, "feature_names_in_")
    np.testing.assert_array_equal(loaded.classes_, [3, 5, 9])
    np.testing.assert_array_equal(loaded.predict_or_abstain(X), cascade.predict_or_abstain(X))


def test_feature_names_are_saved_and_come_back(tmp_path, iris):
    pd = pytest.importorskip("pandas")
    X, y = iris
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    cascade = CascadeClassifier([("nb", GaussianNB())]).fit(frame, y)
    folder = save_cascade(cascade, tmp_path / "m")
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["feature_names_in"] == ["a", "b", "c", "d"]
    assert config["n_features_in"] == 4
    loaded = load_cascade(folder)
    assert loaded.feature_names_in_.tolist() == ["a", "b", "c", "d"]
    assert loaded.feature_names_in_.dtype == object
    assert loaded.n_features_in_ == 4


def test_save_and_load_argument_errors(tmp_path, iris):
    X, y = iris
    with pytest.raises(NotFittedError, match=r"^this CascadeClassifier is not fitted yet; call"):
        save_cascade(CascadeClassifier([("nb", GaussianNB())]), tmp_path / "a")
    cascade = CascadeClassifier([("nb", GaussianNB())]).fit(X, y)
    with pytest.raises(ValueError, match=r"^sklearn_format must be 'skops' or 'pickle', got 'js"):
        save_cascade(cascade, tmp_path / "b", sklearn_format="json")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"file exists and is not a folder$"):
        save_cascade(cascade, tmp_path / "file")
    folder = save_cascade(cascade, tmp_path / "deep" / "er" / "c")  # parents are created
    with pytest.raises(FileExistsError, match=r"cascade\.json exists; pass overwrite=True"):
        save_cascade(cascade, folder)
    assert not list(tmp_path.joinpath("deep", "er").glob("*new*"))
    from cascademl import PolicyError

    with pytest.raises(PolicyError, match="intra_op_num_threads"):
        load_cascade(folder, intra_op_num_threads=0)
    assert load_cascade(folder, intra_op_num_threads=2).predict(X[:3]).shape == (3,)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.pop("params"), r"cascade\.json: missing key 'params'$"),
        (lambda c: c["params"].pop("combine"), r"cascade\.json: missing key 'combine'$"),
        (lambda c: c.pop("classes"), r"cascade\.json: missing key 'classes'$"),
        (
            lambda c: c["params"].update(combine="median"),
            r"cascade\.json: the saved stages do not form a valid cascade: combine must",
        ),
        (
            lambda c: c["params"]["policy"].update(measure="median"),
            r"cascade\.json: invalid configuration: .*measure",
        ),
        (
            lambda c: c["classes"].update(values=[0, 1]),
            r"cascade\.json: the saved stages do not form a valid cascade: ",
        ),
    ],
)
def test_broken_configurations_name_the_file_and_the_key(tmp_path, iris, change, expected):
    X, y = iris
    folder = save_cascade(CascadeClassifier([("nb", GaussianNB())]).fit(X, y), tmp_path / "m")
    config = json.loads((folder / CONFIG_FILE).read_text())
    change(config)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SerializationError, match=expected):
        load_cascade(folder)
