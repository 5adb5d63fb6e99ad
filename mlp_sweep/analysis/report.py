"""Figures (matplotlib, Agg) and a self-contained HTML report for a comparison.

For an Optuna sweep whose study is readable, the figures include the parameter importances and a
parallel-coordinates view of the completed trials.
"""

import base64
import html
import math
import random
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import optuna.visualization.matplotlib as plots  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mlp_sweep.analysis.comparison import Comparison, Row, fmt  # noqa: E402
from mlp_sweep.analysis.study import StudyRecord, importance_evaluator  # noqa: E402
from mlp_sweep.analysis.table import table_records  # noqa: E402
from mlp_sweep.values import is_number  # noqa: E402

TOP_CURVES = 6


def write_figures(comparison: Comparison, folder: Path | None) -> list[Path]:
    """Write the PNG figures into `folder` (a temporary one when None) and return their paths."""
    if folder is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="mlp_sweep_figures_"))
    folder.mkdir(parents=True, exist_ok=True)
    figures = [_learning_curves(comparison, folder / "learning_curves.png")]
    runs = [run for row in comparison.rows for run in row.runs]
    for key in comparison.differing:
        if len({fmt(r.params.get(key)) for r in runs if r.params.get(key) is not None}) < 2:
            continue  # set in only some runs (e.g. one optimizer's option): nothing to compare
        figures.append(_metric_against(comparison, key, folder / f"{comparison.metric}_vs_{_safe(key)}.png"))
    for i, study in enumerate(comparison.studies):
        history = folder / f"optuna_history_{i}.png"
        if study.study is not None:
            figures.append(_save(optuna_figure(plots.plot_optimization_history, study.study), history))
        else:
            figures.append(_history_from_folders(study.history(runs, comparison.metric),
                                                 study.name, comparison.metric, history))
        if study.importances:
            figures.append(_save(importances_figure(study), folder / f"importances_{i}.png"))
        if _varied_params(study.completed_trials()):
            figures.append(_save(parallel_coordinates_figure(study),
                                 folder / f"parallel_coordinates_{i}.png"))
    return figures


def optuna_figure(plot, study, **options) -> Figure:
    """One of Optuna's own matplotlib figures (optuna.visualization.matplotlib) of `study`."""
    with warnings.catch_warnings():  # Optuna marks its matplotlib backend experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return plot(study, **options).figure


def importances_figure(study: StudyRecord) -> Figure:
    """Optuna's importance bars, with the evaluator whose numbers compare prints."""
    return optuna_figure(plots.plot_param_importances, study.study,
                         evaluator=importance_evaluator())


def parallel_coordinates_figure(study: StudyRecord) -> Figure:
    """Optuna's parallel coordinates of the completed trials over the parameters that vary; a
    parameter a trial did not have (momentum for an adam trial) sits at its axis' "missing" mark."""
    return optuna_figure(plots.plot_parallel_coordinate, study.study,
                         params=_varied_params(study.completed_trials()))


