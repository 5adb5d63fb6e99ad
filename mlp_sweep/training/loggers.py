"""Experiment trackers: a run's hyperparameters, per-epoch metrics and final result, sent to
TensorBoard, MLflow, Weights & Biases or a CSV file as `cfg.logger` chooses (conf/logger/;
several at once).

Each tracker's library is imported only when the config chooses it, so the extras stay optional;
a missing one stops the run with the command that installs it, before any tracker writes a file.
"""

import contextlib
import csv
import fcntl
import importlib
import io
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlp_sweep.errors import ConfigError, MissingExtraError, first_line, install_command
from mlp_sweep.training.engine import EpochMetrics
from mlp_sweep.values import flatten, resolved_without_hydra

log = logging.getLogger(__name__)

EPOCH_COLUMNS = [field.name for field in fields(EpochMetrics)]
METRICS = [*EPOCH_COLUMNS[1:], "objective"]  # what a run measures: per epoch, then at its end
STATES = ("completed", "pruned", "failed")

# logger option -> (module to import, library name, pip extra)
EXTRAS = {"tensorboard": ("torch.utils.tensorboard", "TensorBoard", "tensorboard"),
          "mlflow": ("mlflow", "MLflow", "mlflow"),
          "wandb": ("wandb", "W&B", "wandb")}


class Trackers:
    """The trackers a run logs to; each call goes to every one of them."""

    def __init__(self, trackers: list["Tracker"]) -> None:
        self.trackers = trackers
        self.last_epoch = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: Path | None, study_name: str | None = None,
                    trial_number: int | None = None) -> "Trackers":
        """The trackers `cfg.logger` names, not started yet (nothing is written).

        `study_name` and `trial_number` are set when an Optuna sweep runs this job: the MLflow run
        goes to the study's experiment, the W&B run to the study's group, each named by the trial
        number. Raises MissingExtraError when a tracker's library is not installed."""
        logger = cfg.get("logger")
        chosen = OmegaConf.to_container(logger, resolve=True) if logger else {}
        for name in chosen:
            _import_extra(name)  # all of them first: a missing one leaves nothing half-made
        if any(name in chosen for name in ("tensorboard", "csv")) and run_dir is None:
            raise ConfigError(f"logger={','.join(chosen)} writes into the run folder, and this "
                              "run has none; allowed: a run through the command line, or "
                              "train(cfg, run_dir=...)")
        trackers: list[Tracker] = []
        if trial_number is not None:
            run_name = str(trial_number)
        else:
            run_name = run_dir.name if run_dir else None  # None: the tracker makes up a name
        # What the run is, as text tags (MLflow's tags, W&B's summary); a missing one left out
        tags = {key: str(value) for key, value in
                (("trial", trial_number), ("run_dir", run_dir)) if value is not None}
        if "mlflow" in chosen:  # first: its store is the likeliest to refuse a start
            settings = chosen["mlflow"]
            trackers.append(MLflowTracker(
                settings["tracking_uri"], study_name or settings["experiment_name"], run_name,
                tags))
        if "wandb" in chosen:
            settings = chosen["wandb"]
            files_dir = Path(settings["dir"]) if settings["dir"] else run_dir
            trackers.append(WandbTracker(settings, files_dir, study_name or settings["group"],
                                         run_name, tags))
        if "tensorboard" in chosen:
            trackers.append(TensorBoardTracker(run_dir / chosen["tensorboard"]["save_dir"]))
        if "csv" in chosen:
            trackers.append(CsvTracker(run_dir / chosen["csv"]["file"]))
        return cls(trackers)

    def start(self, cfg: DictConfig) -> None:
        """Open each tracker's run and log the resolved config as its hyperparameters."""
        hyperparameters = flatten(resolved_without_hydra(cfg))  # dotted keys: optimizer.lr
        started: list[Tracker] = []
        try:
            for tracker in self.trackers:
                tracker.start(hyperparameters)
                started.append(tracker)
        except BaseException:
            for tracker in started:  # no run left open when a later tracker cannot start
                _finish_quietly(tracker, None, "failed", 0)
            raise
        for tracker in self.trackers:
            log.info(f"Logging to {tracker.where} <logger.{tracker.name}>")

    def log_epoch(self, metrics: EpochMetrics) -> None:
        self.last_epoch = metrics.epoch
        for tracker in self.trackers:
            tracker.log_epoch(metrics)

    def log_kept_test(self, epoch: int, accuracy: float) -> None:
        """The test accuracy of the epoch the run keeps, read once when it ended (a run that
        chooses on validation: engine.fit's test_each_epoch). A tracker that cannot take it
        warns: the run's own record has it, and the run ends as it trained."""
        for tracker in self.trackers:
            try:
                tracker.log_kept_test(epoch, accuracy)
            except Exception as error:
                log.warning(f"{tracker.name}: could not log the test accuracy: "
                            f"{type(error).__name__}: {error} <logger.{tracker.name}>")

    def finish(self, objective: float | None, state: str) -> None:
        """End each tracker's run: `state` is completed, pruned or failed; `objective` is the
        value the run returns (None when it did not complete)."""
        assert state in STATES, state
        for tracker in self.trackers:
            _finish_quietly(tracker, objective, state, self.last_epoch)


