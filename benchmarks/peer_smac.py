"""SMAC3's multi-fidelity facade (Hyperband over random-forest BO) on the preset's space, with
epochs as the budget (1 to the preset's epochs), one trial at a time.

    python benchmarks/peer_smac.py OUT --seed 0 --budget 600 [OVERRIDES...]

SMAC asks for a configuration at a budget; each trial trains that many epochs from scratch with
the project's own training (`peer_trials.run_trial`, `trainer.epochs=BUDGET`, so a schedule
spans the trial's own epochs) and returns 1 - validation accuracy. Trials go to OUT/trials/N/.
"""

import argparse
import itertools
from pathlib import Path

from ConfigSpace import Categorical, ConfigurationSpace, Float, Integer
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from smac import MultiFidelityFacade, Scenario

from peer_trials import compose_trial, preset_space, run_trial


def config_space(space: dict[str, BaseDistribution], seed: int) -> ConfigurationSpace:
    """The same space in ConfigSpace's terms."""
    def hyperparameter(name: str, distribution: BaseDistribution):
        if isinstance(distribution, FloatDistribution):
            return Float(name, (distribution.low, distribution.high), log=distribution.log)
        if isinstance(distribution, IntDistribution):
            return Integer(name, (distribution.low, distribution.high), log=distribution.log)
        if isinstance(distribution, CategoricalDistribution):
            return Categorical(name, list(distribution.choices))
        raise TypeError(f"{name}: no ConfigSpace form for {distribution}")

    return ConfigurationSpace(seed=seed, space=[hyperparameter(n, d) for n, d in space.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--budget", type=float, required=True, help="seconds")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = args.out.absolute()
    space, overrides = preset_space(args.overrides)
    max_epochs = int(compose_trial(overrides).trainer.epochs)
    numbers = itertools.count()

    def train(config, seed: int = 0, budget: float = max_epochs) -> float:
        epochs = max(1, round(budget))
        params = {key: getattr(value, "item", lambda: value)() for key, value in dict(config).items()}
        value = run_trial(out / "trials" / str(next(numbers)), params,
                          [*overrides, f"trainer.epochs={epochs}"])
        return 1.0 - value

    scenario = Scenario(config_space(space, args.seed), deterministic=True,
                        walltime_limit=args.budget, n_trials=100_000, min_budget=1,
                        max_budget=max_epochs, seed=args.seed, output_directory=out / "smac")
    MultiFidelityFacade(scenario, train, overwrite=True, logging_level=40).optimize()


if __name__ == "__main__":
    main()
