"""hydra/sweeper=mlp_optuna as a drop-in for the stock Optuna sweeper, in a Hydra app of its own
(tests/sweeper_app/sphere.py): the stock sweeper's scenarios, pruning through `report`, values
Optuna cannot record, and bad sweeper input.

The scenarios run in this process through Hydra's own test utility, as Hydra's plugin tests run
theirs, and bad input as the command line exits on it (conftest.run_here); a subprocess only where
the process is the point: the command that best.yaml gives, and what the sweeper imports.
"""

import contextlib
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.test_utils.test_utils import SweepTaskFunction
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mlp_sweep.sweeping import trial_link

from conftest import run_here

optuna.logging.set_verbosity(optuna.logging.WARNING)

APP = Path(__file__).resolve().parent / "sweeper_app" / "sphere.py"
sys.path.insert(0, str(APP.parent))  # the app's module, for its task and custom search space
import sphere as sphere_app  # noqa: E402


@contextlib.contextmanager
def sweep(tmp_path: Path, *overrides: str) -> Iterator[SweepTaskFunction]:
    """`python sphere.py --multirun OVERRIDES`, in this process; its sweep folder tmp_path/sweep
    lives until the block ends."""
    runner = SweepTaskFunction()
    runner.calling_file, runner.calling_module = str(APP), None
    runner.task_function = sphere_app.sphere
    runner.config_path, runner.config_name = "conf", "sphere"
    runner.overrides, runner.temp_dir = list(overrides), str(tmp_path / "sweep")
    with runner:
        yield runner


def sphere(tmp_path: Path, *overrides: str, here: bool = False) -> subprocess.CompletedProcess:
    """`python sphere.py --multirun OVERRIDES` in tmp_path, its sweep folder tmp_path/sweep; `here`:
    in this process (conftest.run_here), exiting and printing as the command line does."""
    args = ["--multirun", f"hydra.sweep.dir={tmp_path}/sweep", *overrides]
    if here:
        return run_here(*args, cwd=tmp_path, script=APP)
    return subprocess.run([sys.executable, str(APP), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


def storage_of(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/sphere.db"


def study_of(tmp_path: Path, name: str = "sphere") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_of(tmp_path))


def results(tmp_path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml"))


@pytest.mark.parametrize("fixed_y", [False, True])
def test_sphere_with_tpe_and_a_storage(tmp_path, fixed_y):
    extra = ["x=choice(0,1,2)", "y=0"] if fixed_y else []
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}",
               "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", *extra):
        best, study = results(tmp_path), study_of(tmp_path)
    assert best["best_params"] == study.best_trial.params and best["best_value"] == study.best_value
    assert ("y" in best["best_params"]) is not fixed_y
    assert len(study.trials) == 20 and best["best_value"] <= 2.27


@pytest.mark.parametrize("storage", [True, False])
@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "nsgaii", "nsgaiii", "qmc", "gp", "grid"])
def test_every_stock_sampler_runs_with_and_without_a_storage(tmp_path, sampler, storage):
    with sweep(tmp_path, f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=3",
               f"hydra.sweeper.storage={storage_of(tmp_path) if storage else 'null'}"):
        best = results(tmp_path)
    assert set(best["best_params"]) == {"x", "y"}
    assert best["best_value"] == best["best_params"]["x"] ** 2 + best["best_params"]["y"] ** 2
    if storage:
        trials = study_of(tmp_path).trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
        assert best["best_value"] == min(t.value for t in trials)


@pytest.mark.parametrize("n_trials", [10, 3])
def test_grid_sampler_is_built_once_the_space_is_known(tmp_path, n_trials):
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}",
               "hydra/sweeper/sampler=grid", f"hydra.sweeper.n_trials={n_trials}",
               "x=choice(-1,1)", "y=choice(-1,0)", "z=choice(foo,bar)"):
        best = results(tmp_path)
    trials = study_of(tmp_path).trials
    points = {(t.params["x"], t.params["y"], t.params["z"]) for t in trials}
    assert len(trials) == len(points) == min(n_trials, 8)  # the grid has 2 x 2 x 2 points
    assert all(t.state == TrialState.COMPLETE for t in trials)
    if n_trials >= 8:
        assert best["best_value"] == 1


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


@pytest.mark.parametrize("sampler", ["nsgaii", "random"])
def test_two_objectives_give_the_pareto_front(tmp_path, sampler):
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}", "objectives=2",
               "hydra.sweeper.direction=[minimize,minimize]", f"hydra/sweeper/sampler={sampler}",
               "hydra.sweeper.n_trials=12"):
        front = results(tmp_path)["solutions"]
        best = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    study = study_of(tmp_path)
    assert all(t.state == TrialState.COMPLETE for t in study.trials) and len(study.trials) == 12
    assert sorted(s["values"] for s in front) == sorted(t.values for t in study.best_trials)
    for a in front:
        assert not any(dominates(b["values"], a["values"]) for b in front)
    assert best["directions"] == ["minimize", "minimize"]
    assert sorted(t["trial"] for t in best["pareto_front"]) == sorted(t.number for t in study.best_trials)


