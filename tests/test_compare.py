"""`python -m mlp_sweep.compare` on real run folders (a 4-run grid and a 3-trial Optuna sweep), and
on small hand-written run folders with a real Optuna study in SQLite for what training would only
make slower to set up: importances, their figures, keys only some runs have, 1-epoch axes."""

import base64
import copy
import csv
import json
import math
import shlex
import shutil
import statistics
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from mlp_sweep import compare as compare_module
from mlp_sweep.analysis.runs import find_runs
from mlp_sweep.analysis.study import read_studies

from conftest import run_here

slow = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"

TINY = ["trainer.epochs=2", "trainer.progress=false", "dataset.train_limit=1000", "dataset.test_limit=500"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_root) -> Path:
    """A folder where a user ran a grid (optimizer x seed) and an Optuna sweep."""
    cwd = tmp_path_factory.mktemp("project")
    grid = run_here("--multirun", "optimizer=adam,sgd", "trainer.seed=0,1", *TINY,
                    f"dataset.root={mnist_root}", "hydra.sweep.dir=multirun/grid", cwd=cwd)
    assert grid.returncode == 0, grid.stderr
    optuna = run_here("--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY,
                      f"dataset.root={mnist_root}", "hydra.sweep.dir=multirun/optuna-sweep",
                      cwd=cwd)
    assert optuna.returncode == 0, optuna.stderr
    return cwd


def grid_dir(project: Path) -> Path:
    return project / "multirun" / "grid"


def compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_here(*args, cwd=cwd, command="mlp_sweep.compare")


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@slow
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


@slow
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


@slow
def test_filter_top_sort_and_metric(project):
    result = compare(str(grid_dir(project)), "--no-group", "--filter", "optimizer=sgd",
                     "--metric", "train_loss", "--sort", "train_loss", "--ascending", "--top", "1",
                     "--json", "one.json", cwd=project)
    assert result.returncode == 0, result.stderr
    [row] = json.loads((project / "one.json").read_text())["rows"]
    sgd_losses = [metrics_of(j)["train_loss"] for j in grid_dir(project).iterdir() if j.is_dir()
                  and metrics_of(j) and "SGD" in (j / ".hydra/config.yaml").read_text()]
    assert row["train_loss"] == min(sgd_losses)


