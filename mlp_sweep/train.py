"""Train one MLP from the Hydra config and return the objective (test accuracy by default).

    python -m mlp_sweep.train optimizer=sgd activation=leaky_relu trainer.epochs=2
    python -m mlp_sweep.train --multirun optimizer=adam,sgd,rmsprop activation=relu,sigmoid
    python -m mlp_sweep.train --multirun hparams_search=optuna
"""

import contextlib
import logging
import sys
import time
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlp_sweep.errors import UserError, error_line
from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.artifacts import StoredCheckpoint, fetched_checkpoint
from mlp_sweep.sweeping.trial_link import TrialLink
from mlp_sweep.sweeping.trial_spec import TrialSpec
from mlp_sweep.training import run_dirs
from mlp_sweep.training.checkpoint import Checkpoints, read_checkpoint
from mlp_sweep.training.engine import EpochMetrics, run_ends_after
from mlp_sweep.training.fused_run import GroupMember, train_group
from mlp_sweep.training.run import train_run

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def train(cfg: DictConfig, run_dir: Path | None = None) -> float:
    """Train the model `cfg` describes and return `cfg.objective` at the epoch whose weights
    it keeps (the best validation accuracy; the last epoch without a validation split).

    `run_dir` receives status.json, metrics.json and model.pt; with Hydra it defaults to the
    run's output folder, without Hydra nothing is written. In an mlp_optuna sweep every epoch's
    objective goes to the job's Optuna trial, which may prune it, except the epoch the run ends
    on (its last, or the one early stopping stops after).
    """
    if run_dir is None:
        run_dir = _hydra_output_dir()
    trial = TrialLink.of_this_job()  # set when an mlp_optuna sweep runs this job
    resume = earlier_attempt(trial) if cfg.trainer.get("checkpoint", True) else None
    replayed = resume[1]["epoch"] if resume else 0
    if resume is not None:
        trial.note(trial_attrs.RESUMED_AFTER, replayed)
    return train_run(cfg, run_dir, on_epoch=trial_reporter(cfg, trial, replayed),
                     tracker_identity=trial.identity if trial else (None, None), resume=resume,
                     checkpoint_copy=stored_checkpoint(trial))


def earlier_attempt(trial: TrialLink | None) -> tuple[str, dict] | None:
    """The newest checkpoint an earlier attempt of this trial left (it was interrupted, or its
    worker went silent), with where it was read; None for a first attempt or one that left
    none. An attempt's folder on another host is read through the checkpoint it copied to the
    artifact store."""
    if trial is None:
        return None
    spec = trial.spec
    for folder, artifact_id in zip(spec.resume_from, spec.stored_checkpoints, strict=True):
        state = Checkpoints(Path(folder)).load()
        if state is not None:
            return folder, state
        if artifact_id and spec.artifacts:
            with fetched_checkpoint(spec.artifacts, artifact_id) as path:
                state = read_checkpoint(path) if path else None
            if state is not None:
                return f"{folder} (its checkpoint in {spec.artifacts})", state
    return None


def stored_checkpoint(trial: TrialLink | None) -> StoredCheckpoint | None:
    """Where a trial's checkpoints are copied for its retry on another host: the sweep's
    artifact store, if it has one and the trial's study is in a shared storage."""
    if trial is None or trial.trial is None or not trial.spec.artifacts:
        return None
    return StoredCheckpoint(trial.spec.artifacts, trial.trial, trial.spec.stored_checkpoints)


def train_fused(cfg: DictConfig, spec: TrialSpec) -> dict[int, object]:
    """A job of `hydra.sweeper.fuse`: its own trial and those fused with it, trained together
    (training/fused_run.py); {trial number: objective, or what ended the trial}."""
    members = []
    hydra_cfg = HydraConfig.get()
    with contextlib.ExitStack() as logs:
        for member in spec.group():
            link = TrialLink.of(member)
            member_cfg = cfg
            if member is not spec:
                member_cfg = OmegaConf.load(Path(member.run_dir, hydra_cfg.output_subdir,
                                                 "config.yaml"))
                logs.enter_context(job_log_in(Path(member.run_dir, f"{hydra_cfg.job.name}.log")))
            members.append(GroupMember(member.number, member_cfg, Path(member.run_dir),
                                       trial_reporter(member_cfg, link), link.identity))
        return train_group(members)


@contextlib.contextmanager
def job_log_in(path: Path):
    """While the block runs, this job's log is written to `path` too, as Hydra writes it to the
    job's folder: each fused trial's folder holds the log of the job that trained it."""
    job_logs = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not job_logs:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(job_logs[0].formatter)
    handler.setLevel(job_logs[0].level)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def trial_reporter(cfg: DictConfig, trial: TrialLink | None, replayed: int = 0):
    """The epoch callback that reports a run's objective to its trial (None: nothing to do).
    The first `replayed` epochs are an earlier attempt's, reported again: the pace (seconds per
    epoch, for on_timeout=prune_early) is this job's own, from the end of the last of them."""
    patience = cfg.trainer.get("early_stopping") or 0
    history: list[EpochMetrics] = []
    began: list[float] = []  # when this job's first epoch started: the pace leaves out start-up

    def report(metrics: EpochMetrics) -> None:
        history.append(metrics)
        if not trial:
            return
        value, epoch = getattr(metrics, cfg.objective), metrics.epoch
        last = run_ends_after(history, cfg.trainer.epochs, patience)
        if epoch <= replayed:
            began[:] = [time.monotonic()]
            trial.report(value, epoch, last=last)
            return
        if not began:
            began.append(time.monotonic() - metrics.epoch_time_s)
        seconds_per_epoch = (time.monotonic() - began[0]) / (epoch - replayed)
        trial.report(value, epoch, last=last,
                     seconds_to_finish=seconds_per_epoch * (cfg.trainer.epochs - epoch))

    return report


def _hydra_output_dir() -> Path | None:
    """The folder Hydra made for this job; None without one: outside Hydra, or in a config
    composed from Python (`compose(..., return_hydra_config=True)`), where it is left unset."""
    if not HydraConfig.initialized():
        return None
    output_dir = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
    return Path(output_dir) if output_dir else None


run_dirs.register()


@hydra.main(config_path="pkg://mlp_sweep.conf", config_name="train")
def main(cfg: DictConfig) -> float | optuna.TrialPruned | dict[int, object]:
    try:
        spec = TrialSpec.of_this_job()
        if spec is not None and spec.fused:
            return train_fused(cfg, spec)
        return train(cfg)
    except optuna.TrialPruned as pruned:
        return pruned  # an outcome for the sweeper to record, not an error to print
    except UserError as error:
        log.error(error_line(error))
        # A single run or a grid stops here with that one line (the basic sweeper would only
        # re-raise it with a traceback); a sweeper that records failed trials gets the exception.
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.RUN or hydra_cfg.sweeper._target_ == BASIC_SWEEPER:
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
