"""An Optuna sweep's own record: `optimization_results.yaml` and, when persistent, its study.

The comparison trusts these over its own reading of the run folders: a trial's state (complete,
pruned, failed) comes from the study, and the best value is checked against Optuna's.
"""

from dataclasses import dataclass, field
from pathlib import Path

from mlp_sweep.runs import Run, load_yaml

OPTUNA_STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


@dataclass
class StudyRecord:
    sweep_dir: Path
    name: str | None
    storage: str | None
    best_value: float | None
    best_params: dict
    trials: list = field(default_factory=list)  # optuna FrozenTrials, when the storage is readable

    def apply_states(self, runs: list[Run]) -> None:
        """Give each run of this sweep the state its trial has in the study."""
        by_folder = {Path(t.user_attrs["run_dir"]).resolve(): t for t in self.trials
                     if "run_dir" in t.user_attrs}
        for run in runs:
            trial = by_folder.get(run.folder.resolve())
            if trial is not None:
                run.state = _state_name(trial)

    def run_dirs(self) -> list[Path]:
        """The job folders of the study's trials that still exist, from every sweep that ran it."""
        folders = [Path(t.user_attrs["run_dir"]) for t in self.trials if "run_dir" in t.user_attrs]
        return [f for f in folders if (f / ".hydra" / "config.yaml").is_file()]

    def history(self, runs: list[Run], metric: str) -> list[tuple[int, float | None]]:
        """(trial number, value) in trial order: from the study when stored, else from the
        sweep's job folders, whose numbers follow the trials."""
        if self.trials:
            return [(t.number, t.value if t.state.name == "COMPLETE" else None) for t in self.trials]
        mine = [r for r in runs if r.folder.parent.resolve() == self.sweep_dir.resolve()
                and r.folder.name.isdigit()]
        return [(int(r.folder.name), (r.metrics or {}).get(metric) if r.state == "completed" else None)
                for r in sorted(mine, key=lambda r: int(r.folder.name))]

    def summary(self) -> str:
        where = f"storage {self.storage}" if self.storage else "in-memory study"
        counts = ""
        if self.trials:
            states = [_state_name(t) for t in self.trials]
            counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) + "; "
        best = "no best value yet" if self.best_value is None else (
            f"best value {self.best_value:.4f} with {self.best_params}")
        return f"Optuna study {self.name} ({where}) in {self.sweep_dir}: {counts}{best}"


def _state_name(trial) -> str:
    """A trial's state in the words run folders use (completed, pruned, failed, running)."""
    return OPTUNA_STATES.get(trial.state.name, trial.state.name.lower())


def read_studies(runs: list[Run]) -> list[StudyRecord]:
    """One record per Optuna sweep folder among `runs`."""
    records = {}
    for run in runs:
        sweep_dir = run.folder.parent
        if run.sweeper is None or sweep_dir in records:
            continue
        results = load_yaml(sweep_dir / "optimization_results.yaml")
        record = StudyRecord(sweep_dir, run.sweeper.get("study_name"), run.sweeper.get("storage"),
                             results.get("best_value"), results.get("best_params") or {})
        if record.storage:
            record.trials = _load_trials(record.name, record.storage)
            complete = [t for t in record.trials if t.state.name == "COMPLETE"]
            if complete and record.best_value is None:
                best = max(complete, key=lambda t: t.value)  # the presets maximise
                record.best_value, record.best_params = best.value, best.params
        records[sweep_dir] = record
    return list(records.values())


def _load_trials(name: str | None, storage: str) -> list:
    from mlp_sweep.storage import load_study  # imports optuna: only for sweeps that kept a study

    try:
        return load_study(name, storage).get_trials(deepcopy=False)
    except Exception:  # the database moved or is not reachable from here: fall back to the files
        return []
