"""Compare runs: a table best first, plus CSV/JSON, figures, an HTML report and, for an Optuna
study kept in a storage, the parameter importances.

    python -m mlp_sweep.compare                         # the newest sweep under multirun/
    python -m mlp_sweep.compare multirun/2026-11-24/10-00-00 'outputs/2026-11-24/09-*'
    python -m mlp_sweep.compare --filter optimizer=sgd --top 5 --plot plots --html report.html
"""

import argparse
import csv
import json
import statistics
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from mlp_sweep.errors import UserError
from mlp_sweep.runs import Run, find_runs, read_run, reproduce_command
from mlp_sweep.study import IMPORTANCE_EVALUATOR, StudyRecord, read_studies


@dataclass
class Row:
    """One line of the table: a run, or the runs that differ only by `trainer.seed`."""

    runs: list[Run]
    params: dict       # the values of the columns that differ between runs
    state: str
    value: float | None
    std: float | None

    @property
    def first(self) -> Run:
        return self.runs[0]

    def mean_of(self, key: str) -> float | None:
        values = [r.metrics[key] for r in self.runs if r.metrics and _is_number(r.metrics.get(key))]
        return statistics.fmean(values) if values else None


@dataclass
class Comparison:
    rows: list[Row]
    constants: dict    # values shared by every run, shown once above the table
    differing: list[str]
    metric: str
    grouped: bool
    studies: list[StudyRecord]


def compare(paths: list[str], metric: str | None = None, filters: list[str] = (),
            sort: str | None = None, ascending: bool = False, top: int | None = None,
            group: bool = True) -> Comparison:
    """Read the runs in `paths` and build the table rows, best first."""
    runs = find_runs(paths)
    studies = read_studies(runs)
    for study in studies:
        # A resumed study's earlier trials live in earlier sweep folders: bring them in.
        known = {run.folder.resolve() for run in runs}
        runs += [read_run(folder) for folder in study.run_dirs() if folder.resolve() not in known]
        study.apply_states(runs)
    runs = _filtered(runs, filters)
    metric = metric or _default_metric(runs)
    _check_metric(runs, metric)

    keys = sorted({k for r in runs for k in r.params})
    constants = {k: runs[0].params[k] for k in keys if _same_in_every_run(k, runs)}
    differing = [k for k in keys if k not in constants and not _implied_by_group_choice(k, runs)]
    grouped = group and "trainer.seed" in differing
    columns = [k for k in differing if not (grouped and k == "trainer.seed")]

    rows = _group_rows(runs, columns, metric) if grouped else [
        _row([r], columns, metric) for r in runs]
    sort_key = sort or metric
    if sort and sort not in columns and sort not in _metric_keys(runs):
        raise UserError(f"--sort {sort!r} is not a column or metric; allowed: "
                        f"{', '.join(columns + sorted(_metric_keys(runs)))}")

    def sort_value(row: Row):
        if sort_key == metric:
            return row.value
        return row.params.get(sort_key) if sort_key in columns else row.mean_of(sort_key)

    # Numbers before text, missing values last whatever the direction.
    present = [row for row in rows if sort_value(row) is not None]
    present.sort(key=lambda row: (0, sort_value(row)) if _is_number(sort_value(row))
                 else (1, _fmt(sort_value(row))), reverse=not ascending)
    rows = present + [row for row in rows if sort_value(row) is None]
    if top is not None:
        rows = rows[:top]
    return Comparison(rows, constants, columns, metric, grouped, studies)


def _same_in_every_run(key: str, runs: list[Run]) -> bool:
    """True when every run has `key`, with one value: a key that only some runs have (adam's
    `optimizer.betas` in a grid over adam and sgd) differs, whatever its value."""
    return all(key in r.params for r in runs) and len({_fmt(r.params[key]) for r in runs}) == 1


def _implied_by_group_choice(key: str, runs: list[Run]) -> bool:
    """True for `optimizer.lr` in a grid when every run with the same `optimizer` choice has the
    same lr: the column would only repeat what the `optimizer` column says. A key that some runs
    lack is never implied: its column shows which runs have it."""
    group = key.split(".")[0]
    if group == key or group not in runs[0].params or not all(key in r.params for r in runs):
        return False
    seen: dict[str, str] = {}
    for run in runs:
        choice, value = _fmt(run.params.get(group)), _fmt(run.params.get(key))
        if seen.setdefault(choice, value) != value:
            return False
    return True


def _row(runs: list[Run], columns: list[str], metric: str) -> Row:
    values = [r.metrics[metric] for r in runs
              if r.state == "completed" and r.metrics and _is_number(r.metrics.get(metric))]
    value = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None
    states = {r.state for r in runs}
    state = states.pop() if len(states) == 1 else "/".join(sorted(states))
    return Row(runs, {k: runs[0].params.get(k) for k in columns}, state, value, std)


def _group_rows(runs: list[Run], columns: list[str], metric: str) -> list[Row]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        # Only completed runs are averaged; a failed or pruned seed keeps its own row.
        key = tuple(_fmt(run.params[k]) if k in run.params else None for k in columns) + (
            () if run.state == "completed" else (str(run.folder),))
        groups.setdefault(key, []).append(run)
    return [_row(group, columns, metric) for group in groups.values()]


def _filtered(runs: list[Run], filters: list[str]) -> list[Run]:
    known = sorted({k for r in runs for k in r.params})
    for item in filters:
        key, sep, wanted = item.partition("=")
        if not sep:
            raise UserError(f"--filter {item!r} is not KEY=VALUE, e.g. --filter optimizer=sgd")
        if key not in known:
            raise UserError(f"--filter key {key!r} is not in the runs' configs; allowed: {', '.join(known)}")
        runs = [r for r in runs if _fmt(r.params.get(key)) == wanted.replace(" ", "")]
    if not runs:
        raise UserError(f"no run matches --filter {' '.join(filters)}")
    return runs


