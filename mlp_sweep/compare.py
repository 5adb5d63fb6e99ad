"""Compare runs: a table best first, plus CSV/JSON, figures, an HTML report and, for an Optuna
study kept in a storage, the parameter importances.

    python -m mlp_sweep.compare                         # the newest sweep under multirun/
    python -m mlp_sweep.compare multirun/2026-11-24/10-00-00 'outputs/2026-11-24/09-*'
    python -m mlp_sweep.compare --filter optimizer=sgd --top 5 --plot plots --html report.html
    python -m mlp_sweep.compare --storage postgresql://optuna@db-host/optuna --study mlp_mnist
"""

import argparse
import sys
from pathlib import Path

from mlp_sweep.analysis.comparison import compare
from mlp_sweep.analysis.stored_study import check_study_arguments, study_run_folders
from mlp_sweep.analysis.table import best_report, format_table, write_csv, write_json
from mlp_sweep.errors import UserError, error_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlp_sweep.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="run or sweep folders (globs allowed)")
    parser.add_argument("--metric", help="a key of metrics.json (default: the runs' objective)")
    parser.add_argument("--sort", help="a column or metric to sort by (default: the metric)")
    parser.add_argument("--ascending", action="store_true", help="smallest first")
    parser.add_argument("--top", type=int, help="show only the first N rows")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose config has KEY=VALUE (repeatable)")
    parser.add_argument("--no-group", dest="group", action="store_false",
                        help="do not merge runs that differ only by trainer.seed")
    parser.add_argument("--best", action="store_true", help="print the best run's config and command")
    parser.add_argument("--csv", type=Path, metavar="FILE")
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG figures into DIR")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained report")
    parser.add_argument("--storage", help="a study's storage URL (with --study, instead of folders)")
    parser.add_argument("--study", help="the study's name: its trials' folders, fetched from its "
                        "artifact store where they are not on this host")
    args = parser.parse_args(argv)
    if args.top is not None and args.top < 1:
        parser.error(f"--top {args.top}: allowed: an integer >= 1")
    try:
        paths = args.paths
        if check_study_arguments(args.storage, args.study):
            if paths:
                raise UserError(f"{paths[0]} and --study {args.study!r}: allowed: folders, or "
                                "--storage and --study")
            paths = [str(folder) for folder in study_run_folders(args.study, args.storage)]
        comparison = compare(paths, args.metric, args.filter, args.sort, args.ascending,
                             args.top, args.group)
        print(format_table(comparison))
        if args.best:
            print("\n" + best_report(comparison))
        if args.csv:
            write_csv(comparison, args.csv)
        if args.json:
            write_json(comparison, args.json)
        figures = []
        if args.plot or args.html:
            from mlp_sweep.analysis import report  # matplotlib is imported only when figures are asked for

            figures = report.write_figures(comparison, args.plot)
            if args.html:
                report.write_html(comparison, figures, args.html, format_table(comparison))
        for path in [args.csv, args.json, *([] if not args.plot else figures), args.html]:
            if path:
                print(f"wrote {path}")
    except UserError as error:
        print(error_line(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
