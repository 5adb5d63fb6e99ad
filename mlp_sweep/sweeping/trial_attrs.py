"""What the sweeper records on a trial beside Optuna's own fields: the one module that spells
the attributes' names. Every other module sets and reads them through these functions.

The two records Optuna keeps for itself (the params of an enqueued trial, the trials a heartbeat
retry replaces) are read in optuna_compat.py, with Optuna's other private names.
"""

from pathlib import Path
from typing import Any

RUN_DIR = "run_dir"            # the job's folder, absolute
WORKER = "worker"              # "host:pid" of the worker that asked for it
PRUNED_BY = "pruned_by"        # a PRUNED trial: "pruner", or "budget" (the sweep's timeout)
FAIL_REASON = "fail_reason"    # a FAIL trial: its job's exception, one line
UNRECORDABLE = "unrecordable"  # a FAIL trial whose job's value, not its job, failed
INTERRUPTED = "interrupted"    # a FAIL trial whose worker died: not counted, run again
SURPLUS = "surplus"            # a FAIL trial asked beyond n_trials by a racing worker
IMPORTED = "imported_from"     # "study#number" a warm start copied it from
TRAINED_WITH = "trained_with"  # hydra.sweeper.fuse: the numbers of the trials of its job
RESUMED_AFTER = "resumed_after"  # the epoch (step) its job went on from, an earlier attempt's
ARTIFACTS = "artifacts"        # {"store": URL, "files": {relative path: artifact id}} (artifacts.py)
STORED_CHECKPOINT = "stored_checkpoint"  # a running trial's newest checkpoint in the store:
                                         # {"id": artifact id, "epoch": N}; removed at its end

PRUNED_BY_PRUNER, PRUNED_BY_BUDGET = "pruner", "budget"


def run_dir(trial: Any) -> Path | None:
    folder = trial.user_attrs.get(RUN_DIR)
    return Path(folder) if folder else None


def worker(trial: Any) -> str:
    """"host:pid", or "" for a trial no worker labelled."""
    return str(trial.user_attrs.get(WORKER, ""))


def pruned_by(trial: Any) -> str:
    """"pruner", "budget", or "" (not pruned, or pruned before the sweeper said why)."""
    return str(trial.user_attrs.get(PRUNED_BY, ""))


def fail_reason(trial: Any) -> str:
    return str(trial.user_attrs.get(FAIL_REASON, ""))


def is_unrecordable(trial: Any) -> bool:
    return bool(trial.user_attrs.get(UNRECORDABLE))


def is_uncounted_failure(trial: Any) -> bool:
    """Failed for a reason that does not use up n_trials: interrupted, or asked in surplus."""
    return bool(trial.user_attrs.get(INTERRUPTED) or trial.user_attrs.get(SURPLUS))


def resumed_after(trial: Any) -> int | None:
    return trial.user_attrs.get(RESUMED_AFTER)


def artifacts(trial: Any) -> dict | None:
    """The store and artifact ids of the run files uploaded when the trial ended; None when
    none were."""
    return trial.user_attrs.get(ARTIFACTS)


def stored_checkpoint(trial: Any) -> str:
    """The artifact id of the newest checkpoint the trial left in the store; "" for none."""
    stored = trial.user_attrs.get(STORED_CHECKPOINT)
    return stored["id"] if stored else ""


def imported_from(trial: Any) -> str | None:
    """"study#number" for a trial a warm start imported; None for the study's own."""
    return trial.user_attrs.get(IMPORTED)
