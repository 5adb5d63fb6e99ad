"""The Optuna sweep behind `hparams_search=optuna`: the stock Hydra Optuna sweeper, extended.

What the stock 1.4 sweeper lacks, added here on Optuna's own machinery:
- resume: `n_trials` is the study's total; a re-run asks only for the missing trials, and trials
  left RUNNING by a killed sweep on this host are marked FAIL (`interrupted`) and run again;
- job folders named by trial number, so a resumed sweep never reuses a folder (hydra#3328);
- pruning: each job gets its trial's id, reports the objective per epoch (mlp_sweep.trial_link)
  stops it when the pruner says so; the job returns TrialPruned and the trial is recorded PRUNED;
- failures: a job that raises is recorded FAIL with the reason in the trial's user attributes,
  and the sweep goes on until failures exceed `max_failure_rate` of `n_trials`;
- storages given as a string: RDB URLs, and `journal:PATH` for Optuna's JournalStorage;
- several sweep processes on one study (async workers): a trial asked beyond `n_trials` by a
  race between workers is marked FAIL (`surplus`) and not counted;
- `best.yaml` beside `optimization_results.yaml`: the best trial, its folder, config and command;
- `timeout`: a budget in seconds per command, after which no new trial is asked for.
"""

import datetime
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy
import optuna
import yaml
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from mlp_sweep.runs import load_yaml, reproduce_command
from mlp_sweep.storage import open_storage
from mlp_sweep.trial_link import TRIAL_ID_VARIABLE

log = logging.getLogger(__name__)

WORKER = f"{socket.gethostname()}:{os.getpid()}"
NOT_COUNTED = ("interrupted", "surplus")  # FAIL trials that do not use up n_trials
UNLABELLED_GRACE = datetime.timedelta(seconds=60)


