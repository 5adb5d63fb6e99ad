"""The comparison as text and files: the console table, --best, CSV and JSON."""

import csv
import json
import textwrap
from pathlib import Path

from mlp_sweep.analysis.comparison import Comparison, fmt
from mlp_sweep.analysis.runs import reproduce_command
from mlp_sweep.analysis.study import IMPORTANCE_EVALUATOR, StudyRecord
from mlp_sweep.errors import UserError


def table_records(comparison: Comparison) -> list[dict]:
    """The rows as flat dicts: the same content for the console, CSV, JSON and HTML."""
    records = []
    for rank, row in enumerate(comparison.rows, 1):
        # A key the run lacks (sgd's optimizer.betas) is None: blank, unlike a value set to null.
        record = {"rank": rank, **{k: fmt(v) if k in row.first.params else None
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
        lines += textwrap.wrap("  ".join(f"{k}={fmt(v)}" for k, v in comparison.constants.items()),
                               width=100, initial_indent="Same for every run: ",
                               subsequent_indent="  ", break_on_hyphens=False)
    for study in comparison.studies:
        lines.append(study.summary())
    if comparison.ranked_by:
        lines.append(comparison.ranked_by)
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
        k: fmt(v) for k, v in comparison.constants.items()}, "rows": table_records(comparison),
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
