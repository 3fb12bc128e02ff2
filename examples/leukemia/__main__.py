"""Command line of the leukemia example: ``run``, ``predict``, ``evaluate`` and ``export``.

python -m examples.leukemia run --data-root DIR --preset cpu --out DIR
torchrun --nproc-per-node N -m examples.leukemia run ...   (N training processes)
python -m examples.leukemia predict --model OUT/cascade IMAGES... [--output CSV] [--ray local]
python -m examples.leukemia evaluate --model OUT/cascade --data-root DIR
python -m examples.leukemia export --model OUT/cascade --out OUT/onnx [--quantize static]
python -m examples.leukemia audit --data-root DIR --preset cpu --out DIR
python -m examples.leukemia seeds --data-root DIR --preset cpu --seeds 0,1,2 --out DIR
python -m examples.leukemia certify RUN... --certify agreement=0.99 [--delta 0.05]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.metrics import get_scorer_names

from cascademl import _files
from cascademl._optional import require
from cascademl.exceptions import CascadeMLError

from . import distributed
from .audit import run_audit
from .budget import DEFAULT_TIME_BUDGETS
from .certification import certify_finished_run, parse_certify_spec
from .data import BadImageError, LeukemiaDataError, load_rgb
from .experiment import run_experiment
from .ordering import ORDER_RULES, RECOMMENDED
from .predict import Predictor, evaluate_folder, load_predictor, prepare_image, read_images
from .presets import PRESETS, get_preset
from .runlock import OutputFolderBusyError
from .seeds import (
    SUMMARY_MARKDOWN,
    SeedRunError,
    run_seeds,
    seeds_markdown,
    settings_differences,
)
from .training import TrainingError

logger = logging.getLogger("examples.leukemia")
_LISTED = 5  # file names a warning lists


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.leukemia",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the whole experiment: split, train, tune, test, report")
    _add_run_options(run)
    audit = sub.add_parser(
        "audit",
        help="the model that sees no cell: colour statistics on the run's split (seconds)",
    )
    audit.add_argument("--data-root", required=True, type=Path, help="Kaggle ALL folder")
    audit.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="settings (cpu)")
    audit.add_argument("--out", required=True, type=Path, help="results folder (as for run)")
    audit.add_argument("--seed", type=int, default=None, help="seed (overrides the preset's)")
    audit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset setting (repeatable), as for run",
    )
    audit.add_argument("--skip-bad", action="store_true", help="skip unreadable images")

    seeds = sub.add_parser(
        "seeds",
        help="one run per seed into OUT/seed-N (finished runs reused), and their summary",
    )
    seeds.add_argument("--data-root", required=True, type=Path, help="Kaggle ALL folder")
    seeds.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="settings (cpu)")
    seeds.add_argument("--out", required=True, type=Path, help="parent of the seed-N folders")
    seeds.add_argument(
        "--seeds", required=True, type=_seed_list, metavar="N,N,...", help="e.g. 0,1,2"
    )
    seeds.add_argument("--device", default="cpu", help="torch device, as for run")
    seeds.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset setting (repeatable), as for run",
    )
    seeds.add_argument("--skip-bad", action="store_true", help="skip unreadable images")
    seeds.add_argument(
        "--max-cost-ratio", type=_cost_ratio, default=0.35, help="cost budget, as for run (0.35)"
    )
    seeds.add_argument("--scoring", type=_scorer_name, default="neg_log_loss", help="as for run")
    seeds.add_argument(
        "--summarize-only",
        action="store_true",
        help="only summarize the finished runs; fail on a seed without one",
    )
    seeds.add_argument("--no-progress", action="store_true", help="no progress bars")

    _add_certify_command(sub, run)
    _add_export_parser(sub)

    predict = sub.add_parser("predict", help="label image files or folders with a saved cascade")
    predict.add_argument("--model", required=True, type=Path, help="OUT/cascade of a run")
    predict.add_argument("images", nargs="+", type=Path, help="image files or folders")
    predict.add_argument("--output", type=Path, help="CSV file (default: stdout)")
    _add_predict_options(predict)

    evaluate = sub.add_parser("evaluate", help="metrics of a saved cascade on a labelled folder")
    evaluate.add_argument("--model", required=True, type=Path, help="OUT/cascade of a run")
    evaluate.add_argument("--data-root", required=True, type=Path, help="labelled folder")
    evaluate.add_argument(
        "--output",
        type=Path,
        help="JSON file (default: MODEL/../evaluate-<data folder name>.json, so that "
        "evaluating another folder keeps the first one's results)",
    )
    evaluate.add_argument("--device", default=None, help="torch device (default: as saved)")
    evaluate.add_argument("--skip-bad", action="store_true", help="skip unreadable images")
    evaluate.add_argument(
        "--map",
        dest="class_map",
        action="append",
        default=[],
        metavar="MODEL[,MODEL...]=FOLDER",
        help="score on the folder's own classes: each model class counts as the folder "
        "class it maps to, e.g. --map Benign=Healthy --map Early,Pre,Pro=ALL (repeatable)",
    )
    return parser


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--data-root", required=True, type=Path, help="Kaggle ALL folder")
    run.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="settings (cpu)")
    run.add_argument("--out", required=True, type=Path, help="results folder")
    run.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N, mps or auto")
    run.add_argument("--seed", type=int, default=None, help="seed (overrides the preset's)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset setting, e.g. epochs=3 or resnet50.lr=5e-4 (repeatable)",
    )
    run.add_argument(
        "--no-pretrained",
        action="store_true",
        help="train from scratch (the cpu and smoke presets always do)",
    )
    run.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=_name_and_path,
        metavar="NAME=PATH",
        help="local pretrained weights for a backbone (timm or display name), for offline use",
    )
    run.add_argument(
        "--download-weights",
        action="store_true",
        help="let timm download ImageNet weights that are neither given nor cached "
        "(pretrained presets; without it such a run stops at once and says what is missing)",
    )
    run.add_argument("--skip-bad", action="store_true", help="skip unreadable images, list them")
    run.add_argument(
        "--max-cost-ratio",
        type=_cost_ratio,
        default=0.35,
        help="cost budget of the tuned cascade, share of running all backbones (0.35)",
    )
    run.add_argument(
        "--order",
        choices=(RECOMMENDED, *ORDER_RULES),
        default=RECOMMENDED,
        help="stage order of the saved model: the one whose tuned cascade scores best on "
        "validation (recommended, the default), by validation accuracy as in the paper "
        "(accuracy), cheapest first (cost), or the paper's order keeping only the backbones "
        "that pay on validation (selected); the report shows all three",
    )
    run.add_argument(
        "--scoring",
        type=_scorer_name,
        default="neg_log_loss",
        help="what the thresholds optimise on validation: a scikit-learn scorer name such as "
        "neg_log_loss (default) or accuracy",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--time-budget",
        type=_minutes,
        default=None,
        metavar="MINUTES",
        help="plan epochs and input sizes on this machine so the whole run fits MINUTES "
        "(default: 60 for the cpu preset, none for the others; 0: the preset's fixed "
        "epochs; --set epochs=N also fixes them)",
    )


def _add_export_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="the cascade as ONNX graphs, which predict and evaluate take as --model "
        "(needs cascademl[onnx]; loading them needs no torch)",
    )
    export.add_argument("--model", required=True, type=Path, help="OUT/cascade of a run")
    export.add_argument("--out", required=True, type=Path, help="the exported folder")
    export.add_argument(
        "--quantize", choices=("dynamic", "static"), help="int8 graphs (default: float32)"
    )
    export.add_argument(
        "--check",
        nargs="+",
        type=Path,
        default=[],
        metavar="IMAGES",
        help="images or folders to compare the graphs with the cascade on (default: 16 "
        "random images); in class folders, they also give int8's accuracy change",
    )
    export.add_argument(
        "--calibration",
        nargs="+",
        type=Path,
        default=[],
        metavar="IMAGES",
        help="images or folders for --quantize static (apart from --check)",
    )
    export.add_argument(
        "--keep-float32",
        nargs="+",
        default=[],
        metavar="STAGE",
        help="stages whose graphs stay float32 with --quantize (those whose int8 labels "
        "agree least with float32 in a first export's report)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _add_predict_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("--device", default=None, help="torch device (default: as saved)")
    predict.add_argument("--skip-bad", action="store_true", help="skip unreadable images")
    predict.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster (its address, e.g. ray://head:10001, or auto) or on a "
        "local one (local); needs cascademl[ray], and every node must read --model and the "
        "images",
    )
    predict.add_argument(
        "--ray-actors", type=int, default=1, metavar="N", help="actors with --ray (1)"
    )


def _add_certify_command(sub: Any, run: argparse.ArgumentParser) -> None:
    """``--certify``/``--delta`` on ``run``, and the ``certify`` command."""
    _add_certify_options(run)
    certify = sub.add_parser(
        "certify",
        help="certify finished runs' saved order on validation from their probabilities "
        "(no model, no training), and check each certificate on test",
    )
    certify.add_argument("runs", nargs="+", type=Path, help="finished run folders (OUT)")
    _add_certify_options(certify, required=True)


def _add_certify_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--certify",
        action="append",
        default=[],
        required=required,
        type=parse_certify_spec,
        metavar="GUARANTEE=TARGET",
        help="certify on the validation split: agreement=0.99 (agrees with the last stage), "
        "accuracy=0.95 or selective=0.97 (accuracy of the decided images, with the reject "
        "option); repeatable; the first certified one routes the saved model",
    )
    parser.add_argument(
        "--delta",
        type=_unit,
        default=0.05,
        help="allowed probability that a certificate is wrong (0.05: 95%% confidence)",
    )


def _unit(value: str) -> float:
    """Parse ``--delta``: a number in (0, 1)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number < 1:
        msg = f"expected a number in (0, 1), e.g. 0.05; got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return number


