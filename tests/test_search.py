"""Searching for a strong model: the preset's space, budgets in seconds, refits, other datasets.
Every search here is the real CLI on real MNIST subsets (or small files in the real formats)."""

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from hydra import compose, initialize_config_module
from optuna.trial import TrialState
from test_data import write_cifar10

from mlp_sweep.sweeping.storage import load_study

from conftest import CONF_DIR, run_here, write_fashion_mnist

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = ["trainer.progress=false", "dataset.train_limit=3000", "dataset.test_limit=1000",
         "dataset.val_size=1000"]


def refit_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_here(*args, cwd=cwd, command="mlp_sweep.refit")


def test_strong_preset_searches_shape_and_augmentation_under_one_schedule(tmp_path, mnist_root):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here("--multirun", "hparams_search=optuna", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=3",
                      "trainer.epochs=2", "model.width=choice(32,256)", *SMALL,
                      "hydra.sweep.dir=multirun/strong", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load_study("mlp_mnist", storage)
    assert "pruner SuccessiveHalvingPruner" in result.stdout + result.stderr
    preset = yaml.safe_load((CONF_DIR / "hparams_search" / "optuna.yaml").read_text())
    assert study.trials[0].params == preset["hydra"]["sweeper"]["enqueue_trials"][0]
    searched = {"model.depth", "model.width", "model.dropout", "model.norm", "activation",
                "optimizer.lr", "optimizer.weight_decay", "trainer.batch_size", "augment",
                "loss.label_smoothing"}
    for trial in study.trials:
        assert set(trial.params) == searched
        config = yaml.safe_load(Path(trial.user_attrs["run_dir"], ".hydra", "config.yaml").read_text())
        assert config["model"]["depth"] == trial.params["model.depth"]
        # one schedule for all: a rung compares trials at the same point of it
        assert config["scheduler"]["_target_"] == "torch.optim.lr_scheduler.OneCycleLR"
        assert config["trainer"]["epochs"] == 2 and config["objective"] == "val_accuracy"
    best = yaml.safe_load((tmp_path / "multirun" / "strong" / "best.yaml").read_text())
    metrics = json.loads(Path(best["run_dir"], "metrics.json").read_text())
    # The sweeper is told the kept (best validation) epoch's value, and model.pt is that epoch.
    assert best["value"] == metrics["val_accuracy"] == max(e["val_accuracy"] for e in metrics["epochs"])
    assert metrics["epochs"][metrics["best_epoch"] - 1]["val_accuracy"] == metrics["val_accuracy"]


def test_the_strong_presets_rungs_stop_no_trial_after_most_of_its_cost():
    with initialize_config_module(config_module="mlp_sweep.conf"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    pruner, epochs = cfg.hydra.sweeper.pruner, cfg.trainer.epochs
    rungs = [pruner.min_resource * pruner.reduction_factor ** k for k in range(10)]
    assert epochs in rungs  # the last rung is the trial's end, where nothing is pruned
    assert max(r for r in rungs if r < epochs) <= epochs / 3
    assert cfg.hydra.sweeper.on_timeout == "prune_early"


def test_a_narrowed_space_without_the_presets_first_trial_is_one_line(tmp_path, mnist_root):
    result = run_here("--multirun", "hparams_search=optuna", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "model.width=choice(32,64)",
                      *SMALL, "hydra.sweep.dir=multirun/narrow", cwd=tmp_path)
    assert result.returncode == 1
    assert ("Error: hydra.sweeper.enqueue_trials[0].model.width=256 is outside its range; allowed: "
            "one of 32, 64 (or hydra.sweeper.enqueue_trials=[] to start without it)") in \
        result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "multirun" / "narrow").exists()


def test_timeout_stops_asking_for_trials_and_a_rerun_adds_to_the_study(tmp_path, mnist_root):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    started, budget_s = time.time(), 4
    result = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=500",
                      f"hydra.sweeper.timeout={budget_s}", "trainer.epochs=1", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"hydra.sweeper.timeout={budget_s} s reached: no new trials" in result.stdout + result.stderr
    trials = load_study("course_mnist", storage).trials
    assert 1 <= len(trials) < 500
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(t.datetime_start.timestamp() < started + budget_s + 10 for t in trials)  # + start-up

    # The budget is per command: running it again adds trials to the same study.
    again = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={mnist_root}",
                     f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=500",
                     "hydra.sweeper.timeout=5", "trainer.epochs=1", *SMALL, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(load_study("course_mnist", storage).trials) > len(trials)


@pytest.mark.parametrize("timeout", ["0", "-5", "soon"])
def test_bad_timeout_is_one_line_and_creates_nothing(tmp_path, mnist_root, timeout):
    result = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
                      f"hydra.sweeper.timeout={timeout}", *SMALL, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "hydra.sweeper.timeout=" in output and "allowed: a number of seconds > 0" in output
    assert "Traceback" not in output
    assert not (tmp_path / "optuna.db").exists()
    assert not list(tmp_path.glob("multirun/*/*/0"))


def test_refit_trains_the_best_trial_on_train_and_validation_with_each_seed(tmp_path, mnist_root):
    result = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
                      "hydra.sweeper.n_trials=2", "trainer.epochs=1", *SMALL,
                      "hydra.sweep.dir=multirun/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "multirun" / "sweep"
    refit = refit_cli("--seeds", "2", cwd=tmp_path)  # no folder: the newest sweep
    assert refit.returncode == 0, refit.stderr
    assert "refitting the newest sweep: multirun/sweep" in refit.stderr
    summary = json.loads((sweep / "refit.json").read_text())
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert summary["trial_dir"] == best["run_dir"] and summary["trial_val_accuracy"] == best["value"]
    assert summary["seeds"] == [0, 1] and len(summary["test_accuracy"]) == 2
    assert summary["test_accuracy_mean"] == pytest.approx(np.mean(summary["test_accuracy"]))
    assert summary["test_accuracy_std"] == pytest.approx(np.std(summary["test_accuracy"], ddof=1))
    for seed in (0, 1):
        metrics = json.loads((sweep / "refit" / f"seed_{seed}" / "metrics.json").read_text())
        assert metrics["train_size"] == 3000 + 1000  # the trial's images and the validation ones
        assert metrics["val_accuracy"] is None and metrics["objective"] == "test_accuracy"
        assert metrics["test_accuracy"] == summary["test_accuracy"][seed]
    assert "test accuracy" in refit.stderr and "±" in refit.stderr

    shown = run_here(str(sweep), "--json", "c.json", cwd=tmp_path, command="mlp_sweep.compare")
    assert shown.returncode == 0, shown.stderr
    assert (f"refit of {Path(best['run_dir']).name} on training + validation images (trainer.epochs=1, "
            f"2 seeds): test accuracy {summary['test_accuracy_mean']:.4f} ±") in shown.stdout
    [study] = json.loads((tmp_path / "c.json").read_text())["studies"]
    assert study["refit"] == summary

    # A trial's own folder refits that trial, best or not, into its own folder.
    other = next(p for p in sweep.iterdir() if p.name.isdigit() and str(p) != best["run_dir"])
    refit = refit_cli(str(other), "--seeds", "1", cwd=tmp_path)
    assert refit.returncode == 0, refit.stderr
    summary = json.loads((other / "refit.json").read_text())
    assert summary["trial_dir"] == str(other) and summary["seeds"] == [0]
    assert (other / "refit" / "seed_0" / "metrics.json").is_file()


def test_refit_of_a_sweep_without_a_completed_trial_is_one_line(tmp_path, mnist_root):
    result = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
                      "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failure_rate=1.0",
                      "optimizer=sgd", "optimizer.lr=inf", "trainer.epochs=1", *SMALL,
                      "hydra.sweep.dir=multirun/failed", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "multirun" / "failed"
    refit = refit_cli(str(sweep), cwd=tmp_path)
    output = refit.stdout + refit.stderr
    assert refit.returncode == 1
    assert f"{sweep} holds no completed trial to refit" in output and "Traceback" not in output
    assert not (sweep / "refit.json").exists() and not (sweep / "refit").exists()
    for args in (["--seeds", "0"], [str(tmp_path / "nowhere")]):
        bad = refit_cli(*([str(sweep)] if args[0] == "--seeds" else []), *args, cwd=tmp_path)
        assert bad.returncode == 1 and "allowed:" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "elsewhere").mkdir()
    none = refit_cli(cwd=tmp_path / "elsewhere")
    assert none.returncode == 1 and "no sweep under multirun/ here to refit; allowed:" in none.stderr


