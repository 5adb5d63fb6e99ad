"""`hydra.sweeper.prior`: where a preset expects the good values of its space, shaping a share of
the sampler's early proposals, a share that fades as the study learns (the idea of πBO, Hvarfner
et al., ICLR 2022, and PriorBand, Mallik et al., NeurIPS 2023, by Optuna's own means: a sampler
that draws some trials from the prior and leaves the rest to the configured one).

    hydra.sweeper.prior:
      share: 0.5          # the chance that a trial is drawn from the prior at the study's start
      halved_after: 10    # finished trials after which that chance is halved: share * h / (h + n)
      params:
        model.depth: {centre: 3, spread: 0.7}      # a normal around the centre, within the range
        model.width: {centre: 900, spread: 1.5}    # log-scaled: the spread is a factor
        model.norm: {layer: 0.8, batch: 0.1, none: 0.1}   # a choice: weights

A trial drawn from the prior takes each parameter the prior names from it and the others at
random; it is recorded (`from_prior`) and the sampler learns from it as from any other, so a
wrong prior costs a share of the first trials and less after them. Trials queued by
`enqueue_trials`, and retries, keep their own parameters.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy
import optuna
from omegaconf import OmegaConf
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.sweep_settings import describe, fits
from mlp_sweep.values import is_number

FROM_PRIOR = "from_prior"  # the user attribute of a trial drawn from the prior
KEY = "hydra.sweeper.prior"


@dataclass(frozen=True)
class NumberPrior:
    """A normal around `centre`, `spread` its standard deviation (a factor for a log-scaled
    parameter), drawn again until it falls in the range."""

    centre: float
    spread: float

    def draw(self, distribution: FloatDistribution | IntDistribution,
             rng: numpy.random.RandomState) -> float | int:
        low, high = distribution.low, distribution.high
        for _ in range(100):
            if distribution.log:
                value = math.exp(rng.normal(math.log(self.centre), math.log(self.spread)))
            else:
                value = rng.normal(self.centre, self.spread)
            if low <= value <= high:
                break
        value = min(max(value, low), high)
        step = distribution.step
        if isinstance(distribution, IntDistribution):
            step = step or 1
        if step:
            value = min(low + round((value - low) / step) * step, high)
        return int(round(value)) if isinstance(distribution, IntDistribution) else float(value)


@dataclass(frozen=True)
class ChoicePrior:
    """Weights over a choice's values (by their text: `256` names the choice 256)."""

    weights: Mapping[str, float]

    def draw(self, distribution: CategoricalDistribution, rng: numpy.random.RandomState) -> Any:
        weights = numpy.array([self.weights.get(str(c), 0.0) for c in distribution.choices])
        return distribution.choices[rng.choice(len(weights), p=weights / weights.sum())]


@dataclass(frozen=True)
class Prior:
    share: float
    halved_after: float
    params: Mapping[str, NumberPrior | ChoicePrior]

    def chance(self, finished: int) -> float:
        """The chance that the next trial is drawn from the prior, `finished` trials on."""
        return self.share * self.halved_after / (self.halved_after + finished)


def checked_prior(config: Any, space: Mapping[str, BaseDistribution],
                  fixed: Mapping[str, Any] = {}) -> Prior | None:
    """The prior `hydra.sweeper.prior` gives for `space`, None when it shapes nothing; UserError
    for the first bad entry. A key the command line fixes is left out, as enqueued trials do."""
    config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config
    if not config:
        return None
    if not isinstance(config, Mapping):
        raise UserError(f"{KEY}={config!r} is not allowed; allowed: share, halved_after and "
                        "params, e.g. {share: 0.5, halved_after: 10, params: {x: {centre: 1, "
                        "spread: 0.5}}}")
    unknown = sorted(set(config) - {"share", "halved_after", "params"})
    if unknown:
        raise UserError(f"{KEY}.{unknown[0]} is not a prior's key; allowed: share, halved_after, "
                        "params")
    share, halved_after = config.get("share", 0.0), config.get("halved_after", 10)
    if not is_number(share) or not 0 <= share <= 1:
        raise UserError(f"{KEY}.share={share!r} is not allowed; allowed: a number from 0 to 1 "
                        "(0: no trial drawn from the prior)")
    if not is_number(halved_after) or halved_after <= 0:
        raise UserError(f"{KEY}.halved_after={halved_after!r} is not allowed; allowed: a number "
                        "of finished trials > 0")
    params = {}
    for name, entry in (config.get("params") or {}).items():
        if name in fixed:
            continue
        if name not in space:
            raise UserError(f"{KEY}.params.{name} is not in the search space; allowed: "
                            f"{', '.join(sorted(space))}")
        params[name] = _param_prior(name, entry, space[name])
    if share == 0 or not params:
        return None
    return Prior(float(share), float(halved_after), params)


