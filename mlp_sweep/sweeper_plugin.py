"""The Hydra sweeper plugin `hydra/sweeper=mlp_optuna` (its logic: mlp_sweep.optuna_sweep).

Hydra finds it through the `hydra.plugins` entry point in pyproject.toml, which also imports this
module and so registers the config below.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import MISSING


class ResumableOptunaSweeper(OptunaSweeper):
    """The stock OptunaSweeper with mlp_sweep's resumable, pruning implementation."""

    def __init__(self, pruner: Any = None, custom_search_space: str | None = None,
                 timeout: Any = None, **stock: Any) -> None:
        sampler_config = stock["sampler"]
        super().__init__(custom_search_space=None, **stock)  # builds the sampler the stock way
        from mlp_sweep.optuna_sweep import ResumableOptunaSweep

        stock["sampler"] = self.sweeper.sampler
        self.sweeper = ResumableOptunaSweep(pruner=pruner, custom_search_space=custom_search_space,
                                            sampler_config=sampler_config, timeout=timeout,
                                            **stock)


@dataclass
class ResumableOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "mlp_sweep.sweeper_plugin.ResumableOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    pruner: Any = MISSING  # from the hydra/sweeper/pruner group (conf/hydra/sweeper/pruner)
    # Seconds after which no new trial starts (running trials finish), counted from this
    # command's start, as Optuna's own `study.optimize(timeout=...)`; null = no limit.
    timeout: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="mlp_optuna",
                             node=ResumableOptunaSweeperConf, provider="mlp_sweep")
