"""Watching and steering a search: a line per ended trial, the sweep's last lines, a time budget
that prunes the running trials (or lets them finish), with one sweep process and with workers.

The sweeper's side runs on tests/sweeper_app/sphere.py in this process (Hydra's test utility),
the project's own command in this process too (`run_here`, its console captured), and the workers
in subprocesses, where the processes are the point.
"""

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mlp_sweep.sweeping.progress import SweepProgress
from mlp_sweep.sweeping.sweeper_plugin import ProgressConf

from conftest import SMALL_DATA, run_here
from test_sweeper_parity import storage_of, study_of, sweep

LINE = re.compile(r"^trial (\d+) (COMPLETE|PRUNED|FAIL)\b.* · (\d+) trials?: [a-z0-9, ]+ · \d+:\d\d( of \d+:\d\d)?$")


def progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if LINE.match(line)]


def test_each_ended_trial_prints_one_line_with_the_best_so_far(tmp_path, capsys):
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}", "hydra.sweeper.n_trials=6",
               "steps=3", "hydra/sweeper/pruner=median"):
        study = study_of(tmp_path)
        logged = (tmp_path / "sweep" / "sweep.log").read_text().splitlines()
    printed = capsys.readouterr().out
    lines = progress_lines(printed)
    assert lines == progress_lines("\n".join(logged))  # the same lines on the console and in the file
    assert [int(LINE.match(line).group(1)) for line in lines] == list(range(6))
    assert [int(LINE.match(line).group(3)) for line in lines] == list(range(1, 7))
    for line, trial in zip(lines, study.trials):
        assert LINE.match(line).group(2) == trial.state.name
        if trial.state == TrialState.COMPLETE:  # its value, and the step of its best report
            best_step = min(trial.intermediate_values, key=trial.intermediate_values.get)
            assert f"value {trial.value:.4g} (epoch {best_step})" in line
    best_so_far = min((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best {best_so_far.value:.4g} (trial {best_so_far.number})" in lines[-1]
    counts = {state: sum(t.state == state for t in study.trials) for state in TrialState}
    assert f"6 trials: {counts[TrialState.COMPLETE]} complete" in lines[-1]
    # The end: the best trial, its parameters, the command that runs it again.
    end = logged[-3:]
    assert end[0].startswith("search ended after ") and end[0].endswith(
        f"best trial {study.best_trial.number}, value {study.best_value:.4g}")
    x, y = study.best_trial.params["x"], study.best_trial.params["y"]  # floats: 4 significant digits
    assert end[1] == f"  params: x={x:.4g} y={y}"
    assert end[2].startswith("  next: ") and f"x={x}" in end[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_runs_over_the_budget_with_the_best_so_far(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    settings = OmegaConf.structured(ProgressConf(metric="val_accuracy", percent=True))
    progress = SweepProgress(settings, sweep_dir=tmp_path, n_trials=1000, timeout=600,
                             started=time.monotonic() - 60)  # a minute into a 10-minute budget
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9876, params={}, distributions={}))
    progress.trial_ended(study, 0)
    progress.close()
    assert "search  10%|" in terminal.getvalue()
    assert "1:00 of 10:00 · best 98.76 % (trial 0)" in terminal.getvalue()
    assert (tmp_path / "sweep.log").read_text() == (
        "trial 0 COMPLETE val_accuracy 98.76 % · best 98.76 % (trial 0) · 1 trial: 1 complete · "
        "1:00 of 10:00\n")


@pytest.mark.parametrize("storage", [True, False])
def test_at_the_budget_the_running_trial_is_pruned_at_its_next_report(tmp_path, storage):
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path) if storage else 'null'}",
               "hydra.sweeper.timeout=3", "hydra.sweeper.on_timeout=prune",
               "steps=300", "step_seconds=0.02"):  # a trial of 6 s; 3 s hold a loaded set-up
        logged = (tmp_path / "sweep" / "sweep.log").read_text()
        trials = study_of(tmp_path).trials if storage else None
    assert progress_lines(logged)[0].startswith("trial 0 PRUNED")
    assert "by the budget" in progress_lines(logged)[0]
    assert len(progress_lines(logged)) == 1  # no trial starts after the budget
    if storage:
        (trial,) = trials
        assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_by"] == "budget"
        assert 0 < len(trial.intermediate_values) < 300  # stopped at a report, past the first


def test_with_finish_the_running_trial_completes_past_the_budget(tmp_path):
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}",
               "hydra.sweeper.timeout=3", "hydra.sweeper.on_timeout=finish",
               "steps=100", "step_seconds=0.05"):  # a trial of 5 s; 3 s hold a loaded set-up
        (trial,) = study_of(tmp_path).trials
    assert trial.state == TrialState.COMPLETE and len(trial.intermediate_values) == 100
    assert (trial.datetime_complete - trial.datetime_start).total_seconds() > 3


