"""A sweep's run files in an artifact store (hydra.sweeper.artifacts): uploaded when each trial
ends, fetched by best.yaml, refit and compare on a host that does not hold the trial's folder."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mlp_sweep.job import CheckpointForRetry
from mlp_sweep.sweeping.artifacts import local_run_dir
from mlp_sweep.sweeping.results import write_results
from mlp_sweep.sweeping.resume import counted
from mlp_sweep.sweeping.storage import load_study
from mlp_sweep.sweeping.trial_link import TrialLink
from mlp_sweep.sweeping.trial_spec import TrialSpec
from mlp_sweep.training.run import train_run

from conftest import SMALL_DATA, compose_config, run_here, study_exists

STUDY = "course_fashion_mnist"  # hparams_search=optuna_course on SMALL_DATA
# What the presets upload of a trial's folder (hydra.sweeper.artifacts_include), logs aside
RUN_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "metrics.json",
             "status.json", "model.pt")


def small_sweep(data_root: Path, storage: str, *extra: str, epochs: int = 1,
                n_trials: int = 2) -> list[str]:
    return ["--multirun", "hparams_search=optuna_course", *SMALL_DATA, f"dataset.root={data_root}",
            "dataset.val_size=500", f"trainer.epochs={epochs}", f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.n_trials={n_trials}", *extra]


def swept_into(store: str, data_root: Path, tmp_path: Path, cwd: Path) -> str:
    """A small sweep run in `cwd` with the artifact store `store`: its storage URL."""
    cwd.mkdir(exist_ok=True)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_here(*small_sweep(data_root, storage, f"hydra.sweeper.artifacts={store}"), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return storage


def sweep_folder(cwd: Path) -> Path:
    [folder] = {p.parent for p in cwd.glob("multirun/*/*/optimization_results.yaml")}
    return folder


def test_each_ended_trial_uploads_its_run_files_and_records_their_ids(tmp_path, small_root,
                                                                       monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    storage = swept_into(str(store), small_root, tmp_path, tmp_path)
    study = load_study(STUDY, storage)
    for trial in study.get_trials():
        recorded = trial.user_attrs["artifacts"]
        assert recorded["store"] == f"file://{store}"
        assert set(recorded["files"]) == {*RUN_FILES, "train.log"}
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
    storage = swept_into(f"s3://{bucket}", small_root, tmp_path, host_a)
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
                       f"hydra.sweeper.artifacts={shared}", n_trials=n_trials)
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


@pytest.mark.slow  # a sweep killed, then resumed in another folder
def test_a_killed_trial_goes_on_from_the_checkpoint_it_copied_to_the_store(tmp_path, small_root):
    store, storage = tmp_path / "store", f"sqlite:///{tmp_path}/optuna.db"
    store.mkdir()
    args = small_sweep(small_root, storage, f"hydra.sweeper.artifacts={store}",
                       "hydra/sweeper/pruner=none", "hydra.sweeper.fuse=1", "optimizer=adam",
                       "optimizer.lr=0.001", epochs=30)
    host_a = tmp_path / "host_a"
    host_a.mkdir()
    sweep = subprocess.Popen([sys.executable, "-m", "mlp_sweep.train", *args], cwd=host_a,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed, deadline = None, time.time() + 240
    while killed is None and time.time() < deadline:  # once a checkpoint is in the store
        trials = load_study(STUDY, storage).get_trials(deepcopy=False) \
            if study_exists(tmp_path / "optuna.db") else []
        running = [t for t in trials if t.state == TrialState.RUNNING
                   and len(t.intermediate_values) >= 2 and "retry_files" in t.user_attrs]
        killed = running[0] if running else None
        time.sleep(0.05)
    assert killed is not None
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    killed = load_study(STUDY, storage).trials[killed.number]  # as it was when killed
    assert (store / killed.user_attrs["retry_files"]["checkpoint.pt"]).is_file()
    shutil.rmtree(host_a)  # the killed trial's folder, checkpoint.pt with it, is gone

    host_b = tmp_path / "host_b"
    host_b.mkdir()
    result = run_here(*args, cwd=host_b)
    assert result.returncode == 0, result.stderr
    study = load_study(STUDY, storage)
    assert len(counted(study)) == 2
    [retry] = [t for t in study.get_trials() if killed.number in t.system_attrs.get("retry_history", ())]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["resumed_after"] >= 1
    log = Path(retry.user_attrs["run_dir"], "train.log").read_text()
    assert f"going on from {killed.user_attrs['run_dir']} (its checkpoint in file://{store})" in log
    assert not list(store.glob("retry-*"))  # every copy removed once its trial ended


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


@pytest.mark.slow  # two workers, PostgreSQL, a refit
def test_the_readme_many_hosts_commands_as_written(tmp_path, mnist_root, postgres_url):
    # docs/artifact-stores.md's block, with its database and shared folder replaced by this test's (a fresh
    # database, so that its study name is free) and a small budget appended to the workers' line.
    import psycopg

    page = (Path(__file__).resolve().parents[1] / "docs" / "artifact-stores.md").read_text()
    [block] = [b for b in page.split("```bash\n")[1:]
               if "hydra.sweeper.artifacts=/mnt/shared/sweeps" in b]
    lines = block.split("```")[0].replace("\\\n", " ").splitlines()
    workers, refit, compare = [line.split() for line in lines if line.startswith(".venv/bin/python")]
    database = f"readme_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    url = postgres_url.rsplit("/", 1)[0] + "/" + database
    shared = tmp_path / "shared"
    shared.mkdir()

    def as_here(words: list[str]) -> list[str]:
        return [sys.executable if w == ".venv/bin/python" else
                w.replace("postgresql://optuna@db-host/optuna", url)
                 .replace("/mnt/shared/sweeps", str(shared)) for w in words]

    small = [f"dataset.root={mnist_root}", "dataset.train_limit=3000", "dataset.test_limit=1000",
             "dataset.val_size=500", "trainer.epochs=1", "trainer.progress=false",
             "hydra.sweeper.n_trials=3"]
    (tmp_path / "host-a").mkdir()
    trained = subprocess.run(as_here(workers) + small, cwd=tmp_path / "host-a", text=True,
                             capture_output=True, timeout=600,
                             env={**os.environ, "WANDB_MODE": "offline"})  # no W&B account here
    assert trained.returncode == 0, trained.stdout + trained.stderr
    study = load_study("mlp_mnist", url)
    assert len(counted(study)) == 3
    for trial in counted(study):  # each trial's W&B run, in its folder, offline
        assert list(Path(trial.user_attrs["run_dir"]).glob("wandb/offline-run-*/run-*.wandb"))
    best = study.best_trial
    shutil.rmtree(tmp_path / "host-a")  # the trials' folders are not on the refitting host

    (tmp_path / "host-c").mkdir()
    refitted = subprocess.run(as_here(refit) + ["--seeds", "1"], cwd=tmp_path / "host-c",
                              text=True, capture_output=True, timeout=600,
                              env={**os.environ, "MLP_SWEEP_CACHE": str(tmp_path / "cache"),
                                   "WANDB_MODE": "offline"})  # the trial's config logs to W&B
    assert refitted.returncode == 0, refitted.stdout + refitted.stderr
    summary = yaml.safe_load((tmp_path / "host-c" / "refit" / "mlp_mnist" / "refit.json").read_text())
    assert summary["trial_val_accuracy"] == best.value
    assert Path(summary["trial_dir"]).is_relative_to(tmp_path / "cache")
    assert (tmp_path / "host-c" / "refit" / "mlp_mnist" / "seed_0" / "model.pt").is_file()

    compared = subprocess.run(as_here(compare) + ["--json", "rows.json"], cwd=tmp_path / "host-c",
                              text=True, capture_output=True, timeout=300,
                              env={**os.environ, "MLP_SWEEP_CACHE": str(tmp_path / "cache")})
    assert compared.returncode == 0, compared.stdout + compared.stderr
    shown = yaml.safe_load((tmp_path / "host-c" / "rows.json").read_text())
    assert sorted(r["state"] for r in shown["rows"]) == ["completed"] * 3
    assert shown["rows"][0][shown["metric"]] == best.value  # best first


def test_a_store_that_fails_mid_run_costs_the_checkpoint_copy_not_the_run(tmp_path, small_root,
                                                                           caplog):
    store = tmp_path / "store"
    store.mkdir()
    trial = optuna.create_study().ask()
    spec = TrialSpec("s", None, 0, trial.number, str(tmp_path / "run"), artifacts=f"file://{store}")
    copied = CheckpointForRetry(TrialLink(spec, trial))
    kept: list[str] = []

    def lose_the_store_in_epoch_2(metrics) -> None:
        if metrics.epoch == 2:  # epoch 1's checkpoint is in the store and recorded
            kept.append(trial.user_attrs["retry_files"]["checkpoint.pt"])
            assert [p.name for p in store.iterdir()] == kept
            shutil.rmtree(store)

    cfg = compose_config(*SMALL_DATA, f"dataset.root={small_root}", "dataset.val_size=500",
                         "trainer.epochs=3")
    objective = train_run(cfg, tmp_path / "run", on_epoch=lose_the_store_in_epoch_2,
                          checkpoint_copy=copied)
    assert 0 < objective <= 1 and (tmp_path / "run" / "model.pt").is_file()
    assert trial.user_attrs["retry_files"] == {"checkpoint.pt": kept[0]}  # the last copy made
    assert f"{tmp_path}/run/checkpoint.pt could not be kept for a retry in file://{store}" \
        in caplog.text


@pytest.mark.parametrize("command, args, message", [
    ("mlp_sweep.compare", ["--study", "mlp_mnist"], "--storage=None --study='mlp_mnist': allowed: both"),
    ("mlp_sweep.refit", ["--storage", "sqlite:///x.db"], "--storage='sqlite:///x.db' --study=None"),
    ("mlp_sweep.compare", ["--storage", "sqlite:///nowhere.db", "--study", "s"],
     "--storage 'sqlite:///nowhere.db': no file nowhere.db; allowed: the storage a sweep wrote"),
    ("mlp_sweep.refit", ["--storage", "journal:nowhere.journal", "--study", "s"],
     "no file nowhere.journal"),
])
def test_a_study_named_by_halves_or_nowhere_is_one_line_and_makes_nothing(tmp_path, command,
                                                                          args, message):
    result = run_here(*args, cwd=tmp_path, command=command)
    assert result.returncode == 1
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if "Error:" in line]
    assert message in line
    assert list(tmp_path.iterdir()) == []  # no database, no refit folder


def test_compare_names_a_study_whose_folders_are_nowhere_here(tmp_path, small_root):
    (tmp_path / "store").mkdir()
    storage = swept_into(str(tmp_path / "store"), small_root, tmp_path, tmp_path / "host")
    shutil.rmtree(tmp_path / "host")
    shutil.rmtree(tmp_path / "store")  # the store is gone too
    result = run_here("--storage", storage, "--study", STUDY, cwd=tmp_path,
                      command="mlp_sweep.compare")
    assert result.returncode == 1
    assert (f"Error: none of the 2 trials of study '{STUDY}' has its folder on this host or in "
            "an artifact store reachable from here") in result.stderr
