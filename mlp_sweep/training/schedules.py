"""Learning-rate schedules from the `scheduler` config group, built for one run's length.

Each config names a `torch.optim.lr_scheduler` class (or `warmup_cosine`, a chain of two) and an
`interval`: `step` schedules move after every batch, `epoch` schedules after every epoch. The run's
length is only known once the data is loaded, so `build_scheduler` passes `total_steps` (and
`steps_per_epoch`) to the schedules that take them.
"""

import inspect
from dataclasses import dataclass

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from mlp_sweep.errors import UserError
from mlp_sweep.training.config import ALLOWED_SCHEDULERS, with_canonical_names


@dataclass
class Schedule:
    scheduler: LRScheduler
    per_batch: bool  # step after every batch (else after every epoch)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int,
                    steps_per_epoch: int) -> Schedule | None:
    """The schedule `cfg` (the `scheduler` group) describes, or None for a constant rate."""
    if cfg.get("_target_") is None:
        return None
    per_batch = cfg.interval == "step"
    length = {"total_steps": epochs * steps_per_epoch if per_batch else epochs,
              "steps_per_epoch": steps_per_epoch if per_batch else 1}
    accepted = inspect.signature(get_object(cfg._target_)).parameters
    _check_warmup_length(cfg, length["total_steps"])
    scheduler = instantiate(
        {k: v for k, v in cfg.items() if k != "interval"}, optimizer,
        **{k: v for k, v in length.items() if k in accepted},
        _execution_whitelist_=with_canonical_names(ALLOWED_SCHEDULERS))
    return Schedule(scheduler, per_batch)


def planned_for_length(cfg: DictConfig) -> bool:
    """True when the schedule `cfg` describes is built for the run's length (it takes the total
    number of steps): a run with other epochs would follow another schedule."""
    if cfg.get("_target_") is None:
        return False
    return "total_steps" in inspect.signature(get_object(cfg._target_)).parameters


def _check_warmup_length(cfg: DictConfig, total_steps: int) -> None:
    """torch's OneCycleLR divides by its warm-up's length in steps less one: a warm-up of exactly
    one step (pct_start x total steps = 1, a tiny run) fails inside its first step."""
    pct_start = cfg.get("pct_start")
    if cfg._target_.endswith("OneCycleLR") and pct_start is not None \
            and float(pct_start) * total_steps == 1:
        raise UserError(f"scheduler.pct_start={pct_start} is not allowed with {total_steps} steps "
                        "in all (a warm-up of exactly one step, which OneCycleLR cannot take); "
                        "allowed: another pct_start, or more steps (trainer.epochs, a smaller "
                        "trainer.batch_size)")


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                  warmup_epochs: float = 0.5) -> LRScheduler:
    """A linear warm-up from lr / 100 over `warmup_epochs`, then a cosine decay to 0."""
    warmup = max(1, round(warmup_epochs * steps_per_epoch)) if warmup_epochs > 0 else 0
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup)
    if warmup == 0:
        return cosine
    return SequentialLR(optimizer, [LinearLR(optimizer, 0.01, 1.0, total_iters=warmup), cosine],
                        milestones=[warmup])
