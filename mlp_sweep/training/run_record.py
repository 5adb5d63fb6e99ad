"""What a run leaves in its folder: status.json, metrics.json and model.pt.

Every file is written to a temporary name and renamed, so a killed run never leaves a half-written
file, and `status.json` says `completed` only once the metrics and weights are in place.
"""

import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from mlp_sweep.files import replace_atomically, write_json

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.pt"

if TYPE_CHECKING:
    from torch import nn


class RunRecord:
    """The files of one run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.started = time.time()

    def running(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes it; train(cfg, run_dir) may not
        self._write_status("running")

    def metrics(self, metrics: dict) -> None:
        """Write the metrics so far; called after every epoch, so a killed run keeps its curve."""
        write_json(self.run_dir / METRICS_FILE, metrics)

    def completed(self, model: "nn.Module") -> None:
        import torch  # here: compare and refit read the other files without loading torch

        replace_atomically(self.run_dir / WEIGHTS_FILE,
                           lambda tmp: torch.save(model.state_dict(), tmp))
        self._write_status("completed")

    def ended(self, state: str, error: BaseException) -> None:
        """Record a run that did not complete (`failed`, `pruned`), with the reason."""
        self._write_status(
            state,
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(error)),
        )

    def _write_status(self, state: str, **details: str) -> None:
        write_json(
            self.run_dir / STATUS_FILE,
            {"state": state, "pid": os.getpid(), "started": self.started,
             "updated": time.time(), **details},
        )


