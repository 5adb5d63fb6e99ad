"""Whether a checkpoint can go on as the run the new config describes (`trainer.resume`, a
retried trial), decided per key, before anything is built or read.

A key that changes what is trained (the model, its optimizer, schedule, loss, data,
augmentation, seed, batch size, precision, early stopping) must be the checkpoint's: a resume
that changed it would be neither the old run nor the new one. Keys that change only how the run
is carried out (RUN_ONLY_KEYS) come from the new config. `trainer.epochs` may grow when no
schedule was planned for the old length: the run then goes on as one started with the new
length would have (the same batches, steps and random draws); under a schedule planned for its
length (one-cycle, warm-up cosine) it is refused too.
"""

from typing import Any

from omegaconf import DictConfig

from mlp_sweep.errors import UserError
from mlp_sweep.training.schedules import planned_for_length
from mlp_sweep.values import flatten, resolved_without_hydra

# Keys (or prefixes of keys) that change how a run is carried out, not what it trains.
RUN_ONLY_KEYS = ("trainer.threads", "trainer.device", "trainer.progress", "trainer.checkpoint",
                 "trainer.resume", "logger", "dataset.root", "objective")


def resumable_config(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint records of its run's config: every key that is not run-only."""
    return {key: value for key, value in flatten(resolved_without_hydra(cfg), keep_empty=True).items()
            if not _run_only(key)}


def check_resumable(state: dict[str, Any], cfg: DictConfig, source: str, device_type: str
                    ) -> None:
    """UserError, one line, when the checkpoint `state` (from `source`) cannot go on as `cfg`'s
    run on a `device_type` device: the first key that differs, with both values, an epoch count
    it cannot reach, another kind of device (its random streams are that device's), or a
    checkpoint that records none of this."""
    if "config" not in state or "dropout_rng" not in state:
        raise UserError(f"trainer.resume={source} holds a checkpoint written by an earlier "
                        "version, which records neither its config nor its dropout stream; "
                        "allowed: a new run")
    if state.get("device", device_type) != device_type:
        raise UserError(f"trainer.resume={source} trained on {state['device']}, and this run "
                        f"would go on on {device_type} (its random streams are the device's); "
                        f"allowed: trainer.device on a {state['device']} device")
    done = state["epoch"]
    if cfg.trainer.epochs <= done:
        raise UserError(f"trainer.epochs={cfg.trainer.epochs} but trainer.resume={source} has "
                        f"already trained {done} epochs; allowed: trainer.epochs > {done}")
    recorded = state["config"]
    ours = resumable_config(cfg)
    for key in sorted(recorded.keys() | ours.keys()):
        theirs, here = recorded.get(key, "absent"), ours.get(key, "absent")
        if key == "trainer.epochs" and theirs != here:
            if planned_for_length(cfg.scheduler):
                raise UserError(
                    f"trainer.epochs={here} but trainer.resume={source} was trained with "
                    f"trainer.epochs={theirs} under a schedule planned for that length "
                    f"(scheduler._target_={cfg.scheduler._target_}); allowed: "
                    f"trainer.epochs={theirs}, or a new run")
            continue
        if theirs != here:
            raise UserError(
                f"{key}={_shown(here)} but trainer.resume={source} was trained with "
                f"{key}={_shown(theirs)}; allowed: that value, or a new run (a resume changes "
                f"only {', '.join(RUN_ONLY_KEYS)}, and trainer.epochs where no schedule "
                "depends on it)")


def _run_only(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in RUN_ONLY_KEYS)


def _shown(value: object) -> str:
    return "null" if value is None else str(value)
