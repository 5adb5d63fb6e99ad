"""Fused trials (hydra.sweeper.fuse): several trials trained as one stacked computation, each
still a whole trial: its own hyperparameters, history, folder and end."""

import json
import logging
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from mlp_sweep.training.build import build_training
from mlp_sweep.training.engine import DivergedError
from mlp_sweep.training.checkpoint import checkpoint_of
from mlp_sweep.training.run import Run, train_run, train_runs

from conftest import SMALL_DATA, compose_config, run_here

# Members of one stack: the same layers, seed, batch size and data; everything else their own.
SHAPE = ["model.hidden_sizes=[64,32]", "model.norm=layer", "trainer.epochs=3",
         "trainer.batch_size=50", "dataset.val_size=500", "objective=val_accuracy"]
OWN = {  # per member: optimizer class, rate and its schedule, weight decay, betas or momentum,
    # label smoothing
    0: ["optimizer=adam", "optimizer.lr=0.001"],
    1: ["optimizer=adamw", "optimizer.lr=0.003", "optimizer.weight_decay=0.05",
        "optimizer.betas=[0.85,0.99]", "loss.label_smoothing=0.1", "scheduler=onecycle"],
    2: ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.8", "optimizer.nesterov=true"],
    3: ["optimizer=rmsprop", "optimizer.lr=0.0005", "optimizer.alpha=0.9", "scheduler=cosine"],
    4: ["optimizer=sgd", "optimizer.lr=0.001", "+loss.reduction=sum"],  # any loss setting
}


def member_cfg(small_root: Path, *own: str):
    return compose_config(*SMALL_DATA, f"dataset.root={small_root}", *SHAPE, *own)


