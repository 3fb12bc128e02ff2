"""ONNX Runtime against torch on the CPU: backbones, the whole cascade, int8, cold start.

Side by side in one process, on the same inputs, batch 64, the settings interleaved in
every repeat (the median is reported):

* ``backbones``: the five leukemia backbones (timm, random weights) at the ``cpu``
  preset's input sizes and at 224 px, each as a `TorchStage` (eager float32; channels-last
  float32; bfloat16 autocast with channels-last) and as the `OnnxStage` that
  `export_cascade` writes for it (float32);
* ``cascade``: the trained cascade of ``--run`` (seed 0 of the leukemia ``cpu`` preset by
  default) on its whole test split, the images prepared as the example prepares them for
  that cascade: torch eager float32 and bfloat16 (channels-last) against its float32
  export and its static int8 export (calibrated on training images prepared the same way;
  dynamic int8 with ``--dynamic``), with accuracy and agreement with torch float32
  (labels, exits, every stage's probabilities); then each stage alone on a batch of 64
  in every engine, with ONNX Runtime's profile of each graph (time share per operator);
* ``resize``: the in-graph resize alone (onnxruntime's antialiased ``Resize``, the two
  ``MatMul`` the export writes, torch), and the uint8 scaling before a graph;
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
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from benchmarks._machine import machine_lines
from examples.leukemia.presets import CPU

from cascademl import CascadeClassifier
from cascademl.io import load_cascade, save_cascade
from cascademl.onnx import ExportReport, OnnxStage, export_cascade
from cascademl.torch_stage import TorchStage

BATCH = 64
CLASSES = ["Benign", "Early", "Pre", "Pro"]
ROOT = Path(__file__).resolve().parents[1]


def _median_times(
    runs: Mapping[str, Callable[..., Any]], repeats: int
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
            stages: dict[str, Any] = {
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


def _split_paths(data_root: Path, run_dir: Path, split: str) -> tuple[list[Path], Any]:
    """The image files of one split of a run (``split.csv``), in the file's order."""
    with (run_dir / "split.csv").open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    return [data_root / r["path"] for r in rows], np.array([r["label"] for r in rows])


def _prepared(paths: list[Path], model: Path, cache: Path | None) -> np.ndarray[Any, Any]:
    """Images as the example feeds its saved cascade (resize, stain normalisation, mask).

    With ``cache``, the prepared images are kept in that ``.npz`` beside the list of their
    files, and read back when the list is the same (the preparation takes minutes).
    """
    from examples.leukemia.predict import load_predictor, read_images  # noqa: PLC0415

    names = np.array([str(p) for p in paths])
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            if np.array_equal(stored["paths"], names):
                return np.ascontiguousarray(stored["images"])
    images = np.ascontiguousarray(
        read_images(paths, load_predictor(model, device="cpu"))[0].numpy()
    )
    if cache is not None:
        np.savez(cache, paths=names, images=images)
    return images


def _torch_cascade(model: Path, precision: str) -> CascadeClassifier:
    """The saved cascade with every stage in eager ``fp32`` or ``bf16`` (channels-last)."""
    cascade = load_cascade(model, device="cpu")
    for stage in cascade.stages_:
        inner = getattr(stage, "stage", stage)
        inner.precision = precision
        inner.channels_last = precision != "fp32"
    return cascade


def _onnx_only(cascade: CascadeClassifier, folder: Path) -> CascadeClassifier:
    """Refuse to time an exported folder that does not run ONNX Runtime in every stage."""
    kinds = [type(getattr(s, "stage", s)).__name__ for s in cascade.stages_]
    if set(kinds) != {"OnnxStage"}:
        msg = f"{folder}: expected OnnxStage stages only, loaded {kinds}"
        raise RuntimeError(msg)
    return cascade


def _stage_diff(a: Any, b: Any) -> float:
    """Largest probability difference of any stage on the samples both routes sent to it."""
    both = np.isfinite(a.stage_proba) & np.isfinite(b.stage_proba)
    return float(np.abs(a.stage_proba - b.stage_proba)[both].max(initial=0.0))


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ort_profile(stage: OnnxStage, x: np.ndarray[Any, Any], tmp: Path) -> dict[str, float]:
    """Share of the graph's node time per operator type, from ONNX Runtime's profiler."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / "ort-profile")
    session = ort.InferenceSession(stage.model_bytes_, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.astype(np.float32) / np.float32(255)}
    for _ in range(2):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + float(event["dur"])
    total = sum(per_op.values()) or 1.0
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:6]
    return {op: round(value / total, 3) for op, value in top}


def _export(
    source: CascadeClassifier,
    folder: Path,
    held_out: np.ndarray[Any, Any],
    calibration: np.ndarray[Any, Any],
    *,
    mode: str | None,
    keep: tuple[str, ...],
) -> tuple[CascadeClassifier, ExportReport, float]:
    """Export, load (checked to run ONNX Runtime only), and the export's seconds."""
    started = time.perf_counter()
    report = export_cascade(
        source,
        folder,
        sample=held_out,
        quantize=mode,  # type: ignore[arg-type]
        calibration=calibration if mode == "static" else None,
        keep_float32=keep,
        overwrite=True,
    )
    seconds = time.perf_counter() - started
    return _onnx_only(load_cascade(folder), folder), report, seconds