@slow
def test_best_prints_config_and_a_command_that_reproduces_it(project, mnist_root):
    result = compare(str(grid_dir(project)), "--no-group", "--best", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Best run:" in result.stdout and "optimizer:" in result.stdout
    command = result.stdout.split("Reproduce with:\n")[1].strip()
    assert command.startswith("python -m mlp_sweep.train ")
    best_folder = result.stdout.split("Best run: ")[1].split()[0]
    rerun = run_here(*shlex.split(command)[3:], cwd=project)
    assert rerun.returncode == 0, rerun.stderr
    [again] = [p for p in (project / "outputs").glob("*/*") if p.is_dir()]
    assert metrics_of(again)["test_accuracy"] == metrics_of(project / best_folder)["test_accuracy"]
    shutil.rmtree(project / "outputs")


@slow
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


@slow
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


@slow
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


@slow
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


@slow
def test_no_argument_takes_the_newest_sweep(project):
    result = compare("--json", "default.json", cwd=project)
    assert result.returncode == 0, result.stderr
    folders = [row["folder"] for row in json.loads((project / "default.json").read_text())["rows"]]
    assert all(f.startswith("multirun/optuna-sweep/") for f in folders)


# ---- hand-written run folders ---------------------------------------------------------------

OPTIMIZERS = {"adam": {"_target_": "torch.optim.Adam", "lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.0},
              "sgd": {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}}


def write_run(folder: Path, optimizer: str, config: dict, value: float, epochs: int = 2,
              sweeper: dict | None = None, state: str = "completed") -> Path:
    """A run folder as `mlp_sweep.train` leaves it: .hydra/ config, choices and sweeper, metrics."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    hydra = {"runtime": {"choices": {"optimizer": optimizer, "hydra/sweeper": "basic"}},
             "sweeper": sweeper or {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer={optimizer}"]))
    history = [{"epoch": e, "test_accuracy": value - 0.01 * (epochs - e), "train_loss": 1.0 / e}
               for e in range(1, epochs + 1)]
    (folder / "metrics.json").write_text(json.dumps({
        "objective": "val_accuracy", "val_accuracy": value, "test_accuracy": value,
        "train_loss": 0.1, "best_epoch": epochs, "train_time_s": 1.0, "parameter_count": 1000,
        "epochs": history}))
    (folder / "status.json").write_text(json.dumps({"state": state}))
    return folder


def write_grid(sweep: Path) -> Path:
    """optimizer=adam,sgd x trainer.seed=0,1 with each optimizer's own config keys."""
    for job, (optimizer, seed) in enumerate([("adam", 0), ("adam", 1), ("sgd", 0), ("sgd", 1)]):
        config = {"dataset": {"name": "mnist"}, "optimizer": OPTIMIZERS[optimizer],
                  "trainer": {"seed": seed, "epochs": 2}}
        write_run(sweep / str(job), optimizer, config, 0.9 + 0.01 * job)
    return sweep


def write_optuna_sweep(root: Path, n_trials: int = 16, storage: str | None = "sqlite",
                       same_params: bool = False, failed_after: int | None = None,
                       direction: str = "maximize") -> Path:
    """An Optuna sweep folder whose study (in SQLite under `root`) has searched lr, optimizer and
    activation, plus momentum for sgd trials and betas.0 for adam ones, as the preset does."""
    sweep = root / "optuna-sweep"
    url = f"sqlite:///{root / 'optuna.db'}"
    study = optuna.create_study(study_name="fake", storage=url, direction=direction,
                                sampler=optuna.samplers.RandomSampler(seed=3))
    for number in range(n_trials):
        if same_params:
            study.enqueue_trial({"optimizer.lr": 0.01, "optimizer": "sgd", "activation": "relu",
                                 "optimizer.momentum": 0.9})
        trial = study.ask()
        lr = trial.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
        optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        activation = trial.suggest_categorical("activation", ["relu", "tanh", "gelu"])
        config = {"activation": {"name": activation}, "optimizer": dict(copy.deepcopy(OPTIMIZERS[optimizer]), lr=lr),
                  "trainer": {"seed": 0, "epochs": 2}, "dataset": {"name": "ke"}}
        if optimizer == "sgd":
            config["optimizer"]["momentum"] = trial.suggest_float("optimizer.momentum", 0.5, 0.99)
        else:
            config["optimizer"]["betas"][0] = trial.suggest_float("optimizer.betas.0", 0.8, 0.95)
        value = 0.95 - 0.05 * abs(math.log10(lr) + 2) - (0.01 if activation == "tanh" else 0)
        trial.set_user_attr("run_dir", str(sweep / str(number)))
        failed = failed_after is not None and number >= failed_after
        # hydra.yaml keeps the preset's interpolation as written: "fa" + dataset.name is "fake".
        sweeper = {"_target_": "mlp_sweep.sweeping.sweeper_plugin.MlpOptunaSweeper",
                   "study_name": "fa${dataset.name}",
                   "storage": url if storage == "sqlite" else storage}
        write_run(sweep / str(number), optimizer, config, value, sweeper=sweeper,
                  state="failed" if failed else "completed")
        study.tell(trial, state=optuna.trial.TrialState.FAIL) if failed else study.tell(trial, value)
    best = max(study.trials, key=lambda t: -math.inf if t.value is None else t.value)
    if direction == "minimize":
        best = min(study.trials, key=lambda t: math.inf if t.value is None else t.value)
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": best.params, "best_value": best.value}))
    return sweep


@pytest.mark.parametrize("direction, pick", [("maximize", max), ("minimize", min)])
def test_a_study_without_optimization_results_gets_its_best_in_its_own_direction(tmp_path,
                                                                                  direction, pick):
    sweep = write_optuna_sweep(tmp_path, n_trials=6, direction=direction)
    (sweep / "optimization_results.yaml").unlink()  # a sweep still running, or stopped by a kill
    [record] = read_studies(find_runs([str(sweep)]))
    values = [t.value for t in record.trials]
    assert len(set(values)) > 1 and record.best_value == pick(values)


def run_main(*args: str, cwd: Path, capsys, monkeypatch) -> str:
    """`python -m mlp_sweep.compare ARGS` in this process (a second, not a torch start-up each)."""
    monkeypatch.chdir(cwd)
    assert compare_module.main(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def importance_lines(out: str) -> tuple[str, list[tuple[str, float]]]:
    """The header line of the printed importances and the (parameter, importance) lines below it."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Parameter importances"))
    pairs = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        name, value = line.split()
        pairs.append((name, float(value)))
    return lines[start], pairs


def test_importances_are_printed_with_their_evaluator_and_match_optuna(tmp_path, capsys, monkeypatch):
    sweep = write_optuna_sweep(tmp_path)
    out = run_main(str(sweep), "--json", "out.json", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    header, pairs = importance_lines(out)
    assert header == ("Parameter importances (PED-ANOVA, Optuna's get_param_importances, "
                      "16 completed trials of study fake):")
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    # The conditional parameters (momentum for sgd trials only) are assessed, not an error.
    assert {name for name, _ in pairs} == set(expected) >= {"optimizer.momentum", "optimizer.betas.0"}
    assert [value for _, value in pairs] == sorted((value for _, value in pairs), reverse=True)
    for name, value in pairs:
        assert value == pytest.approx(expected[name], abs=5e-4)
    assert pairs[0][0] == "optimizer.lr"  # the objective above is made of lr mostly
    [record] = json.loads((tmp_path / "out.json").read_text())["studies"]
    assert record["importance_evaluator"] == "PED-ANOVA" and record["completed_trials"] == 16
    assert record["importances"] == pytest.approx(expected)


@pytest.mark.parametrize("kind, reason", [
    ("one completed", "not computed: only 1 completed trial; importances need at least 2"),
    ("same params", "not computed: no searched parameter takes more than one value"),
    ("in memory", "not computed: the study was in memory (hydra.sweeper.storage: null)"),
    ("unreadable", "not computed: its storage sqlite:///nowhere/x.db could not be read from here"),
])
def test_importances_that_cannot_be_computed_are_one_line_why(tmp_path, capsys, monkeypatch, kind, reason):
    sweep = write_optuna_sweep(
        tmp_path, n_trials=3, same_params=kind == "same params",
        failed_after=1 if kind == "one completed" else None,
        storage={"in memory": None, "unreadable": "sqlite:///nowhere/x.db"}.get(kind, "sqlite"))
    out = run_main(str(sweep), "--plot", "plots", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    [line] = [line for line in out.splitlines() if line.startswith("Parameter importances")]
    assert line.startswith("Parameter importances of study fake: ") and reason in line
    names = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert "importances_0.png" not in names and "optuna_history_0.png" in names
    assert "parallel_coordinates_0.png" not in names  # nothing varies across 2 completed trials


def test_importance_and_parallel_coordinate_figures_are_pngs_in_the_html(tmp_path, capsys, monkeypatch):
    sweep = write_optuna_sweep(tmp_path)
    run_main(str(sweep), "--plot", "plots", "--html", "report.html", cwd=tmp_path,
             capsys=capsys, monkeypatch=monkeypatch)
    report = (tmp_path / "report.html").read_text()
    for name in ("importances_0.png", "parallel_coordinates_0.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
        assert base64.b64encode(data).decode() in report
    assert "Parameter importances (PED-ANOVA" in report


def test_parallel_coordinates_show_the_parameters_that_vary(tmp_path):
    from mlp_sweep.analysis.report import parallel_coordinates_figure

    [study] = read_studies(find_runs([str(write_optuna_sweep(tmp_path))]))
    figure = parallel_coordinates_figure(study)
    names = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    # Optuna's figure: the objective's axis, then each parameter, conditional ones included.
    assert names == ["Objective Value", "activation", "optimizer", "optimizer.betas.0",
                     "optimizer.lr", "optimizer.momentum"]


def test_keys_only_some_runs_have_are_columns_not_shared_values(tmp_path, capsys, monkeypatch):
    sweep = write_grid(tmp_path / "grid")
    out = run_main(str(sweep), "--no-group", "--json", "out.json", cwd=tmp_path,
                   capsys=capsys, monkeypatch=monkeypatch)
    shared = out.split("Same for every run: ")[1].split("\nrank")[0]
    assert "dataset.name=mnist" in shared and "optimizer.weight_decay=0 " in shared
    for key in ("optimizer.betas", "optimizer.momentum", "optimizer.lr", "trainer.seed"):
        assert f"{key}=" not in shared
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    for row in rows:
        adam = row["optimizer"] == "adam"
        assert row["optimizer.betas"] == ("[0.9,0.999]" if adam else None)
        assert row["optimizer.momentum"] == (None if adam else "0.9")
    assert "optimizer.lr" not in rows[0]  # implied by the optimizer column


def test_one_epoch_learning_curves_have_whole_epoch_ticks(tmp_path):
    from mlp_sweep.analysis.report import learning_curves_figure

    config = {"optimizer": OPTIMIZERS["adam"], "trainer": {"seed": 0, "epochs": 1}}
    run = write_run(tmp_path / "run", "adam", config, 0.9, epochs=1)
    figure = learning_curves_figure(compare_module.compare([str(run)]))
    figure.canvas.draw()
    for ax in figure.axes:
        low, high = ax.get_xlim()
        visible = [tick for tick in ax.get_xticks() if low <= tick <= high]
        assert visible == [1.0], (ax.get_title(), ax.get_xticks())


@slow
def test_a_grid_is_ranked_on_validation_when_its_runs_hold_it_and_says_so(project, mnist_root):
    without = compare(str(grid_dir(project)), "--no-group", "--json", "plain.json", cwd=project)
    assert without.returncode == 0, without.stderr
    assert "Ranked by test_accuracy: these runs hold no validation split" in without.stdout
    grid = run_here("--multirun", "optimizer=adam,sgd", *TINY, "dataset.val_size=1000",
                    f"dataset.root={mnist_root}", "hydra.sweep.dir=multirun/grid-val", cwd=project)
    assert grid.returncode == 0, grid.stderr
    ranked = compare("multirun/grid-val", "--json", "val.json", cwd=project)
    assert ranked.returncode == 0, ranked.stderr
    assert "Ranked by val_accuracy: the runs hold a validation split" in ranked.stdout
    shown = json.loads((project / "val.json").read_text())
    assert shown["metric"] == "val_accuracy"
    values = [row["val_accuracy"] for row in shown["rows"]]
    assert values == sorted(values, reverse=True)  # best validation first, whatever the test says
