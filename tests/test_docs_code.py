"""Every Python block of README.md and docs/**/*.md runs as written.

Blocks are read with pytest-codeblocks' parser (``pytest_codeblocks.extract_from_file``), so
its HTML-comment markers apply; they are invisible on the rendered site and on GitHub:

* ``<!--pytest-codeblocks:cont-->`` before a block appends it to the previous block of the
  page: the chain runs as one program, in page order.
* ``<!--pytest.mark.skip(reason="needs a CUDA GPU")-->`` (any ``pytest.mark`` expression)
  before the first block of a chain marks it; a skip states its reason, which ``-ra`` prints.

Pages are found by a glob, so a new page's blocks are checked without editing this file.
Each block runs in a fresh namespace, in a temporary working directory (blocks may write
files), with warnings as errors as in the rest of the suite, with one BLAS thread and joblib's
threading backend (see the test). The docs contract is in
docs/contributing.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import joblib
import matplotlib as mpl
import pytest
from pytest_codeblocks import CodeBlock, extract_from_file
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])
PYTHON = {"python", "py", "python3"}


def _language(block: CodeBlock) -> str:
    # The info string may carry options after the language: "python title='x.py'".
    words = (block.syntax or "").replace("{", " ").replace(".", " ").split()
    return words[0] if words else ""


def _mark(expression: str, where: str) -> pytest.MarkDecorator:
    mark = eval(expression, {"__builtins__": {}, "pytest": pytest, "sys": sys})  # noqa: S307
    if not isinstance(mark, pytest.MarkDecorator):
        msg = f"{where}: the marker {expression!r} is not a pytest.mark expression"
        raise TypeError(msg)
    if mark.name in {"skip", "skipif"} and not mark.kwargs.get("reason"):
        msg = f"{where}: {expression!r} must state its reason=..."
        raise ValueError(msg)
    return mark


def _blocks() -> list[pytest.param]:  # type: ignore[valid-type]
    params = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for block in extract_from_file(page):
            if _language(block) not in PYTHON:
                continue
            where = f"{name}:{block.lineno}"
            marks = [_mark(m, where) for m in block.marks]
            params.append(pytest.param(block, where, id=where, marks=marks))
    return params


BLOCKS = _blocks()


def test_pages_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/tuning.md"} <= names
    pages = {where.rsplit(":", 1)[0] for where in (p.values[1] for p in BLOCKS)}
    assert {"README.md", "docs/index.md", "docs/tuning.md", "docs/sklearn.md"} <= pages


def test_markers_must_state_a_reason():
    with pytest.raises(ValueError, match="reason"):
        _mark("pytest.mark.skip()", "page.md:1")
    with pytest.raises(TypeError, match=r"not a pytest\.mark"):
        _mark("1 + 1", "page.md:1")
    assert _mark('pytest.mark.skip(reason="needs a GPU")', "page.md:1").name == "skip"


@pytest.mark.parametrize("block", [p.values[0] for p in BLOCKS], ids=[p.id for p in BLOCKS])
def test_docs_block_compiles(block: CodeBlock):
    # Skipped blocks too: at least their syntax is checked.
    compile(block.code, "<block>", "exec")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run in an empty folder, with the root logger and matplotlib backend restored after."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    backend = mpl.get_backend()
    mpl.use("Agg")
    yield tmp_path
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    mpl.use(backend)


@pytest.mark.parametrize(("block", "where"), BLOCKS)
def test_docs_block_runs(block: CodeBlock, where: str, isolated):
    # Padded so that a traceback's line numbers are the page's (for the chain's first block).
    code = compile("\n" * block.lineno + block.code, where.rsplit(":", 1)[0], "exec")
    # One BLAS/OpenMP thread: the blocks fit small models, and on a busy 2-core machine extra
    # threads spin (a logistic regression on digits took 9 s of CPU instead of 0.1 s). Jobs
    # (n_jobs=-1) run in threads: the same results without starting worker processes.
    with threadpool_limits(limits=1), joblib.parallel_config(backend="threading"):
        exec(code, {"__name__": "__main__"})  # noqa: S102
