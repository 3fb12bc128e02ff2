"""Time-budgeted training: time the backbones on this machine, then plan epochs and sizes.

``python -m examples.leukemia run --time-budget MINUTES`` (the ``cpu`` preset's default:
:data:`DEFAULT_TIME_BUDGETS`) replaces the preset's fixed epochs by a plan made for the
machine at hand:

1. **Probe.** After the split and the stain normalization (their time is measured, not
   estimated), :func:`time_steps` times a few training steps and one inference batch of
   every backbone at the preset's input size (:func:`probe_backbones`). An epoch is
   predicted as ``steps x step time x`` :data:`STEP_OVERHEAD` (augmentation and weight
   averaging, which the step timing leaves out) plus one validation pass; the evaluation
   after training as :data:`EVAL_TEST_PASSES` passes over the test split and one over the
   validation split per backbone, plus :data:`FIXED_SECONDS` for the colour baseline,
   figures and report.
2. **Plan** (:func:`plan_epochs`), for the budget less what was spent: every backbone
   starts with one epoch at the preset's size; then, one epoch at a time, every backbone
   is brought up to the preset's own epochs (within the whole budget: the presets were
   sized to fit their hour, and these epochs are what a run without a budget trains),
   then up to :data:`MAX_EPOCHS` (within :data:`SAFETY` of the budget, the rest being
   the margin for the estimates' error); within each of these two rounds the next
   epoch goes to the backbone whose next epoch buys the most expected validation gain per
   second. The expected gain
   follows a power-law learning curve, validation error ``~ epochs ** -0.5``, the same for
   every backbone (nothing is known of them before training): the next epoch is worth
   ``e ** -0.5 - (e + 1) ** -0.5``, which is largest for the backbones with the fewest
   epochs, and it is divided by that backbone's epoch time. So the backbones that train
   from scratch for the fewest epochs (the weakest) and the cheap ones gain first, and the
   expensive DenseNet201 gains last. The first epoch that does not fit ends the plan
   (so that more budget never gives any backbone fewer epochs). Only when every backbone
   has :data:`MAX_EPOCHS` and time is left does a backbone move up the size ladder
   (:data:`SIZE_LADDER`, probed then), cheapest first.
3. **Schedule.** Each budgeted backbone trains with a learning rate that decays linearly
   to zero over its planned steps, after the preset's warm-up (Li, Yumer and Ramanan,
   *Budgeted Training*, ICLR 2020: with the number of steps known in advance, a linear
   decay to zero is the right shape).
4. **Drift.** After each backbone the plan of the remaining ones is made again from the
   time left and the measured slow-down against the probe (:meth:`BudgetPlanner.finished`);
   it only ever cuts epochs, so the run still ends within the budget on a machine that
   slowed down (another job started, say).

The plan is saved as ``OUT/plan.json`` after every change; a resumed run reuses it (and
refuses a different budget: :class:`PlanMismatchError`). ``--set epochs=N`` turns the plan
off. The plan, its probes and its reasons go into the log, ``metrics.json``
(``time_budget``) and ``report.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import timm
import torch
from torch import nn

from cascademl import _files
from cascademl.inference import resolve_precision

from .presets import BackboneSpec, Preset
from .training import CHECKPOINT_NAME, TrainingError

__all__ = [
    "DEFAULT_TIME_BUDGETS",
    "MAX_EPOCHS",
    "PLAN_FILE",
    "SAFETY",
    "SIZE_LADDER",
    "BackbonePlan",
    "BudgetPlanner",
    "PlanMismatchError",
    "Probe",
    "Workload",
    "plan_epochs",
    "probe_backbones",
    "time_steps",
]

logger = logging.getLogger(__name__)

#: The time budget, in minutes, of each preset that has one by default.
DEFAULT_TIME_BUDGETS: Final[Mapping[str, float]] = types.MappingProxyType({"cpu": 60.0})
#: Share of the budget the epochs beyond the preset's and larger inputs may fill: the rest
#: absorbs the error of the estimates.
SAFETY: Final = 0.9
#: Most epochs a backbone is planned (the paper's 10).
MAX_EPOCHS: Final = 10
#: Input sizes a backbone may move to, as multiples of the preset's (rounded to 8 px).
SIZE_LADDER: Final = (1.0, 1.25, 1.5)
#: Epoch time over the timed steps: augmentation, data loading and weight averaging. On a
#: 2-core AVX2 CPU the ``cpu`` preset's logged epochs were 5-27% longer than a step timing
#: under the same load, while its whole training (44.3 and 48.5 min in two runs) was 0.98
#: and 1.07 times the quiet machine's step timing (45.2 min, :data:`.presets.CPU_BUDGET`).
#: An underestimate is caught by the drift check; an overestimate leaves time unused.
STEP_OVERHEAD: Final = 1.1
#: Inference passes over the test split per backbone after training: the probabilities,
#: the three cascades and the shortcut audit's five preprocessing variants.
EVAL_TEST_PASSES: Final = 9
#: Seconds of the run's end besides the backbones' inference: the shortcut audit's image
#: loading and colour baselines, cascades, figures, report and saving. The ``cpu`` preset's
#: seed-2 run on a 2-core AVX2 CPU took 3.7 min for its whole evaluation and audit, of which
#: the backbones' inference makes up roughly half by the estimate above.
FIXED_SECONDS: Final = 120.0
#: Untimed and timed training steps of each probe.
PROBE_WARMUP: Final = 2
PROBE_STEPS: Final = 3
#: The plan file in the results folder.
PLAN_FILE: Final = "plan.json"
#: Smallest input each architecture accepts (InceptionV3's stride-2 stem needs 75 px).
MIN_SIZE: Final[Mapping[str, int]] = types.MappingProxyType({"inception_v3": 75})


class PlanMismatchError(TrainingError):
    """``OUT/plan.json`` was made for another budget or other backbones."""


def time_steps(
    name: str,
    image_size: int,
    batch_size: int,
    *,
    steps: int,
    bf16: bool,
    channels_last: bool,
    fused: bool,
    warmup: int = 2,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[float, float]:
    """Measure the mean seconds of one training step and of one inference batch.

    The model is built from scratch and trained on random inputs with forward, backward
    and AdamW, as :func:`.training.train_model` does (without augmentation and weight
    averaging).

    Args:
        name: timm model name.
        image_size: Square input size in pixels.
        batch_size: Images per step.
        steps: Timed steps after the warm-up steps.
        bf16: Run forward passes under CPU bfloat16 autocast.
        channels_last: Use the channels-last memory format for model and inputs.
        fused: Use the fused AdamW implementation.
        warmup: Untimed steps first (oneDNN picks its kernels on the first calls).
        model_kwargs: More arguments for ``timm.create_model`` (a preset's ``mlp_ratio``).

    Returns:
        Seconds per training step and seconds per inference batch.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model: nn.Module = timm.create_model(
            name, pretrained=False, num_classes=4, **dict(model_kwargs or {})
        )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    inputs = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    inputs = inputs.contiguous(memory_format=memory_format)
    targets = torch.randint(0, 4, (batch_size,), generator=generator)
    loss_fn = nn.CrossEntropyLoss()

    def autocast() -> contextlib.AbstractContextManager[object]:
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    model.train()
    train_times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(inputs)
        loss = loss_fn(logits.float(), targets)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            train_times.append(time.perf_counter() - start)
    model.eval()
    with torch.inference_mode(), autocast():
        model(inputs)
        start = time.perf_counter()
        model(inputs)
        infer_time = time.perf_counter() - start
    return sum(train_times) / len(train_times), infer_time


@dataclass(frozen=True, slots=True)
class Probe:
    """The measured speed of one backbone at one input size.

    Attributes:
        timm_name: The backbone.
        image_size: Input side in pixels.
        batch_size: Images per training step.
        step_seconds: Mean seconds of one training step.
        infer_seconds_per_image: Seconds of inference per image.
    """

    timm_name: str
    image_size: int
    batch_size: int
    step_seconds: float
    infer_seconds_per_image: float

    def to_json(self) -> dict[str, Any]:
        """The probe as a JSON object."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Workload:
    """How many images a run trains and evaluates on.

    Attributes:
        train_items: Training items per epoch (the training split, doubled when the preset
            doubles it).
        val_images: Validation images (validated after every epoch and once at the end).
        test_images: Test images.
    """

    train_items: int
    val_images: int
    test_images: int

    def epoch_seconds(self, probe: Probe) -> float:
        """Predicted seconds of one epoch (training and validation) at ``probe``'s speed."""
        steps = max(1, self.train_items // probe.batch_size)
        validation = self.val_images * probe.infer_seconds_per_image
        return steps * probe.step_seconds * STEP_OVERHEAD + validation

    def eval_seconds(self, probe: Probe) -> float:
        """Predicted seconds of this backbone's share of the evaluation after training."""
        images = self.val_images + EVAL_TEST_PASSES * self.test_images
        return images * probe.infer_seconds_per_image


@dataclass(frozen=True, slots=True)
class BackbonePlan:
    """What one backbone is planned to train.

    Attributes:
        timm_name: The backbone.
        epochs: Planned epochs.
        image_size: Planned input side in pixels.
        epoch_seconds: Predicted seconds per epoch at that size.
        eval_seconds: Predicted seconds of its evaluation after training.
    """

    timm_name: str
    epochs: int
    image_size: int
    epoch_seconds: float
    eval_seconds: float

    @property
    def seconds(self) -> float:
        """Predicted seconds of its training and evaluation."""
        return self.epochs * self.epoch_seconds + self.eval_seconds

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON object."""
        return dataclasses.asdict(self)


def ladder_sizes(spec: BackboneSpec) -> tuple[int, ...]:
    """The input sizes ``spec`` may train at: the preset's first, then larger ones.

    Examples:
        >>> ladder_sizes(BackboneSpec("ResNet50", "resnet50", 64))
        (64, 80, 96)
    """
    sizes: list[int] = []
    for factor in SIZE_LADDER:
        size = spec.image_size if factor == 1 else 8 * round(spec.image_size * factor / 8)
        if size >= MIN_SIZE.get(spec.timm_name, 0) and size not in sizes:
            sizes.append(size)
    return tuple(sizes)


def _gain(epochs: int) -> float:
    """Expected validation gain of epoch ``epochs + 1`` (power-law curve ``e ** -0.5``)."""
    return float(epochs**-0.5 - (epochs + 1) ** -0.5)


def plan_epochs(
    specs: Sequence[BackboneSpec],
    preset_epochs: Sequence[int],
    probes: Mapping[tuple[str, int], Probe],
    workload: Workload,
    seconds: float,
    *,
    margin: float = 0.0,
    max_epochs: int = MAX_EPOCHS,
) -> tuple[BackbonePlan, ...]:
    """Plan epochs and input sizes so that training and evaluation fit ``seconds``.

    The allocation rule is the module's (step 2): one epoch each at the preset's size;
    then epochs up to each backbone's ``preset_epochs`` within ``seconds``, then up to
    ``max_epochs`` within ``seconds - margin``, each time to the backbone with the highest
    expected gain per second, until the next one does not fit; then larger sizes from the
    ladder, the cheapest step first, while they fit ``seconds - margin``. The result never
    gives a backbone fewer epochs or a smaller size for more ``seconds``.

    Args:
        specs: The backbones, in training order.
        preset_epochs: Each backbone's epochs under the preset.
        probes: ``{(timm name, size): probe}``; sizes without a probe are not considered.
        workload: The images trained and evaluated on.
        seconds: Time for the backbones' training and evaluation.
        margin: Seconds of ``seconds`` held back from the epochs beyond the preset's and
            from larger inputs (the safety margin: the preset's own epochs may use it).
        max_epochs: Most epochs of any backbone.

    Returns:
        One plan per backbone, in ``specs``' order. When even one epoch each does not fit,
        one epoch each (the least a run can do).

    Raises:
        KeyError: A backbone has no probe at its preset size.
    """
    sizes = [spec.image_size for spec in specs]
    epochs = [1] * len(specs)

    def cost(i: int, size: int, n_epochs: int) -> float:
        probe = probes[specs[i].timm_name, size]
        return n_epochs * workload.epoch_seconds(probe) + workload.eval_seconds(probe)

    def total() -> float:
        return sum(cost(i, sizes[i], epochs[i]) for i in range(len(specs)))

    rounds = (
        (list(preset_epochs), seconds),
        ([max(max_epochs, e) for e in preset_epochs], seconds - margin),
    )
    for cap, limit in rounds:
        while True:
            open_ = [i for i in range(len(specs)) if epochs[i] < cap[i]]
            if not open_:
                break
            best = max(
                open_,
                key=lambda i: (
                    _gain(epochs[i]) / workload.epoch_seconds(probes[specs[i].timm_name, sizes[i]]),
                    -i,
                ),
            )
            extra = workload.epoch_seconds(probes[specs[best].timm_name, sizes[best]])
            if total() + extra > limit:
                return _plans(specs, epochs, sizes, probes, workload)
            epochs[best] += 1
    while True:
        step = _cheapest_size_step(specs, sizes, epochs, cost, probes)
        if step is None or total() + step[0] > seconds - margin:
            break
        sizes[step[1]] = step[2]
    return _plans(specs, epochs, sizes, probes, workload)


def _cheapest_size_step(
    specs: Sequence[BackboneSpec],
    sizes: Sequence[int],
    epochs: Sequence[int],
    cost: Callable[[int, int, int], float],
    probes: Mapping[tuple[str, int], Probe],
) -> tuple[float, int, int] | None:
    """``(extra seconds, backbone index, size)`` of the cheapest move up the size ladder."""
    steps = []
    for i, spec in enumerate(specs):
        larger = [s for s in ladder_sizes(spec) if s > sizes[i] and (spec.timm_name, s) in probes]
        if larger:
            extra = cost(i, larger[0], epochs[i]) - cost(i, sizes[i], epochs[i])
            steps.append((extra, i, larger[0]))
    return min(steps) if steps else None


def _plans(
    specs: Sequence[BackboneSpec],
    epochs: Sequence[int],
    sizes: Sequence[int],
    probes: Mapping[tuple[str, int], Probe],
    workload: Workload,
) -> tuple[BackbonePlan, ...]:
    plans = []
    for spec, n_epochs, size in zip(specs, epochs, sizes, strict=True):
        probe = probes[spec.timm_name, size]
        plans.append(
            BackbonePlan(
                spec.timm_name,
                n_epochs,
                size,
                workload.epoch_seconds(probe),
                workload.eval_seconds(probe),
            )
        )
    return tuple(plans)


#: What :func:`probe_backbones` calls to time one backbone (replaced in tests).
StepTimer = Callable[..., tuple[float, float]]


def probe_backbones(
    preset: Preset,
    sizes: Mapping[str, Sequence[int]],
    *,
    device: str = "cpu",
    timer: StepTimer = time_steps,
) -> dict[tuple[str, int], Probe]:
    """Time every backbone of ``preset`` at its ``sizes`` (by timm name) on this machine.

    Args:
        preset: The settings: batch sizes, precision, memory format.
        sizes: ``{timm name: input sizes}``.
        device: The torch device the run trains on (the probe runs on the CPU; only its
            precision choice is taken from ``device``).
        timer: The function that times one backbone (:func:`time_steps`).

    Returns:
        ``{(timm name, size): probe}``.
    """
    bf16 = resolve_precision(preset.precision, torch.device(device)).precision == "bf16"
    probes: dict[tuple[str, int], Probe] = {}
    for spec in preset.backbones:
        for size in sizes.get(spec.timm_name, ()):
            step_s, infer_s = timer(
                spec.timm_name,
                size,
                spec.batch_size,
                steps=PROBE_STEPS,
                warmup=PROBE_WARMUP,
                bf16=bf16,
                channels_last=preset.channels_last,
                fused=True,
                model_kwargs=spec.model_kwargs,
            )
            probe = Probe(spec.timm_name, size, spec.batch_size, step_s, infer_s / spec.batch_size)
            probes[spec.timm_name, size] = probe
            logger.info(
                "probe %s @ %d px, batch %d: %.3f s/step, %.2f ms/image inference",
                spec.timm_name,
                size,
                spec.batch_size,
                step_s,
                1000 * probe.infer_seconds_per_image,
            )
    return probes


class BudgetPlanner:
    """The plan of one budgeted run: made, saved, applied, cut on drift, reused on resume.

    Args:
        preset: The settings (the backbones and their fixed epochs).
        out: The results folder (``OUT/plan.json``).
        minutes: The budget of the whole run, in minutes.
        workload: The images trained and evaluated on.
        spent: Seconds of the run already spent (split, stain normalization).
        device: The torch device of the run.
        timer: Times one backbone (:func:`time_steps`; tests pass a fake).
        clock: Monotonic seconds (``time.perf_counter``; tests pass a fake).

    Raises:
        PlanMismatchError: ``OUT/plan.json`` holds a plan for another budget or other
            backbones.
        ValueError: ``minutes`` is not positive.
    """

    def __init__(
        self,
        preset: Preset,
        out: Path,
        *,
        minutes: float,
        workload: Workload,
        spent: float,
        device: str = "cpu",
        timer: StepTimer = time_steps,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not minutes > 0:
            msg = f"time budget must be a positive number of minutes, got {minutes}"
            raise ValueError(msg)
        self.preset = preset
        self.path = Path(out) / PLAN_FILE
        self.minutes = float(minutes)
        self.workload = workload
        self.clock = clock
        self._started = clock() - spent
        self.record: dict[str, Any]
        saved = self._load()
        if saved is not None:
            self.record = saved
            self._started -= float(saved["elapsed_seconds"])
            logger.info("time budget: reusing the plan of %s", self.path)
            return
        tic = clock()
        specs = preset.backbones
        base = {spec.timm_name: [spec.image_size] for spec in specs}
        probes = probe_backbones(preset, base, device=device, timer=timer)
        preset_epochs = [preset.train_config(spec).epochs for spec in specs]
        available = 60 * self.minutes - self.elapsed() - FIXED_SECONDS
        plans = plan_epochs(
            specs, preset_epochs, probes, workload, available, margin=self.margin_seconds
        )
        if all(p.epochs >= MAX_EPOCHS for p in plans):  # time left: probe the larger sizes
            more = {spec.timm_name: list(ladder_sizes(spec)[1:]) for spec in specs}
            probes |= probe_backbones(preset, more, device=device, timer=timer)
            available = 60 * self.minutes - self.elapsed() - FIXED_SECONDS
            plans = plan_epochs(
                specs, preset_epochs, probes, workload, available, margin=self.margin_seconds
            )
        self.record = {
            "budget_minutes": self.minutes,
            "safety": SAFETY,
            "backbones": [spec.timm_name for spec in specs],
            "preset_epochs": dict(zip(base, preset_epochs, strict=True)),
            "setup_seconds": spent,
            "probe_seconds": clock() - tic,
            "probes": [p.to_json() for p in probes.values()],
            "workload": dataclasses.asdict(workload),
            "rule": RULE,
            "plan": {p.timm_name: p.to_json() for p in plans},
            "initial_plan": {p.timm_name: p.to_json() for p in plans},
            "expected_total_seconds": self.elapsed()
            + sum(p.seconds for p in plans)
            + FIXED_SECONDS,
            "trained": {},
            "replans": [],
            "elapsed_seconds": self.elapsed(),
        }
        self._save()
        self.log()
        if self.record["expected_total_seconds"] > 60 * self.minutes:
            logger.warning(
                "time budget: even one epoch per backbone is expected to take %.1f min, over "
                "the %g min budget; training them anyway (a larger budget, or fewer backbones "
                "with --set backbones=..., would fit)",
                self.record["expected_total_seconds"] / 60,
                self.minutes,
            )

    @property
    def usable_seconds(self) -> float:
        """The seconds the epochs beyond the preset's may fill: :data:`SAFETY` of the budget."""
        return SAFETY * 60 * self.minutes

    @property
    def margin_seconds(self) -> float:
        """The safety margin: the budget's seconds beyond :attr:`usable_seconds`."""
        return 60 * self.minutes - self.usable_seconds

    def elapsed(self) -> float:
        """Seconds of the run so far (earlier runs it resumes included)."""
        return self.clock() - self._started

    def plan(self, timm_name: str) -> BackbonePlan:
        """The current plan of one backbone."""
        return BackbonePlan(**self.record["plan"][timm_name])

    def apply(self, spec: BackboneSpec) -> BackboneSpec:
        """``spec`` with its planned epochs and input size."""
        plan = self.plan(spec.timm_name)
        return dataclasses.replace(spec, epochs=plan.epochs, image_size=plan.image_size)

    def finished(self, timm_name: str, *, epochs_run: int, train_seconds: float) -> None:
        """Record a trained backbone; cut the later ones' epochs if the run fell behind.

        The remaining backbones are planned again (:func:`plan_epochs`) for the time left,
        with their predicted epoch times scaled by the slow-down measured so far (the
        trained backbones' epoch times against the probe's, when above 1); each keeps the
        smaller of its old and new epochs and size.

        Args:
            timm_name: The backbone just trained.
            epochs_run: Epochs it ran in all (resumed ones included).
            train_seconds: Its training time, summed over those epochs.
        """
        trained = self.record["trained"]
        trained[timm_name] = {"epochs_run": epochs_run, "train_seconds": train_seconds}
        names = self.record["backbones"]
        remaining = [n for n in names if n not in trained]
        predicted = sum(
            trained[n]["epochs_run"] * self.record["plan"][n]["epoch_seconds"] for n in trained
        )
        measured = sum(t["train_seconds"] for t in trained.values())
        slowdown = max(1.0, measured / predicted) if predicted > 0 else 1.0
        if remaining:
            self._replan(remaining, slowdown)
        self.record["elapsed_seconds"] = self.elapsed()
        self._save()

    def _replan(self, remaining: Sequence[str], slowdown: float) -> None:
        trained = self.record["trained"]
        left = (
            60 * self.minutes
            - self.elapsed()
            - FIXED_SECONDS
            - sum(self.record["plan"][n]["eval_seconds"] * slowdown for n in trained)
        )
        # A backbone with a checkpoint keeps its plan: its saved epochs are part of it.
        models = self.path.parent / "models"
        remaining = [n for n in remaining if not (models / n / CHECKPOINT_NAME).is_file()]
        if not remaining:
            return
        specs = [self.preset.backbone(n) for n in remaining]
        current = [self.plan(n) for n in remaining]
        probes = {}
        for spec, plan in zip(specs, current, strict=True):
            for size in {spec.image_size, plan.image_size}:
                probe = self._probe(spec.timm_name, size)
                probes[spec.timm_name, size] = dataclasses.replace(
                    probe,
                    step_seconds=probe.step_seconds * slowdown,
                    infer_seconds_per_image=probe.infer_seconds_per_image * slowdown,
                )
        fresh = plan_epochs(
            specs,
            [self.record["preset_epochs"][n] for n in remaining],
            probes,
            self.workload,
            left,
            margin=self.margin_seconds,
        )
        changes = {}
        for old, new in zip(current, fresh, strict=True):
            epochs = min(old.epochs, new.epochs)
            size = min(old.image_size, new.image_size)
            if (epochs, size) == (old.epochs, old.image_size):
                continue
            probe = self._probe(old.timm_name, size)
            cut = BackbonePlan(
                old.timm_name,
                epochs,
                size,
                self.workload.epoch_seconds(probe),
                self.workload.eval_seconds(probe),
            )
            self.record["plan"][old.timm_name] = cut.to_json()
            changes[old.timm_name] = {
                "epochs": [old.epochs, epochs],
                "size": [old.image_size, size],
            }
        entry = {
            "after": list(trained)[-1],
            "elapsed_seconds": self.elapsed(),
            "slowdown": slowdown,
            "seconds_left": left,
            "changes": changes,
        }
        self.record["replans"].append(entry)
        if changes:
            logger.warning(
                "time budget: %.1f min spent, training %.2fx slower than probed; cut %s",
                self.elapsed() / 60,
                slowdown,
                ", ".join(
                    f"{n} to {c['epochs'][1]} epochs @ {c['size'][1]} px"
                    for n, c in changes.items()
                ),
            )

    def _probe(self, timm_name: str, size: int) -> Probe:
        for row in self.record["probes"]:
            if row["timm_name"] == timm_name and row["image_size"] == size:
                return Probe(**row)
        msg = f"no probe of {timm_name} at {size} px in {self.path}"
        raise PlanMismatchError(msg)

    def _load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        saved: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        names = [spec.timm_name for spec in self.preset.backbones]
        if saved.get("budget_minutes") != self.minutes:
            msg = (
                f"{self.path} holds the plan of a {saved.get('budget_minutes')}-minute budget, "
                f"and this run asks for {self.minutes:g} minutes. To resume that run, give "
                f"--time-budget {saved.get('budget_minutes'):g}; to plan afresh, choose another "
                "--out (or delete plan.json and models/ there)"
            )
            raise PlanMismatchError(msg)
        if saved.get("backbones") != names:
            msg = (
                f"{self.path} was planned for the backbones {saved.get('backbones')}, this run "
                f"trains {names}; choose another --out, or delete plan.json and models/ there"
            )
            raise PlanMismatchError(msg)
        return saved

    def _save(self) -> None:
        _files.write_text(self.path, json.dumps(self.record, indent=1))

    def log(self) -> None:
        """Log the plan, its probes and why."""
        record = self.record
        logger.info(
            "time budget %g min (the preset's epochs within it, more epochs within %.0f%%: "
            "%.1f min); split and normalization %.1f min, probes %.1f min",
            self.minutes,
            100 * SAFETY,
            self.usable_seconds / 60,
            record["setup_seconds"] / 60,
            record["probe_seconds"] / 60,
        )
        logger.info("time budget rule: %s", RULE)
        for name, row in record["plan"].items():
            logger.info(
                "time budget plan: %s %d epochs @ %d px (preset: %d), %.1f min/epoch, "
                "%.1f min with its evaluation",
                name,
                row["epochs"],
                row["image_size"],
                record["preset_epochs"][name],
                row["epoch_seconds"] / 60,
                BackbonePlan(**row).seconds / 60,
            )
        logger.info(
            "time budget: expected total %.1f min of %g",
            record["expected_total_seconds"] / 60,
            self.minutes,
        )

    def to_json(self, seconds: float | None = None) -> dict[str, Any]:
        """The plan record for ``metrics.json`` (``seconds``: the run's wall time)."""
        record = dict(self.record)
        if seconds is not None:
            record["wall_seconds"] = seconds
            record["within_budget"] = seconds <= 60 * self.minutes
        return record


#: The allocation rule, as the log and ``metrics.json`` state it.
RULE: Final = (
    f"one epoch each at the preset's size; then one epoch at a time up to each backbone's "
    f"preset epochs (within the budget), then up to {MAX_EPOCHS} (within {100 * SAFETY:.0f}% "
    f"of it), each to the backbone with the highest expected "
    f"validation gain per second (error ~ epochs**-0.5, so the backbones with the fewest "
    f"epochs and the cheapest gain first), until the next epoch does not fit; larger inputs "
    f"({', '.join(f'x{f:g}' for f in SIZE_LADDER[1:])}) only once every backbone has "
    f"{MAX_EPOCHS} epochs; learning rate linear to zero over the planned steps"
)


def plan_markdown(record: Mapping[str, Any]) -> str:
    """The report's section on the time budget: probes, plan per backbone, what it took."""
    lines = [
        (
            f"Budget {record['budget_minutes']:g} min; epochs beyond the preset's within "
            f"{100 * record['safety']:.0f}% of it. Rule: {record['rule']}."
        ),
        "",
        (
            "| Backbone | Preset epochs | Planned epochs | Size (px) | Predicted min/epoch "
            "| Epochs run | Training (min) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in record["plan"].items():
        trained = record["trained"].get(name, {})
        run = trained.get("epochs_run", "")
        minutes = f"{trained['train_seconds'] / 60:.1f}" if trained else ""
        lines.append(
            f"| {name} | {record['preset_epochs'][name]} | {row['epochs']} | "
            f"{row['image_size']} | {row['epoch_seconds'] / 60:.2f} | {run} | {minutes} |"
        )
    lines += [
        "",
        (
            f"Split and stain normalization {record['setup_seconds'] / 60:.1f} min, probes "
            f"{record['probe_seconds'] / 60:.1f} min; expected total "
            f"{record['expected_total_seconds'] / 60:.1f} min."
        ),
    ]
    if "wall_seconds" in record:
        lines.append(
            f"Wall time {record['wall_seconds'] / 60:.1f} min "
            f"({'within' if record['within_budget'] else 'OVER'} the budget)."
        )
    cuts = [r for r in record["replans"] if r["changes"]]
    for cut in cuts:
        lines.append(
            f"After {cut['after']} ({cut['elapsed_seconds'] / 60:.1f} min, "
            f"{cut['slowdown']:.2f}x slower than probed): "
            + ", ".join(
                f"{n} cut to {c['epochs'][1]} epochs @ {c['size'][1]} px"
                for n, c in cut["changes"].items()
            )
            + "."
        )
    return "\n".join(lines)