class Tracker:
    """One tracker's run: started once, told each epoch, finished once."""

    name = ""
    where = ""

    def start(self, hyperparameters: dict[str, Any]) -> None:
        raise NotImplementedError

    def log_epoch(self, metrics: EpochMetrics) -> None:
        raise NotImplementedError

    def log_kept_test(self, epoch: int, accuracy: float) -> None:
        pass  # a tracker with nowhere to put a metric after its epochs (CSV's rows are written)

    def finish(self, objective: float | None, state: str, last_epoch: int) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files in one folder: HParams-plugin records plus a scalar per metric and epoch."""

    name = "tensorboard"
    # A pruned run ended the way its sweep meant it to; its `state` text says which it was.
    STATUS = {"completed": "STATUS_SUCCESS", "pruned": "STATUS_SUCCESS",
              "failed": "STATUS_FAILURE"}

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.where = str(log_dir)

    def start(self, hyperparameters: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        # Written into this writer (SummaryWriter.add_hparams would open a timestamped sub-run),
        # so that the HParams table reads this run's own scalars as its metrics.
        values = {key: value if isinstance(value, (bool, int, float, str)) or value is None
                  else str(value) for key, value in hyperparameters.items()}
        experiment, session_start, _ = hparams(values, dict.fromkeys(METRICS))
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)
        self.writer.flush()

    def log_epoch(self, metrics: EpochMetrics) -> None:
        for tag, value in epoch_values(metrics).items():
            self.writer.add_scalar(tag, value, metrics.epoch)
        self.writer.flush()  # a killed run keeps its curve (the writer flushes every 2 min)

    def log_kept_test(self, epoch: int, accuracy: float) -> None:
        self.writer.add_scalar("test_accuracy", accuracy, epoch)
        self.writer.flush()

    def finish(self, objective: float | None, state: str, last_epoch: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import metadata
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

        if objective is not None:
            self.writer.add_scalar("objective", objective, last_epoch)
        self.writer.add_text("state", state, last_epoch)
        end = HParamsPluginData(session_end_info=SessionEndInfo(
            status=Status.Value(self.STATUS[state]), end_time_secs=time.time()))
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(
            tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(end))]))
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run: params, per-epoch metrics (step = epoch), the objective, state tags."""

    name = "mlflow"
    STATUS = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str | None,
                 tags: dict[str, str]) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = tags
        self.where = f"{tracking_uri}, experiment {experiment_name!r}"

    def start(self, hyperparameters: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        with _store_setup_lock(self.tracking_uri):
            self.client, experiment_id = self._client_and_experiment()
            run = self.client.create_run(experiment_id, run_name=self.run_name,
                                         tags={**self.tags, "state": "running"})
        self.run_id = run.info.run_id
        params = [Param(key, _shortened(str(value), MAX_PARAM_VAL_LENGTH))
                  for key, value in hyperparameters.items()]
        for first in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id,
                                  params=params[first:first + MAX_PARAMS_TAGS_PER_BATCH])

    def _client_and_experiment(self):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            client = MlflowClient(self.tracking_uri)
        except MlflowException as error:  # e.g. MLflow 3 refusing a ./mlruns file store
            raise ConfigError(
                f"logger.mlflow.tracking_uri={self.tracking_uri!r} is refused by MLflow "
                f"({_first_sentence(str(error))}); allowed: sqlite:///PATH, a tracking "
                "server's http(s):// URL, or a file: store with MLFLOW_ALLOW_FILE_STORE=true"
            ) from None
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return client, experiment.experiment_id
        try:
            return client, client.create_experiment(self.experiment_name)
        except MlflowException:  # another job created it a moment ago (parallel trials)
            experiment = client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                raise
            return client, experiment.experiment_id

    def log_epoch(self, metrics: EpochMetrics) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        values = epoch_values(metrics)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now_ms, metrics.epoch)
                                                     for key, value in values.items()])

    def log_kept_test(self, epoch: int, accuracy: float) -> None:
        self.client.log_metric(self.run_id, "test_accuracy", accuracy, step=epoch)

    def finish(self, objective: float | None, state: str, last_epoch: int) -> None:
        if objective is not None:
            self.client.log_metric(self.run_id, "objective", objective, step=last_epoch)
        self.client.set_tag(self.run_id, "state", state)
        self.client.set_terminated(self.run_id, status=self.STATUS[state])


