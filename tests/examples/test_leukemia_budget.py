"""The time budget: probes, the plan, drift, resume, the CLI switch and the linear schedule.

A fake step timer and a fake clock stand in for the machine, so nothing here trains.
"""

import dataclasses
import itertools
import json

import pytest
import torch
from examples.leukemia import budget
from examples.leukemia.__main__ import _parser, _time_budget
from examples.leukemia.backbones import train_backbones
from examples.leukemia.budget import (
    FIXED_SECONDS,
    MAX_EPOCHS,
    PLAN_FILE,
    BudgetPlanner,
    PlanMismatchError,
    Probe,
    Workload,
    ladder_sizes,
    plan_epochs,
)
from examples.leukemia.experiment import _planner, prepare_data
from examples.leukemia.presets import CPU, SMOKE
from examples.leukemia.training import TrainConfig, _Parts, _schedule

WORKLOAD = Workload(train_items=4568, val_images=286, test_images=286)

#: Seconds per training step at the preset's size, like the cpu preset's relative speeds.
STEP = {
    "inception_v3": 0.5,
    "efficientnet_b0": 0.2,
    "vgg19_bn": 0.7,
    "resnet50": 0.35,
    "densenet201": 0.6,
    "test_resnet": 2.5,
    "test_efficientnet": 3.0,
}


def fake_timer(name, size, batch_size, **_kwargs):
    """Seconds per step and per inference batch, growing with the input's area."""
    step = STEP[name] * (size / 64) ** 2
    return step, step / 3


def cpu_probes():
    probes = {}
    for spec in CPU.backbones:
        for size in ladder_sizes(spec):
            step, infer = fake_timer(spec.timm_name, size, spec.batch_size)
            probes[spec.timm_name, size] = Probe(
                spec.timm_name, size, spec.batch_size, step, infer / spec.batch_size
            )
    return probes


def cpu_plan(seconds):
    epochs = [CPU.train_config(spec).epochs for spec in CPU.backbones]
    return plan_epochs(CPU.backbones, epochs, cpu_probes(), WORKLOAD, seconds)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("minutes", [10, 25, 45, 60, 120])
def test_the_plan_fits_its_time(minutes):
    plans = cpu_plan(60 * minutes)
    assert sum(p.seconds for p in plans) <= 60 * minutes
    assert all(p.epochs >= 1 for p in plans)


def test_the_plan_spends_its_time():
    """Left-over time is less than the next epoch the rule would have given."""
    plans = cpu_plan(45 * 60)
    left = 45 * 60 - sum(p.seconds for p in plans)
    assert left < max(p.epoch_seconds for p in plans)
    assert not all(p.epochs == MAX_EPOCHS for p in plans)  # so no input grew:
    assert [p.image_size for p in plans] == [s.image_size for s in CPU.backbones]


def test_more_budget_never_gives_fewer_epochs_or_smaller_inputs():
    previous = None
    for minutes in range(2, 400, 3):
        plans = cpu_plan(60 * minutes)
        if previous is not None:
            for old, new in zip(previous, plans, strict=True):
                assert new.epochs >= old.epochs, minutes
                assert new.image_size >= old.image_size, minutes
        previous = plans
    assert all(p.epochs == MAX_EPOCHS for p in previous)
    assert any(p.image_size > s.image_size for p, s in zip(previous, CPU.backbones, strict=True))


def test_preset_epochs_come_first_and_extras_go_to_the_weak_and_cheap():
    fixed = [CPU.train_config(spec).epochs for spec in CPU.backbones]
    fixed_seconds = sum(
        e * WORKLOAD.epoch_seconds(cpu_probes()[s.timm_name, s.image_size])
        + WORKLOAD.eval_seconds(cpu_probes()[s.timm_name, s.image_size])
        for e, s in zip(fixed, CPU.backbones, strict=True)
    )
    # Just the fixed plan's time: the preset's epochs exactly.
    assert [p.epochs for p in cpu_plan(fixed_seconds + 1)] == fixed
    # Less: fewer epochs, never below one.
    short = cpu_plan(fixed_seconds / 2)
    assert all(1 <= p.epochs <= e for p, e in zip(short, fixed, strict=True))
    # More: EfficientNetB0, the cheapest, gains more extra epochs than DenseNet201.
    plans = {p.timm_name: p for p in cpu_plan(2 * fixed_seconds)}
    assert plans["efficientnet_b0"].epochs > plans["densenet201"].epochs >= 3


def test_not_even_one_epoch_each_fits():
    assert [p.epochs for p in cpu_plan(1.0)] == [1] * len(CPU.backbones)


