"""cascademl: cascaded classifiers that stop each sample at the first confident stage.

The torch-only pieces (`TorchStage`, `CostReport`, `StageCost`) are loaded on first access, so
``import cascademl`` stays light for scikit-learn users.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from cascademl.abstention import ABSTAIN
from cascademl.cascade import CascadeClassifier
from cascademl.certify import Certificate, certify_cascade
from cascademl.cv import CascadeClassifierCV
from cascademl.exceptions import (
    CascadeMLError,
    CascadeMLWarning,
    CertificationWarning,
    ClassMismatchError,
    DeviceUnavailableError,
    DeviceWarning,
    NotFittedError,
    PolicyError,
    SerializationError,
    StageError,
    StageInterfaceError,
    StageOutputError,
)
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.results import CascadeResult
from cascademl.stages import SklearnStage, Stage
from cascademl.tuning import TuningResult, tune_cascade

if _TYPE_CHECKING:
    from cascademl.cost import CostReport, StageCost
    from cascademl.torch_stage import TorchStage

__version__ = "0.1.0"

_LAZY = {
    "CostReport": "cascademl.cost",
    "StageCost": "cascademl.cost",
    "TorchStage": "cascademl.torch_stage",
}


def __getattr__(name: str) -> _Any:
    """Import the torch-backed names on first use."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415 - deferred on purpose

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'cascademl' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "ABSTAIN",
    "CascadeClassifier",
    "CascadeClassifierCV",
    "CascadeMLError",
    "CascadeMLWarning",
    "CascadeResult",
    "Certificate",
    "CertificationWarning",
    "ClassMismatchError",
    "ConfidencePolicy",
    "CostReport",
    "DeviceUnavailableError",
    "DeviceWarning",
    "NotFittedError",
    "PolicyError",
    "RoutingRule",
    "SerializationError",
    "SklearnStage",
    "Stage",
    "StageCost",
    "StageError",
    "StageInterfaceError",
    "StageOutputError",
    "TorchStage",
    "TuningResult",
    "__version__",
    "certify_cascade",
    "tune_cascade",
]
