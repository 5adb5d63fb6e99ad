"""`hydra.sweeper.warm_start`: start a search informed by an earlier study of the same space.

The earlier study's finished trials (complete and pruned) whose parameters fit this search's
space are added to this study with Optuna's `add_trials`, so that the sampler sees them from the
first trial. They are marked as imported: they do not count toward `n_trials`, they are never
this sweep's best, and compare lists them as imported, not as runs. Their successive-halving rung
records are left behind: measured here, a 5-minute search whose new trials had to beat the
earlier study's best at every rung completed none.

    hydra.sweeper.warm_start=mlp_mnist_monday                    (a study in the same storage)
    hydra.sweeper.warm_start='{study_name: old, storage: sqlite:///old.db}'
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.storage import JOURNAL_PREFIX, open_storage
from mlp_sweep.sweeping.sweep_settings import fits

log = logging.getLogger(__name__)

KEY = "hydra.sweeper.warm_start"


def own_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials that sweeps ran, without those a warm start imported."""
    return [t for t in study.get_trials(deepcopy=False) if not trial_attrs.imported_from(t)]


def trials_to_import(spec: Any, storage: str | None, space: dict[str, BaseDistribution],
                     directions: list[str], conditional: bool = False) -> list[FrozenTrial]:
    """The earlier study's finished trials that fit `space`, as trials of this study; UserError
    when the study is not there or none of its trials fits. Opens nothing it would create.

    With `conditional` (the sweep has a custom search space) a trial may set keys beyond `space`:
    those its custom search space added (`optimizer.momentum` for an SGD trial), imported with
    the distributions they were sampled from."""
    if spec is None:
        return []
    name, source = _study_and_storage(spec, storage)
    source_storage = open_storage(source)
    names = optuna.study.get_all_study_names(source_storage)
    if name not in names:
        raise UserError(f"{KEY}={name!r}: no such study in {source}; allowed: "
                        f"{', '.join(sorted(names)) or 'none there yet'}")
    earlier = optuna.load_study(study_name=name, storage=source_storage)
    wanted = [optuna.study.StudyDirection[d.upper()] for d in directions]
    if earlier.directions != wanted:
        raise UserError(f"{KEY}={name!r} has directions {[d.name.lower() for d in earlier.directions]}"
                        f"; allowed: a study with this sweep's {directions}")
    finished = earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    fitting = [t for t in finished if _fits_space(t.params, space, conditional)]
    if not fitting:
        extra = " (and the keys its custom search space adds)" if conditional else ""
        raise UserError(f"{KEY}={name!r}: none of its {len(finished)} finished trials fits this "
                        f"search's space; allowed: a study whose trials set exactly "
                        f"{', '.join(sorted(space))}{extra}, each within its range")
    return [_as_imported(t, name, space) for t in fitting]


def import_trials(study: optuna.Study, trials: list[FrozenTrial]) -> None:
    """Add the trials once: a resumed study that holds imported trials gets no second copy."""
    if not trials or any(trial_attrs.imported_from(t) for t in study.get_trials(deepcopy=False)):
        return
    study.add_trials(trials)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    log.info(f"Warm start: {len(trials)} trials imported from study "
             f"{trial_attrs.imported_from(trials[0]).split('#')[0]} ({complete} complete); "
             "not counted in n_trials")


def _study_and_storage(spec: Any, storage: str | None) -> tuple[str, str]:
    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_container(spec)
    if isinstance(spec, str):
        spec = {"study_name": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("study_name"), str) \
            or set(spec) - {"study_name", "storage"}:
        raise UserError(f"{KEY}={spec!r} is not allowed; allowed: a study name, or "
                        "{study_name: NAME, storage: URL}")
    source = spec.get("storage") or storage
    if source is None:
        raise UserError(f"{KEY}={spec['study_name']!r} needs a storage, and this sweep's is in "
                        "memory; allowed: {study_name: NAME, storage: URL}, or a hydra.sweeper.storage")
    path = _file_of(source)
    if path is not None and not path.is_file():  # opening it would create an empty database
        raise UserError(f"{KEY}={spec['study_name']!r}: its storage {source} does not exist; "
                        "allowed: the storage of a finished study")
    return spec["study_name"], source


def _file_of(storage: str) -> Path | None:
    """The file a SQLite or journal storage keeps its studies in; None for a database server."""
    for prefix in ("sqlite:///", JOURNAL_PREFIX):
        if storage.startswith(prefix):
            return Path(storage[len(prefix):])
    return None


def _fits_space(params: dict[str, Any], space: dict[str, BaseDistribution],
                conditional: bool) -> bool:
    keys_fit = params.keys() >= space.keys() if conditional else params.keys() == space.keys()
    return keys_fit and all(fits(space[k], params[k]) for k in space)


def _as_imported(trial: FrozenTrial, study_name: str, space: dict[str, BaseDistribution]) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=trial.state, params=trial.params,
        distributions={k: space.get(k, trial.distributions[k]) for k in trial.params},
        values=trial.values if trial.state == TrialState.COMPLETE else None,
        intermediate_values=trial.intermediate_values,
        user_attrs={trial_attrs.IMPORTED: f"{study_name}#{trial.number}"})
