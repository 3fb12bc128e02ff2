"""The experiment's names in one place, as earlier releases had them in this module.

The code lives by job in :mod:`.experiment` (:func:`run_experiment` and its stage
functions), :mod:`.backbones` (training and wrapping the backbones), :mod:`.ordering`
(stage orders and threshold tuning), :mod:`.sections` (the report) and :mod:`.predict`
(reusing a saved cascade); this module re-exports their public names.
"""

from __future__ import annotations

from .backbones import PROBABILITIES_FILE, check_pretrained_weights, warn_if_slow_precision
from .experiment import ExperimentSummary, masked_images, run_experiment
from .ordering import ORDER_RULES
from .predict import (
    SETTINGS_FILE,
    Predictor,
    evaluate_folder,
    images_to_tensor,
    load_predictor,
    prepare_image,
    read_images,
)
from .sections import validation_check

__all__ = [
    "ORDER_RULES",
    "PROBABILITIES_FILE",
    "SETTINGS_FILE",
    "ExperimentSummary",
    "Predictor",
    "check_pretrained_weights",
    "evaluate_folder",
    "images_to_tensor",
    "load_predictor",
    "masked_images",
    "prepare_image",
    "read_images",
    "run_experiment",
    "validation_check",
    "warn_if_slow_precision",
]