def make_planner(tmp_path, clock, minutes=1.0, timer=fake_timer):
    workload = Workload(train_items=80, val_images=8, test_images=8)
    return BudgetPlanner(
        SMOKE, tmp_path, minutes=minutes, workload=workload, spent=2.0, timer=timer, clock=clock
    )


def test_the_planner_saves_and_applies_its_plan(tmp_path):
    planner = make_planner(tmp_path, FakeClock(), minutes=4.0)
    saved = json.loads((tmp_path / PLAN_FILE).read_text())
    assert saved["budget_minutes"] == 4.0
    assert {p["timm_name"] for p in saved["probes"]} == {"test_resnet", "test_efficientnet"}
    expected = saved["expected_total_seconds"]
    assert FIXED_SECONDS < expected <= 0.9 * 240
    spec = planner.apply(SMOKE.backbones[0])
    assert spec.epochs == saved["plan"]["test_resnet"]["epochs"] >= 1
    assert spec.image_size == saved["plan"]["test_resnet"]["image_size"]
    assert planner.to_json(seconds=239.0)["within_budget"] is True
    record = planner.to_json(seconds=241.0)
    assert record["within_budget"] is False
    assert record["wall_seconds"] == 241.0


def test_drift_cuts_the_later_backbones(tmp_path):
    clock = FakeClock()
    planner = make_planner(tmp_path, clock, minutes=4.0)
    first, second = (planner.plan(s.timm_name) for s in SMOKE.backbones)
    assert second.epochs > 1
    # The first backbone took three times as long as probed.
    taken = 3 * first.epochs * first.epoch_seconds
    clock.now += taken
    planner.finished("test_resnet", epochs_run=first.epochs, train_seconds=taken)
    cut = planner.plan("test_efficientnet")
    assert cut.epochs < second.epochs
    replan = json.loads((tmp_path / PLAN_FILE).read_text())["replans"][-1]
    assert replan["slowdown"] == pytest.approx(3.0)
    assert replan["changes"]["test_efficientnet"]["epochs"] == [second.epochs, cut.epochs]


def test_no_drift_keeps_the_plan(tmp_path):
    clock = FakeClock()
    planner = make_planner(tmp_path, clock, minutes=4.0)
    first, second = (planner.plan(s.timm_name) for s in SMOKE.backbones)
    taken = first.epochs * first.epoch_seconds
    clock.now += taken
    planner.finished("test_resnet", epochs_run=first.epochs, train_seconds=taken)
    assert planner.plan("test_efficientnet") == second


def test_a_resumed_run_keeps_its_plan(tmp_path):
    planner = make_planner(tmp_path, FakeClock())
    plan = [planner.plan(s.timm_name) for s in SMOKE.backbones]

    def no_probe(*_args, **_kwargs):
        pytest.fail("a resumed run must not probe again")

    again = make_planner(tmp_path, FakeClock(), timer=no_probe)
    assert [again.plan(s.timm_name) for s in SMOKE.backbones] == plan


def test_a_resumed_run_with_another_budget_is_refused(tmp_path):
    make_planner(tmp_path, FakeClock())
    with pytest.raises(PlanMismatchError, match=r"--time-budget 1\b.*another --out"):
        make_planner(tmp_path, FakeClock(), minutes=2.0)


def test_a_budget_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="positive number of minutes, got 0"):
        make_planner(tmp_path, FakeClock(), minutes=0.0)


def run_args(*extra):
    return _parser().parse_args(["run", "--data-root", "d", "--out", "o", *extra])


def test_the_cpu_preset_has_a_budget_and_set_epochs_turns_it_off():
    assert _time_budget(run_args()) == budget.DEFAULT_TIME_BUDGETS["cpu"] == 60.0
    assert _time_budget(run_args("--preset", "smoke")) is None
    assert _time_budget(run_args("--preset", "smoke", "--time-budget", "5")) == 5.0
    assert _time_budget(run_args("--time-budget", "0")) is None
    assert _time_budget(run_args("--set", "epochs=3")) is None
    assert _time_budget(run_args("--time-budget", "30", "--set", "resnet50.epochs=4")) is None
    assert _time_budget(run_args("--set", "warmup_epochs=1")) == 60.0


def test_a_bad_budget_is_named(capsys):
    with pytest.raises(SystemExit):
        run_args("--time-budget", "-5")
    assert "--time-budget must be a number of minutes >= 0, got '-5'" in capsys.readouterr().err