def _name_and_path(value: str) -> tuple[str, str]:
    """Parse ``--checkpoint NAME=PATH``."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        msg = f"expected NAME=PATH (e.g. resnet50=/path/to/weights.pth), got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return name, path


def _cost_ratio(value: str) -> float:
    """Parse ``--max-cost-ratio``: a share of running every backbone, in (0, 1]."""
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    if not 0 < ratio <= 1:
        msg = (
            f"expected a share of the cost of running every backbone in (0, 1] (e.g. 0.35; "
            f"1 sets no budget), got {value!r}"
        )
        raise argparse.ArgumentTypeError(msg)
    return ratio


def _scorer_name(value: str) -> str:
    """Parse ``--scoring``: a scikit-learn scorer name, checked before any training."""
    names = get_scorer_names()
    if value not in names:
        close = difflib.get_close_matches(value, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        msg = (
            f"{value!r} is not a scikit-learn scorer name{hint}; for example neg_log_loss, "
            "accuracy, balanced_accuracy or f1_macro (sklearn.metrics.get_scorer_names())"
        )
        raise argparse.ArgumentTypeError(msg)
    return value


def _seed_list(value: str) -> list[int]:
    """Parse ``--seeds 0,1,2``."""
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        msg = f"expected comma-separated integers (e.g. 0,1,2), got {value!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _expand(paths: Sequence[Path]) -> list[Path]:
    suffixes = {suffix.lower() for suffix in Image.registered_extensions()}
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes))
        elif path.is_file():
            files.append(path)
        else:
            msg = f"{path}: no such file or folder"
            raise FileNotFoundError(msg)
    return files


def _minutes(value: str) -> float:
    try:
        minutes = float(value)
    except ValueError:
        minutes = math.nan
    if not minutes >= 0 or math.isinf(minutes):
        msg = f"--time-budget must be a number of minutes >= 0, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return minutes


def _time_budget(args: argparse.Namespace) -> float | None:
    """The run's time budget in minutes: given, or the preset's default; ``None``: off."""
    fixed = [
        o for o in args.overrides if o.partition("=")[0].strip().rsplit(".", 1)[-1] == "epochs"
    ]
    minutes = args.time_budget
    if fixed:
        if minutes:
            logger.warning("%s: fixed epochs, --time-budget %g ignored", fixed[0], minutes)
        return None
    if minutes is None:
        minutes = DEFAULT_TIME_BUDGETS.get(args.preset)
    return minutes or None


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_pretrained:
        overrides.append("pretrained=false")
    preset = get_preset(args.preset, overrides)
    checkpoints = dict(args.checkpoint)
    # Under torchrun with several processes: join the group, train on this rank's device.
    with distributed.process_group(args.device) as device:
        summary = run_experiment(
            args.data_root,
            preset,
            args.out,
            device=device,
            skip_bad=args.skip_bad,
            checkpoints=checkpoints,
            allow_download=args.download_weights,
            max_cost_ratio=args.max_cost_ratio,
            order=args.order,
            scoring=args.scoring,
            progress=not args.no_progress,
            time_budget=_time_budget(args),
            certify=args.certify,
            delta=args.delta,
        )
    if not distributed.from_environment().main:
        return 0  # rank 0 prints the summary
    print(f"order:            {' -> '.join(summary.order)}")
    print(f"thresholds:       {', '.join(f'{t:.4g}' for t in summary.thresholds)}")
    print(f"cascade accuracy: {summary.test_accuracy:.2%} (test), MCC {summary.test_mcc:.4f}")
    print(f"best backbone:    {summary.best_single[0]} {summary.best_single[1]:.2%} (test)")
    print(f"mean cost:        {summary.cost_ratio_all:.1%} of running all backbones")
    print(f"report:           {summary.out / 'report.md'} ({summary.seconds / 60:.1f} min)")
    return 0


def _check_output(path: Path | None) -> None:
    """Fail before any work when ``path`` cannot be written (a folder, no such folder...)."""
    if path is None:
        return
    if path.is_dir():
        msg = f"--output {path} is a folder; give a file name"
        raise LeukemiaDataError(msg)
    parent = path.parent
    if not parent.is_dir():
        msg = f"--output {path}: the folder {parent} does not exist"
        raise LeukemiaDataError(msg)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"--output {path}: the folder {parent} is not writable"
        raise LeukemiaDataError(msg)


def _cmd_audit(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    preset = get_preset(args.preset, overrides)
    result = run_audit(args.data_root, preset, args.out, skip_bad=args.skip_bad)
    print(f"colour statistics (no cell), {preset.name} preset, seed {preset.seed}:")
    for name, row in result["colour_baseline"].items():
        star = " (the backbones' preprocessing)" if name == result["trained_variant"] else ""
        print(
            f"  {name:<20} validation {row['val_accuracy']:.2%}  test {row['test_accuracy']:.2%}"
            f"  MCC {row['test_mcc']:.4f}{star}"
        )
    print(f"saved to {args.out / 'audit.md'} ({result['seconds']:.0f} s)")
    return 0


def _cmd_seeds(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset, args.overrides)

    def run(seed: int, folder: Path) -> None:
        if args.summarize_only:
            msg = f"{folder}: no finished run for seed {seed} (--summarize-only runs nothing)"
            raise SeedRunError(msg)
        run_experiment(
            args.data_root,
            preset.with_overrides(seed=seed),
            folder,
            device=args.device,
            skip_bad=args.skip_bad,
            max_cost_ratio=args.max_cost_ratio,
            scoring=args.scoring,
            progress=not args.no_progress,
        )

    def differences(seed: int, folder: Path) -> list[str]:
        asked = asdict(preset.with_overrides(seed=seed))
        return settings_differences(
            folder, asked, max_cost_ratio=args.max_cost_ratio, scoring=args.scoring
        )

    # --summarize-only summarizes the runs that are there, whatever they were made with.
    summary = run_seeds(args.seeds, args.out, run, None if args.summarize_only else differences)
    print(seeds_markdown(summary))
    print(f"saved to {args.out / SUMMARY_MARKDOWN}")
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    for run in args.runs:
        results = certify_finished_run(run, args.certify, delta=args.delta)
        print(f"{run}:")
        for r in results:
            c = r.certificate
            if c is None:
                print(f"  {r.summary}")
                continue
            status = "certified" if c.certified else "NOT certified"
            print(
                f"  {r.spec} (delta {c.delta:g}): {status}, bound {c.bound:.4f} on "
                f"{c.n_calibration} validation images; test agreement {r.test_agreement:.2%}, "
                f"accuracy {r.test_accuracy:.2%}, coverage {r.test_coverage:.1%}, cost "
                f"{r.test_cost_share_last:.1%} of the last stage"
            )
        print(f"  saved to {run / 'certification.json'} (and metrics.json, report.md)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    _check_output(args.output)
    predictor = load_predictor(args.model, device=args.device)
    files = _expand(args.images)
    if not files:
        msg = (
            f"no image files in {', '.join(str(p) for p in args.images)} (looked for the "
            "suffixes Pillow reads, such as .jpg, .png, .tif and .bmp, in folders and below)"
        )
        raise LeukemiaDataError(msg)
    good: list[Path] = []
    for path in files:
        try:
            load_rgb(path)
        except LeukemiaDataError as exc:
            if not args.skip_bad:
                raise
            logger.warning("skipped %s", exc)
            continue
        good.append(path)
    if not good:
        msg = f"all {len(files)} image files were unreadable (skipped with --skip-bad)"
        raise LeukemiaDataError(msg)
    if args.ray is not None:
        rows, fallbacks = _predict_on_ray(args, good, predictor)
    else:
        x, fallbacks = read_images(good, predictor)
        routed = predictor.cascade.route(x)
        rows = [
            (
                routed.labels[i],
                float(routed.proba[i].max()),
                routed.stage_names[int(routed.exit_stage[i])],
            )
            for i in range(len(good))
        ]
    if fallbacks:
        logger.warning(
            "stain normalization fell back to the original image for %d of %d images: %s",
            len(fallbacks),
            len(good),
            ", ".join(fallbacks[:_LISTED]) + (" ..." if len(fallbacks) > _LISTED else ""),
        )
    with (
        _files.atomic_open(args.output, "w", newline="")
        if args.output
        else contextlib.nullcontext(sys.stdout)
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "confidence", "exit_stage"])
        for path, (label, confidence, stage) in zip(good, rows, strict=True):
            writer.writerow([str(path), label, f"{confidence:.6f}", stage])
    return 0


class _PrepareImages:
    """Ray Data batch function: the example's preprocessing of ``predict`` (picklable)."""

    def __init__(self, predictor: Predictor) -> None:
        self.size = predictor.cache_size
        self.normalizer = predictor.normalizer
        self.mask = predictor.mask_bottom

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        prepared = [
            prepare_image(Path(p), self.size, self.normalizer, self.mask) for p in batch["path"]
        ]
        return {
            "index": batch["index"],
            "path": batch["path"],
            "image": np.stack([array for array, _ in prepared]),
            "stain_fallback": np.array([fell_back for _, fell_back in prepared]),
        }