def _exports(
    args: argparse.Namespace,
    engines: dict[str, CascadeClassifier],
    held_out: np.ndarray[Any, Any],
    calibration: np.ndarray[Any, Any],
    tmp: Path,
) -> dict[str, Any]:
    """The exports of the float32 torch cascade, added to ``engines``; their reports.

    The exports are checked on held-out training images, never on the test images. The
    stages whose int8 graph labels fewer than ``--int8-min-agreement`` of them as their
    float32 graph does are kept in float32 in one more ("mixed") int8 export.
    """
    exports: dict[str, tuple[str | None, tuple[str, ...]]] = {
        "onnxruntime fp32": (None, ()),
        "onnxruntime int8 static": ("static", ()),
    }
    if args.dynamic:
        exports["onnxruntime int8 dynamic"] = ("dynamic", ())
    reports: dict[str, Any] = {}
    source = engines["torch fp32"]
    for index, (name, (mode, keep)) in enumerate(list(exports.items())):
        folder = tmp / f"export-{index}"
        engines[name], report, seconds = _export(
            source, folder, held_out, calibration, mode=mode, keep=keep
        )
        reports[name] = {**report.to_dict(folder=False), "export_s": seconds}
        if mode != "static":
            continue
        kept = tuple(
            s.name
            for s in report.stages
            if (s.int8_label_agreement or 1.0) < args.int8_min_agreement
        )
        if kept:
            mixed = f"onnxruntime int8 static, float32 {'+'.join(kept)}"
            engines[mixed], report, seconds = _export(
                source, tmp / "export-mixed", held_out, calibration, mode="static", keep=kept
            )
            reports[mixed] = {**report.to_dict(folder=False), "export_s": seconds}
    (tmp / "export-0").rename(tmp / "onnxruntime-fp32")  # for the cold start
    return reports


