"""Asynchronous sweep workers: K Optuna sweep processes on one study (the command:
mlp_sweep.workers)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.storage import create_study
from mlp_sweep.sweeping.sweep_settings import directions_of

DEFAULT_STORAGE = "journal:multirun/optuna.journal"  # Optuna's advice for processes on one host


def worker_commands(workers: int, overrides: list[str],
                    config_dir: Path | None = None) -> list[list[str]]:
    """The command of each worker: its own sampler seed, its share of the cores. Creates the
    study first, so that the workers do not race to create the database schema."""
    # hparams_search=optuna unless the overrides name another preset (optuna_course)
    preset = [] if any(o.startswith("hparams_search=") for o in overrides) else ["hparams_search=optuna"]
    if config_dir is not None:  # the same search path here and in every worker
        if not config_dir.is_dir():
            raise UserError(f"--config-dir {config_dir} is not a folder; allowed: a folder of "
                            "config groups to add to the search path")
        overrides = [f"hydra.searchpath=['file://{config_dir.resolve()}']", *overrides]
    with initialize_config_module(config_module="mlp_sweep.conf"):
        cfg = compose("train", overrides=[*preset, *overrides], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    storage, extra = sweeper.storage, []
    if storage is None or str(storage).startswith("sqlite"):
        storage = DEFAULT_STORAGE  # SQLite locks under parallel writes
        extra.append(f"hydra.sweeper.storage={storage}")
    create_study(sweeper.study_name, storage, None, None, directions_of(sweeper.direction))
    seed = sweeper.sampler.get("seed") or 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [
        [sys.executable, "-m", "mlp_sweep.train", "--multirun", *preset, *overrides,
         *extra, "hydra.sweeper.n_jobs=1", f"hydra.sweeper.sampler.seed={seed + k}",
         f"trainer.threads={threads}"]
        for k in range(workers)
    ]


def run_workers(commands: list[list[str]]) -> int:
    """Start every worker, wait for all; Ctrl-C or SIGTERM is passed on to each of them."""
    processes = [subprocess.Popen(command) for command in commands]

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [process.wait() for process in processes]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return max(codes, key=abs)
