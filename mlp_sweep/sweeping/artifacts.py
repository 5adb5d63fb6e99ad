"""A sweep's run folders in one of Optuna's artifact stores (`hydra.sweeper.artifacts=URL`), so
that any host that reaches the study reads the trials another host trained.

When a trial ends, the sweep uploads the files of its run folder that `hydra.sweeper.
artifacts_include` names (globs; every file by default) and records the store and the artifact
ids on the trial (trial_attrs.ARTIFACTS). A reader (best.yaml,
`refit`, `compare`) that does not find a trial's folder on its own disk fetches the files into a
local cache once, and reads that folder as it would the original.

URLs: a folder every host reaches (`/shared/artifacts` or `file:///shared/artifacts`: NFS, a
mounted volume) is Optuna's FileSystemArtifactStore; `s3://BUCKET` is its Boto3ArtifactStore,
with boto3's own credentials and endpoint (`AWS_ENDPOINT_URL` for an S3-compatible server).
"""

import contextlib
import glob
import io
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlp_sweep.errors import MissingExtraError, UserError, first_line, install_command
from mlp_sweep.files import replace_atomically
from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.trial_spec import TRIAL_FILE

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"  # fetched only for a reader that asks for the weights (local_run_dir)

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


def upload_run(store: Any, url: str, trial: Any, run_dir: Path,
               include: Iterable[str] = ("**",)) -> dict[str, str]:
    """Upload the files of `run_dir` that the globs `include` match as artifacts of `trial` (an
    optuna.Trial), then record them on it; {relative path: artifact id}. The record comes last:
    a trial never names an artifact that is not whole in the store."""
    from optuna.artifacts import upload_artifact

    ids = {}
    for name in run_files(run_dir, include):
        ids[name] = upload_artifact(artifact_store=store, file_path=str(run_dir / name),
                                    study_or_trial=trial)
    trial.set_user_attr(trial_attrs.ARTIFACTS, {"store": url, "files": ids})
    return ids


def run_files(run_dir: Path, include: Iterable[str]) -> list[str]:
    """The files of `run_dir` (hidden ones too) that any glob of `include` matches, as sorted
    relative paths; the sweeper's own trial.json is not the run's."""
    names = {name for pattern in include
             for name in glob.glob(pattern, root_dir=run_dir, recursive=True, include_hidden=True)}
    return sorted(Path(name).as_posix() for name in names
                  if name != TRIAL_FILE and (run_dir / name).is_file())


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
                download(store, files[name], folder / name)
        except Exception as error:  # the store is gone from here: the trial stays unread
            log.warning(f"Trial {trial.number}: its folder {own} is not on this host and its "
                        f"files could not be fetched from {stored['store']} ({first_line(error)})")
            return None
        log.info(f"Trial {trial.number}: fetched {', '.join(missing)} from {stored['store']} "
                 f"into {folder}")
    return folder


def download(store: Any, artifact_id: str, path: Path) -> None:
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
