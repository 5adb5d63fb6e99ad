"""The Optuna sweep behind `hydra/sweeper=mlp_optuna`: the stock Hydra Optuna sweeper's
behaviour and configs, run on Hydra's public Sweeper interface and Optuna's own machinery.

From the stock plugin it takes its configs (samplers, `params` in Hydra's sweep syntax) and its
reading of that syntax into Optuna distributions (`create_params_from_overrides`); the loop is
its own, because the stock one is a single method with no step to extend. What it adds:
- resume: `n_trials` is the study's total; a re-run asks only for the missing trials, and trials
  left RUNNING by a killed sweep on this host are marked FAIL (`interrupted`) and run again;
- job folders named by trial number, so a resumed sweep never reuses a folder (hydra#3328);
- pruning: each job gets its trial's id, reports the objective per epoch (mlp_sweep.sweeping.trial_link)
  stops it when the pruner says so; the job returns TrialPruned and the trial is recorded PRUNED;
- failures: a job that raises is recorded FAIL with the reason in the trial's user attributes,
  and the sweep goes on until failures exceed `max_failure_rate` of `n_trials`;
- storages given as a string: RDB URLs, and `journal:PATH` for Optuna's JournalStorage;
- several sweep processes on one study (async workers): a trial asked beyond `n_trials` by a
  race between workers is marked FAIL (`surplus`) and not counted;
- `best.yaml` beside `optimization_results.yaml`: the best trial, its folder, config and command;
- `timeout`: a budget in seconds per command, after which no new trial is asked for.
"""

import contextlib
import datetime
import enum
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy
import optuna
import yaml
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from mlp_sweep.analysis.runs import load_yaml, reproduce_command
from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.enqueued import checked_trials, enqueue
from mlp_sweep.sweeping.storage import Heartbeat, create_study
from mlp_sweep.sweeping.study_settings import check_same_settings, study_settings
from mlp_sweep.sweeping.trial_link import TRIAL_ID_VARIABLE

log = logging.getLogger(__name__)

# This process as trials record it; MLP_SWEEP_HOST names the host where containers share one name.
HOST = os.environ.get("MLP_SWEEP_HOST") or socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"
NOT_COUNTED = ("interrupted", "surplus")  # FAIL trials that do not use up n_trials
UNLABELLED_GRACE = datetime.timedelta(seconds=60)
SAMPLER_TARGETS = ["optuna.samplers.*", "hydra_plugins.hydra_optuna_sweeper.*"]