def _metric_keys(runs: list[Run]) -> set[str]:
    return {k for r in runs if r.metrics for k, v in r.metrics.items() if _is_number(v)}


def _default_metric(runs: list[Run]) -> str:
    objectives = {r.metrics.get("objective") for r in runs if r.metrics}
    return objectives.pop() if len(objectives) == 1 and None not in objectives else "test_accuracy"


def _check_metric(runs: list[Run], metric: str) -> None:
    available = _metric_keys(runs)
    if available and metric not in available:
        raise UserError(f"--metric {metric!r} is not in metrics.json; allowed: {', '.join(sorted(available))}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value) -> str:
    """A value as the command line writes it: lists without spaces, floats short."""
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)


# ---- output ---------------------------------------------------------------------------------

def table_records(comparison: Comparison) -> list[dict]:
    """The rows as flat dicts: the same content for the console, CSV, JSON and HTML."""
    records = []
    for rank, row in enumerate(comparison.rows, 1):
        # A key the run lacks (sgd's optimizer.betas) is None: blank, unlike a value set to null.
        record = {"rank": rank, **{k: _fmt(v) if k in row.first.params else None
                                   for k, v in row.params.items()}}
        record[comparison.metric] = row.value
        if comparison.grouped:
            record[f"{comparison.metric}_std"] = row.std
            record["seeds"] = len(row.runs)
        completed = row.state == "completed"
        record["best_epoch"] = row.first.metrics.get("best_epoch") if completed else None
        record["train_time_s"] = row.mean_of("train_time_s") if completed else None
        record["parameter_count"] = (row.first.metrics or {}).get("parameter_count")
        record["state"] = row.state
        record["folder"] = str(_display_path(row.first.folder))
        if row.first.error and not completed:
            record["error"] = row.first.error
        records.append(record)
    return records


def format_table(comparison: Comparison) -> str:
    lines = []
    if comparison.constants:
        lines += textwrap.wrap("  ".join(f"{k}={_fmt(v)}" for k, v in comparison.constants.items()),
                               width=100, initial_indent="Same for every run: ",
                               subsequent_indent="  ", break_on_hyphens=False)
    for study in comparison.studies:
        lines.append(study.summary())
    records = table_records(comparison)
    if not records:
        return "\n".join(lines + ["(no runs)"])
    metric = comparison.metric
    headers = [h for h in records[0] if h not in (f"{metric}_std", "error")]
    cells = []
    for record in records:
        line = []
        for header in headers:
            value = record.get(header)
            if header == metric and value is not None:
                text = f"{value:.4f}"
                if record.get(f"{metric}_std") is not None:
                    text += f" ± {record[f'{metric}_std']:.4f}"
            elif header == "train_time_s" and value is not None:
                text = f"{value:.2f}"
            else:
                text = "" if value is None else str(value)
            line.append(text)
        cells.append(line)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines += [f"{r['state']}: {r['folder']}: {r['error']}" for r in records if r.get("error")]
    lines += ["\n" + study.importances_text() for study in comparison.studies]
    return "\n".join(lines)


def best_report(comparison: Comparison) -> str:
    """The best run's full config and the command that reproduces it."""
    completed = [row for row in comparison.rows if row.value is not None]
    if not completed:
        raise UserError("no completed run to call best")
    run = completed[0].first
    config = (run.folder / ".hydra" / "config.yaml").read_text()
    command = reproduce_command(run.overrides)
    return (f"Best run: {_display_path(run.folder)}  {comparison.metric}={completed[0].value:.4f}\n\n"
            f"{config}\nReproduce with:\n  {command}")


def write_csv(comparison: Comparison, path: Path) -> None:
    records = table_records(comparison)
    headers = list(dict.fromkeys(k for record in records for k in record))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=headers)
        writer.writeheader()
        writer.writerows(records)


def write_json(comparison: Comparison, path: Path) -> None:
    path.write_text(json.dumps({"metric": comparison.metric, "constants": {
        k: _fmt(v) for k, v in comparison.constants.items()}, "rows": table_records(comparison),
        "studies": [study_record(s) for s in comparison.studies]}, indent=2) + "\n")


def study_record(study: StudyRecord) -> dict:
    """An Optuna study's summary, parameter importances (null, with the reason, when none) and
    refit (null when the sweep was not refitted)."""
    return {"name": study.name, "storage": study.storage, "sweep_dir": str(_display_path(study.sweep_dir)),
            "best_value": study.best_value, "completed_trials": len(study.completed_trials()),
            "importance_evaluator": IMPORTANCE_EVALUATOR, "importances": study.importances,
            "importances_note": study.importances_note or None, "refit": study.refit}


def _display_path(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


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
    args = parser.parse_args(argv)
    if args.top is not None and args.top < 1:
        parser.error(f"--top {args.top}: allowed: an integer >= 1")
    try:
        comparison = compare(args.paths, args.metric, args.filter, args.sort, args.ascending,
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
            from mlp_sweep import report  # matplotlib is imported only when figures are asked for

            figures = report.write_figures(comparison, args.plot)
            if args.html:
                report.write_html(comparison, figures, args.html, format_table(comparison))
        for path in [args.csv, args.json, *([] if not args.plot else figures), args.html]:
            if path:
                print(f"wrote {path}")
    except UserError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
