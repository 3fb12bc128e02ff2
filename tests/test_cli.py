import subprocess
import sys

import pytest

from cascademl.__main__ import main, run_demo


def test_demo_figures_are_consistent():
    figures = run_demo(threshold=0.9, seed=0)
    exits = figures["exit_counts"]
    calls = figures["stage_calls"]
    assert sum(exits.values()) == figures["n_test"]
    assert calls["logreg"] == figures["n_test"]
    assert calls["svm"] == figures["n_test"] - exits["logreg"]
    assert 0.0 < figures["calls_saved"] < 1.0
    assert figures["accuracy"] > 0.95
    assert -1.0 <= figures["mcc"] <= 1.0
    # Certified on one half of the held-out quarter, checked on the other half.
    assert "agrees with forest on at least 90.0%" in figures["certificate"]
    assert figures["certified_agreement"] >= 0.9
    assert 1 / 3 - 1e-9 <= figures["certified_calls_share"] <= 1.0


def test_main_prints_the_table(capsys):
    assert main(["demo", "--threshold", "0.95", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("cascade accuracy", "cascade MCC", "stage calls saved", "forest", "certified "):
        assert text in out


def test_unknown_command_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == 2


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "cascademl", "demo", "--threshold", "0.5"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cascade accuracy" in proc.stdout


def test_version_flag_prints_the_package_version(capsys):
    import platform

    import cascademl

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == f"cascademl {cascademl.__version__} (Python {platform.python_version()})"


def test_package_metadata_takes_its_version_from_the_package():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "src/cascademl/__init__.py"
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert set(pyproject["project"]["urls"]) >= {"Homepage", "Documentation", "Changelog", "Issues"}
    license_text = (Path(__file__).parents[1] / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "cascademl developers" in license_text