class ResumableOptunaSweep(Sweeper):
    def __init__(self, *, sampler: DictConfig, direction: Any, storage: str | None,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None, pruner: Any, custom_search_space: str | None,
                 timeout: float | None = None, heartbeat: Heartbeat | None = None,
                 enqueue_trials: Any = None) -> None:
        self.sampler_config = sampler
        self.enqueue_trials = enqueue_trials
        # A partial for the grid sampler, which needs the search space (known in sweep())
        self.sampler = instantiate(sampler, _execution_whitelist_=SAMPLER_TARGETS)
        self.directions = directions_of(direction)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params or {}
        self.timeout = timeout
        self._said_waiting = False  # the log line of _wait_for_other_workers, once
        self.heartbeat = heartbeat
        self.pruner = instantiate(pruner, _execution_whitelist_=["optuna.pruners.*"]) \
            if pruner else optuna.pruners.NopPruner()
        self.custom_search_space_extender = instantiate(
            {"_target_": custom_search_space, "_partial_": True},
            _execution_whitelist_=[custom_search_space]) if custom_search_space else None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except UserError as error:  # bad input: one line, nothing half-made
            with contextlib.suppress(OSError):  # the sweep folder, if made and still empty
                os.rmdir(str(self.config.hydra.sweep.dir))
            refuse(error)

    def _sweep(self, arguments: list[str]) -> None:
        started = time.monotonic()
        space, fixed_params, fixed_overrides = parse_space(
            [f"{key}={value}" for key, value in self.params.items()] + list(arguments))
        for name in fixed_params:
            space.pop(name, None)
        first_trials = checked_trials(self.enqueue_trials, space, fixed_params)
        grid = self._grid_choices(space)
        if grid is not None:
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            log.info(f"GridSampler: n_trials is {self.n_trials}, the size of the grid")

        study = create_study(self.study_name, self.storage, self.sampler, self.pruner,
                             self.directions, self.heartbeat)
        check_same_settings(study, study_settings(self.config, space), self.storage)
        self._fail_interrupted(study)
        enqueue(study, first_trials)
        done = counted(study)
        seed = self.sampler_config.get("seed")
        if done and seed is not None:
            # The same seed would replay the random start-up points the study already holds. Mixed
            # with the trial count, not added to it: workers get seeds 123, 124... (mlp_sweep.workers)
            # and 123 + 1 trial would collide with the next worker's 124.
            mixed = int(numpy.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
            sampler = instantiate(self.sampler_config, seed=mixed,
                                  _execution_whitelist_=SAMPLER_TARGETS)
            study.sampler = sampler(grid) if grid is not None else sampler
        log.info(f"Study {study.study_name} in {self.storage or 'memory'}: {len(done)} of "
                 f"{self.n_trials} trials recorded or running; pruner {type(self.pruner).__name__}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()

        while True:
            if self.timeout is not None and time.monotonic() - started >= self.timeout:
                log.info(f"hydra.sweeper.timeout={self.timeout} s reached: no new trials; "
                         f"{len(counted(study))} of {self.n_trials} trials in the study")
                break
            self._fail_stale(study)
            # A retry queued for a dead worker's trial (WAITING) is counted but still to be run.
            missing = self.n_trials - len([t for t in counted(study)
                                           if t.state != TrialState.WAITING])
            if missing <= 0:
                if self._wait_for_other_workers(study):
                    continue
                break
            trials = [t for t in (self._ask(study, sweep_dir, space)
                                  for _ in range(min(self.n_jobs, missing))) if t]
            if not trials:
                break
            overrides = [
                (*self._job_overrides(trial, fixed_params, fixed_overrides),
                 f"hydra.sweep.subdir={trial.number}",
                 f"+hydra.job.env_set.{TRIAL_ID_VARIABLE}={trial._trial_id}")
                for trial in trials
            ]
            with contextlib.ExitStack() as beating:  # heartbeats while the jobs run (RDB storages)
                for trial in trials:
                    beating.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
                returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            for trial, job in zip(trials, returns):
                self._tell(study, trial, job)
            failures = [t for t in counted(study) if t.state == TrialState.FAIL]
            if len(failures) > self.max_failure_rate * self.n_trials:
                log.error(f"{len(failures)} failed trials out of n_trials={self.n_trials} exceed "
                          f"max_failure_rate={self.max_failure_rate}; stopping the sweep")
                for job in returns:
                    job.return_value  # re-raises the job's own exception, with its traceback
                raise RuntimeError(f"{len(failures)} failed trials exceed max_failure_rate="
                                   f"{self.max_failure_rate} of n_trials={self.n_trials}")
        self._write_results(study, sweep_dir)

    def _job_overrides(self, trial: optuna.Trial, fixed_params: dict,
                       fixed_overrides: list[str]) -> list[str]:
        """The trial's params, then the command's fixed values, as Hydra overrides (the stock
        sweeper's order); the custom search space adds its params to the trial first."""
        for name, value in fixed_params.items():
            trial.set_user_attr(name, value)
        if self.custom_search_space_extender:
            self.custom_search_space_extender(self.config, trial)
        overlap = trial.params.keys() & fixed_params.keys()
        if overlap:
            raise UserError(f"{sorted(overlap)} are both searched and fixed; allowed: each key "
                            "either in hydra.sweeper.params or on the command line")
        params = {**trial.params, **fixed_params}
        return [f"{name}={value}" for name, value in params.items()] + list(fixed_overrides)

    def _ask(self, study: optuna.Study, sweep_dir: Path,
             space: dict[str, BaseDistribution]) -> optuna.Trial | None:
        trial = study.ask(space)
        if self.heartbeat is not None:  # from its first moment, so a worker killed now is found
            study._storage.record_heartbeat(trial._trial_id)
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

    def _grid_choices(self, space: dict) -> dict[str, list] | None:
        """The grid when the sampler is the stock `grid` one, which can only be built once the
        search space is known (its config is a partial); else None."""
        if getattr(self.sampler, "func", None) is not optuna.samplers.GridSampler:
            return None
        try:
            return {name: grid_choices(d) for name, d in space.items()}
        except ValueError as error:
            raise UserError(f"hydra/sweeper/sampler=grid needs discrete parameters ({error}); "
                            "allowed: choice(...), range(...), int(interval(...))") from None

    def _tell(self, study: optuna.Study, trial: optuna.Trial, job) -> None:
        state, values = TrialState.COMPLETE, None
        try:
            value = job.return_value  # raises what the job raised
            if isinstance(value, optuna.TrialPruned):  # mlp_sweep.train returns it, not raises
                raise value
            values = objective_values(value, len(self.directions))
        except optuna.TrialPruned as pruned:
            state = TrialState.PRUNED
            log.info(f"Trial {trial.number} pruned: {pruned}")
        except Exception as error:
            state, reason = TrialState.FAIL, f"{type(error).__name__}: {error}"
            trial.set_user_attr("fail_reason", reason)
            status = Path(trial.user_attrs.get("run_dir", ""), "status.json")
            log.warning(f"Trial {trial.number} failed: {reason}"
                        + (f" (traceback in {status})" if status.is_file() else ""))
        try:
            study.tell(trial, values, state=state)
        except RuntimeError as error:
            # The grid sampler stops the study once every point is asked; outside optimize()
            # Optuna reports that as this error, after recording the trial.
            if "Study.stop" not in str(error):
                raise

    def _wait_for_other_workers(self, study: optuna.Study) -> bool:
        """With heartbeats, a trial another worker still runs may yet go stale, and its retry
        needs a worker that is still here: while one runs, wait a heartbeat interval and say
        True (look again); else False (the study is done)."""
        if self.heartbeat is None:
            return False
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return False
        if not self._said_waiting:
            log.info(f"All {self.n_trials} trials asked; waiting for trial(s) "
                     f"{', '.join(str(t.number) for t in running)} of other workers, to run "
                     "again any whose worker stops sending heartbeats")
            self._said_waiting = True
        time.sleep(self.heartbeat.interval)
        return True

    def _fail_stale(self, study: optuna.Study) -> None:
        """Optuna's check for trials whose worker, on any host, stopped sending heartbeats: they
        are recorded FAIL and queued again with their params (RetryHeartbeatStaleTrialCallback)."""
        if self.heartbeat is None:
            return
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.number in before:
                log.warning(f"Trial {trial.number} of worker {trial.user_attrs.get('worker', '?')} "
                            f"sent no heartbeat for {self.heartbeat.grace_period or 2 * self.heartbeat.interval} s: "
                            "recorded FAIL and queued again with its params")

    def _fail_interrupted(self, study: optuna.Study) -> None:
        """Trials still RUNNING whose worker process on this host is gone were killed with it;
        so were those never labelled with a worker (killed between ask and label) after a grace
        period that a live worker needs far less than to label its trial."""
        host = HOST
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
        if len(self.directions) > 1:
            return _pareto_results(study, sweep_dir)
        best = study.best_trial
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                         "best_value": best.value}),
                       sweep_dir / "optimization_results.yaml")
        (sweep_dir / "best.yaml").write_text(yaml.safe_dump(
            {**_trial_record(best), "value": best.value}, sort_keys=False))
        log.info(f"Best trial {best.number}: {best.value} in {best.user_attrs.get('run_dir')}; "
                 f"written to {sweep_dir}/best.yaml")


