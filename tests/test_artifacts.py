"""A sweep's run files in an artifact store (hydra.sweeper.artifacts): uploaded when each trial
ends, fetched by best.yaml, refit and compare on a host that does not hold the trial's folder."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from mlp_sweep.sweeping.artifacts import RUN_FILES, local_run_dir
from mlp_sweep.sweeping.results import write_results
from mlp_sweep.sweeping.resume import counted
from mlp_sweep.sweeping.storage import load_study

from conftest import SMALL_DATA, run_here

STUDY = "course_fashion_mnist"  # hparams_search=optuna_course on SMALL_DATA


def small_sweep(data_root: Path, storage: str, *extra: str) -> list[str]:
    return ["--multirun", "hparams_search=optuna_course", *SMALL_DATA, f"dataset.root={data_root}",
            "dataset.val_size=500", "trainer.epochs=1", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.n_trials=2", *extra]


def sweep_folder(cwd: Path) -> Path:
    [folder] = {p.parent for p in cwd.glob("multirun/*/*/optimization_results.yaml")}
    return folder


def test_each_ended_trial_uploads_its_run_files_and_records_their_ids(tmp_path, small_root,
                                                                       monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here(*small_sweep(small_root, storage, f"hydra.sweeper.artifacts={store}"),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load_study(STUDY, storage)
    for trial in study.get_trials():
        recorded = trial.user_attrs["artifacts"]
        assert recorded["store"] == f"file://{store}"
        assert set(RUN_FILES) <= set(recorded["files"]) and "train.log" in recorded["files"]
        for name, artifact_id in recorded["files"].items():  # each one whole in the store
            own = Path(trial.user_attrs["run_dir"], name).read_bytes()
            assert (store / artifact_id).read_bytes() == own, name

    # The sweep folder gone from this host (another host trained it): best.yaml, written again,
    # names the best trial's files fetched into the cache, model included.
    monkeypatch.setenv("MLP_SWEEP_CACHE", str(tmp_path / "cache"))
    trained = sweep_folder(tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.move(trained, moved)
    record = write_results(study, tmp_path / "reader")
    best = study.best_trial
    fetched = Path(record["run_dir"])
    assert fetched.is_relative_to(tmp_path / "cache") and record["trial"] == best.number
    assert record["trained_in"].startswith(best.user_attrs["run_dir"])
    assert (fetched / "model.pt").read_bytes() == (moved / str(best.number) / "model.pt").read_bytes()
    assert record["config"]["optimizer"] == yaml.safe_load(
        (moved / str(best.number) / ".hydra" / "config.yaml").read_text())["optimizer"]


def test_refit_from_a_third_folder_fetches_the_best_trial_from_an_s3_store(
        tmp_path, small_root, s3_endpoint, monkeypatch):
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "MLP_SWEEP_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    bucket = f"sweeps-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    host_a = tmp_path / "host_a"
    host_a.mkdir()
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here(*small_sweep(small_root, storage, f"hydra.sweeper.artifacts=s3://{bucket}"),
                      cwd=host_a)
    assert result.returncode == 0, result.stderr
    best = load_study(STUDY, storage).best_trial
    model = Path(best.user_attrs["run_dir"], "model.pt").read_bytes()
    shutil.rmtree(host_a)  # nothing of the sweep left on this disk but the study

    reader = tmp_path / "host_c"
    reader.mkdir()
    refit = run_here("--storage", storage, "--study", STUDY, "--seeds", "1", cwd=reader,
                     command="mlp_sweep.refit")
    assert refit.returncode == 0, refit.stderr
    summary = yaml.safe_load((reader / "refit" / STUDY / "refit.json").read_text())
    fetched = Path(summary["trial_dir"])
    assert fetched.is_relative_to(tmp_path / "cache")
    assert (fetched / "model.pt").read_bytes() == model
    assert summary["trial_val_accuracy"] == best.value
    assert (reader / "refit" / STUDY / "seed_0" / "model.pt").is_file()


@pytest.mark.slow  # two workers and PostgreSQL
def test_workers_on_two_hosts_share_one_artifact_folder_and_a_third_refits_the_best(
        tmp_path, small_root, postgres_url):
    name, n_trials = f"hosts_{uuid.uuid4().hex[:8]}", 6
    shared = tmp_path / "shared_artifacts"
    shared.mkdir()
    cache = tmp_path / "cache"
    args = small_sweep(small_root, postgres_url, f"hydra.sweeper.study_name={name}",
                       f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.artifacts={shared}")
    workers = []
    for host, seed in (("host-a", 1), ("host-b", 2)):  # each in its own working folder
        (tmp_path / host).mkdir()
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "mlp_sweep.train", *args, f"hydra.sweeper.sampler.seed={seed}"],
            cwd=tmp_path / host, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "MLP_SWEEP_HOST": host, "MLP_SWEEP_CACHE": str(cache)}))
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output

    study = load_study(name, postgres_url)
    assert len(counted(study)) == n_trials
    hosts = {t.user_attrs["worker"].split(":")[0] for t in study.get_trials()}
    assert hosts == {"host-a", "host-b"}
    best = study.best_trial
    model = Path(best.user_attrs["run_dir"], "model.pt").read_bytes()

    # Host b's disk is not reachable from here: compare on host a's sweep still shows its trials.
    shutil.move(tmp_path / "host-b", tmp_path / "gone")
    shown = run_here("--no-group", "--json", str(tmp_path / "rows.json"),
                     str(sweep_folder(tmp_path / "host-a")), cwd=tmp_path / "host-a",
                     command="mlp_sweep.compare")
    assert shown.returncode == 0, shown.stderr
    rows = yaml.safe_load((tmp_path / "rows.json").read_text())["rows"]
    completed = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len([r for r in rows if r["state"] == "completed"]) == len(completed)

    reader = tmp_path / "host-c"
    reader.mkdir()
    os.environ["MLP_SWEEP_CACHE"] = str(tmp_path / "cache_c")
    try:
        refit = run_here("--storage", postgres_url, "--study", name, "--seeds", "1", cwd=reader,
                         command="mlp_sweep.refit")
    finally:
        del os.environ["MLP_SWEEP_CACHE"]
    assert refit.returncode == 0, refit.stderr
    summary = yaml.safe_load((reader / "refit" / name / "refit.json").read_text())
    assert summary["trial_val_accuracy"] == best.value
    assert (Path(summary["trial_dir"]) / "model.pt").read_bytes() == model


@pytest.mark.parametrize("url, reason", [
    ("{tmp}/no_such_folder", "FileNotFoundError: no folder {tmp}/no_such_folder"),
    ("file://{tmp}/optuna.db-not", "FileNotFoundError: no folder {tmp}/optuna.db-not"),
    ("ftp://host/folder", None),
    ("s3://bucket/prefix", None),
])
def test_a_store_that_cannot_be_used_stops_the_sweep_before_anything_is_made(
        tmp_path, small_root, url, reason):
    url = url.format(tmp=tmp_path)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here(*small_sweep(small_root, storage, f"hydra.sweeper.artifacts={url}"),
                      cwd=tmp_path)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() + result.stdout.splitlines()
              if "Error:" in line]
    assert "hydra.sweeper.artifacts=" in line and "allowed: a folder every host reaches" in line
    if reason:
        assert reason.format(tmp=tmp_path) in line
    assert not (tmp_path / "optuna.db").exists() and not list(tmp_path.glob("multirun/*/*/*"))


def test_refit_of_a_trial_on_another_host_without_a_store_names_the_folder(tmp_path, small_root):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert run_here(*small_sweep(small_root, storage), cwd=tmp_path).returncode == 0
    best = load_study(STUDY, storage).best_trial
    shutil.rmtree(tmp_path / "multirun")
    refit = run_here("--storage", storage, "--study", STUDY, cwd=tmp_path, command="mlp_sweep.refit")
    assert refit.returncode == 1
    assert (f"Error: the best trial {best.number} of study '{STUDY}' ran in "
            f"{best.user_attrs['run_dir']}") in refit.stderr
    assert "allowed: a sweep run with hydra.sweeper.artifacts=URL" in refit.stderr
    assert not (tmp_path / "refit").exists()
    assert local_run_dir(STUDY, best) is None
