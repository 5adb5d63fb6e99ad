"""What a config describes, built: the model, optimizer, loss, augmentation and schedule."""

from typing import NamedTuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mlp_sweep.training.augment import build_augment
from mlp_sweep.training.config import (ALLOWED_ACTIVATIONS, ALLOWED_LOSSES, ALLOWED_OPTIMIZERS,
                                       with_canonical_names)
from mlp_sweep.training.engine import batch_bounds
from mlp_sweep.training.model import MLP, hidden_sizes
from mlp_sweep.training.schedules import Schedule, build_scheduler


class Training(NamedTuple):
    model: MLP
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    augment: torch.nn.Module | None
    schedule: Schedule | None


def build_training(cfg: DictConfig, train_size: int,
                   device: torch.device = torch.device("cpu")) -> Training:
    """The model (on `device`), optimizer, loss, augmentation and schedule `cfg` describes, for
    a training split of `train_size` images (the schedule's length depends on it)."""
    activation = instantiate(cfg.activation, _partial_=True,
                             _execution_whitelist_=with_canonical_names(ALLOWED_ACTIVATIONS))
    model = MLP(cfg.dataset.input_shape, hidden_sizes(cfg.model), cfg.dataset.num_classes,
                activation, cfg.model.dropout, cfg.model.get("norm", "none")).to(device)
    optimizer = instantiate(cfg.optimizer, _partial_=True,
                            _execution_whitelist_=with_canonical_names(ALLOWED_OPTIMIZERS))(model.parameters())
    loss_fn = instantiate(cfg.loss, _execution_whitelist_=with_canonical_names(ALLOWED_LOSSES))
    steps_per_epoch = len(batch_bounds(train_size, cfg.trainer.batch_size))
    schedule = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.epochs, steps_per_epoch)
    return Training(model, optimizer, loss_fn, build_augment(cfg.augment), schedule)
