"""Resume bookkeeping: which trials of a study count toward `n_trials`, and what becomes of
trials whose worker is gone.

- A trial left RUNNING by a sweep process killed on this host is failed as `interrupted` and not
  counted, and queued again with its params (up to `max_retry` times), as Optuna's heartbeat
  callback queues a stale one: the retry goes on from the last checkpoint the trial left.
- With heartbeats (RDB storages), a trial whose worker on any host went silent is failed by
  Optuna and queued again with its params; its retry is counted instead of it.
- A trial asked beyond `n_trials` in a race between workers is failed as `surplus`.
"""

import datetime
import logging
import os
import socket
import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.optuna_compat import (record_heartbeat, retried_from, set_user_attr,
                                              storage_of, trial_id)
from mlp_sweep.sweeping.storage import Heartbeat
from mlp_sweep.sweeping.warm_start import own_trials

log = logging.getLogger(__name__)

# This process as trials record it; MLP_SWEEP_HOST names the host where containers share one name.
HOST = os.environ.get("MLP_SWEEP_HOST") or socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"
UNLABELLED_GRACE = datetime.timedelta(seconds=60)


def counted(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that use up `n_trials`: all but those interrupted, asked in surplus, or failed
    for want of a heartbeat and run again (their retry is counted instead), and those a warm
    start imported."""
    trials = own_trials(study)
    retried = {number for t in trials for number in retried_from(t)}
    return [t for t in trials
            if not (t.state == TrialState.FAIL
                    and (t.number in retried or trial_attrs.is_uncounted_failure(t)))]


def still_to_run(study: optuna.Study, n_trials: int) -> int:
    """How many trials the study still needs; a retry queued for a dead worker's trial
    (WAITING) is counted but still to be run."""
    return n_trials - len([t for t in counted(study) if t.state != TrialState.WAITING])


def label_as_ours(study: optuna.Study, trial: optuna.Trial, heartbeat: Heartbeat | None) -> None:
    """Name this process as the trial's worker; with heartbeats, beat from its first moment, so
    that a worker killed now is found."""
    if heartbeat is not None:
        record_heartbeat(study, trial)
    trial.set_user_attr(trial_attrs.WORKER, WORKER)


def is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Another worker may have asked for the last trial at the same moment: the trial numbers say
    who was first, and the later one is failed as surplus."""
    earlier = [t for t in counted(study) if t.number < trial.number]
    if len(earlier) < n_trials:
        return False
    trial.set_user_attr(trial_attrs.SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)
    return True


def fail_interrupted(study: optuna.Study, max_retry: int | None) -> None:
    """Trials still RUNNING whose worker process on this host is gone were killed with it;
    so were those never labelled with a worker (killed between ask and label) after a grace
    period that a live worker needs far less than to label its trial. Each is failed and queued
    again with its params."""
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = trial_attrs.worker(trial).rpartition(":")
        dead = worker_host == HOST and pid.isdigit() and not _alive(int(pid))
        unlabelled = not trial_attrs.worker(trial) and trial.datetime_start is not None \
            and now - trial.datetime_start > UNLABELLED_GRACE
        if dead or unlabelled:
            try:
                set_user_attr(study, trial, trial_attrs.INTERRUPTED, True)
                study.tell(trial.number, state=TrialState.FAIL)
            except (UpdateFinishedTrialError, ValueError):  # a worker beside this one told it
                # first (the storage refuses a second tell, or the study read it finished)
                continue
            again = queue_retry(study, trial, max_retry)
            log.warning(f"Trial {trial.number} was interrupted (worker {pid or '?'} is gone): "
                        "recorded FAIL, not counted; "
                        + ("queued again with its params, to go on from its last checkpoint"
                           if again else f"not run again (max_retry={max_retry} reached)"))


def wait_for_unlabelled(study: optuna.Study) -> bool:
    """A RUNNING trial no worker has labelled yet is counted, yet may be one a killed sweep
    asked for and never ran: a sweep that would end on it waits a second and says True (look
    again; fail_interrupted fails it once the grace period is over), else False."""
    if not any(not trial_attrs.worker(t) for t in
               study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        return False
    time.sleep(1)
    return True


def queue_retry(study: optuna.Study, trial: FrozenTrial, max_retry: int | None) -> bool:
    """Queue `trial` to run again with its params, recorded as Optuna's heartbeat callback records
    a retry (its retry history), so that both kinds read alike; False past `max_retry`."""
    history = [*retried_from(trial), trial.number]
    if max_retry is not None and len(history) > max_retry:
        return False
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={**trial.system_attrs, "failed_trial": history[0],
                      "retry_history": history}))
    return True


def attempts(study: optuna.Study, trial: optuna.Trial) -> list[FrozenTrial]:
    """The earlier attempts `trial` runs again, the latest first (its retry history); the study's
    other trials are read only for a retry."""
    stored = storage_of(study).get_trial(trial_id(trial))  # with Optuna's records
    if not retried_from(stored):
        return []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chain, current = [], stored
    while True:
        earlier = retried_from(current)[-1] if retried_from(current) else None
        if earlier is None or earlier not in by_number:
            return chain
        current = by_number[earlier]
        chain.append(current)


def fail_stale(study: optuna.Study, heartbeat: Heartbeat | None) -> None:
    """Optuna's check for trials whose worker, on any host, stopped sending heartbeats: they
    are recorded FAIL and queued again with their params (RetryHeartbeatStaleTrialCallback)."""
    if heartbeat is None:
        return
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number in before:
            log.warning(f"Trial {trial.number} of worker {trial_attrs.worker(trial) or '?'} "
                        f"sent no heartbeat for {heartbeat.grace_period or 2 * heartbeat.interval}"
                        " s: recorded FAIL and queued again with its params")


class OtherWorkers:
    """With heartbeats, a trial another worker still runs may yet go stale, and its retry needs a
    worker that is still here: a worker with nothing left to ask for waits while others run."""

    def __init__(self, heartbeat: Heartbeat | None) -> None:
        self.heartbeat = heartbeat
        self.said_waiting = False  # the log line, once

    def wait(self, study: optuna.Study, n_trials: int) -> bool:
        """While another worker's trial runs, wait a heartbeat interval and say True (look
        again); else False (the study is done)."""
        if self.heartbeat is None:
            return False
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return False
        if not self.said_waiting:
            log.info(f"All {n_trials} trials asked; waiting for trial(s) "
                     f"{', '.join(str(t.number) for t in running)} of other workers, to run "
                     "again any whose worker stops sending heartbeats")
            self.said_waiting = True
        time.sleep(self.heartbeat.interval)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
