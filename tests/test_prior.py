"""`hydra.sweeper.prior`: a share of the early trials drawn from where a preset expects the good
values, fading as the study learns; enqueued trials keep their own parameters; a bad entry is
one line. The sampler is Optuna's own, wrapped (mlp_sweep/sweeping/prior.py)."""

import math
import os

import numpy
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.prior import FROM_PRIOR, PriorSampler, checked_prior

from conftest import SMALL_DATA, run_here

SPACE = {"x": FloatDistribution(0.0, 1.0), "n": IntDistribution(16, 1024, log=True),
         "kind": CategoricalDistribution(["a", "b", "c"])}
PRIOR = {"share": 0.8, "halved_after": 5,
         "params": {"x": {"centre": 0.9, "spread": 0.02}, "n": {"centre": 512, "spread": 1.2},
                    "kind": {"c": 1.0}}}


def study_with(prior: dict, seed: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = PriorSampler(optuna.samplers.RandomSampler(seed=seed), checked_prior(prior, SPACE),
                           seed=seed)
    return optuna.create_study(sampler=sampler)


def run(study: optuna.Study, trials: int) -> list[optuna.trial.FrozenTrial]:
    for _ in range(trials):
        trial = study.ask(SPACE)
        study.tell(trial, trial.params["x"])
    return study.trials


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_prior_shapes_a_share_of_the_trials_that_fades_as_they_finish(seed):
    trials = run(study_with(PRIOR, seed), 300)
    drawn = [bool(t.user_attrs.get(FROM_PRIOR)) for t in trials]
    # The chance of trial n is 0.8 * 5 / (5 + n): the count drawn is within 4 standard deviations
    chances = [0.8 * 5 / (5 + n) for n in range(300)]
    expected, spread = sum(chances), math.sqrt(sum(p * (1 - p) for p in chances))
    assert abs(sum(drawn) - expected) < 4 * spread
    assert sum(drawn[:10]) >= 3 and sum(drawn[-150:]) <= 8  # early many, late few
    for trial, from_prior in zip(trials, drawn):
        if from_prior:  # every parameter the prior names, from it
            assert 0.8 < trial.params["x"] <= 1.0 and trial.params["kind"] == "c"
            assert 300 < trial.params["n"] < 900
    others = [t.params["x"] for t, d in zip(trials, drawn) if not d]
    assert min(others) < 0.3  # the rest from the sampler: the whole range


def test_a_share_of_0_is_no_prior_and_no_params_is_no_prior():
    assert checked_prior({**PRIOR, "share": 0}, SPACE) is None
    assert checked_prior({"share": 0.5, "params": {}}, SPACE) is None
    assert checked_prior(None, SPACE) is None


def test_enqueued_trials_keep_their_parameters_and_a_trial_is_drawn_once():
    study = study_with({**PRIOR, "share": 1.0, "halved_after": 1e9})
    draws = []

    class CountedDraws(numpy.random.RandomState):  # counts the sampler's coin flips
        def uniform(self, *args):
            draws.append(1)
            return super().uniform(*args)

    study.sampler._rng = CountedDraws(0)
    study.enqueue_trial({"x": 0.1, "n": 16, "kind": "a"})
    first = study.ask(SPACE)
    assert first.params == {"x": 0.1, "n": 16, "kind": "a"}
    assert FROM_PRIOR not in study.trials[0].user_attrs and draws == []
    second = study.ask(SPACE)
    assert study.trials[1].user_attrs[FROM_PRIOR] is True and len(draws) == 1
    # Optuna calls before_trial again for every Trial object of a running trial (a job's
    # reports): no second draw
    optuna.Trial(study, second._trial_id)
    assert len(draws) == 1


def test_the_prior_wraps_multivariate_tpe_with_the_constant_liar():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tpe = optuna.samplers.TPESampler(multivariate=True, constant_liar=True, n_startup_trials=1,
                                     seed=0)
    study = optuna.create_study(sampler=PriorSampler(tpe, checked_prior(PRIOR, SPACE), seed=0),
                                direction="maximize")
    running = [study.ask(SPACE) for _ in range(3)]  # asked side by side, as workers do
    for trial in running:
        study.tell(trial, trial.params["x"])
    trials = run(study, 40)
    drawn = [t for t in trials if t.user_attrs.get(FROM_PRIOR)]
    tpe_trials = [t for t in trials[10:] if not t.user_attrs.get(FROM_PRIOR)]
    assert drawn and all(0.8 < t.params["x"] <= 1.0 and t.params["kind"] == "c" for t in drawn)
    # TPE learns from every trial, the prior's too: it maximises x, late trials lean high
    assert numpy.median([t.params["x"] for t in tpe_trials]) > 0.6


def test_draws_stay_in_the_range_and_on_its_steps():
    space = {"depth": IntDistribution(1, 4), "lr": FloatDistribution(1e-4, 1e-2, log=True),
             "p": FloatDistribution(0.0, 0.5, step=0.1)}
    prior = checked_prior({"share": 1.0, "params": {"depth": {"centre": 4, "spread": 3},
                                                    "lr": {"centre": 1e-2, "spread": 10},
                                                    "p": {"centre": 0.05, "spread": 1}}}, space)
    rng = numpy.random.RandomState(0)
    for _ in range(500):
        depth = prior.params["depth"].draw(space["depth"], rng)
        lr = prior.params["lr"].draw(space["lr"], rng)
        p = prior.params["p"].draw(space["p"], rng)
        assert isinstance(depth, int) and 1 <= depth <= 4
        assert 1e-4 <= lr <= 1e-2
        assert 0 <= p <= 0.5 and math.isclose(p * 10, round(p * 10))


@pytest.mark.parametrize(("prior", "message"), [
    ({"share": 1.5, "params": {"x": {"centre": 0.5, "spread": 0.1}}},
     "hydra.sweeper.prior.share=1.5 is not allowed; allowed: a number from 0 to 1"),
    ({"share": 0.5, "halved_after": 0, "params": {"x": {"centre": 0.5, "spread": 0.1}}},
     "hydra.sweeper.prior.halved_after=0 is not allowed"),
    ({"share": 0.5, "often": 2}, "hydra.sweeper.prior.often is not a prior's key"),
    ({"share": 0.5, "params": {"y": {"centre": 0.5, "spread": 0.1}}},
     "hydra.sweeper.prior.params.y is not in the search space; allowed: kind, n, x"),
    ({"share": 0.5, "params": {"x": {"centre": 2, "spread": 0.1}}},
     "hydra.sweeper.prior.params.x={'centre': 2, 'spread': 0.1} is not allowed; allowed: "
     "{centre: C, spread: S}, C a number from 0 to 1, S > 0"),
    ({"share": 0.5, "params": {"n": {"centre": 64, "spread": 0.5}}},
     "S > 0 (a factor > 1: the parameter is log-scaled)"),
    ({"share": 0.5, "params": {"kind": {"d": 1.0}}},
     "hydra.sweeper.prior.params.kind={'d': 1.0} is not allowed; allowed: weights >= 0 (not all "
     "0) over its choices, e.g. {a: 0.7, c: 0.3}"),
    ({"share": 0.5, "params": {"kind": {"a": 0}}}, "not all 0"),
])
def test_a_bad_prior_is_one_line_naming_the_value_and_what_is_allowed(prior, message):
    with pytest.raises(UserError) as error:
        checked_prior(prior, SPACE)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_key_the_command_line_fixes_is_left_out_of_the_prior():
    prior = checked_prior(PRIOR, SPACE, fixed={"x": 0.3})
    assert set(prior.params) == {"n", "kind"}


def test_the_search_draws_from_a_prior_config_and_runs_the_recipe_first(tmp_path, small_root):
    """The `bad` prior, every trial after the recipe drawn from it: one layer of about 64
    units without normalisation, batches of 128."""
    os.environ.pop("MLP_SWEEP_SWEEP_WORKER", None)
    result = run_here("--multirun", "hparams_search=optuna", "hydra/sweeper/prior=bad",
                      "hydra.sweeper.prior.share=1.0", "hydra.sweeper.prior.halved_after=1000",
                      "hydra.sweeper.n_trials=4", "hydra.sweeper.workers=1", "trainer.epochs=1",
                      f"dataset.root={small_root}", *SMALL_DATA, "dataset.val_size=500",
                      "hydra.sweeper.storage=sqlite:///o.db", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Prior on model.depth, model.width" in result.stdout + result.stderr
    trials = optuna.load_study(study_name="mlp_fashion_mnist",
                               storage=f"sqlite:///{tmp_path}/o.db").trials
    recipe, *drawn = trials
    assert recipe.params["model.width"] == 256 and FROM_PRIOR not in recipe.user_attrs
    assert len(drawn) == 3
    for trial in drawn:
        assert trial.user_attrs[FROM_PRIOR] is True
        assert trial.params["model.depth"] == 1 and 64 <= trial.params["model.width"] < 120
        assert trial.params["model.norm"] == "none" and trial.params["trainer.batch_size"] == 128


def test_a_prior_with_a_grid_is_one_line(tmp_path, small_root):
    result = run_here("--multirun", "hparams_search=optuna_course", "hydra/sweeper/sampler=grid",
                      "optimizer.lr=0.01", "hydra.sweeper.prior.share=0.5",
                      "hydra.sweeper.prior.params={activation: {relu: 1}}",
                      f"dataset.root={small_root}", *SMALL_DATA,
                      "hydra.sweeper.storage=sqlite:///o.db", cwd=tmp_path)
    assert result.returncode == 1
    assert "hydra.sweeper.prior shapes what a sampler proposes, and a grid proposes every point" \
        in result.stdout + result.stderr
