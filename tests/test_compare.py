"""`python -m mlp_sweep.compare` on real run folders: a 4-run grid and a 3-trial Optuna sweep."""

import csv
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_cli

pytestmark = pytest.mark.slow

TINY = ["trainer.epochs=2", "trainer.progress=false", "dataset.train_limit=1000", "dataset.test_limit=500"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_root) -> Path:
    """A folder where a user ran a grid (optimizer x seed) and an Optuna sweep."""
    cwd = tmp_path_factory.mktemp("project")
    grid = run_cli("--multirun", "optimizer=adam,sgd", "trainer.seed=0,1", *TINY,
                   f"dataset.root={mnist_root}", "hydra.sweep.dir=multirun/grid", cwd=cwd)
    assert grid.returncode == 0, grid.stderr
    optuna = run_cli("--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY,
                     f"dataset.root={mnist_root}", "hydra.sweep.dir=multirun/optuna-sweep", cwd=cwd)
    assert optuna.returncode == 0, optuna.stderr
    return cwd


def grid_dir(project: Path) -> Path:
    return project / "multirun" / "grid"


def compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlp_sweep.compare", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_table_lists_runs_best_first_with_only_differing_columns(project):
    result = compare(str(grid_dir(project)), "--no-group", "--json", "rows.json", cwd=project)
    assert result.returncode == 0, result.stderr
    rows = json.loads((project / "rows.json").read_text())["rows"]
    assert len(rows) == 4
    values = [row["test_accuracy"] for row in rows]
    assert values == sorted(values, reverse=True)
    assert {"optimizer", "trainer.seed"} <= rows[0].keys()
    assert "optimizer.lr" not in rows[0]  # implied by the optimizer choice in a grid
    assert "dataset.name" not in rows[0] and "trainer.epochs" not in rows[0]
    assert "Same for every run:" in result.stdout and "dataset.name=mnist" in result.stdout
    for row in rows:
        assert row["test_accuracy"] == metrics_of(project / row["folder"])["test_accuracy"]


def test_runs_differing_only_by_seed_are_one_row_with_mean_and_std(project):
    result = compare(str(grid_dir(project)), "--csv", "rows.csv", cwd=project)
    assert result.returncode == 0, result.stderr
    with (project / "rows.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["seeds"] for row in rows] == ["2", "2"]
    assert "trainer.seed" not in rows[0]
    for row in rows:
        jobs = [j for j in grid_dir(project).iterdir() if j.is_dir()
                and yaml.safe_load((j / ".hydra/config.yaml").read_text())["optimizer"]["_target_"]
                .endswith({"adam": "Adam", "sgd": "SGD"}[row["optimizer"]])]
        accuracies = [metrics_of(j)["test_accuracy"] for j in jobs]
        assert float(row["test_accuracy"]) == pytest.approx(statistics.fmean(accuracies))
        assert float(row["test_accuracy_std"]) == pytest.approx(statistics.stdev(accuracies))
    assert "±" in result.stdout


def test_filter_top_sort_and_metric(project):
    result = compare(str(grid_dir(project)), "--no-group", "--filter", "optimizer=sgd",
                     "--metric", "train_loss", "--sort", "train_loss", "--ascending", "--top", "1",
                     "--json", "one.json", cwd=project)
    assert result.returncode == 0, result.stderr
    [row] = json.loads((project / "one.json").read_text())["rows"]
    sgd_losses = [metrics_of(j)["train_loss"] for j in grid_dir(project).iterdir() if j.is_dir()
                  and metrics_of(j) and "SGD" in (j / ".hydra/config.yaml").read_text()]
    assert row["train_loss"] == min(sgd_losses)


def test_best_prints_config_and_a_command_that_reproduces_it(project, mnist_root):
    result = compare(str(grid_dir(project)), "--no-group", "--best", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Best run:" in result.stdout and "optimizer:" in result.stdout
    command = result.stdout.split("Reproduce with:\n")[1].strip()
    assert command.startswith("python -m mlp_sweep.train ")
    best_folder = result.stdout.split("Best run: ")[1].split()[0]
    rerun = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=project,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    [again] = [p for p in (project / "outputs").glob("*/*") if p.is_dir()]
    assert metrics_of(again)["test_accuracy"] == metrics_of(project / best_folder)["test_accuracy"]
    shutil.rmtree(project / "outputs")


def test_optuna_sweep_agrees_with_optimization_results(project):
    sweep = project / "multirun" / "optuna-sweep"
    result = compare(str(sweep), "--json", "optuna.json", cwd=project)
    assert result.returncode == 0, result.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rows = json.loads((project / "optuna.json").read_text())["rows"]
    metric = json.loads((project / "optuna.json").read_text())["metric"]
    assert len(rows) == 3
    assert rows[0][metric] == best["best_value"]
    assert "Optuna study mlp_mnist" in result.stdout


def test_plots_and_html_report_cover_every_run(project):
    result = compare(str(grid_dir(project)), "multirun/optuna-sweep", "--no-group",
                     "--plot", "plots", "--html", "report.html", cwd=project)
    assert result.returncode == 0, result.stderr
    pngs = sorted((project / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"learning_curves.png", "optuna_history_0.png", "test_accuracy_vs_optimizer.png"} <= names
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report = (project / "report.html").read_text()
    runs = [j for sweep in (grid_dir(project), project / "multirun" / "optuna-sweep")
            for j in sweep.iterdir() if j.is_dir()]
    assert len(runs) == 7
    for run in runs:
        assert str(run.relative_to(project)) in report
    assert report.count("data:image/png;base64,") == len(pngs)


def test_broken_and_failed_runs_are_listed_not_dropped(project, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(grid_dir(project), sweep)
    (sweep / "0" / "metrics.json").write_text('{"test_accuracy": 0.9, "epo')  # killed mid-write
    (sweep / "0" / "status.json").unlink()
    (sweep / "1" / "metrics.json").unlink()
    result = compare(str(sweep), "--no-group", "--json", "out.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    states = {row["folder"].rsplit("/", 1)[1]: row["state"] for row in rows}
    assert states == {"0": "broken", "1": "broken", "2": "completed", "3": "completed"}
    assert "metrics.json is corrupt" in result.stdout and "no metrics.json" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["empty"], "empty holds no runs"),
    (["GRID", "--metric", "f1"], "--metric 'f1' is not in metrics.json; allowed: best_epoch"),
    (["GRID", "--filter", "optimizer.gamma=1"], "--filter key 'optimizer.gamma' is not in the runs' configs"),
    (["GRID", "--filter", "optimizer=lion"], "no run matches --filter optimizer=lion"),
])
def test_bad_input_is_one_clear_line(project, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(grid_dir(project)) if a == "GRID" else a for a in args]
    result = compare(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {result.stderr.strip()[7:]}" and message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_argument_takes_the_newest_sweep(project):
    result = compare("--json", "default.json", cwd=project)
    assert result.returncode == 0, result.stderr
    folders = [row["folder"] for row in json.loads((project / "default.json").read_text())["rows"]]
    assert all(f.startswith("multirun/optuna-sweep/") for f in folders)
