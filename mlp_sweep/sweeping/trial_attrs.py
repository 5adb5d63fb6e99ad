"""What the sweeper records on a trial beside Optuna's own fields: the one module that spells
the attributes' names. Every other module sets and reads them through these functions.

The two records Optuna keeps for itself (the params of an enqueued trial, the trials a heartbeat
retry replaces) are read in optuna_compat.py, with Optuna's other private names.
"""

from pathlib import Path
from typing import Any

RUN_DIR = "run_dir"            # the job's folder, absolute
WORKER = "worker"              # "host:pid" of the worker that asked for it
LIVENESS = "worker_liveness"   # {"lease": file, "process": "host/boot/pidns/pid/start"}:
                               # what another worker asks whether it still lives (resume.py)
ASKED = "asked_by_sweep"       # set before a sweep's trial runs: one another program asked
                               # for has none, and is never failed for want of a worker
PRUNED_BY = "pruned_by"        # a PRUNED trial: "pruner", or "budget" (the sweep's timeout)
FAIL_REASON = "fail_reason"    # a FAIL trial: its job's exception, one line
UNRECORDABLE = "unrecordable"  # a FAIL trial whose job's value, not its job, failed
INTERRUPTED = "interrupted"    # a FAIL trial whose worker died: not counted, run again
SURPLUS = "surplus"            # a FAIL trial asked beyond n_trials by a racing worker
IMPORTED = "imported_from"     # "study#number" a warm start copied it from
TRAINED_WITH = "trained_with"  # hydra.sweeper.fuse: the numbers of the trials of its job
RESUMED_AFTER = "resumed_after"  # the epoch (step) its job went on from, an earlier attempt's
ARTIFACTS = "artifacts"        # {"store": URL, "files": {relative path: artifact id}} (artifacts.py)
RETRY_FILES_PENDING = "retry_files_pending"  # copies being written or replaced: removed too
RETRY_FILES = "retry_files"    # the files its job kept in the store for its retry:
                               # {name: artifact id} (retry_files.py); the files go at its end

PRUNED_BY_PRUNER, PRUNED_BY_BUDGET = "pruner", "budget"


def run_dir(trial: Any) -> Path | None:
    folder = trial.user_attrs.get(RUN_DIR)
    return Path(folder) if folder else None


def worker(trial: Any) -> str:
    """"host:pid", or "" for a trial no worker labelled."""
    return str(trial.user_attrs.get(WORKER, ""))


def liveness(trial: Any) -> dict:
    """How to tell whether the trial's worker lives; {} for a trial no worker labelled."""
    return dict(trial.user_attrs.get(LIVENESS) or {})


def asked_by_sweep(trial: Any) -> bool:
    return bool(trial.user_attrs.get(ASKED))


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


def retry_files(trial: Any) -> dict[str, str]:
    """{name: artifact id} of the files the trial's job kept in the store for its retry."""
    return dict(trial.user_attrs.get(RETRY_FILES) or {})


def imported_from(trial: Any) -> str | None:
    """"study#number" for a trial a warm start imported; None for the study's own."""
    return trial.user_attrs.get(IMPORTED)
