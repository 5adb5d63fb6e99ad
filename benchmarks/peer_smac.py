"""SMAC3's multi-fidelity facade (Hyperband over random-forest BO) on the preset's space, with
epochs as the budget (1 to the preset's epochs), one trial at a time.

    python benchmarks/peer_smac.py --seed 0 --budget 600 [--head-start] OUT [OVERRIDES...]

With --head-start the preset's recipe joins SMAC's initial design (`additional_configs`), first:
SMAC appends it after its random configurations (100 for this space), where a head start would
come after most of a 10-minute budget.

SMAC asks for a configuration at a budget; each trial trains that many epochs from scratch with
the project's own training (`peer_trials.run_trial`, `trainer.epochs=BUDGET`, so a schedule
spans the trial's own epochs) and returns 1 - validation accuracy. Trials go to OUT/trials/N/.
"""

import itertools

from ConfigSpace import Categorical, Configuration, ConfigurationSpace, Float, Integer
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from smac import MultiFidelityFacade, Scenario
from smac.initial_design import RandomInitialDesign

from peer_trials import peer_search, run_trial


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


class RecipeFirst(RandomInitialDesign):
    """The facade's own initial design (random configurations), with the additional ones first."""

    def select_configurations(self) -> list[Configuration]:
        configs = super().select_configurations()
        first = [c for c in configs if c in self._additional_configs]
        return first + [c for c in configs if c not in first]


def _plain(value):
    """A ConfigSpace value (a numpy scalar) as the Python value the overrides and JSON take."""
    return value.item() if hasattr(value, "item") else value


def main() -> None:
    search = peer_search(__doc__)
    numbers = itertools.count()

    def train(config, seed: int = 0, budget: float = search.max_epochs) -> float:
        epochs = max(1, round(budget))
        params = {key: _plain(value) for key, value in dict(config).items()}
        value = run_trial(search.out / "trials" / str(next(numbers)), params,
                          [*search.overrides, f"trainer.epochs={epochs}"])
        return 1.0 - value

    space = config_space(search.space, search.seed)
    scenario = Scenario(space, deterministic=True,
                        walltime_limit=search.budget_s, n_trials=100_000, min_budget=1,
                        max_budget=search.max_epochs, seed=search.seed,
                        output_directory=search.out / "smac")
    first = [Configuration(space, values=search.first)] if search.first else None
    initial_design = RecipeFirst(scenario=scenario, additional_configs=first)
    MultiFidelityFacade(scenario, train, initial_design=initial_design, overwrite=True,
                        logging_level=40).optimize()


if __name__ == "__main__":
    main()
