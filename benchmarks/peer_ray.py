"""Ray Tune on the preset's space: ASHA (grace period 1 epoch, reduction factor 3, max = the
preset's epochs) with Ray's OptunaSearch (TPE), one trial at a time on a one-CPU local cluster,
or with --cpus N on an N-CPU cluster, N trials side by side, each given one CPU
(`tune.with_resources(trainable, {"cpu": 1})`) and one torch thread.

    python benchmarks/peer_ray.py --seed 0 --budget 600 [--head-start] [--cpus N] OUT [OVERRIDES...]

With --head-start the preset's recipe is the first point (OptunaSearch's `points_to_evaluate`).

The trainable is the project's own training (`peer_trials.run_trial`), reporting to Tune after
every epoch through the training API's per-epoch callback (the last one once the run has ended).
Trials go to OUT/trials/TRIAL_ID/.
"""

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from peer_trials import peer_search, run_trial


def trial_overrides(overrides: list[str], cpus: int) -> list[str]:
    """Every trial's overrides: on a cluster of several CPUs one torch thread a trial (the one
    CPU Ray gives it), unless the overrides set the threads."""
    if cpus == 1 or any(o.startswith("trainer.threads=") for o in overrides):
        return overrides
    return [*overrides, "trainer.threads=1"]


def main() -> None:
    search = peer_search(__doc__, cpus=True)
    overrides = trial_overrides(search.overrides, search.cpus)

    def trainable(params: dict) -> None:
        run_dir = search.out / "trials" / tune.get_context().get_trial_id()
        last: list[dict] = []

        def report(metrics) -> None:
            result = {"val_accuracy": metrics.val_accuracy, "epoch": metrics.epoch}
            # Ray ends a trial inside the report that reaches max_t (sys.exit): the last epoch is
            # reported once the run has ended, so that it reads the test set for the weights it
            # keeps, as the other methods' trials that train every epoch do.
            if metrics.epoch < search.max_epochs:
                tune.report(result)
            else:
                last.append(result)

        run_trial(run_dir, params, overrides, on_epoch=report)
        if last:
            tune.report(last[0])

    ray.init(num_cpus=search.cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        tuner = tune.Tuner(
            trainable if search.cpus == 1 else tune.with_resources(trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(
                num_samples=-1, time_budget_s=search.budget_s,
                search_alg=OptunaSearch(space=search.space, metric="val_accuracy", mode="max",
                                        seed=search.seed,
                                        points_to_evaluate=[search.first] if search.first else None),
                scheduler=ASHAScheduler(time_attr="training_iteration", metric="val_accuracy",
                                        mode="max", max_t=search.max_epochs, grace_period=1,
                                        reduction_factor=3)),
            run_config=tune.RunConfig(storage_path=str(search.out / "ray"), name="tune", verbose=0))
        tuner.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
