"""cascademl.ray_data: a saved cascade over a Ray Data Dataset, in both modes.

One local Ray (2 CPUs, no dashboard) serves the whole module. Actors reserve a quarter of
a CPU each, so the three stage pools of ``mode="stages"`` fit on CI's 2 cores.

A Ray run's time is almost all its actors' start-up: each actor is a new process that
imports Ray Data, scikit-learn, torch and skops and loads the cascade, about 12 s of CPU
on CI's cores, while routing the rows takes well under a second. So each test runs as few
Ray jobs and actors as what it checks needs (the fault test needs two actor starts).
"""

import logging
import os
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.exceptions import (
    ClusterResourceError,
    ClusterResourceWarning,
    DeviceUnavailableError,
    PolicyError,
    SerializationError,
)
from cascademl.io import load_cascade, save_cascade
from cascademl.ray_data import read_images, route_dataset

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("skops")

# Ray Data's DataContext() warns about its own defaults (Ray 2.60); nothing else is ignored.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

SMALL = {"num_cpus": 0.25}  # per actor: every pool fits on 2 CPUs
FEATURES = ["f0", "f1", "f2", "f3"]


@pytest.fixture(scope="module")
def local_ray():
    # The workers inherit this process's environment: they import this checkout's package
    # (and a busy machine gets more time to start them than Ray's default 60 s).
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "RAY_worker_register_timeout_seconds": "600"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])
    return X, names[y]


