"""The sweep's ask–launch–tell loop: ask the study for up to `n_jobs` trials, launch them as
Hydra jobs through the configured launcher, tell the study how each ended, until `n_trials` or
`timeout` (after which, with `on_timeout: prune`, running trials stop at their next report; with
`prune_early`, a trial stops as soon as its own pace says it cannot finish by then).

Each job gets its trial as one description, `trial.json` in its folder (trial_spec.py), named in
its environment; it reports per step (trial_link.py) and is stopped when the pruner says so; it
returns TrialPruned and the trial is recorded PRUNED. With `fuse` > 1 a job gets a group of
trials (fused_groups.py) and returns each one's outcome by trial number. A retry (of a trial
interrupted, or silent on another host) is told the earlier attempts' folders and the files
they kept for it in the artifact store (retry_files.py), to go on from them. A job that
raises is recorded FAIL with the reason, and the sweep goes on until those failures exceed
`max_failure_rate` of `n_trials`. A value the study cannot record (NaN, the wrong count) is a
FAIL trial too, as in the stock sweeper, and does not stop the sweep.

With `workers` above 1 (machine_workers.py) the command sets the study up, runs the loop in that
many worker processes of its own command, and writes the results when they have ended; with a
`prior` (prior.py) the sampler draws a share of the early trials from it.
"""

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy
import optuna
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mlp_sweep.errors import UserError, first_line
from mlp_sweep.sweeping import resume, retry_files, trial_attrs
from mlp_sweep.sweeping.artifacts import checked_store, upload_run
from mlp_sweep.sweeping.enqueued import checked_trials, enqueue
from mlp_sweep.sweeping.fused_groups import (ask_groups, check_fuse_by, member_result,
                                              write_job_files)
from mlp_sweep.sweeping.machine_workers import (Workers, choose_workers, environments, is_worker,
                                                sweep_started, worker_commands)
from mlp_sweep.sweeping.optuna_compat import heartbeat_thread, storage_of, trial_id
from mlp_sweep.sweeping.prior import Prior, PriorSampler, checked_prior
from mlp_sweep.sweeping.progress import SweepProgress
from mlp_sweep.sweeping.results import write_results
from mlp_sweep.sweeping.storage import absolute_storage, create_study
from mlp_sweep.sweeping.study_settings import check_same_settings, study_settings
from mlp_sweep.sweeping.sweep_settings import (SweepSettings, build_sampler, grid_of,
                                               grid_size, parse_space)
from mlp_sweep.sweeping.trial_link import BudgetReached, shared_with_jobs
from mlp_sweep.sweeping.trial_spec import TRIAL_VARIABLE, TrialSpec, hydra_quoted
from mlp_sweep.sweeping.warm_start import import_trials, trials_to_import
from mlp_sweep.sweeping.worker_pool import run_workers

log = logging.getLogger(__name__)


