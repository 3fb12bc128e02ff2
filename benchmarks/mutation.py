"""Mutation testing of the modules that decide results, one module at a time, with mutmut.

For each module this script makes a working copy of ``src/``, ``tests/`` and
``pyproject.toml`` (mutmut reads its settings from the ``pyproject.toml`` of the folder it
runs in, and writes ``mutants/`` there), adds a ``[tool.mutmut]`` section that mutates that
module only and selects its fast tests, runs ``nice -n 10 mutmut run``, and prints the
counts with the score ``killed / (total - equivalent)``. The equivalent mutants are listed,
with why, in docs/benchmarks/mutation.md; pass their names with ``--equivalent`` (or keep
them in ``benchmarks/mutation_equivalent.txt``) to have them left out of the score.

mutmut 3 forks one process per mutant from a process that has imported the tests, and runs
only the tests that reach the mutated function, so a module takes minutes, not hours. It
is too slow for CI all the same; run it by hand::

    python benchmarks/mutation.py _routing voting policies --max-children 2
    python benchmarks/mutation.py --list

mutmut runs under ``nice -n 10`` (the script adds it). ``--workdir DIR`` keeps the working
copies; ``--survivors`` then reruns only the mutants that survived there, with the current
tests (after new tests were written), instead of every mutant again.

Needs the ``mutation`` dependency group (``pip install --group mutation .``, or
``pip install mutmut``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.txt"

_CERTIFY_TESTS = ["tests/test_certify.py"]
_TUNING_TESTS = [
    "tests/test_tuning.py",
    "tests/test_tuning_weights.py",
    "tests/test_tuning_combine.py",
]

# module key -> (files to mutate, fast tests that exercise them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "_routing": (
        ["src/cascademl/_routing.py"],
        ["tests/test_routing.py", "tests/test_voting.py", "tests/test_policies.py"],
    ),
    "voting": (
        ["src/cascademl/voting.py"],
        ["tests/test_voting.py", "tests/test_routing.py", "tests/test_policies.py"],
    ),
    "policies": (
        ["src/cascademl/policies.py"],
        ["tests/test_policies.py", "tests/test_routing.py", "tests/test_voting.py"],
    ),
    "_io_format": (
        ["src/cascademl/_io_format.py"],
        ["tests/test_io.py", "tests/test_io_safety.py"],
    ),
    "io": (["src/cascademl/io.py"], ["tests/test_io.py", "tests/test_io_safety.py"]),
    "_engine": (
        ["src/cascademl/_engine.py"],
        ["tests/test_engine.py", "tests/test_cascade.py", "tests/test_inference.py"],
    ),
    "abstention": (["src/cascademl/abstention.py"], ["tests/test_abstention.py"]),
    "tuning._search": (
        ["src/cascademl/tuning/_search.py"],
        _TUNING_TESTS,
    ),
    "tuning._thresholds": (
        ["src/cascademl/tuning/_thresholds.py"],
        _TUNING_TESTS,
    ),
    "certify._core": (
        ["src/cascademl/certify/_core.py"],
        [*_CERTIFY_TESTS, "tests/test_certify_core.py"],
    ),
    "certify._stats": (["src/cascademl/certify/_stats.py"], _CERTIFY_TESTS),
    "certify._apply": (["src/cascademl/certify/_apply.py"], _CERTIFY_TESTS),
    "certify._certificate": (["src/cascademl/certify/_certificate.py"], _CERTIFY_TESTS),
}

# Tests left out of a module's run, with why. The engine's mutants run every test that
# reaches the engine; the two that route real timm models through it take 22 of the 30
# seconds a surviving mutant costs, and the routing they check is checked on the same
# inputs by table stages (test_inference's naive reference, test_engine's recorder stages).
DESELECT: dict[str, list[str]] = {
    "_engine": [
        "tests/test_inference.py::test_timm_cascade_streams_like_the_naive_reference",
        "tests/test_inference.py::test_timm_cascade_route_on_a_dataloader_matches_in_memory_route",
    ],
}

#: What is never copied into a working copy.
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")

STATUSES = (
    "killed",
    "survived",
    "timeout",
    "suspicious",
    "no tests",
    "skipped",
    "segfault",
    "not checked",
)


# Written into the working copy's tests: a failing example ends the run at once (no
# shrinking, which can outlast mutmut's timeout and turn a kill into a "timeout"), and the
# same examples every run (derandomized, no example database), so a rerun is comparable.
_HYPOTHESIS_PROFILE = """\
from hypothesis import Phase, settings

