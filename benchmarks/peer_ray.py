"""Ray Tune on the preset's space: ASHA (grace period 1 epoch, reduction factor 3, max = the
preset's epochs) with Ray's OptunaSearch (TPE), one trial at a time on a one-CPU local cluster.

    python benchmarks/peer_ray.py OUT --seed 0 --budget 600 [OVERRIDES...]

The trainable is the project's own training (`peer_trials.run_trial`), reporting to Tune after
every epoch through the training API's per-epoch callback. Trials go to OUT/trials/TRIAL_ID/.
"""

import argparse
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from peer_trials import compose_trial, preset_space, run_trial


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

    def trainable(params: dict) -> None:
        run_dir = out / "trials" / tune.get_context().get_trial_id()
        run_trial(run_dir, params, overrides, on_epoch=lambda metrics: tune.report(
            {"val_accuracy": metrics.val_accuracy, "epoch": metrics.epoch}))

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                num_samples=-1, time_budget_s=args.budget,
                search_alg=OptunaSearch(space=space, metric="val_accuracy", mode="max",
                                        seed=args.seed),
                scheduler=ASHAScheduler(time_attr="training_iteration", metric="val_accuracy",
                                        mode="max", max_t=max_epochs, grace_period=1,
                                        reduction_factor=3)),
            run_config=tune.RunConfig(storage_path=str(out / "ray"), name="tune", verbose=0))
        tuner.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
