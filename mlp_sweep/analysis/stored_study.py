"""A study named on the command line (`--storage URL --study NAME`) instead of a sweep folder:
what `refit` and `compare` read on a host that holds none of the study's folders."""

from pathlib import Path

from mlp_sweep.errors import UserError


def check_study_arguments(storage: str | None, study: str | None) -> bool:
    """Whether the command names a study; UserError when it names half of one."""
    if storage is None and study is None:
        return False
    if not (storage and study):
        raise UserError(f"--storage={storage!r} --study={study!r}: allowed: both, e.g. "
                        "--storage sqlite:///multirun/optuna.db --study mlp_mnist")
    return True


def load_stored_study(study_name: str, storage: str):
    """The optuna Study; UserError naming it when the storage does not hold it."""
    from mlp_sweep.sweeping.storage import JOURNAL_PREFIX, load_study  # imports optuna

    for prefix in ("sqlite:///", JOURNAL_PREFIX):  # a reader creates no empty database
        path = Path(storage[len(prefix):].partition("?")[0]) if storage.startswith(prefix) else None
        if path is not None and not path.is_file():
            raise UserError(f"--storage {storage!r}: no file {path}; allowed: the storage a "
                            "sweep wrote (hydra.sweeper.storage)")
    try:
        return load_study(study_name, storage)
    except KeyError:
        raise UserError(f"--study {study_name!r} is not in {storage}; allowed: a study that "
                        "storage holds") from None


def study_run_folders(study_name: str, storage: str) -> list[Path]:
    """The folders, on this host, of the study's trials: each trial's own where it is here, else
    its files fetched from the sweep's artifact store; UserError when there are none."""
    from mlp_sweep.sweeping.artifacts import local_run_dir
    from mlp_sweep.sweeping.warm_start import own_trials

    study = load_stored_study(study_name, storage)
    trials = own_trials(study)
    folders = [folder for folder in (local_run_dir(study_name, t) for t in trials) if folder]
    if not folders:
        raise UserError(f"none of the {len(trials)} trials of study {study_name!r} has its folder "
                        "on this host or in an artifact store reachable from here; allowed: a "
                        "sweep run with hydra.sweeper.artifacts=URL, or the host that ran it")
    return folders