def _sklearn_cascade(X, y, **params):
    stages = [
        ("nb", GaussianNB()),
        ("lr", LogisticRegression(C=0.05, max_iter=500)),
        ("lr2", LogisticRegression(C=100, max_iter=2000)),
    ]
    params.setdefault("policy", ConfidencePolicy("max_proba", thresholds=(0.99, 0.5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return CascadeClassifier(stages, **params).fit(X, y)


def _tabular(local_ray, X, blocks=3):
    rows = [{"id": i, **dict(zip(FEATURES, map(float, x), strict=True))} for i, x in enumerate(X)]
    return local_ray.data.from_items(rows, override_num_blocks=blocks)


def _by_id(rows):
    return sorted(rows, key=lambda r: r["id"])


def _check_same(rows, result, cascade, *, atol=1e-6):
    labels = np.array([r["label"] for r in rows])
    exits = np.array([r["exit_stage"] for r in rows])
    np.testing.assert_array_equal(labels, result.labels)
    np.testing.assert_array_equal(exits, result.exit_stage)
    assert [r["stage_name"] for r in rows] == [result.stage_names[e] for e in exits]
    proba = np.stack([r["proba"] for r in rows])
    np.testing.assert_allclose(proba, result.proba, atol=atol, rtol=0)
    conf = result.stage_confidence[result.exit_stage, np.arange(result.n_samples)]
    np.testing.assert_allclose([r["confidence"] for r in rows], conf, atol=atol, rtol=0)
    cost = np.cumsum(result.stage_cost)[result.exit_stage]
    np.testing.assert_allclose([r["cost"] for r in rows], cost)
    # The thresholds spread the rows over every stage: a real test of the carried votes.
    assert len(set(exits.tolist())) == cascade.routing_rule_.n_stages


# Whole-cascade mode on table rows here, stage-parallel mode on table rows below and on
# image files further down.
@pytest.mark.parametrize("mode", ["cascade"])
def test_tabular_rows_match_in_process_route(local_ray, iris, tmp_path, mode):
    X, y = iris
    cascade = _sklearn_cascade(X, y)
    folder = save_cascade(cascade, tmp_path / "model")
    out = route_dataset(
        _tabular(local_ray, X),
        folder,
        input_columns=FEATURES,
        passthrough=["id"],
        mode=mode,
        batch_size=32,
        proba=True,
        **SMALL,
    )
    rows = _by_id(out.take_all())
    assert [r["id"] for r in rows] == list(range(len(X)))
    assert set(rows[0]) == {
        "id",
        "label",
        "confidence",
        "exit_stage",
        "stage_name",
        "cost",
        "proba",
    }
    _check_same(rows, load_cascade(folder).route(X), cascade)


# One combine mode under Ray (three actors to start: the costliest run here): a vote with a
# per-stage weight schedule, the case that needs the carried state most. The pools run the
# engine's own per-stage step (``_engine.fold_stage``), which the in-process routing
# tests cover for every combine mode.
@pytest.mark.parametrize(("combine", "weight"), [("vote", (0.9, 0.2, 1.0))])
def test_stage_parallel_carries_the_running_vote(local_ray, iris, tmp_path, combine, weight):
    X, y = iris
    cascade = _sklearn_cascade(X, y, combine=combine, escalation_weight=weight)
    folder = save_cascade(cascade, tmp_path / "model")
    out = route_dataset(
        _tabular(local_ray, X),
        f"file://{folder}",  # a URI: each actor copies the folder
        input_columns=FEATURES,
        mode="stages",
        batch_size=[50, 20, 7],
        proba=True,
        **SMALL,
    )
    rows = _by_id(out.take_all())
    assert "f0" not in rows[0]  # input columns are not passed through by default
    _check_same(rows, cascade.route(X), cascade)


# Every combine mode through the stage-parallel actors, chained in this process (no Ray
# start-up: the actors are plain classes that Ray runs). An actor that ignored the saved
# combine, measure or weights would route these differently from the cascade.
@pytest.mark.parametrize(
    ("combine", "params"),
    [
        ("last", {}),
        ("mean", {}),
        ("vote", {"escalation_weight": (0.9, 0.2, 1.0)}),
    ],
)
def test_stage_actors_apply_the_saved_combine(iris, tmp_path, combine, params):
    from cascademl._ray_actors import _Spec, _StageRunner

    X, y = iris
    cascade = _sklearn_cascade(X, y, combine=combine, **params)
    folder = save_cascade(cascade, tmp_path / "model")
    spec = _Spec(
        model=str(folder),
        load_options={},
        input_columns=tuple(FEATURES),
        passthrough=("id",),
        proba=True,
    )
    batch = {"id": np.arange(len(X)), **{c: X[:, i] for i, c in enumerate(FEATURES)}}
    for stage_index in range(3):
        batch = _StageRunner(spec, stage_index)(batch)
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    _check_same(rows, cascade.route(X), cascade)


# --------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def image_cascade(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    from cascademl import TorchStage

    torch.manual_seed(0)
    stages = [
        (name, TorchStage.from_timm(name, num_classes=3, input_size=size, device="cpu"))
        for name, size in (("test_resnet", (3, 32, 32)), ("test_efficientnet", (3, 40, 40)))
    ]
    images = np.random.default_rng(0).integers(0, 256, size=(24, 48, 48, 3), dtype=np.uint8)
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=0.0)).fit(images)
    conf = cascade.route(images).stage_confidence[0]
    # Half the images exit at the first stage, half escalate.
    cascade.set_params(policy=ConfidencePolicy(thresholds=float(np.median(conf))))
    folder = save_cascade(cascade, tmp_path_factory.mktemp("timm") / "model")
    return folder, images


def _write_images(folder, images, bad=()):
    from PIL import Image

    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    for name in bad:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return paths


# One stage-parallel run on image files: it checks the results and the skipped files.
def test_image_folder_matches_in_process_route_and_lists_skipped_files(
    local_ray, image_cascade, tmp_path
):
    folder, images = image_cascade
    paths = _write_images(tmp_path / "images", images, bad=["broken.png", "empty.jpg"])
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    out = route_dataset(
        read_images(str(tmp_path / "images"), skip_bad=True),
        folder,
        mode="stages",
        batch_size=5,
        proba=True,
        **SMALL,
    )
    rows = sorted(out.take_all(), key=lambda r: r["path"])
    bad = {Path(r["path"]).name: r for r in rows if r["error"]}
    assert sorted(bad) == ["broken.png", "empty.jpg"]
    assert all(r["label"] is None and r["exit_stage"] == -1 for r in bad.values())
    good = [r for r in rows if not r["error"]]
    assert [Path(r["path"]).name for r in good] == [p.name for p in paths]
    result = load_cascade(folder).route(images)
    exits = np.array([r["exit_stage"] for r in good])
    np.testing.assert_array_equal(exits, result.exit_stage)
    np.testing.assert_array_equal([r["label"] for r in good], result.labels)
    np.testing.assert_allclose(np.stack([r["proba"] for r in good]), result.proba, atol=1e-6)
    assert 0 < int((exits == 1).sum()) < len(images)


def test_rays_own_image_reader_with_paths(local_ray, image_cascade, tmp_path):
    folder, images = image_cascade
    _write_images(tmp_path / "images", images[:6])
    dataset = local_ray.data.read_images(str(tmp_path / "images"), include_paths=True)
    rows = sorted(route_dataset(dataset, folder, **SMALL).take_all(), key=lambda r: r["path"])
    np.testing.assert_array_equal(
        [r["label"] for r in rows], load_cascade(folder).predict(images[:6])
    )
    assert "image" not in rows[0]


def test_corrupt_image_is_an_error_naming_it(local_ray, image_cascade, tmp_path):
    folder, images = image_cascade
    _write_images(tmp_path / "good", images[:4])
    decoded = sorted(read_images(str(tmp_path / "good")).take_all(), key=lambda r: r["path"])
    assert set(decoded[0]) == {"image", "path"}  # no error column without skip_bad
    np.testing.assert_array_equal(np.stack([r["image"] for r in decoded]), images[:4])
    _write_images(tmp_path / "images", images[:4], bad=["broken.png"])
    out = route_dataset(read_images(str(tmp_path / "images")), folder, **SMALL)
    with pytest.raises(Exception, match=r"broken\.png: cannot be decoded"):
        out.take_all()


def test_16_bit_images_are_scaled_not_clipped(local_ray, tmp_path):
    image = pytest.importorskip("PIL.Image")
    (tmp_path / "deep").mkdir()
    image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "deep" / "a.png")
    (row,) = read_images(str(tmp_path / "deep")).take_all()  # decoding tasks, no actor
    assert row["image"].shape == (8, 8, 3)
    assert (row["image"] == 128).all()  # Pillow's convert("RGB") would give 255


