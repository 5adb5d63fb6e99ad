"""Optuna storages from the one string `hydra.sweeper.storage` holds.

- `sqlite:///multirun/optuna.db`, `postgresql://user@host/db`: Optuna's RDB storage (a URL).
- `journal:multirun/optuna.journal`: Optuna's JournalStorage on a file, the backend Optuna
  advises for several processes on one host (SQLite locks under parallel writes).
- null: an in-memory study that lives as long as the sweep process.
"""

from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

JOURNAL_PREFIX = "journal:"


def open_storage(spec: str | None) -> BaseStorage | str | None:
    """What `optuna.create_study(storage=...)` takes for `spec`; creates a SQLite or journal file's
    folder so a first sweep can start in an empty project."""
    if spec is None:
        return None
    if spec.startswith(JOURNAL_PREFIX):
        path = Path(spec[len(JOURNAL_PREFIX):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if spec.startswith("sqlite:///"):
        Path(spec[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return spec


def load_study(name: str, spec: str, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(spec), pruner=pruner)
