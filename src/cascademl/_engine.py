"""The routing engine: one loop for in-memory and streamed inputs, without torch.

Every route goes through [`run`][cascademl._engine.run]. A *source* hands the engine rows
in input order: [`MemorySource`][cascademl._engine.MemorySource] walks an in-memory ``X``
(numpy array, DataFrame, list, tensor, ...) by index, and the torch source of
``cascademl.inference`` reads tensors, ``Dataset``s, ``DataLoader``s and iterators.

Each stage keeps a buffer of the samples that reached it and runs on full batches of its
own batch size (the deepest full buffer first, so escalated samples leave memory soon);
partial batches run only when the input is exhausted. For every batch a stage runs, the
engine validates its probabilities, scores their confidence, decides which samples exit
(all by the [`RoutingRule`][cascademl.RoutingRule]) and folds the stage's vote into each
sample's running score: exiting samples are final at once, escalating ones carry their
score on. So no per-stage output is kept unless asked (``keep="all"``), and memory is
bounded by the batch sizes.

What is kept goes to a ``_Collector``; the assembled outcome, its cost accounting (samples
per stage, measured latency, FLOPs of stages that count them) and the progress bar exist
only here.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

import numpy as np

from cascademl import _routing
from cascademl._typing import BoolArray, FloatArray, IntArray, LabelArray, ProbaArray
from cascademl._validation import check_positive_int, take_rows
from cascademl.cost import CostReport
from cascademl.exceptions import PolicyError
from cascademl.policies import RoutingRule
from cascademl.results import CascadeResult
from cascademl.stages import stage_cost
from cascademl.voting import escalating_vote_weights

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "KEEP_OPTIONS",
    "Keep",
    "MemorySource",
    "Outcome",
    "Source",
    "Step",
    "Want",
    "decide",
    "fold_stage",
    "run",
]

#: Batch size of stages that set none of their own, when streaming.
DEFAULT_BATCH_SIZE = 64
#: What a route keeps of each stage: ``"all"`` its probabilities, ``"none"`` nothing.
Keep: TypeAlias = Literal["all", "none"]
KEEP_OPTIONS: tuple[Keep, ...] = ("all", "none")
#: What the caller needs: the final labels, the final probabilities, or a full result.
Want: TypeAlias = Literal["labels", "proba", "result"]


class Source(Protocol):
    """Rows in input order, and the few operations the engine needs on them.

    A *payload* is what the source carries along with buffered samples (the raw rows of a
    stream; nothing for an in-memory ``X``, which is indexed when a stage runs).
    """

    length: int | None
    default_batch_size: int

    def chunks(self, size: int) -> Iterator[tuple[int, Any]]:
        """Yield ``(n_rows, payload)`` pieces of the input, in order."""
        ...

    def inputs(self, indices: IntArray, payload: Any) -> Any:
        """The rows a stage receives for these global indices (and their payload)."""
        ...

    def concat(self, payloads: list[Any]) -> Any:
        """Join payloads, in order."""
        ...

    def select(self, payload: Any, rows: slice | IntArray) -> Any:
        """Keep the rows of a payload given by a slice or an index array."""
        ...


class MemorySource:
    """An in-memory ``X``, indexed in its own type when a stage runs.

    Args:
        X: the inputs, one row per sample.
        length: the number of rows.
    """

    def __init__(self, X: Any, length: int) -> None:
        self.X = X
        self.length: int | None = length
        self.default_batch_size = max(length, 1)

    def chunks(self, size: int) -> Iterator[tuple[int, Any]]:
        """Consecutive ranges of at most ``size`` rows; no payload."""
        n = self.length or 0
        for start in range(0, n, size):
            yield min(size, n - start), None

    def inputs(self, indices: IntArray, payload: Any) -> Any:  # noqa: ARG002 - no payload
        """Those rows of ``X``: ``X`` itself, a slice (a view) or ``take_rows``."""
        X = self.X
        if indices.size == self.length:  # every row, in order
            return X
        consecutive = indices.size and int(indices[-1]) - int(indices[0]) + 1 == indices.size
        if consecutive and (isinstance(X, (np.ndarray, list)) or hasattr(X, "iloc")):
            rows = slice(int(indices[0]), int(indices[-1]) + 1)
            return X.iloc[rows] if hasattr(X, "iloc") else X[rows]
        return take_rows(X, indices)

    def concat(self, payloads: list[Any]) -> Any:  # noqa: ARG002 - no payload
        """Nothing to join."""
        return None

    def select(self, payload: Any, rows: slice | IntArray) -> Any:  # noqa: ARG002
        """Nothing to select."""
        return None


def stage_batch_size(stage: Any, default: int, name: str) -> int:
    """The stage's own ``batch_size`` attribute when it has one, else ``default``."""
    own = getattr(stage, "batch_size", None)
    if own is not None:
        return check_positive_int(own, f"batch_size of stage {name!r}")
    return default


