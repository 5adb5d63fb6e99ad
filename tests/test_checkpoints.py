"""Checkpoints: a run killed after an epoch goes on from it, as if it had never stopped; a trial
a run that cannot be resumed says so in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlp_sweep.train import train
from mlp_sweep.training.checkpoint import Checkpoints

from conftest import SMALL_DATA, compose_config, run_here

# Dropout, augmentation and a per-step schedule: every random stream and state a resume restores
RUN = ["trainer.epochs=12", "dataset.val_size=500", "objective=val_accuracy", "model.dropout=0.2",
       "augment=shift", "scheduler=onecycle", "optimizer=adamw"]


def epochs(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["epochs"]


def same_epochs(a: list[dict], b: list[dict]) -> bool:
    keys = ("epoch", "train_loss", "train_accuracy", "val_accuracy", "test_accuracy")
    return [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]


def kill_after_epoch(args: list[str], run_dir: Path, epoch: int, cwd: Path) -> None:
    """Start `python -m mlp_sweep.train ARGS` and SIGKILL it once `epoch` epochs are done."""
    process = subprocess.Popen([sys.executable, "-m", "mlp_sweep.train", *args,
                                f"hydra.run.dir={run_dir}"], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if len(epochs(run_dir)) >= epoch:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_a_run_killed_after_an_epoch_goes_on_to_the_results_it_would_have_had(tmp_path, small_root):
    args = [*SMALL_DATA, f"dataset.root={small_root}", *RUN]
    whole = train(compose_config(*args), run_dir=tmp_path / "whole")
    assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # removed when the run ended

    kill_after_epoch(args, tmp_path / "killed", 3, tmp_path)
    killed_epochs = len(epochs(tmp_path / "killed"))
    # Killed while it saved, the newest checkpoint may be the one before (checkpoint.prev.pt)
    assert 3 <= killed_epochs < 12 and Checkpoints(tmp_path / "killed").load() is not None

    result = run_here(*args, f"trainer.resume={tmp_path / 'killed'}",
                      f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert same_epochs(epochs(tmp_path / "resumed"), epochs(tmp_path / "whole"))
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert f"resumed: going on from {tmp_path / 'killed'} after its epoch" in log
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["val_accuracy"] == whole
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()


def test_a_checkpoint_cut_short_is_passed_over_for_the_one_before(tmp_path, small_root):
    args = [*SMALL_DATA, f"dataset.root={small_root}", *RUN, "trainer.epochs=5"]
    train(compose_config(*args), run_dir=tmp_path / "whole")

    def interrupt_at_epoch_4(metrics):
        if metrics.epoch == 4:
            raise KeyboardInterrupt  # an interruption: the run keeps its checkpoints

    from mlp_sweep.training.run import train_run
    with pytest.raises(KeyboardInterrupt):
        train_run(compose_config(*args), tmp_path / "cut", on_epoch=interrupt_at_epoch_4)
    newest = tmp_path / "cut" / "checkpoint.pt"  # after epoch 3; the one before: epoch 2
    newest.write_bytes(newest.read_bytes()[:1000])
    train(compose_config(*args, f"trainer.resume={tmp_path / 'cut'}"), run_dir=tmp_path / "resumed")
    assert same_epochs(epochs(tmp_path / "resumed"), epochs(tmp_path / "whole"))


@pytest.mark.parametrize("make, allowed", [
    (lambda folder, root: folder.mkdir(), "holds no readable checkpoint.pt; allowed: the folder of a run"),
    (lambda folder, root: kill_after_epoch(
        [*SMALL_DATA, f"dataset.root={root}", "trainer.epochs=50", "model.hidden_sizes=[32]"],
        folder, 2, folder.parent),
     "model.hidden_sizes=[128, 64] but trainer.resume="),
])
def test_a_resume_that_cannot_be_is_one_line(tmp_path, small_root, make, allowed):
    folder = tmp_path / "earlier"
    make(folder, small_root)
    result = run_here(*SMALL_DATA, f"dataset.root={small_root}", f"trainer.resume={folder}",
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "allowed" in line]
    assert len(errors) == 1 and f"trainer.resume={folder}" in errors[0] and allowed in errors[0]
    assert not (tmp_path / "run" / "model.pt").exists()


def interrupted_after(args: list[str], run_dir: Path, epoch: int) -> None:
    """Run in this process and interrupt it as epoch `epoch + 1` ends: its checkpoint is the
    one after epoch `epoch`, as a kill then leaves it."""
    from mlp_sweep.training.run import train_run

    def interrupt(metrics):
        if metrics.epoch == epoch + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(compose_config(*args), run_dir, on_epoch=interrupt)


def test_a_resume_with_more_epochs_goes_on_as_a_run_started_with_them(tmp_path, small_root):
    # No schedule depends on the length: the run goes on to the epochs a 6-epoch run has, and
    # its metrics keep the earlier epochs' end times, leaving them out of its training time and
    # its trackers (the earlier run's have them).
    args = [*SMALL_DATA, f"dataset.root={small_root}", "dataset.val_size=500", "model.dropout=0.2",
            "augment=shift", "optimizer=adamw", "scheduler=step"]
    train(compose_config(*args, "trainer.epochs=6"), run_dir=tmp_path / "whole")
    interrupted_after([*args, "trainer.epochs=4"], tmp_path / "short", 2)
    earlier = epochs(tmp_path / "short")[:2]
    result = run_here(*args, "trainer.epochs=6", f"trainer.resume={tmp_path / 'short'}",
                      "trainer.threads=1", "logger=csv", f"hydra.run.dir={tmp_path / 'longer'}",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert same_epochs(epochs(tmp_path / "longer"), epochs(tmp_path / "whole"))
    metrics = json.loads((tmp_path / "longer" / "metrics.json").read_text())
    assert [m["ended_at"] for m in metrics["epochs"][:2]] == [m["ended_at"] for m in earlier]
    assert metrics["resumed_after"] == 2 and metrics["threads"] == 1
    assert metrics["train_time_s"] == pytest.approx(
        sum(m["epoch_time_s"] for m in metrics["epochs"][2:]))
    logged = (tmp_path / "longer" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in logged[1:]] == ["3", "4", "5", "6"]


@pytest.mark.parametrize("changed, message", [
    (["trainer.epochs=10", "scheduler=onecycle"],
     "trainer.epochs=10 but trainer.resume={folder} was trained with trainer.epochs=6 under a "
     "schedule planned for that length"),
    (["trainer.epochs=6", "scheduler=onecycle", "optimizer.lr=0.01"],
     "optimizer.lr=0.01 but trainer.resume={folder} was trained with optimizer.lr=0.001"),
    (["trainer.epochs=6", "scheduler=none"],
     "scheduler._target_=null but trainer.resume={folder} was trained with "
     "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR"),
    (["trainer.epochs=2", "scheduler=onecycle"],
     "trainer.epochs=2 but trainer.resume={folder} has already trained 2 epochs; allowed: "
     "trainer.epochs > 2"),
])
def test_a_resume_that_would_change_what_is_trained_is_refused_in_one_line(
        tmp_path, small_root, changed, message):
    args = [*SMALL_DATA, f"dataset.root={small_root}"]
    folder = tmp_path / "earlier"
    interrupted_after([*args, "trainer.epochs=6", "scheduler=onecycle"], folder, 2)
    result = run_here(*args, *changed, f"trainer.resume={folder}",
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "allowed" in line]
    assert len(errors) == 1 and message.format(folder=folder) in errors[0], output
    assert "Traceback" not in output and not (tmp_path / "run" / "metrics.json").exists()
    assert (folder / "checkpoint.pt").is_file()  # nothing lost


def test_a_checkpoint_of_an_earlier_version_or_another_device_is_refused_in_one_line():
    from mlp_sweep.errors import UserError
    from mlp_sweep.training.resume_check import check_resumable, resumable_config

    cfg = compose_config("trainer.epochs=6")
    written = {"epoch": 2, "config": resumable_config(cfg), "dropout_rng": None, "device": "cpu"}
    check_resumable(written, cfg, "here", "cpu")  # the same run: nothing to say
    earlier_version = {k: v for k, v in written.items() if k not in ("config", "dropout_rng")}
    with pytest.raises(UserError, match="written by an earlier version.*allowed: a new run"):
        check_resumable(earlier_version, cfg, "here", "cpu")
    with pytest.raises(UserError, match="trained on cuda, and this run would go on on cpu"):
        check_resumable({**written, "device": "cuda"}, cfg, "here", "cpu")
