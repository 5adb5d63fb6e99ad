"""The Hydra sweeper plugin `hydra/sweeper=mlp_optuna`: its config, and the Sweeper that checks
it and runs the sweep loop (mlp_sweep.sweeping.sweep_loop).

Hydra finds it through the `hydra.plugins` entry point in pyproject.toml, which also imports this
module and so registers the configs below: the sweeper and its pruners, as the stock plugin
registers its samplers, so that any Hydra app can compose `hydra/sweeper=mlp_optuna` and
`hydra/sweeper/pruner=hyperband` without a config file of its own.
"""

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import MISSING, DictConfig

log = logging.getLogger(__name__)


class MlpOptunaSweeper(Sweeper):
    """Hydra's Sweeper interface for `hydra/sweeper=mlp_optuna`. Optuna is imported only when a
    sweep is set up, as the stock plugin does, so that Hydra's plugin discovery stays fast."""

    def __init__(self, **settings: Any) -> None:
        # hydra.sweeper's keys, as MlpOptunaSweeperConf below declares them; checked once, as a
        # whole, when the sweep starts (SweepSettings.checked)
        self.raw_settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.config_loader = hydra_context.config_loader
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        from mlp_sweep.errors import UserError, error_line

        try:
            self._loop().run(arguments)
        except UserError as error:  # bad input: one line, exit 1, nothing half-made
            with contextlib.suppress(OSError):  # the sweep folder, if made and still empty
                os.rmdir(str(self.config.hydra.sweep.dir))
            log.error(error_line(error))
            sys.exit(1)

    def _loop(self):
        """The sweep loop for these settings; UserError for the first bad one, before anything
        is built."""
        from mlp_sweep.sweeping.sweep_loop import SweepLoop
        from mlp_sweep.sweeping.sweep_settings import SweepSettings

        raw = dict(self.raw_settings)
        raw["progress"] = raw.get("progress") or ProgressConf()
        return SweepLoop(SweepSettings.checked(raw), config=self.config, launcher=self.launcher,
                         config_loader=self.config_loader)


@dataclass
class ProgressConf:
    """`hydra.sweeper.progress`: what the sweep shows while it runs (sweeping/progress.py)."""

    metric: str = "value"     # the objective's name in the lines; the presets: ${objective}
    percent: bool = False     # values as percentages (accuracies)
    bar: bool = True          # a bar for the whole search, shown on a terminal only
    quiet_jobs: bool = True   # the trials' INFO lines go to their log files, not the console
    # Shown when the sweep ends, {sweep_dir} replaced; null: the command of the best trial's run.
    next_command: Any = None


@dataclass
class MlpOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "mlp_sweep.sweeping.sweeper_plugin.MlpOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"},
                                                         {"prior": "none"}])
    pruner: Any = MISSING  # from the hydra/sweeper/pruner group below
    # Where the good values are expected: a share of the early trials drawn from it, fading as
    # the study learns (sweeping/prior.py); the hydra/sweeper/prior group, none by default.
    prior: Any = MISSING
    # Seconds after which no new trial starts, counted from this command's start; null = no limit.
    timeout: Any = None
    # What the running trials do at the timeout: finish (Optuna's `study.optimize(timeout=...)`),
    # or prune: stop at their next report, recorded PRUNED by the budget, so that the search ends
    # within about one epoch of its timeout; or prune_early: as prune, and a trial that reports
    # its time left (TrialLink.report's seconds_to_finish) stops as soon as it cannot finish by
    # the timeout.
    on_timeout: Any = "finish"
    # Dead workers on any host (RDB storages): a running trial records a heartbeat every
    # heartbeat_interval seconds; one silent for grace_period seconds (default 2 intervals) is
    # failed before the next trial is asked, and run again with its params up to max_retry times.
    # A trial whose sweep process on this host was killed is run again the same way on resume;
    # either retry gets what its earlier attempt left: its folder, or the files it named with
    # TrialLink.keep_for_retry (a training job: its last epoch's checkpoint).
    heartbeat_interval: Any = None
    grace_period: Any = None
    max_retry: Any = 3
    # Parameter sets run first, e.g. [{model.width: 512}]: counted in n_trials; a partial set
    # lets the sampler choose the rest; queued once per study, so a resume adds no copy.
    enqueue_trials: Any = None
    # An earlier study whose finished trials that fit this space start this one informed (a name
    # in the same storage, or {study_name: NAME, storage: URL}); imported, not counted in n_trials.
    warm_start: Any = None
    progress: ProgressConf = field(default_factory=ProgressConf)
    # Trials per job: a job gets up to `fuse` trials to train together (one computation, if the
    # app can stack them); each stays its own trial. 1 trains each trial alone.
    fuse: Any = 1
    # The searched keys a job's trials share (what the app cannot stack: the model's shape, the
    # batch size); the sampler chooses the rest per trial.
    fuse_by: Any = field(default_factory=list)
    # Optuna's artifact store for the trials' run files: a folder every host reaches, or
    # s3://BUCKET; null keeps them on the disk that trained them. A reader on another host
    # fetches a trial's folder from it. A job's files named for its retry go there too
    # (TrialLink.keep_for_retry), so that a retry on another host gets them.
    artifacts: Any = None
    # The files of a trial's run folder uploaded when it ends: globs relative to the folder
    # (`**`: every file; `*.log`; `.hydra/config.yaml`). The sweeper's own trial.json stays.
    artifacts_include: Any = field(default_factory=lambda: ["**"])
    # Config keys that say how a run executes, not what it is (threads, device, a data folder,
    # loggers; a key names its sub-keys too): a study resumes with them changed. Every other key
    # not searched is a setting the study records, and a resume with another value stops.
    execution_keys: Any = field(default_factory=list)
    # Sweep processes this command runs on one study, each asking for its next trial as soon as
    # its last one ends: 1, the command itself; N, N workers it starts; auto, one per GPU where
    # there are GPUs, else one per core it may use, each with its share of the cores (one core:
    # one process). The workers need worker_command and a storage they share.
    workers: Any = 1
    # What each worker runs (here and in `python -m mlp_sweep.workers`): a list of words,
    # `python` for this interpreter, e.g. [python, my_app.py] or [python, -m, my_package.app]
    worker_command: Any = None
    # The app's key for a worker's CPU threads, set to the cores / workers; null: none set
    threads_key: Any = None


@dataclass
class PriorConf:
    """`hydra.sweeper.prior`: none unless a config of the group sets its keys (prior.py)."""

    share: Any = 0.0        # the chance that a trial is drawn from the prior at the start
    halved_after: Any = 10  # finished trials after which that chance is halved
    params: Any = None      # per key: {centre, spread}, or a choice's weights


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
store.store(group="hydra/sweeper", name="mlp_optuna", node=MlpOptunaSweeperConf,
            provider="mlp_sweep")
for name, node in (("none", NopPrunerConf), ("median", MedianPrunerConf),
                   ("successive_halving", SuccessiveHalvingPrunerConf),
                   ("hyperband", HyperbandPrunerConf)):
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="mlp_sweep")
store.store(group="hydra/sweeper/prior", name="none", node=PriorConf, provider="mlp_sweep")