def test_custom_search_space(tmp_path):
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}",
               "hydra.sweeper.custom_search_space=sphere.z_near_x", "hydra/sweeper/sampler=random"):
        pass
    trials = study_of(tmp_path).trials
    assert len(trials) == 20
    for trial in trials:
        assert abs(trial.params["x"] - trial.params["z"]) <= 0.3 and 0 <= trial.params["+w"] <= 1


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_failure_rate(tmp_path, max_failure_rate):
    overrides = [f"hydra.sweeper.storage={storage_of(tmp_path)}", "error=true",
                 f"hydra.sweeper.max_failure_rate={max_failure_rate}", "hydra.sweeper.n_trials=6"]
    if max_failure_rate < 1:
        with pytest.raises(RuntimeError, match="cfg.error is True"), sweep(tmp_path, *overrides):
            pass
    else:
        with sweep(tmp_path, *overrides):
            pass
    trials = study_of(tmp_path).trials
    assert all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: cfg.error is True" for t in trials)
    assert len(trials) == (4 if max_failure_rate < 1 else 6)  # 4 > 0.5 x 6: the sweep stops there


def test_nan_and_the_wrong_number_of_values_are_failed_trials_that_do_not_stop_the_sweep(tmp_path):
    # As in the stock sweeper: only a job that raises counts toward max_failure_rate (0 here).
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}", "nan_above=0",
               "hydra.sweeper.max_failure_rate=0", "hydra/sweeper/sampler=random"):
        pass
    trials = study_of(tmp_path).trials
    nan = [t for t in trials if t.params["x"] > 0]
    assert len(trials) == 20 and nan and all(t.state == TrialState.FAIL for t in nan)
    assert all("the task returned NaN" in t.user_attrs["fail_reason"] for t in nan)
    assert all(t.state == TrialState.COMPLETE for t in trials if t not in nan)

    pair = f"sqlite:///{tmp_path}/pair.db"
    with sweep(tmp_path, f"hydra.sweeper.storage={pair}", "objectives=2",
               "hydra.sweeper.max_failure_rate=0", "hydra.sweeper.n_trials=3"):
        pass
    trials = optuna.load_study(study_name="sphere", storage=pair).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert "returned 2 value(s) for 1 direction(s)" in trials[0].user_attrs["fail_reason"]


def test_a_task_outside_the_project_is_pruned_through_report(tmp_path):
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}", "steps=5",
               "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=2",
               "hydra.sweeper.pruner.n_warmup_steps=0", "hydra/sweeper/sampler=random"):
        pass
    trials = study_of(tmp_path).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(len(t.intermediate_values) < 5 for t in pruned)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(len(t.intermediate_values) == 5 for t in complete)


def test_jobs_in_the_sweeps_process_report_to_its_own_study(tmp_path, monkeypatch):
    # Hydra's basic launcher runs each job in the sweep's process: its reports go to the sweep's
    # study, without opening the storage again for every trial.
    opened = []
    monkeypatch.setattr(trial_link, "load_study", lambda *args, **kwargs: opened.append(args))
    with sweep(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}", "steps=3",
               "hydra.sweeper.n_trials=4"):
        pass
    assert opened == []
    trials = study_of(tmp_path).trials
    assert len(trials) == 4 and all(len(t.intermediate_values) == 3 for t in trials)
    assert not trial_link._open_studies  # forgotten once the sweep ends