def write_html(comparison: Comparison, figures: list[Path], path: Path, table_text: str) -> None:
    """One HTML file with the table and every figure embedded as a data URI."""
    records = table_records(comparison)
    headers = list(dict.fromkeys(k for record in records for k in record))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr class='{}'>".format(html.escape(r.get("state", ""))) + "".join(
            f"<td>{html.escape(_cell(r.get(h)))}</td>" for h in headers) + "</tr>"
        for r in records)
    constants = "".join(f"<li><code>{html.escape(k)}={html.escape(fmt(v))}</code></li>"
                        for k, v in comparison.constants.items())
    studies = "".join(f"<p>{html.escape(s.summary())}</p>" for s in comparison.studies)
    importances = "".join(f"<pre>{html.escape(s.importances_text())}</pre>" for s in comparison.studies)
    if importances:
        importances = f"<h2>Parameter importances</h2>{importances}"
    images = "".join(
        f"<figure><img alt='{html.escape(f.stem)}' src='data:image/png;base64,"
        f"{base64.b64encode(f.read_bytes()).decode()}'><figcaption>{html.escape(f.stem)}</figcaption></figure>"
        for f in figures)
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mlp_sweep comparison</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; white-space: nowrap; }}
th {{ background: #f0f0f0; }}
tr.failed td, tr.broken td {{ color: #a00; }} tr.pruned td {{ color: #888; }}
img {{ max-width: 100%; width: 900px; border: 1px solid #eee; }}
ul.constants li {{ display: inline-block; margin-right: 1.5em; }}
figure {{ display: inline-block; margin: 1em; }}
</style></head><body>
<h1>Runs compared by {html.escape(comparison.metric)}</h1>
{studies}
<h2>Table, best first</h2>
<div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<h2>Same for every run</h2><ul class="constants">{constants}</ul>
{importances}
<h2>Figures</h2>{images}
</body></html>
""")


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _label(row: Row) -> str:
    text = ", ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in row.params.items() if v is not None)
    return (text or str(row.first.folder.name))[:90]


def _percent(metric: str) -> bool:
    return "accuracy" in metric


def _learning_curves(comparison: Comparison, path: Path) -> Path:
    return _save(learning_curves_figure(comparison), path, tight=False)


def learning_curves_figure(comparison: Comparison) -> Figure:
    """Accuracy and training loss per epoch of the top rows; the caller saves or closes it. A
    run's test accuracy where it has one every epoch; else its validation accuracy (a run that
    chooses on validation reads the test set once, for the epoch it keeps)."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [row for row in comparison.rows if row.first.metrics][:TOP_CURVES]
    names = set()
    for rank, row in enumerate(rows, 1):
        epochs = row.first.metrics.get("epochs", [])
        tested = all(e.get("test_accuracy") is not None for e in epochs)
        key, name = ("test_accuracy", "test") if tested else ("val_accuracy", "validation")
        names.add(name)
        x = [e["epoch"] for e in epochs]
        label = f"#{rank} {_label(row)}"
        acc_ax.plot(x, [100 * e[key] for e in epochs], marker="o",
                    label=label if tested else f"{label} (validation)")
        loss_ax.plot(x, [e["train_loss"] for e in epochs], marker="o", label=label)
    name = " or ".join(sorted(names, reverse=True)) or "test"
    acc_ax.set(title=f"{name.capitalize()} accuracy per epoch (top {len(rows)} runs)",
               xlabel="epoch", ylabel=f"{name} accuracy (%)")
    loss_ax.set(title="Training loss per epoch (log scale)", xlabel="epoch",
                ylabel="cross-entropy loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(_whole_numbers())
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(rows) / 2) + 0.02, 1, 1))
    return fig


def _whole_numbers() -> MaxNLocator:
    """Ticks on whole numbers only (epochs, trial numbers). MaxNLocator drops `integer` when fewer
    than `min_n_ticks` integers are in view, so a 1-epoch run's axis would read 0.96, 0.98, ...
    unless one tick is enough."""
    return MaxNLocator(integer=True, min_n_ticks=1)


def _metric_against(comparison: Comparison, key: str, path: Path) -> Path:
    metric = comparison.metric
    scale = 100 if _percent(metric) else 1
    points = [(run.params.get(key), run.metrics[metric] * scale)
              for row in comparison.rows for run in row.runs
              if run.state == "completed" and run.metrics and is_number(run.metrics.get(metric))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    numeric = points and all(is_number(x) for x, _ in points)
    if numeric:
        ax.scatter([x for x, _ in points], [y for _, y in points], alpha=0.8)
        positive = all(x > 0 for x, _ in points)
        spread = max(x for x, _ in points) / min(x for x, _ in points) if positive else 0
        if positive and spread >= 100:
            ax.set_xscale("log")
    else:
        # Categorical: one column of points per value, jittered, with the mean as a bar.
        categories = sorted({fmt(x) for x, _ in points})
        jitter = random.Random(0)
        for i, category in enumerate(categories):
            ys = [y for x, y in points if fmt(x) == category]
            ax.scatter([i + jitter.uniform(-0.12, 0.12) for _ in ys], ys, alpha=0.8)
            ax.hlines(sum(ys) / len(ys), i - 0.25, i + 0.25, color="black")
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
    unit = " (%)" if _percent(metric) else ""
    ax.set(title=f"{metric} against {key}", xlabel=key, ylabel=f"{metric}{unit}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _history_from_folders(history: list[tuple[int, float | None]], name: str | None, metric: str,
                            path: Path) -> Path:
    """A sweep whose study was in memory, from its job folders (Optuna's own plot needs the
    study, which ended with the sweep)."""
    scale = 100 if _percent(metric) else 1
    done = [(n, v * scale) for n, v in history if v is not None]
    failed = [n for n, v in history if v is None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([n for n, _ in done], [v for _, v in done], label="trial value")
    best, best_so_far = -math.inf, []
    for _, value in done:
        best = max(best, value)
        best_so_far.append(best)
    ax.step([n for n, _ in done], best_so_far, where="post", color="tab:red", label="best so far")
    if failed and done:
        ax.scatter(failed, [min(v for _, v in done)] * len(failed), marker="x", color="grey",
                   label="pruned or failed")
    unit = " (%)" if _percent(metric) else ""
    ax.set(title=f"Optuna optimisation history: {name}", xlabel="trial number",
           ylabel=f"{metric}{unit}")
    ax.xaxis.set_major_locator(_whole_numbers())
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)



def _varied_params(trials: list) -> list[str]:
    """The parameters that take more than one value in `trials`, or that only some have (none
    with fewer than 2 trials)."""
    if len(trials) < 2:
        return []
    names = {name for t in trials for name in t.params}
    return sorted(n for n in names if len({fmt(t.params.get(n)) for t in trials if n in t.params}) > 1
                  or any(n not in t.params for t in trials))


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