def epochs(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["epochs"]


def assert_same_run(fused: Path, single: Path) -> None:
    assert_same_epochs(fused, single)
    fused_weights, single_weights = (torch.load(f / "model.pt") for f in (fused, single))
    assert fused_weights.keys() == single_weights.keys()  # model.pt loads as a single run's
    for name in single_weights:
        torch.testing.assert_close(fused_weights[name], single_weights[name], rtol=1e-3, atol=1e-4)


def assert_same_epochs(fused: Path, single: Path) -> None:
    for a, b in zip(epochs(fused), epochs(single), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=0.002), key


def test_each_member_of_a_stack_trains_as_its_single_run(tmp_path, small_root):
    cfgs = {name: member_cfg(small_root, *own) for name, own in OWN.items()}
    outcomes = train_runs([Run(cfg, tmp_path / f"fused{name}", name=name)
                           for name, cfg in cfgs.items()])
    for name, cfg in cfgs.items():
        single = train_run(cfg, tmp_path / f"single{name}")
        assert outcomes[name] == pytest.approx(single, abs=0.002)
        assert_same_run(tmp_path / f"fused{name}", tmp_path / f"single{name}")
        summary = json.loads((tmp_path / f"fused{name}" / "metrics.json").read_text())
        assert summary["trained_with"] == [n for n in OWN if n != name]
        # The objective is the validation accuracy: the test set is read once, for the epoch kept
        tested = [e["epoch"] for e in summary["epochs"] if e["test_accuracy"] is not None]
        assert tested == [summary["best_epoch"]]
        assert summary["test_accuracy"] == summary["epochs"][tested[0] - 1]["test_accuracy"] > 0.5


def test_members_with_dropout_and_augmentation_train_as_their_single_runs(tmp_path, small_root):
    # Each member draws its dropout from its own stream and the batch's shift from one that no
    # dropout touches: its epochs are its single run's whatever its stack-mates are, including
    # when a mate with dropout ends after epoch 1 and the stack goes on smaller.
    def prune_after_epoch_1(metrics):
        raise optuna.TrialPruned("pruned after step 1")

    own = {0: ["model.dropout=0.1"], 1: ["model.dropout=0.45", "optimizer.lr=0.003"],
           2: ["model.dropout=0.0", "optimizer=sgd", "optimizer.lr=0.05"],
           3: ["model.dropout=0.3", "scheduler=onecycle"]}
    cfgs = {name: member_cfg(small_root, "augment=shift", *extra) for name, extra in own.items()}
    outcomes = train_runs([Run(cfg, tmp_path / f"fused{name}", name=name,
                               on_epoch=prune_after_epoch_1 if name == 1 else None)
                           for name, cfg in cfgs.items()])
    assert isinstance(outcomes[1], optuna.TrialPruned)
    for name in (0, 2, 3):
        single = train_run(cfgs[name], tmp_path / f"single{name}")
        assert outcomes[name] == pytest.approx(single, abs=0.002)
        assert_same_run(tmp_path / f"fused{name}", tmp_path / f"single{name}")
    with pytest.raises(optuna.TrialPruned):
        train_run(cfgs[1], tmp_path / "single1", on_epoch=prune_after_epoch_1)
    assert_same_epochs(tmp_path / "fused1", tmp_path / "single1")
    pruned = json.loads((tmp_path / "fused1" / "metrics.json").read_text())
    assert pruned["test_accuracy"] == pytest.approx(
        json.loads((tmp_path / "single1" / "metrics.json").read_text())["test_accuracy"], abs=0.002)
    assert pruned["test_accuracy"] > 0.5  # read for the pruned run's kept weights


def test_a_run_a_caller_stops_with_system_exit_is_recorded_at_once_unread(tmp_path, small_root):
    # Ray Tune stops a trial by raising SystemExit in its report call, inside the callback, and
    # kills it moments later: the run records its end before anything else, the test set unread
    def stop_after_epoch_2(metrics):
        if metrics.epoch == 2:
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        train_run(member_cfg(small_root, *OWN[0]), tmp_path / "run", on_epoch=stop_after_epoch_2)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert (status["state"], status["error"].splitlines()[0]) == ("failed", "SystemExit: 0")
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["epochs_done"] == 2
    assert [e["test_accuracy"] for e in summary["epochs"]] == [None, None]


def test_a_member_pruned_or_diverged_ends_alone_and_the_others_go_on(tmp_path, small_root):
    def prune_after_epoch_1(metrics):
        raise optuna.TrialPruned("pruned after step 1")

    members = [
        Run(member_cfg(small_root, *OWN[0]), tmp_path / "0", name=0),
        Run(member_cfg(small_root, *OWN[2]), tmp_path / "1", on_epoch=prune_after_epoch_1,
            name=1),
        Run(member_cfg(small_root, "optimizer=sgd", "optimizer.lr=1e12"), tmp_path / "2",
            name=2),
        Run(member_cfg(small_root, *OWN[3], "model.dropout=0.3"), tmp_path / "3", name=3),
    ]
    outcomes = train_runs(members)
    assert isinstance(outcomes[1], optuna.TrialPruned)
    assert isinstance(outcomes[2], DivergedError)
    assert isinstance(outcomes[0], float) and isinstance(outcomes[3], float)
    states = {m.name: json.loads((m.run_dir / "status.json").read_text())["state"]
              for m in members}
    assert states == {0: "completed", 1: "pruned", 2: "failed", 3: "completed"}
    assert [len(epochs(tmp_path / str(n))) for n in (0, 1, 3)] == [3, 1, 3]
    assert not (tmp_path / "1" / "model.pt").exists() and not (tmp_path / "2" / "model.pt").exists()
    # The one member with dropout trained with it, and the stack went on without the others:
    # member 0 still ends as its single run does.
    assert outcomes[3] > 0.5
    train_run(member_cfg(small_root, *OWN[0]), tmp_path / "single0")
    assert_same_run(tmp_path / "0", tmp_path / "single0")


def test_a_stack_interrupted_leaves_no_run_marked_running(tmp_path, small_root):
    def interrupt(metrics):
        raise KeyboardInterrupt

    members = [Run(member_cfg(small_root, *OWN[0]), tmp_path / "0", name=0),
               Run(member_cfg(small_root, *OWN[1]), tmp_path / "1", on_epoch=interrupt, name=1)]
    with pytest.raises(KeyboardInterrupt):
        train_runs(members)
    for member in members:
        status = json.loads((member.run_dir / "status.json").read_text())
        assert status["state"] == "failed" and not (member.run_dir / "model.pt").exists()


def test_members_that_cannot_share_a_stack_train_alone_in_turn(tmp_path, small_root, caplog):
    cfgs = [member_cfg(small_root, "model.hidden_sizes=[32]"),
            member_cfg(small_root, "model.hidden_sizes=[16]"),
            member_cfg(small_root, "trainer.seed=1")]
    with caplog.at_level(logging.INFO):
        outcomes = train_runs([Run(cfg, tmp_path / str(n), name=n) for n, cfg in enumerate(cfgs)])
    assert all(isinstance(v, float) for v in outcomes.values())
    said = [r.message for r in caplog.records if "stacks, one after the other" in r.message]
    assert len(said) == 1 and "differ in layers, trainer" in said[0]
    for n, cfg in enumerate(cfgs):
        assert "trained_with" not in json.loads((tmp_path / str(n) / "metrics.json").read_text())
        weights = torch.load(tmp_path / str(n) / "model.pt")
        model = build_training(cfg, 100).model
        model.load_state_dict(weights)  # the shape its own config describes


def fused_sweep(tmp_path: Path, small_root: Path, *extra: str):
    return run_here(
        "--multirun", "hparams_search=optuna_course", *SMALL_DATA, f"dataset.root={small_root}",
        "dataset.val_size=500", "trainer.epochs=2", f"hydra.sweep.dir={tmp_path}/sweep",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.n_trials=6",
        "hydra.sweeper.fuse=3",
        "hydra.sweeper.fuse_by=[model.hidden_sizes,activation,trainer.batch_size]",
        *extra, cwd=tmp_path)


def test_a_fused_sweep_records_every_trial_as_its_own(tmp_path, small_root):
    result = fused_sweep(tmp_path, small_root, "hydra/sweeper/pruner=none")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="course_fashion_mnist",
                              storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    groups = {tuple(t.user_attrs["trained_with"]) for t in trials}
    assert groups == {(0, 1, 2), (3, 4, 5)}
    for group in groups:
        shared = {(trials[n].params["model.hidden_sizes"], trials[n].params["activation"],
                   trials[n].params["trainer.batch_size"]) for n in group}
        assert len(shared) == 1  # what cannot be stacked is shared
        assert len({trials[n].params["optimizer.lr"] for n in group}) == 3  # the rest is not
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == tmp_path / "sweep" / str(trial.number)
        assert len(trial.intermediate_values) == 2
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        assert cfg.optimizer.lr == pytest.approx(trial.params["optimizer.lr"])
        model = build_training(cfg, 100).model
        model.load_state_dict(torch.load(run_dir / "model.pt"))
        overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        assert f"optimizer={trial.params['optimizer']}" in overrides
    # A trial fused with others, trained again alone from its own config (as refit reads it),
    # has the epochs its trial recorded.
    rerun = train_run(OmegaConf.load(tmp_path / "sweep" / "4" / ".hydra" / "config.yaml"),
                      tmp_path / "rerun")
    assert rerun == pytest.approx(trials[4].value, abs=0.002)
    assert_same_epochs(tmp_path / "rerun", tmp_path / "sweep" / "4")
    log = (tmp_path / "sweep" / "0" / "train.log").read_text()
    assert "trials 0, 1, 2 train as one stack of 3" in log
    assert (tmp_path / "sweep" / "best.yaml").is_file()
    compare = run_here(str(tmp_path / "sweep"), command="mlp_sweep.compare", cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr
    assert all(f"/{n}" in compare.stdout or f" {n} " in compare.stdout for n in range(6)), compare.stdout


@pytest.mark.parametrize("value, message", [
    ("hydra.sweeper.fuse=0", "hydra.sweeper.fuse=0 is not allowed; allowed: an integer >= 1"),
    ("hydra.sweeper.fuse_by=[model.width]",
     "hydra.sweeper.fuse_by names model.width, which is not searched; allowed:"),
])
def test_a_bad_fuse_setting_is_one_line_and_nothing_is_made(tmp_path, small_root, value, message):
    result = fused_sweep(tmp_path, small_root, value)
    assert result.returncode == 1
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "allowed" in line]
    assert len(errors) == 1 and message in errors[0], result.stdout + result.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "optuna.db").exists()