def _predict_on_ray(
    args: argparse.Namespace, paths: list[Path], predictor: Predictor
) -> tuple[list[tuple[Any, float, str]], list[str]]:
    """Route ``paths`` with cascademl.ray_data: the rows of the CSV, in input order."""
    from cascademl.ray_data import route_dataset  # noqa: PLC0415 - optional extra

    ray = require("ray", "ray", purpose="predict --ray")
    started = not ray.is_initialized()
    if started and args.ray == "local":
        # The local workers import this example from the repository root, as we do. A
        # cluster's nodes need the example importable (installed, or on their PYTHONPATH).
        root = str(Path(__file__).resolve().parents[2])
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        ray.init(include_dashboard=False, runtime_env={"env_vars": env})
    elif started:
        ray.init(args.ray)
    try:
        items = [{"index": i, "path": str(p)} for i, p in enumerate(paths)]
        images = ray.data.from_items(items).map_batches(_PrepareImages(predictor), batch_size=16)
        out = route_dataset(
            images,
            args.model.resolve(),
            passthrough=["index", "path", "stain_fallback"],
            concurrency=args.ray_actors,
            proba=True,
            device=args.device,
        )
        found = sorted(out.take_all(), key=lambda r: int(r["index"]))
    finally:
        if started:
            ray.shutdown()
    if [int(r["index"]) for r in found] != list(range(len(paths))):
        msg = f"the Ray run returned {len(found)} rows for {len(paths)} images"
        raise RuntimeError(msg)
    fallbacks = [str(r["path"]) for r in found if r["stain_fallback"]]
    rows = [(r["label"], float(np.max(r["proba"])), str(r["stage_name"])) for r in found]
    return rows, fallbacks


