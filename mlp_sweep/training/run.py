"""Training runs from composed configs: data, model, the loop, each run's files and trackers.

`train_run(cfg, run_dir, on_epoch=...)` is one run as an ordinary function. `train_runs(runs)`
trains several in one process (a job of `hydra.sweeper.fuse`): those that may share a stack
(`stack_key`) train as one computation, the others in turn, and each is still a whole run, as
`train_run` makes it: its own folder, trackers, callback, checkpoints and end. The Hydra command
(`mlp_sweep.train`) wires an Optuna trial to `on_epoch`; a benchmark or another tuner (Ray Tune,
SMAC) passes its own, so every caller trains with the same code.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlp_sweep.errors import UserError
from mlp_sweep.training.build import Training, build_training
from mlp_sweep.training.checkpoint import CheckpointCopy, Checkpoints, checkpoint_of
from mlp_sweep.training.config import validate
from mlp_sweep.training.data import Split, Splits, load_splits
from mlp_sweep.training.devices import cpu_threads, resolve_device
from mlp_sweep.training.engine import EpochMetrics, Member, RandomStreams, best_epoch, fit
from mlp_sweep.training.loggers import Trackers
from mlp_sweep.training.model import parameter_count
from mlp_sweep.training.precision import precision_name, training_dtype
from mlp_sweep.training.resume_check import RUN_ONLY_KEYS, check_resumable, resumable_config
from mlp_sweep.training.run_record import STATUS_FILE, RunRecord
from mlp_sweep.training.stacked import StackedMLP, shape_of, unstackable_reason

log = logging.getLogger(__name__)

# Gets each epoch's metrics; may raise (optuna.TrialPruned, say) to stop the run there.
EpochCallback = Callable[[EpochMetrics], None]
# A run's outcome: its objective, or what ended it (optuna.TrialPruned, an error).
Outcome = float | BaseException
# Keys of `trainer` that change how a run is carried out, not what it trains: stacks may differ
# in them (the resolved device is a key of its own).
RUN_ONLY_TRAINER_KEYS = tuple(key.removeprefix("trainer.") for key in RUN_ONLY_KEYS
                              if key.startswith("trainer."))


@dataclass
class Run:
    """One run to train: its config, folder (None: nothing written), epoch callback, tracker
    identity (study, trial number), an earlier attempt's (folder, checkpoint) to go on from,
    and where its checkpoints are copied (job.py: kept for a retry of its trial)."""

    cfg: DictConfig
    run_dir: Path | None = None
    on_epoch: EpochCallback | None = None
    tracker_identity: tuple[str | None, int | None] = (None, None)
    resume: tuple[str, dict] | None = None
    checkpoint_copy: CheckpointCopy | None = None
    name: int | str = 0  # the key of its outcome (a trial number)


def train_run(cfg: DictConfig, run_dir: Path | None = None,
              on_epoch: EpochCallback | None = None,
              tracker_identity: tuple[str | None, int | None] = (None, None),
              resume: tuple[str, dict] | None = None,
              checkpoint_copy: CheckpointCopy | None = None) -> float:
    """Train the model `cfg` describes and return `cfg.objective` at the epoch whose weights
    it keeps (the best validation accuracy; the last epoch without a validation split); raise
    what ended it otherwise.

    `run_dir`, when given, receives status.json, metrics.json (after every epoch, each epoch
    with the time it ended), model.pt, and checkpoint.pt while it runs (trainer.checkpoint).
    `resume`, (folder, its checkpoint), continues an earlier run as `trainer.resume` does.
    """
    run = Run(cfg, run_dir, on_epoch, tracker_identity, resume, checkpoint_copy)
    outcome = train_runs([run])[run.name]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@dataclass
class _Prepared:
    """A run built and ready to train: what `fit` gets, and what records its end."""

    run: Run
    record: RunRecord | None
    trackers: Trackers
    training: Training
    splits: Splits
    device: torch.device
    resume: tuple[str, dict] | None
    member: Member = field(init=False)
    ended_at: list[float] = field(default_factory=list)  # each epoch's end, as Unix time
    trained_with: list[int | str] = field(default_factory=list)  # its stack-mates, if fused
    dtype: torch.dtype = torch.float32  # its stack's training precision

    @property
    def replayed(self) -> int:
        """The epochs an earlier run trained, that this one goes on after."""
        return self.resume[1]["epoch"] if self.resume else 0


def train_runs(runs: list[Run]) -> dict[int | str, Outcome]:
    """Train every run; each one's objective, or what ended it. An interruption (Ctrl-C, a
    kill) ends them all, recorded, and is raised."""
    outcomes: dict[int | str, Outcome] = {}
    stacks: dict[tuple, list[_Prepared]] = {}
    data: dict[str, Splits] = {}
    for run in runs:
        try:
            prepared = _prepare(run, data)
        except Exception as error:
            outcomes[run.name] = _ended(run, None, None, error)
            continue
        key, reason = stack_key(prepared)
        if reason and len(runs) > 1:
            log.info(f"trial {run.name} trains alone: {reason}")
        stacks.setdefault(key, []).append(prepared)
    if len(stacks) > 1:
        _say_why_apart(list(stacks))
    for stack in stacks.values():
        outcomes.update(_train_stack(stack))
    return outcomes


def stack_key(prepared: _Prepared) -> tuple[tuple, str | None]:
    """What runs must share to train as one stack, as (name, value) pairs; and why the run must
    train alone, if it must. The one place that decides it: `hydra.sweeper.fuse_by` only steers
    the sampler towards trials that share it. Each member keeps its own optimizer, schedule,
    loss, dropout and initialisation; the data, the batches and their augmentation are shared."""
    cfg, model = prepared.run.cfg, prepared.training.model
    reason = unstackable_reason(model)
    if reason:
        return (("alone", prepared.run.name),), reason
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
               if k not in RUN_ONLY_TRAINER_KEYS}
    return ((("dataset", OmegaConf.to_yaml(cfg.dataset)), ("trainer", repr(sorted(trainer.items()))),
             ("augment", OmegaConf.to_yaml(cfg.augment)), ("device", str(prepared.device)),
             ("layers", shape_of(model)), ("resumed after epoch", prepared.replayed),
             ("resumed in", prepared.resume[1]["dtype"] if prepared.resume else None)), None)


def _say_why_apart(keys: list[tuple]) -> None:
    """One line for a job whose runs could not all share a stack: how they split, and on what."""
    parts = [dict(key) for key in keys if key[0][0] != "alone"]
    differ = sorted({name for part in parts for name, value in part.items()
                     if any(other.get(name) != value for other in parts)})
    log.info(f"these runs train as {len(keys)} stacks, one after the other: they differ in "
             f"{', '.join(differ) or 'activations with weights or random slopes'} (members of a "
             "stack share them; hydra.sweeper.fuse_by steers the sampler towards them)")


def _prepare(run: Run, data: dict[str, Splits]) -> _Prepared:
    """Build the run as its config describes it, its data loaded once per process."""
    cfg = run.cfg
    record = RunRecord(run.run_dir) if run.run_dir is not None else None
    if record:
        record.running()
    device = set_up(cfg)
    # Before the data is read: a tracker whose extra is missing stops the run here, unwritten.
    trackers = Trackers.from_config(cfg, run.run_dir, *run.tracker_identity)
    resume = run.resume
    if resume is None and cfg.trainer.get("resume"):  # before the data is read
        resume = (cfg.trainer.resume, checkpoint_of(cfg.trainer.resume))
    if resume is not None:
        check_resumable(resume[1], cfg, resume[0], device.type)
    key = OmegaConf.to_yaml(cfg.dataset) + str(device)
    if key not in data:
        data[key] = on_device(load_splits(cfg.dataset), device)
    splits = data[key]
    training = build_training(cfg, len(splits.train), device)
    if resume is not None:
        log.info(f"resumed: going on from {resume[0]} after its epoch {resume[1]['epoch']}")
    prepared = _Prepared(run, record, trackers, training, splits, device, resume)
    about = {"config": resumable_config(cfg), "ended_at": prepared.ended_at,
             "device": device.type}
    checkpoints = Checkpoints(run.run_dir, run.checkpoint_copy, about) \
        if record and cfg.trainer.get("checkpoint", True) else None
    prepared.member = Member(
        training.model, training.optimizer, RandomStreams.from_seed(cfg.trainer.seed, device),
        on_epoch=_after_epoch(prepared), loss_fn=training.loss_fn, schedule=training.schedule,
        checkpoints=checkpoints, resume=resume[1] if resume else None)
    return prepared


def _train_stack(stack: list[_Prepared]) -> dict[int | str, Outcome]:
    """Train runs that share a stack key as one computation (a stack of one: the run alone)."""
    first = stack[0]
    cfg = first.run.cfg
    dtype = _dtype(stack)
    names = [p.run.name for p in stack]
    if len(stack) > 1:
        log.info(f"trials {', '.join(map(str, names))} train as one stack of {len(stack)}: "
                 f"{first.training.model}")
    else:  # in a sweep the console shows the search, not each trial's model: its log file does
        (_log_to_files_only if in_sweep() else log.info)(f"Model: {first.training.model}")
    log.info(f"{parameter_count(first.training.model):,} parameters{' each' if len(stack) > 1 else ''}; "
             + ("" if len(stack) > 1 else _built(first))
             + f"{len(first.splits.train)} training samples; device {first.device} with "
             f"{torch.get_num_threads()} threads <trainer.device={cfg.trainer.device}>; "
             f"training in {precision_name(dtype)}")
    for prepared in stack:
        prepared.trained_with = [n for n in names if n != prepared.run.name]
        prepared.dtype = dtype
    # A run that chooses on validation reads the test set once, for its kept weights (engine.fit)
    test_each_epoch = any(p.run.cfg.objective == "test_accuracy" for p in stack)
    started: list[_Prepared] = []
    try:
        for prepared in stack:
            prepared.trackers.start(prepared.run.cfg)
            started.append(prepared)
        fit([p.member for p in stack], first.splits, cfg.trainer.epochs, cfg.trainer.batch_size,
            progress=show_bars(cfg.trainer.get("progress", "auto")),
            augment=first.training.augment, patience=cfg.trainer.get("early_stopping") or 0,
            dtype=dtype, test_each_epoch=test_each_epoch)
    except BaseException as error:  # the loop failed or was interrupted: every unfinished run
        _record_kept_test(stack, started)
        outcomes = {p.run.name: _completed(p) for p in stack if p.member.finished}
        outcomes |= {p.run.name: _ended(p.run, p.record, p.trackers if p in started else None,
                                        p.member.ended or error, p.member.checkpoints)
                     for p in stack if not p.member.finished}
        if not isinstance(error, Exception):
            raise
        return outcomes
    _record_kept_test(stack, stack)
    return {p.run.name: _completed(p) if p.member.finished else
            _ended(p.run, p.record, p.trackers, p.member.ended, p.member.checkpoints)
            for p in stack}


def _record_kept_test(stack: list[_Prepared], tracked: list[_Prepared]) -> None:
    """metrics.json again and the trackers (those `tracked` started) for each run whose kept
    epoch's test accuracy was read when it ended."""
    for prepared in stack:
        if not prepared.member.kept_test_read:
            continue
        history = prepared.member.history
        if prepared.record:
            prepared.record.metrics(metrics_summary(prepared, history))
        if prepared in tracked:
            kept = best_epoch(history)
            prepared.trackers.log_kept_test(kept.epoch, kept.test_accuracy)


