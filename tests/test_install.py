"""The wheel as a new user gets it: built from this checkout, installed (not editable) into a
throw-away environment, and run from a folder that is not the checkout.

The environment reuses this one's installed dependencies through a .pth line, so nothing is
downloaded; the editable install of this checkout is not visible there (its finder is started by
a .pth file of this environment, which the throw-away one does not run).
"""

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
QUICK = ["trainer.epochs=1", "trainer.progress=false",
         "dataset.train_limit=1000", "dataset.test_limit=500"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("mlp_sweep-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The bin folder of a fresh environment holding the wheel."""
    env = tmp_path_factory.mktemp("env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    python = env / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return env / "bin"


def run(command: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_wheel_carries_every_config_of_conf(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"mlp_sweep/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)


def test_installed_package_is_the_wheel_not_this_checkout(installed, tmp_path):
    shown = run([installed / "python", "-c",
                 "import mlp_sweep, importlib.resources as r; print(mlp_sweep.__file__); "
                 "print(r.files('mlp_sweep.conf').joinpath('train.yaml').is_file())"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    location, has_train = shown.stdout.split()
    assert Path(location).is_relative_to(installed.parent) and has_train == "True"


def test_console_script_trains_one_epoch_from_another_folder(installed, tmp_path, mnist_root):
    done = run([installed / "mlp-sweep-train", *QUICK, f"dataset.root={mnist_root}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = tmp_path.glob("outputs/*/*/metrics.json")
    assert "test accuracy" in done.stdout
    assert metrics.is_file()


def test_search_with_a_users_config_dir_then_compare_and_refit(installed, tmp_path, mnist_root):
    # The user's own option of an existing group, layered on the package's configs.
    mine = tmp_path / "my_configs" / "optimizer"
    mine.mkdir(parents=True)
    (mine / "my_sgd.yaml").write_text("_target_: torch.optim.SGD\nlr: 0.05\nmomentum: 0.9\n")
    work = tmp_path / "work"
    work.mkdir()
    searched = run([installed / "python", "-m", "mlp_sweep.train", "--multirun",
                    "--config-dir", tmp_path / "my_configs", "hparams_search=optuna_course",
                    "hydra.sweeper.n_trials=2", "optimizer=my_sgd", "dataset.val_size=500",
                    *QUICK, f"dataset.root={mnist_root}"], work)
    assert searched.returncode == 0, searched.stderr[-3000:]
    (sweep,) = {p.parents[1] for p in work.glob("multirun/*/*/*/metrics.json")}
    configs = [yaml.safe_load(p.read_text()) for p in sweep.glob("*/.hydra/config.yaml")]
    assert len(configs) == 2
    assert all(c["optimizer"]["_target_"] == "torch.optim.SGD" and c["optimizer"]["momentum"] == 0.9
               for c in configs)
    assert (work / "multirun" / "optuna.db").is_file()

    compared = run([installed / "mlp-sweep-compare", sweep], work)
    assert compared.returncode == 0, compared.stderr
    assert "course_mnist" in compared.stdout and str(sweep.relative_to(work)) in compared.stdout

    refitted = run([installed / "mlp-sweep-refit", sweep, "--seeds", "1"], work)
    assert refitted.returncode == 0, refitted.stderr[-3000:]
    assert (sweep / "refit.json").is_file()


def test_workers_console_script_runs_a_study_with_a_users_config_dir(installed, tmp_path,
                                                                     mnist_root):
    mine = tmp_path / "my_configs" / "activation"
    mine.mkdir(parents=True)
    (mine / "my_elu.yaml").write_text("_target_: torch.nn.ELU\n")
    work = tmp_path / "work"
    work.mkdir()
    done = run([installed / "mlp-sweep-workers", "1", "--config-dir", mine.parent,
                "hparams_search=optuna_course", "hydra.sweeper.n_trials=1", "activation=my_elu",
                "dataset.val_size=500", *QUICK, f"dataset.root={mnist_root}"], work)
    assert done.returncode == 0, done.stderr[-3000:]
    (config,) = work.glob("multirun/*/*/0/.hydra/config.yaml")
    assert yaml.safe_load(config.read_text())["activation"]["_target_"] == "torch.nn.ELU"
    assert (work / "multirun" / "optuna.journal").is_file()


def test_a_missing_extra_names_the_requirement_to_install_from_a_wheel(installed, tmp_path):
    # An installed wheel has no checkout to `pip install -e` from: the line names the extra's
    # requirement instead. `import mlflow` fails here as it does without the extra.
    fake = tmp_path / "without_mlflow" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n")
    done = subprocess.run([str(installed / "mlp-sweep-train"), "logger=mlflow",
                           f"dataset.root={tmp_path / 'data'}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(fake.parent)})
    [requirement] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["mlflow"]
    assert done.returncode == 1
    assert ("Error: logger=mlflow needs MLflow (No module named 'mlflow'); install it with: "
            f"pip install '{requirement}'") in done.stdout, done.stdout + done.stderr


def test_the_runtime_install_brings_no_tracker_storage_driver_or_peer(tmp_path):
    # `make train` installs the project alone; pip resolves what that brings into an empty
    # environment (--ignore-installed), from the same package index.
    assert "\t$(PY) -m pip install --quiet --disable-pip-version-check -e .\n" in \
        (REPO / "Makefile").read_text()
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                    "--quiet", "--disable-pip-version-check", "--report", str(report), "-e",
                    str(REPO)], check=True, capture_output=True, text=True, timeout=600)
    import json

    names = {item["metadata"]["name"].lower().replace("_", "-")
             for item in json.loads(report.read_text())["install"]}
    assert {"torch", "torchvision", "hydra-core", "omegaconf", "optuna", "mlp-sweep"} <= names
    extras = {"mlflow", "wandb", "tensorboard", "boto3", "moto", "ray", "smac", "psycopg",
              "psycopg-binary", "optuna-dashboard", "pytest"}
    assert not names & extras
