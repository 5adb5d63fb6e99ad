"""`train(cfg)` from Python, with a config from Hydra's compose API, as notebooks and
lightning-hydra-template's tests use it: with Hydra's own node (`return_hydra_config=True`) and a
run folder set by hand, with that node and no folder, and without it."""

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig

from mlp_sweep.train import train

from conftest import SMALL_DATA

QUICK = ["trainer.epochs=1", *SMALL_DATA]


@pytest.fixture(autouse=True)
def no_hydra_config_left():
    yield
    HydraConfig().cfg = None  # the next test starts as a fresh Python session would


def composed(small_root, *overrides: str, hydra_node: bool):
    with initialize_config_module("mlp_sweep.conf"):
        return compose("train", overrides=[*QUICK, f"dataset.root={small_root}", *overrides],
                       return_hydra_config=hydra_node)


@pytest.mark.parametrize("logger", ["none", "csv"])
def test_a_run_folder_set_by_hand_gets_the_runs_files(tmp_path, small_root, logger):
    cfg = composed(small_root, f"logger={logger}", hydra_node=True)
    cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig().set_config(cfg)
    accuracy = train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert accuracy == metrics["test_accuracy"] > 0.5  # the small problem is learnable
    assert (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "metrics.csv").is_file() == (logger == "csv")


def test_hydras_node_without_a_run_folder_writes_nothing(tmp_path, small_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = composed(small_root, hydra_node=True)
    HydraConfig().set_config(cfg)  # hydra.job.num and hydra.runtime.output_dir stay unset
    assert train(cfg) > 0.5
    assert list(tmp_path.iterdir()) == []


def test_without_hydras_node_nothing_is_written_unless_a_folder_is_given(tmp_path, small_root,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = composed(small_root, "optimizer=sgd", "optimizer.lr=0.05", hydra_node=False)
    assert train(cfg) > 0.5 and list(tmp_path.iterdir()) == []
    assert train(cfg, run_dir=tmp_path / "here") > 0.5
    assert (tmp_path / "here" / "status.json").is_file()
