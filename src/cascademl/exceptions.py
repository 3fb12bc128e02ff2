"""Exceptions and warnings raised by cascademl.

Every error derives from [`CascadeMLError`][cascademl.exceptions.CascadeMLError] and also from
the built-in exception a caller would naturally catch, so ``except ValueError`` keeps working::

    CascadeMLError
    ├── NotFittedError            (also sklearn's NotFittedError: ValueError, AttributeError)
    ├── StageError
    │   ├── StageInterfaceError   (also TypeError)   a stage lacks classes_ / predict_proba
    │   ├── ClassMismatchError    (also ValueError)  stages disagree on the class set
    │   └── StageOutputError      (also ValueError)  NaN, negative or malformed probabilities
    ├── PolicyError               (also ValueError)  invalid policy, thresholds or weights
    ├── DeviceUnavailableError    (also RuntimeError)
    └── SerializationError        (also ValueError)  corrupt or incompatible saved cascade

    CascadeMLWarning (UserWarning)
    ├── DeviceWarning
    └── CertificationWarning      nothing (or nothing cheaper than the last stage) certified

`StageError` is split in three because a missing method is a type problem while NaN
probabilities are a value problem: callers can tell them apart with the built-ins alone.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = [
    "CascadeMLError",
    "CascadeMLWarning",
    "CertificationWarning",
    "ClassMismatchError",
    "DeviceUnavailableError",
    "DeviceWarning",
    "NotFittedError",
    "PolicyError",
    "SerializationError",
    "StageError",
    "StageInterfaceError",
    "StageOutputError",
]


class CascadeMLError(Exception):
    """Base class of every error raised by cascademl."""


class NotFittedError(CascadeMLError, _SklearnNotFittedError):
    """A cascade was used before `fit`; also scikit-learn's ``NotFittedError``."""


class StageError(CascadeMLError):
    """A stage cannot be used as given."""


class StageInterfaceError(StageError, TypeError):
    """A stage lacks part of the `Stage` protocol (``classes_`` or ``predict_proba``)."""


class ClassMismatchError(StageError, ValueError):
    """Stages, or a stage and the training labels, disagree on the set of classes."""


class StageOutputError(StageError, ValueError):
    """A stage returned probabilities that are NaN, negative, or of the wrong shape."""


class PolicyError(CascadeMLError, ValueError):
    """A confidence policy, threshold or combination parameter is invalid."""


class DeviceUnavailableError(CascadeMLError, RuntimeError):
    """The requested torch device does not exist on this machine."""


class SerializationError(CascadeMLError, ValueError):
    """A saved cascade is corrupt, incomplete, or from an incompatible format version."""


class CascadeMLWarning(UserWarning):
    """Base class of every warning emitted by cascademl."""


class DeviceWarning(CascadeMLWarning):
    """A device choice was made implicitly or tensors were moved between devices."""


class CertificationWarning(CascadeMLWarning):
    """A certification returned the safe rule: nothing, or nothing cheaper, was certified."""
