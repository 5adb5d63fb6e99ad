"""Figures (matplotlib, Agg) and a self-contained HTML report for a comparison.

For an Optuna sweep whose study is readable, the figures include the parameter importances and a
parallel-coordinates view of the completed trials.
"""

import base64
import html
import math
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mlp_sweep.analysis.comparison import Comparison, Row, fmt, is_number  # noqa: E402
from mlp_sweep.analysis.study import IMPORTANCE_EVALUATOR, StudyRecord  # noqa: E402
from mlp_sweep.analysis.table import table_records  # noqa: E402

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
        figures.append(_optuna_history(study.history(runs, comparison.metric), study.name,
                                       comparison.metric, folder / f"optuna_history_{i}.png"))
        if study.importances:
            figures.append(_save(importances_figure(study), folder / f"importances_{i}.png"))
        if _parallel_axes(study.completed_trials()):
            figures.append(_save(parallel_coordinates_figure(study, _objective_name(runs, study)),
                                 folder / f"parallel_coordinates_{i}.png"))
    return figures


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
    """Test accuracy and training loss per epoch of the top rows; the caller saves or closes it."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [row for row in comparison.rows if row.first.metrics][:TOP_CURVES]
    for rank, row in enumerate(rows, 1):
        epochs = row.first.metrics.get("epochs", [])
        x = [e["epoch"] for e in epochs]
        label = f"#{rank} {_label(row)}"
        acc_ax.plot(x, [100 * e["test_accuracy"] for e in epochs], marker="o", label=label)
        loss_ax.plot(x, [e["train_loss"] for e in epochs], marker="o", label=label)
    acc_ax.set(title=f"Test accuracy per epoch (top {len(rows)} runs)", xlabel="epoch",
               ylabel="test accuracy (%)")
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


def _optuna_history(history: list[tuple[int, float | None]], name: str | None, metric: str,
                    path: Path) -> Path:
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


def importances_figure(study: StudyRecord) -> Figure:
    """Horizontal bars of `study.importances` (which must be set), the most important on top."""
    names, values = list(study.importances)[::-1], list(study.importances.values())[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.4 * len(names)))
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_xlim(0, max(values) * 1.15 or 1)
    ax.set(title=f"Parameter importances ({IMPORTANCE_EVALUATOR}, {len(study.completed_trials())} "
                 f"completed trials): {study.name}", xlabel="importance (they sum to 1)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def parallel_coordinates_figure(study: StudyRecord, objective: str) -> Figure:
    """One line per completed trial across the searched parameters that vary, each axis scaled to
    [0, 1] and labelled in its own units. Lines are labelled "trial N" (y is NaN on the axis of a
    parameter the trial lacks: momentum for an adam trial) and coloured by the trial's value."""
    trials = study.completed_trials()
    axes = _parallel_axes(trials, list(study.importances or ()))
    values = [t.value for t in trials]
    norm = Normalize(min(values), max(values))
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(axes) + 2), 5))
    maximise = study.study is None or study.study.direction.name == "MAXIMIZE"
    # The best trials are drawn last, on top of the others.
    for trial in sorted(trials, key=lambda t: t.value, reverse=not maximise):
        ys = [axis.position(trial.params.get(axis.name)) for axis in axes]
        color = cmap(norm(trial.value))
        ax.plot(range(len(axes)), ys, color=color, alpha=0.8, linewidth=1.5,
                marker="o", markersize=3, label=f"trial {trial.number}")
        # Over an axis the trial lacks, a dotted line with no marker: no value there, but the
        # trial's line still reaches its next parameter.
        present = [i for i, y in enumerate(ys) if not math.isnan(y)]
        for i, j in zip(present, present[1:]):
            if j > i + 1:
                ax.plot([i, j], [ys[i], ys[j]], color=color, alpha=0.6, linewidth=1, linestyle=":")
    ax.vlines(range(len(axes)), 0, 1, color="grey", linewidth=1)
    for i, axis in enumerate(axes):
        for position, label in axis.ticks():
            ax.text(i + 0.03, position, label, fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), [axis.title() for axis in axes],
                  rotation=20 if len(axes) > 4 else 0, ha="right" if len(axes) > 4 else "center")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.4)
    ax.set_ylim(-0.05, 1.05)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=objective)
    ax.set_title(f"Completed trials across the searched parameters: {study.name}")
    return fig


class _ParallelAxis:
    """One parameter's axis: where a value sits in [0, 1] and the labels to write along it."""

    def __init__(self, name: str, values: list, distribution) -> None:
        self.name = name
        present = [v for v in values if v is not None]
        self.choices = None
        choices = getattr(distribution, "choices", None)
        if choices is not None or not all(is_number(v) for v in present):
            # Categorical (batch sizes too): the distribution's choices in order, evenly spaced.
            choices = choices or sorted({fmt(v) for v in present})
            self.choices = list(dict.fromkeys(fmt(c) for c in choices))
            return
        low, high = min(present), max(present)
        # The searched range when known, so the lines show where in it the trials went.
        low, high = min(low, getattr(distribution, "low", low)), max(high, getattr(distribution, "high", high))
        self.log = low > 0 and high / low > 10
        self.low, self.high = (math.log10(low), math.log10(high)) if self.log else (low, high)

    def position(self, value) -> float:
        if value is None:
            return math.nan  # matplotlib leaves a gap at NaN
        if self.choices is not None:
            return self.choices.index(fmt(value)) / (len(self.choices) - 1) if len(self.choices) > 1 else 0.5
        x = math.log10(value) if self.log else value
        return (x - self.low) / (self.high - self.low) if self.high > self.low else 0.5

    def ticks(self) -> list[tuple[float, str]]:
        if self.choices is not None:
            return [(self.position(c), c) for c in self.choices]
        fractions = [0, 0.25, 0.5, 0.75, 1] if self.high > self.low else [0.5]
        points = [self.low + f * (self.high - self.low) for f in fractions]
        return [(f, f"{10 ** x if self.log else x:.3g}") for f, x in zip(fractions, points)]

    def title(self) -> str:
        return f"{self.name} (log)" if self.choices is None and self.log else self.name


def _parallel_axes(trials: list, order: list[str] = ()) -> list[_ParallelAxis]:
    """The axes of the parameters that take more than one value in `trials` (none with fewer than
    2 trials): those every trial has first, so that gaps are few and at the end; within each,
    those in `order` first, in that order, then the others by name."""
    if len(trials) < 2:
        return []
    names = {name for t in trials for name in t.params}
    names = [n for n in names if len({fmt(t.params.get(n)) for t in trials if n in t.params}) > 1
             or any(n not in t.params for t in trials)]
    names.sort(key=lambda n: (any(n not in t.params for t in trials),
                              order.index(n) if n in order else len(order), n))
    return [_ParallelAxis(n, [t.params.get(n) for t in trials],
                          next(t.distributions[n] for t in trials if n in t.distributions)) for n in names]


def _objective_name(runs: list, study: StudyRecord) -> str:
    """What the study's trial values are, from its runs' `objective` (e.g. val_accuracy)."""
    objectives = {(r.metrics or {}).get("objective") for r in runs
                  if r.folder.parent.resolve() == study.sweep_dir.resolve()} - {None}
    return f"{objectives.pop()} (trial value)" if len(objectives) == 1 else "trial value"


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