def _built(prepared: _Prepared) -> str:
    training = prepared.training
    return (f"optimizer {training.optimizer.__class__.__name__}; schedule "
            f"{type(training.schedule.scheduler).__name__ if training.schedule else 'none'}; "
            f"augment {type(training.augment).__name__ if training.augment else 'none'}; ")


def _dtype(stack: list[_Prepared]) -> torch.dtype:
    """The stack's precision: a resumed run's own; else `trainer.precision`, where auto times
    the stack, not one member (K course-sized layers side by side are a wide one, where bf16
    pays: precision.py)."""
    first = stack[0]
    if first.resume is not None:
        return getattr(torch, first.resume[1]["dtype"])
    cfg = first.run.cfg
    precision = cfg.trainer.get("precision", "fp32")
    probe = first.training.model if len(stack) == 1 or precision != "auto" else StackedMLP(
        [p.training.model for p in stack], [torch.Generator(first.device) for _ in stack])
    return training_dtype(precision, first.device, probe, cfg.trainer.batch_size,
                          tuple(cfg.dataset.input_shape))


def _after_epoch(prepared: _Prepared) -> Callable[[list[EpochMetrics]], None]:
    """The one set of per-epoch steps of every run, alone or stacked: the log line,
    metrics.json, the trackers, then the run's own callback (report, prune, budget). An
    earlier run's epochs, told again on a resume, keep their end times and are not sent to the
    trackers a second time (the earlier run's trackers have them)."""
    run, cfg = prepared.run, prepared.run.cfg

    def after_epoch(history: list[EpochMetrics]) -> None:
        metrics = history[-1]
        replayed = metrics.epoch <= prepared.replayed
        if replayed:
            earlier = prepared.resume[1].get("ended_at") or []  # None: not recorded
            prepared.ended_at[:] = [*earlier, *[None] * metrics.epoch][:metrics.epoch]
        else:
            prepared.ended_at.append(time.time())
            who = f"trial {run.name} " if prepared.trained_with else ""
            val = "" if metrics.val_accuracy is None else f"  val_acc {metrics.val_accuracy:.2%}"
            test = "" if metrics.test_accuracy is None else \
                f"  test_acc {metrics.test_accuracy:.2%}"
            log.info(f"{who}epoch {metrics.epoch}/{cfg.trainer.epochs}  train_loss "
                     f"{metrics.train_loss:.4f}  train_acc {metrics.train_accuracy:.2%}{val}"
                     f"{test}  {metrics.epoch_time_s:.2f} s")
        if prepared.record:
            prepared.record.metrics(metrics_summary(prepared, history))
        if not replayed:
            prepared.trackers.log_epoch(metrics)
        if run.on_epoch:
            run.on_epoch(metrics)

    return after_epoch


