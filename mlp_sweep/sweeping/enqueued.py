"""`hydra.sweeper.enqueue_trials`: parameter sets a search runs first (a config the user already
trusts), through Optuna's `enqueue_trial`; they count in `n_trials`, and a partial set lets the
sampler choose the rest."""

import math
from collections.abc import Mapping
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from mlp_sweep.errors import UserError


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
    """Queue each set once: running the same command again (a resume) adds no second copy."""
    for params in trials:
        study.enqueue_trial(params, skip_if_exists=True)


def fits(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    step = distribution.step
    if isinstance(distribution, IntDistribution) and value != int(value):
        return False
    if step is not None and not math.isclose((value - distribution.low) / step,
                                             round((value - distribution.low) / step)):
        return False
    return distribution.low <= value <= distribution.high


def describe(distribution: BaseDistribution) -> str:
    """A distribution as a user reads it: `one of a, b`, `an integer from 1 to 4`."""
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(str(c) for c in distribution.choices)
    kind = "an integer" if isinstance(distribution, IntDistribution) else "a number"
    assert isinstance(distribution, (IntDistribution, FloatDistribution))
    steps = "" if distribution.step in (None, 1) else f" in steps of {distribution.step:g}"
    return f"{kind} from {distribution.low:g} to {distribution.high:g}{steps}"
