"""The one search space and the one trial that every peer of benchmarks/peers.py runs.

The space is `hparams_search=optuna`'s own `hydra.sweeper.params`, read by the stock plugin's
parser into Optuna distributions, so that Ray Tune and SMAC search exactly what the sweeper does.
A trial is a parameter set written as the sweeper writes its job overrides (`key=value`), composed
into the project's config and trained by `mlp_sweep.training.run.train_run`: the same code, the
same validation split, the same files (`.hydra/config.yaml`, `metrics.json` with each epoch's end
time), so the benchmark reads every method's trials the same way.
"""

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution

from mlp_sweep.sweeping.optuna_compat import parse_sweep_overrides
from mlp_sweep.sweeping.sweep_settings import fits
from mlp_sweep.training.engine import EpochMetrics
from mlp_sweep.training.run import train_run

PRESET = "optuna"


def compose_trial(overrides: list[str]) -> DictConfig:
    """The config `python -m mlp_sweep.train hparams_search=PRESET OVERRIDES` trains, with the
    sweeper's settings (`hydra.sweeper`) kept for the caller to read."""
    with initialize_config_module(config_module="mlp_sweep.conf"):
        return compose(config_name="train", overrides=[f"hparams_search={PRESET}", *overrides],
                       return_hydra_config=True)


def preset_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The preset's search space as Optuna distributions, and the overrides every trial is
    composed with. As on the sweeper's command line, a sweep override (`model.width=choice(16,32)`)
    replaces that key's range, and a plain value for a searched key fixes it."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    fixed = [o for o in parsed if not o.is_sweep_override()]
    fixed_keys = {o.get_key_element() for o in fixed}
    params = {**compose_trial([o.input_line for o in fixed]).hydra.sweeper.params,
              **{o.get_key_element(): o.input_line.split("=", 1)[1]
                 for o in parsed if o.is_sweep_override()}}
    space, _, _ = parse_sweep_overrides(
        [f"{key}={value}" for key, value in params.items() if key not in fixed_keys])
    return space, [o.input_line for o in fixed]


def param_overrides(params: dict) -> list[str]:
    """A parameter set as the sweeper's job overrides (`activation=gelu`, `model.width=512`)."""
    return [f"{key}={value}" for key, value in params.items()]


def run_trial(run_dir: Path, params: dict, overrides: list[str],
              on_epoch: Callable[[EpochMetrics], None] | None = None) -> float:
    """Train `params` (+ the benchmark's `overrides`) into `run_dir` and return the objective.

    The folder gets what a sweep's job folder has, so refit and compare read it as one."""
    job_overrides = [*overrides, *param_overrides(params)]
    cfg = compose_trial(job_overrides)
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(job_overrides))
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    (run_dir / "params.json").write_text(json.dumps(params))
    return train_run(cfg, run_dir, on_epoch=on_epoch)


def head_start(space: dict[str, BaseDistribution], overrides: list[str]) -> dict | None:
    """The preset's first trial (`hydra.sweeper.enqueue_trials[0]`), the recipe every method may
    start from, limited to the searched keys as the sweeper limits it; None if it does not fit."""
    enqueued = compose_trial(overrides).hydra.sweeper.get("enqueue_trials") or []
    if not enqueued:
        return None
    recipe = {k: v for k, v in OmegaConf.to_container(enqueued[0]).items() if k in space}
    in_space = all(fits(space[k], v) for k, v in recipe.items())
    return recipe if in_space and recipe.keys() == space.keys() else None


@dataclass
class PeerSearch:
    """What a peer's command line asks for:
    `SCRIPT --seed S --budget SECONDS [--head-start] OUT [OVERRIDES]`."""
    out: Path
    seed: int
    budget_s: float
    space: dict[str, BaseDistribution]
    overrides: list[str]  # every trial's, the space's own keys left out
    max_epochs: int
    first: dict | None    # the preset's recipe to evaluate first, with --head-start
    cpus: int = 1         # trials side by side, one CPU each (--cpus, where the peer takes it)


def peer_search(description: str, cpus: bool = False) -> PeerSearch:
    """The command line's search; with `cpus`, the peer takes --cpus N (default 1)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--budget", type=float, required=True, help="seconds")
    parser.add_argument("--head-start", action="store_true",
                        help="evaluate the preset's enqueued recipe first, as the sweeper does")
    if cpus:
        parser.add_argument("--cpus", type=int, default=1,
                            help="CPUs of the search: that many trials side by side, one CPU and "
                                 "one torch thread each (default 1: one trial at a time)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if getattr(args, "cpus", 1) < 1:
        parser.error(f"--cpus={args.cpus}: allowed: an integer >= 1")
    space, overrides = preset_space(args.overrides)
    return PeerSearch(args.out.absolute(), args.seed, args.budget, space, overrides,
                      int(compose_trial(overrides).trainer.epochs),
                      head_start(space, overrides) if args.head_start else None,
                      getattr(args, "cpus", 1))