def bench_cascade(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The trained cascade on its test split: torch fp32 and bf16 against the exports.

    Every engine gets the same images, prepared as the example prepares them for the saved
    cascade (224 px, stain normalised, masked); each export's stages are checked to be
    `OnnxStage` objects before timing. Agreement is with torch eager float32: labels, exit
    stages, and the largest difference of every stage's probabilities on the samples both
    sent to it (the final probabilities of a voting cascade are coarse and can hide it).
    """
    model = args.run
    if not (model / "cascade.json").is_file():
        msg = f"--run {model}: no saved cascade there (cascade.json)"
        raise SystemExit(msg)
    test_paths, y = _split_paths(args.data_root, model.parent, "test")
    if args.n_images:
        test_paths, y = test_paths[: args.n_images], y[: args.n_images]
    train_paths, _ = _split_paths(args.data_root, model.parent, "train")
    step = max(1, len(train_paths) // args.n_calibration)
    cache = args.cache
    started = time.perf_counter()
    x = _prepared(test_paths, model, cache and cache / "test.npz")
    calibration = _prepared(
        train_paths[::step][: args.n_calibration], model, cache and cache / "calibration.npz"
    )
    # other training images: the export's checks, and the choice of stages kept float32
    held_out = _prepared(
        train_paths[step // 2 :: step][:64], model, cache and cache / "held_out.npz"
    )
    print(
        f"prepared {len(x)} test, {len(calibration)} calibration images in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    engines: dict[str, CascadeClassifier] = {
        "torch fp32": _torch_cascade(model, "fp32"),
        "torch bf16": _torch_cascade(model, "bf16"),
    }
    reports = _exports(args, engines, held_out, calibration, tmp)
    times: dict[str, list[float]] = {name: [] for name in engines}
    routes = {name: c.route(x, keep="all") for name, c in engines.items()}  # warm-up
    for _ in range(args.repeats):
        for name, cascade in engines.items():
            started = time.perf_counter()
            routes[name] = cascade.route(x, keep="all")
            times[name].append(time.perf_counter() - started)
    reference = routes["torch fp32"]
    base = statistics.median(times["torch fp32"])
    results = {}
    for name, routed in routes.items():
        results[name] = {
            "seconds": _spread(times[name]),
            "all_seconds": times[name],
            "speedup": base / statistics.median(times[name]),
            "accuracy": float(np.mean(routed.labels == y)),
            "label_agreement": float(np.mean(routed.labels == reference.labels)),
            "exit_agreement": float(np.mean(routed.exit_stage == reference.exit_stage)),
            "max_abs_proba_diff": float(np.abs(routed.proba - reference.proba).max()),
            "max_abs_stage_proba_diff": _stage_diff(routed, reference),
            "exit_counts": routed.exit_counts.tolist(),
        }
    stages = _bench_stages(engines, x[:BATCH], args.repeats, tmp)
    out = {
        "model": str(model),
        "n_images": len(x),
        "n_calibration": len(calibration),
        "results": results,
        "stages": stages,
        "reports": reports,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "reports"}, indent=1), flush=True)
    save_cascade(engines["torch fp32"], tmp / "torch", overwrite=True)
    np.save(tmp / "x.npy", x[:BATCH])
    return out


def _bench_stages(
    engines: dict[str, CascadeClassifier], x: np.ndarray[Any, Any], repeats: int, tmp: Path
) -> dict[str, Any]:
    """Each stage alone on one batch of 64 prepared 224 px images, the engines interleaved.

    Also where ONNX Runtime spends each graph's time (share of node time per operator).
    """
    out: dict[str, Any] = {}
    names = list(next(iter(engines.values())).named_stages_)
    for index, stage_name in enumerate(names):
        stages = {name: c.stages_[index] for name, c in engines.items()}
        runs = {name: (lambda s=s: s.predict_proba(x)) for name, s in stages.items()}
        seconds, _ = _median_times(runs, repeats)
        profile = {
            name: _ort_profile(getattr(s, "stage", s), x, tmp)
            for name, s in stages.items()
            if name.startswith("onnxruntime")
        }
        out[str(stage_name)] = {"seconds": seconds, "onnxruntime_op_share": profile}
        print(json.dumps({str(stage_name): out[str(stage_name)]}), flush=True)
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
        for name, folder in (("torch", tmp / "torch"), ("onnx", tmp / "onnxruntime-fp32")):
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


def bench_resize(repeats: int) -> dict[str, Any]:
    """The in-graph resize alone: 64 images of 224 px to 32 and 64 px, four ways.

    onnxruntime's antialiased ``Resize`` (what the export wrote before), the two ``MatMul``
    it writes now, torch's ``F.interpolate``; and the uint8-to-float32 scaling `OnnxStage`
    does before a graph, and onnxruntime copying the float32 batch (``Identity``).
    """
    import onnxruntime as ort  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    from cascademl._onnx_export import resize_matrix  # noqa: PLC0415

    size = 224
    images = np.random.default_rng(0).integers(0, 256, (BATCH, 3, size, size), np.uint8)
    x = np.multiply(images, np.float32(1 / 255), dtype=np.float32)

    def session(nodes: list[Any], constants: dict[str, np.ndarray[Any, Any]]) -> Any:
        graph = helper.make_graph(
            nodes,
            "resize",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, size, size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in constants.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    runs: dict[str, Callable[..., Any]] = {}
    for out in (32, 64):
        matrix = resize_matrix(size, out, "bilinear")
        scales = np.array([1, 1, out / size, out / size], np.float32)
        aa = session(
            [
                helper.make_node(
                    "Resize",
                    ["x", "", "scales"],
                    ["y"],
                    mode="linear",
                    antialias=1,
                    exclude_outside=1,
                    coordinate_transformation_mode="half_pixel",
                )
            ],
            {"scales": scales},
        )
        matmul = session(
            [
                helper.make_node("MatMul", ["x", "cols"], ["t"]),
                helper.make_node("MatMul", ["rows", "t"], ["y"]),
            ],
            {"rows": matrix, "cols": np.ascontiguousarray(matrix.T)},
        )
        runs[f"onnxruntime Resize antialias to {out}"] = partial(aa.run, None, {"x": x})
        runs[f"onnxruntime two MatMul to {out}"] = partial(matmul.run, None, {"x": x})
        runs[f"torch F.interpolate antialias to {out}"] = partial(
            torch.nn.functional.interpolate,
            torch.from_numpy(x),
            size=(out, out),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    identity = session([helper.make_node("Identity", ["x"], ["y"])], {})
    runs["onnxruntime Identity (copy)"] = partial(identity.run, None, {"x": x})
    runs["numpy uint8 to float32 scaled"] = partial(
        np.multiply, images, np.float32(1 / 255), dtype=np.float32
    )
    times, _ = _median_times(runs, repeats)
    result = {name: round(1000 * value, 1) for name, value in times.items()}
    print(json.dumps({"resize_ms": result}, indent=1), flush=True)
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
    parser.add_argument(
        "--n-images", type=int, default=0, help="first N test images (0: the whole test split)"
    )
    parser.add_argument("--n-calibration", type=int, default=128, help="training images")
    parser.add_argument("--dynamic", action="store_true", help="also time dynamic int8")
    parser.add_argument(
        "--int8-min-agreement",
        type=float,
        default=0.9,
        help="stages whose int8 graph agrees less with float32 (held-out images) stay float32",
    )
    parser.add_argument("--cache", type=Path, default=None, help="folder for prepared images")
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
        if "resize" in parts:
            results["resize_ms"] = bench_resize(args.repeats)
        if "backbones" in parts:
            results["backbones"] = bench_backbones(args.sizes.split(","), args.repeats, tmp)
        args.output.write_text(json.dumps(results, indent=1))
    args.output.write_text(json.dumps(results, indent=1))
    print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
