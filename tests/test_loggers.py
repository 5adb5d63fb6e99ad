"""Experiment trackers (conf/logger/): what a run logs to TensorBoard, MLflow, W&B and CSV, read
back with each tool's own reader, first from the trackers alone, then from the command line."""

import csv
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams.api_pb2 import Status
from wandb.proto.wandb_internal_pb2 import Record

from mlp_sweep.errors import ConfigError
from mlp_sweep.sweeping.storage import load_study
from mlp_sweep.sweeping.study_settings import study_settings
from mlp_sweep.train import train
from mlp_sweep.training.config import validate
from mlp_sweep.training.engine import DivergedError, EpochMetrics
from mlp_sweep.training.loggers import EPOCH_COLUMNS, Trackers

from conftest import QUICK, compose_config, run_here

EPOCHS = [EpochMetrics(epoch=1, train_loss=1.25, train_accuracy=0.61, val_accuracy=0.625,
                       test_accuracy=0.6, epoch_time_s=0.5),
          EpochMetrics(epoch=2, train_loss=0.75, train_accuracy=0.8, val_accuracy=0.8125,
                       test_accuracy=0.79, epoch_time_s=0.25)]
MEASURED = [name for name in EPOCH_COLUMNS if name != "epoch"]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store for the module: creating its tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlruns.db"


def all_trackers(tracking_uri: str, *overrides: str):
    return compose_config("logger=[tensorboard,mlflow,csv]",
                          f"logger.mlflow.tracking_uri={tracking_uri}", *overrides)


def log_run(cfg, run_dir: Path, epochs: list[EpochMetrics], objective: float | None, state: str,
            **trial) -> None:
    trackers = Trackers.from_config(cfg, run_dir, **trial)
    trackers.start(cfg)
    for metrics in epochs:
        trackers.log_epoch(metrics)
    trackers.finish(objective, state)


def tensorboard_events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


def hparams_records(events: EventAccumulator):
    """The HParams plugin's session start (the hyperparameters) and end (the status)."""
    content = events.PluginTagToContent("hparams")
    return (hparams_metadata.parse_session_start_info_plugin_data(
                content[hparams_metadata.SESSION_START_INFO_TAG]),
            hparams_metadata.parse_session_end_info_plugin_data(
                content[hparams_metadata.SESSION_END_INFO_TAG]))


def mlflow_runs(tracking_uri: str, experiment: str) -> list[dict]:
    """The experiment's runs as `mlflow.search_runs` gives them, one dict per run."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment],
                              order_by=["tags.trial ASC"]).to_dict("records")


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)]


def wandb_records(log_file: Path) -> list:
    """The records of a W&B transaction log, as far as it is written (the log is LevelDB's
    format: 32 KiB blocks of checksummed chunks), decoded with W&B's own record protobuf."""
    data = log_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        if (left := 32768 - offset % 32768) < 7:  # a block's tail too short for a chunk header
            offset += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        pending += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            records.append(Record.FromString(pending))
            pending = b""
    return records


def wandb_run(run_dir: Path) -> dict:
    """What an offline W&B run wrote under `run_dir`/wandb: its run record, config, history rows
    (step -> values), final summary and exit code."""
    [log_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    # W&B's service writes the log in its own process and may end writing after `run.finish()`
    # returns (seen under load): read until the run's exit record is there.
    deadline = time.time() + 60
    records = wandb_records(log_file)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) \
            and time.time() < deadline:
        time.sleep(0.2)
        records = wandb_records(log_file)

    def values(items) -> dict:
        return {item.key or ".".join(item.nested_key): json.loads(item.value_json)
                for item in items}

    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    summary: dict = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update(values(record.summary.update))
    return {"run": run, "config": values(run.config.update),
            "history": {r.history.step.num: {k: v for k, v in values(r.history.item).items()
                                             if not k.startswith("_")}
                        for r in records if r.WhichOneof("record_type") == "history"},
            "summary": summary,
            "exit_code": next(r.exit.exit_code for r in records
                              if r.WhichOneof("record_type") == "exit")}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


