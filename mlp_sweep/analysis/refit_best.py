"""The refit behind `python -m mlp_sweep.refit` (where its method is described): the sweep's
best trial, or a trial's own folder, trained again on training + validation images per seed."""

import json
import logging
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from mlp_sweep.analysis.runs import find_runs
from mlp_sweep.analysis.stored_study import load_stored_study
from mlp_sweep.errors import UserError
from mlp_sweep.files import load_yaml

log = logging.getLogger(__name__)

REFIT_FILE = "refit.json"


def best_trial_dir(sweep_dir: Path) -> Path:
    """The folder of the sweep's best completed trial: the one best.yaml names (the study's best,
    across resumed sweeps), else the best completed run in the folder by its objective. A run's
    own folder names itself."""
    if (sweep_dir / ".hydra" / "config.yaml").is_file() and (sweep_dir / "metrics.json").is_file():
        return sweep_dir
    best = load_yaml(sweep_dir / "best.yaml")
    if best.get("run_dir") and Path(best["run_dir"], ".hydra", "config.yaml").is_file():
        return Path(best["run_dir"])
    completed = [r for r in find_runs([str(sweep_dir)]) if r.state == "completed" and r.metrics]
    if not completed:
        raise UserError(f"{sweep_dir} holds no completed trial to refit; allowed: a sweep folder "
                        "with at least one completed run")
    return max(completed, key=lambda r: r.metrics[r.metrics["objective"]]).folder


def best_trial_of_study(study_name: str, storage: str) -> Path:
    """The folder, on this host, of the best completed trial of the study `study_name` in
    `storage`: its own when it is here, else fetched from the sweep's artifact store."""
    from mlp_sweep.sweeping.artifacts import local_run_dir
    from mlp_sweep.sweeping.results import best_of
    from mlp_sweep.sweeping.warm_start import own_trials

    study = load_stored_study(study_name, storage)
    best = best_of(study, own_trials(study))
    if best is None:
        raise UserError(f"study {study_name!r} has no completed trial to refit (or several "
                        "objectives); allowed: a study with a best trial")
    folder = local_run_dir(study_name, best, with_model=True)
    if folder is None:
        from mlp_sweep.sweeping import trial_attrs

        raise UserError(f"the best trial {best.number} of study {study_name!r} ran in "
                        f"{trial_attrs.run_dir(best)} ({trial_attrs.worker(best)}), which is "
                        "not on this host, and its files are in no artifact store reachable "
                        "from here; allowed: a sweep run with hydra.sweeper.artifacts=URL, or "
                        "the refit on the host that trained it")
    return folder


def refit(trial_dir: Path, seeds: int, out_dir: Path) -> dict:
    """Train `trial_dir`'s config on train + validation with seeds 0..seeds-1; the summary."""
    from mlp_sweep.training.run import train_run  # imports torch: after the arguments are checked

    trial_cfg = OmegaConf.load(trial_dir / ".hydra" / "config.yaml")
    trial_metrics = json.loads((trial_dir / "metrics.json").read_text())
    accuracies = []
    for seed in range(seeds):
        cfg = trial_cfg.copy()
        # No held-out data, so nothing to select an epoch or stop on: the test accuracy is the
        # last epoch's, as in the course recipe. A trial limited to N training images gets
        # N + the validation images.
        if cfg.dataset.get("train_limit") is not None:
            OmegaConf.update(cfg, "dataset.train_limit",
                             cfg.dataset.train_limit + (cfg.dataset.get("val_size") or 0))
        OmegaConf.update(cfg, "dataset.val_size", 0)
        OmegaConf.update(cfg, "objective", "test_accuracy")
        OmegaConf.update(cfg, "trainer.early_stopping", 0)
        OmegaConf.update(cfg, "trainer.seed", seed)
        OmegaConf.update(cfg, "trainer.progress", False)
        log.info(f"refit of {trial_dir}, seed {seed}: {cfg.trainer.epochs} epochs on training + "
                 "validation images")
        run_dir = out_dir / f"seed_{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml")
        accuracies.append(train_run(cfg, run_dir))
    return {
        "trial_dir": str(trial_dir),
        "trial_val_accuracy": trial_metrics.get("val_accuracy"),
        "trial_test_accuracy": trial_metrics.get("test_accuracy"),
        "epochs": trial_cfg.trainer.epochs,
        "seeds": list(range(seeds)),
        "test_accuracy": accuracies,
        "test_accuracy_mean": statistics.fmean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if seeds > 1 else 0.0,
    }
