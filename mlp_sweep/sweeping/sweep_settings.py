"""The sweeper's own settings, checked before anything is built, and the objects they name.

Each check raises a UserError naming the key and what is allowed; the sweep reports it as one line.
"""

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from mlp_sweep.errors import UserError, first_line
from mlp_sweep.sweeping.artifacts import canonical_url
from mlp_sweep.sweeping.optuna_compat import parse_sweep_overrides
from mlp_sweep.sweeping.storage import Heartbeat
from mlp_sweep.values import is_number

# What `_target_` may name: Hydra's instantiate runs what a config says, so only these.
SAMPLER_PACKAGES = ("optuna.samplers.", "hydra_plugins.hydra_optuna_sweeper.")
SAMPLER_TARGETS = [f"{package}*" for package in SAMPLER_PACKAGES]
PRUNER_PACKAGE = "optuna.pruners."
PRUNER_TARGETS = [f"{PRUNER_PACKAGE}*"]
SAMPLERS = "tpe, random, cmaes, nsgaii, nsgaiii, qmc, gp, grid"
PRUNERS = "none, median, successive_halving, hyperband"
ON_TIMEOUT = ("finish", "prune", "prune_early")  # what running trials do at hydra.sweeper.timeout


@dataclass(frozen=True)
class SweepSettings:
    """`hydra.sweeper` (MlpOptunaSweeperConf) checked once, before anything is built, with what
    its keys name built: what the sweep loop reads, passed whole."""

    sampler: Any                  # the sampler's config: build_sampler makes it per run
    directions: list[str]
    storage: str | None
    study_name: str | None
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    params: dict
    pruner: optuna.pruners.BasePruner
    pruner_config: dict | None    # for the jobs, which build the same pruner (trial_spec.py)
    custom_search_space: Callable | None
    timeout: float | None
    on_timeout: str
    heartbeat: Heartbeat | None
    max_retry: int | None         # runs of a trial again after it was interrupted or went stale
    enqueue_trials: Any
    warm_start: Any
    progress: Any
    fuse: int = 1                 # trials per job (fused_groups.py)
    fuse_by: tuple[str, ...] = () # the params a job's trials share
    artifacts: str | None = None  # the artifact store's canonical URL (artifacts.py)
    artifacts_include: tuple[str, ...] = ("**",)  # globs over a run folder: what is uploaded
    execution_keys: tuple[str, ...] = ()  # keys a resumed study may change (study_settings.py)
    workers: int | str = 1        # sweep processes: a count, or auto (machine_workers.py)
    worker_command: tuple[str, ...] | None = None  # what each of them runs (the app, --multirun)
    threads_key: str | None = None  # the app's key for a worker's CPU threads
    prior: Any = None             # checked against the search space (prior.py)

    @classmethod
    def checked(cls, raw: Mapping[str, Any]) -> "SweepSettings":
        """The settings `raw` (hydra.sweeper's keys) gives; UserError for the first bad one."""
        heartbeat = check_settings(raw)
        extend = raw.get("custom_search_space")
        pruner = raw.get("pruner")
        return cls(
            sampler=raw["sampler"], directions=directions_of(raw["direction"]),
            storage=raw.get("storage"), study_name=raw.get("study_name"),
            n_trials=raw["n_trials"], n_jobs=raw["n_jobs"],
            max_failure_rate=raw["max_failure_rate"], params=dict(raw.get("params") or {}),
            pruner=build_pruner(pruner),
            pruner_config=OmegaConf.to_container(pruner, resolve=True)
            if OmegaConf.is_config(pruner) else pruner or None,
            custom_search_space=instantiate({"_target_": extend, "_partial_": True},
                                            _execution_whitelist_=[extend]) if extend else None,
            timeout=raw.get("timeout"), on_timeout=raw.get("on_timeout", "finish"),
            heartbeat=heartbeat, max_retry=raw.get("max_retry", 3),
            enqueue_trials=raw.get("enqueue_trials"),
            warm_start=raw.get("warm_start"), progress=raw["progress"],
            fuse=raw.get("fuse", 1), fuse_by=tuple(raw.get("fuse_by") or ()),
            artifacts=canonical_url(raw["artifacts"]) if raw.get("artifacts") else None,
            artifacts_include=tuple(raw.get("artifacts_include") or ()),
            execution_keys=tuple(raw.get("execution_keys") or ()),
            workers=raw.get("workers", 1),
            worker_command=tuple(raw["worker_command"]) if raw.get("worker_command") else None,
            threads_key=raw.get("threads_key"), prior=raw.get("prior"))