# --------------------------------------------------------------------------- faults
def _worker_pids(title):
    """Processes whose command line (Ray's process title) holds ``title``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if title.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor's process in /proc")
def test_killed_actor_is_restarted_and_every_row_comes_out_once(local_ray, iris, tmp_path):
    X = np.repeat(iris[0], 2, axis=0)
    cascade = _sklearn_cascade(*iris)
    folder = save_cascade(cascade, tmp_path / "model")

    def slow(batch):  # nested: shipped to the workers by value
        time.sleep(0.1)
        return batch

    out = route_dataset(
        # 30 blocks of 10 rows: the actor takes a few at a time, so that most are still
        # to route when its first row is out (with 3 blocks of 100 it could finish them all
        # before the first row reached this process, and then no restart is needed).
        _tabular(local_ray, X, blocks=30).map_batches(slow, batch_size=10),
        folder,
        input_columns=FEATURES,
        passthrough=["id"],
        batch_size=10,
        **SMALL,
    )
    # Kill the actor once it has routed a batch (its first row is out) while most blocks
    # are still to route: Ray restarts it and retries the batches it held, and the rows
    # already delivered are not delivered again.
    rows, killed, after = [], [], set()
    for row in out.iter_rows():
        rows.append(row)
        if not killed:
            pids = _worker_pids("MapBatches(_CascadeRouter)")
            assert pids, "no actor process was found to kill"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        else:
            after.update(_worker_pids("MapBatches(_CascadeRouter)"))
    # Rows came out of a new actor process (measured: the rows after the kill took 8 s,
    # the new actor's start-up, and Ray logged the retried batch).
    assert after - set(killed), "no new actor routed the rows left after the kill"
    assert killed[0] not in _worker_pids("MapBatches(_CascadeRouter)")
    assert sorted(r["id"] for r in rows) == list(range(len(X)))  # every row exactly once
    np.testing.assert_array_equal([r["label"] for r in _by_id(rows)], cascade.predict(X))


# --------------------------------------------------------------------------- arguments
def test_invalid_arguments_name_the_parameter(local_ray, iris, tmp_path):
    X, y = iris
    folder = save_cascade(_sklearn_cascade(X, y), tmp_path / "model")
    dataset = _tabular(local_ray, X)
    with pytest.raises(PolicyError, match="mode must be one of"):
        route_dataset(dataset, folder, mode="pipeline")
    with pytest.raises(PolicyError, match="concurrency"):
        route_dataset(dataset, folder, concurrency=0)
    with pytest.raises(PolicyError, match=r"batch_size has 2 values but the cascade has 3"):
        route_dataset(dataset, folder, mode="stages", batch_size=[4, 4])
    with pytest.raises(PolicyError, match="num_gpus"):
        route_dataset(dataset, folder, num_gpus=-1)
    with pytest.raises(SerializationError, match="no saved cascade"):
        route_dataset(dataset, tmp_path / "nothing", mode="stages")
    with pytest.raises(PolicyError, match=r"concurrency must be a number of actors or \("):
        route_dataset(dataset, folder, concurrency=(1, 2, 3))


def test_pools_the_cluster_cannot_hold_are_refused_before_the_run(local_ray, iris, tmp_path):
    folder = save_cascade(_sklearn_cascade(*iris), tmp_path / "model")
    dataset = _tabular(local_ray, iris[0])
    # Three stage pools of one actor x 1 CPU on 2 CPUs: the third pool would never start.
    with pytest.raises(ClusterResourceError, match=r"ask for 3 CPUs .*cluster has 2") as info:
        route_dataset(dataset, folder, mode="stages")
    message = str(info.value)
    assert "stage 0: 1 actor x 1 CPU; stage 1: 1 actor x 1 CPU; stage 2" in message
    assert "num_cpus=0.33 per actor leaves one CPU" in message
    assert "mode='cascade'" in message
    assert "check_resources=False" in message
    assert isinstance(info.value, (DeviceUnavailableError, RuntimeError))
    # An autoscaling pool needs its minimum; a GPU the cluster lacks is refused too.
    with pytest.raises(ClusterResourceError, match=r"ask for 4 CPUs .*stage 2: 2 actors x 1 CPU"):
        route_dataset(
            dataset, folder, mode="stages", num_cpus=[0.5, 0.5, 1], concurrency=[2, 2, (2, 4)]
        )
    with pytest.raises(
        ClusterResourceError,
        match=r"1 GPUs \(the pool: 1 actor x 1 GPU\).*\(num_gpus=0: the cluster has no GPU",
    ):
        route_dataset(dataset, folder, num_gpus=1, num_cpus=0.25)
    # Skipped when asked: the dataset is built (and would wait for nodes to be added).
    assert route_dataset(dataset, folder, mode="stages", check_resources=False) is not None


def test_pools_that_leave_no_cpu_for_tasks_warn(local_ray, iris, tmp_path, monkeypatch, caplog):
    folder = save_cascade(_sklearn_cascade(*iris), tmp_path / "model")
    dataset = _tabular(local_ray, iris[0])
    with pytest.warns(ClusterResourceWarning, match=r"hold 1.5 of the Ray cluster's 2 CPUs"):
        route_dataset(dataset, folder, mode="stages", num_cpus=0.5)
    with pytest.warns(ClusterResourceWarning, match=r"leaving 0: .*num_cpus=0.5 per actor"):
        route_dataset(dataset, folder, concurrency=2)  # whole cascade: 2 actors x 1 CPU
    # Pools that fit and leave a CPU: no warning (the module turns warnings into errors).
    route_dataset(dataset, folder, mode="stages", **SMALL)
    # Pools that fit the cluster but not what other work leaves free now: logged.
    monkeypatch.setattr(local_ray, "available_resources", lambda: {"CPU": 0.5})
    with caplog.at_level(logging.WARNING, logger="cascademl.ray_data"):
        route_dataset(dataset, folder, mode="stages", **SMALL)
    assert "ask for 0.75 CPUs but only 0.5 are free now" in caplog.text


class _Recorder:
    """Stands for a Dataset: records the keywords of each ``map_batches`` call."""

    def __init__(self):
        self.calls = []

    def map_batches(self, fn, **kwargs):
        self.calls.append(kwargs)
        return self


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_actor_pools_are_sized_with_compute_on_ray_2_51_and_later(
    local_ray, iris, tmp_path, monkeypatch
):
    folder = save_cascade(_sklearn_cascade(*iris), tmp_path / "model")
    recorder = _Recorder()
    route_dataset(recorder, folder, concurrency=(1, 3))
    # Four CPUs of actors on a 2-CPU Ray: built only, never run, so the check is skipped.
    unchecked = {"check_resources": False}
    route_dataset(recorder, folder, mode="stages", concurrency=[2, (1, 4), 1], **unchecked)
    pools = [call["compute"] for call in recorder.calls]
    assert all(isinstance(pool, local_ray.data.ActorPoolStrategy) for pool in pools)
    assert [(pool.min_size, pool.max_size) for pool in pools] == [(1, 3), (2, 2), (1, 4), (1, 1)]
    assert not any("concurrency" in call for call in recorder.calls)
    # Ray Data logs (it does not warn) when a deprecated keyword is used: none of ours.
    records = _Records()
    ray_logger = logging.getLogger("ray.data")
    ray_logger.addHandler(records)
    try:
        route_dataset(
            _tabular(local_ray, iris[0]), folder, mode="stages", concurrency=2, **unchecked
        )
        assert not [m for m in records.messages if "deprecated" in m]
        # Ray 2.40 to 2.50 logged the deprecation of compute= instead: concurrency= there.
        monkeypatch.setattr(local_ray, "__version__", "2.50.0")
        old = _Recorder()
        route_dataset(old, folder, concurrency=(1, 3))
        assert old.calls[0]["concurrency"] == (1, 3)
        assert "compute" not in old.calls[0]
        route_dataset(_tabular(local_ray, iris[0]), folder, concurrency=2, **unchecked)
        assert [m for m in records.messages if "``concurrency`` is deprecated" in m]
    finally:
        ray_logger.removeHandler(records)
