"""Workers judge each other's trials by their leases, not by process ids: a worker in another PID
namespace on the same host (a container with the host's network) is neither taken for dead while
it runs nor missed when it is killed, and a trial another program asked for is left alone.
Real processes on one journal study and real MNIST; one worker runs under `unshare --pid`."""

import datetime
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from mlp_sweep.sweeping import resume, trial_attrs
from mlp_sweep.sweeping.resume import counted
from mlp_sweep.sweeping.storage import create_study, load_study

from conftest import run_here
from test_sweeps import NO_DIVERGENCE, sweep_args

N_TRIALS = 8


def can_make_pid_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True).returncode == 0


needs_pid_namespaces = pytest.mark.skipif(not can_make_pid_namespaces(),
                                          reason="needs `unshare --pid` (root)")


def start_workers(tmp_path, mnist_root, storage: str, *extra: str) -> dict[str, subprocess.Popen]:
    """Two sweep workers on one study, started together: "host" as this process runs, "inside"
    in its own PID namespace (killing its `unshare` kills it: --kill-child)."""
    create_study("course_mnist", storage, None, None, ["maximize"])
    args = sweep_args(mnist_root, storage, N_TRIALS, "trainer.epochs=2", "trainer.threads=1",
                      "dataset.train_limit=12000", "hydra/sweeper/pruner=none",
                      "hydra.sweeper.fuse=1", *NO_DIVERGENCE, *extra)
    workers = {}
    for seed, name in enumerate(("host", "inside"), start=1):
        folder = tmp_path / name
        folder.mkdir()
        command = [sys.executable, "-m", "mlp_sweep.train", *args,
                   f"hydra.sweeper.sampler.seed={seed}"]
        if name == "inside":
            command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command]
        workers[name] = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
    return workers


def in_this_namespace(trial) -> bool:
    """Whether `trial`'s worker ran in this process's PID namespace."""
    process = trial_attrs.liveness(trial)["process"]
    return process.split("/")[-3] == str(os.stat("/proc/self/ns/pid").st_ino)


def stop(workers: dict[str, subprocess.Popen]) -> None:
    for worker in workers.values():
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@needs_pid_namespaces
def test_a_worker_in_its_own_pid_namespace_leaves_the_other_workers_live_trials_alone(
        tmp_path, mnist_root):
    storage = f"journal:{tmp_path}/optuna.journal"
    workers = start_workers(tmp_path, mnist_root, storage)
    try:
        outputs = {name: worker.communicate(timeout=420)[0] for name, worker in workers.items()}
    finally:
        stop(workers)
    for name, worker in workers.items():
        assert worker.returncode == 0, outputs[name]
        assert "is gone" not in outputs[name] and "another worker" not in outputs[name]

    trials = load_study("course_mnist", storage).get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.user_attrs.get(trial_attrs.INTERRUPTED)]
    assert len(trials) == N_TRIALS and all(t.state == TrialState.COMPLETE for t in trials)
    # Both ran trials, one of them from the other PID namespace
    assert {in_this_namespace(t) for t in trials} == {True, False}