class SweepLoop:
    """One sweep command's run on its study; built by the plugin once its settings are checked."""

    def __init__(self, settings: SweepSettings, *, config: Any, launcher: Any,
                 config_loader: Any = None) -> None:
        self.settings, self.config, self.launcher = settings, config, launcher
        self.config_loader = config_loader  # composes the job files of fused trials
        self.n_trials = settings.n_trials  # a grid lowers it to its size
        self.other_workers = resume.OtherWorkers(settings.heartbeat, settings.storage)
        self.deadline: float | None = None  # Unix time the budget ends, unless on_timeout=finish
        self.progress: SweepProgress | None = None
        # Per trial number: the earlier attempts a trial runs again, the latest first (empty
        # for a first attempt), read once when it is asked
        self.earlier_attempts: dict[int, list[FrozenTrial]] = {}
        self.store = None  # the artifact store, once checked (hydra.sweeper.artifacts)
        self.prior: Prior | None = None  # hydra.sweeper.prior, once checked against the space

    def run(self, arguments: list[str]) -> None:
        started = sweep_started()  # a worker's budget counts from its sweep command's start
        space, fixed_params, fixed_overrides = parse_space(
            [f"{key}={value}" for key, value in self.settings.params.items()] + list(arguments))
        for name in fixed_params:
            space.pop(name, None)
        settings = self.settings
        if not space and settings.custom_search_space is None:
            # e.g. a config meant to be extended (a search preset's base) run as it is
            raise UserError("the search space is empty: hydra.sweeper.params names no parameter "
                            "and the command line sweeps none; allowed: a config that gives "
                            "hydra.sweeper.params (a search preset), or a parameter to search, "
                            "e.g. 'x=interval(0,1)'")
        check_fuse_by(settings.fuse_by, space, fixed_params)
        first_trials = checked_trials(settings.enqueue_trials, space, fixed_params)
        imported = trials_to_import(settings.warm_start, settings.storage, space,
                                    settings.directions,
                                    conditional=settings.custom_search_space is not None)
        sampler = build_sampler(settings.sampler)
        grid = grid_of(sampler, space)
        self.prior = checked_prior(settings.prior, space, fixed_params)
        if grid is not None:
            if self.prior is not None:
                raise UserError("hydra.sweeper.prior shapes what a sampler proposes, and a grid "
                                "proposes every point; allowed: no prior with the grid sampler "
                                "(hydra/sweeper/prior=none)")
            sampler = sampler(grid)
            self.n_trials = min(self.n_trials, grid_size(grid))
            log.info(f"GridSampler: n_trials is {self.n_trials}, the size of the grid")
        sampler = self._with_prior(sampler, settings.sampler.get("seed"))
        if self.prior is not None and not is_worker():  # said once, by the sweep command
            log.info(f"Prior on {', '.join(self.prior.params)}: {self.prior.share:.0%} of the "
                     f"first trials drawn from it, half that after {self.prior.halved_after:g}")

        if settings.artifacts:
            self.store = checked_store(settings.artifacts)
        if is_worker():  # not again "Using an existing study" per worker
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = create_study(settings.study_name, settings.storage, sampler, settings.pruner,
                             settings.directions, settings.heartbeat)
        # The threads a worker is given say how it runs, not what it trains
        execution_keys = (*settings.execution_keys, *filter(None, [settings.threads_key]))
        check_same_settings(study, study_settings(self.config, space, execution_keys),
                            settings.storage)
        resume.fail_interrupted(study, settings.max_retry, settings.storage)
        import_trials(study, imported)
        enqueue(study, first_trials)
        self._reseed_on_resume(study, grid)
        # a sweep command's worker: that command has said it
        log.log(logging.DEBUG if is_worker() else logging.INFO,
                f"Study {study.study_name} in {settings.storage or 'memory'}: "
                f"{len(resume.counted(study))} of {self.n_trials} trials recorded or running; "
                f"pruner {type(settings.pruner).__name__}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        workers = choose_workers(settings, str(self.config.hydra.launcher._target_))
        if not is_worker():
            log.info(f"Workers: {workers.why}")
        if workers.count > 1:
            self._run_workers(study, workers, arguments, sweep_dir, started)
            return
        # The wall-clock moment the budget ends, for the jobs: with on_timeout=prune they stop
        # at their first epoch report after it.
        self.deadline = (time.time() + settings.timeout - (time.monotonic() - started)
                         if settings.timeout is not None and settings.on_timeout != "finish"
                         else None)
        self.progress = SweepProgress(settings.progress, sweep_dir=sweep_dir,
                                      n_trials=self.n_trials, timeout=settings.timeout,
                                      started=started)
        try:
            with shared_with_jobs(study, absolute_storage(settings.storage)):
                self._loop(study, space, sweep_dir, fixed_params, fixed_overrides, started)
        finally:
            self.progress.close()
        if not is_worker():  # a sweep command's worker leaves the ending to that command
            self.progress.ended(study, write_results(study, sweep_dir))

    def _run_workers(self, study: optuna.Study, workers: Workers, arguments: list[str],
                     sweep_dir: Path, started: float) -> None:
        """Run the search in `workers` processes on the study set up here, then end it here."""
        commands = worker_commands(self.settings, workers, config=self.config,
                                   arguments=list(arguments), sweep_dir=sweep_dir)
        code = run_workers(commands, environments(workers, started))
        progress = SweepProgress(self.settings.progress, sweep_dir=sweep_dir, bar=False,
                                 n_trials=self.n_trials, timeout=self.settings.timeout,
                                 started=started)
        progress.ended(study, write_results(study, sweep_dir))
        if code > 128:  # stopped by Ctrl-C or SIGTERM, passed on to the workers
            log.error("the search was interrupted: the same command resumes it")
            sys.exit(code)
        if code != 0:
            log.error(f"a worker exited with code {code}: its lines above say why")
            sys.exit(code if 0 < code < 256 else 1)

    def _loop(self, study: optuna.Study, space: dict[str, BaseDistribution], sweep_dir: Path,
              fixed_params: dict, fixed_overrides: list[str], started: float) -> None:
        while True:
            timeout = self.settings.timeout
            if timeout is not None and time.monotonic() - started >= timeout:
                log.info(f"hydra.sweeper.timeout={timeout} s reached: no new trials; "
                         f"{len(resume.counted(study))} of {self.n_trials} trials in the study")
                break
            resume.fail_stale(study, self.settings.heartbeat)
            # A worker beside this one may have been killed since (mlp_sweep.workers)
            resume.fail_interrupted(study, self.settings.max_retry, self.settings.storage)
            missing = resume.still_to_run(study, self.n_trials)
            if missing <= 0:
                if self.other_workers.wait(study, self.n_trials):
                    continue
                if resume.wait_for_unlabelled(study):  # a kill between ask and label
                    continue
                break
            groups = ask_groups(study, lambda: self._ask(study, sweep_dir, space),
                                jobs=self.settings.n_jobs, fuse=self.settings.fuse,
                                fuse_by=self.settings.fuse_by, missing=missing,
                                alone=lambda trial: bool(self.earlier_attempts[trial.number]))
            if not groups:
                break
            returns = self._launch(study, groups, fixed_params, fixed_overrides)
            for group, job in zip(groups, returns):
                for trial in group:
                    self._tell(study, trial, job, fused=len(group) > 1)
                    self.progress.trial_ended(study, trial.number)
            self._stop_on_failures(study, returns)

    def _reseed_on_resume(self, study: optuna.Study, grid: dict | None) -> None:
        """The same seed would replay the random start-up points the study already holds: on a
        resume it is mixed with the trial count, not added to it (workers get seeds 123, 124...
        from mlp_sweep.workers, and 123 + 1 trial would collide with the next worker's 124)."""
        seed = self.settings.sampler.get("seed")
        if seed is None or not resume.counted(study):
            return
        mixed = int(numpy.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
        sampler = build_sampler(self.settings.sampler, seed=mixed)
        study.sampler = sampler(grid) if grid is not None else self._with_prior(sampler, mixed)

    def _with_prior(self, sampler: optuna.samplers.BaseSampler,
                    seed: int | None) -> optuna.samplers.BaseSampler:
        """`sampler`, drawing a share of the trials from the prior where the sweep has one."""
        return sampler if self.prior is None else PriorSampler(sampler, self.prior, seed=seed)

    def _ask(self, study: optuna.Study, sweep_dir: Path,
             space: dict[str, BaseDistribution]) -> optuna.Trial | None:
        trial = resume.ask_as_ours(study, space, self.settings.heartbeat, self.settings.storage)
        trial.set_user_attr(trial_attrs.RUN_DIR, str(sweep_dir / str(trial.number)))
        if resume.is_surplus(study, trial, self.n_trials):
            return None
        # A retry (its earlier attempt interrupted or stale) goes on from what they left.
        self.earlier_attempts[trial.number] = [t for t in resume.attempts(study, trial)
                                               if trial_attrs.run_dir(t)]
        return trial

    def _launch(self, study: optuna.Study, groups: list[list[optuna.Trial]], fixed_params: dict,
                fixed_overrides: list[str]) -> list[JobReturn]:
        """Run the groups as one batch of Hydra jobs, one job per group (fused_groups.py), with
        heartbeats (RDB storages) meanwhile."""
        overrides = []
        for first, *others in groups:
            for trial in others:  # trained by the first one's job: its folder, as Hydra's
                write_job_files(self.config_loader, self.config,
                                self._overrides(trial, fixed_params, fixed_overrides),
                                trial_attrs.run_dir(trial))
                self._spec(study, trial).write()
                trial.set_user_attr(trial_attrs.TRAINED_WITH, [t.number for t in (first, *others)])
            if others:
                first.set_user_attr(trial_attrs.TRAINED_WITH, [t.number for t in (first, *others)])
            spec = self._spec(study, first, fused=tuple(str(trial_attrs.run_dir(t)) for t in others))
            overrides.append((*self._overrides(first, fixed_params, fixed_overrides),
                              f"+hydra.job.env_set.{TRIAL_VARIABLE}={hydra_quoted(spec.write())}",
                              *self._quiet_console()))
        with contextlib.ExitStack() as beating:
            for trial in (t for group in groups for t in group):
                beating.enter_context(heartbeat_thread(study, trial))
            return self.launcher.launch(overrides, initial_job_idx=groups[0][0].number)

    def _overrides(self, trial: optuna.Trial, fixed_params: dict,
                   fixed_overrides: list[str]) -> list[str]:
        """The trial's job overrides, its folder named by its number."""
        return [*self._job_overrides(trial, fixed_params, fixed_overrides),
                f"hydra.sweep.subdir={trial.number}"]

    def _spec(self, study: optuna.Study, trial: optuna.Trial,
              fused: tuple[str, ...] = ()) -> TrialSpec:
        """The trial as its job reads it (trial_spec.py)."""
        return TrialSpec(
            study_name=study.study_name, storage=absolute_storage(self.settings.storage),
            trial_id=trial_id(trial), number=trial.number, run_dir=str(trial_attrs.run_dir(trial)),
            deadline=self.deadline, prune_early=self.settings.on_timeout == "prune_early",
            pruner=self.settings.pruner_config, fused=fused,
            resume_from=tuple(str(trial_attrs.run_dir(t))
                              for t in self.earlier_attempts[trial.number]),
            artifacts=self.settings.artifacts,
            retry_files=tuple(trial_attrs.retry_files(t)
                              for t in self.earlier_attempts[trial.number]))

    def _quiet_console(self) -> list[str]:
        """With progress.quiet_jobs, the jobs' console shows warnings only: the console is the
        search's, each job's INFO lines stay in its log file (Hydra's default job_logging)."""
        console = OmegaConf.select(self.config, "hydra.job_logging.handlers.console")
        if not self.settings.progress.quiet_jobs or console is None:
            return []
        return ["++hydra.job_logging.handlers.console.level=WARNING"]

    def _job_overrides(self, trial: optuna.Trial, fixed_params: dict,
                       fixed_overrides: list[str]) -> list[str]:
        """The trial's params, then the command's fixed values, as Hydra overrides (the stock
        sweeper's order); the custom search space adds its params to the trial first."""
        for name, value in fixed_params.items():
            trial.set_user_attr(name, value)
        if self.settings.custom_search_space:
            self.settings.custom_search_space(self.config, trial)
        overlap = trial.params.keys() & fixed_params.keys()
        if overlap:
            raise UserError(f"{sorted(overlap)} are both searched and fixed; allowed: each key "
                            "either in hydra.sweeper.params or on the command line")
        params = {**trial.params, **fixed_params}
        return [f"{name}={value}" for name, value in params.items()] + list(fixed_overrides)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, job: JobReturn,
              fused: bool = False) -> None:
        if resume.taken_over(study, trial):  # another worker took this one for dead
            return
        with resume.unless_taken_over(study, trial):  # or does so meanwhile
            self._record(study, trial, job, fused)

    def _record(self, study: optuna.Study, trial: optuna.Trial, job: JobReturn,
                fused: bool) -> None:
        """How the trial's job ended, told to the study."""
        state, values = TrialState.COMPLETE, None
        try:
            value = job.return_value  # raises what the job raised
            if fused:
                value = member_result(value, trial.number)
        except Exception as error:
            state = self._failed(trial, error)
        else:
            if isinstance(value, optuna.TrialPruned):  # a job may return it, not raise it
                state = self._pruned(trial, value)
            else:
                try:
                    values = objective_values(value, len(self.settings.directions))
                except ValueError as error:
                    trial.set_user_attr(trial_attrs.UNRECORDABLE, True)
                    state = self._failed(trial, error)
        self._upload(trial)
        try:
            study.tell(trial, values, state=state)
        except RuntimeError as error:
            # The grid sampler stops the study once every point is asked; outside optimize()
            # Optuna reports that as this error, after recording the trial.
            if "Study.stop" not in str(error):
                raise

    def _upload(self, trial: optuna.Trial) -> None:
        """The ended trial's run files to the artifact store, if the sweep has one, and the
        files it and its earlier attempts kept for a retry out of it. A store that fails now
        costs the trial its remote copy, not its result."""
        if self.store is None:
            return
        folder = trial_attrs.run_dir(trial)
        ended = storage_of(trial.study).get_trial(trial_id(trial))  # as its job recorded it
        retry_files.drop(self.store, [ended, *self.earlier_attempts.get(trial.number, [])])
        try:
            upload_run(self.store, self.settings.artifacts, trial, folder,
                       self.settings.artifacts_include)
        except Exception as error:
            log.warning(f"Trial {trial.number}: its files in {folder} could not be uploaded to "
                        f"{self.settings.artifacts} ({first_line(error)}); they stay on this host")

    def _failed(self, trial: optuna.Trial, error: BaseException) -> TrialState:
        if isinstance(error, optuna.TrialPruned):  # a task may raise it instead of returning it
            return self._pruned(trial, error)
        reason = f"{type(error).__name__}: {error}"
        trial.set_user_attr(trial_attrs.FAIL_REASON, reason)
        status = Path(trial_attrs.run_dir(trial) or "", "status.json")
        log.warning(f"Trial {trial.number} failed: {reason}"
                    + (f" (traceback in {status})" if status.is_file() else ""))
        return TrialState.FAIL

    def _pruned(self, trial: optuna.Trial, pruned: optuna.TrialPruned) -> TrialState:
        trial.set_user_attr(trial_attrs.PRUNED_BY, trial_attrs.PRUNED_BY_BUDGET
                            if isinstance(pruned, BudgetReached) else trial_attrs.PRUNED_BY_PRUNER)
        log.debug(f"Trial {trial.number} pruned: {pruned}")
        return TrialState.PRUNED

    def _stop_on_failures(self, study: optuna.Study, returns: list[JobReturn]) -> None:
        """Jobs that raised, beyond `max_failure_rate` of `n_trials`, stop the sweep with the last
        batch's own exception; values the study could not record do not count."""
        failures = [t for t in resume.counted(study)
                    if t.state == TrialState.FAIL and not trial_attrs.is_unrecordable(t)]
        rate = self.settings.max_failure_rate
        if len(failures) <= rate * self.n_trials:
            return
        log.error(f"{len(failures)} failed trials out of n_trials={self.n_trials} exceed "
                  f"max_failure_rate={rate}; stopping the sweep")
        for job in returns:
            job.return_value  # re-raises the job's own exception, with its traceback
        raise RuntimeError(f"{len(failures)} failed trials exceed max_failure_rate="
                           f"{rate} of n_trials={self.n_trials}")


def objective_values(value: object, directions: int) -> list[float]:
    """The task's return as one float per direction; a value Optuna cannot record (NaN, the
    wrong count, not a number) raises ValueError, and the trial is recorded FAIL."""
    values = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
    if len(values) != directions:
        raise ValueError(f"the task returned {len(values)} value(s) for {directions} "
                         f"direction(s): {value!r}")
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"the task returned {value!r}, not numbers") from None
    if any(math.isnan(f) for f in floats):
        raise ValueError(f"the task returned NaN: {value!r}")
    return floats

