"""The Hydra sweeper plugin `hydra/sweeper=mlp_optuna` (its logic: mlp_sweep.sweeping.optuna_sweep).

Hydra finds it through the `hydra.plugins` entry point in pyproject.toml, which also imports this
module and so registers the configs below: the sweeper and its pruners, as the stock plugin
registers its samplers, so that any Hydra app can compose `hydra/sweeper=mlp_optuna` and
`hydra/sweeper/pruner=hyperband` without a config file of its own.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import MISSING, DictConfig


class ResumableOptunaSweeper(Sweeper):
    """Hydra's Sweeper interface; Optuna is imported only when a sweep is set up, as the stock
    plugin does, so that Hydra's plugin discovery stays fast."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: str | None,
                 n_trials: Any, n_jobs: int, max_failure_rate: Any, params: Any = None,
                 pruner: Any = None, custom_search_space: str | None = None, timeout: Any = None,
                 heartbeat_interval: Any = None, grace_period: Any = None,
                 max_retry: Any = 3, enqueue_trials: Any = None) -> None:
        from mlp_sweep.sweeping.optuna_sweep import ResumableOptunaSweep, check_settings

        settings = dict(sampler=sampler, direction=direction, storage=storage,
                        study_name=study_name, n_trials=n_trials, n_jobs=n_jobs,
                        max_failure_rate=max_failure_rate, params=params)
        # Before anything is built: one line for a bad value.
        heartbeat = check_settings(settings, pruner, timeout, heartbeat_interval, grace_period,
                                   max_retry)
        self.sweeper = ResumableOptunaSweep(pruner=pruner, custom_search_space=custom_search_space,
                                            timeout=timeout, heartbeat=heartbeat,
                                            enqueue_trials=enqueue_trials, **settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.sweeper.sweep(arguments)


@dataclass
class ResumableOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "mlp_sweep.sweeping.sweeper_plugin.ResumableOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    pruner: Any = MISSING  # from the hydra/sweeper/pruner group below
    # Seconds after which no new trial starts (running trials finish), counted from this
    # command's start, as Optuna's own `study.optimize(timeout=...)`; null = no limit.
    timeout: Any = None
    # Dead workers on any host (RDB storages): a running trial records a heartbeat every
    # heartbeat_interval seconds; one silent for grace_period seconds (default 2 intervals) is
    # failed before the next trial is asked, and run again with its params up to max_retry times.
    heartbeat_interval: Any = None
    grace_period: Any = None
    max_retry: Any = 3
    # Parameter sets run first, e.g. [{model.width: 512}]: counted in n_trials; a partial set
    # lets the sampler choose the rest; queued once per study, so a resume adds no copy.
    enqueue_trials: Any = None


@dataclass
class NopPrunerConf:
    """Every trial runs all its steps."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.MedianPruner.html"""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 3  # trials that always run to the end first
    n_warmup_steps: int = 1    # steps (epochs) before a trial can be pruned
    interval_steps: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.SuccessiveHalvingPruner.html"""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = 1      # steps (epochs) before the first rung
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0


@dataclass
class HyperbandPrunerConf:
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.HyperbandPruner.html"""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # a trial's steps; mlp_sweep's presets set ${trainer.epochs}
    reduction_factor: int = 3


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="mlp_optuna", node=ResumableOptunaSweeperConf,
            provider="mlp_sweep")
for name, node in (("none", NopPrunerConf), ("median", MedianPrunerConf),
                   ("successive_halving", SuccessiveHalvingPrunerConf),
                   ("hyperband", HyperbandPrunerConf)):
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="mlp_sweep")