@needs_pid_namespaces
@pytest.mark.parametrize("victim", ["inside", "host"])
def test_a_killed_worker_is_found_by_its_lease_across_pid_namespaces_and_its_trial_retried(
        tmp_path, mnist_root, victim):
    # The survivor cannot see the victim's process: only the victim's lease, which the kernel
    # let go when it died, says that its trial will not end.
    storage = f"journal:{tmp_path}/optuna.journal"
    workers = start_workers(tmp_path, mnist_root, storage, "trainer.epochs=4")
    survivor = "host" if victim == "inside" else "inside"
    try:
        killed, deadline = None, time.time() + 300
        watched = load_study("course_mnist", storage)
        while killed is None and time.time() < deadline:  # in its trial's second epoch
            running = [t for t in watched.get_trials(deepcopy=False)
                       if t.state == TrialState.RUNNING and trial_attrs.liveness(t)
                       and in_this_namespace(t) == (victim == "host")
                       and len(t.intermediate_values) >= 1]
            killed = running[0] if running else None
            time.sleep(0.05)
        assert killed is not None, workers[victim].communicate()[0]
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        output, _ = workers[survivor].communicate(timeout=420)
    finally:
        stop(workers)
    assert workers[survivor].returncode == 0, output
    assert f"Trial {killed.number} was interrupted" in output

    study = load_study("course_mnist", storage)
    trials = study.get_trials(deepcopy=False)
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].user_attrs[trial_attrs.INTERRUPTED] is True
    [retry] = [t for t in trials if killed.number in t.system_attrs.get("retry_history", ())]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert in_this_namespace(retry) == (survivor == "host")
    finished = counted(study)
    assert len(finished) == N_TRIALS and all(t.state == TrialState.COMPLETE for t in finished)
    interrupted = [t.number for t in trials if t.user_attrs.get(trial_attrs.INTERRUPTED)]
    assert interrupted == [killed.number]


def test_a_worker_whose_trial_another_failed_for_dead_drops_it_and_goes_on(tmp_path, mnist_root):
    storage, n_trials = f"journal:{tmp_path}/optuna.journal", 3
    study = create_study("course_mnist", storage, None, None, ["maximize"])
    worker = subprocess.Popen(
        [sys.executable, "-m", "mlp_sweep.train",
         *sweep_args(mnist_root, storage, n_trials, "trainer.epochs=4", "trainer.threads=1",
                     "dataset.train_limit=12000", "hydra/sweeper/pruner=none",
                     "hydra.sweeper.fuse=1", *NO_DIVERGENCE)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        taken, deadline = None, time.time() + 300
        while taken is None and time.time() < deadline and worker.poll() is None:
            running = [t for t in study.get_trials(deepcopy=False)  # in its training
                       if t.state == TrialState.RUNNING and t.intermediate_values]
            taken = running[0] if running else None
            time.sleep(0.05)
        assert taken is not None, worker.communicate()[0]
        # What a worker that took this one for dead does: fail the trial and queue it again
        resume.set_user_attr(study, taken, trial_attrs.INTERRUPTED, True)
        study.tell(taken.number, state=TrialState.FAIL)
        resume.queue_retry(study, taken, max_retry=3)
        output, _ = worker.communicate(timeout=300)
    finally:
        stop({"worker": worker})
    assert worker.returncode == 0, output
    assert f"Trial {taken.number} was recorded FAIL by another worker" in output

    study = load_study("course_mnist", storage)
    assert study.trials[taken.number].state == TrialState.FAIL  # as the other worker left it
    finished = counted(study)
    assert len(finished) == n_trials and all(t.state == TrialState.COMPLETE for t in finished)
    [retry] = [t for t in finished if t.system_attrs.get("retry_history") == [taken.number]]
    assert retry.params == taken.params


def test_a_trial_another_program_asked_for_is_left_running(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setattr(resume, "UNLABELLED_GRACE", datetime.timedelta(seconds=1))
    storage = f"journal:{tmp_path}/optuna.journal"
    args = ("trainer.epochs=1", "hydra/sweeper/pruner=none", *NO_DIVERGENCE)
    first = run_here(*sweep_args(mnist_root, storage, 1, *args), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # A plain Optuna script on the same study: it asks, and never tells (yet)
    theirs = load_study("course_mnist", storage).ask()
    time.sleep(1.5)  # past the grace period a trial of this sweep gets to be labelled
    again = run_here(*sweep_args(mnist_root, storage, 3, *args), cwd=tmp_path)
    assert again.returncode == 0, again.stderr

    study = load_study("course_mnist", storage)
    left = study.trials[theirs.number]
    assert left.state == TrialState.RUNNING and not left.user_attrs
    ours = [t for t in counted(study) if t.number != theirs.number]
    assert len(ours) == 2 and all(t.state == TrialState.COMPLETE for t in ours)
