"""A sweep job's side of its trials: what `mlp_sweep.train` runs when an mlp_optuna sweep
launched it.

The job reads its trial(s) from the description the sweeper wrote (sweeping/trial_spec.py): one
trial, or with `hydra.sweeper.fuse` the trials fused with it, each with its own folder and
config. Each becomes a run (training/run.py) whose epochs are reported to its trial (report,
prune, budget), that goes on from the checkpoint an earlier attempt of the trial left (a retry),
and whose newest checkpoint is kept for such a retry (sweeping/retry_files.py: copied to the
sweep's artifact store, if it has one).
"""

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.trial_link import TrialLink
from mlp_sweep.sweeping.trial_spec import TrialSpec
from mlp_sweep.training.checkpoint import Checkpoints
from mlp_sweep.training.engine import EpochMetrics, run_ends_after
from mlp_sweep.training.devices import resolve_device
from mlp_sweep.training.resume_check import check_resumable
from mlp_sweep.training.run import Outcome, Run, train_runs

log = logging.getLogger(__name__)


def train_trials(cfg: DictConfig, spec: TrialSpec, run_dir: Path | None) -> dict[int, Outcome]:
    """Train the job's trial and those fused with it (in `run_dir`, its folder, and theirs);
    {trial number: its objective, or what ended it}."""
    runs = []
    with contextlib.ExitStack() as logs:
        for member in spec.group():
            member_cfg, member_dir = cfg, run_dir
            if member is not spec:
                hydra_cfg = HydraConfig.get()
                member_dir = Path(member.run_dir)
                member_cfg = OmegaConf.load(member_dir / hydra_cfg.output_subdir / "config.yaml")
                logs.enter_context(job_log_in(member_dir / f"{hydra_cfg.job.name}.log"))
            runs.append(trial_run(member_cfg, member_dir, TrialLink.of(member)))
        return train_runs(runs)


def train_trial(cfg: DictConfig, spec: TrialSpec, run_dir: Path | None) -> float:
    """Train the job's one trial; its objective, or raise what ended it."""
    outcome = train_runs([trial_run(cfg, run_dir, TrialLink.of(spec))])[spec.number]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def trial_run(cfg: DictConfig, run_dir: Path | None, trial: TrialLink) -> Run:
    """The run of one trial: reported to it, going on from an earlier attempt's checkpoint."""
    resume = earlier_attempt(trial) if cfg.trainer.get("checkpoint", True) else None
    if resume is not None:
        try:
            check_resumable(resume[1], cfg, resume[0],
                            resolve_device(cfg.trainer.device).type)
        except UserError as why:  # a study resumed with another precision, say: start over
            log.warning(f"trial {trial.spec.number} starts over: {why}")
            resume = None
    replayed = resume[1]["epoch"] if resume else 0
    if resume is not None:
        trial.note(trial_attrs.RESUMED_AFTER, replayed)
    return Run(cfg, run_dir, on_epoch=trial_reporter(cfg, trial, replayed),
               tracker_identity=trial.identity, resume=resume,
               checkpoint_copy=CheckpointForRetry(trial), name=trial.spec.number)


def earlier_attempt(trial: TrialLink) -> tuple[str, dict] | None:
    """The newest checkpoint an earlier attempt of this trial left (it was interrupted, or its
    worker went silent), with where it was read; None for a first attempt or one that left
    none. An attempt's folder on another host is read through the checkpoint it kept in the
    artifact store."""
    for attempt in trial.earlier_attempts():
        state = Checkpoints(attempt.run_dir).load()
        if state is not None:
            return str(attempt.run_dir), state
        with attempt.stored_files() as folder:
            state = Checkpoints(folder).load() if folder else None
        if state is not None:
            return f"{attempt.run_dir} (its checkpoint in {attempt.store})", state
    return None


class CheckpointForRetry:
    """Checkpoints' copy elsewhere (training/checkpoint.py): each newest checkpoint is kept for
    a retry of the trial (TrialLink.keep_for_retry), which may run on another host, until the
    run ends."""

    def __init__(self, trial: TrialLink) -> None:
        self.trial = trial

    def saved(self, path: Path, epoch: int) -> None:  # noqa: ARG002 - the protocol's signature
        self.trial.keep_for_retry(path)

    def removed(self) -> None:
        self.trial.drop_kept_for_retry()


def trial_reporter(cfg: DictConfig, trial: TrialLink, replayed: int = 0
                   ) -> Callable[[EpochMetrics], None]:
    """The epoch callback that reports a run's objective to its trial. The first `replayed`
    epochs are an earlier attempt's, reported again: the pace (seconds per epoch, for
    on_timeout=prune_early) is this job's own, from the end of the last of them."""
    patience = cfg.trainer.get("early_stopping") or 0
    history: list[EpochMetrics] = []
    began: list[float] = []  # when this job's first epoch started: the pace leaves out start-up

    def report(metrics: EpochMetrics) -> None:
        history.append(metrics)
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


@contextlib.contextmanager
def job_log_in(path: Path) -> Iterator[None]:
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