@dataclass(slots=True)
class _Chunk:
    """Samples waiting in a buffer: global indices, payload and running vote scores."""

    indices: IntArray
    payload: Any
    scores: FloatArray | None


class _Buffer:
    """Pending samples of one stage, in arrival order."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.chunks: deque[_Chunk] = deque()
        self.size = 0

    def push(self, chunk: _Chunk) -> None:
        if chunk.indices.size:
            self.chunks.append(chunk)
            self.size += int(chunk.indices.size)

    def pop(self, count: int) -> _Chunk:
        """Remove and return the first ``min(count, size)`` samples as one chunk."""
        taken: list[_Chunk] = []
        need = count
        while need > 0 and self.chunks:
            head = self.chunks[0]
            if head.indices.size <= need:
                taken.append(self.chunks.popleft())
                need -= int(head.indices.size)
            else:
                cut = slice(None, need)
                rest = slice(need, None)
                taken.append(_split(self.source, head, cut))
                self.chunks[0] = _split(self.source, head, rest)
                need = 0
        self.size -= count - need
        if len(taken) == 1:
            return taken[0]
        scores = [c.scores for c in taken if c.scores is not None]
        return _Chunk(
            np.concatenate([c.indices for c in taken]),
            self.source.concat([c.payload for c in taken]),
            np.concatenate(scores) if scores else None,
        )


def _split(source: Source, chunk: _Chunk, rows: slice | IntArray) -> _Chunk:
    return _Chunk(
        chunk.indices[rows],
        source.select(chunk.payload, rows),
        None if chunk.scores is None else chunk.scores[rows],
    )


class _Store:
    """One output scattered by sample index: preallocated when the sample count is known."""

    def __init__(
        self, lead: tuple[int, ...], tail: tuple[int, ...], dtype: Any, fill: Any, n: int | None
    ) -> None:
        self.lead, self.tail, self.dtype, self.fill = lead, tail, dtype, fill
        self.array: np.ndarray[Any, Any] | None = (
            None if n is None else np.full((*lead, n, *tail), fill, dtype=dtype)
        )
        self.parts: list[tuple[tuple[int, ...], IntArray, np.ndarray[Any, Any]]] = []

    def put(self, where: tuple[int, ...], indices: IntArray, values: np.ndarray[Any, Any]) -> None:
        key: tuple[Any, ...] = (*where, indices)
        if self.array is not None:
            self.array[key] = values
        else:
            self.parts.append((where, indices, values))

    def result(self, n: int) -> np.ndarray[Any, Any]:
        if self.array is None:
            self.array = np.full((*self.lead, n, *self.tail), self.fill, dtype=self.dtype)
            for where, indices, values in self.parts:
                key: tuple[Any, ...] = (*where, indices)
                self.array[key] = values
            self.parts.clear()
        return self.array


class _Collector:
    """Keeps what the caller asked for, in input order."""

    def __init__(
        self, n_stages: int, n_classes: int, *, n: int | None, want: Want, keep: Keep
    ) -> None:
        self.want = want
        self.label_index = _Store((), (), np.intp, 0, n)
        self.proba = _Store((), (n_classes,), np.float64, np.nan, n) if want != "labels" else None
        full = want == "result"
        self.exit_stage = _Store((), (), np.intp, -1, n) if full else None
        self.confidence = _Store((n_stages,), (), np.float64, np.nan, n) if full else None
        self.stage_proba = (
            _Store((n_stages,), (n_classes,), np.float64, np.nan, n)
            if full and keep == "all"
            else None
        )

    def stage_output(self, s: int, indices: IntArray, proba: ProbaArray, conf: FloatArray) -> None:
        if self.confidence is not None:
            self.confidence.put((s,), indices, conf)
        if self.stage_proba is not None:
            self.stage_proba.put((s,), indices, proba)

    def decided(self, s: int, indices: IntArray, scores: FloatArray) -> None:
        label_index, scores = decide(scores)
        self.label_index.put((), indices, label_index)
        if self.proba is not None:
            self.proba.put((), indices, scores)
        if self.exit_stage is not None:
            self.exit_stage.put((), indices, np.full(indices.size, s, dtype=np.intp))


@dataclass(frozen=True, slots=True)
class Step:
    """What one stage decided for one batch (see [`fold_stage`][cascademl._engine.fold_stage]).

    Attributes:
        confidence: shape (n,), each row's confidence at this stage.
        done: bool, shape (n,), the rows that exit here.
        decided: shape (n_done, n_classes), the exiting rows' running score plus this
            stage's vote, not yet normalised (see [`decide`][cascademl._engine.decide]).
        carried: shape (n - n_done, n_classes), the escalating rows' running score with
            this stage's escalation vote folded in; ``None`` while no stage has voted.
    """

    confidence: FloatArray
    done: BoolArray
    decided: FloatArray
    carried: FloatArray | None


def fold_stage(
    rule: RoutingRule,
    stage_index: int,
    proba: ProbaArray,
    scores: FloatArray | None,
    escalating_weight: float,
) -> Step:
    """Apply ``rule`` to one stage's checked probabilities and fold its votes in.

    The one place where a stage's output becomes exits and running scores: the engine
    calls it for every batch, and a scale-out runner that moves rows between stages (and
    carries ``scores`` with them) calls it too, so both give the same answers.

    Args:
        rule: the routing rule.
        stage_index: the stage that produced ``proba``.
        proba: shape (n, n_classes), in the cascade's class order.
        scores: shape (n, n_classes), the rows' running scores from earlier stages, or
            ``None`` when no earlier stage voted.
        escalating_weight: the weight of this stage's vote for rows it escalates (from
            [`escalating_vote_weights`][cascademl.voting.escalating_vote_weights]).

    Returns:
        The step.
    """
    conf = rule.confidence(proba)
    done = rule.exits(conf, stage_index)
    decided = proba[done] if scores is None else scores[done] + proba[done]
    carried = None
    if not done.all():
        stay = np.flatnonzero(~done)
        carried = None if scores is None else scores[stay]
        if escalating_weight:
            vote = proba[stay] if escalating_weight == 1 else escalating_weight * proba[stay]
            carried = vote if carried is None else carried + vote
    return Step(conf, done, decided, carried)


def decide(scores: FloatArray) -> tuple[IntArray, ProbaArray]:
    """Final class indices and probabilities from running scores (normalised in place)."""
    scores /= scores.sum(axis=1, keepdims=True)
    return np.argmax(scores, axis=1), scores


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run produced; fields the caller did not ask for are ``None``."""

    labels: LabelArray
    proba: ProbaArray | None
    result: CascadeResult | None


