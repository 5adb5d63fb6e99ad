"""The settings a study was created with, so that a resumed study never mixes runs of others.

A study's trials are only comparable when everything the search does not vary is the same: the
epochs, the dataset, the objective, the fixed model and optimizer keys. The first sweep on a study
records those settings in it; a later command that would add trials under other settings stops
with one line naming the keys that differ. Searched keys (and the sub-keys of a searched group)
and the keys the app names as how a run executes (`hydra.sweeper.execution_keys`: progress bars,
threads, device, data folder, experiment trackers) are not settings; neither is anything under
`hydra` (n_trials, the sweep folder, the sampler's seed), so growing n_trials or changing the
sweep folder resumes the study.
"""

from collections.abc import Iterable
from typing import Any

import optuna
from omegaconf import DictConfig

from mlp_sweep.errors import UserError
from mlp_sweep.values import flatten, resolved_without_hydra

SETTINGS_ATTR = "settings"
ABSENT = "(absent)"


def study_settings(config: DictConfig, searched: Iterable[str],
                   execution_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The composed config as flat `key: value` pairs, less the searched and execution keys
    (each with its sub-keys)."""
    # Each key resolved against the whole config, as the job will see it; `hydra` is left out
    # (its own interpolations only resolve while Hydra runs).
    flat = flatten(resolved_without_hydra(config), keep_empty=True)
    skipped = (*searched, *execution_keys)
    return {k: v for k, v in flat.items()
            if not any(k == s or k.startswith(f"{s}.") for s in skipped)}


def check_same_settings(study: optuna.Study, settings: dict[str, Any], storage: str | None) -> None:
    """Record `settings` in a study that has none; raise UserError when the study holds others."""
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    differ = sorted(k for k in stored.keys() | settings.keys()
                    if stored.get(k, ABSENT) != settings.get(k, ABSENT))
    if not differ:
        return
    shown = ", ".join(f"{k}={_text(settings.get(k, ABSENT))} (the study's: "
                      f"{_text(stored.get(k, ABSENT))})" for k in differ[:6])
    more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
    raise UserError(f"study {study.study_name} in {storage or 'memory'} holds trials run with "
                    f"other settings: {shown}{more}; allowed: the study's settings, to resume it, "
                    "or another study for these: hydra.sweeper.study_name=NEW_NAME")


def _text(value: Any) -> str:
    return value if value == ABSENT else repr(value)
