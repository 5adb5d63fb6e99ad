"""The private Optuna and Hydra names the sweeper uses (mlp_sweep.sweeping.optuna_compat) are
still there in the installed versions: a version that drops one fails here, by name."""

import importlib

import optuna
import pytest

from mlp_sweep.sweeping import optuna_compat


def resolve(where: str, attribute: str) -> object:
    """`where` is a module, or a module and a class in it (optuna.study.Study)."""
    try:
        return getattr(importlib.import_module(where), attribute)
    except ModuleNotFoundError:
        module, _, cls = where.rpartition(".")
        return getattr(getattr(importlib.import_module(module), cls), attribute)


@pytest.mark.parametrize("where, attribute",
                         [n for n in optuna_compat.PRIVATE_NAMES if not n[1].startswith("_")])
def test_a_private_function_is_still_there(where, attribute):
    assert callable(resolve(where, attribute)), f"{where}.{attribute} is gone"


def test_the_private_attributes_of_a_study_and_its_trials_are_still_there():
    # Instance attributes: looked for on a real study and its trials.
    study = optuna.create_study(storage=None)
    trial = study.ask()
    owners = {"optuna.study.Study": study, "optuna.trial.Trial": trial,
              "optuna.trial.FrozenTrial": study.trials[0]}
    for where, attribute in optuna_compat.PRIVATE_NAMES:
        if attribute.startswith("_"):
            assert hasattr(owners[where], attribute), f"{where}.{attribute} is gone"
    assert optuna_compat.trial_id(trial) == optuna_compat.trial_id(study.trials[0])
    again = optuna_compat.trial_from_id(study, optuna_compat.trial_id(trial))
    again.report(1.0, step=0)
    assert study.trials[0].intermediate_values == {0: 1.0}


def test_the_stock_sweepers_reading_of_params_still_gives_distributions():
    space, fixed, other = optuna_compat.parse_sweep_overrides(
        ["x=interval(0,1)", "y=choice(a,b)", "z=3", "+w=range(1,4)"])
    assert isinstance(space["x"], optuna.distributions.FloatDistribution)
    assert space["y"].choices == ("a", "b")
    assert fixed == {"z": "3"}  # as written: Hydra reads it again in the job
    assert set(space) == {"x", "y", "+w"} and other == []
