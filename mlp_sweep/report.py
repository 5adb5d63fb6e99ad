"""Figures (matplotlib, Agg) and a self-contained HTML report for a comparison."""

import base64
import html
import math
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402

from mlp_sweep.compare import Comparison, Row, _fmt, _is_number, table_records  # noqa: E402

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
        if len({_fmt(r.params.get(key)) for r in runs if r.params.get(key) is not None}) < 2:
            continue  # set in only some runs (e.g. one optimizer's option): nothing to compare
        figures.append(_metric_against(comparison, key, folder / f"{comparison.metric}_vs_{_safe(key)}.png"))
    for i, study in enumerate(comparison.studies):
        figures.append(_optuna_history(study.history(runs, comparison.metric), study.name,
                                       comparison.metric, folder / f"optuna_history_{i}.png"))
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
    constants = "".join(f"<li><code>{html.escape(k)}={html.escape(_fmt(v))}</code></li>"
                        for k, v in comparison.constants.items())
    studies = "".join(f"<p>{html.escape(s.summary())}</p>" for s in comparison.studies)
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
<h2>Figures</h2>{images}
</body></html>
""")


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _label(row: Row) -> str:
    text = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in row.params.items() if v is not None)
    return (text or str(row.first.folder.name))[:90]


def _percent(metric: str) -> bool:
    return "accuracy" in metric


def _learning_curves(comparison: Comparison, path: Path) -> Path:
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
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(rows) / 2) + 0.02, 1, 1))
    return _save(fig, path, tight=False)


def _metric_against(comparison: Comparison, key: str, path: Path) -> Path:
    metric = comparison.metric
    scale = 100 if _percent(metric) else 1
    points = [(run.params.get(key), run.metrics[metric] * scale)
              for row in comparison.rows for run in row.runs
              if run.state == "completed" and run.metrics and _is_number(run.metrics.get(metric))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    numeric = points and all(_is_number(x) for x, _ in points)
    if numeric:
        ax.scatter([x for x, _ in points], [y for _, y in points], alpha=0.8)
        positive = all(x > 0 for x, _ in points)
        spread = max(x for x, _ in points) / min(x for x, _ in points) if positive else 0
        if positive and spread >= 100:
            ax.set_xscale("log")
    else:
        # Categorical: one column of points per value, jittered, with the mean as a bar.
        categories = sorted({_fmt(x) for x, _ in points})
        jitter = random.Random(0)
        for i, category in enumerate(categories):
            ys = [y for x, y in points if _fmt(x) == category]
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
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
