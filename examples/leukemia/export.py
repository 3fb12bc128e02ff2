"""The ``export`` command: a run's cascade as ONNX graphs, for ``predict`` without torch.

:func:`export_model` writes an exported folder (:func:`cascademl.onnx.export_cascade`)
with the example's settings file beside the graphs, so ``predict`` and ``evaluate`` take it
as ``--model`` as they take the run's ``cascade`` folder. The graphs take images of the
training cache size, as :func:`.predict.read_images` prepares them.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascademl import _files
from cascademl.onnx import ExportReport, export_cascade

from .predict import SETTINGS_FILE, load_predictor, read_images

__all__ = ["export_model"]

#: Random check images when no ``check`` images are given (the float32 tolerance check).
_SYNTHETIC = 16


def export_model(
    model_dir: str | Path,
    out: str | Path,
    *,
    quantize: Literal["dynamic", "static"] | None = None,
    check: Sequence[Path] = (),
    calibration: Sequence[Path] = (),
    keep_float32: Sequence[str] = (),
    overwrite: bool = False,
) -> ExportReport:
    """Export a run's ``cascade`` folder to ``out``, with its settings file.

    Args:
        model_dir: The ``cascade`` folder of a run.
        out: The exported folder (replaced atomically with ``overwrite``).
        quantize: ``"dynamic"`` or ``"static"`` int8, or ``None`` (float32).
        check: Image files the export compares the graphs and the cascades on; images
            inside a folder named after a class (the data set's layout) also give the
            accuracy change of ``quantize``. Without them: random images.
        calibration: Image files static quantization is calibrated on.
        keep_float32: Stage names whose graphs stay float32 with ``quantize`` (those whose
            int8 labels agree least with float32, see the report of a first export).
        overwrite: Replace an existing ``out``.

    Returns:
        The export's report (also in ``out/onnx_export.json``).

    Raises:
        FileExistsError: When ``out`` exists and ``overwrite`` is false.
    """
    source, target = Path(model_dir), Path(out)
    if target.exists() and not overwrite:
        msg = f"{target} exists; pass --overwrite to replace it"
        raise FileExistsError(msg)
    predictor = load_predictor(source, device="cpu")
    classes = {str(c) for c in predictor.cascade.classes_}
    labels: Any = None
    if check:
        sample: Any = read_images(check, predictor)[0]
        parents = [p.parent.name for p in check]
        if all(name in classes for name in parents):
            labels = np.array(parents)
    else:
        size = predictor.cache_size
        sample = np.random.default_rng(0).integers(0, 256, (_SYNTHETIC, 3, size, size), np.uint8)
    images = read_images(calibration, predictor)[0] if calibration else None
    new = _files.temporary_sibling(target, "new")
    try:
        report = export_cascade(
            predictor.cascade,
            new,
            sample=sample,
            sample_labels=labels,
            quantize=quantize,
            calibration=images,
            keep_float32=keep_float32,
        )
        shutil.copyfile(source / SETTINGS_FILE, new / SETTINGS_FILE)
        _files.replace_folder(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return dataclasses.replace(report, folder=target)