def _trial_record(trial: optuna.trial.FrozenTrial) -> dict:
    """A trial as best.yaml shows it: number, folder, params, the command and config of its run."""
    run_dir = Path(trial.user_attrs.get("run_dir", ""))
    overrides = load_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    return {"trial": trial.number, "run_dir": str(run_dir), "params": trial.params,
            "command": reproduce_command(overrides),
            "config": load_yaml(run_dir / ".hydra" / "config.yaml")}


def directions_of(direction: Any) -> list[str]:
    """`direction` as the config gives it (a name, an enum member, or a list of them)."""
    values = list(direction) if isinstance(direction, Sequence) and not isinstance(direction, str) \
        else [direction]
    return [v.name if isinstance(v, enum.Enum) else str(v) for v in values]


def grid_choices(distribution: BaseDistribution) -> list:
    """The points of a discrete distribution, for the grid sampler; ValueError for others."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        steps = round((distribution.high - distribution.low) / distribution.step)
        return [distribution.low + k * distribution.step for k in range(steps + 1)]
    raise ValueError(f"the grid sampler takes discrete distributions only, not {distribution}")


def refuse(error: UserError) -> NoReturn:
    """Stop the sweep with the one line a user needs, exit code 1."""
    log.error(f"Error: {error}")
    sys.exit(1)


def check_settings(stock: Mapping[str, Any], pruner: Any, timeout: Any, heartbeat_interval: Any,
                   grace_period: Any, max_retry: Any) -> Heartbeat | None:
    """The sweeper's own keys, checked before anything is built: one line for the first bad one.
    Returns the heartbeat settings, when heartbeat_interval is set."""
    try:
        for key, value in (("heartbeat_interval", heartbeat_interval),
                           ("grace_period", grace_period)):
            if value is not None:
                _check_number(f"hydra.sweeper.{key}", value, "an integer number of seconds >= 1, "
                              "or null", lambda v: isinstance(v, int) and v >= 1)
        if max_retry is not None:
            _check_number("hydra.sweeper.max_retry", max_retry, "an integer >= 0, or null "
                          "(no limit)", lambda v: isinstance(v, int) and v >= 0)
        _check_number("hydra.sweeper.n_trials", stock.get("n_trials"), "an integer >= 1",
                      lambda v: isinstance(v, int) and v >= 1)
        _check_number("hydra.sweeper.max_failure_rate", stock.get("max_failure_rate"),
                      "a number from 0 to 1", lambda v: 0 <= v <= 1)
        if timeout is not None:
            _check_number("hydra.sweeper.timeout", timeout,
                          "a number of seconds > 0, or null (no time limit)", lambda v: v > 0)
        sampler = str((stock.get("sampler") or {}).get("_target_", ""))
        if not sampler.startswith(("optuna.samplers.", "hydra_plugins.hydra_optuna_sweeper.")):
            raise UserError(f"hydra.sweeper.sampler._target_={sampler!r} is not allowed; allowed: "
                            "an optuna.samplers class, e.g. hydra/sweeper/sampler=tpe, random, "
                            "cmaes, nsgaii, nsgaiii, qmc, gp, grid")
        target = str((pruner or {}).get("_target_", "optuna.pruners.NopPruner"))
        if not target.startswith("optuna.pruners."):
            raise UserError(f"hydra.sweeper.pruner._target_={target!r} is not allowed; allowed: "
                            "an optuna.pruners class, e.g. hydra/sweeper/pruner=none, median, "
                            "successive_halving, hyperband")
    except UserError as error:
        refuse(error)
    if heartbeat_interval is None:
        return None
    return Heartbeat(heartbeat_interval, grace_period, max_retry)


def _check_number(key: str, value: object, allowed: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise UserError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def parse_space(entries: list[str]) -> tuple[dict, dict, list]:
    """The stock sweeper's reading of `params` and sweep arguments; an entry it cannot read is
    named in one line."""
    try:
        return create_params_from_overrides(entries)
    except Exception:
        for entry in entries:  # find the one to name
            try:
                create_params_from_overrides([entry])
            except Exception as error:
                raise UserError(
                    f"hydra.sweeper.params: {entry!r} cannot be read ({type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}); allowed: Hydra's sweep "
                    "syntax, e.g. choice(a,b), range(1,5), interval(0.1,0.5), "
                    "tag(log, interval(1e-4,1e-1))") from None
        raise


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


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that use up `n_trials`: all but those interrupted, asked in surplus, or failed
    for want of a heartbeat and run again (their retry is counted instead)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return [t for t in trials
            if not (t.state == TrialState.FAIL
                    and (t.number in retried or any(t.user_attrs.get(k) for k in NOT_COUNTED)))]


def _pareto_results(study: optuna.Study, sweep_dir: Path) -> None:
    """Several objectives have no single best: the stock sweeper's Pareto-front record, and
    best.yaml listing the front's trials."""
    front = study.best_trials
    OmegaConf.save(OmegaConf.create({"name": "optuna", "solutions": [
        {"params": t.params, "values": t.values} for t in front]}),
        sweep_dir / "optimization_results.yaml")
    (sweep_dir / "best.yaml").write_text(yaml.safe_dump({
        "directions": [d.name.lower() for d in study.directions],
        "pareto_front": [{**_trial_record(t), "values": t.values} for t in front],
    }, sort_keys=False))
    log.info(f"Pareto front of {len(front)} trial(s) written to {sweep_dir}/best.yaml")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