class ResumableOptunaSweep(OptunaSweeperImpl):
    def __init__(self, *, pruner: Any, custom_search_space: str | None,
                 sampler_config: DictConfig, timeout: float | None = None, **stock: Any) -> None:
        super().__init__(custom_search_space=None, **stock)
        self.sampler_config = sampler_config
        self.timeout = timeout
        self.pruner = instantiate(pruner, _execution_whitelist_=["optuna.pruners.*"]) \
            if pruner else optuna.pruners.NopPruner()
        if custom_search_space:
            self.custom_search_space_extender = instantiate(
                {"_target_": custom_search_space, "_partial_": True},
                _execution_whitelist_=[custom_search_space])

    def sweep(self, arguments: list[str]) -> None:
        started = time.monotonic()
        _check_timeout(self.timeout)
        self._process_searchspace_config()
        space, fixed_params, fixed_overrides = create_params_from_overrides(
            self._parse_sweeper_params_config() + list(arguments))
        for name in fixed_params:
            space.pop(name, None)

        study = optuna.create_study(
            study_name=self.study_name, storage=open_storage(self.storage), sampler=self.sampler,
            pruner=self.pruner, directions=self._get_directions(), load_if_exists=True)
        self._fail_interrupted(study)
        done = counted(study)
        seed = self.sampler_config.get("seed")
        if done and seed is not None:
            # The same seed would replay the random start-up points the study already holds. Mixed
            # with the trial count, not added to it: workers get seeds 123, 124... (mlp_sweep.workers)
            # and 123 + 1 trial would collide with the next worker's 124.
            mixed = int(numpy.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
            study.sampler = instantiate(self.sampler_config, seed=mixed,
                                        _execution_whitelist_=["optuna.samplers.*"])
        log.info(f"Study {study.study_name} in {self.storage or 'memory'}: {len(done)} of "
                 f"{self.n_trials} trials recorded or running; pruner {type(self.pruner).__name__}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()

        while (missing := self.n_trials - len(counted(study))) > 0:
            if self.timeout is not None and time.monotonic() - started >= self.timeout:
                log.info(f"hydra.sweeper.timeout={self.timeout} s reached: no new trials; "
                         f"{len(counted(study))} of {self.n_trials} trials in the study")
                break
            trials = [t for t in (self._ask(study, sweep_dir) for _ in range(min(self.n_jobs, missing)))
                      if t]
            if not trials:
                break
            overrides = [
                (*job, f"hydra.sweep.subdir={trial.number}",
                 f"+hydra.job.env_set.{TRIAL_ID_VARIABLE}={trial._trial_id}")
                for job, trial in zip(
                    self._configure_trials(trials, space, fixed_params, fixed_overrides), trials)
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            for trial, job in zip(trials, returns):
                self._tell(study, trial, job)
            failures = [t for t in counted(study) if t.state == TrialState.FAIL]
            if len(failures) > self.max_failure_rate * self.n_trials:
                log.error(f"{len(failures)} failed trials out of n_trials={self.n_trials} exceed "
                          f"max_failure_rate={self.max_failure_rate}; stopping the sweep")
                for job in returns:
                    job.return_value  # re-raises the job's own exception, with its traceback
        self._write_results(study, sweep_dir)

    def _ask(self, study: optuna.Study, sweep_dir: Path) -> optuna.Trial | None:
        trial = study.ask()
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("run_dir", str(sweep_dir / str(trial.number)))
        # Another worker may have asked for the last trial at the same moment: the trial numbers
        # say who was first, and the later one steps back.
        earlier = [t for t in counted(study) if t.number < trial.number]
        if len(earlier) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return None
        return trial

    def _tell(self, study: optuna.Study, trial: optuna.Trial, job) -> None:
        try:
            value = job.return_value  # raises what the job raised
            if isinstance(value, optuna.TrialPruned):  # mlp_sweep.train returns it, not raises
                study.tell(trial, state=TrialState.PRUNED)
                log.info(f"Trial {trial.number} pruned: {value}")
            else:
                study.tell(trial, float(value))
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {reason} "
                        f"(traceback in {trial.user_attrs.get('run_dir')}/status.json)")

    def _fail_interrupted(self, study: optuna.Study) -> None:
        """Trials still RUNNING whose worker process on this host is gone were killed with it;
        so were those never labelled with a worker (killed between ask and label) after a grace
        period that a live worker needs far less than to label its trial."""
        host = socket.gethostname()
        now = datetime.datetime.now()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
            dead = worker_host == host and pid.isdigit() and not _alive(int(pid))
            unlabelled = "worker" not in trial.user_attrs and trial.datetime_start is not None \
                and now - trial.datetime_start > UNLABELLED_GRACE
            if dead or unlabelled:
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                study.tell(trial.number, state=TrialState.FAIL)
                log.warning(f"Trial {trial.number} was interrupted (worker {pid or '?'} is gone): "
                            "recorded FAIL, not counted, its trial runs again")

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            log.warning("No trial completed: no best to report")
            return
        if len(self._get_directions()) > 1:
            return _pareto_results(study, sweep_dir)
        best = study.best_trial
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                         "best_value": best.value}),
                       sweep_dir / "optimization_results.yaml")
        run_dir = Path(best.user_attrs.get("run_dir", ""))
        config = load_yaml(run_dir / ".hydra" / "config.yaml")
        overrides = load_yaml(run_dir / ".hydra" / "overrides.yaml") or []
        (sweep_dir / "best.yaml").write_text(yaml.safe_dump({
            "trial": best.number,
            "value": best.value,
            "run_dir": str(run_dir),
            "params": best.params,
            "command": reproduce_command(overrides),
            "config": config,
        }, sort_keys=False))
        log.info(f"Best trial {best.number}: {best.value} in {run_dir}; written to {sweep_dir}/best.yaml")


def _check_timeout(timeout: object) -> None:
    """A bad timeout stops the sweep before a study or a folder exists, with one line."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        log.error(f"Error: hydra.sweeper.timeout={timeout!r} is not allowed; allowed: a number "
                  "of seconds > 0, or null (no time limit)")
        sys.exit(1)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that use up `n_trials`: all but those interrupted or asked in surplus."""
    return [t for t in study.get_trials(deepcopy=False)
            if not (t.state == TrialState.FAIL and any(t.user_attrs.get(k) for k in NOT_COUNTED))]


def _pareto_results(study: optuna.Study, sweep_dir: Path) -> None:
    """Several objectives have no single best: the stock sweeper's Pareto-front record."""
    OmegaConf.save(OmegaConf.create({"name": "optuna", "solutions": [
        {"params": t.params, "values": t.values} for t in study.best_trials]}),
        sweep_dir / "optimization_results.yaml")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