def _evaluate_output(model: Path, data_root: Path) -> Path:
    """``MODEL/../evaluate-<data folder>.json``: one file per evaluated folder."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", data_root.resolve().name).strip("._") or "data"
    return model.parent / f"evaluate-{name}.json"


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model  # noqa: PLC0415 - only this command needs cascademl.onnx

    report = export_model(
        args.model,
        args.out,
        quantize=args.quantize,
        check=_expand(args.check),
        calibration=_expand(args.calibration),
        keep_float32=args.keep_float32,
        overwrite=args.overwrite,
    )
    print(f"exported {len(report.stages)} stages to {report.folder} (opset {report.opset})")
    for stage in report.stages:
        int8 = (
            ""
            if stage.int8_label_agreement is None
            else f"  int8 labels as float32 {stage.int8_label_agreement:.0%}"
        )
        print(f"  {stage.name:<16} {stage.file}  max |p - p_torch| {stage.max_abs_diff:.2g}{int8}")
    print(
        f"on {report.n_check} {'random' if report.synthetic_check else 'given'} images: "
        f"labels {report.label_agreement:.2%} and exits {report.exit_agreement:.2%} as the "
        "torch cascade's"
    )
    q = report.quantization
    if q is not None:
        change = f", accuracy {q.accuracy_change:+.2f} points" if q.accuracy_change else ""
        print(
            f"int8 ({q.mode}): labels {q.label_agreement:.2%} and exits "
            f"{q.exit_agreement:.2%} as float32's{change}"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    output = args.output or _evaluate_output(args.model, args.data_root)
    _check_output(output)
    result = evaluate_folder(
        args.model,
        args.data_root,
        skip_bad=args.skip_bad,
        device=args.device,
        class_map=args.class_map,
    )
    _files.write_text(output, json.dumps(result, indent=2))
    m = result["metrics"]
    print(f"{result['n_images']} images from {result['data_root']}")
    seen = result["input"]
    print(
        f"source sizes {seen['source_sizes']}, resized to {seen['resized_to']} as in "
        f"training, then per stage {seen['stage_input']}"
    )
    if result["class_map"]:
        print(f"classes mapped: {result['class_map']}")
    print(
        f"accuracy {m['accuracy']:.4f}  MCC {m['mcc']:.4f}  kappa {m['kappa']:.4f}  "
        f"error rate {m['error_rate']:.4f}"
    )
    for i, name in enumerate(m["classes"]):
        print(
            f"  {name:<8} precision {m['precision'][i]:.3f}  recall {m['recall'][i]:.3f}  "
            f"F1 {m['f1'][i]:.3f}"
        )
    print(f"exits per stage: {result['exit_counts']}")
    print(f"saved to {output}")
    return 0


def _check_processes(command: str) -> None:
    """Refuse to run a command other than ``run`` on several torchrun processes."""
    if command != "run" and distributed.from_environment().distributed:
        msg = (
            f"{command!r} runs in one process; of the commands, only 'run' trains "
            "on several processes under torchrun (start it with --nproc-per-node 1)"
        )
        raise ValueError(msg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    try:
        if not distributed.from_environment().main:
            level = max(level, logging.WARNING)  # rank 0 logs the run; the others warn
    except ValueError:
        pass  # a broken torchrun environment is reported by the command itself
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    commands = {
        "run": _cmd_run,
        "audit": _cmd_audit,
        "seeds": _cmd_seeds,
        "certify": _cmd_certify,
        "predict": _cmd_predict,
        "evaluate": _cmd_evaluate,
        "export": _cmd_export,
    }
    try:
        _check_processes(args.command)
        return commands[args.command](args)
    except (
        LeukemiaDataError,
        OutputFolderBusyError,
        TrainingError,
        CascadeMLError,
        FileNotFoundError,
        OSError,
        KeyError,
        ValueError,
    ) as exc:
        # The message names the file, setting or value at fault; --verbose adds the traceback.
        hint = ""
        if isinstance(exc, BadImageError) and not getattr(args, "skip_bad", True):
            hint = " (--skip-bad skips such files and lists them)"
        logger.error("%s%s", exc, hint)  # noqa: TRY400
        logger.debug("traceback", exc_info=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
