"""Optuna sweeps that survive and scale: resume, pruning, failures, joblib, async workers, and
several workers on one PostgreSQL study. Every sweep here is the real CLI on real MNIST subsets, in
this process (`run_here`) but where a process is killed, or several run at once."""

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

from mlp_sweep.sweeping import resume, trial_attrs
from mlp_sweep.sweeping.resume import counted
from mlp_sweep.training.optimizer_space import optimizer_specific
from mlp_sweep.sweeping.storage import load_study
from mlp_sweep.train import train

from conftest import compose_config, run_cli, run_here, study_exists

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = ["trainer.progress=false", "dataset.train_limit=3000", "dataset.test_limit=1000",
         "dataset.val_size=1000"]


def sweep_args(mnist_root, storage: str, n_trials: int, *extra: str) -> list[str]:
    return ["--multirun", "hparams_search=optuna_course", f"dataset.root={mnist_root}",
            f"hydra.sweeper.storage={storage}", f"hydra.sweeper.n_trials={n_trials}", *SMALL, *extra]


def trials_of(storage: str, name: str = "course_mnist") -> list:
    return load_study(name, storage).get_trials(deepcopy=False)


def test_resume_after_kill_9_keeps_every_finished_trial_and_goes_on_with_the_killed_one(
        tmp_path, mnist_root):
    storage, n_trials = f"sqlite:///{tmp_path}/optuna.db", 6
    # One process, frozen while the test checks it is in a trial's third epoch: killed there, not
    # in the moment after (a loaded machine may let two epochs pass between the check and the kill;
    # killing a search command's workers is test_machine_workers' and test_worker_liveness').
    args = sweep_args(mnist_root, storage, n_trials, "trainer.epochs=4", "dataset.train_limit=6000",
                      "hydra/sweeper/pruner=none", "hydra.sweeper.fuse=1", "hydra.sweeper.workers=1")
    first = subprocess.Popen([sys.executable, "-m", "mlp_sweep.train", *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def in_third_epoch() -> bool:  # two trials done, one reported its first two epochs
        try:
            trials = trials_of(storage) if study_exists(tmp_path / "optuna.db") else []
        except sqlalchemy.exc.OperationalError:  # frozen while it held the database's lock
            return False
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING
                   and len(t.intermediate_values) >= 2]
        return len(complete) >= 2 and bool(running)

    deadline, frozen = time.time() + 240, False
    while not frozen and time.time() < deadline:
        if in_third_epoch():
            os.kill(first.pid, signal.SIGSTOP)
            frozen = in_third_epoch()
            if not frozen:
                os.kill(first.pid, signal.SIGCONT)
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert frozen, "the sweep never had two trials done and a third in its third epoch"
    before = {t.number: t for t in trials_of(storage) if t.state == TrialState.COMPLETE}
    assert 2 <= len(before) < n_trials
    metrics_before = {n: Path(t.user_attrs["run_dir"], "metrics.json").read_bytes()
                      for n, t in before.items()}

    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    after = trials_of(storage)
    finished = [t for t in counted(load_study("course_mnist", storage))]
    assert len(finished) == n_trials and all(t.state == TrialState.COMPLETE for t in finished)
    for number, trial in before.items():  # kept, not re-run
        assert after[number].state == TrialState.COMPLETE and after[number].value == trial.value
        assert Path(trial.user_attrs["run_dir"], "metrics.json").read_bytes() == metrics_before[number]
    # The resumed sampler does not replay the start-up points already in the study.
    assert len({tuple(sorted(t.params.items())) for t in finished}) == n_trials
    [killed] = [t for t in after if t.user_attrs.get("interrupted")]
    assert killed.state == TrialState.FAIL and killed.number not in {t.number for t in finished}
    # Run again with its params, from its last checkpoint, its earlier epochs reported again.
    [retry] = [t for t in finished if t.system_attrs.get("retry_history") == [killed.number]]
    assert retry.params == killed.params
    resumed_after = retry.user_attrs["resumed_after"]
    assert 1 <= resumed_after <= len(killed.intermediate_values)
    assert [retry.intermediate_values[e] for e in range(1, resumed_after + 1)] == \
        [killed.intermediate_values[e] for e in range(1, resumed_after + 1)]
    log = Path(retry.user_attrs["run_dir"], "train.log").read_text()
    assert f"going on from {killed.user_attrs['run_dir']} after its epoch {resumed_after}" in log
    run_dirs = [t.user_attrs["run_dir"] for t in after]
    assert len(set(run_dirs)) == len(after)  # no folder shared, none overwritten
    sweeps = sorted({Path(d).parent for d in run_dirs})
    assert len(sweeps) == 2
    resumed = sorted(int(p.name) for p in sweeps[1].iterdir() if p.is_dir())
    assert resumed[0] > max(before)  # numbered after the trials already stored
    best = yaml.safe_load((sweeps[1] / "best.yaml").read_text())
    study = load_study("course_mnist", storage)
    assert (best["trial"], best["value"]) == (study.best_trial.number, study.best_value)
    assert best["command"].startswith("python -m mlp_sweep.train ")
    assert best["config"]["objective"] == "val_accuracy"


def test_a_trial_asked_but_never_labelled_is_run_again_not_left_running(tmp_path, mnist_root,
                                                                        monkeypatch):
    monkeypatch.setattr(resume, "UNLABELLED_GRACE", datetime.timedelta(seconds=2))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    first = run_here(*sweep_args(mnist_root, storage, 2, "trainer.epochs=1"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # What a sweep killed between asking for a trial and labelling it leaves: counted, RUNNING,
    # marked as the sweep's before it ran (resume.ask_as_ours)
    study = load_study("course_mnist", storage)
    study.add_trial(optuna.create_trial(state=TrialState.WAITING,
                                        user_attrs={trial_attrs.ASKED: True}))
    lost = study.ask()
    again = run_here(*sweep_args(mnist_root, storage, 3, "trainer.epochs=1"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    study = load_study("course_mnist", storage)
    assert study.trials[lost.number].state == TrialState.FAIL
    assert study.trials[lost.number].user_attrs["interrupted"] is True
    finished = counted(study)
    assert len(finished) == 3 and all(t.state == TrialState.COMPLETE for t in finished)


def test_pruner_stops_a_deliberately_bad_configuration(tmp_path, mnist_root):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # Only the learning rate is searched: 1e-3 learns, 1e-7 cannot. Trials one at a time: the
    # median pruner waits for a finished trial, and a fused group finishes together.
    result = run_here(*sweep_args(mnist_root, storage, 6, "trainer.epochs=3", "optimizer=sgd",
                                  "activation=relu", "model.hidden_sizes=[128,64]",
                                  "trainer.batch_size=64", "optimizer.lr=choice(0.05,1e-7)",
                                  "hydra.sweeper.pruner.n_startup_trials=1",
                                  "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.fuse=1"),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = trials_of(storage)
    bad = [t for t in trials if t.params["optimizer.lr"] == 1e-7]
    good = [t for t in trials if t.params["optimizer.lr"] == 0.05]
    assert any(t.state == TrialState.PRUNED for t in bad)
    assert all(t.state == TrialState.COMPLETE for t in good)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for trial in pruned:
        status = json.loads(Path(trial.user_attrs["run_dir"], "status.json").read_text())
        assert status["state"] == "pruned"
        assert len(trial.intermediate_values) < 3  # stopped before the last epoch


def test_diverging_trial_is_recorded_fail_and_the_sweep_goes_on(tmp_path, mnist_root):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here(*sweep_args(mnist_root, storage, 4, "trainer.epochs=1", "optimizer=sgd",
                                  "activation=relu", "model.hidden_sizes=[128,64]",
                                  "trainer.batch_size=64", "optimizer.lr=choice(0.01,1e12)",
                                  "hydra/sweeper/pruner=none", "hydra.sweeper.max_failure_rate=0.75",
                                  "hydra.sweeper.fuse=1"),  # each trial its own job and log
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = trials_of(storage)
    assert len(trials) == 4
    diverged = [t for t in trials if t.params["optimizer.lr"] == 1e12]
    assert diverged and all(t.state == TrialState.FAIL for t in diverged)
    assert all(t.state == TrialState.COMPLETE for t in trials if t not in diverged)
    for trial in diverged:
        assert trial.user_attrs["fail_reason"].startswith("DivergedError: training loss is")
        status = json.loads(Path(trial.user_attrs["run_dir"], "status.json").read_text())
        assert status["state"] == "failed" and "Traceback" in status["traceback"]
        log = Path(trial.user_attrs["run_dir"], "train.log").read_text()
        assert "Run failed: DivergedError: training loss is" in log
        metrics = Path(trial.user_attrs["run_dir"], "metrics.json")
        assert not metrics.exists()  # stopped inside the first epoch, at the first non-finite loss


@pytest.mark.parametrize("fuse", [1, 3])
def test_too_many_failures_stop_the_sweep(tmp_path, mnist_root, fuse):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # An infinite learning rate makes every trial's loss NaN at its second step.
    result = run_here(*sweep_args(mnist_root, storage, 6, "trainer.epochs=1", "optimizer=sgd",
                                  "optimizer.lr=inf", "hydra/sweeper/pruner=none",
                                  "hydra.sweeper.max_failure_rate=0.3", f"hydra.sweeper.fuse={fuse}"),
                      cwd=tmp_path)
    assert result.returncode != 0
    trials = trials_of(storage)
    # 2 > 0.3 * 6: the sweep stops after the job that passed the rate (a fused job's trials end
    # together)
    assert [t.state for t in trials] == [TrialState.FAIL] * max(2, fuse)


def test_joblib_launcher_runs_trials_side_by_side(tmp_path, mnist_root):
    storage = f"journal:{tmp_path}/optuna.journal"
    result = run_here("--multirun", "hparams_search=optuna_joblib", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=4",
                      "trainer.epochs=2", *SMALL, "dataset.train_limit=12000",  # jobs of about 1 s
                      "model.depth=1", "model.width=256", "augment=none",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = trials_of(storage, "mlp_mnist")  # the joblib preset extends hparams_search=optuna
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    statuses = [json.loads(Path(t.user_attrs["run_dir"], "status.json").read_text()) for t in trials]
    assert len({s["pid"] for s in statuses}) == 2  # two worker processes
    # The trials of a batch overlap: the second batch's, once both workers have started (the
    # first batch's may not, when one worker takes longer to start than a trial takes to run).
    third, fourth = statuses[2], statuses[3]
    assert third["started"] < fourth["updated"] and fourth["started"] < third["updated"]
    for trial in trials:
        log = (Path(trial.user_attrs["run_dir"]) / "train.log").read_text()
        assert f"with {max(1, os.cpu_count() // 2)} threads" in log


def assert_each_trial_once(storage: str, name: str, n_trials: int, workers: int) -> None:
    trials = [t for t in counted(load_study(name, storage))]
    assert len(trials) == n_trials
    assert sorted(t.number for t in trials) == sorted({t.number for t in trials})
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    run_dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert len(set(run_dirs)) == n_trials and all((d / "status.json").is_file() for d in run_dirs)
    assert len({t.user_attrs["worker"] for t in trials}) == workers  # every worker took trials
    # Each worker samples with its own seed: no trial repeats another's parameters.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials
    assert len({d.parent for d in run_dirs}) == workers  # each worker has its own sweep folder


def test_two_async_workers_share_one_journal_study(tmp_path, mnist_root):
    storage = f"journal:{tmp_path}/optuna.journal"
    result = subprocess.run(
        [sys.executable, "-m", "mlp_sweep.workers", "2", "hparams_search=optuna_course",
         f"dataset.root={mnist_root}",
         f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=8", "trainer.epochs=2", *SMALL,
         "dataset.train_limit=12000",  # trials of about 1 s: every worker is up before they run out
         "hydra.sweeper.fuse=2"],  # each worker trains its trials in fused pairs
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert_each_trial_once(storage, "course_mnist", 8, workers=2)


def test_three_workers_cooperate_on_one_postgresql_study(tmp_path, mnist_root, postgres_url):
    name = f"mlp_mnist_{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [sys.executable, "-m", "mlp_sweep.workers", "3", "hparams_search=optuna_course",
         f"dataset.root={mnist_root}",
         f"hydra.sweeper.storage={postgres_url}", f"hydra.sweeper.study_name={name}",
         "hydra.sweeper.n_trials=9", "trainer.epochs=2", *SMALL, "dataset.train_limit=12000",
         "hydra.sweeper.fuse=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert_each_trial_once(postgres_url, name, 9, workers=3)


def fresh_database(url: str) -> str:
    """A new, empty database on the server at `url`, and its URL."""
    import sqlalchemy

    name = f"fresh_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return sqlalchemy.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.mark.slow  # a PostgreSQL server
def test_sweeps_started_together_on_a_fresh_postgresql_database_all_run(tmp_path, postgres_url):
    # As the README's many-hosts mode starts them: every process finds no tables and creates
    # Optuna's schema; those that lose the race must find it made, not fail.
    storage = fresh_database(postgres_url)
    app = Path(__file__).resolve().parent / "sweeper_app" / "sphere.py"
    processes = [subprocess.Popen(
        [sys.executable, str(app), "--multirun", f"hydra.sweep.dir={tmp_path}/sweep_{k}",
         f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=8",
         f"hydra.sweeper.sampler.seed={k}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k in range(4)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    trials = optuna.load_study(study_name="sphere", storage=storage).trials
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 8  # the study's n_trials


def test_validation_objective_is_returned_and_test_accuracy_still_recorded(tmp_path, mnist_root):
    cfg = compose_config(f"dataset.root={mnist_root}", "objective=val_accuracy",
                         "dataset.val_size=1000", "trainer.epochs=1", *SMALL)
    value = train(cfg, run_dir=tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert value == metrics["val_accuracy"] != metrics["test_accuracy"]
    assert metrics["objective"] == "val_accuracy" and 0 < metrics["test_accuracy"] <= 1


@pytest.mark.parametrize("optimizer, expected", [
    ("sgd", {"optimizer.momentum", "optimizer.nesterov"}),
    ("adam", {"optimizer.betas.0", "optimizer.betas.1"}),
    ("adamw", {"optimizer.betas.0", "optimizer.betas.1"}),
    ("rmsprop", {"optimizer.alpha"}),
])
def test_optimizer_parameters_are_searched_only_for_their_optimizer(optimizer, expected):
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_categorical("optimizer", [optimizer])
    optimizer_specific(compose_config(), trial)
    assert set(trial.params) - {"optimizer"} == expected


def test_submitit_local_launcher_runs_the_slurm_preset_here(tmp_path, mnist_root):
    storage = f"journal:{tmp_path}/optuna.journal"
    result = run_here("--multirun", "hparams_search=optuna_slurm", "hydra/launcher=submitit_local",
                      f"dataset.root={mnist_root}", f"hydra.sweeper.storage={storage}",
                      "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "trainer.epochs=1",
                      "model.depth=1", "model.width=64", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = trials_of(storage, "mlp_mnist")  # the SLURM preset extends hparams_search=optuna
    assert sorted(t.number for t in trials) == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:  # each ran in a submitit job of its own
        status = json.loads(Path(trial.user_attrs["run_dir"], "status.json").read_text())
        assert status["state"] == "completed" and status["pid"] != os.getpid()


def test_a_study_refuses_other_settings_and_resumes_with_the_same(tmp_path, mnist_root):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    first = run_here(*sweep_args(mnist_root, storage, 2, "trainer.epochs=1"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sweeps = set((tmp_path / "multirun").glob("*/*"))

    other = run_here(*sweep_args(mnist_root, storage, 3, "trainer.epochs=2", "model.dropout=0.3"),
                     cwd=tmp_path)
    output = other.stdout + other.stderr
    assert other.returncode == 1 and "Traceback" not in output
    assert ("study course_mnist in " + storage + " holds trials run with other settings: "
            "model.dropout=0.3 (the study's: 0.0), trainer.epochs=2 (the study's: 1); allowed: the "
            "study's settings, to resume it, or another study for these: "
            "hydra.sweeper.study_name=NEW_NAME") in output
    assert len(trials_of(storage)) == 2 and set((tmp_path / "multirun").glob("*/*")) == sweeps

    # More trials, another sweep folder, other threads: the same study, resumed.
    grown = run_here(*sweep_args(mnist_root, storage, 3, "trainer.epochs=1", "trainer.threads=1",
                                 "hydra.sweep.dir=elsewhere"), cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr
    assert len(trials_of(storage)) == 3
    # Other settings under another name: a study of their own.
    renamed = run_here(*sweep_args(mnist_root, storage, 1, "trainer.epochs=2",
                                   "hydra.sweeper.study_name=two_epochs"), cwd=tmp_path)
    assert renamed.returncode == 0, renamed.stderr
    assert len(trials_of(storage, "two_epochs")) == 1


# Two workers sample in an order no seed fixes; the heartbeat tests expect every counted trial
# COMPLETE, so their searches leave out the optimizer and learning rate that can diverge (a diverged
# trial is a legitimate FAIL, as tests above show).
NO_DIVERGENCE = ("optimizer=adam", "optimizer.lr=0.001")


def test_the_last_live_worker_waits_to_retry_a_dead_workers_last_trial(tmp_path, mnist_root,
                                                                       postgres_url):
    # Two trials, one per worker: once its own trial ends the survivor has nothing left to ask
    # for, yet the other worker's trial is still RUNNING, and its worker is dead.
    name = f"last_trial_{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=postgres_url, direction="maximize")
    args = sweep_args(mnist_root, postgres_url, 2, "trainer.epochs=5", "dataset.train_limit=12000",
                      f"hydra.sweeper.study_name={name}", "hydra/sweeper/pruner=none",
                      "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
                      *NO_DIVERGENCE)
    victim_process = subprocess.Popen(
        [sys.executable, "-m", "mlp_sweep.train", *args, "hydra.sweeper.sampler.seed=1"],
        cwd=tmp_path, env={**os.environ, "MLP_SWEEP_HOST": "other-host"},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    watched = load_study(name, postgres_url)  # one connection for all the polling below
    while not watched.get_trials(deepcopy=False) and time.time() < deadline:
        time.sleep(0.05)  # the victim asks first, so the survivor's trial is the other one
    survivor = subprocess.Popen(
        [sys.executable, "-m", "mlp_sweep.train", *args, "hydra.sweeper.sampler.seed=2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    while victim is None and time.time() < deadline:  # kill it after its checkpointed epoch 1
        running = [t for t in watched.get_trials(deepcopy=False) if t.state == TrialState.RUNNING
                   and str(t.user_attrs.get("worker", "")).startswith("other-host:")
                   and len(t.intermediate_values) >= 2]
        victim = running[0] if running else None
        time.sleep(0.05)
    assert victim is not None
    os.kill(victim_process.pid, signal.SIGKILL)
    victim_process.wait()
    output, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, output

    study = load_study(name, postgres_url)
    assert study.get_trials(deepcopy=False)[victim.number].state == TrialState.FAIL
    finished = counted(study)
    assert len(finished) == 2 and all(t.state == TrialState.COMPLETE for t in finished), finished
    [retry] = [t for t in finished if victim.number in t.system_attrs.get("retry_history", ())]
    assert retry.params == victim.params and retry.user_attrs["worker"] != victim.user_attrs["worker"]
    assert retry.user_attrs["resumed_after"] >= 1  # from the dead worker's checkpoint


@pytest.mark.slow  # workers, one killed
def test_a_worker_killed_on_another_host_is_found_by_its_heartbeat_and_its_trial_retried(
        tmp_path, mnist_root, postgres_url):
    name, n_trials = f"heartbeat_{uuid.uuid4().hex[:8]}", 6
    optuna.create_study(study_name=name, storage=postgres_url, direction="maximize")
    args = sweep_args(mnist_root, postgres_url, n_trials, "trainer.epochs=2", "dataset.train_limit=12000",
                      f"hydra.sweeper.study_name={name}", "hydra/sweeper/pruner=none",
                      "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
                      *NO_DIVERGENCE)
    workers = {}
    for label, seed in (("other-host", 1), ("", 2)):  # the first one runs "on another host"
        folder = tmp_path / (label or "here")
        folder.mkdir()
        workers[label] = subprocess.Popen(
            [sys.executable, "-m", "mlp_sweep.train", *args, f"hydra.sweeper.sampler.seed={seed}"],
            cwd=folder, env={**os.environ, "MLP_SWEEP_HOST": label} if label else None,
            stdout=subprocess.DEVNULL if label else subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
    victim, deadline = None, time.time() + 240
    watched = load_study(name, postgres_url)  # one connection for all the polling below
    while victim is None and time.time() < deadline:  # kill it in the middle of a trial
        running = [t for t in watched.get_trials(deepcopy=False) if t.state == TrialState.RUNNING
                   and str(t.user_attrs.get("worker", "")).startswith("other-host:")
                   and t.intermediate_values]  # training: its first epoch is reported
        victim = running[0] if running else None
        time.sleep(0.05)
    assert victim is not None
    os.kill(workers["other-host"].pid, signal.SIGKILL)
    workers["other-host"].wait()
    output, _ = workers[""].communicate(timeout=300)
    assert workers[""].returncode == 0, output

    study = load_study(name, postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert trials[victim.number].state == TrialState.FAIL
    [retry] = [t for t in trials if victim.number in t.system_attrs.get("retry_history", ())]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert f"Trial {victim.number} of worker other-host:" in output and "no heartbeat" in output
    finished = counted(study)
    assert len(finished) == n_trials and all(t.state == TrialState.COMPLETE for t in finished), [
        (t.number, t.state.name, t.user_attrs, t.system_attrs) for t in trials]
    assert victim.number not in {t.number for t in finished}
    # compare keeps the retry history: the killed trial's row says which trial ran it again.
    shown = run_here("--no-group", str(tmp_path / "other-host" / "multirun"),
                     str(tmp_path / "here" / "multirun"), cwd=tmp_path, command="mlp_sweep.compare")
    assert shown.returncode == 0, shown.stderr
    assert f"its worker stopped sending heartbeats; run again as trial {retry.number}" in shown.stdout


def test_workers_refuse_a_config_dir_that_is_not_a_folder(tmp_path, capsys, monkeypatch):
    from mlp_sweep.workers import main

    monkeypatch.chdir(tmp_path)  # where the default journal study would be created
    missing = tmp_path / "no_such_folder"
    assert main(["1", "--config-dir", str(missing), "hparams_search=optuna_course"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"Error: --config-dir {missing} is not a folder; allowed: a folder of config "
                   "groups to add to the search path")
    assert not (tmp_path / "multirun").exists() and not missing.exists()