# --- the trackers alone, on two made-up epochs ------------------------------------------------

def test_a_completed_run_reads_back_from_all_three_trackers(tmp_path, tracking_uri):
    cfg = all_trackers(tracking_uri, "optimizer=sgd", "optimizer.lr=0.05")
    log_run(cfg, tmp_path, EPOCHS, 0.8125, "completed", study_name="course_unit", trial_number=7)

    events = tensorboard_events(tmp_path / "tensorboard")
    for name in MEASURED:
        assert [(s.step, s.value) for s in events.Scalars(name)] == [
            (m.epoch, pytest.approx(getattr(m, name), rel=1e-6)) for m in EPOCHS]
    assert [(s.step, s.value) for s in events.Scalars("objective")] == [(2, 0.8125)]
    start, end = hparams_records(events)
    assert start.hparams["optimizer.lr"].number_value == cfg.optimizer.lr
    assert start.hparams["optimizer._target_"].string_value == "torch.optim.SGD"
    assert start.hparams["model.hidden_sizes"].string_value == str(list(cfg.model.hidden_sizes))
    assert end.status == Status.STATUS_SUCCESS
    assert events.Tensors("state/text_summary")[0].tensor_proto.string_val == [b"completed"]

    [run] = mlflow_runs(tracking_uri, "course_unit")  # the study's experiment
    assert (run["status"], run["tags.state"], run["tags.trial"]) == ("FINISHED", "completed", "7")
    assert run["tags.mlflow.runName"] == "7" and run["tags.run_dir"] == str(tmp_path)
    assert float(run["params.optimizer.lr"]) == cfg.optimizer.lr
    assert run["params.optimizer.momentum"] == str(cfg.optimizer.momentum)
    assert run["metrics.objective"] == 0.8125
    for name in MEASURED:
        assert metric_history(tracking_uri, run["run_id"], name) == [
            (m.epoch, getattr(m, name)) for m in EPOCHS]

    rows = csv_rows(tmp_path / "metrics.csv")
    assert [{k: float(v) for k, v in row.items()} for row in rows] == [vars(m) for m in EPOCHS]


def test_a_trial_reads_back_from_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config("logger=wandb", "optimizer=sgd", "optimizer.lr=0.05")
    log_run(cfg, tmp_path, EPOCHS, 0.8125, "completed", study_name="course_unit", trial_number=7)

    written = wandb_run(tmp_path)
    run = written["run"]
    assert (run.project, run.run_group, run.display_name) == ("mlp_sweep", "course_unit", "7")
    assert written["config"]["optimizer.lr"] == cfg.optimizer.lr
    assert written["config"]["optimizer._target_"] == "torch.optim.SGD"
    assert written["config"]["model.hidden_sizes"] == list(cfg.model.hidden_sizes)
    assert written["history"] == {m.epoch: {name: pytest.approx(getattr(m, name))
                                            for name in MEASURED} for m in EPOCHS}
    assert written["summary"]["objective"] == 0.8125
    assert (written["summary"]["state"], written["exit_code"]) == ("completed", 0)
    assert (written["summary"]["trial"], written["summary"]["run_dir"]) == ("7", str(tmp_path))


@pytest.mark.parametrize("state, exit_code", [("pruned", 0), ("failed", 1)])
def test_a_wandb_run_that_stops_early_says_so_in_its_summary(tmp_path, monkeypatch, state,
                                                             exit_code):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config("logger=wandb", "logger.wandb.group=stopped")
    log_run(cfg, tmp_path, EPOCHS[:1], None, state)
    written = wandb_run(tmp_path)
    assert (written["run"].run_group, written["run"].display_name) == ("stopped", tmp_path.name)
    assert (written["summary"]["state"], written["exit_code"]) == (state, exit_code)
    assert "objective" not in written["summary"] and list(written["history"]) == [1]


