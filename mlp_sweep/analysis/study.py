"""An Optuna sweep's own record: `optimization_results.yaml` and, when persistent, its study.

The comparison trusts these over its own reading of the run folders: a trial's state (complete,
pruned, failed) comes from the study, and the best value is checked against Optuna's. A readable
study also gives the parameter importances.
"""

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mlp_sweep.analysis.refit_best import REFIT_FILE
from mlp_sweep.analysis.runs import Run
from mlp_sweep.errors import first_line
from mlp_sweep.files import load_yaml
from mlp_sweep.sweeping import trial_attrs

OPTUNA_STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}

# PED-ANOVA is Optuna's default evaluator (since Optuna 5); it is named explicitly so that the
# numbers do not change with Optuna's default. It is deterministic (no seed to fix), assesses
# conditional parameters (momentum only for sgd trials) and needs no scikit-learn, which fANOVA does.
IMPORTANCE_EVALUATOR = "PED-ANOVA"


def importance_evaluator():
    """A fresh instance of the evaluator named by IMPORTANCE_EVALUATOR."""
    from optuna.importance import PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator()


@dataclass
class StudyRecord:
    sweep_dir: Path
    name: str | None
    storage: str | None
    best_value: float | None
    best_params: dict
    trials: list = field(default_factory=list)  # optuna FrozenTrials, when the storage is readable
    study: object = None       # the optuna Study, when the storage is readable
    load_error: str | None = None
    importances: dict | None = None  # parameter -> importance, most important first
    importances_note: str = ""       # why there are none, when there are none
    refit: dict | None = None        # refit.json, when python -m mlp_sweep.refit ran on the sweep
    _local_folders: dict | None = field(default=None, repr=False)

    def apply_states(self, runs: list[Run]) -> None:
        """Give each run of this sweep the state its trial has in the study."""
        from mlp_sweep.sweeping.optuna_compat import retried_from  # trials come from Optuna

        by_folder = {folder.resolve(): t for folder, t in self.local_folders().items()}
        retried_as = {n: t.number for t in self.trials for n in retried_from(t)}
        for run in runs:
            trial = by_folder.get(run.folder.resolve())
            if trial is None:
                continue
            run.state = _state_name(trial)
            if run.state == "failed" and trial.number in retried_as:
                run.error = (f"its worker stopped sending heartbeats; run again as trial "
                             f"{retried_as[trial.number]}")

    def run_dirs(self) -> list[Path]:
        """The job folders of the study's trials, from every sweep and host that ran it."""
        return list(self.local_folders())

    def local_folders(self) -> dict[Path, object]:
        """{folder on this host: trial}: each trial's own folder where it exists, else its files
        fetched from the sweep's artifact store (artifacts.py); trials with neither left out."""
        if self._local_folders is None:
            from mlp_sweep.sweeping.artifacts import local_run_dir  # imports optuna's

            found = ((local_run_dir(self.name, t), t) for t in self.trials)
            self._local_folders = {folder: t for folder, t in found if folder is not None}
        return self._local_folders

    def history(self, runs: list[Run], metric: str) -> list[tuple[int, float | None]]:
        """(trial number, value) in trial order: from the study when stored, else from the
        sweep's job folders, whose numbers follow the trials."""
        if self.trials:
            return [(t.number, t.value if t.state.name == "COMPLETE" else None)
                    for t in self.trials if _state_name(t) != "imported"]
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
        return f"Optuna study {self.name} ({where}) in {self.sweep_dir}: {counts}{best}{self._refit_text()}"

    def _refit_text(self) -> str:
        if not self.refit:
            return ""
        r = self.refit
        return (f"; refit of {Path(r['trial_dir']).name} on training + validation images "
                f"(trainer.epochs={r['epochs']}, {len(r['seeds'])} seeds): test accuracy "
                f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}")

    def completed_trials(self) -> list:
        return [t for t in self.trials if t.state.name == "COMPLETE" and t.value is not None]

    def importances_text(self) -> str:
        """The importances as printed under the table: a header line and one line per parameter,
        or one line saying why there are none."""
        if self.importances is None:
            return f"Parameter importances of study {self.name}: not computed: {self.importances_note}"
        width = max(len(name) for name in self.importances)
        return "\n".join([f"Parameter importances ({IMPORTANCE_EVALUATOR}, Optuna's get_param_importances, "
                          f"{len(self.completed_trials())} completed trials of study {self.name}):"]
                         + [f"  {name.ljust(width)}  {value:.3f}" for name, value in self.importances.items()])

    def compute_importances(self) -> None:
        """Fill `importances`, or `importances_note` with the reason they cannot be computed."""
        self.importances, self.importances_note = None, _importances_unavailable(self)
        if self.importances_note:
            return
        import optuna

        try:
            with warnings.catch_warnings():
                # Few trials per regime make PED-ANOVA warn; the header gives the trial count.
                warnings.simplefilter("ignore")
                self.importances = optuna.importance.get_param_importances(
                    self.study, evaluator=importance_evaluator())
        except Exception as error:  # an evaluator's limit must not cost the user the table
            self.importances_note = f"Optuna raised {first_line(error)}"
            return
        if not self.importances:
            self.importances, self.importances_note = None, "Optuna returned no parameter"


def _importances_unavailable(record: "StudyRecord") -> str:
    """Why importances cannot be computed for `record`, or "" when they can."""
    if not record.storage:
        return "the study was in memory (hydra.sweeper.storage: null), so its trials are gone"
    if record.study is None:
        return f"its storage {record.storage} could not be read from here ({record.load_error})"
    completed = record.completed_trials()
    if len(completed) < 2:
        return f"only {len(completed)} completed trial{'' if len(completed) == 1 else 's'}; importances need at least 2"
    if len(record.study.directions) > 1:
        return "the study has several objectives"
    names = {name for t in completed for name in t.params}
    if not any(len({repr(t.params.get(name)) for t in completed}) > 1 for name in names):
        return "no searched parameter takes more than one value in the completed trials"
    return ""


def _state_name(trial) -> str:
    """A trial's state in the words run folders use (completed, pruned, failed, running), or
    imported: a warm start copied it from an earlier study, no run of this sweep."""
    if trial_attrs.imported_from(trial):
        return "imported"
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
            record.study, record.load_error = _load_study(record.name, record.storage)
            record.trials = record.study.get_trials(deepcopy=False) if record.study else []
            complete = [t for t in record.trials if _state_name(t) == "completed"]
            if complete and record.best_value is None:
                from mlp_sweep.sweeping.results import better_of  # the study is loaded: Optuna is

                best = better_of(record.study)(complete, key=lambda t: t.value)
                record.best_value, record.best_params = best.value, best.params
        record.compute_importances()
        record.refit = _load_refit(sweep_dir / REFIT_FILE)
        records[sweep_dir] = record
    return list(records.values())


def _load_refit(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _load_study(name: str | None, storage: str) -> tuple[object, str | None]:
    """(the study, None), or (None, why) when it cannot be loaded."""
    from mlp_sweep.sweeping.storage import load_study  # imports optuna: only for sweeps that kept a study

    try:
        return load_study(name, storage), None
    except Exception as error:  # the database moved or is not reachable from here: fall back to the files
        return None, first_line(error)
