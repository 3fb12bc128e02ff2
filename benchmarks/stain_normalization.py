"""Time the leukemia example's decoding + Macenko normalization, serial against threaded.

``examples.leukemia.transforms.load_images`` decodes, resizes and stain-normalizes every
image before training. Until this release it did so one image at a time with torch's
default intra-op threads; it now runs ``workers`` images at once, torch on one thread
each. This script times both ways side by side, interleaved, on the first ``--images``
training images of the grouped split, optionally while ``--busy`` other processes keep
the CPU busy (as on a machine shared with other work):

    python benchmarks/stain_normalization.py --data-root ../shared/data/all-leukemia
    python benchmarks/stain_normalization.py --data-root ../shared/data/all-leukemia --busy 2

It prints the CPU, then seconds per image for each way and their ratio. Both ways give
identical images (checked).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from examples.leukemia.data import load_rgb, scan_dataset, split_dataset
from examples.leukemia.transforms import fit_stain_normalizer, load_images, to_array

from _machine import machine_lines


def _spin(stop: multiprocessing.synchronize.Event) -> None:  # pragma: no cover - a load
    while not stop.is_set():
        sum(range(10_000))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print one line per way.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/all-leukemia"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="busy processes to run alongside")
    args = parser.parse_args(argv)
    if not args.data_root.is_dir():
        print(f"{args.data_root} is absent; nothing to time")
        return 0
    manifest = split_dataset(scan_dataset(args.data_root), seed=0)
    normalizer = fit_stain_normalizer(manifest, size=args.size)
    rows = manifest.select("train")[: args.images]
    subset = type(manifest)(manifest.root, tuple(rows), manifest.classes)
    for line in machine_lines():
        print(line)
    print(f"{len(rows)} images at {args.size} px, {args.busy} busy processes alongside")

    def serial() -> np.ndarray:
        """The previous release's loop: one image at a time, torch's default threads."""
        out = [
            normalizer.transform(to_array(load_rgb(manifest.root / row.path), args.size))[0]
            for row in rows
        ]
        return np.stack(out)

    def threaded() -> np.ndarray:
        return load_images(subset, size=args.size, normalizer=normalizer).images

    stop = multiprocessing.Event()
    load = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(args.busy)]
    for process in load:
        process.start()
    times: dict[str, list[float]] = {"serial": [], "threaded": []}
    results = {}
    try:
        for _ in range(args.repeats):
            for name, run in (("serial", serial), ("threaded", threaded)):
                start = time.perf_counter()
                results[name] = run()
                times[name].append((time.perf_counter() - start) / len(rows))
    finally:
        stop.set()
        for process in load:
            process.join()
    np.testing.assert_array_equal(results["serial"], results["threaded"])
    for name, values in times.items():
        print(f"{name:9s} {min(values):.4f} s/image (best of {args.repeats})")
    ratio = min(times["serial"]) / min(times["threaded"])
    print(f"serial / threaded: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
