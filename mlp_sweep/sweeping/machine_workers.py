"""The sweep processes one sweep command runs on this machine: `hydra.sweeper.workers`.

One process gives all its cores to one trial at a time; small models use a second core poorly, so
one-thread workers, each training its own trial, train more epochs per second on the same cores
(make bench-workers). With `workers: auto` the command starts one worker per core it may use (per
GPU on a machine with GPUs; at most MOST_AUTO_WORKERS), each asking the study for its next trial
as soon as its last one ends, as `python -m mlp_sweep.workers N` does; TPE's constant liar keeps
them from asking the same point. The command sets the study up first (settings, enqueued trials,
warm start), starts each worker as a copy of its own command line (one process, its own sampler
seed, its share of the cores) with the moment the command started, from which every worker's
budget counts, relays their lines, each named by its worker, and writes the search's results
when they have all ended.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.sweep_settings import SweepSettings
from mlp_sweep.sweeping.trial_spec import hydra_quoted
from mlp_sweep.sweeping.worker_pool import (SWEEP_WORKER_VARIABLE, command_of, usable_cores,
                                            worker_environments, worker_gpus)

AUTO = "auto"
# Workers auto starts at most: the most measured (make bench-workers) is 2; more cores than this
# get this many workers of several threads each, on one SQLite study
MOST_AUTO_WORKERS = 8
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@dataclass(frozen=True)
class Workers:
    """What this command runs: `count` processes (1: the command alone), and why."""

    count: int
    why: str
    threads: int = 1                          # each worker's CPU threads
    gpus: tuple[str | None, ...] = ()         # each worker's CUDA_VISIBLE_DEVICES, None: all


# In a worker's environment: the Unix time its sweep command started, from which its time
# budget counts, so that the budget holds for the workers together
STARTED_VARIABLE = "MLP_SWEEP_SWEEP_STARTED"


def is_worker() -> bool:
    """Whether this process is a worker a sweep command started."""
    return SWEEP_WORKER_VARIABLE in os.environ


def sweep_started() -> float:
    """When this sweep started, on the monotonic clock: now, or when the command that started
    this worker did."""
    now = time.monotonic()
    started = os.environ.get(STARTED_VARIABLE) if is_worker() else None
    return now if started is None else now - max(0.0, time.time() - float(started))


def choose_workers(settings: SweepSettings, launcher_target: str, cores: int | None = None,
                   gpus: list[str] | None = None) -> Workers:
    """The workers `settings.workers` asks for on a machine of `cores` (default: the cores this
    process may use) and `gpus` (default: the visible ones); UserError when N > 1 cannot run."""
    if is_worker():
        return Workers(1, "a worker of a sweep command")
    cores = usable_cores() if cores is None else cores
    requested = settings.workers
    if requested == AUTO:
        gpus = visible_gpus() if gpus is None else gpus
        count, why = _auto(settings, launcher_target, cores, gpus)
    else:
        count, why = requested, f"hydra.sweeper.workers={requested}"
        if count > 1:
            _check_can_start(settings)
            gpus = visible_gpus() if gpus is None else gpus
    if count == 1:
        return Workers(1, why)
    threads = max(1, cores // count)
    return Workers(count, f"{why}, {threads} thread{'s' * (threads > 1)} each", threads,
                   tuple(worker_gpus(count, gpus or [])))


def _auto(settings: SweepSettings, launcher_target: str, cores: int,
          gpus: list[str]) -> tuple[int, str]:
    alone = "hydra.sweeper.workers=auto: one process"
    if settings.storage is None:
        return 1, f"{alone}, since the study is in memory (hydra.sweeper.storage=null)"
    if settings.worker_command is None:
        return 1, f"{alone}, since hydra.sweeper.worker_command is not set"
    if launcher_target != BASIC_LAUNCHER:
        return 1, f"{alone}: the launcher {launcher_target.rsplit('.', 1)[-1]} runs the jobs"
    if settings.n_jobs > 1:
        return 1, f"{alone}: hydra.sweeper.n_jobs={settings.n_jobs} runs batches of trials"
    if settings.fuse > 1:  # a group's trials are asked together, by one process
        return 1, f"{alone}: hydra.sweeper.fuse={settings.fuse} trains its groups in it"
    if len(gpus) > 1:
        return len(gpus), f"hydra.sweeper.workers=auto: {len(gpus)} workers, one per GPU"
    if gpus:
        return 1, f"{alone} on the one GPU"
    if cores > MOST_AUTO_WORKERS:
        return MOST_AUTO_WORKERS, (f"hydra.sweeper.workers=auto: {MOST_AUTO_WORKERS} workers for "
                                   f"{cores} cores (auto's most; workers=N for more)")
    if cores > 1:
        return cores, f"hydra.sweeper.workers=auto: {cores} workers, one per core"
    return 1, f"{alone} on the one core it may use"


def visible_gpus() -> list[str]:
    """The GPUs a worker may be given, as CUDA_VISIBLE_DEVICES names them, counted without
    torch (the sweeper serves any Hydra app): that variable's list where it is set, else one
    per NVIDIA device file; none on a machine without them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()]
    devices = sorted(int(path.name[len("nvidia"):]) for path in Path("/dev").glob("nvidia*")
                     if path.name[len("nvidia"):].isdigit())
    return [str(index) for index in devices]


def _check_can_start(settings: SweepSettings) -> None:
    if settings.storage is None:
        raise UserError(f"hydra.sweeper.workers={settings.workers} needs a storage every worker "
                        "opens, and hydra.sweeper.storage=null keeps the study in memory; "
                        "allowed: workers=1, or a storage such as sqlite:///PATH or journal:PATH")
    command_of(settings.worker_command)  # UserError when the app gives none


def worker_commands(settings: SweepSettings, workers: Workers, *, config: DictConfig,
                    arguments: list[str], sweep_dir: Path) -> list[list[str]]:
    """Each worker's command: this command's own (its config source, its Hydra and sweep
    overrides), in this sweep's folder, one process each, its own sampler seed and its share of
    the cores."""
    hydra = config.hydra
    sources = [f"--config-dir={source.path}" for source in hydra.runtime.config_sources
               if source.provider == "command-line" and source.schema == "file"]
    common = [*command_of(settings.worker_command), "--multirun", *sources,
              f"--config-name={hydra.job.config_name}", *hydra.overrides.hydra, *arguments,
              f"hydra.sweep.dir={hydra_quoted(sweep_dir)}", "hydra.sweeper.workers=1"]
    if settings.threads_key:
        common.append(f"{settings.threads_key}={workers.threads}")
    seed = settings.sampler.get("seed")
    return [[*common, *([f"hydra.sweeper.sampler.seed={seed + k}"] if seed is not None else [])]
            for k in range(workers.count)]


def environments(workers: Workers, started: float) -> list[dict[str, Any]]:
    """Each worker's environment: its GPU, the mark that it is a sweep command's worker, and
    when that command started (`started`, on the monotonic clock)."""
    started_at = time.time() - (time.monotonic() - started)
    return [{**environment, SWEEP_WORKER_VARIABLE: str(k), STARTED_VARIABLE: repr(started_at)}
            for k, environment in enumerate(worker_environments(list(workers.gpus)))]
