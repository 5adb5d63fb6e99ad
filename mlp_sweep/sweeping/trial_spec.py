"""A trial as the sweeper hands it to the job that runs it: one description, written once.

The sweep loop writes `trial.json` into the job's folder before launching it and names that file
in the job's environment (`MLP_SWEEP_TRIAL`); the job reads it once (trial_link.py). It holds
everything the job needs to report to its trial from any process or host: the study, its storage
as an absolute URL (so a job that changes folder, `hydra.job.chdir=true`, still opens the sweep's
database), the trial's id and number, its run folder, and the budget's end.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlp_sweep.files import write_json

TRIAL_VARIABLE = "MLP_SWEEP_TRIAL"  # the absolute path of the job's trial.json
TRIAL_FILE = "trial.json"


@dataclass(frozen=True)
class TrialSpec:
    study_name: str
    storage: str | None        # an absolute URL; None: an in-memory study, in the sweep's process
    trial_id: int              # the storage's id: what a job reports to
    number: int                # the study's trial number: what a user reads
    run_dir: str               # the job's folder, absolute
    deadline: float | None = None   # Unix time the sweep's budget ends for running trials
    prune_early: bool = False  # stop as soon as the job's own pace says it cannot finish by then
    pruner: dict[str, Any] | None = None  # the study's pruner config, built the same in the job
    # hydra.sweeper.fuse: the folders of the other trials this job trains, each with its own
    # trial.json and .hydra/config.yaml (fused_groups.py); empty: the job trains this trial alone
    fused: tuple[str, ...] = ()
    # The folders of the attempts this trial runs again (interrupted, or silent on another
    # host), the latest first: the job may go on from what they left (retry_files.py)
    resume_from: tuple[str, ...] = ()
    # hydra.sweeper.artifacts: the store's URL, where the job keeps the files it names for a retry
    artifacts: str | None = None
    # The files those attempts kept in the store, {name: artifact id} each, in the same order:
    # read when an attempt's folder is not on this host
    retry_files: tuple[dict[str, str], ...] = ()

    def write(self) -> Path:
        """Write `run_dir/trial.json` whole; its path, for the job's environment."""
        path = Path(self.run_dir, TRIAL_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: str | Path) -> "TrialSpec":
        return cls.from_json(Path(path).read_text())

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        fields = json.loads(text)
        return cls(**{**fields, "fused": tuple(fields.get("fused", ())),
                      "resume_from": tuple(fields.get("resume_from", ())),
                      "retry_files": tuple(fields.get("retry_files", ()))})

    def group(self) -> list["TrialSpec"]:
        """The trials this job trains: this one, then those it is fused with."""
        return [self, *(self.read(Path(folder, TRIAL_FILE)) for folder in self.fused)]

    @classmethod
    def of_this_job(cls) -> "TrialSpec | None":
        """The trial this process's job runs; None outside an mlp_optuna sweep (a single run, a
        grid, a task called from Python)."""
        path = os.environ.get(TRIAL_VARIABLE)
        return cls.read(path) if path else None


def hydra_quoted(path: Path) -> str:
    """`path` as a quoted Hydra override value: a folder's name may hold characters the override
    grammar reads (`=`, `,`, spaces, brackets)."""
    return "'" + str(path).replace("'", "\\'") + "'"
