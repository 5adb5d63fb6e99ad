"""docs/many-hosts.md's `optuna-dashboard sqlite:///multirun/optuna.db` on a study the CLI wrote: its JSON
API serves the trials, states and per-epoch values that Optuna reads from the same storage, and its
study page renders them in headless Chromium."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_here

pytestmark = pytest.mark.slow

SCREENSHOT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_page.sh"
STUDY = "course_mnist"
# 6 trials of 3 epochs on 2000 images (a few seconds), one at a time; the median pruner judges
# from the third trial's first epoch on, and the seeded TPE sampler and training make the same
# trials every run.
SWEEP = ["hparams_search=optuna_course", "hydra.sweeper.n_trials=6", "trainer.epochs=3",
         "trainer.progress=false", "dataset.train_limit=2000", "dataset.test_limit=500",
         "dataset.val_size=500", "hydra.sweeper.pruner.n_startup_trials=2",
         "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.fuse=1"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def storage(tmp_path_factory, mnist_root) -> str:
    """A study written by an Optuna course search with pruning, in a SQLite file."""
    folder = tmp_path_factory.mktemp("dashboard_study")
    url = f"sqlite:///{folder}/optuna.db"
    result = run_here("--multirun", *SWEEP, f"dataset.root={mnist_root}",
                      f"hydra.sweeper.storage={url}", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state for t in optuna.load_study(study_name=STUDY, storage=url).trials]
    assert len(states) == 6, states
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states, states
    return url


@pytest.fixture(scope="module")
def dashboard(storage, tmp_path_factory):
    """`optuna-dashboard STORAGE` on 127.0.0.1; yields its base URL, stops it by its process id."""
    port = free_port()
    log = tmp_path_factory.mktemp("dashboard_log") / "dashboard.log"
    # wsgiref, not the default gunicorn: one process to stop, and no control socket in ~/.gunicorn
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage,
               "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                get_json(f"{base}/api/meta")
                break
            except OSError:
                assert server.poll() is None, log.read_text()
                assert time.time() < deadline, f"no answer on {base} in 60 s:\n{log.read_text()}"
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def study_id(dashboard: str) -> int:
    summaries = get_json(f"{dashboard}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [STUDY]
    return summaries[0]["study_id"]


def test_api_serves_the_trials_optuna_reads_from_the_storage(storage, dashboard):
    truth = optuna.load_study(study_name=STUDY, storage=storage)
    detail = get_json(f"{dashboard}/api/studies/{study_id(dashboard)}")
    assert detail["name"] == STUDY and detail["directions"] == ["maximize"]
    assert detail["has_intermediate_values"]
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == [t.number for t in truth.trials]
    for trial in truth.trials:
        got = served[trial.number]
        assert got["state"] == trial.state.name.capitalize()  # "Complete", "Pruned"
        assert got["values"] == trial.values
        assert {p["name"]: p["param_external_value"] for p in got["params"]} == \
            {name: str(value) for name, value in trial.params.items()}
        # one value per epoch trained: all 3 for a complete trial, fewer for a pruned one
        steps = [(v["step"], v["value"]) for v in got["intermediate_values"]]
        assert steps == sorted(trial.intermediate_values.items())
        epochs = [step for step, _ in steps]
        allowed = [[1, 2, 3]] if trial.state == TrialState.COMPLETE else [[1], [1, 2]]
        assert epochs in allowed, (trial.number, trial.state, epochs)
    assert [t["number"] for t in detail["best_trials"]] == [truth.best_trial.number]


def test_study_page_renders_the_trials_in_headless_chromium(storage, dashboard, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); "
                    "the dashboard's API is still tested above")
    page = f"{dashboard}/dashboard/studies/{study_id(dashboard)}"
    subprocess.run([str(SCREENSHOT), page, str(tmp_path / "dom.html")], check=True, timeout=120)
    dom = (tmp_path / "dom.html").read_text()
    truth = optuna.load_study(study_name=STUDY, storage=storage)
    # drawn from the API's data: until it arrives the page says "Study #1" and draws no chart
    assert f"{STUDY} (id=" in dom and f"Best Trial (number={truth.best_trial.number})" in dom
    for trial in truth.trials:  # the intermediate-values chart's legend
        assert f"trial #{trial.number}" in dom

    subprocess.run([str(SCREENSHOT), page, str(tmp_path / "page.png"), "1280x900"],
                   check=True, timeout=120)
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(tmp_path / "page.png")
    assert image.shape[:2] == (900, 1280)
    colours = np.unique(image.reshape(-1, image.shape[2]), axis=0)
    assert len(colours) > 100, f"{len(colours)} colours: a blank page"
