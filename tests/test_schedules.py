"""Learning-rate schedules: built from the config for the run's length, stepped as each expects."""

import pytest
import torch

from mlp_sweep.errors import UserError
from mlp_sweep.training.schedules import build_scheduler

from conftest import compose_config


def optimizer(lr=1e-2):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(schedule, opt, steps):
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.scheduler.step()
    return seen


def test_no_scheduler_is_the_default():
    assert build_scheduler(compose_config().scheduler, optimizer(), 5, 100) is None


def test_onecycle_spans_exactly_the_runs_batches_and_peaks_at_optimizer_lr():
    cfg = compose_config("scheduler=onecycle", "optimizer.lr=0.01")
    opt = optimizer()
    schedule = build_scheduler(cfg.scheduler, opt, epochs=3, steps_per_epoch=50)
    assert schedule.per_batch
    seen = lrs(schedule, opt, 150)  # OneCycleLR raises if stepped past its total_steps
    assert max(seen) == pytest.approx(0.01, rel=1e-3) and seen[-1] < 1e-4
    with pytest.raises(ValueError, match="Tried to step"):
        lrs(schedule, opt, 2)


def test_a_onecycle_warm_up_of_exactly_one_step_is_one_line():
    cfg = compose_config("scheduler=onecycle", "scheduler.pct_start=0.25")
    with pytest.raises(UserError, match=r"scheduler.pct_start=0.25 is not allowed with 4 steps"):
        build_scheduler(cfg.scheduler, optimizer(), epochs=1, steps_per_epoch=4)
    assert build_scheduler(cfg.scheduler, optimizer(), epochs=2, steps_per_epoch=4)  # 2 steps: fine


def test_cosine_warms_up_for_its_epochs_then_decays_to_zero():
    cfg = compose_config("scheduler=cosine", "scheduler.warmup_epochs=1")
    opt = optimizer(0.1)
    seen = lrs(build_scheduler(cfg.scheduler, opt, epochs=4, steps_per_epoch=10), opt, 40)
    assert seen[0] == pytest.approx(0.001)  # lr / 100
    assert seen[:10] == sorted(seen[:10]) and seen[10] == pytest.approx(0.1)
    assert seen[10:] == sorted(seen[10:], reverse=True) and seen[-1] < 0.001


def test_step_schedule_moves_once_per_epoch():
    cfg = compose_config("scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5")
    opt = optimizer(0.1)
    schedule = build_scheduler(cfg.scheduler, opt, epochs=6, steps_per_epoch=100)
    assert not schedule.per_batch
    assert lrs(schedule, opt, 5) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_a_run_with_a_schedule_ends_where_the_schedule_ends(mnist_root):
    from mlp_sweep.train import train

    cfg = compose_config(f"dataset.root={mnist_root}", "scheduler=onecycle", "trainer.epochs=2",
                         "trainer.progress=false", "dataset.train_limit=1000",
                         "dataset.test_limit=500", "trainer.batch_size=100")
    assert 0 < train(cfg) <= 1  # 20 steps of a 20-step cycle: one more would raise
