"""The comparison itself: runs read from folders, filtered, grouped by seed, sorted best first;
and how a value is written in every output (console, CSV, JSON, HTML)."""

import statistics
from dataclasses import dataclass

from mlp_sweep.analysis.runs import Run, find_runs, read_run
from mlp_sweep.analysis.study import StudyRecord, read_studies
from mlp_sweep.errors import UserError
from mlp_sweep.values import is_number


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
        values = [r.metrics[key] for r in self.runs if r.metrics and is_number(r.metrics.get(key))]
        return statistics.fmean(values) if values else None


@dataclass
class Comparison:
    rows: list[Row]
    constants: dict    # values shared by every run, shown once above the table
    differing: list[str]
    metric: str
    grouped: bool
    studies: list[StudyRecord]
    ranked_by: str = ""  # why the default metric ranks the runs, when it was not asked for


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
    ranked_by = "" if metric else _why_ranked_by(runs, _default_metric(runs))
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
    present.sort(key=lambda row: (0, sort_value(row)) if is_number(sort_value(row))
                 else (1, fmt(sort_value(row))), reverse=not ascending)
    rows = present + [row for row in rows if sort_value(row) is None]
    if top is not None:
        rows = rows[:top]
    return Comparison(rows, constants, columns, metric, grouped, studies, ranked_by)


def _same_in_every_run(key: str, runs: list[Run]) -> bool:
    """True when every run has `key`, with one value: a key that only some runs have (adam's
    `optimizer.betas` in a grid over adam and sgd) differs, whatever its value."""
    return all(key in r.params for r in runs) and len({fmt(r.params[key]) for r in runs}) == 1


def _implied_by_group_choice(key: str, runs: list[Run]) -> bool:
    """True for `optimizer.lr` in a grid when every run with the same `optimizer` choice has the
    same lr: the column would only repeat what the `optimizer` column says. A key that some runs
    lack is never implied: its column shows which runs have it."""
    group = key.split(".")[0]
    if group == key or group not in runs[0].params or not all(key in r.params for r in runs):
        return False
    seen: dict[str, str] = {}
    for run in runs:
        choice, value = fmt(run.params.get(group)), fmt(run.params.get(key))
        if seen.setdefault(choice, value) != value:
            return False
    return True


def _row(runs: list[Run], columns: list[str], metric: str) -> Row:
    values = [r.metrics[metric] for r in runs
              if r.state == "completed" and r.metrics and is_number(r.metrics.get(metric))]
    value = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None
    states = {r.state for r in runs}
    state = states.pop() if len(states) == 1 else "/".join(sorted(states))
    return Row(runs, {k: runs[0].params.get(k) for k in columns}, state, value, std)


def _group_rows(runs: list[Run], columns: list[str], metric: str) -> list[Row]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        # Only completed runs are averaged; a failed or pruned seed keeps its own row.
        key = tuple(fmt(run.params[k]) if k in run.params else None for k in columns) + (
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
        runs = [r for r in runs if fmt(r.params.get(key)) == wanted.replace(" ", "")]
    if not runs:
        raise UserError(f"no run matches --filter {' '.join(filters)}")
    return runs


def _metric_keys(runs: list[Run]) -> set[str]:
    return {k for r in runs if r.metrics for k, v in r.metrics.items() if is_number(v)}


def _default_metric(runs: list[Run]) -> str:
    """The runs' objective; but runs that hold a validation split are ranked on it, not on the
    test set, whatever they return (a grid's runs return test accuracy by default)."""
    objectives = {r.metrics.get("objective") for r in runs if r.metrics}
    metric = objectives.pop() if len(objectives) == 1 and None not in objectives \
        else "test_accuracy"
    if metric == "test_accuracy" and _have_validation(runs):
        return "val_accuracy"
    return metric


def _have_validation(runs: list[Run]) -> bool:
    measured = [r for r in runs if r.metrics]
    return bool(measured) and all(is_number(r.metrics.get("val_accuracy")) for r in measured)


def _why_ranked_by(runs: list[Run], metric: str) -> str:
    if metric == "val_accuracy" and _have_validation(runs):
        return ("Ranked by val_accuracy: the runs hold a validation split, and the test set never "
                "chooses (--metric test_accuracy ranks by it)")
    if metric == "test_accuracy":
        return ("Ranked by test_accuracy: these runs hold no validation split "
                "(dataset.val_size=0); with one they are ranked on it")
    return ""


def _check_metric(runs: list[Run], metric: str) -> None:
    available = _metric_keys(runs)
    if available and metric not in available:
        raise UserError(f"--metric {metric!r} is not in metrics.json; allowed: {', '.join(sorted(available))}")


def fmt(value) -> str:
    """A value as the command line writes it: lists without spaces, floats short."""
    if isinstance(value, list):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)