@pytest.mark.parametrize("state, mlflow_status, tensorboard_status", [
    ("pruned", "KILLED", Status.STATUS_SUCCESS),
    ("failed", "FAILED", Status.STATUS_FAILURE),
])
def test_a_run_that_stops_early_ends_its_tracker_runs_with_its_state(
        tmp_path, tracking_uri, state, mlflow_status, tensorboard_status):
    cfg = all_trackers(tracking_uri, f"logger.mlflow.experiment_name=stopped_{state}")
    log_run(cfg, tmp_path, EPOCHS[:1], None, state)

    [run] = mlflow_runs(tracking_uri, f"stopped_{state}")
    assert (run["status"], run["tags.state"]) == (mlflow_status, state)
    assert "tags.trial" not in run  # not a trial: named after its folder
    assert run["tags.mlflow.runName"] == tmp_path.name
    logged = MlflowClient(tracking_uri).get_run(run["run_id"]).data.metrics
    assert set(logged) == set(MEASURED)  # no final objective: the run did not complete
    events = tensorboard_events(tmp_path / "tensorboard")
    assert "objective" not in events.Tags()["scalars"]
    assert hparams_records(events)[1].status == tensorboard_status
    assert events.Tensors("state/text_summary")[0].tensor_proto.string_val == [state.encode()]
    assert len(csv_rows(tmp_path / "metrics.csv")) == 1


