import sys

import pytest

from cascademl import _optional, torch_stage


def test_require_returns_the_module():
    import json

    assert _optional.require("json", "example") is json


def test_require_names_module_purpose_and_extra():
    with pytest.raises(ImportError) as info:
        _optional.require("cascademl_no_such_module", "io", purpose="saving torch stages")
    message = str(info.value)
    assert "saving torch stages needs the optional module 'cascademl_no_such_module'" in message
    assert "pip install 'cascademl[io]'" in message
    assert info.value.name == "cascademl_no_such_module"
    assert isinstance(info.value.__cause__, ImportError)


def test_require_default_purpose():
    with pytest.raises(ImportError, match=r"^this feature needs"):
        _optional.require("cascademl_no_such_module", "timm")


def test_missing_timm_names_the_timm_extra(monkeypatch):
    # None in sys.modules makes `import timm` raise ImportError, as if it were absent.
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.data", None)
    with pytest.raises(ImportError, match=r"pip install 'cascademl\[timm\]'"):
        torch_stage.TorchStage.from_timm("resnet18", num_classes=2)


def test_missing_ray_names_the_ray_extra(monkeypatch):
    from cascademl import ray_data

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'cascademl\[ray\]'"):
        ray_data.route_dataset(None, "model")


def test_missing_matplotlib_names_the_plot_extra(monkeypatch):
    from cascademl.plot import ExitDisplay

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"ExitDisplay.plot needs .*'cascademl\[plot\]'"):
        ExitDisplay([3, 1], None, ["small", "big"]).plot()
