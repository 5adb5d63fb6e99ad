"""A run's whole state after an epoch, so that a run killed mid-way continues from its last
finished epoch with the results it would have had.

`RUN_DIR/checkpoint.pt` holds the model, the optimizer, the schedule, the run's random streams,
the history with each epoch's end time, the best epoch's weights, and the config keys that
decide what is trained (resume_check.py compares them with a resume's config). Each is written to a
temporary name and renamed over the last one, which is first kept as `checkpoint.prev.pt`: a
reader finds a whole file, and should the newest be unreadable, the one before it. Both go when
the run ends (its `model.pt` stays).
"""

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import torch

from mlp_sweep.errors import UserError
from mlp_sweep.files import replace_atomically

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"


class CheckpointCopy(Protocol):
    """Somewhere else a run's newest checkpoint is kept, for a host that cannot read its folder
    (job.py: kept for a retry of the trial, in the sweep's artifact store)."""

    def saved(self, path: Path, epoch: int) -> None: ...

    def removed(self) -> None: ...


class Checkpoints:
    """The checkpoint files of one run folder, and their copy elsewhere, if the run has one."""

    def __init__(self, run_dir: Path, copy: CheckpointCopy | None = None,
                 about: dict[str, Any] | None = None) -> None:
        self.current = Path(run_dir, CHECKPOINT_FILE)
        self.previous = Path(run_dir, PREVIOUS_FILE)
        self.copy = copy
        self.about = about or {}  # saved with every state: what the run is, its epochs' ends

    def save(self, state: dict[str, Any]) -> None:
        def write(tmp: Path) -> None:
            torch.save({**state, **self.about}, tmp)
            if self.current.exists():
                os.replace(self.current, self.previous)

        replace_atomically(self.current, write)
        if self.copy is not None:
            self.copy.saved(self.current, state["epoch"])

    def load(self) -> dict[str, Any] | None:
        """The newest readable checkpoint; None when there is none."""
        for path in (self.current, self.previous):
            if path.is_file():
                state = read_checkpoint(path)
                if state is not None:
                    return state
        return None

    def remove(self) -> None:
        self.current.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)
        if self.copy is not None:
            self.copy.removed()


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint in `path`; None, with a warning, when it cannot be read (a file cut short
    on a disk that lost it: the caller tries the one before)."""
    try:
        # on the CPU: a checkpoint written on a GPU reads on any host (the run moves it)
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as error:
        log.warning(f"checkpoint {path} cannot be read ({type(error).__name__})")
        return None


def checkpoint_of(run_dir: str | Path) -> dict[str, Any]:
    """The checkpoint `trainer.resume=run_dir` names; UserError when there is none."""
    state = Checkpoints(Path(run_dir)).load() if Path(run_dir).is_dir() else None
    if state is None:
        raise UserError(f"trainer.resume={run_dir} holds no readable {CHECKPOINT_FILE}; allowed: "
                        "the folder of a run that stopped before its end (a finished run "
                        "keeps model.pt only)")
    return state
