"""Resume bookkeeping: which trials of a study count toward `n_trials`, and what becomes of
trials whose worker is gone.

- A trial left RUNNING by a killed sweep process is failed as `interrupted` and not counted, and
  queued again with its params (up to `max_retry` times), as Optuna's heartbeat callback queues a
  stale one: the retry goes on from the last checkpoint the trial left. A worker fails it only
  where it can prove that worker gone (its lease, below); a trial it cannot judge, or that
  another program asked for, is left alone.
- A worker whose trial another one failed for dead drops that trial and goes on.
- With heartbeats (RDB storages), a trial whose worker on any host went silent is failed by
  Optuna and queued again with its params; its retry is counted instead of it.
- A trial asked beyond `n_trials` in a race between workers is failed as `surplus`.
"""

import contextlib
import datetime
import fcntl
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.optuna_compat import (record_heartbeat, retried_from, set_user_attr,
                                              storage_of, trial_id)
from mlp_sweep.sweeping.storage import Heartbeat, lease_folder
from mlp_sweep.sweeping.warm_start import own_trials

log = logging.getLogger(__name__)

# This process as trials name it; MLP_SWEEP_HOST names the host where containers share one name.
HOST = os.environ.get("MLP_SWEEP_HOST") or socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"
UNLABELLED_GRACE = datetime.timedelta(seconds=60)
WATCH_INTERVAL = 1  # seconds between looks at other workers' trials, without heartbeats

# A worker is alive while it holds its lease: a file beside the storage, locked by it alone.
# Process ids cannot say it: they are per PID namespace, and containers on one host share its
# name, so a live worker in another namespace looks gone. The kernel drops the lock when its
# process dies, in whatever namespace; a POSIX lock (not flock) because forked children, such as
# data-loader workers, do not inherit it, and it also holds on NFS. For a database server there
# is no shared folder: a worker judges only processes of its own boot and PID namespace (start
# time included, against reused ids), and heartbeats cover the rest.
_leases: dict[Path, tuple[object, str]] = {}  # per lease folder: this process's locked file, name


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


def ask_as_ours(study: optuna.Study, space: dict[str, BaseDistribution],
                heartbeat: Heartbeat | None, storage: str | None) -> optuna.Trial:
    """`study.ask(space)` for a trial marked as this sweep's before it runs, labelled with this
    worker: its lease and process, and with heartbeats a beat from its first moment."""
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        # Asking pops a waiting trial, marked here in the same write that creates it: a worker
        # killed between ask and label leaves a trial known as ours.
        study.add_trial(optuna.create_trial(state=TrialState.WAITING,
                                            user_attrs={trial_attrs.ASKED: True}))
    trial = study.ask(space)
    if heartbeat is not None:
        record_heartbeat(study, trial)
    trial.set_user_attr(trial_attrs.LIVENESS, _this_worker(storage))
    trial.set_user_attr(trial_attrs.WORKER, WORKER)
    return trial


