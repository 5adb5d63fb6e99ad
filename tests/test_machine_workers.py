"""The default search on the whole machine (`hydra.sweeper.workers`): on 2 cores the search
command starts two one-thread workers on one study, one budget and one sweep folder; on one core,
or with workers=1, it stays one process; workers=N starts N; a bad value is one line.

The commands run with every core of the machine (the test processes are pinned to one core
each, conftest.py), as a user's command would."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.machine_workers import BASIC_LAUNCHER, choose_workers
from mlp_sweep.sweeping.sweep_settings import SweepSettings

from conftest import SMALL_DATA

ALL_CORES = set(range(os.cpu_count() or 1))


def search(tmp_path: Path, small_root: Path, *overrides: str, cores: set[int] = ALL_CORES,
           **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """The default search command (`--multirun hparams_search=optuna`) on the small dataset, run
    on `cores`; `popen` keyword arguments start it and return the process instead."""
    command = [sys.executable, "-m", "mlp_sweep.train", "--multirun", "hparams_search=optuna",
               f"dataset.root={small_root}", *SMALL_DATA, "dataset.val_size=500",
               f"hydra.sweep.dir={tmp_path}/sweep", *overrides]
    start = dict(cwd=tmp_path, preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if popen:
        return subprocess.Popen(command, **start, **popen)
    return subprocess.run(command, **start, capture_output=True, text=True, timeout=300)


def trials_of(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="mlp_fashion_mnist",
                             storage=f"sqlite:///{tmp_path}/multirun/optuna.db").trials


def test_on_two_cores_the_default_search_runs_two_one_thread_workers_on_one_study_and_budget(
        tmp_path, small_root):
    assert len(ALL_CORES) >= 2, "this test needs a machine of 2 cores or more"
    budget_s = 12
    started = time.time()
    # Batches of 16 of 2 x 1024 units: about a second an epoch; the recipe first, as the preset has it
    result = search(tmp_path, small_root, f"hydra.sweeper.timeout={budget_s}",
                    "trainer.batch_size=16", "model.width=1024", cores={0, 1})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Workers: hydra.sweeper.workers=auto: 2 workers, one per core, 1 thread each" in output
    trials = trials_of(tmp_path)
    # One study, one sweep folder: each trial in its own numbered folder of it, each trained by
    # one of two workers on one thread
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    for trial in trials:
        assert Path(trial.user_attrs["run_dir"]) == tmp_path / "sweep" / str(trial.number)
    metrics = [json.loads(Path(t.user_attrs["run_dir"], "metrics.json").read_text())
               for t in trials if t.state != TrialState.RUNNING]
    assert metrics and all(m["threads"] == 1 for m in metrics)
    # One budget for both: no epoch ends later than one epoch after it, counted from the command's
    # start (its "Workers:" line; the workers start seconds later, and their budget does not).
    # An epoch's length: from the previous epoch's end, or its trial's start, to its own end
    said = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]\[HYDRA\] Workers:", output)
    command_started = datetime.strptime(said.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    ends, longest = [], 0.0
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            continue
        ended = [e["ended_at"] for e in json.loads(
            Path(trial.user_attrs["run_dir"], "metrics.json").read_text())["epochs"]]
        starts = [trial.datetime_start.timestamp(), *ended[:-1]]
        longest = max([longest, *(end - start for start, end in zip(starts, ended))])
        ends += ended
    assert started < command_started and max(ends) <= command_started + budget_s + longest
    for k in (0, 1):  # each worker's lines named, a line per trial
        assert re.search(rf"^\[worker {k}\] trial \d+ ", result.stdout, re.MULTILINE)
    assert result.stdout.count("search ended after") == 1  # the command's, not each worker's


@pytest.mark.parametrize(("overrides", "cores", "said"), [
    ((), {0}, "Workers: hydra.sweeper.workers=auto: one process on the one core it may use"),
    (("hydra.sweeper.workers=1",), ALL_CORES, "Workers: hydra.sweeper.workers=1"),
])
def test_on_one_core_or_with_workers_1_the_search_is_one_process(tmp_path, small_root, overrides,
                                                                 cores, said):
    result = search(tmp_path, small_root, "hydra.sweeper.n_trials=2", "trainer.epochs=1",
                    *overrides, cores=cores)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert said in output and "[worker" not in output
    trials = trials_of(tmp_path)
    assert len(trials) == 2 and len({t.user_attrs["worker"] for t in trials}) == 1


def test_workers_n_starts_n_workers_sharing_the_cores(tmp_path, small_root):
    result = search(tmp_path, small_root, "hydra.sweeper.workers=3", "hydra.sweeper.n_trials=6",
                    "trainer.epochs=1", cores={0, 1})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Workers: hydra.sweeper.workers=3, 1 thread each" in output
    trials = trials_of(tmp_path)
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 3


@pytest.mark.parametrize(("value", "message"), [
    ("0", "hydra.sweeper.workers=0 is not allowed; allowed: auto (one worker per core, or per "
          "GPU) or an integer >= 1 (1: one process)"),
    ("many", "hydra.sweeper.workers='many' is not allowed"),
    ("1.5", "hydra.sweeper.workers=1.5 is not allowed"),
])
def test_a_bad_workers_value_is_one_line_and_starts_nothing(tmp_path, small_root, value, message):
    result = search(tmp_path, small_root, f"hydra.sweeper.workers={value}")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "Error:" in line]
    assert len(errors) == 1 and message in errors[0], output[-2000:]
    assert "Traceback" not in output
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "multirun" / "optuna.db").exists()


def test_workers_with_an_in_memory_study_is_one_line(tmp_path, small_root):
    result = search(tmp_path, small_root, "hydra.sweeper.workers=2", "hydra.sweeper.storage=null")
    assert result.returncode == 1
    assert ("Error: hydra.sweeper.workers=2 needs a storage every worker opens, and "
            "hydra.sweeper.storage=null keeps the study in memory") in result.stdout + result.stderr


def test_killing_the_search_command_stops_its_workers(tmp_path, small_root):
    process = search(tmp_path, small_root, "hydra.sweeper.timeout=120", "trainer.batch_size=16",
                     cores={0, 1}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:  # until a worker has trained a trial
            if re.match(r"\[worker \d\] trial \d+ ", line):
                break
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 2
        process.kill()  # SIGKILL: the command cannot pass anything on
        process.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers left running: {[p.pid for p in alive]}"
    finally:
        for child in psutil.Process().children(recursive=True):
            child.send_signal(signal.SIGKILL)
    # their trials are left running, for the next command on the study to run again
    trials = trials_of(tmp_path)
    assert any(t.state == TrialState.RUNNING for t in trials)


def test_ctrl_c_passes_on_once_and_the_search_says_it_was_interrupted(tmp_path, small_root):
    process = search(tmp_path, small_root, "hydra.sweeper.timeout=120", "trainer.batch_size=16",
                     cores={0, 1}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if re.match(r"\[worker \d\] trial \d+ ", line):
                break
        workers = psutil.Process(process.pid).children()
        process.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C, which reaches it alone
        rest = process.stdout.read()
        assert process.wait(timeout=60) == 130, rest[-3000:]
        assert "the search was interrupted: the same command resumes it" in rest
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive
    finally:
        for child in psutil.Process().children(recursive=True):
            child.send_signal(signal.SIGKILL)


def settings(**keys) -> SweepSettings:
    raw = dict(sampler={"_target_": "optuna.samplers.TPESampler"}, direction="maximize",
               storage="sqlite:///o.db", n_trials=10, n_jobs=1, max_failure_rate=0.0,
               progress={}, on_timeout="finish", worker_command=["python", "-m", "app"],
               workers="auto")
    return SweepSettings.checked({**raw, **keys})


@pytest.mark.parametrize(("keys", "launcher", "cores", "gpus", "count", "why"), [
    ({}, BASIC_LAUNCHER, 4, [], 4, "4 workers, one per core, 1 thread each"),
    ({}, BASIC_LAUNCHER, 8, ["0", "1"], 2, "2 workers, one per GPU, 4 threads each"),
    ({}, BASIC_LAUNCHER, 8, ["0"], 1, "one process on the one GPU"),
    ({"storage": None}, BASIC_LAUNCHER, 4, [], 1, "the study is in memory"),
    ({"worker_command": None}, BASIC_LAUNCHER, 4, [], 1, "worker_command is not set"),
    ({}, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", 4, [], 1,
     "the launcher JoblibLauncher runs the jobs"),
    ({"n_jobs": 2}, BASIC_LAUNCHER, 4, [], 1, "hydra.sweeper.n_jobs=2 runs batches"),
    ({"workers": 3}, BASIC_LAUNCHER, 2, [], 3, "hydra.sweeper.workers=3, 1 thread each"),
    ({"fuse": 4}, BASIC_LAUNCHER, 4, [], 1, "hydra.sweeper.fuse=4 trains its groups in it"),
    ({}, BASIC_LAUNCHER, 32, [], 8, "8 workers for 32 cores (auto's most; workers=N for more), "
                                    "4 threads each"),
])
def test_what_auto_chooses_and_why(keys, launcher, cores, gpus, count, why, monkeypatch):
    monkeypatch.delenv("MLP_SWEEP_SWEEP_WORKER", raising=False)
    workers = choose_workers(settings(**keys), launcher, cores=cores, gpus=gpus)
    assert workers.count == count and why in workers.why
    if count > 1:
        assert len(workers.gpus) == count


def test_a_worker_never_starts_workers_of_its_own(monkeypatch):
    monkeypatch.setenv("MLP_SWEEP_SWEEP_WORKER", "0")
    assert choose_workers(settings(workers=4), BASIC_LAUNCHER, cores=4, gpus=[]).count == 1


def test_workers_without_a_command_is_one_line():
    with pytest.raises(UserError, match=r"hydra.sweeper.worker_command=None: the workers need"):
        choose_workers(settings(workers=2, worker_command=None), BASIC_LAUNCHER, cores=2, gpus=[])


def test_the_gpus_auto_counts_are_the_ones_cuda_visible_devices_lists(monkeypatch):
    from mlp_sweep.sweeping.machine_workers import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
