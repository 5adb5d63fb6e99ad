"""One trial contract: the sweep writes each job's trial once (RUN_DIR/trial.json), the job reads
it in one place and reports to the sweep's own study, wherever the job runs; the epoch a run ends
on is its last report, never pruned."""

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mlp_sweep.sweeping.optuna_compat import trial_id
from mlp_sweep.sweeping.storage import absolute_storage
from mlp_sweep.sweeping.trial_link import TrialLink
from mlp_sweep.sweeping.trial_spec import TRIAL_VARIABLE, TrialSpec
from mlp_sweep.train import train

from conftest import SMALL_DATA, compose_config, run_here

SPHERE = Path(__file__).resolve().parent / "sweeper_app" / "sphere.py"


def sphere_here(tmp_path: Path, *overrides: str):
    return run_here("--multirun", f"hydra.sweep.dir={tmp_path}/sweep", "hydra.sweeper.n_trials=3",
                    "steps=2", *overrides, cwd=tmp_path, script=SPHERE)


def test_each_job_reads_its_trial_from_the_file_the_sweep_wrote(tmp_path):
    storage = f"sqlite:///{tmp_path}/sphere.db"
    result = sphere_here(tmp_path, f"hydra.sweeper.storage={storage}")
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="sphere", storage=storage).trials
    assert len(trials) == 3
    for trial in trials:
        spec = TrialSpec.read(Path(trial.user_attrs["run_dir"], "trial.json"))
        assert (spec.study_name, spec.storage) == ("sphere", storage)
        assert (spec.trial_id, spec.number) == (trial_id(trial), trial.number)
        assert spec.run_dir == str(tmp_path / "sweep" / str(trial.number))
        assert len(trial.intermediate_values) == 2


def test_a_job_that_changes_folder_reports_to_the_sweeps_relative_sqlite_study(tmp_path):
    result = sphere_here(tmp_path, "hydra.job.chdir=true", "hydra.sweeper.storage=sqlite:///sphere.db")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path}/sphere.db")
    assert [len(t.intermediate_values) for t in study.trials] == [2, 2, 2]
    assert not list((tmp_path / "sweep").rglob("*.db"))  # no new database in a job's folder


def test_a_job_in_another_process_and_folder_reaches_the_study_by_its_absolute_url(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = absolute_storage("sqlite:///runs/s.db")
    assert storage == f"sqlite:///{tmp_path}/runs/s.db"
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    path = TrialSpec("s", storage, trial_id(trial), trial.number, str(tmp_path / "0")).write()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    TrialLink.of(TrialSpec.read(path)).report(0.5, 1)
    assert study.trials[0].intermediate_values == {1: 0.5}
    assert not list(elsewhere.iterdir())


def test_storages_become_absolute_only_where_they_name_a_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_storage("journal:multirun/o.journal") == f"journal:{tmp_path}/multirun/o.journal"
    assert absolute_storage("sqlite:////abs/o.db") == "sqlite:////abs/o.db"
    assert absolute_storage("postgresql://me@127.0.0.1/db") == "postgresql://me@127.0.0.1/db"
    assert absolute_storage(None) is None


def test_the_epoch_early_stopping_ends_on_is_the_last_report_and_never_pruned(
        tmp_path, small_root, monkeypatch):
    # A pruner that prunes every trial from its second step on: the run below stops early after
    # epoch 2 (its learning rate leaves the weights as they are), so epoch 2 is its end, and a
    # finished run must be recorded as such, with its model.pt, not pruned on its last epoch.
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0, "n_warmup_steps": 2}
    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    run_dir = tmp_path / "run"
    spec = TrialSpec("s", storage, trial_id(trial), trial.number, str(run_dir), pruner=pruner)
    monkeypatch.setenv(TRIAL_VARIABLE, str(spec.write()))
    cfg = compose_config(*SMALL_DATA, f"dataset.root={small_root}", "dataset.val_size=500",
                         "trainer.epochs=5", "trainer.early_stopping=1", "optimizer.lr=1e-12",
                         "objective=val_accuracy")
    value = train(cfg, run_dir=run_dir)
    study.tell(trial, value)
    [recorded] = study.trials
    assert recorded.state == TrialState.COMPLETE
    assert sorted(recorded.intermediate_values) == [1, 2]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert (run_dir / "model.pt").is_file()


def test_a_task_that_returns_one_value_for_a_fused_group_fails_its_trials_saying_why(tmp_path):
    storage = f"sqlite:///{tmp_path}/sphere.db"
    result = sphere_here(tmp_path, f"hydra.sweeper.storage={storage}", "hydra.sweeper.fuse=3",
                         "hydra.sweeper.max_failure_rate=1.0")
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="sphere", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    for trial in trials:
        assert "returns {trial number: value} for each" in trial.user_attrs["fail_reason"]
        assert trial.user_attrs["trained_with"] == [0, 1, 2]
    # The job had its group: the first trial's spec lists the others, each with its own config.
    first = TrialSpec.read(tmp_path / "sweep" / "0" / "trial.json")
    assert [spec.number for spec in first.group()] == [0, 1, 2]
    for spec in first.group():
        assert Path(spec.run_dir, ".hydra", "config.yaml").is_file()