class WandbTracker(Tracker):
    """One W&B run: the config, per-epoch metrics (step = epoch), the objective and state in its
    summary; a sweep's trials in the study's group, each named by its trial number."""

    name = "wandb"

    def __init__(self, settings: dict[str, Any], files_dir: Path | None, group: str | None,
                 run_name: str | None, tags: dict[str, str]) -> None:
        self.settings = settings
        self.files_dir = files_dir
        self.group = group
        self.run_name = run_name
        self.tags = tags
        self.where = f"W&B project {settings['project']!r}"

    def start(self, hyperparameters: dict[str, Any]) -> None:
        import wandb

        if self.files_dir is not None:
            self.files_dir.mkdir(parents=True, exist_ok=True)
        # create_new: fused trials train in one process, each with its own run open at once.
        # console="off": the run's log and progress line stay this program's, not captured twice.
        try:
            self.run = wandb.init(
                project=self.settings["project"], entity=self.settings["entity"],
                mode=self.settings["mode"], group=self.group, name=self.run_name,
                dir=str(self.files_dir) if self.files_dir else None, config=hyperparameters,
                reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        except (wandb.errors.UsageError, wandb.errors.CommError) as error:  # no login, no network
            raise ConfigError(f"logger=wandb cannot start a run ({first_line(error)}); allowed: "
                              "`wandb login` (or WANDB_API_KEY), or logger.wandb.mode=offline "
                              "and `wandb sync` later") from None
        self.run.summary.update({"state": "running", **self.tags})
        folder = Path(self.run.dir).absolute().parent  # the run's own, beside files/
        if self.run.settings.mode == "online":
            self.where = f"{self.run.url} (local files: {folder})"
        else:  # asking an offline run for its url only warns
            self.where = f"{folder}, offline: `wandb sync {folder}` uploads it"

    def log_epoch(self, metrics: EpochMetrics) -> None:
        self.run.log(epoch_values(metrics), step=metrics.epoch)

    def log_kept_test(self, epoch: int, accuracy: float) -> None:
        self.run.summary["test_accuracy"] = accuracy  # W&B's steps only go forward

    def finish(self, objective: float | None, state: str, last_epoch: int) -> None:
        if objective is not None:
            self.run.summary["objective"] = objective
        self.run.summary["state"] = state
        self.run.finish(exit_code=1 if state == "failed" else 0)


class CsvTracker(Tracker):
    """metrics.csv: a header row, then one row per epoch, each written whole and flushed."""

    name = "csv"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def start(self, hyperparameters: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w", newline="")
        self._write_row(EPOCH_COLUMNS)

    def log_epoch(self, metrics: EpochMetrics) -> None:
        self._write_row(["" if value is None else value for value in vars(metrics).values()])

    def finish(self, objective: float | None, state: str, last_epoch: int) -> None:
        self.file.close()

    def _write_row(self, values: Iterable[Any]) -> None:
        line = io.StringIO()
        csv.writer(line).writerow(values)
        self.file.write(line.getvalue())  # one write per row: a crash never leaves half a row
        self.file.flush()


def epoch_values(metrics: EpochMetrics) -> dict[str, float]:
    """An epoch's metrics by name, without the epoch itself and without a missing val_accuracy."""
    return {key: value for key, value in vars(metrics).items()
            if key != "epoch" and value is not None}


def _import_extra(name: str) -> None:
    if name not in EXTRAS:
        return
    module, library, extra = EXTRAS[name]
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(f"logger={name} needs {library} "
                                f"({first_line(error, with_type=False)}); install it with: "
                                f"{install_command(extra)}") from None


@contextlib.contextmanager
def _store_setup_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise starting runs on one local SQLite store: MLflow creates its tables on the
    store's first use, and two trials doing so at once (joblib, workers) fail. Other stores
    (servers, databases) need no lock."""
    database = None
    if tracking_uri.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url
        database = make_url(tracking_uri).database
    if not database or database == ":memory:":
        yield
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    # flock on the database file itself: SQLite's own locks are fcntl locks, which flock does
    # not touch, and an empty file is a new database to SQLite.
    with open(database, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


def _finish_quietly(tracker: Tracker, objective: float | None, state: str,
                    last_epoch: int) -> None:
    # The run's own record (status.json, metrics.json) is already written; a tracker that cannot
    # end its run must not turn a completed run into a failed one, nor hide the original error.
    try:
        tracker.finish(objective, state, last_epoch)
    except Exception as error:
        log.warning(f"{tracker.name}: could not end its run as {state}: "
                    f"{type(error).__name__}: {error} <logger.{tracker.name}>")


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].strip().rstrip(".")
