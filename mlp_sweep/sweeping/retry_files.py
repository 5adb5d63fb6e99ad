"""Files a job names for its trial's retry, so that an attempt that runs the trial again (its
first was interrupted, or its worker went silent) goes on from them, on whatever host.

The job names a file with `TrialLink.keep_for_retry(path)` (a training job: its newest
checkpoint, after each epoch); with an artifact store (`hydra.sweeper.artifacts`) each call
copies it there and records {name: artifact id} on the trial (trial_attrs.RETRY_FILES), in place
of that name's earlier copy. A retry's job asks `TrialLink.earlier_attempts()`: for each attempt,
its own folder where that is on this host, else the files it kept, fetched into a cache folder
while the job reads them. The sweep removes a trial's kept files, and those of the attempts it
ran again, when it records the trial's end; a job may drop its own sooner, when its run ends
(`TrialLink.drop_kept_for_retry`). Without a store nothing is copied: a retry
on the same host reads the earlier attempt's folder.
"""

import contextlib
import logging
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlp_sweep.errors import first_line
from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.artifacts import cache_dir, download, open_store

log = logging.getLogger(__name__)


class KeptFiles:
    """The files one attempt of a trial keeps in the store for its retry. A store that fails
    costs the copy (a warning), not the run."""

    def __init__(self, url: str, trial: Any) -> None:
        self.url, self.trial = url, trial  # trial: an optuna.Trial, in the job's process
        self.store = open_store(url)
        self.ids: dict[str, str] = {}

    def keep(self, path: Path, name: str) -> None:
        artifact_id = f"retry-{uuid.uuid4().hex}"
        replaced = self.ids.get(name)
        try:
            # Named on the trial before it is written, and the copy it replaces until that is
            # removed: a kill at any point leaves no copy the sweep cannot find to remove.
            self.trial.set_user_attr(trial_attrs.RETRY_FILES_PENDING,
                                     [artifact_id, *([replaced] if replaced else [])])
            with Path(path).open("rb") as file:
                self.store.write(artifact_id, file)
            self.trial.set_user_attr(trial_attrs.RETRY_FILES, {**self.ids, name: artifact_id})
        except Exception as error:
            log.warning(f"{path} could not be kept for a retry in {self.url} "
                        f"({first_line(error)}); a retry on another host gets its last copy")
            with contextlib.suppress(Exception):
                self.store.remove(artifact_id)
            return
        self.ids[name] = artifact_id
        if replaced:  # recorded: the new copy is whole
            remove(self.store, [replaced])
        with contextlib.suppress(Exception):
            self.trial.set_user_attr(trial_attrs.RETRY_FILES_PENDING, [])

    def drop(self) -> None:
        """Remove every copy kept so far: the run ended, no retry will want them."""
        remove(self.store, list(self.ids.values()))
        self.ids = {}


@dataclass(frozen=True)
class EarlierAttempt:
    """An attempt of this trial that ended before its end, as its retry's job sees it."""

    run_dir: Path                 # its own folder, on the host that ran it
    store: str | None = None      # the artifact store holding the files it kept for its retry
    kept: dict[str, str] = field(default_factory=dict)  # {name: artifact id}

    @contextlib.contextmanager
    def files(self) -> Iterator[Path | None]:
        """A folder with what the attempt left for its retry: its own, when it is on this host;
        else the files it kept in the store (stored_files); None when neither is possible."""
        if self.run_dir.is_dir():
            yield self.run_dir
        else:
            with self.stored_files() as folder:
                yield folder

    @contextlib.contextmanager
    def stored_files(self) -> Iterator[Path | None]:
        """The files the attempt kept in the store, each under its name in a folder of the cache
        while the block runs; None, with a warning, when it kept none or they cannot all be
        fetched."""
        if not self.store or not self.kept:
            yield None
            return
        folder = cache_dir() / "retry" / uuid.uuid4().hex
        try:
            try:
                store = open_store(self.store)
                for name, artifact_id in self.kept.items():
                    download(store, artifact_id, folder / name)
            except Exception as error:
                log.warning(f"the files {', '.join(self.kept)} that {self.run_dir} kept for its "
                            f"retry could not be fetched from {self.store} ({first_line(error)})")
                yield None
            else:
                yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def checked_name(path: Path, name: str | None) -> str:
    """The name a kept file is known by in its retry's folder: `name`, or the file's own; a
    ValueError for a name that would leave that folder."""
    chosen = PurePosixPath(name if name is not None else Path(path).name)
    if chosen.is_absolute() or ".." in chosen.parts or not chosen.parts:
        raise ValueError(f"keep_for_retry name={str(chosen)!r} is not allowed; allowed: a "
                         "relative path inside the run folder, e.g. checkpoint.pt")
    return chosen.as_posix()


def drop(store: Any, trials: Iterable[Any]) -> None:
    """Remove the files `trials` kept for a retry: the trial that ended and the attempts it ran
    again have no use for them."""
    remove(store, [artifact_id for trial in trials
                   for artifact_id in [*trial_attrs.retry_files(trial).values(),
                                       *trial.user_attrs.get(trial_attrs.RETRY_FILES_PENDING, [])]])


def remove(store: Any, ids: list[str]) -> None:
    for artifact_id in ids:
        with contextlib.suppress(Exception):  # gone already: nothing to do
            store.remove(artifact_id)
