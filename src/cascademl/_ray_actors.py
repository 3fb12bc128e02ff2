"""The actors of `cascademl.ray_data`: what runs in Ray's worker processes.

Imported by the actor processes through the classes `route_dataset` hands to
``map_batches``; it imports no Ray itself, and torch only when an actor loads the cascade.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascademl import _engine, _routing
from cascademl._optional import require
from cascademl.exceptions import SerializationError
from cascademl.stages import stage_cost
from cascademl.voting import escalating_vote_weights

#: The column of `read_images` rows that could not be decoded.
ERROR_COLUMN = "error"

# Per-row state that travels between the stage pools of mode="stages".
_SCORES = "__cascademl_scores"
_EXIT = "__cascademl_exit"
_CONF = "__cascademl_confidence"
_COST = "__cascademl_cost"
_STATE = (_SCORES, _EXIT, _CONF, _COST)
_PENDING = -1  # not decided yet
_SKIPPED = -2  # a row with an error: never routed


# --------------------------------------------------------------------------- loading
def _is_uri(model: str | os.PathLike[str]) -> bool:
    return isinstance(model, str) and "://" in model


def _local_copy(uri: str) -> Path:
    """Copy a saved cascade at ``uri`` into a new local temporary folder."""
    fs = require("pyarrow.fs", "ray", purpose="loading a cascade from a URI")
    target = Path(tempfile.mkdtemp(prefix="cascademl-model-"))
    try:
        fs.copy_files(uri, str(target))
    except (OSError, ValueError) as exc:
        msg = f"model {uri!r}: cannot copy the saved cascade from there ({exc})"
        raise SerializationError(msg) from exc
    return target


def _load(model: str | os.PathLike[str], options: Mapping[str, Any]) -> Any:
    from cascademl.io import load_cascade  # noqa: PLC0415 - imports torch: in the actor only

    folder = _local_copy(str(model)) if _is_uri(model) else Path(model)
    return load_cascade(folder, **options)


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Spec:
    """What every actor needs: picklable, shipped to the actors."""

    model: str
    load_options: dict[str, Any]
    input_columns: tuple[str, ...]
    passthrough: tuple[str, ...] | None
    proba: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _n_rows(batch: Mapping[str, Any]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _bad_rows(batch: Mapping[str, Any]) -> np.ndarray[Any, Any]:
    errors = batch.get(ERROR_COLUMN)
    if errors is None:
        return np.zeros(_n_rows(batch), dtype=bool)
    return np.array([bool(e) for e in errors], dtype=bool)


def _groups(
    batch: Mapping[str, Any], spec: _Spec, rows: np.ndarray[Any, Any], feature_names: Any
) -> Iterator[tuple[np.ndarray[Any, Any], Any]]:
    """``(row indices, inputs)`` per group of ``rows`` the stages can take in one call.

    One column of fixed-shape arrays is one group. One column of arrays of several shapes
    (images of different sizes, or rows whose input was dropped) is split by shape. Several
    columns become one 2-d array, or a DataFrame when the cascade knows feature names.
    """
    if rows.size == 0:
        return
    columns = spec.input_columns
    if len(columns) > 1:
        if feature_names is not None:
            pd = require("pandas", "ray", purpose="named input columns")
            yield rows, pd.DataFrame({c: np.asarray(batch[c])[rows] for c in columns})
        else:
            yield rows, np.column_stack([np.asarray(batch[c])[rows] for c in columns])
        return
    values = batch[columns[0]]
    if isinstance(values, np.ndarray) and values.dtype != object:
        yield rows, values[rows]
        return
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i in rows.tolist():
        by_shape.setdefault(tuple(np.shape(values[i])), []).append(i)
    for members in by_shape.values():
        idx = np.asarray(members, dtype=np.intp)
        yield idx, np.stack([np.asarray(values[i]) for i in members])


def _passthrough(batch: Mapping[str, Any], spec: _Spec) -> dict[str, Any]:
    if spec.passthrough is None:
        skip = {*spec.input_columns, *_STATE, ERROR_COLUMN}
        return {k: v for k, v in batch.items() if k not in skip}
    return {k: batch[k] for k in spec.passthrough}


def _labels(classes: Any, index: np.ndarray[Any, Any], bad: np.ndarray[Any, Any]) -> Any:
    labels = np.asarray(classes)[np.where(bad, 0, index)]
    if not bad.any():
        return labels
    out = labels.astype(object)
    out[bad] = None
    return out


def _output(
    batch: Mapping[str, Any],
    spec: _Spec,
    *,
    labels: Any,
    confidence: np.ndarray[Any, Any],
    exit_stage: np.ndarray[Any, Any],
    names: Sequence[str],
    cost: np.ndarray[Any, Any],
    proba: np.ndarray[Any, Any] | None,
) -> dict[str, Any]:
    out = _passthrough(batch, spec)
    stage_names = np.asarray([*names, ""], dtype=object)  # -1 (not routed): ""
    out.update(
        label=labels,
        confidence=confidence,
        exit_stage=exit_stage,
        stage_name=stage_names[exit_stage],
        cost=cost,
    )
    if proba is not None:
        out["proba"] = proba
    if ERROR_COLUMN in batch:
        out[ERROR_COLUMN] = np.asarray(batch[ERROR_COLUMN], dtype=object)
    return out


# --------------------------------------------------------------------------- actors
class _CascadeRouter:
    """Actor of ``mode="cascade"``: the whole cascade, routed by its own engine."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.cascade = _load(spec.model, spec.load_options)
        self.names = tuple(str(n) for n in self.cascade.named_stages_)
        self.cumulative_cost = np.cumsum([stage_cost(s) for s in self.cascade.stages_])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = _n_rows(batch)
        bad = _bad_rows(batch)
        n_classes = len(self.cascade.classes_)
        index = np.zeros(n, dtype=np.intp)
        confidence = np.full(n, np.nan)
        exit_stage = np.full(n, -1, dtype=np.intp)
        proba = np.full((n, n_classes), np.nan) if self.spec.proba else None
        feature_names = getattr(self.cascade, "feature_names_in_", None)
        for rows, X in _groups(batch, self.spec, np.flatnonzero(~bad), feature_names):
            result = self.cascade.route(X, keep="none")
            exits = np.asarray(result.exit_stage)
            index[rows] = _class_index(self.cascade.classes_, result.labels)
            confidence[rows] = result.stage_confidence[exits, np.arange(exits.size)]
            exit_stage[rows] = exits
            if proba is not None:
                proba[rows] = result.proba
        cost = np.where(exit_stage >= 0, self.cumulative_cost[np.maximum(exit_stage, 0)], 0.0)
        return _output(
            batch,
            self.spec,
            labels=_labels(self.cascade.classes_, index, bad),
            confidence=confidence,
            exit_stage=exit_stage,
            names=self.names,
            cost=cost,
            proba=proba,
        )


