"""The job's side of an Optuna trial: report the objective after every epoch, stop when pruned.

`report(value, step)` is the same for any Hydra app's task function (README: "Use the sweeper in
your own Hydra app").

The sweeper (mlp_sweep.sweeping.sweep_loop) passes the trial's id to the job in the environment; the
study's name, storage and pruner come from the job's own Hydra config (`hydra.sweeper`), which is
the sweeper's. Without those, as in a single run or a grid, `TrialLink.from_environment()` is None.
"""

import contextlib
import logging
import os
import time
from collections.abc import Iterator

import optuna
from hydra.core.hydra_config import HydraConfig

from mlp_sweep.sweeping.optuna_compat import trial_from_id
from mlp_sweep.sweeping.storage import load_study
from mlp_sweep.sweeping.sweep_settings import build_pruner

log = logging.getLogger(__name__)

TRIAL_ID_VARIABLE = "MLP_SWEEP_TRIAL_ID"
# Unix time at which the sweep's budget ends, for `hydra.sweeper.on_timeout: prune`; "none" else.
DEADLINE_VARIABLE = "MLP_SWEEP_DEADLINE"
# "1" with `on_timeout: prune_early`: a trial that cannot finish by the deadline stops at once.
PRUNE_EARLY_VARIABLE = "MLP_SWEEP_PRUNE_EARLY"


class BudgetReached(optuna.TrialPruned):
    """The sweep's time budget ended while this trial ran: it stops at its epoch report and is
    recorded PRUNED, with the budget as the reason."""


def stop_at_budget(step: int, last: bool = False, seconds_to_finish: float | None = None) -> None:
    """Raise BudgetReached when the sweep running this job has used its time budget
    (`hydra.sweeper.timeout` with `on_timeout: prune`); after the `last` step the trial completes.

    With `on_timeout: prune_early` it raises as soon as `seconds_to_finish` (the job's own
    estimate of its remaining steps) would end after the budget: such a trial would be stopped
    unfinished anyway, and every second it still ran would be lost to the search."""
    deadline = os.environ.get(DEADLINE_VARIABLE, "none")
    if last or deadline == "none":
        return
    now = time.time()
    if now >= float(deadline):
        log.info(f"stopped after step {step}: the sweep's time budget (hydra.sweeper.timeout) is spent")
        raise BudgetReached(f"the budget (hydra.sweeper.timeout) ended after step {step}")
    if (seconds_to_finish is not None and os.environ.get(PRUNE_EARLY_VARIABLE) == "1"
            and now + seconds_to_finish > float(deadline)):
        log.info(f"stopped after step {step}: its remaining steps (about {seconds_to_finish:.0f} s) "
                 f"would end after the sweep's budget, {float(deadline) - now:.0f} s from now")
        raise BudgetReached(f"cannot finish within the budget (hydra.sweeper.timeout): about "
                            f"{seconds_to_finish:.0f} s left to run after step {step}, "
                            f"{float(deadline) - now:.0f} s of budget")


# The studies of the sweeps running in this process, by (storage, study name, folder) as
# _study_of_this_job gives them for a job: their in-process jobs (Hydra's basic launcher) report
# to the sweep's own study instead of opening the storage again, about 50 ms a trial.
_sweeps_here: dict[tuple[str | None, str | None, str], optuna.Study] = {}


@contextlib.contextmanager
def shared_with_jobs(study: optuna.Study, storage: str | None, study_name: str | None) -> Iterator[None]:
    """While the block runs, a job of this process whose `hydra.sweeper` names `storage` and
    `study_name` (as the sweep's config gives them, None included) reports to `study`."""
    key = (storage, study_name, os.getcwd())
    _sweeps_here[key] = study
    try:
        yield
    finally:
        del _sweeps_here[key]


class TrialLink:
    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    @classmethod
    def from_environment(cls) -> "TrialLink | None":
        trial_id = os.environ.get(TRIAL_ID_VARIABLE)
        if trial_id is None or not HydraConfig.initialized():
            return None
        sweeper = HydraConfig.get().sweeper
        if not sweeper.get("storage"):
            return None  # an in-memory study lives in the sweep process only: nothing to report to
        study = _sweeps_here.get(_study_of_this_job()) or load_study(
            sweeper.study_name, sweeper.storage, build_pruner(sweeper.get("pruner")))
        return cls(trial_from_id(study, int(trial_id)))

    def report(self, value: float, epoch: int, last: bool = False) -> None:
        """Record the epoch's objective; raise optuna.TrialPruned when the pruner says stop.

        After the `last` epoch there is nothing left to save: the trial completes."""
        self.trial.report(value, step=epoch)
        if not last and self.trial.should_prune():
            log.info(f"pruned after epoch {epoch}: {value:.4f} is below what the pruner "
                     f"({type(self.trial.study.pruner).__name__}) lets continue")
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at {value:.4f}")


# One lookup per trial: the jobs of sweeps may share a process (in-process launchers, tests).
_links: dict[tuple, TrialLink | None] = {}


def report(value: float, step: int) -> None:
    """Report a task's value at `step` to its Optuna trial, and raise `optuna.TrialPruned` when
    the study's pruner says stop: the sweeper records the trial PRUNED.

    For any Hydra app swept with `hydra/sweeper=mlp_optuna` and a storage; in a single run, a grid
    or an in-memory study it does nothing, so the same task runs everywhere.
    """
    key = (os.environ.get(TRIAL_ID_VARIABLE), *_study_of_this_job())
    if key not in _links:
        _links[key] = TrialLink.from_environment()
    link = _links[key]
    if link is not None:
        link.report(value, step)
    stop_at_budget(step)


def _study_of_this_job() -> tuple[str | None, str | None, str]:
    """The storage and study name of the sweep running this job, and the folder a relative
    storage path starts from: a trial id is only unique in its storage."""
    if not HydraConfig.initialized():
        return None, None, os.getcwd()
    sweeper = HydraConfig.get().sweeper
    return sweeper.get("storage"), sweeper.get("study_name"), os.getcwd()


def trial_identity(link: TrialLink | None) -> tuple[str | None, int | None]:
    """The study name and trial number of the Optuna trial this job runs, for experiment trackers
    to file its run under; (None, None) outside an mlp_optuna sweep.

    With a stored study the number is the study's; an in-memory study lives in the sweep process
    only, and there the job folder's name is the trial number (the sweeper names it so)."""
    if os.environ.get(TRIAL_ID_VARIABLE) is None or not HydraConfig.initialized():
        return None, None
    if link is not None:
        return link.trial.study.study_name, link.trial.number
    hydra_cfg = HydraConfig.get()
    folder = str(hydra_cfg.sweep.subdir)
    return str(hydra_cfg.sweeper.study_name), int(folder) if folder.isdigit() else None
