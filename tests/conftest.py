"""Shared fixtures: the real config, real MNIST (fetched once per session), and the CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from mlp_sweep.training.data import load_splits

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the configs as a checkout holds them

# Small real subsets keep an end-to-end run to a few seconds.
QUICK = ["trainer.epochs=1", "trainer.progress=false",
         "dataset.train_limit=2000", "dataset.test_limit=1000"]


def compose_config(*overrides: str) -> DictConfig:
    """The project's config, composed as `python -m mlp_sweep.train OVERRIDES` would."""
    with initialize_config_module(config_module="mlp_sweep.conf"):
        return compose(config_name="train", overrides=list(overrides))


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m mlp_sweep.train ARGS` in `cwd`, as a user would."""
    return subprocess.run([sys.executable, "-m", "mlp_sweep.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root holding real MNIST, got the way a user's first run gets it here."""
    root = tmp_path_factory.mktemp("data")
    load_splits(compose_config(f"dataset.root={root}").dataset)
    return root
