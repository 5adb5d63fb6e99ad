"""Asynchronous sweep workers: K Optuna sweep processes on one study, started by one command.

    python -m mlp_sweep.workers 2 hydra.sweeper.timeout=1800
    python -m mlp_sweep.workers 2 hparams_search=optuna_course hydra.sweeper.n_trials=40
    python -m mlp_sweep.workers 3 hydra.sweeper.storage=postgresql://user@db-host/optuna

Each worker is `python -m mlp_sweep.train --multirun hparams_search=optuna` (or the preset the
overrides name; the presets' `hydra.sweeper.worker_command`) with one trial at a
time (`hydra.sweeper.n_jobs=1`) and its own sweep folder; it asks the study for the next trial as
soon as its last one ends, so no worker waits for a batch's slowest trial as joblib batches do.
`n_trials` is the study's total across workers. The same command on other hosts, pointed at the
same PostgreSQL storage, adds workers there: this is Optuna's own distributed mode.

On a machine with GPUs each worker gets one (CUDA_VISIBLE_DEVICES), round-robin over the visible
ones; `--gpus 0,2` chooses them, `--workers-per-gpu N` puts N workers on each, and
`trainer.device=auto` trains on the worker's GPU. Each output line names its worker.
"""

import argparse
import os
import sys
from pathlib import Path

from mlp_sweep.errors import UserError, error_line
from mlp_sweep.sweeping.worker_pool import (run_workers, worker_commands, worker_environments,
                                            worker_gpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlp_sweep.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workers", type=int, help="number of sweep processes on this host")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every worker")
    parser.add_argument("--config-dir", type=Path, help="a folder of your own configs, added to "
                        "the search path after the package's (hydra.searchpath)")
    parser.add_argument("--gpus", type=_indexes, help="the GPUs to use, as indexes among the "
                        "visible ones (e.g. 0,2); default: all visible")
    parser.add_argument("--workers-per-gpu", type=int, help="workers sharing one GPU (small "
                        "models); default 1")
    args = parser.parse_intermixed_args(argv)  # --config-dir anywhere among the overrides
    if args.workers < 1:
        parser.error(f"workers={args.workers}: allowed: an integer >= 1")
    # hparams_search=optuna unless the overrides name another preset (optuna_course)
    named = any(o.startswith("hparams_search=") for o in args.overrides)
    overrides = [*([] if named else ["hparams_search=optuna"]), *args.overrides]
    try:
        gpus = worker_gpus(args.workers, visible_gpus(), args.gpus, args.workers_per_gpu)
        commands = worker_commands(args.workers, overrides, args.config_dir,
                                   config_module="mlp_sweep.conf", config_name="train")
    except UserError as error:
        print(error_line(error), file=sys.stderr)
        return 1
    for k, gpu in enumerate(gpus):
        if gpu is not None:
            print(f"worker {k}: GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})", file=sys.stderr)
    return run_workers(commands, worker_environments(gpus))


# What a GPU driver puts on Linux (NVIDIA's, its WSL bridge, AMD's ROCm). Without any of them
# there is no GPU to count, and this launcher need not load torch (3 s of CPU) to learn it.
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indexes or UUIDs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()]
    if sys.platform == "linux" and not any(os.path.exists(path) for path in GPU_DRIVER_FILES):
        return []
    import torch  # only here: the sweep workers import it themselves

    return [str(i) for i in range(torch.cuda.device_count())]


def _indexes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU indexes; allowed: "
                                         "e.g. 0 or 0,2") from None


if __name__ == "__main__":
    sys.exit(main())
