"""End to end: `python -m mlp_sweep.train` as a user runs it, on a small real MNIST subset; in
this process (`run_here`) but where the process is what is tested."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mlp_sweep.train import train
from mlp_sweep.training.data import load_splits
from mlp_sweep.training.engine import accuracy
from mlp_sweep.training.model import MLP

from conftest import QUICK, compose_config, run_here

pytestmark = pytest.mark.slow


def run_folders(base: Path) -> list[Path]:
    return sorted(p for p in base.glob("*/*") if p.is_dir())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_single_run_leaves_config_log_metrics_and_weights(tmp_path, mnist_root):
    result = run_here(*QUICK, f"dataset.root={mnist_root}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run] = run_folders(tmp_path / "outputs")
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "metrics.json",
                 "model.pt", "status.json"):
        assert (run / name).is_file(), name
    assert read_json(run / "status.json")["state"] == "completed"

    metrics = read_json(run / "metrics.json")
    assert metrics["parameter_count"] == 109_386
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    epoch = metrics["epochs"][0]
    assert {"train_loss", "train_accuracy", "test_accuracy", "epoch_time_s"} <= epoch.keys()
    assert 0.5 < metrics["test_accuracy"] <= 1 and epoch["epoch_time_s"] > 0
    # When the epoch ended, after the run began and after that epoch's training took place.
    started = read_json(run / "status.json")["started"]
    assert started + epoch["epoch_time_s"] < epoch["ended_at"] < time.time()
    assert f"test accuracy: {metrics['test_accuracy']:.2%}" in (run / "train.log").read_text()

    # The saved weights give back the recorded accuracy.
    model = MLP((1, 28, 28), [128, 64], 10)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    test = load_splits(compose_config(f"dataset.root={mnist_root}", "dataset.test_limit=1000").dataset).test
    assert accuracy(model, test) == metrics["test_accuracy"]


def test_runs_started_together_never_share_a_folder(tmp_path, mnist_root):
    command = [sys.executable, "-m", "mlp_sweep.train", *QUICK, f"dataset.root={mnist_root}"]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for _ in range(3)]
    assert [p.wait(timeout=300) for p in processes] == [0, 0, 0]
    runs = run_folders(tmp_path / "outputs")
    assert len(runs) == 3
    assert len({read_json(r / "status.json")["pid"] for r in runs}) == 3
    assert all(read_json(r / "status.json")["state"] == "completed" for r in runs)


def test_grid_sweep_runs_one_job_per_combination(tmp_path, mnist_root):
    result = run_here("--multirun", "optimizer=adam,sgd", *QUICK, f"dataset.root={mnist_root}",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [sweep] = run_folders(tmp_path / "multirun")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    optimizers = [yaml.safe_load((j / ".hydra/config.yaml").read_text())["optimizer"]["_target_"]
                  for j in jobs]
    assert optimizers == ["torch.optim.Adam", "torch.optim.SGD"]
    # Better than chance (10%) after one epoch on 2000 images.
    assert all(read_json(j / "metrics.json")["test_accuracy"] > 0.2 for j in jobs)
    assert not (tmp_path / "outputs").exists()


def test_course_search_is_one_command_and_maximises_the_returned_accuracy(tmp_path, mnist_root):
    result = run_here("--multirun", "hparams_search=optuna_course", "hydra.sweeper.n_trials=2",
                      *QUICK, f"dataset.root={mnist_root}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [sweep] = run_folders(tmp_path / "multirun")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    metrics = [read_json(sweep / str(n) / "metrics.json") for n in (0, 1)]
    objective = [m[m["objective"]] for m in metrics]
    assert results["best_value"] == max(objective)
    assert {"activation", "optimizer", "optimizer.lr", "trainer.batch_size",
            "model.hidden_sizes"} <= results["best_params"].keys()


def test_train_returns_the_objective_it_records(tmp_path, mnist_root):
    cfg = compose_config(*QUICK, f"dataset.root={mnist_root}")
    accuracy = train(cfg, run_dir=tmp_path)
    assert isinstance(accuracy, float)
    assert accuracy == read_json(tmp_path / "metrics.json")["test_accuracy"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer=adamx", "Could not find 'optimizer/adamx'"),
        ("model.hidden_sizes=[128,0]", "model.hidden_sizes=[128, 0] contains 0"),
        ("optimizer.lr=0", "optimizer.lr=0 is not allowed"),
        ("trainer.epochs=0", "trainer.epochs=0 is not allowed"),
        ("trainer.batch_size=0", "trainer.batch_size=0 is not allowed"),
        ("trainer.device=cuda:99", "trainer.device='cuda:99' is not present"),
        ("optimizer._target_=os.system", "optimizer._target_='os.system' is not allowed"),
        ("model.depth=0", "model.depth=0 is not allowed"),
        ("model.width=0", "model.width=0 is not allowed"),
        ("loss.label_smoothing=1.5", "loss.label_smoothing=1.5 is out of range"),
        ("augment=shift augment.shift=-1", "augment.shift=-1 is not allowed"),
        ("scheduler=cosine trainer.epochs=1 scheduler.warmup_epochs=2",
         "scheduler.warmup_epochs=2 is not allowed with trainer.epochs=1"),
    ],
)
def test_bad_input_fails_in_one_line_without_traceback(tmp_path, mnist_root, override, message):
    overrides = override.split()
    keys = {o.split("=")[0] for o in overrides}
    quick = [q for q in QUICK if q.split("=")[0] not in keys]
    result = run_here(*quick, f"dataset.root={mnist_root}", *overrides, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output
    assert "Traceback" not in output
    for run in run_folders(tmp_path / "outputs"):
        assert not (run / "metrics.json").exists()
        assert read_json(run / "status.json")["state"] == "failed"


def test_truncated_data_file_fails_in_one_line_and_is_kept(tmp_path, mnist_root):
    root = tmp_path / "data"
    shutil.copytree(mnist_root / "MNIST" / "raw", root / "MNIST" / "raw")
    victim = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:5000])
    result = run_here(*QUICK, f"dataset.root={root}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"Error: {victim} is truncated" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert victim.stat().st_size == 5000


def test_grid_with_a_bad_value_stops_with_one_line(tmp_path, mnist_root):
    result = run_here("--multirun", "optimizer.lr=-1,0.1", *QUICK, f"dataset.root={mnist_root}",
                      cwd=tmp_path)
    assert result.returncode == 1
    assert "optimizer.lr=-1 is not allowed" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
