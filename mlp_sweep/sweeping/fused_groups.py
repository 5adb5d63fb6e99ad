"""`hydra.sweeper.fuse`: trials asked in groups, each group trained by one job.

A group's first trial is asked as any trial; the others with the `fuse_by` keys fixed to its
values (Optuna's `enqueue_trial` with a partial set: the sampler chooses the rest, per trial). A
trial that comes back with other values (another worker's queued trial was first in the queue)
starts a group of its own.

The job reads its group from its first trial's trial.json (`TrialSpec.fused`: the other trials'
folders). Each other trial's folder gets its own trial.json and the `.hydra/` files Hydra writes
for a job, composed from that trial's overrides, so that it reads as any run folder (compare,
refit, best.yaml) and its job can load its config. The job returns {trial number: outcome}.
"""

import copy
from collections.abc import Callable, Mapping
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.trial import TrialState

from mlp_sweep.errors import UserError
from mlp_sweep.files import write_text
from mlp_sweep.sweeping import trial_attrs


def ask_groups(study: optuna.Study, ask: Callable[[], optuna.Trial | None], *, jobs: int,
               fuse: int, fuse_by: tuple[str, ...], missing: int,
               alone: Callable[[optuna.Trial], bool] = lambda trial: False
               ) -> list[list[optuna.Trial]]:
    """Up to `jobs` groups of up to `fuse` trials, `missing` trials at most in all; a trial for
    which `alone` says so (one that goes on from an earlier attempt) is a group of its own."""
    groups: list[list[optuna.Trial]] = []
    asked = 0
    while len(groups) < jobs and asked < missing:
        first = ask()
        if first is None:
            break
        asked += 1
        group = [first]
        shared = {key: first.params[key] for key in fuse_by if key in first.params}
        # A queued trial (enqueue_trials, a heartbeat retry) is asked first, as a group's first.
        while len(group) < fuse and asked < missing and not alone(first) and not _queued(study):
            if shared:
                study.enqueue_trial(shared, user_attrs={trial_attrs.ASKED: True})
            trial = ask()
            if trial is None:
                break
            asked += 1
            if all(trial.params.get(key) == value for key, value in shared.items()):
                group.append(trial)
            else:
                groups.append([trial])
        groups.append(group)
    return groups


def check_fuse_by(fuse_by: tuple[str, ...], space: Mapping[str, object],
                  fixed: Mapping[str, object]) -> None:
    """Each `fuse_by` key is searched, or fixed on the command line (shared by every trial)."""
    for key in fuse_by:
        if key not in space and key not in fixed:
            raise UserError(f"hydra.sweeper.fuse_by names {key}, which is not searched; allowed: "
                            f"keys of hydra.sweeper.params ({', '.join(sorted(space))})")


def _queued(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def write_job_files(config_loader, sweep_config: DictConfig, overrides: list[str],
                    run_dir: Path) -> None:
    """The `.hydra/` files (config.yaml, hydra.yaml, overrides.yaml) Hydra writes for a job with
    these overrides, written into `run_dir` for a trial that another trial's job trains."""
    config = config_loader.load_sweep_config(sweep_config, list(overrides))
    subdir = config.hydra.output_subdir
    if subdir is None:
        return
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(run_dir)
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    folder = Path(run_dir, subdir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", task), ("hydra.yaml", OmegaConf.masked_copy(config, "hydra")),
                       ("overrides.yaml", config.hydra.overrides.task)):
        write_text(folder / name, OmegaConf.to_yaml(node))


def member_result(value: object, number: int) -> object:
    """Trial `number`'s outcome in a group job's return: its value, or the TrialPruned it ended
    with; an error it ended with is raised, as a single job's would be."""
    if not isinstance(value, Mapping) or number not in value:
        raise ValueError(f"a job that trains a group of trials (hydra.sweeper.fuse) returns "
                         f"{{trial number: value}} for each; it returned {value!r}")
    outcome = value[number]
    if isinstance(outcome, BaseException) and not isinstance(outcome, optuna.TrialPruned):
        raise outcome
    return outcome
