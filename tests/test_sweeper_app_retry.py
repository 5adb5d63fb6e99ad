"""The sweeper knows nothing of the app it sweeps: shown with tests/sweeper_app/sphere.py, which
imports nothing of mlp_sweep's training. Its own files go to the artifact store
(`hydra.sweeper.artifacts_include`), a trial killed with its sweep is run again and gets back the
step counter its first attempt kept for it (`keep_for_retry`, `earlier_attempts`), the keys that
only say how it runs are the app's to name (`execution_keys`), and the workers' command is the
app's (`worker_command`, `threads_key`)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.worker_pool import worker_commands

from conftest import run_here, study_exists

SPHERE = Path(__file__).resolve().parent / "sweeper_app" / "sphere.py"
HYDRA_FILES = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}


def sphere_args(tmp_path: Path, sweep: str, *overrides: str) -> list[str]:
    return ["--multirun", f"hydra.sweep.dir={tmp_path}/{sweep}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/sphere.db", *overrides]


def sphere_study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path}/sphere.db")


@pytest.mark.parametrize("include, uploaded", [
    (None, {*HYDRA_FILES, "result.txt", "steps_done.txt", "sphere.log"}),  # every file, by default
    ("[result.txt,'.hydra/*.yaml']", {*HYDRA_FILES, "result.txt"}),
])
def test_the_apps_own_files_go_to_the_store(tmp_path, include, uploaded):
    store = tmp_path / "store"
    store.mkdir()
    chosen = [f"hydra.sweeper.artifacts_include={include}"] if include else []
    result = run_here(*sphere_args(tmp_path, "sweep", f"hydra.sweeper.artifacts={store}",
                                   "hydra.sweeper.n_trials=2", "steps=2", *chosen),
                      cwd=tmp_path, script=SPHERE)
    assert result.returncode == 0, result.stderr
    trials = sphere_study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        folder = Path(trial.user_attrs["run_dir"])
        assert (folder / "trial.json").is_file()  # the sweeper's, not the app's: not uploaded
        files = trial.user_attrs["artifacts"]["files"]
        assert set(files) == uploaded
        assert (store / files["result.txt"]).read_text() == f"{trial.value}\n"
        assert (folder / "result.txt").read_text() == f"{trial.value}\n"
    assert not list(store.glob("retry-*"))  # the kept step counters go when their trials end


def killed_while_running(tmp_path: Path, args: list[str], kept: bool) -> optuna.trial.FrozenTrial:
    """Run the sphere sweep `args` in a process of its own, and kill it (SIGKILL) once its trial
    has reported 3 steps (and, with `kept`, recorded its step counter's copy in the store); the
    trial as it was left."""
    sweep = subprocess.Popen([sys.executable, str(SPHERE), *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, victim = time.time() + 120, None
        while victim is None and time.time() < deadline:
            trials = sphere_study(tmp_path).get_trials(deepcopy=False) \
                if study_exists(tmp_path / "sphere.db") else []
            running = [t for t in trials if t.state == TrialState.RUNNING
                       and len(t.intermediate_values) >= 3
                       and (not kept or "retry_files" in t.user_attrs)]
            victim = running[0] if running else None
            time.sleep(0.05)
        assert victim is not None, "the trial never ran three steps"
    finally:
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
    return sphere_study(tmp_path).trials[victim.number]


@pytest.mark.parametrize("with_store", [True, False])
def test_a_killed_trials_retry_gets_the_step_counter_its_first_attempt_kept(tmp_path, with_store):
    store = tmp_path / "store"
    store.mkdir()
    extra = [f"hydra.sweeper.artifacts={store}"] if with_store else []
    common = ["hydra.sweeper.n_trials=1", "steps=40", "step_seconds=0.1", *extra]
    killed = killed_while_running(tmp_path, sphere_args(tmp_path, "first", *common), with_store)
    first_dir = Path(killed.user_attrs["run_dir"])
    done = int((first_dir / "steps_done.txt").read_text())
    if with_store:  # its folder is on another host: the retry's counter comes from the store
        kept = killed.user_attrs["retry_files"]["steps_done.txt"]
        stored = int((store / kept).read_text())
        # the kill may land between the counter's write and its copy: a step behind at most
        assert stored in (done, done - 1)
        done = stored
        shutil.rmtree(first_dir)

    resumed = run_here(*sphere_args(tmp_path, "second", *common),
                       cwd=tmp_path, script=SPHERE)
    assert resumed.returncode == 0, resumed.stderr
    trials = sphere_study(tmp_path).get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].user_attrs["interrupted"] is True
    [retry] = [t for t in trials if killed.number in t.system_attrs.get("retry_history", ())]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    # It went on after the steps its first attempt finished, and reported only the rest.
    assert 3 <= done < 40
    assert sorted(retry.intermediate_values) == list(range(done, 40))
    retry_dir = Path(retry.user_attrs["run_dir"])
    assert (retry_dir / "steps_done.txt").read_text() == "40\n"
    assert (retry_dir / "result.txt").read_text() == f"{retry.value}\n"
    if with_store:
        assert "result.txt" in retry.user_attrs["artifacts"]["files"]
        assert not list(store.glob("retry-*"))  # both attempts' kept counters are gone
    else:
        assert not list(store.iterdir())  # without a store nothing is copied


def test_the_keys_that_say_how_the_app_runs_are_the_apps_to_name(tmp_path):
    def sweep(folder: str, n_trials: int, step_seconds: float, *keys: str):
        return run_here(*sphere_args(tmp_path, folder, f"hydra.sweeper.n_trials={n_trials}",
                                     f"step_seconds={step_seconds}", *keys),
                        cwd=tmp_path, script=SPHERE)

    # step_seconds named: a resume that runs slower adds its trial to the study
    named = ["hydra.sweeper.execution_keys=[step_seconds]"]
    assert sweep("a", 1, 0.0, *named).returncode == 0
    resumed = sweep("b", 2, 0.001, *named)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(sphere_study(tmp_path).trials) == 2
    # not named (the default: none), in a study of its own: it is a setting, and a resume stops
    plain = ["hydra.sweeper.study_name=plain"]
    assert sweep("c", 1, 0.0, *plain).returncode == 0
    refused = sweep("d", 2, 0.001, *plain)
    assert refused.returncode == 1
    assert "holds trials run with other settings: step_seconds=0.001 (the study's: 0.0)" \
        in refused.stdout + refused.stderr
    assert len(optuna.load_study(study_name="plain",
                                 storage=f"sqlite:///{tmp_path}/sphere.db").trials) == 1


@pytest.mark.parametrize("override, message", [
    ("hydra.sweeper.artifacts_include=result.txt",
     "hydra.sweeper.artifacts_include='result.txt' is not allowed; allowed: a list of globs "
     "over a run folder"),
    ("hydra.sweeper.execution_keys=[step_seconds,3]",
     "hydra.sweeper.execution_keys=['step_seconds', 3] is not allowed; allowed: a list of "
     "config keys"),
    ("hydra.sweeper.worker_command=[]",
     "hydra.sweeper.worker_command=[] is not allowed; allowed: a list of words"),
    ("hydra.sweeper.threads_key=[a]",
     "hydra.sweeper.threads_key=['a'] is not allowed; allowed: the app's config key"),
])
def test_a_bad_app_key_is_one_line_and_makes_nothing(tmp_path, override, message):
    result = run_here(*sphere_args(tmp_path, "sweep", override), cwd=tmp_path, script=SPHERE)
    assert result.returncode == 1
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if "Error:" in line]
    assert message in line
    assert not (tmp_path / "sphere.db").exists() and not (tmp_path / "sweep").exists()


def test_the_workers_run_the_apps_command_with_its_threads_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the workers' journal study is created
    app = {"config_module": "mlp_sweep.conf", "config_name": "train"}
    preset = ["hparams_search=optuna_course"]
    [first, second] = worker_commands(2, preset, **app)
    assert first[:3] == [sys.executable, "-m", "mlp_sweep.train"]  # the presets' command
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert first[-1] == second[-1] == f"trainer.threads={threads}"
    assert (first[-2], second[-2]) == ("hydra.sweeper.sampler.seed=123",
                                       "hydra.sweeper.sampler.seed=124")

    [mine] = worker_commands(1, [*preset, "hydra.sweeper.worker_command=[python,my_app.py]",
                                 "hydra.sweeper.threads_key=null"], **app)
    assert mine[:2] == [sys.executable, "my_app.py"]
    assert not any(word.startswith("trainer.threads=") for word in mine)

    with pytest.raises(UserError, match=r"^hydra.sweeper.worker_command=None: the workers need "
                                        r"the command that runs the app; allowed: "):
        worker_commands(1, [*preset, "hydra.sweeper.worker_command=null"], **app)


def test_the_readme_retry_example_is_the_sphere_apps_own():
    page = (Path(__file__).resolve().parents[1] / "docs" / "own-app.md").read_text()
    [example] = [block.split("```")[0] for block in page.split("```python\n")[1:]
                 if "def steps_done_before" in block.split("```")[0]]
    assert example in SPHERE.read_text()