class Engine:
    """State of one run: per-stage buffers, running scores, timings and what is kept."""

    def __init__(
        self,
        stages: Sequence[Any],
        source: Source,
        *,
        names: tuple[str, ...],
        sizes: Sequence[int],
        columns: Sequence[IntArray | None],
        rule: RoutingRule,
        n_classes: int,
        want: Want = "result",
        keep: Keep = "all",
    ) -> None:
        n_stages = len(stages)
        self.stages = stages
        self.source = source
        self.names = names
        self.sizes = list(sizes)
        self.columns = list(columns)
        self.rule = rule
        self.n_classes = n_classes
        self.escalating = escalating_vote_weights(rule.combine, rule.escalation_weights, n_stages)
        self.buffers = [_Buffer(source) for _ in range(n_stages)]
        self.collector = _Collector(n_stages, n_classes, n=source.length, want=want, keep=keep)
        self.calls = [0] * n_stages
        self.seconds = [0.0] * n_stages
        self.flops = [math.nan] * n_stages
        self.count_flops = want == "result" and any(
            callable(getattr(stage, "flops_per_sample", None)) for stage in stages
        )
        self.n_seen = 0
        self.on_decided: Callable[[int], object] = lambda _: None

    def feed(self, n_rows: int, payload: Any) -> None:
        """Take the next ``n_rows`` rows of the input and run every full batch."""
        indices = np.arange(self.n_seen, self.n_seen + n_rows, dtype=np.intp)
        if self.count_flops and self.n_seen == 0 and n_rows > 0:
            first = slice(None, 1)
            example = self.source.inputs(indices[first], self.source.select(payload, first))
            self._count_flops(example)
        self.n_seen += n_rows
        self.buffers[0].push(_Chunk(indices, payload, None))
        self._drain(final=False)

    def finish(self) -> None:
        """Run what is left in the buffers, first stage first."""
        self._drain(final=True)

    def _drain(self, *, final: bool) -> None:
        n_stages = len(self.stages)
        while True:
            # Deepest full buffer first: escalated samples leave memory as soon as possible.
            ready = [s for s in range(n_stages) if self.buffers[s].size >= self.sizes[s]]
            if ready:
                stage = ready[-1]
            elif final:
                # A partial batch runs only once every earlier buffer is empty, so no
                # further sample can reach this stage.
                pending = [s for s in range(n_stages) if self.buffers[s].size > 0]
                if not pending:
                    return
                stage = pending[0]
            else:
                return
            self._run(stage, self.buffers[stage].pop(self.sizes[stage]))

    def _run(self, s: int, chunk: _Chunk) -> None:
        indices = chunk.indices
        inputs = self.source.inputs(indices, chunk.payload)
        start = time.perf_counter()
        raw = self.stages[s].predict_proba(inputs)
        self.seconds[s] += time.perf_counter() - start
        self.calls[s] += int(indices.size)
        proba = _routing.check_stage_proba(
            raw,
            n_samples=indices.size,
            n_classes=self.n_classes,
            stage_name=self.names[s],
            columns=self.columns[s],
        )
        del raw, inputs  # the stage's own arrays: free them before the votes are folded
        step = fold_stage(self.rule, s, proba, chunk.scores, float(self.escalating[s]))
        self.collector.stage_output(s, indices, proba, step.confidence)
        n_done = int(step.done.sum())
        if n_done:
            self.collector.decided(s, indices[step.done], step.decided)
        if n_done < indices.size:
            stay = np.flatnonzero(~step.done)
            payload = self.source.select(chunk.payload, stay)
            self.buffers[s + 1].push(_Chunk(indices[stay], payload, step.carried))
        self.on_decided(n_done)

    def _count_flops(self, example: Any) -> None:
        for s, stage in enumerate(self.stages):
            counter = getattr(stage, "flops_per_sample", None)
            if callable(counter):
                self.flops[s] = float(counter(example))

    def outcome(
        self, classes: LabelArray, *, wall_time: float, cost_unit: str = "stage calls"
    ) -> Outcome:
        """Assemble what was kept, in input order."""
        collected, n = self.collector, self.n_seen
        labels = classes[collected.label_index.result(n)] if n else classes[:0]
        proba = collected.proba.result(n) if collected.proba is not None else None
        if collected.exit_stage is None or collected.confidence is None:
            return Outcome(labels, proba, None)
        exit_stage = collected.exit_stage.result(n)
        n_stages = len(self.stages)
        visited = np.arange(n_stages)[:, None] <= exit_stage[None, :]
        calls = tuple(self.calls)
        report = CostReport(
            stage_names=self.names,
            flops_per_sample=tuple(self.flops),
            latency_per_sample=tuple(
                self.seconds[s] / calls[s] if calls[s] else math.nan for s in range(n_stages)
            ),
            stage_calls=calls,
            n_samples=n,
            batch_sizes=tuple(self.sizes),
            devices=tuple(_device_name(stage) for stage in self.stages),
            wall_time=wall_time,
        )
        result = CascadeResult._from_owned(  # noqa: SLF001 - arrays made here, owned by nobody
            classes=np.array(classes),
            stage_names=self.names,
            labels=labels,
            proba=proba,
            exit_stage=exit_stage,
            stage_proba=(
                collected.stage_proba.result(n) if collected.stage_proba is not None else None
            ),
            stage_confidence=collected.confidence.result(n),
            visited=visited,
            stage_cost=np.array([stage_cost(stage) for stage in self.stages], dtype=np.float64),
            cost_unit=cost_unit,
            cost_report=report,
        )
        return Outcome(labels, proba, result)


