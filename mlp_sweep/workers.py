"""Asynchronous sweep workers: K Optuna sweep processes on one study, started by one command.

    python -m mlp_sweep.workers 2 hydra.sweeper.timeout=1800
    python -m mlp_sweep.workers 2 hparams_search=optuna_course hydra.sweeper.n_trials=40
    python -m mlp_sweep.workers 3 hydra.sweeper.storage=postgresql://user@db-host/optuna

Each worker is `python -m mlp_sweep.train --multirun hparams_search=optuna` (or the preset the
overrides name) with one trial at a
time (`hydra.sweeper.n_jobs=1`) and its own sweep folder; it asks the study for the next trial as
soon as its last one ends, so no worker waits for a batch's slowest trial as joblib batches do.
`n_trials` is the study's total across workers. The same command on other hosts, pointed at the
same PostgreSQL storage, adds workers there: this is Optuna's own distributed mode.
"""

import argparse
import sys
from pathlib import Path

from mlp_sweep.errors import UserError, error_line
from mlp_sweep.sweeping.worker_pool import run_workers, worker_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlp_sweep.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workers", type=int, help="number of sweep processes on this host")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every worker")
    parser.add_argument("--config-dir", type=Path, help="a folder of your own configs, added to "
                        "the search path after the package's (hydra.searchpath)")
    args = parser.parse_intermixed_args(argv)  # --config-dir anywhere among the overrides
    if args.workers < 1:
        parser.error(f"workers={args.workers}: allowed: an integer >= 1")
    try:
        commands = worker_commands(args.workers, args.overrides, args.config_dir)
    except UserError as error:
        print(error_line(error), file=sys.stderr)
        return 1
    return run_workers(commands)


if __name__ == "__main__":
    sys.exit(main())