settings.register_profile(
    "mutation", phases=[Phase.explicit, Phase.generate], derandomize=True, database=None
)
settings.load_profile("mutation")
"""


def _copy_tests(workdir: Path) -> None:
    if (workdir / "tests").exists():
        shutil.rmtree(workdir / "tests")
    shutil.copytree(ROOT / "tests", workdir / "tests", ignore=_IGNORE)
    conftest = workdir / "tests" / "conftest.py"
    if conftest.exists():  # pragma: no cover - the project has none today
        msg = f"{conftest} exists; merge the mutation profile into it by hand"
        raise SystemExit(msg)
    conftest.write_text(_HYPOTHESIS_PROFILE, encoding="utf-8")


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _prepare(workdir: Path, files: list[str], tests: list[str], deselect: list[str]) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    shutil.copytree(ROOT / "src", workdir / "src", ignore=_IGNORE)
    _copy_tests(workdir)
    settings = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    settings = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", settings)
    settings += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list(files)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        # Fast tests only; no doctests of the copied sources; no cache in the copy.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not slow and not gpu '
        'and not data", "-o", "addopts=--strict-markers --import-mode=importlib"'
        + "".join(f', "--deselect", {json.dumps(t)}' for t in deselect)
        + "]\n"
        'process_isolation = "forkserver"\n'
    )
    (workdir / "pyproject.toml").write_text(settings, encoding="utf-8")


def _counts(workdir: Path) -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    by_status: dict[str, list[str]] = {s: [] for s in STATUSES}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and status in by_status:
            by_status[status].append(name)
    return by_status


def _sample(files: list[str], size: int, seed: int) -> set[str]:
    """A seeded uniform sample of ``size`` of the mutants mutmut makes of ``files``."""
    from mutmut.mutation.file_mutation import mutate_file_contents  # noqa: PLC0415

    names = []
    for file in files:
        dotted = file.removeprefix("src/").removesuffix(".py").replace("/", ".")
        code = (ROOT / file).read_text(encoding="utf-8")
        names += [f"{dotted}.{n}" for n in mutate_file_contents(file, code).mutant_names]
    return set(random.Random(seed).sample(sorted(names), min(size, len(names))))


def _interval(killed: int, n: int) -> list[float]:
    """Exact (Clopper-Pearson) 95% interval of a score of ``killed`` out of ``n``."""
    from certify_validity import clopper_pearson  # noqa: PLC0415 - a sibling benchmark script

    if n == 0:
        return [math.nan, math.nan]
    return [round(bound, 4) for bound in clopper_pearson(killed, n)]


def _equivalent(extra: list[str]) -> set[str]:
    names = set(extra)
    if EQUIVALENT_FILE.exists():
        for line in EQUIVALENT_FILE.read_text(encoding="utf-8").splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                names.add(name)
    return names


def run_module(
    key: str,
    base: Path,
    max_children: int,
    equivalent: set[str],
    *,
    survivors: bool = False,
    timeouts: bool = False,
    timeout_multiplier: float | None = None,
    sample: int | None = None,
    seed: int = 0,
    score_only: bool = False,
) -> dict[str, object]:
    """Run mutmut on one module; return its counts, score and surviving mutants.

    With ``survivors``, reuse the working copy of an earlier run of the module: copy the
    current tests into it and rerun only the mutants that survived there (or that no test
    reached). Tests are only ever added, so a mutant killed before stays killed. With
    ``timeouts`` too, the mutants that timed out are rerun as well (a timeout counts as
    killed, but a tight ``timeout_multiplier`` on a busy machine can cut a survivor short).

    With ``sample``, only a seeded uniform sample of that many of the module's mutants is
    run and scored (an estimate, with its exact 95% interval); a working copy that already
    holds results is kept, and only the sampled mutants it has not checked are run. With
    ``score_only``, nothing runs: the working copy's results are scored as they stand
    (with the equivalents as listed now).
    """
    files, tests = MODULES[key]
    workdir = base / key
    chosen = _sample(files, sample, seed) if sample is not None else None
    rerun: list[str] = []
    selective = score_only or survivors or chosen is not None  # an empty list runs nothing
    if score_only:
        if not (workdir / "mutants").is_dir():
            msg = f"--score-only needs the results of an earlier run in {workdir}"
            raise SystemExit(msg)
    elif survivors and (workdir / "mutants").is_dir():
        before = _counts(workdir)
        again = before["survived"] + before["no tests"] + before["not checked"]
        if timeouts:
            again += before["timeout"]
        rerun = [n for n in again if n not in equivalent and (chosen is None or n in chosen)]
        _copy_tests(workdir)
    elif chosen is not None and (workdir / "mutants").is_dir():
        rerun = sorted(set(_counts(workdir)["not checked"]) & chosen)
    else:
        _prepare(workdir, files, tests, DESELECT.get(key, []))
        rerun = sorted(chosen) if chosen is not None else []
    if timeout_multiplier is not None and not score_only:  # [tool.mutmut] comes last
        path = workdir / "pyproject.toml"
        settings = re.sub(r"(?m)^timeout_multiplier = .*\n", "", path.read_text(encoding="utf-8"))
        settings += f"timeout_multiplier = {float(timeout_multiplier)}\n"
        path.write_text(settings, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(workdir / "src")  # the copy, never an installed cascademl
    command = ["nice", "-n", "10", sys.executable, "-m", "mutmut", "run"]
    command += ["--max-children", str(max_children), *rerun]
    start = time.perf_counter()
    if rerun or not selective:
        subprocess.run(command, cwd=workdir, env=env, check=False, stdout=subprocess.DEVNULL)  # noqa: S603
    seconds = time.perf_counter() - start
    by_status = _counts(workdir)
    if chosen is not None:
        by_status = {s: [n for n in names if n in chosen] for s, names in by_status.items()}
    total = sum(len(v) for v in by_status.values())
    # An equivalent mutant leaves the score whatever mutmut said of it (a slow equivalent
    # can time out, which mutmut counts as killed).
    equiv = sorted(n for names in by_status.values() for n in names if n in equivalent)
    survived = [n for n in by_status["survived"] + by_status["no tests"] if n not in equivalent]
    killed = sum(n not in equivalent for n in by_status["killed"] + by_status["timeout"])
    denominator = total - len(equiv)
    return {
        "module": key,
        "total": total,
        "killed": killed,
        "timeouts": sum(n not in equivalent for n in by_status["timeout"]),
        "survived": len(survived),
        "equivalent": len(equiv),
        "score": killed / denominator if denominator else float("nan"),
        "seconds": round(seconds, 1),
        "survivors": sorted(survived),
        "sample": None if chosen is None else {"size": len(chosen), "seed": seed},
        "interval_95": None if chosen is None else _interval(killed, denominator),
        "other": {s: len(v) for s, v in by_status.items() if s not in {"killed", "survived"}},
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the modules in order, print one line per module and a JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate: {', '.join(MODULES)}")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run at once")
    parser.add_argument("--workdir", type=Path, help="where the copies go (default: a temp dir)")
    parser.add_argument("--equivalent", nargs="*", default=[], help="equivalent mutant names")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="rerun only the survivors of an earlier run in --workdir, with the current tests",
    )
    parser.add_argument(
        "--timeouts",
        action="store_true",
        help="with --survivors, also rerun the mutants that timed out",
    )
    parser.add_argument(
        "--timeout-multiplier",
        type=float,
        help="mutmut's timeout_multiplier (default 15): lower it where mutants loop forever",
    )
    parser.add_argument(
        "--sample",
        type=int,
        help="run and score only a seeded uniform sample of this many mutants (an estimate)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="run nothing: score the results already in --workdir (with today's equivalents)",
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.list or not args.modules:
        for key, (files, tests) in MODULES.items():
            print(f"{key:20s} {' '.join(files)}  <-  {' '.join(tests)}")
            for test in DESELECT.get(key, []):
                print(f"{'':20s}   left out: {test}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    base = args.workdir or Path(tempfile.mkdtemp(prefix="cascademl-mutation-"))
    equivalent = _equivalent(args.equivalent)
    results = []
    for key in args.modules:
        result = run_module(
            key,
            base,
            args.max_children,
            equivalent,
            survivors=args.survivors,
            timeouts=args.timeouts,
            timeout_multiplier=args.timeout_multiplier,
            sample=args.sample,
            seed=args.seed,
            score_only=args.score_only,
        )
        results.append(result)
        print(
            f"{key}: {result['killed']} killed / ({result['total']} total - "
            f"{result['equivalent']} equivalent) = {result['score']:.1%}; "
            f"{result['survived']} survived; {result['seconds']} s; other {result['other']}"
            f"; 95% interval {result['interval_95']}; sample {result['sample']}"
        )
        for name in result["survivors"]:  # type: ignore[attr-defined]
            print(f"    survived: {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