def _param_prior(name: str, entry: Any, distribution: BaseDistribution) -> NumberPrior | ChoicePrior:
    where = f"{KEY}.params.{name}={entry!r}"
    if isinstance(distribution, CategoricalDistribution):
        texts = [str(c) for c in distribution.choices]
        if not isinstance(entry, Mapping) or not entry or not all(
                str(k) in texts and is_number(w) and w >= 0 for k, w in entry.items()) \
                or not sum(entry.values()) > 0:
            raise UserError(f"{where} is not allowed; allowed: weights >= 0 (not all 0) over "
                            f"its choices, e.g. {{{texts[0]}: 0.7, {texts[-1]}: 0.3}}")
        return ChoicePrior({str(k): float(w) for k, w in entry.items()})
    allowed = (f"{{centre: C, spread: S}}, C {describe(distribution)}, S > 0"
               + (" (a factor > 1: the parameter is log-scaled)" if distribution.log else ""))
    if not isinstance(entry, Mapping) or set(entry) != {"centre", "spread"} \
            or not all(is_number(v) for v in entry.values()):
        raise UserError(f"{where} is not allowed; allowed: {allowed}")
    centre, spread = entry["centre"], entry["spread"]
    in_range = FloatDistribution(distribution.low, distribution.high)  # any value, not a step's
    if not fits(in_range, float(centre)) or spread <= (1 if distribution.log else 0):
        raise UserError(f"{where} is not allowed; allowed: {allowed}")
    return NumberPrior(float(centre), float(spread))


class PriorSampler(BaseSampler):
    """`base`, but a trial is drawn from `prior` with the prior's chance at the moment it is
    asked (before_trial, which Optuna calls before any of its parameters is sampled)."""

    def __init__(self, base: BaseSampler, prior: Prior, seed: int | None = None) -> None:
        self.base, self.prior = base, prior
        # Two streams of their own: worker k's seed + 1 is worker k + 1's seed
        draws, others = (numpy.random.SeedSequence(seed).generate_state(2) if seed is not None
                         else (None, None))
        self._rng = numpy.random.RandomState(None if draws is None else int(draws))
        self._random = RandomSampler(seed=None if others is None else int(others))
        self._drawn: set[int] = set()  # the trial ids drawn from the prior, in this process

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space) -> dict:
        if trial._trial_id in self._drawn:
            return {}  # every parameter from sample_independent below
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if trial._trial_id not in self._drawn:
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        if param_name in self.prior.params:
            return self.prior.params[param_name].draw(param_distribution, self._rng)
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)
        # Optuna calls this for every Trial object made for a trial: the draw is made once, before
        # its parameters are sampled; an enqueued trial, or a retry, keeps its own
        if trial.params or "fixed_params" in trial.system_attrs:
            return
        # from the storage: Optuna passes the hyperband pruner's bracket here, not the study
        finished = len(study._storage.get_all_trials(
            study._study_id, deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if self._rng.uniform() < self.prior.chance(finished):
            self._drawn.add(trial._trial_id)
            study._storage.set_trial_user_attr(trial._trial_id, FROM_PRIOR, True)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values) -> None:
        self._drawn.discard(trial._trial_id)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._random.reseed_rng()
        self._rng.seed()