@pytest.mark.slow  # a subprocess: the command line is the point
def test_best_yaml_gives_the_apps_own_command_which_runs_the_best_trial(tmp_path):
    result = sphere(tmp_path, f"hydra.sweeper.storage={storage_of(tmp_path)}",
                    "hydra.sweeper.n_trials=4")
    assert result.returncode == 0, result.stderr
    best = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    assert best["command"].startswith(f"python {APP} ")
    assert f"x={best['params']['x']}" in best["command"].split()
    again = subprocess.run([sys.executable, *shlex.split(best["command"])[1:],
                            f"hydra.run.dir={tmp_path}/again"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow  # a subprocess: the command line is the point
def test_a_sweep_of_an_app_outside_the_project_imports_no_torch(tmp_path):
    # hydra/sweeper=mlp_optuna is offered to any Hydra app: composing and running it loads
    # neither torch nor this project's training or analysis code.
    probe = ("import atexit, runpy, sys\n"
             "atexit.register(lambda: print('LOADED', sorted(m for m in sys.modules if m in "
             "('torch', 'torchvision') or m.startswith(('mlp_sweep.training', "
             "'mlp_sweep.analysis')))))\n"
             f"sys.argv = [{str(APP)!r}, '--multirun', 'hydra.sweep.dir={tmp_path}/sweep', "
             f"'hydra.sweeper.storage={storage_of(tmp_path)}', 'hydra.sweeper.n_trials=3', "
             "'steps=2', 'hydra/sweeper/pruner=median']\n"
             f"sys.path.insert(0, {str(APP.parent)!r})\n"
             f"runpy.run_path({str(APP)!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout
    assert len(study_of(tmp_path).trials) == 3


@pytest.mark.slow  # a subprocess: the command line is the point
def test_the_readme_app_is_swept_and_pruned_as_its_first_line_says(tmp_path):
    app = APP.with_name("my_app.py")
    command = app.read_text().splitlines()[:2]  # the command in its header comment
    assert "python my_app.py --multirun hydra/sweeper=mlp_optuna" in command[0]
    result = subprocess.run(
        [sys.executable, str(app), "--multirun", "hydra/sweeper=mlp_optuna",
         "hydra/sweeper/pruner=median", "hydra.sweeper.storage=sqlite:///my.db", "+x=interval(-5,5)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/my.db")
    states = [t.state for t in study.trials]
    assert len(states) == 20 and TrialState.PRUNED in states
    assert abs(study.best_params["+x"] - 2) < 1.5


def test_enqueued_trials_run_first_count_in_n_trials_and_are_queued_once(tmp_path):
    first = ["hydra.sweeper.enqueue_trials=[{x:1.5,y:0},{x:-2.0}]",
             f"hydra.sweeper.storage={storage_of(tmp_path)}"]
    with sweep(tmp_path, *first, "hydra.sweeper.n_trials=4"):
        pass
    trials = study_of(tmp_path).trials
    assert len(trials) == 4
    assert trials[0].params == {"x": 1.5, "y": 0}
    # A partial set: x as given, y chosen by the sampler.
    assert trials[1].params["x"] == -2.0 and trials[1].params["y"] in (-5, 0, 5)
    # The same command again, with more trials, resumes without queueing the sets again.
    with sweep(tmp_path, *first, "hydra.sweeper.n_trials=6"):
        pass
    trials = study_of(tmp_path).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sum(t.params == {"x": 1.5, "y": 0} for t in trials) == 1


@pytest.mark.parametrize("overrides, message", [
    (["hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/nothing"],
     "hydra.sweeper.storage='postgresql://nobody@127.0.0.1:1/nothing' cannot be opened"),
    (["hydra.sweeper.storage=journal:/proc/no/such/place.journal"],
     "hydra.sweeper.storage='journal:/proc/no/such/place.journal': cannot create the folder"),
    (["hydra.sweeper.storage=redis://localhost/0"],
     "hydra.sweeper.storage='redis://localhost/0' is not a supported storage; allowed: sqlite:///PATH"),
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is not allowed; allowed: an integer >= 1"),
    (["hydra.sweeper.max_failure_rate=1.5"],
     "hydra.sweeper.max_failure_rate=1.5 is not allowed; allowed: a number from 0 to 1"),
    (["hydra.sweeper.max_failure_rate=-0.1"], "hydra.sweeper.max_failure_rate=-0.1 is not allowed"),
    (["hydra.sweeper.timeout=0"], "hydra.sweeper.timeout=0 is not allowed"),
    (["hydra/sweeper/pruner=median", "hydra.sweeper.pruner._target_=os.system"],
     "hydra.sweeper.pruner._target_='os.system' is not allowed; allowed: an optuna.pruners class"),
    (["hydra.sweeper.sampler._target_=os.system"],
     "hydra.sweeper.sampler._target_='os.system' is not allowed"),
    (["hydra.sweeper.params.x='interval(1)'"],
     "hydra.sweeper.params: 'x=interval(1)' cannot be read"),
    (["hydra.sweeper.storage=sqlite:///sphere.db", "hydra.sweeper.enqueue_trials=[{x:1.0},{q:1}]"],
     "Error: hydra.sweeper.enqueue_trials[1].q=1 is not in the search space; allowed: x, y"),
    (["hydra.sweeper.storage=sqlite:///sphere.db", "hydra.sweeper.enqueue_trials=[{x:9.0}]"],
     "Error: hydra.sweeper.enqueue_trials[0].x=9.0 is outside its range; allowed: a number from "
     "-5.5 to 5 in steps of 0.5"),
    (["hydra.sweeper.enqueue_trials=[{y:3}]"],
     "Error: hydra.sweeper.enqueue_trials[0].y=3 is outside its range; allowed: one of -5, 0, 5"),
    (["hydra.sweeper.enqueue_trials={x:1.0}"], "Error: hydra.sweeper.enqueue_trials={'x': 1.0} is "
     "not allowed; allowed: a list of parameter sets"),
    (["hydra/sweeper/sampler=annealing"], "Could not find 'hydra/sweeper/sampler/annealing'"),
    (["hydra/sweeper/pruner=patient"], "Could not find 'hydra/sweeper/pruner/patient'"),
])
def test_bad_sweeper_input_is_one_line_and_leaves_nothing(tmp_path, overrides, message):
    result = sphere(tmp_path, *overrides, here=True)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "sweep").exists()
    assert not list(tmp_path.glob("*.db")) and not list(tmp_path.glob("*.journal"))
