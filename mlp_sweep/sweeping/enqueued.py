"""`hydra.sweeper.enqueue_trials`: parameter sets a search runs first (a config the user already
trusts), through Optuna's `enqueue_trial`; they count in `n_trials`, and a partial set lets the
sampler choose the rest."""

from collections.abc import Mapping
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.optuna_compat import enqueued_params
from mlp_sweep.sweeping.sweep_settings import describe, fits
from mlp_sweep.sweeping.warm_start import own_trials


def checked_trials(entries: Any, space: dict[str, BaseDistribution],
                   fixed: Mapping[str, Any] = {}) -> list[dict[str, Any]]:
    """The enqueued parameter sets, each key in the search space and each value in its range. A
    key the command line fixes (`model.width=512`) is left out of every set: the command wins."""
    if entries is None:
        return []
    entries = OmegaConf.to_container(entries) if OmegaConf.is_config(entries) else entries
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise UserError(f"hydra.sweeper.enqueue_trials={entries!r} is not allowed; allowed: a list "
                        "of parameter sets, e.g. [{model.width: 512, activation: gelu}]")
    sets = []
    for number, params in enumerate(entries):
        for key, value in params.items():
            where = f"hydra.sweeper.enqueue_trials[{number}].{key}={value!r}"
            if key in fixed:
                continue
            if key not in space:
                raise UserError(f"{where} is not in the search space; allowed: "
                                f"{', '.join(sorted(space))}")
            if not fits(space[key], value):
                raise UserError(f"{where} is outside its range; allowed: {describe(space[key])} "
                                "(or hydra.sweeper.enqueue_trials=[] to start without it)")
        sets.append({key: value for key, value in params.items() if key not in fixed})
    return sets


def enqueue(study: optuna.Study, trials: list[dict[str, Any]]) -> None:
    """Queue each set once: running the same command again (a resume) adds no second copy. A
    trial a warm start imported with the same parameters does not count: the set is run first,
    as the config says."""
    queued = [enqueued_params(t) or t.params for t in own_trials(study)]
    for params in trials:
        if params not in queued:
            # marked as the sweep's in the write that creates it, as every trial it asks is
            study.enqueue_trial(params, user_attrs={trial_attrs.ASKED: True})
            queued.append(params)
