"""Every private Optuna or Hydra name the sweeper still needs, in one place.

Each is used because no public API does the same: the stock Hydra sweeper's reading of its
`params` syntax, the heartbeat thread `study.optimize` runs, and the storage and id behind a trial
that a sweep asks for in one process and reports to from another. `PRIVATE_NAMES` lists them;
tests/test_optuna_compat.py fails by name when an installed version drops one.
"""

import warnings
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper import _impl as stock_sweeper
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages import _heartbeat as heartbeat
from optuna.trial import FrozenTrial

# (where, attribute): the module or class each private name is read from.
PRIVATE_NAMES = (
    ("hydra_plugins.hydra_optuna_sweeper._impl", "create_params_from_overrides"),
    ("optuna.storages._heartbeat", "get_heartbeat_thread"),
    ("optuna.study.Study", "_storage"),
    ("optuna.trial.Trial", "_trial_id"),
    ("optuna.trial.FrozenTrial", "_trial_id"),
)


def parse_sweep_overrides(entries: list[str]) -> tuple[dict, dict, list]:
    """The stock sweeper's reading of `params` and sweep arguments (`x=interval(0,1)`): the
    search space as Optuna distributions, the fixed params, and the other overrides."""
    return stock_sweeper.create_params_from_overrides(entries)


def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial: what a job in another process needs to report to it."""
    return trial._trial_id


def trial_from_id(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A running trial of `study`, by the id another process got from `trial_id`."""
    return optuna.Trial(study, trial_id)


def heartbeat_thread(study: optuna.Study, trial: optuna.Trial):
    """A context manager that records `trial`'s heartbeat while it runs, as `study.optimize`
    does (nothing for a storage without heartbeats)."""
    return heartbeat.get_heartbeat_thread(trial_id(trial), storage_of(study))


def record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    storage_of(study).record_heartbeat(trial_id(trial))


def enqueued_params(trial: FrozenTrial) -> dict | None:
    """The params `study.enqueue_trial` fixed for `trial` (Optuna keeps them in a system
    attribute); None for a trial the sampler chose."""
    return trial.system_attrs.get("fixed_params")


def retried_from(trial: FrozenTrial) -> list[int]:
    """The trial numbers `trial` is a heartbeat retry of (none for a first attempt)."""
    with warnings.catch_warnings():  # Optuna marks it experimental, and warns at every call
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def set_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Set a user attribute of a trial read back from the storage (FrozenTrial has no setter)."""
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)