@pytest.mark.parametrize("fuse", [1, 8])  # trials alone, and 8 trained as one stack per job
@pytest.mark.parametrize("on_timeout", ["prune", "prune_early"])
def test_with_prune_early_a_trial_that_cannot_finish_stops_after_its_first_epoch(
        tmp_path, small_root, on_timeout, fuse):
    # 1000 epochs of 1500 images take about a minute: none fits a 10-second budget, which holds
    # the set-up of a stack of 8 on a loaded machine (the budget counts it).
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={small_root}",
                      *SMALL_DATA, "dataset.val_size=500", "trainer.epochs=1000",
                      "hydra.sweeper.timeout=10", f"hydra.sweeper.on_timeout={on_timeout}",
                      f"hydra.sweeper.storage={storage}", f"hydra.sweeper.fuse={fuse}",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="course_fashion_mnist", storage=storage).trials
    assert trials and all(t.state == TrialState.PRUNED and t.user_attrs["pruned_by"] == "budget"
                          for t in trials)
    epochs = [len(t.intermediate_values) for t in trials]
    if on_timeout == "prune_early":  # each stops as soon as its pace is known, then the next
        assert epochs == [1] * len(trials) and len(trials) > 1
        first_log = Path(trials[0].user_attrs["run_dir"], "train.log").read_text()
        assert "would end after the sweep's budget" in first_log
    else:  # the one job runs until the budget, then its trials stop at their next epoch
        assert len(trials) == fuse and all(e > 1 for e in epochs)


def test_a_bad_on_timeout_is_one_line(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as stopped, sweep(tmp_path, "hydra.sweeper.on_timeout=kill"):
        pass
    assert stopped.value.code == 1
    assert ("Error: hydra.sweeper.on_timeout='kill' is not allowed; allowed: finish, prune, "
            "prune_early") in capsys.readouterr().out + caplog.text
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow  # the command end to end, for its console
def test_a_sweeps_console_shows_the_search_and_its_trials_keep_their_logs(tmp_path, small_root):
    result = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={small_root}",
                      *SMALL_DATA, "dataset.val_size=500", "trainer.epochs=2",
                      "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db",
                      f"hydra.sweep.dir={tmp_path}/sweep", "hydra.sweeper.fuse=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = progress_lines(result.stdout)
    assert len(lines) == 2 and re.search(r"val_accuracy \d+\.\d\d % \(epoch [12]\)", lines[0])
    assert f"  next: python -m mlp_sweep.refit {tmp_path}/sweep" in result.stdout
    # The trials' model printouts and epoch lines are in their log files, not on the console
    # (the preset trains both as one stack: each folder has the log of the job that trained it).
    console = result.stdout + result.stderr
    assert "MLP(" not in console and "epoch 1/2" not in console
    for trial in ("0", "1"):
        log = (tmp_path / "sweep" / trial / "train.log").read_text()
        assert "train as one stack of 2: MLP(" in log and f"trial {trial} epoch 2/2" in log


def test_a_bad_trainer_progress_is_one_line(tmp_path, small_root):
    result = run_here(f"dataset.root={small_root}", *SMALL_DATA, "trainer.progress=sometimes",
                      cwd=tmp_path)
    assert result.returncode == 1
    assert ("Error: trainer.progress='sometimes' is not allowed; allowed: auto, true, false"
            in result.stdout + result.stderr)


def workers(tmp_path: Path, small_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m mlp_sweep.workers 2` on the small dataset, one long trial per worker: 2 layers
    of 1024 units, batches of 16 (about a second an epoch, two workers on 2 cores), up to 400 epochs, no pruner."""
    return subprocess.run(
        [sys.executable, "-m", "mlp_sweep.workers", "2", f"dataset.root={small_root}", *SMALL_DATA,
         f"hydra.sweeper.storage=journal:{tmp_path}/o.journal", "hydra/sweeper/pruner=none",
         "dataset.val_size=500", "hydra.sweeper.enqueue_trials=[]", "model.depth=2", "model.width=1024", "trainer.batch_size=16",
         "trainer.epochs=400", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)


def journal_trials(tmp_path: Path) -> list:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(f"{tmp_path}/o.journal"))
    return optuna.load_study(study_name="mlp_fashion_mnist", storage=storage).trials


@pytest.mark.slow
def test_workers_stop_at_the_budget_and_name_their_lines(tmp_path, small_root):
    budget_s = 5
    result = workers(tmp_path, small_root, f"hydra.sweeper.timeout={budget_s}",
                     "hydra.sweeper.on_timeout=prune")  # prune_early: each stops after epoch 1
    assert result.returncode == 0, result.stdout[-3000:]
    # Each worker stops asking for trials at the budget: one trial each, none started after it.
    assert (result.stdout + result.stderr).count(f"hydra.sweeper.timeout={budget_s} s reached") == 2
    trials = journal_trials(tmp_path)
    assert len(trials) == 2 and len({t.user_attrs["worker"] for t in trials}) == 2
    for trial in trials:
        assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_by"] == "budget"
        assert 0 < len(trial.intermediate_values) < 400
    lines = result.stdout.splitlines()
    assert all(re.match(r"\[worker [01]\] ", line) for line in lines)
    for k in (0, 1):  # each worker's progress line, whole
        assert any(re.match(rf"\[worker {k}\] trial \d PRUNED at epoch \d+ .* by the budget · ", line)
                   for line in lines)


@pytest.mark.slow
def test_workers_with_finish_complete_their_trials_past_the_budget(tmp_path, small_root):
    budget_s, epochs = 4, 8
    result = workers(tmp_path, small_root, f"hydra.sweeper.timeout={budget_s}",
                     "hydra.sweeper.on_timeout=finish", f"trainer.epochs={epochs}")
    assert result.returncode == 0, result.stdout[-3000:]
    trials = journal_trials(tmp_path)
    assert len(trials) == 2
    for trial in trials:
        assert trial.state == TrialState.COMPLETE and len(trial.intermediate_values) == epochs
        assert (trial.datetime_complete - trial.datetime_start).total_seconds() > budget_s
