"""cascademl: cascaded classifiers that stop each sample at the first confident stage."""

from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import (
    CascadeMLError,
    CascadeMLWarning,
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
from cascademl.policies import ConfidencePolicy
from cascademl.results import CascadeResult
from cascademl.stages import SklearnStage, Stage

__version__ = "0.1.0"

__all__ = [
    "CascadeClassifier",
    "CascadeMLError",
    "CascadeMLWarning",
    "CascadeResult",
    "ClassMismatchError",
    "ConfidencePolicy",
    "DeviceUnavailableError",
    "DeviceWarning",
    "NotFittedError",
    "PolicyError",
    "SerializationError",
    "SklearnStage",
    "Stage",
    "StageError",
    "StageInterfaceError",
    "StageOutputError",
    "__version__",
]
