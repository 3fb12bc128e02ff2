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
    ├── InputError                (also ValueError)  X is 1-d, or its features differ from fit's
    ├── DeviceUnavailableError    (also RuntimeError)
    │   └── ClusterResourceError                     Ray actor pools the cluster cannot hold
    └── SerializationError        (also ValueError)  corrupt or incompatible saved cascade

    CascadeMLWarning (UserWarning)
    ├── DeviceWarning
    ├── CertificationWarning      nothing (or nothing cheaper than the last stage) certified
    └── ClusterResourceWarning    Ray actor pools that leave no CPU for the pipeline's tasks

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
    "ClusterResourceError",
    "ClusterResourceWarning",
    "DeviceUnavailableError",
    "DeviceWarning",
    "InputError",
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


class InputError(CascadeMLError, ValueError):
    """``X`` at predict time is 1-d, or has other features (count or names) than at `fit`.

    Also a ``ValueError``, the error scikit-learn's estimator checks expect; the message is
    scikit-learn's own.
    """


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


class ClusterResourceError(DeviceUnavailableError):
    """The Ray cluster has fewer CPUs or GPUs than the actor pools of a run ask for.

    A Ray Data actor pool that cannot get its reservation never starts, and the dataset
    waits for it without a message; `cascademl.ray_data.route_dataset` raises this before
    the run instead, naming the shortfall and the ways out.
    """


class ClusterResourceWarning(CascadeMLWarning):
    """Ray actor pools that leave less than one CPU for the other tasks of the pipeline.

    Reading, decoding and repartitioning run as Ray tasks that reserve one CPU each by
    default; with every CPU held by actors they wait, and the pipeline can stall.
    """
