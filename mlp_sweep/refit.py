"""Refit a sweep's best trial on all its training data and measure it on the test set.

    python -m mlp_sweep.refit                  (the newest sweep under multirun/) [--seeds 3]
    python -m mlp_sweep.refit multirun/2026-11-30/10-00-00
    python -m mlp_sweep.refit multirun/2026-11-30/10-00-00/17      (that trial, not the best)
    python -m mlp_sweep.refit --storage postgresql://host/db --study mlp_mnist   (from any host)

The search chose the trial on validation accuracy; that trial's model never saw the validation
images. The refit trains the same config again on training + validation images (nothing held
out), for the same `trainer.epochs`, once per seed, and reports the test accuracy as mean ± std.
Each seed's run goes to SWEEP_DIR/refit/seed_N/; the summary to SWEEP_DIR/refit.json. With
--storage and --study, the study's best trial is refitted from wherever this runs: its folder is
fetched from the sweep's artifact store (hydra.sweeper.artifacts) when another host trained it,
and the results go to refit/STUDY/ here (seed_N/, refit.json).
"""

import argparse
import logging
import sys
from pathlib import Path

from mlp_sweep.analysis.runs import newest_sweep
from mlp_sweep.analysis.refit_best import REFIT_FILE, best_trial_dir, best_trial_of_study, refit
from mlp_sweep.analysis.stored_study import check_study_arguments
from mlp_sweep.errors import UserError, error_line
from mlp_sweep.files import write_json

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    parser = argparse.ArgumentParser(prog="python -m mlp_sweep.refit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, nargs="?",
                        help="a sweep folder (multirun/DATE/TIME), or one trial's; default: "
                        "the newest sweep under multirun/")
    parser.add_argument("--storage", help="the study's storage URL (with --study, instead of a folder)")
    parser.add_argument("--study", help="the study's name, in --storage")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (0..N-1); default 3")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 1:
            raise UserError(f"--seeds={args.seeds} is not allowed; allowed: an integer >= 1")
        named = check_study_arguments(args.storage, args.study)
        if args.sweep_dir is not None and named:
            raise UserError("give a sweep folder, or --storage and --study; allowed: one of "
                            "them, e.g. multirun/2026-11-30/10-00-00")
        if args.sweep_dir is None and not named:
            args.sweep_dir = newest_sweep()
            if args.sweep_dir is None:
                raise UserError("no sweep under multirun/ here to refit; allowed: a sweep "
                                "folder, or --storage and --study")
            log.info(f"refitting the newest sweep: {args.sweep_dir}")
        if named:
            trial_dir = best_trial_of_study(args.study, args.storage)
            out_dir = runs_dir = Path("refit") / args.study
        elif not args.sweep_dir.is_dir():
            raise UserError(f"{args.sweep_dir} is not a folder; allowed: a sweep folder, "
                            "e.g. multirun/2026-11-30/10-00-00")
        else:
            trial_dir, out_dir = best_trial_dir(args.sweep_dir), args.sweep_dir
            runs_dir = out_dir / "refit"
        summary = refit(trial_dir, args.seeds, runs_dir)
    except UserError as error:
        log.error(error_line(error))
        return 1
    write_json(out_dir / REFIT_FILE, summary)
    log.info(f"refit of {trial_dir} ({summary['epochs']} epochs, seeds {summary['seeds']}): "
             f"test accuracy {summary['test_accuracy_mean']:.2%} ± {summary['test_accuracy_std']:.2%}"
             f" (the trial itself: validation {summary['trial_val_accuracy']:.2%}, "
             f"test {summary['trial_test_accuracy']:.2%}); written to {out_dir / REFIT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