def test_the_linear_schedule_reaches_zero_at_the_last_planned_step():
    config = TrainConfig(epochs=3, batch_size=8, warmup_epochs=0.5, schedule="linear")
    parts = _Parts.build(torch.nn.Linear(2, 2), config, 80, None, torch.device("cpu"))
    steps = 3 * (80 // 8)
    rates = []
    for _ in range(steps):
        parts.optimizer.step()
        parts.scheduler.step()
        rates.append(parts.scheduler.get_last_lr()[0])
    assert rates[-1] == 0.0
    assert rates[-2] > 0.0
    peak = len(rates) - 1 - rates[::-1].index(max(rates))  # the end of the warm-up
    after = rates[peak:]
    diffs = [a - b for a, b in itertools.pairwise(after)]
    assert diffs == pytest.approx([diffs[0]] * len(diffs))  # a straight line


def test_the_presets_keep_their_cosine_schedule():
    factor = _schedule(100, 10)
    assert factor(55) == pytest.approx(0.5)  # half-way down the cosine
    assert _schedule(100, 10, linear=True)(55) == pytest.approx(0.5)
    assert factor(30) > _schedule(100, 10, linear=True)(30)
    assert CPU.train_config(CPU.backbones[0]).schedule == "cosine"
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="step")


def test_a_budget_too_small_for_one_epoch_each_warns(tmp_path, caplog):
    planner = make_planner(tmp_path, FakeClock(), minutes=0.5)
    assert [planner.plan(s.timm_name).epochs for s in SMOKE.backbones] == [1, 1]
    assert "even one epoch per backbone is expected to take" in caplog.text


def test_the_backbones_train_their_planned_epochs_down_to_a_zero_rate(leukemia_root, tmp_path):
    """The plan reaches the training: its epochs and sizes, and the linear decay to zero."""
    preset = dataclasses.replace(SMOKE, patience=10, stain_normalize=False)
    data = prepare_data(leukemia_root, preset, tmp_path, skip_bad=False)
    counts = data.manifest.counts()
    workload = Workload(
        train_items=2 * sum(counts["train"].values()),
        val_images=sum(counts["val"].values()),
        test_images=sum(counts["test"].values()),
    )
    # Probed far slower than the test models train, so that no cut interferes.
    planner = BudgetPlanner(
        preset,
        tmp_path,
        minutes=30.0,
        workload=workload,
        spent=0.0,
        timer=lambda *_args, **_kwargs: (30.0, 10.0),
        clock=FakeClock(),
    )
    planned = {s.name: planner.plan(s.timm_name) for s in preset.backbones}
    assert max(p.epochs for p in planned.values()) > preset.epochs
    trained = train_backbones(
        preset,
        data.manifest,
        data.images,
        tmp_path,
        stain=data.stain,
        device="cpu",
        checkpoints={},
        allow_download=False,
        progress=False,
        planner=planner,
    )
    for name, history in trained.histories.items():
        assert len(history) == planned[name].epochs
        assert history[-1]["lr"] == 0.0
    for (name, stage), spec in zip(trained.stages, preset.backbones, strict=True):
        assert stage.input_size[-1] == planned[name].image_size == spec.image_size
    saved = json.loads((tmp_path / PLAN_FILE).read_text())
    assert saved["trained"]["test_resnet"]["epochs_run"] == planned["TestResNet"].epochs


def test_a_fixed_run_resumes_with_its_fixed_epochs(tmp_path, caplog):
    """A folder with checkpoints and no plan is an earlier fixed run: no plan is made."""
    (tmp_path / "models" / "test_resnet").mkdir(parents=True)
    (tmp_path / "models" / "test_resnet" / "checkpoint.pt").write_bytes(b"")
    assert _planner(SMOKE, None, tmp_path, minutes=60.0, spent=0.0, device="cpu") is None
    assert "resuming it with them" in caplog.text
    assert not (tmp_path / PLAN_FILE).exists()


def test_the_preset_epochs_may_use_the_margin_and_the_extras_may_not():
    fixed = [CPU.train_config(spec).epochs for spec in CPU.backbones]
    base = {(s.timm_name, s.image_size) for s in CPU.backbones}
    probes = {key: probe for key, probe in cpu_probes().items() if key in base}
    fixed_plan = plan_epochs(CPU.backbones, fixed, probes, WORKLOAD, 1e9, max_epochs=2)
    need = sum(p.seconds for p in fixed_plan)
    assert [p.epochs for p in fixed_plan] == fixed
    margin = 0.1 * need
    plans = plan_epochs(CPU.backbones, fixed, probes, WORKLOAD, need + 1, margin=margin)
    assert [p.epochs for p in plans] == fixed  # inside the margin, and nothing more
    roomy = plan_epochs(CPU.backbones, fixed, probes, WORKLOAD, 3 * need, margin=margin)
    assert need < sum(p.seconds for p in roomy) <= 3 * need - margin
