"""precision='auto': bfloat16 only where the device runs it natively."""

import logging

import numpy as np
import pytest
import torch

from cascademl import _precision
from cascademl.inference import autocast, cpu_bf16_support, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_like(monkeypatch):
    """Pretend to be a CPU with a given vector capability and bf16 flags."""

    def make(capability, *, amx=False, avx512_bf16=False, onednn_isa=None):
        monkeypatch.setattr(_precision.torch.backends.cpu, "get_cpu_capability", lambda: capability)
        flags = {"amx_tile": amx, "avx512_bf16": avx512_bf16}
        monkeypatch.setattr(_precision, "_cpu_flag", flags.__getitem__)
        if onednn_isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)

    return make


@pytest.mark.parametrize(
    "case",
    [
        ("AVX2", {}, None, "fp32", "AVX2"),
        ("DEFAULT", {}, None, "fp32", "DEFAULT"),
        ("AVX512", {}, None, "fp32", "no AVX512-BF16 or AMX"),
        ("AVX512", {"amx": True}, None, "bf16", "AMX"),
        ("AVX512", {"avx512_bf16": True}, None, "bf16", "AVX512-BF16"),
        # An AMX machine told to behave like an AVX2 one (the emulation the docs describe).
        ("AVX512", {"amx": True}, "AVX2", "fp32", "ONEDNN_MAX_CPU_ISA=AVX2"),
        ("AVX512", {"amx": True}, "avx512_core_amx", "bf16", "AMX"),
    ],
)
def test_cpu_auto_picks_bf16_only_when_native(cpu_like, case):
    capability, flags, isa, expected, reason = case
    cpu_like(capability, onednn_isa=isa, **flags)
    chosen = resolve_precision("auto", CPU)
    assert chosen.precision == expected
    assert reason in chosen.reason
    assert cpu_bf16_support() == chosen


def test_explicit_precisions_pass_through(cpu_like):
    cpu_like("AVX2")
    assert resolve_precision("bf16", CPU).precision == "bf16"
    assert resolve_precision("fp32", CPU).precision == "fp32"


def test_cuda_auto_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", torch.device("cuda")).precision == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cuda")).precision == "bf16"


def test_auto_choice_is_logged_once_with_its_reason(cpu_like, caplog):
    _precision._log_choice.cache_clear()
    cpu_like("AVX2")
    with caplog.at_level(logging.INFO, logger="cascademl.inference"):
        resolve_precision("auto", CPU)
        resolve_precision("auto", CPU)
    lines = [r.getMessage() for r in caplog.records if "precision='auto'" in r.getMessage()]
    assert len(lines) == 1
    assert "fp32" in lines[0]
    assert "AVX2" in lines[0]


@pytest.mark.parametrize(("native", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_autocast_auto_runs_bf16_only_when_native(cpu_like, native, dtype):
    cpu_like("AVX512", amx=native)
    layer = torch.nn.Linear(4, 3)
    with torch.inference_mode(), autocast(CPU, "auto"):
        out = layer(torch.ones(2, 4))
    assert out.dtype == dtype


def test_torch_stage_accepts_auto_and_matches_fp32_without_native_bf16(cpu_like):
    from cascademl import TorchStage

    cpu_like("AVX2")

    def stage(precision):
        torch.manual_seed(0)
        return TorchStage.from_timm(
            "test_resnet", num_classes=3, input_size=(3, 32, 32), precision=precision
        )

    X = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    X = X.to(torch.uint8)
    auto = stage("auto")
    assert auto.precision == "auto"
    np.testing.assert_array_equal(auto.predict_proba(X), stage("fp32").predict_proba(X))