def test_a_stack_interrupted_leaves_each_member_a_checkpoint_it_goes_on_from_alone(
        tmp_path, small_root):
    def interrupt_at_epoch_3(metrics):
        if metrics.epoch == 3:
            raise KeyboardInterrupt  # a kill: every member keeps its checkpoint after epoch 2

    own = {0: ["model.dropout=0.2"], 1: ["optimizer=sgd", "optimizer.lr=0.05"],
           2: ["model.dropout=0.4", "scheduler=onecycle", "optimizer=adamw"]}
    cfgs = {name: member_cfg(small_root, "augment=shift", "trainer.epochs=5", *extra)
            for name, extra in own.items()}
    with pytest.raises(KeyboardInterrupt):
        train_runs([Run(cfg, tmp_path / f"fused{name}", name=name,
                        on_epoch=interrupt_at_epoch_3 if name == 2 else None)
                    for name, cfg in cfgs.items()])
    for name, cfg in cfgs.items():
        folder = tmp_path / f"fused{name}"
        assert (folder / "checkpoint.pt").is_file()
        train_run(cfg.copy(), tmp_path / f"resumed{name}",
                  resume=(str(folder), checkpoint_of(folder)))
        train_run(cfg, tmp_path / f"single{name}")
        assert_same_run(tmp_path / f"resumed{name}", tmp_path / f"single{name}")


def test_a_stack_left_with_one_member_trains_it_on_as_its_single_run(tmp_path, small_root):
    def prune_after_epoch_1(metrics):
        raise optuna.TrialPruned("pruned after step 1")

    cfg = member_cfg(small_root, *OWN[0], "model.dropout=0.2")
    outcomes = train_runs([Run(member_cfg(small_root, *OWN[2]), tmp_path / "pruned", name=0,
                               on_epoch=prune_after_epoch_1),
                           Run(cfg, tmp_path / "left", name=1)])
    assert isinstance(outcomes[0], optuna.TrialPruned)
    train_run(cfg, tmp_path / "single")
    assert_same_run(tmp_path / "left", tmp_path / "single")