def _class_index(classes: Any, labels: Any) -> np.ndarray[Any, Any]:
    position = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    return np.array([position[v] for v in np.asarray(labels).tolist()], dtype=np.intp)


class _StageRunner:
    """Actor of ``mode="stages"``: one stage, and the running votes of the rows."""

    def __init__(self, spec: _Spec, stage_index: int) -> None:
        cascade = _load(spec.model, spec.load_options)
        n_stages = len(cascade.stages_)
        rule = cascade.routing_rule_
        self.spec = spec
        self.s = stage_index
        self.last = stage_index == n_stages - 1
        self.stage = cascade.stages_[stage_index]
        self.names = tuple(str(n) for n in cascade.named_stages_)
        self.columns = cascade._columns[stage_index]  # noqa: SLF001 - the engine's own map
        self.classes = np.asarray(cascade.classes_)
        self.rule = rule
        self.weight = float(
            escalating_vote_weights(rule.combine, rule.escalation_weights, n_stages)[stage_index]
        )
        self.cost = stage_cost(self.stage)
        self.feature_names = getattr(cascade, "feature_names_in_", None)
        del cascade  # keep only this stage's model in memory

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = _n_rows(batch)
        n_classes = self.classes.size
        if self.s == 0:
            exit_stage = np.where(_bad_rows(batch), _SKIPPED, _PENDING).astype(np.intp)
            scores = np.zeros((n, n_classes))
            confidence = np.full(n, np.nan)
            cost = np.zeros(n)
        else:
            exit_stage = np.array(batch[_EXIT], dtype=np.intp)
            scores = np.array(batch[_SCORES], dtype=np.float64).reshape(n, n_classes)
            confidence = np.array(batch[_CONF], dtype=np.float64)
            cost = np.array(batch[_COST], dtype=np.float64)
        pending = np.flatnonzero(exit_stage == _PENDING)
        for rows, X in _groups(batch, self.spec, pending, self.feature_names):
            raw = self.stage.predict_proba(X)
            proba = _routing.check_stage_proba(
                raw,
                n_samples=rows.size,
                n_classes=n_classes,
                stage_name=self.names[self.s],
                columns=self.columns,
            )
            step = _engine.fold_stage(self.rule, self.s, proba, scores[rows], self.weight)
            cost[rows] += self.cost
            done, stay = rows[step.done], rows[~step.done]
            exit_stage[done] = self.s
            confidence[done] = step.confidence[step.done]
            scores[done] = step.decided
            if step.carried is not None:
                scores[stay] = step.carried
        if self.last:
            return self._finish(batch, exit_stage, scores, confidence, cost)
        out = dict(batch)
        out.update({_SCORES: scores, _EXIT: exit_stage, _CONF: confidence, _COST: cost})
        if len(self.spec.input_columns) == 1:
            out[self.spec.input_columns[0]] = _drop_decided(
                batch[self.spec.input_columns[0]], exit_stage != _PENDING
            )
        return out

    def _finish(
        self,
        batch: Mapping[str, Any],
        exit_stage: np.ndarray[Any, Any],
        scores: np.ndarray[Any, Any],
        confidence: np.ndarray[Any, Any],
        cost: np.ndarray[Any, Any],
    ) -> dict[str, Any]:
        bad = exit_stage == _SKIPPED
        routed = np.flatnonzero(~bad)
        index = np.zeros(exit_stage.size, dtype=np.intp)
        proba = np.full(scores.shape, np.nan)
        if routed.size:
            index[routed], proba[routed] = _engine.decide(scores[routed])
        return _output(
            batch,
            self.spec,
            labels=_labels(self.classes, index, bad),
            confidence=confidence,
            exit_stage=np.where(bad, -1, exit_stage),
            names=self.names,
            cost=cost,
            proba=proba if self.spec.proba else None,
        )


def _drop_decided(values: Any, decided: np.ndarray[Any, Any]) -> Any:
    """The input column with the rows already decided replaced by empty arrays."""
    if not decided.any():
        return values
    out = np.empty(len(values), dtype=object)
    for i in range(len(values)):
        item = np.asarray(values[i])
        out[i] = np.empty((0,) * item.ndim, dtype=item.dtype) if decided[i] else item
    return out