def _completed(prepared: _Prepared) -> float:
    """Record a run that trained to its end; its objective."""
    cfg, history = prepared.run.cfg, prepared.member.history
    if prepared.record:
        prepared.record.completed(prepared.training.model)
    kept = best_epoch(history)
    objective = float(getattr(kept, cfg.objective))
    prepared.trackers.finish(objective, "completed")
    if prepared.member.checkpoints:
        prepared.member.checkpoints.remove()
    who = f"trial {prepared.run.name}: " if prepared.trained_with else ""
    if len(history) < cfg.trainer.epochs:
        log.info(f"{who}early stop after epoch {len(history)}: no better validation accuracy "
                 f"for {cfg.trainer.early_stopping} epochs <trainer.early_stopping>")
    if kept is not history[-1]:
        log.info(f"{who}kept the weights of epoch {kept.epoch}, the best validation accuracy "
                 f"({kept.val_accuracy:.2%})")
    log.info(f"{who}test accuracy: {kept.test_accuracy:.2%}")
    return objective


def _ended(run: Run, record: RunRecord | None, trackers: Trackers | None,
           error: BaseException, checkpoints: Checkpoints | None = None) -> BaseException:
    """Record a run that did not complete (pruned, failed, interrupted); what ended it."""
    if record is None and run.run_dir is not None:
        record = RunRecord(run.run_dir)
    if record:
        record.ended(end_state(error), error)
    if trackers:
        trackers.finish(None, end_state(error))
    if checkpoints and isinstance(error, Exception):  # an interrupted run keeps them
        checkpoints.remove()
    # A UserError gets its one line from the command; a pruned run is no failure.
    if not isinstance(error, (optuna.TrialPruned, UserError)):
        where = Path(run.run_dir, STATUS_FILE) if run.run_dir is not None else STATUS_FILE
        log.error(f"Run failed: {type(error).__name__}: {error} (traceback in {where})"
                  if isinstance(error, Exception) else
                  f"Run interrupted ({type(error).__name__}): {where} says so")
    return error


