"""What a sweep leaves beside its trials' folders: the stock sweeper's
`optimization_results.yaml`, and `best.yaml` with the best trial's folder, config and the command
that runs it again (for several objectives, the Pareto front's trials)."""

import logging
import shlex
import sys
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from mlp_sweep.files import load_yaml, write_yaml
from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.artifacts import local_run_dir
from mlp_sweep.sweeping.warm_start import own_trials

log = logging.getLogger(__name__)


def write_results(study: optuna.Study, sweep_dir: Path) -> dict | None:
    """Write the results; for one objective, return best.yaml's record (None when no trial of
    the study's own completed, or for several objectives)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trials = own_trials(study)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        log.warning("No trial completed: no best to report")
        return None
    if len(study.directions) > 1:
        _write_pareto_front(study, sweep_dir)
        return None
    best = best_of(study, trials)
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                     "best_value": best.value}),
                   sweep_dir / "optimization_results.yaml")
    record = {**trial_record(best, study.study_name), "value": best.value}
    write_yaml(sweep_dir / "best.yaml", record)
    log.info(f"Best trial {best.number}: {best.value} in {trial_attrs.run_dir(best)}; "
             f"written to {sweep_dir}/best.yaml")
    return record


def _write_pareto_front(study: optuna.Study, sweep_dir: Path) -> None:
    """Several objectives have no single best: the stock sweeper's Pareto-front record, and
    best.yaml listing the front's trials."""
    front = [t for t in study.best_trials if not trial_attrs.imported_from(t)]
    OmegaConf.save(OmegaConf.create({"name": "optuna", "solutions": [
        {"params": t.params, "values": t.values} for t in front]}),
        sweep_dir / "optimization_results.yaml")
    write_yaml(sweep_dir / "best.yaml", {
        "directions": [d.name.lower() for d in study.directions],
        "pareto_front": [{**trial_record(t, study.study_name), "values": t.values}
                         for t in front],
    })
    log.info(f"Pareto front of {len(front)} trial(s) written to {sweep_dir}/best.yaml")


def best_of(study: optuna.Study, trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The best completed trial among `trials` (pass the study's own: a warm start's imported
    trials were trained elsewhere); None when none completed or the study has several
    objectives."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete or len(study.directions) > 1:
        return None
    return better_of(study)(complete, key=lambda t: t.value)


def better_of(study: optuna.Study):
    """`max` for a study that maximises, `min` for one that minimises (one objective)."""
    return max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min


def trial_record(trial: FrozenTrial, study_name: str) -> dict:
    """A trial as best.yaml shows it: number, folder, params, the command and config of its run.
    The folder is one on this host: the trial's own, or its files fetched from the sweep's
    artifact store when another host trained it (then `trained_in` names the original)."""
    trained_in = trial_attrs.run_dir(trial) or Path()
    run_dir = local_run_dir(study_name, trial, with_model=True) or trained_in
    overrides = load_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    moved = {} if run_dir == trained_in else {
        "trained_in": f"{trained_in} ({trial_attrs.worker(trial) or 'another host'})"}
    return {"trial": trial.number, "run_dir": str(run_dir), **moved, "params": trial.params,
            "command": command_line(app_command(), overrides),
            "config": load_yaml(run_dir / ".hydra" / "config.yaml")}


def app_command() -> list[str]:
    """How this process's app was started, without its arguments: `python -m package.module`,
    `python path/to/app.py`, or a console script's name."""
    # sys.orig_argv is the interpreter, its options, then what sys.argv holds; with -m, the
    # module's name stands where sys.argv[0] (the module's file) is.
    options = sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv)]
    if options and options[-1] == "-m":
        return ["python", "-m", sys.orig_argv[len(options) + 1]]
    script = sys.argv[0]
    return ["python", script] if script.endswith(".py") else [Path(script).name]


def command_line(app: list[str], overrides: list[str]) -> str:
    """The command line that runs `app` once with `overrides`, quoted for a shell."""
    return shlex.join([*app, *overrides])
