"""A sweep's run folders in one of Optuna's artifact stores (`hydra.sweeper.artifacts=URL`), so
that any host that reaches the study reads the trials another host trained.

When a trial ends, the sweep uploads its run's files (RUN_FILES, those that exist) and records
the store and the artifact ids on the trial (trial_attrs.ARTIFACTS). A reader (best.yaml,
`refit`, `compare`) that does not find a trial's folder on its own disk fetches the files into a
local cache once, and reads that folder as it would the original.

URLs: a folder every host reaches (`/shared/artifacts` or `file:///shared/artifacts`: NFS, a
mounted volume) is Optuna's FileSystemArtifactStore; `s3://BUCKET` is its Boto3ArtifactStore,
with boto3's own credentials and endpoint (`AWS_ENDPOINT_URL` for an S3-compatible server).
"""

import contextlib
import io
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlp_sweep.errors import MissingExtraError, UserError, first_line, install_command
from mlp_sweep.files import replace_atomically
from mlp_sweep.sweeping import trial_attrs

log = logging.getLogger(__name__)

# What a reader needs to treat the fetched folder as the run's own: its config and overrides,
# Hydra's record (choices, sweeper), its results and state, and the trained weights.
RECORD_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
                "metrics.json", "status.json")
MODEL_FILE = "model.pt"
RUN_FILES = (*RECORD_FILES, MODEL_FILE)

ALLOWED = "a folder every host reaches (PATH or file:///PATH), or s3://BUCKET"
CACHE_VARIABLE = "MLP_SWEEP_CACHE"  # where fetched run folders are kept; default ~/.cache/mlp_sweep


class StoreError(UserError):
    """An artifact store URL that is not one, or a store that cannot be reached or written."""


def canonical_url(url: str) -> str:
    """`url` as every host records it: a folder as an absolute file:// URL (a worker started in
    another folder names the same store), s3://BUCKET as given."""
    text = str(url)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not bucket or prefix.strip("/"):
            raise StoreError(f"hydra.sweeper.artifacts={text!r} is not allowed; allowed: "
                             f"{ALLOWED} (a bucket, without a key prefix)")
        return f"s3://{bucket}"
    if "://" in text and not text.startswith("file://"):
        raise StoreError(f"hydra.sweeper.artifacts={text!r} is not a supported store; "
                         f"allowed: {ALLOWED}")
    path = Path(text.removeprefix("file://")).expanduser().absolute()
    return f"file://{path}"


def open_store(url: str) -> Any:
    """Optuna's artifact store for a canonical URL."""
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    if url.startswith("s3://"):
        try:
            return Boto3ArtifactStore(url[len("s3://"):])
        except ImportError as error:
            raise MissingExtraError(f"hydra.sweeper.artifacts={url!r} needs boto3 "
                                    f"({first_line(error, with_type=False)}); install it with: "
                                    f"{install_command('s3')}") from None
    return FileSystemArtifactStore(_folder_of(url))


def _folder_of(url: str) -> str:
    """The folder a canonical file:// URL names."""
    return url.removeprefix("file://")


def checked_store(url: str) -> Any:
    """The store at `url`, once a probe written to it has been read back and removed; StoreError
    naming the URL when it cannot be reached or written (before the sweep makes anything)."""
    store = open_store(url)
    probe, content = f"probe-{uuid.uuid4().hex}", b"mlp_sweep"
    try:
        if url.startswith("file://") and not Path(_folder_of(url)).is_dir():
            raise FileNotFoundError(f"no folder {_folder_of(url)}")
        store.write(probe, io.BytesIO(content))
        with contextlib.closing(store.open_reader(probe)) as reader:
            if reader.read() != content:
                raise OSError("what was written is not what is read back")
        store.remove(probe)
    except Exception as error:
        raise StoreError(f"hydra.sweeper.artifacts={url!r} cannot be written and read back "
                         f"({first_line(error)}); allowed: {ALLOWED} that this user can "
                         "write") from None
    return store