def run(
    stages: Sequence[Any],
    source: Source,
    *,
    rule: RoutingRule,
    stage_names: Sequence[str],
    classes: LabelArray,
    columns: Sequence[IntArray | None] | None = None,
    batch_size: int | None = None,
    want: Want = "result",
    keep: Keep = "all",
    progress: bool = False,
) -> Outcome:
    """Route every row of ``source`` through ``stages`` under ``rule``.

    Args:
        stages: the fitted stages, in order (anything with ``predict_proba``).
        source: the rows.
        rule: thresholds, measure, combiner and escalation weights.
        stage_names: one name per stage.
        classes: the cascade's class order.
        columns: per stage, the indices that reorder its columns into ``classes`` order
            (``None`` for a stage, or for all, when already in that order).
        batch_size: batch size of stages without their own ``batch_size`` attribute
            (``None``: the source's default, all rows at once in memory).
        want: ``"labels"``, ``"proba"`` or ``"result"`` (a full `CascadeResult`).
        keep: with ``want="result"``, ``"all"`` keeps each visited stage's probabilities.
        progress: show a tqdm bar over the samples decided.

    Returns:
        The outcome.

    Raises:
        PolicyError: for an invalid batch size or ``keep``, or mismatched arguments.
    """
    names = tuple(str(n) for n in stage_names)
    if len(stages) == 0 or len(names) != len(stages) or rule.n_stages != len(stages):
        msg = (
            "stages, stage_names and the rule's thresholds must have the same non-zero "
            f"length, got {len(stages)}, {len(names)} and {rule.n_stages}"
        )
        raise PolicyError(msg)
    if keep not in KEEP_OPTIONS:
        msg = f"keep must be one of {KEEP_OPTIONS}, got {keep!r}"
        raise PolicyError(msg)
    default = source.default_batch_size
    if batch_size is not None:
        default = check_positive_int(batch_size, "batch_size")
    sizes = [
        stage_batch_size(stage, default, name) for stage, name in zip(stages, names, strict=True)
    ]
    n_classes = len(classes)
    identity = np.arange(n_classes)
    cols = [
        None if c is None or np.array_equal(c, identity) else np.asarray(c, dtype=np.intp)
        for c in (columns if columns is not None else [None] * len(stages))
    ]
    engine = Engine(
        stages,
        source,
        names=names,
        sizes=sizes,
        columns=cols,
        rule=rule,
        n_classes=n_classes,
        want=want,
        keep=keep,
    )
    start = time.perf_counter()
    with _progress_bar(progress, source.length) as bar:
        engine.on_decided = bar.update
        for n_rows, payload in source.chunks(sizes[0]):
            engine.feed(n_rows, payload)
        engine.finish()
    return engine.outcome(np.asarray(classes), wall_time=time.perf_counter() - start)


def _device_name(stage: Any) -> str:
    device = getattr(stage, "device_", None)
    return str(device) if device is not None else "cpu"


class _NoBar:
    def update(self, n: int) -> None:
        """Do nothing."""


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int | None) -> Iterator[Any]:
    if not enabled:
        yield _NoBar()
        return
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # noqa: PLC0415 - optional
    except ImportError as exc:  # pragma: no cover - tqdm ships with the example extra
        msg = "progress=True needs tqdm: pip install 'cascademl[example]' (or tqdm)"
        raise ImportError(msg) from exc
    with tqdm(total=total, unit="sample", desc="cascade") as bar:
        yield bar