def is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Another worker may have asked for the last trial at the same moment: the trial numbers say
    who was first, and the later one is failed as surplus."""
    earlier = [t for t in counted(study) if t.number < trial.number]
    if len(earlier) < n_trials:
        return False
    trial.set_user_attr(trial_attrs.SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)
    return True


def fail_interrupted(study: optuna.Study, max_retry: int | None, storage: str | None) -> None:
    """Trials still RUNNING whose worker is gone were killed with it; so were trials of this
    sweep never labelled with a worker (killed between ask and label) after a grace period that
    a live worker needs far less than to label its trial. Each is failed and queued again with
    its params. A trial whose worker this process cannot prove gone is left alone."""
    folder = lease_folder(storage)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        if _worker_alive(trial, folder) is not False:
            continue
        try:
            set_user_attr(study, trial, trial_attrs.INTERRUPTED, True)
            study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):  # a worker beside this one told it
            # first (the storage refuses a second tell, or the study read it finished)
            continue
        again = queue_retry(study, trial, max_retry)
        log.warning(f"Trial {trial.number} was interrupted (worker "
                    f"{trial_attrs.worker(trial) or '?'} is gone): recorded FAIL, not counted; "
                    + ("queued again with its params, to go on from its last checkpoint"
                       if again else f"not run again (max_retry={max_retry} reached)"))
    _remove_dead_leases(folder, {trial_attrs.liveness(t).get("lease") for t in running})


def wait_for_unlabelled(study: optuna.Study) -> bool:
    """A RUNNING trial of this sweep no worker has labelled yet is counted, yet may be one a
    killed sweep asked for and never ran: a sweep that would end on it waits a second and says
    True (look again; fail_interrupted fails it once the grace period is over), else False."""
    if not any(_unlabelled_ours(t) for t in
               study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        return False
    time.sleep(1)
    return True


def taken_over(study: optuna.Study, trial: optuna.Trial) -> bool:
    """True, with a warning, when another worker finished this process's `trial` (it took this
    worker for dead): its result is not told, and the sweep goes on with its next trial."""
    stored = storage_of(study).get_trial(trial_id(trial))
    if not stored.state.is_finished():
        return False
    log.warning(f"Trial {trial.number} was recorded {stored.state.name} by another worker "
                + ("that took this one for gone (interrupted)"
                   if trial_attrs.is_uncounted_failure(stored) else "")
                + ": its result here is dropped, and this worker goes on")
    return True


@contextlib.contextmanager
def unless_taken_over(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Run the block that records `trial`'s end; if another worker finished it meanwhile, the
    storage refuses it, and that is a warning (taken_over), not an error."""
    try:
        yield
    except (UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        if not taken_over(study, trial):
            raise


def queue_retry(study: optuna.Study, trial: FrozenTrial, max_retry: int | None) -> bool:
    """Queue `trial` to run again with its params, recorded as Optuna's heartbeat callback records
    a retry (its retry history), so that both kinds read alike; False past `max_retry`."""
    history = [*retried_from(trial), trial.number]
    if max_retry is not None and len(history) > max_retry:
        return False
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={trial_attrs.ASKED: True},
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
    """A trial another worker still runs may yet be found dead (its heartbeat stops, its lease
    is let go), and its retry needs a worker that is still here: a worker with nothing left to ask
    for waits while others run trials whose life it can watch."""

    def __init__(self, heartbeat: Heartbeat | None, storage: str | None = None) -> None:
        self.heartbeat, self.storage = heartbeat, storage
        self.said_waiting = False  # the log line, once

    def wait(self, study: optuna.Study, n_trials: int) -> bool:
        """While another worker's trial runs, wait a heartbeat interval (or WATCH_INTERVAL) and
        say True (look again); else False (the study is done)."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self.heartbeat is None:  # only those whose worker is known alive: the others no
            # worker here can ever find dead, and waiting on them would never end
            folder = lease_folder(self.storage)
            running = [t for t in running if not _is_this_worker(t)
                       and _worker_alive(t, folder) is True]
        if not running:
            return False
        if not self.said_waiting:
            log.info(f"All {n_trials} trials asked; waiting for trial(s) "
                     f"{', '.join(str(t.number) for t in running)} of other workers, to run "
                     "again any whose worker "
                     + ("stops sending heartbeats" if self.heartbeat else "dies"))
            self.said_waiting = True
        time.sleep(self.heartbeat.interval if self.heartbeat else WATCH_INTERVAL)
        return True


def _this_worker(storage: str | None) -> dict:
    """This process as trials record it for others to judge: its lease (held from now on) and
    its process."""
    return {"lease": _hold_lease(lease_folder(storage)), "process": _this_process()}


def _hold_lease(folder: Path | None) -> str | None:
    """The name of this process's lease file in `folder`, locked until it exits; None where
    there is no folder or it cannot be locked (trials are then judged by their process)."""
    if folder is None:
        return None
    if folder not in _leases:
        name = f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Locked under another name first: a lease file is never seen unlocked while its
            # worker lives, and so never removed as a dead one's.
            locking = folder / f".{name}ing"
            lease = open(locking, "w")
            fcntl.lockf(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locking.rename(folder / name)
        except OSError as error:
            log.warning(f"No worker lease in {folder} ({error}): other workers cannot tell "
                        "whether this one lives unless they share its PID namespace")
            return None
        _leases[folder] = (lease, name)  # kept open: closing any descriptor of it drops the lock
    return _leases[folder][1]


def _lease_held(folder: Path | None, name: str | None) -> bool | None:
    """Whether the lease file `name` in `folder` is locked by its worker; None when there is no
    such file (a worker elsewhere, or no lease)."""
    if folder is None or not name:
        return None
    if folder in _leases and _leases[folder][1] == name:
        return True  # this process's own, never opened again here (closing would unlock it)
    try:
        with open(folder / name) as lease:
            try:
                fcntl.lockf(lease, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):  # its worker holds it
                return True
            return False
    except OSError:  # gone, or not ours to open: no proof either way
        return None


def _remove_dead_leases(folder: Path | None, named: set[str | None]) -> None:
    """The lease files of workers gone, once no running trial names them."""
    if folder is None or not folder.is_dir():
        return
    for path in folder.glob("*.lock"):
        if path.name not in named and _lease_held(folder, path.name) is False:
            path.unlink(missing_ok=True)


@functools.cache
def _this_process() -> str:
    """"host/boot/pidns/pid/start", the same nowhere else; "" without /proc."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{HOST}/{boot}/{namespace}/{os.getpid()}/{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """When process `pid` started, in clock ticks after boot; "" for no such process here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22; the name before ")" may hold spaces


def _process_alive(process: str) -> bool | None:
    """Whether the process `process` (as _this_process wrote it) runs; None when it ran on
    another host (MLP_SWEEP_HOST), boot or PID namespace, where this process cannot see it."""
    mine = _this_process()
    if not process or not mine:
        return None
    where, pid, started = process.rsplit("/", 2)
    if where != mine.rsplit("/", 2)[0]:
        return None
    return _start_time(int(pid)) == started  # a pid in use again by another process: gone


def _worker_alive(trial: FrozenTrial, folder: Path | None) -> bool | None:
    """True or False where this process can tell whether `trial`'s worker lives, else None."""
    liveness = trial_attrs.liveness(trial)
    if liveness:
        held = _lease_held(folder, liveness.get("lease"))
        return held if held is not None else _process_alive(liveness.get("process", ""))
    if _unlabelled_ours(trial) and trial.datetime_start is not None \
            and datetime.datetime.now() - trial.datetime_start > UNLABELLED_GRACE:
        return False
    return None


def _unlabelled_ours(trial: FrozenTrial) -> bool:
    """A trial this sweep asked for, not labelled yet with its worker."""
    return (trial_attrs.asked_by_sweep(trial) and not trial_attrs.liveness(trial)
            and not trial_attrs.worker(trial))


def _is_this_worker(trial: FrozenTrial) -> bool:
    process = trial_attrs.liveness(trial).get("process")
    return process == _this_process() if process else trial_attrs.worker(trial) == WORKER
