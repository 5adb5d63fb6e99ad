"""The job's side of an Optuna trial: report the objective after every step, stop when pruned or
when the sweep's budget ends.

`report(value, step, last)` is the same for any Hydra app's task function (docs/own-app.md);
a training job calls it after every epoch. So are `keep_for_retry(path)`,
a file the trial's retry gets back, and `earlier_attempts()`, what a retry gets
(retry_files.py). The trial comes from the one description the sweeper wrote for the job
(trial_spec.py); without one, as in a single run or a grid, they do nothing.
"""

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import optuna

from mlp_sweep.sweeping.optuna_compat import trial_from_id
from mlp_sweep.sweeping.retry_files import EarlierAttempt, KeptFiles, checked_name
from mlp_sweep.sweeping.storage import load_study
from mlp_sweep.sweeping.sweep_settings import build_pruner
from mlp_sweep.sweeping.trial_spec import TRIAL_VARIABLE, TrialSpec

log = logging.getLogger(__name__)


class BudgetReached(optuna.TrialPruned):
    """The sweep's time budget ended while this trial ran: it stops at its step report and is
    recorded PRUNED, with the budget as the reason."""


# The studies of the sweeps running in this process, by (absolute storage URL, study name): a job
# that Hydra's basic launcher runs in the sweep's process reports to the sweep's own study
# instead of opening the storage again, about 50 ms a trial. A cache of open studies; which
# trial a job runs comes from its TrialSpec alone.
_open_studies: dict[tuple[str, str], optuna.Study] = {}


@contextlib.contextmanager
def shared_with_jobs(study: optuna.Study, storage: str | None) -> Iterator[None]:
    """While the block runs, the jobs of this process whose trial is in `study` (on `storage`,
    an absolute URL) report to it without opening the storage again."""
    if storage is None:
        yield
        return
    key = (storage, study.study_name)
    _open_studies[key] = study
    try:
        yield
    finally:
        del _open_studies[key]