def test_a_training_run_that_fails_ends_its_tracker_runs_failed(tmp_path, tracking_uri,
                                                                mnist_root):
    # An infinite learning rate makes the loss NaN at the second step: the run fails in epoch 1.
    cfg = compose_config("logger=[mlflow,csv]", f"logger.mlflow.tracking_uri={tracking_uri}",
                         "logger.mlflow.experiment_name=diverged", f"dataset.root={mnist_root}",
                         "optimizer=sgd", "optimizer.lr=inf", *QUICK)
    with pytest.raises(DivergedError, match="training loss is"):
        train(cfg, run_dir=tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "failed"
    [run] = mlflow_runs(tracking_uri, "diverged")
    assert (run["status"], run["tags.state"]) == ("FAILED", "failed")
    assert csv_rows(tmp_path / "metrics.csv") == []  # the header only: no epoch ended


def test_a_run_without_validation_split_leaves_that_column_empty(tmp_path):
    cfg = compose_config("logger=csv")
    log_run(cfg, tmp_path, [EpochMetrics(1, 0.5, 0.9, None, 0.88, 0.1)], 0.88, "completed")
    with (tmp_path / "metrics.csv").open(newline="") as file:
        header, row = list(csv.reader(file))
    assert header == EPOCH_COLUMNS
    assert row[header.index("val_accuracy")] == ""
    assert float(row[header.index("test_accuracy")]) == 0.88


def test_a_refused_mlflow_store_is_one_config_error_and_starts_no_other_tracker(
        tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = compose_config("logger=[tensorboard,mlflow,csv]",
                         f"logger.mlflow.tracking_uri=file:{tmp_path}/mlruns")
    trackers = Trackers.from_config(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="logger.mlflow.tracking_uri='file:.*refused by MLflow"
                                          ".*MLFLOW_ALLOW_FILE_STORE=true$"):
        trackers.start(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns").exists()


def test_wandb_online_without_a_login_is_one_config_error(tmp_path, monkeypatch):
    for variable in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    cfg = compose_config("logger=[wandb,csv]", "logger.wandb.mode=online")
    trackers = Trackers.from_config(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^logger=wandb cannot start a run \(.*\); allowed: "
                                          r"`wandb login`.*logger.wandb.mode=offline"):
        trackers.start(cfg)
    assert not (tmp_path / "run" / "metrics.csv").exists()  # no other tracker left started


def test_bad_tracker_values_are_one_config_error():
    with pytest.raises(ConfigError, match=r"^logger.mlflow.tracking_uri=5 is not allowed; "
                                          "allowed: a non-empty string$"):
        validate(compose_config("logger=mlflow", "logger.mlflow.tracking_uri=5"))
    with pytest.raises(ConfigError, match="writes into the run folder"):
        Trackers.from_config(compose_config("logger=tensorboard"), run_dir=None)
    with pytest.raises(ConfigError, match=r"^logger.wandb.mode='cloud' is not allowed; "
                                          "allowed: online, offline, disabled$"):
        validate(compose_config("logger=wandb", "logger.wandb.mode=cloud"))
    with pytest.raises(ConfigError, match=r"^logger.wandb.project=None is not allowed; "):
        validate(compose_config("logger=wandb", "logger.wandb.project=null"))
    # the shipped settings pass
    validate(compose_config("logger=[tensorboard,mlflow,wandb,csv]"))


def test_the_logger_is_not_a_study_setting():
    # A study resumes whichever trackers the new command logs to.
    from hydra import compose, initialize_config_module

    def settings(*overrides: str) -> dict:  # as a sweep under the presets records them
        with initialize_config_module(config_module="mlp_sweep.conf"):
            cfg = compose("train", overrides=["hparams_search=optuna", *overrides],
                          return_hydra_config=True)
        return study_settings(cfg, [], cfg.hydra.sweeper.execution_keys)

    assert settings("logger=[tensorboard,mlflow]") == settings()


def test_parallel_trials_share_a_new_mlflow_store(tmp_path):
    # Three jobs starting at once on a store that does not exist yet, as joblib or workers do:
    # forked processes, each with its own connection, released together.
    tracking_uri = f"sqlite:///{tmp_path}/mlruns.db"
    cfg = compose_config("logger=mlflow", f"logger.mlflow.tracking_uri={tracking_uri}")
    fork = multiprocessing.get_context("fork")
    together = fork.Barrier(3)

    def job(number: int) -> None:
        together.wait()
        log_run(cfg, tmp_path / str(number), EPOCHS, 0.8, "completed", study_name="parallel",
                trial_number=number)

    jobs = [fork.Process(target=job, args=(number,)) for number in range(3)]
    for process in jobs:
        process.start()
    for process in jobs:
        process.join(timeout=120)
    assert [process.exitcode for process in jobs] == [0, 0, 0]
    runs = mlflow_runs(tracking_uri, "parallel")
    assert [(run["tags.trial"], run["status"]) for run in runs] == [
        ("0", "FINISHED"), ("1", "FINISHED"), ("2", "FINISHED")]


# --- the command line ----------------------------------------------------------------------------

SMALL = ["trainer.progress=false", "dataset.train_limit=3000", "dataset.test_limit=1000"]


@pytest.mark.slow
def test_a_two_trial_search_reads_back_in_every_tracker(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlruns.db"
    result = run_here("--multirun", "hparams_search=optuna_course", f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2",
                      "trainer.epochs=2", "dataset.val_size=1000", *SMALL,
                      "logger=[tensorboard,mlflow,wandb,csv]",
                      f"logger.mlflow.tracking_uri={tracking}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load_study("course_mnist", storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2

    runs = mlflow_runs(tracking, "course_mnist")
    assert [run["tags.trial"] for run in runs] == ["0", "1"]
    for trial, run in zip(trials, runs):
        run_dir = Path(trial.user_attrs["run_dir"])
        epochs = json.loads((run_dir / "metrics.json").read_text())["epochs"]
        assert len(epochs) == 2

        assert (run["status"], run["tags.state"]) == ("FINISHED", "completed")
        assert run["tags.mlflow.runName"] == str(trial.number)
        assert run["tags.run_dir"] == str(run_dir)
        assert run["metrics.objective"] == trial.value
        assert float(run["params.optimizer.lr"]) == trial.params["optimizer.lr"]
        assert json.loads(run["params.model.hidden_sizes"]) == \
            json.loads(trial.params["model.hidden_sizes"])
        # It chooses on validation: the test set is read once, for the epoch kept
        assert [e["epoch"] for e in epochs if e["test_accuracy"] is not None] == \
            [json.loads((run_dir / "metrics.json").read_text())["best_epoch"]]
        for name in MEASURED:
            assert metric_history(tracking, run["run_id"], name) == [
                (e["epoch"], e[name]) for e in epochs if e[name] is not None]

        events = tensorboard_events(run_dir / "tensorboard")
        for name in MEASURED:
            assert [(s.step, s.value) for s in events.Scalars(name)] == [
                (e["epoch"], pytest.approx(e[name], rel=1e-6)) for e in epochs
                if e[name] is not None]
        assert [s.value for s in events.Scalars("objective")] == [pytest.approx(trial.value)]
        start, end = hparams_records(events)
        assert start.hparams["optimizer.lr"].number_value == trial.params["optimizer.lr"]
        assert start.hparams["activation._target_"].string_value.startswith("torch.nn.")
        assert end.status == Status.STATUS_SUCCESS

        written = wandb_run(run_dir)
        assert (written["run"].run_group, written["run"].display_name) == (
            "course_mnist", str(trial.number))
        assert written["config"]["optimizer.lr"] == trial.params["optimizer.lr"]
        # W&B's steps only go forward: the kept epoch's test accuracy is in its summary
        assert written["history"] == {e["epoch"]: {name: e[name] for name in MEASURED
                                                   if name != "test_accuracy"} for e in epochs}
        assert written["summary"]["objective"] == trial.value
        assert written["summary"]["test_accuracy"] == \
            json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
        assert (written["summary"]["state"], written["exit_code"]) == ("completed", 0)

        rows = csv_rows(run_dir / "metrics.csv")
        # Each row is written as its epoch ends, before the test set is read for the kept one
        assert [row.pop("test_accuracy") for row in rows] == ["", ""]
        # metrics.json also says when each epoch ended; the trackers have their own clocks.
        assert [{k: float(v) for k, v in row.items()} for row in rows] == [
            {k: v for k, v in e.items() if k not in ("test_accuracy", "ended_at")}
            for e in epochs]


@pytest.mark.slow
def test_a_single_run_logs_its_epochs_to_csv(tmp_path, mnist_root):
    result = run_here("logger=csv", f"dataset.root={mnist_root}", "trainer.epochs=2", *SMALL,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "outputs").glob("*/*")
    epochs = json.loads((run_dir / "metrics.json").read_text())["epochs"]
    rows = csv_rows(run_dir / "metrics.csv")
    assert [row.pop("val_accuracy") for row in rows] == ["", ""]  # no validation split
    assert [{k: float(v) for k, v in row.items()} for row in rows] == [
        {k: v for k, v in e.items() if k not in ("val_accuracy", "ended_at")} for e in epochs]
    assert not (run_dir / "tensorboard").exists() and not (tmp_path / "mlruns.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("module, library", [("mlflow", "MLflow"), ("wandb", "W&B")])
def test_a_missing_extra_is_one_line_naming_the_install_command(tmp_path, module, library):
    # An environment where `import MODULE` fails, as it does without the extra.
    missing = tmp_path / "without" / module
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    result = subprocess.run(
        [sys.executable, "-m", "mlp_sweep.train", f"logger=[tensorboard,{module},csv]",
         f"dataset.root={tmp_path / 'data'}", "trainer.progress=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(missing.parent)})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"Error: logger={module} needs {library} (No module named '{module}'); "
        f"install it with: pip install -e '.[{module}]'"), output
    assert "Traceback" not in output
    [run_dir] = (tmp_path / "outputs").glob("*/*")
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "metrics.csv").exists()
    assert not (tmp_path / "mlruns.db").exists() and not (run_dir / "wandb").exists()
    assert not (tmp_path / "data").exists()  # stopped before reading any data
