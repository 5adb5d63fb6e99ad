"""Shared fixtures: the real config, real MNIST (fetched once per session), a small dataset in
the real IDX format, and the CLI.

Two tiers: `make test` runs everything; `make test-fast` (`-m "not slow"`) leaves out what is
marked slow, and every test that uses real MNIST is (it is fetched from the package index), so
the fast tier runs without a network on `small_root`'s files.

Both run in two pytest processes (pytest-xdist's `-n 2`), one per core: each test process, and
every command a test starts, trains with one torch thread on its process's core, so that two
tests side by side do not fight over the cores with four threads. A search's default
(`hydra.sweeper.workers=auto`) is then one process, as on a one-core machine; the tests of the
whole machine's workers give their commands every core (tests/test_machine_workers.py).
"""

import contextlib
import functools
import importlib
import io
import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here and in commands
if os.environ.get("PYTEST_XDIST_WORKER") and hasattr(os, "sched_setaffinity"):  # gw0, gw1, ...
    _cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {_cores[int(os.environ["PYTEST_XDIST_WORKER"][2:]) % len(_cores)]})

import runpy  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mlp_sweep.training.idx import write_idx  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the configs as a checkout holds them
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

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


def run_here(*args: str, cwd: Path, command: str = "mlp_sweep.train",
             script: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m COMMAND ARGS` in `cwd`, or `python SCRIPT ARGS`, run in this process: what it
    prints and its exit code, as `run_cli` gives them, without an interpreter to start and torch to
    import (about 5 s of CPU a command). For what a command does; `run_cli` where the process is
    the point: a kill, runs started together, the modules a process imports, an install."""
    if script is not None:
        argv, orig_argv = [str(script), *args], [sys.executable, str(script), *args]
        main = functools.partial(runpy.run_path, str(script), run_name="__main__")
    else:
        argv = [str(Path(*command.split(".")).with_suffix(".py")), *args]
        orig_argv = [sys.executable, "-m", command, *args]
        main = importlib.import_module(command).main
        if command != "mlp_sweep.train":  # Hydra's apps read sys.argv; the others take a list
            main = functools.partial(main, list(args))
    saved = sys.argv, sys.orig_argv
    sys.argv, sys.orig_argv = argv, orig_argv  # as the interpreter sets them for the command
    try:
        with as_a_new_process(cwd) as (out, err):
            try:
                code = main()
            except SystemExit as stop:  # as the interpreter turns it into an exit status
                code = stop.code or 0
                if isinstance(code, str):
                    print(code, file=sys.stderr)
                    code = 1
    finally:
        sys.argv, sys.orig_argv = saved
    code = code if isinstance(code, int) else 0  # Hydra's main returns the task's value
    return subprocess.CompletedProcess(orig_argv, code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def as_a_new_process(cwd: Path) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Run the block in `cwd` as a new process would start it (no logging configured, no Hydra
    set up) with its stdout and stderr captured; then put back what it changed for the rest of
    the tests: folder, environment, logging, torch's threads, Hydra's global state."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    folder, environment, threads = os.getcwd(), dict(os.environ), torch_threads()
    handlers, level = logging.root.handlers, logging.root.level
    logging.root.handlers = []  # as in a new process: logging.basicConfig then configures it
    out, err = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environment)  # the sweeper sets each job's trial in the environment
        torch_threads(threads)  # a run sets trainer.threads for the rest of its process
        for handler in logging.root.handlers:
            handler.close()  # the run's log files and console, which Hydra leaves open
        logging.root.handlers, logging.root.level = handlers, level
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # a job's config, which train(cfg) would write beside


def torch_threads(threads: int | None = None) -> int:
    """torch's thread count, set to `threads` first if given."""
    import torch  # here, not above: pytest-xdist's controller loads this file and runs no test

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def shared_tmp(tmp_path_factory) -> Path:
    """A folder every test process of this session sees: pytest-xdist gives each worker its own
    base folder, inside one they share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root holding real MNIST, got the way a user's first run gets it here; one for all
    the test processes, which prepare it in turn as a sweep's parallel jobs do."""
    from mlp_sweep.training.data import load_splits

    root = shared_tmp(tmp_path_factory) / "mnist_data"
    load_splits(compose_config(f"dataset.root={root}").dataset)
    return root


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "mnist_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        # A module's fixture (a sweep to compare, a study to serve) is built once per test
        # process that runs its tests: `--dist loadgroup` keeps them in one.
        if _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    # The long tests first (the peers benchmark's run, the longest, before all), so that the two
    # test processes end together instead of one of them finishing the last long test alone.
    items.sort(key=lambda item: (item.path.name != "test_peers.py",
                                 item.get_closest_marker("slow") is None))


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(
        definition.scope == "module"
        for definitions in info.name2fixturedefs.values() for definition in definitions)


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


def study_exists(database: Path) -> bool:
    """Whether the sweep has created its study, read without creating any table: Optuna would
    create the schema itself, racing the sweep that is creating it."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return connection.execute("SELECT COUNT(*) FROM studies").fetchone()[0] > 0
    except sqlite3.Error:
        return False


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1: the one `.ci/run` started, else one started here."""
    if os.environ.get("MLP_SWEEP_TEST_POSTGRES"):
        yield os.environ["MLP_SWEEP_TEST_POSTGRES"]
        return
    # Not under pytest's private temporary folder: the server runs as the postgres user.
    folder = tempfile.mkdtemp(prefix="mlp_sweep_postgres_")
    port = 55433 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))  # one each
    url = subprocess.run([str(SCRIPTS / "postgres.sh"), "start", folder, str(port)],
                         capture_output=True, text=True, check=True).stdout.strip()
    yield url
    subprocess.run([str(SCRIPTS / "postgres.sh"), "stop", folder], check=True)
    shutil.rmtree(folder)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """A local S3-compatible server (moto's) on 127.0.0.1, for the S3 artifact store: its URL.
    Started here, stopped by its process id."""
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("s3") / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError(f"moto's S3 server did not start on port {port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(server.pid, 15)
        server.wait(timeout=30)
        log.close()