class TrialLink:
    """One job's trial: `spec` as the sweeper wrote it, and the Optuna trial it reports to (None
    for an in-memory study, which lives in the sweep's process only: only the budget applies)."""

    def __init__(self, spec: TrialSpec, trial: optuna.Trial | None) -> None:
        self.spec, self.trial = spec, trial
        self.kept: KeptFiles | None = None  # what this attempt keeps for its retry

    @classmethod
    def of_this_job(cls) -> "TrialLink | None":
        spec = TrialSpec.of_this_job()
        return None if spec is None else cls.of(spec)

    @classmethod
    def of(cls, spec: TrialSpec) -> "TrialLink":
        if spec.storage is None:
            return cls(spec, None)
        study = _open_studies.get((spec.storage, spec.study_name)) or load_study(
            spec.study_name, spec.storage, build_pruner(spec.pruner))
        return cls(spec, trial_from_id(study, spec.trial_id))

    @property
    def identity(self) -> tuple[str, int]:
        """The study name and trial number, for experiment trackers to file the run under."""
        return self.spec.study_name, self.spec.number

    def note(self, key: str, value: object) -> None:
        """Record `key: value` on the trial (a user attribute), for the sweep and its readers."""
        if self.trial is not None:
            self.trial.set_user_attr(key, value)

    def keep_for_retry(self, path: str | Path, name: str | None = None) -> None:
        """Keep the file `path` for a retry of this trial, as `name` (default: the file's own
        name) in the folder the retry reads (earlier_attempts); call it again when the file
        changes: the newest copy replaces the last. It is copied to the sweep's artifact store;
        without one (or with an in-memory study) nothing is copied, and a retry on this host
        reads this attempt's folder itself."""
        name = checked_name(Path(path), name)
        if self.trial is None or not self.spec.artifacts:
            return
        if self.kept is None:
            self.kept = KeptFiles(self.spec.artifacts, self.trial)
        self.kept.keep(Path(path), name)

    def drop_kept_for_retry(self) -> None:
        """Remove what this attempt kept for a retry from the store, once the run has ended (the
        sweep does it too when it records the trial's end)."""
        if self.kept is not None:
            self.kept.drop()

    def earlier_attempts(self) -> list[EarlierAttempt]:
        """The attempts this trial runs again, the latest first, each with its folder and the
        files it kept for its retry (`with attempt.files() as folder`); [] for a first attempt."""
        kept = self.spec.retry_files or ({},) * len(self.spec.resume_from)
        return [EarlierAttempt(Path(folder), self.spec.artifacts, dict(files))
                for folder, files in zip(self.spec.resume_from, kept, strict=True)]

    def report(self, value: float, step: int, last: bool = False,
               seconds_to_finish: float | None = None) -> None:
        """Record the step's value; raise optuna.TrialPruned when the pruner says stop, and
        BudgetReached when the sweep's budget is spent. After the `last` step there is nothing
        left to save: the trial completes. `seconds_to_finish`, the job's own estimate of its
        remaining steps, lets `on_timeout: prune_early` stop a trial that cannot finish."""
        if self.trial is not None:
            self.trial.report(value, step=step)
            if not last and self.trial.should_prune():
                log.info(f"pruned after step {step}: {value:.4f} is below what the pruner "
                         f"({type(self.trial.study.pruner).__name__}) lets continue")
                raise optuna.TrialPruned(f"pruned after step {step} at {value:.4f}")
        if not last:
            self._stop_at_budget(step, seconds_to_finish)

    def _stop_at_budget(self, step: int, seconds_to_finish: float | None) -> None:
        deadline = self.spec.deadline
        if deadline is None:
            return
        now = time.time()
        if now >= deadline:
            log.info(f"stopped after step {step}: the sweep's time budget (hydra.sweeper.timeout) "
                     "is spent")
            raise BudgetReached(f"the budget (hydra.sweeper.timeout) ended after step {step}")
        if self.spec.prune_early and seconds_to_finish is not None \
                and now + seconds_to_finish > deadline:
            log.info(f"stopped after step {step}: its remaining steps (about "
                     f"{seconds_to_finish:.0f} s) would end after the sweep's budget, "
                     f"{deadline - now:.0f} s from now")
            raise BudgetReached(f"cannot finish within the budget (hydra.sweeper.timeout): about "
                                f"{seconds_to_finish:.0f} s left to run after step {step}, "
                                f"{deadline - now:.0f} s of budget")


def report(value: float, step: int, last: bool = False) -> None:
    """Report a task's value at `step` to its Optuna trial, and raise `optuna.TrialPruned` when
    the study's pruner says stop (or the sweep's budget is spent): the sweeper records the trial
    PRUNED. `last=True` on the task's final step: a trial that reached it is never pruned.

    For any Hydra app swept with `hydra/sweeper=mlp_optuna`; in a single run, a grid or a call
    from Python it does nothing, so the same task runs everywhere.
    """
    link = _this_job()
    if link is not None:
        link.report(value, step, last=last)


def keep_for_retry(path: str | Path, name: str | None = None) -> None:
    """Keep the file `path` for a retry of this job's trial (TrialLink.keep_for_retry); outside
    an mlp_optuna sweep it does nothing."""
    link = _this_job()
    if link is not None:
        link.keep_for_retry(path, name)


def earlier_attempts() -> list[EarlierAttempt]:
    """The earlier attempts of this job's trial, the latest first, each with what it kept for
    its retry (TrialLink.earlier_attempts); [] for a first attempt and outside a sweep."""
    link = _this_job()
    return [] if link is None else link.earlier_attempts()


def _this_job() -> TrialLink | None:
    path = os.environ.get(TRIAL_VARIABLE)
    return _link_for(Path(path).read_text()) if path else None


@functools.lru_cache(maxsize=4)
def _link_for(spec_json: str) -> TrialLink:
    """One link per trial, opened at its first report, by its spec's text: the jobs of several
    sweeps may share a process (in-process launchers, tests), each with its own spec."""
    return TrialLink.of(TrialSpec.from_json(spec_json))
