"""ONNX Runtime against torch on the CPU: backbones, the whole cascade, int8, cold start.

Side by side in one process, on the same inputs, batch 64, the settings interleaved in
every repeat (the median is reported):

* ``backbones``: the five leukemia backbones (timm, random weights) at the ``cpu``
  preset's input sizes and at 224 px, each as a `TorchStage` (eager float32; channels-last
  float32; bfloat16 autocast with channels-last) and as the `OnnxStage` that
  `export_cascade` writes for it (float32);
* ``cascade``: the five-stage cascade (trained, from ``--run``, when it exists; random
  weights otherwise, with thresholds that spread the exits) on test-split images of the
  data set: torch eager float32 against the float32 export, and the int8 exports
  (dynamic; static, calibrated on training images), with their agreement and accuracy;
* ``coldstart``: process start to the first routed batch of 64, a saved torch cascade
  against its export (fresh subprocesses, alternated).

Run it under the benchmark lock, so that timed benchmarks do not overlap:

    flock /tmp/bench.lock python -m benchmarks.onnx_throughput --data-root DIR
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from benchmarks._machine import machine_lines
from examples.leukemia.presets import CPU
from PIL import Image

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.io import load_cascade, save_cascade
from cascademl.onnx import OnnxStage, export_cascade
from cascademl.torch_stage import TorchStage

BATCH = 64
CLASSES = ["Benign", "Early", "Pre", "Pro"]
ROOT = Path(__file__).resolve().parents[1]


def _median_times(
    runs: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Seconds per call of each function, and each function's last result.

    One warm-up call each, then ``repeats`` rounds that call every function in turn.
    """
    outputs = {name: run() for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def _stage(name: str, size: int, **options: Any) -> TorchStage:
    torch.manual_seed(0)
    spec = next(s for s in CPU.backbones if s.timm_name == name)
    return TorchStage.from_timm(
        name,
        **spec.model_kwargs,
        num_classes=4,
        classes=CLASSES,
        input_size=(3, size, size),
        device="cpu",
        batch_size=BATCH,
        **options,
    )


def _onnx_of(stage: TorchStage, x: np.ndarray[Any, Any], folder: Path) -> OnnxStage:
    cascade = CascadeClassifier.from_fitted([("s", stage)], classes=CLASSES)
    export_cascade(cascade, folder, sample=x[:8], overwrite=True)
    loaded: OnnxStage = load_cascade(folder).stages_[0]
    return loaded


def bench_backbones(sizes: list[str], repeats: int, tmp: Path) -> list[dict[str, Any]]:
    """Each backbone, each size: torch settings against ONNX Runtime float32."""
    rows = []
    for spec in CPU.backbones:
        for size in sorted({spec.image_size if s == "cpu" else int(s) for s in sizes}):
            x = np.random.default_rng(0).integers(0, 256, (BATCH, 3, size, size), np.uint8)
            eager = _stage(spec.timm_name, size)
            module = eager.module_
            stages = {
                "torch fp32": eager,
                "torch fp32 channels-last": _stage(spec.timm_name, size, channels_last=True),
                "torch bf16 channels-last": _stage(
                    spec.timm_name, size, channels_last=True, precision="bf16"
                ),
            }
            for stage in list(stages.values())[1:]:
                stage.module_.load_state_dict(module.state_dict())
            started = time.perf_counter()
            stages["onnxruntime fp32"] = _onnx_of(eager, x, tmp / f"{spec.timm_name}-{size}")
            export_s = time.perf_counter() - started
            times, outputs = _median_times(
                {name: (lambda s=s, x=x: s.predict_proba(x)) for name, s in stages.items()},
                repeats,
            )
            reference = outputs["torch fp32"]
            diffs = {name: float(np.abs(p - reference).max()) for name, p in outputs.items()}
            row = {
                "model": spec.timm_name,
                "size": size,
                "seconds": times,
                "max_abs_diff": diffs,
                "export_s": export_s,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _split_images(data_root: Path, run: Path, split: str, n: int) -> tuple[Any, Any]:
    rows = [r for r in csv.DictReader((run / "split.csv").open()) if r["split"] == split]
    rows = rows[:: max(1, len(rows) // n)][:n]
    images = [
        np.asarray(Image.open(data_root / r["path"]).convert("RGB").resize((224, 224)))
        for r in rows
    ]
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return x, np.array([r["label"] for r in rows])


def _random_cascade(x: np.ndarray[Any, Any]) -> CascadeClassifier:
    """The cpu preset's five backbones, random weights; thresholds spread the exits.

    Random heads over random features give saturated softmaxes (every image certain at the
    first stage); each head is drawn here so that its logits have a standard deviation of
    about 1.5 on these images, so that the stages hesitate and disagree as trained ones do.
    """
    stages = [(spec.name, _stage(spec.timm_name, spec.image_size)) for spec in CPU.backbones]
    generator = torch.Generator().manual_seed(0)
    for _, stage in stages:
        module = stage.module_
        head = module.get_classifier()
        with torch.inference_mode():
            batch = stage.preprocessing_(torch.from_numpy(x[:16]))
            features = module.forward_head(module.forward_features(batch), pre_logits=True)
        rms = float(features.pow(2).mean().sqrt())
        scale = 1.5 / (rms * features.shape[1] ** 0.5 + 1e-12)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * scale)
            head.bias.zero_()
    thresholds = []
    for _, stage in stages[:-1]:  # about a third of what reaches a stage leaves there
        confidence = stage.predict_proba(x[:64]).max(axis=1)
        thresholds.append(float(np.quantile(confidence, 2 / 3)))
    thresholds.append(1.0)
    return CascadeClassifier.from_fitted(
        stages, classes=CLASSES, policy=ConfidencePolicy("max_proba", tuple(thresholds))
    )


def bench_cascade(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The whole cascade: torch eager float32, the float32 export, the int8 exports."""
    run = args.run
    x, y = _split_images(args.data_root, run.parent, "test", args.n_images)
    calibration, _ = _split_images(args.data_root, run.parent, "train", 64)
    trained = (run / "cascade.json").is_file()
    if trained:
        cascade = load_cascade(run, device="cpu")
        for stage in cascade.stages_:
            inner = getattr(stage, "stage", stage)
            inner.precision = "fp32"  # the baseline: torch eager float32
            inner.channels_last = False
    else:
        cascade = _random_cascade(x)
    folders = {"float32": tmp / "fp32", "int8 dynamic": tmp / "dyn", "int8 static": tmp / "st"}
    reports = {
        "float32": export_cascade(cascade, folders["float32"], sample=x, sample_labels=y),
        "int8 dynamic": export_cascade(
            cascade, folders["int8 dynamic"], sample=x, sample_labels=y, quantize="dynamic"
        ),
        "int8 static": export_cascade(
            cascade,
            folders["int8 static"],
            sample=x,
            sample_labels=y,
            quantize="static",
            calibration=calibration,
        ),
    }
    loaded = {name: load_cascade(folder) for name, folder in folders.items()}
    runs = {"torch fp32": lambda: cascade.route(x, keep="none")}
    runs.update(
        {f"onnxruntime {n}": (lambda c=c: c.route(x, keep="none")) for n, c in loaded.items()}
    )
    times, routes = _median_times(runs, args.repeats)
    reference = routes["torch fp32"]
    results = {}
    for name, routed in routes.items():
        results[name] = {
            "seconds": times[name],
            "speedup": times["torch fp32"] / times[name],
            "accuracy": float(np.mean(routed.labels == y)),
            "label_agreement": float(np.mean(routed.labels == reference.labels)),
            "exit_agreement": float(np.mean(routed.exit_stage == reference.exit_stage)),
            "max_abs_proba_diff": float(np.abs(routed.proba - reference.proba).max()),
            "exit_counts": routed.exit_counts.tolist(),
        }
    out = {
        "trained": trained,
        "n_images": len(x),
        "results": results,
        "reports": {k: r.to_dict(folder=False) for k, r in reports.items()},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "reports"}, indent=1), flush=True)
    save_cascade(cascade, tmp / "torch", overwrite=True)
    np.save(tmp / "x.npy", x[:BATCH])
    return out


_COLD = """
import time, sys
start = float(sys.argv[1])
import numpy as np
from cascademl.io import load_cascade
cascade = load_cascade(sys.argv[2])
result = cascade.route(np.load(sys.argv[3]))
print(time.time() - start, "torch" in sys.modules)
"""


def bench_coldstart(tmp: Path, repeats: int) -> dict[str, Any]:
    """Process start to the first routed batch: a saved torch cascade against its export."""
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    imported = {}
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    for _ in range(repeats):
        for name, folder in (("torch", tmp / "torch"), ("onnx", tmp / "fp32")):
            out = subprocess.run(  # noqa: S603 - this interpreter, our own script
                [sys.executable, "-c", _COLD, str(time.time()), str(folder), str(tmp / "x.npy")],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout.split()
            times[name].append(float(out[0]))
            imported[name] = out[1] == "True"
    result = {
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "all": times,
        "torch_imported": imported,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    """Run the parts asked for and write their results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data/all-leukemia"))
    parser.add_argument(
        "--run", type=Path, default=Path("/work/runs/seeds-cpu/seed-0/cascade"), help="cascade"
    )
    parser.add_argument("--parts", default="backbones,cascade,coldstart")
    parser.add_argument("--sizes", default="cpu,224", help="cpu (the preset's) and/or pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-images", type=int, default=128, help="test images for cascade")
    parser.add_argument("--output", type=Path, default=Path("onnx_throughput.json"))
    args = parser.parse_args()
    for line in machine_lines():
        print(line)
    import onnxruntime  # noqa: PLC0415

    print(f"onnxruntime {onnxruntime.__version__}, timm {timm.__version__}, batch {BATCH}")
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {"machine": machine_lines()}
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as folder:
        tmp = Path(folder)
        if "cascade" in parts or "coldstart" in parts:
            results["cascade"] = bench_cascade(args, tmp)
        if "coldstart" in parts:
            results["coldstart"] = bench_coldstart(tmp, args.repeats)
        args.output.write_text(json.dumps(results, indent=1))
        if "backbones" in parts:
            results["backbones"] = bench_backbones(args.sizes.split(","), args.repeats, tmp)
        args.output.write_text(json.dumps(results, indent=1))
    args.output.write_text(json.dumps(results, indent=1))
    print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
