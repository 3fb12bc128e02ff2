"""``evaluate --map``: the model's classes scored on a folder's coarser classes."""

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from examples.leukemia.__main__ import main
from examples.leukemia.mapping import ClassMapError, folder_classes, parse_class_map
from examples.leukemia.pipeline import SETTINGS_FILE, evaluate_folder, load_predictor
from PIL import Image

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.io import save_cascade
from cascademl.torch_stage import TorchStage

MODEL_CLASSES = ["Benign", "Early", "Pre", "Pro"]


def test_parse_class_map_groups_the_model_classes():
    mapping = parse_class_map(["benign=Healthy", "Early, Pre,PRO=ALL"], MODEL_CLASSES)
    assert mapping == {"Benign": "Healthy", "Early": "ALL", "Pre": "ALL", "Pro": "ALL"}
    assert folder_classes(mapping) == ("Healthy", "ALL")


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["Benign"], "must look like"),
        (["Benign=Healthy", "Early,Pre,Blast=ALL"], "no class 'Blast'"),
        (["Benign=Healthy", "Benign,Early,Pre,Pro=ALL"], "'Benign' is already mapped"),
        (["Benign=Healthy", "Early,Pre=ALL"], r"\['Pro'\] unmapped"),
    ],
)
def test_parse_class_map_names_the_fault(items, message):
    with pytest.raises(ClassMapError, match=message):
        parse_class_map(items, MODEL_CLASSES)


@pytest.fixture
def tiny_model(tmp_path, offline):
    """A saved two-stage cascade of untrained tiny timm models (no download)."""
    rng = np.random.default_rng(0)
    stages = [
        (
            name,
            TorchStage.from_timm(
                timm_name,
                num_classes=4,
                classes=MODEL_CLASSES,
                input_size=(3, 32, 32),
                device="cpu",
                pretrained=False,
            ),
        )
        for name, timm_name in (("A", "test_resnet"), ("B", "test_efficientnet"))
    ]
    x = rng.integers(0, 255, (8, 3, 48, 48), dtype=np.uint8)
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=0.5)).fit(
        torch.from_numpy(x), np.array(MODEL_CLASSES * 2)
    )
    folder = save_cascade(cascade, tmp_path / "cascade")
    settings = {"classes": MODEL_CLASSES, "cache_size": 48, "stain_normalizer": None}
    settings["mask_bottom"] = 0.125
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    assert offline == [], "no download may be tried"
    return folder


def _external_folder(root, sizes=((100, 80), (60, 60))):
    rng = np.random.default_rng(1)
    for label, count in (("Healthy", 3), ("ALL", 5)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            width, height = sizes[i % len(sizes)]
            pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"img-{i}.jpg")
    return root


def test_evaluate_maps_the_classes_on_a_generated_folder(tiny_model, tmp_path):
    data = _external_folder(tmp_path / "external")
    result = evaluate_folder(
        tiny_model, data, class_map=["Benign=Healthy", "Early,Pre,Pro=ALL"], device="cpu"
    )
    assert result["n_images"] == 8
    assert result["metrics"]["classes"] == ["Healthy", "ALL"]
    assert result["input"]["source_sizes"] == {"100x80": 5, "60x60": 3}
    assert result["input"]["resized_to"] == "48x48"
    assert result["input"]["stage_input"] == {"A": "32x32", "B": "32x32"}
    per_class = result["model_classes_per_folder_class"]
    assert sum(per_class["Healthy"].values()) == 3
    assert sum(per_class["ALL"].values()) == 5
    # The mapped metrics agree with the model's own labels renamed by the map.
    predictor = load_predictor(tiny_model)
    assert predictor.mask_bottom == 0.125
    benign = per_class["Healthy"]["Benign"] + per_class["ALL"]["Benign"]
    leukemic_right = sum(per_class["ALL"][c] for c in ("Early", "Pre", "Pro"))
    accuracy = (per_class["Healthy"]["Benign"] + leukemic_right) / 8
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert sum(result["metrics"]["confusion_matrix"][0]) == 3
    assert benign == sum(row[0] for row in result["metrics"]["confusion_matrix"])


def test_evaluate_command_with_map(tiny_model, tmp_path):
    data = _external_folder(tmp_path / "external")
    target = tmp_path / "eval.json"
    argv = ["evaluate", "--model", str(tiny_model), "--data-root", str(data)]
    argv += ["--output", str(target), "--map", "Benign=Healthy", "--map", "Early,Pre,Pro=ALL"]
    with redirect_stdout(io.StringIO()) as printed:
        assert main(argv) == 0
    assert json.loads(target.read_text())["class_map"]["Pro"] == "ALL"
    assert "resized to 48x48 as in training" in printed.getvalue()


def test_evaluating_two_folders_keeps_both_results(tiny_model, tmp_path):
    # The default output is named after the data folder: a second external set does not
    # overwrite the first one's results.
    argv = ["--map", "Benign=Healthy", "--map", "Early,Pre,Pro=ALL"]
    for name in ("lab a", "lab-b"):
        data = _external_folder(tmp_path / name)
        with redirect_stdout(io.StringIO()):
            assert (
                main(["evaluate", "--model", str(tiny_model), "--data-root", str(data), *argv]) == 0
            )
    written = {p.name: json.loads(p.read_text()) for p in tiny_model.parent.glob("evaluate*.json")}
    assert set(written) == {"evaluate-lab_a.json", "evaluate-lab-b.json"}
    assert written["evaluate-lab-b.json"]["data_root"].endswith("lab-b")


def test_evaluate_without_map_names_the_unknown_folder(tiny_model, tmp_path, caplog):
    data = _external_folder(tmp_path / "external")
    argv = ["evaluate", "--model", str(tiny_model), "--data-root", str(data)]
    assert main(argv) == 2
    assert "unknown class folder" in caplog.text
    assert main([*argv, "--map", "Benign=Healthy"]) == 2
    assert "unmapped" in caplog.text