def upload_run(store: Any, url: str, trial: Any, run_dir: Path) -> dict[str, str]:
    """Upload the files of RUN_FILES that `run_dir` holds, and its logs, as artifacts of `trial`
    (an optuna.Trial), then record them on it; {relative path: artifact id}. The record comes
    last: a trial never names an artifact that is not whole in the store."""
    from optuna.artifacts import upload_artifact

    ids = {}
    logs = sorted(path.name for path in run_dir.glob("*.log"))  # the job's log, Hydra's name
    for name in (*RUN_FILES, *logs):
        path = run_dir / name
        if path.is_file():
            ids[name] = upload_artifact(artifact_store=store, file_path=str(path),
                                        study_or_trial=trial)
    trial.set_user_attr(trial_attrs.ARTIFACTS, {"store": url, "files": ids})
    return ids


class StoredCheckpoint:
    """A running trial's newest checkpoint, copied to the store after each epoch and recorded on
    the trial (trial_attrs.STORED_CHECKPOINT), so that its retry on another host goes on from it;
    removed, with those of the attempts it went on from, when the run ends. A store that fails
    costs the copy, not the run."""

    def __init__(self, url: str, trial: Any, earlier: tuple[str, ...] = ()) -> None:
        self.url, self.trial = url, trial  # trial: an optuna.Trial, in the job's process
        self.store = open_store(url)
        self.earlier = [artifact_id for artifact_id in earlier if artifact_id]
        self.current: str | None = None

    def saved(self, path: Path, epoch: int) -> None:
        artifact_id = f"checkpoint-{uuid.uuid4().hex}"
        try:
            with path.open("rb") as file:
                self.store.write(artifact_id, file)
            self.trial.set_user_attr(trial_attrs.STORED_CHECKPOINT,
                                     {"id": artifact_id, "epoch": epoch})
        except Exception as error:
            log.warning(f"the checkpoint after epoch {epoch} could not be copied to {self.url} "
                        f"({first_line(error)}); a retry on another host would start over")
            return
        self._remove([self.current] if self.current else [])  # recorded: the new one is whole
        self.current = artifact_id

    def removed(self) -> None:
        self._remove([*self.earlier, *([self.current] if self.current else [])])
        self.earlier, self.current = [], None

    def _remove(self, ids: list[str]) -> None:
        for artifact_id in ids:
            with contextlib.suppress(Exception):  # gone already: nothing to do
                self.store.remove(artifact_id)


@contextlib.contextmanager
def fetched_checkpoint(url: str, artifact_id: str) -> Iterator[Path | None]:
    """A checkpoint another host left in the store, in a file of the cache while the block runs;
    None, with a warning, when it cannot be fetched."""
    path = cache_dir() / "checkpoints" / artifact_id
    try:
        try:
            _download(open_store(url), artifact_id, path)
        except Exception as error:
            log.warning(f"checkpoint {artifact_id} could not be fetched from {url} "
                        f"({first_line(error)})")
            yield None
        else:
            yield path
    finally:
        path.unlink(missing_ok=True)


def local_run_dir(study_name: str, trial: Any, *, with_model: bool = False) -> Path | None:
    """The folder of `trial`'s run on this host: its own, when it is here; else its files fetched
    from the artifact store it recorded (cached under MLP_SWEEP_CACHE); None when neither is
    possible. `with_model` fetches model.pt too (compare reads the record files only)."""
    own = trial_attrs.run_dir(trial)
    if own is not None and (own / ".hydra" / "config.yaml").is_file():
        return own
    stored = trial_attrs.artifacts(trial)
    if not stored or ".hydra/config.yaml" not in stored["files"]:
        return None
    files = stored["files"]
    # Named by the config's artifact id too: a study deleted and made again reuses numbers.
    folder = (cache_dir() / study_name.replace(os.sep, "_")
              / f"{trial.number}-{files['.hydra/config.yaml'][:8]}")
    wanted = [name for name in files if with_model or name != MODEL_FILE]
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        try:
            store = open_store(stored["store"])
            for name in missing:
                _download(store, files[name], folder / name)
        except Exception as error:  # the store is gone from here: the trial stays unread
            log.warning(f"Trial {trial.number}: its folder {own} is not on this host and its "
                        f"files could not be fetched from {stored['store']} ({first_line(error)})")
            return None
        log.info(f"Trial {trial.number}: fetched {', '.join(missing)} from {stored['store']} "
                 f"into {folder}")
    return folder


def _download(store: Any, artifact_id: str, path: Path) -> None:
    """One artifact into `path`, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with contextlib.closing(store.open_reader(artifact_id)) as reader, tmp.open("wb") as out:
            while chunk := reader.read(1 << 20):
                out.write(chunk)

    replace_atomically(path, write)


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlp_sweep"
