"""Type aliases shared across cascademl."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

#: A float matrix of shape ``(n_samples, n_classes)`` whose rows sum to one.
ProbaArray: TypeAlias = NDArray[np.float64]
#: A float vector of shape ``(n_samples,)``.
FloatArray: TypeAlias = NDArray[np.float64]
#: An integer vector, e.g. sample indices or stage indices.
IntArray: TypeAlias = NDArray[np.intp]
#: A boolean mask.
BoolArray: TypeAlias = NDArray[np.bool_]
#: Any label array (``classes_`` may hold strings, ints, ...).
LabelArray: TypeAlias = NDArray[Any]
#: Names of the confidence measures.
ConfidenceMeasure: TypeAlias = Literal["max_proba", "margin", "entropy"]
#: Names of the built-in vote combiners.
CombineMethod: TypeAlias = Literal["vote", "last", "mean"]