def set_up(cfg: DictConfig) -> torch.device:
    """What every run does before it builds anything: the config checked, its device, torch's
    threads, and the seed its initialisation starts from. The device."""
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    threads = cpu_threads(cfg.trainer.threads)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.trainer.seed)
    return device


def in_sweep() -> bool:
    """True in a job of a Hydra multirun (a grid or a search), False in a single run or outside
    Hydra."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log_to_files_only(message: str) -> None:
    """An INFO record for the log files of the root logger (Hydra's job log), not the console."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def show_bars(progress: bool | str) -> bool:
    """`trainer.progress`: true, false, or auto (bars in a single run; a sweep shows its own)."""
    return not in_sweep() if progress == "auto" else bool(progress)


def end_state(error: BaseException) -> str:
    """How a run that raised `error` ended: pruned or failed."""
    return "pruned" if isinstance(error, optuna.TrialPruned) else "failed"


def on_device(splits: Splits, device: torch.device) -> Splits:
    def move(split: Split | None) -> Split | None:
        return split and Split(split.inputs.to(device), split.labels.to(device))

    return Splits(move(splits.train), move(splits.val), move(splits.test))


def metrics_summary(prepared: _Prepared, history: list[EpochMetrics]) -> dict:
    """metrics.json: the kept epoch's metrics, how the run trained, and every epoch. Epochs an
    earlier run trained (a resume) are listed with their own end times; `train_time_s` counts
    this run's training only. `trained_with`: the runs trained in the same stack, whose epochs
    took the same seconds."""
    kept = best_epoch(history)  # model.pt holds this epoch's weights
    return {
        "objective": prepared.run.cfg.objective,
        "test_accuracy": kept.test_accuracy,
        "val_accuracy": kept.val_accuracy,
        "train_loss": kept.train_loss,
        "best_epoch": kept.epoch,
        "epochs_done": len(history),
        "train_size": len(prepared.splits.train),
        "train_time_s": sum(m.epoch_time_s for m in history if m.epoch > prepared.replayed),
        **({"resumed_after": prepared.replayed} if prepared.replayed else {}),
        "parameter_count": parameter_count(prepared.training.model),
        "device": str(prepared.device),
        "threads": torch.get_num_threads(),
        "precision": precision_name(prepared.dtype),
        **({"trained_with": prepared.trained_with} if prepared.trained_with else {}),
        "epochs": [{**vars(m), "ended_at": t} for m, t in zip(history, prepared.ended_at)],
    }