@pytest.mark.slow  # the command line end to end
def test_fashion_mnist_search_runs_the_preset_on_files_in_the_real_format(tmp_path):
    write_fashion_mnist(tmp_path / "data", 300, 100)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here("--multirun", "hparams_search=optuna", "dataset=fashion_mnist",
                      "dataset.root=data", "dataset.val_size=100", f"hydra.sweeper.storage={storage}",
                      "hydra.sweeper.n_trials=2", "trainer.epochs=1", "trainer.progress=false",
                      "model.width=choice(16,32)", "hydra.sweeper.enqueue_trials=[]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load_study("mlp_fashion_mnist", storage).trials  # its own study, named by dataset
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


@pytest.mark.slow  # the command line end to end
def test_cifar10_search_runs_the_preset_with_flip_and_crop(tmp_path, monkeypatch):
    import hashlib

    from torchvision import datasets

    folder, _ = write_cifar10(tmp_path / "data", np.random.default_rng(1))
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    # The written files' checksums, in place of CIFAR-10's own.
    monkeypatch.setattr(datasets.CIFAR10, "train_list",
                        [[n, md5[n]] for n, _ in datasets.CIFAR10.train_list])
    monkeypatch.setattr(datasets.CIFAR10, "test_list",
                        [[n, md5[n]] for n, _ in datasets.CIFAR10.test_list])
    monkeypatch.setitem(datasets.CIFAR10.meta, "md5", md5["batches.meta"])
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here("--multirun", "hparams_search=optuna", "dataset=cifar10", "dataset.root=data",
                      "dataset.val_size=5", f"hydra.sweeper.storage={storage}",
                      "hydra.sweeper.n_trials=2", "trainer.epochs=1", "trainer.progress=false",
                      "model.width=choice(16,32)", "augment=choice(none,flip_crop)",
                      "trainer.batch_size=choice(4,8)", "hydra.sweeper.enqueue_trials=[]",
                      # 15 images at batch 4, 1 epoch: 4 steps, of which 0.25 is one warm-up step
                      "scheduler.pct_start=0.3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load_study("mlp_cifar10", storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {t.params["augment"] for t in trials} <= {"none", "flip_crop"}
    for trial in trials:
        log = Path(trial.user_attrs["run_dir"], "train.log").read_text()
        assert "15 training samples" in log


def test_the_presets_base_run_as_a_preset_is_one_line(tmp_path, mnist_root):
    result = run_here("--multirun", "hparams_search=base/optuna_study", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", *SMALL,
                      "hydra.sweep.dir=multirun/base", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    errors = [line for line in output.splitlines() if "allowed" in line]
    assert len(errors) == 1 and "the search space is empty" in errors[0], output
    assert "Traceback" not in output
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "multirun" / "base").exists()