def check_settings(settings: Mapping[str, Any]) -> Heartbeat | None:
    """Raise UserError for the first bad key of `hydra.sweeper`; the heartbeat settings when
    heartbeat_interval is set, else None."""
    for key in ("heartbeat_interval", "grace_period"):
        if settings.get(key) is not None:
            _check_number(key, settings[key], "an integer number of seconds >= 1, or null",
                          lambda v: isinstance(v, int) and v >= 1)
    if settings.get("max_retry") is not None:
        _check_number("max_retry", settings["max_retry"], "an integer >= 0, or null (no limit)",
                      lambda v: isinstance(v, int) and v >= 0)
    _check_number("n_trials", settings.get("n_trials"), "an integer >= 1",
                  lambda v: isinstance(v, int) and v >= 1)
    _check_number("max_failure_rate", settings.get("max_failure_rate"), "a number from 0 to 1",
                  lambda v: 0 <= v <= 1)
    if settings.get("timeout") is not None:
        _check_number("timeout", settings["timeout"],
                      "a number of seconds > 0, or null (no time limit)", lambda v: v > 0)
    _check_number("fuse", settings.get("fuse", 1),
                  "an integer >= 1 (trials per job; 1 trains each trial alone)",
                  lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    fuse_by = settings.get("fuse_by") or []
    if isinstance(fuse_by, str) or not all(isinstance(key, str) for key in fuse_by):
        raise UserError(f"hydra.sweeper.fuse_by={fuse_by!r} is not allowed; allowed: a list of "
                        "searched keys, e.g. [model.hidden_sizes, trainer.batch_size]")
    for key, example in (("artifacts_include", "[**] or [result.txt, '*.log']"),
                         ("execution_keys", "[trainer.threads, logger]")):
        _check_words(key, settings.get(key) or [], f"a list of {KEY_WORDS[key]}, e.g. {example}")
    check_worker_keys(settings)
    if settings.get("on_timeout") not in ON_TIMEOUT:
        raise UserError(f"hydra.sweeper.on_timeout={settings.get('on_timeout')!r} is not allowed; "
                        f"allowed: {', '.join(ON_TIMEOUT)}")
    sampler = str((settings.get("sampler") or {}).get("_target_", ""))
    if not sampler.startswith(SAMPLER_PACKAGES):
        raise UserError(f"hydra.sweeper.sampler._target_={sampler!r} is not allowed; allowed: "
                        f"an optuna.samplers class, e.g. hydra/sweeper/sampler={SAMPLERS}")
    pruner = str((settings.get("pruner") or {}).get("_target_", "optuna.pruners.NopPruner"))
    if not pruner.startswith(PRUNER_PACKAGE):
        raise UserError(f"hydra.sweeper.pruner._target_={pruner!r} is not allowed; allowed: "
                        f"an optuna.pruners class, e.g. hydra/sweeper/pruner={PRUNERS}")
    if settings.get("heartbeat_interval") is None:
        return None
    return Heartbeat(settings["heartbeat_interval"], settings.get("grace_period"),
                     settings.get("max_retry"))


def check_worker_keys(settings: Mapping[str, Any]) -> None:
    """UserError for a bad `workers`, `worker_command` or `threads_key`."""
    workers = settings.get("workers", 1)
    if workers != "auto" and not (isinstance(workers, int) and not isinstance(workers, bool)
                                  and workers >= 1):
        raise UserError(f"hydra.sweeper.workers={workers!r} is not allowed; allowed: auto (one "
                        "worker per core, or per GPU) or an integer >= 1 (1: one process)")
    if settings.get("worker_command") is not None:
        _check_words("worker_command", settings["worker_command"],
                     "a list of words, e.g. [python, my_app.py], or null", nonempty=True)
    threads_key = settings.get("threads_key")
    if threads_key is not None and (not isinstance(threads_key, str) or not threads_key):
        raise UserError(f"hydra.sweeper.threads_key={threads_key!r} is not allowed; allowed: "
                        "the app's config key for CPU threads, e.g. trainer.threads, or null")


KEY_WORDS = {"artifacts_include": "globs over a run folder", "execution_keys": "config keys"}


def _check_words(key: str, value: object, allowed: str, nonempty: bool = False) -> None:
    """UserError unless `value` is a list of non-empty strings (and has one, with `nonempty`)."""
    words = list(value) if isinstance(value, Sequence) and not isinstance(value, str) \
        or OmegaConf.is_list(value) else None
    if words is None or not all(isinstance(w, str) and w for w in words) \
            or (nonempty and not words):
        shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        raise UserError(f"hydra.sweeper.{key}={shown!r} is not allowed; allowed: {allowed}")


def _check_number(key: str, value: object, allowed: str, ok) -> None:
    if not is_number(value) or not ok(value):
        raise UserError(f"hydra.sweeper.{key}={value!r} is not allowed; allowed: {allowed}")


def build_pruner(config: Any) -> optuna.pruners.BasePruner:
    """The pruner `hydra.sweeper.pruner` names; none (every trial runs all its steps) when unset.
    The sweep and its jobs build it the same way, so a job prunes as the study does."""
    if not config:
        return optuna.pruners.NopPruner()
    return instantiate(config, _execution_whitelist_=PRUNER_TARGETS)


def build_sampler(config: Any, **overrides: Any):
    """The sampler `hydra.sweeper.sampler` names (the grid sampler's is a partial: it needs
    the search space)."""
    return instantiate(config, **overrides, _execution_whitelist_=SAMPLER_TARGETS)


def directions_of(direction: Any) -> list[str]:
    """`direction` as the config gives it (a name, an enum member, or a list of them)."""
    values = list(direction) if isinstance(direction, Sequence) and not isinstance(direction, str) \
        else [direction]
    return [v.name if isinstance(v, enum.Enum) else str(v) for v in values]


def parse_space(entries: list[str]) -> tuple[dict, dict, list]:
    """The stock sweeper's reading of `params` and sweep arguments; an entry it cannot read is
    named in one line."""
    try:
        return parse_sweep_overrides(entries)
    except Exception:
        for entry in entries:  # find the one to name
            try:
                parse_sweep_overrides([entry])
            except Exception as error:
                raise UserError(
                    f"hydra.sweeper.params: {entry!r} cannot be read ({first_line(error)}); "
                    "allowed: Hydra's sweep syntax, e.g. choice(a,b), range(1,5), "
                    "interval(0.1,0.5), tag(log, interval(1e-4,1e-1))") from None
        raise


def grid_choices(distribution: BaseDistribution) -> list:
    """The points of a discrete distribution, for the grid sampler; ValueError for others."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        steps = round((distribution.high - distribution.low) / distribution.step)
        return [distribution.low + k * distribution.step for k in range(steps + 1)]
    raise ValueError(f"the grid sampler takes discrete distributions only, not {distribution}")


def grid_of(sampler: Any, space: dict[str, BaseDistribution]) -> dict[str, list] | None:
    """The grid when `sampler` is the stock `grid` one (a partial until the space is known);
    else None."""
    if getattr(sampler, "func", None) is not optuna.samplers.GridSampler:
        return None
    try:
        return {name: grid_choices(d) for name, d in space.items()}
    except ValueError as error:
        raise UserError(f"hydra/sweeper/sampler=grid needs discrete parameters ({error}); "
                        "allowed: choice(...), range(...), int(interval(...))") from None


def grid_size(grid: dict[str, list]) -> int:
    return math.prod(len(v) for v in grid.values())


def fits(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    step = distribution.step
    if isinstance(distribution, IntDistribution) and value != int(value):
        return False
    if step is not None and not math.isclose((value - distribution.low) / step,
                                             round((value - distribution.low) / step)):
        return False
    return distribution.low <= value <= distribution.high


def describe(distribution: BaseDistribution) -> str:
    """A distribution as a user reads it: `one of a, b`, `an integer from 1 to 4`."""
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(str(c) for c in distribution.choices)
    kind = "an integer" if isinstance(distribution, IntDistribution) else "a number"
    assert isinstance(distribution, (IntDistribution, FloatDistribution))
    steps = "" if distribution.step in (None, 1) else f" in steps of {distribution.step:g}"
    return f"{kind} from {distribution.low:g} to {distribution.high:g}{steps}"
