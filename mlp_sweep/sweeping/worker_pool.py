"""Asynchronous sweep workers: K Optuna sweep processes of one Hydra app on one study (the
command: mlp_sweep.workers). Each worker runs the app's `hydra.sweeper.worker_command`, with its
share of the cores in `hydra.sweeper.threads_key` where the app has one."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from hydra import compose, initialize_config_module

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.storage import create_study
from mlp_sweep.sweeping.sweep_settings import check_worker_keys, directions_of

DEFAULT_STORAGE = "journal:multirun/optuna.journal"  # Optuna's advice for processes on one host
# In the environment of each worker a sweep command starts (hydra.sweeper.workers): it starts
# none of its own, and leaves the search's closing lines to that command
SWEEP_WORKER_VARIABLE = "MLP_SWEEP_SWEEP_WORKER"


def worker_commands(workers: int, overrides: list[str], config_dir: Path | None = None, *,
                    config_module: str, config_name: str) -> list[list[str]]:
    """The command of each worker of the app whose config is `config_name` in `config_module`:
    its own sampler seed, its share of the cores. Creates the study first, so that the workers
    do not race to create the database schema."""
    if config_dir is not None:  # the same search path here and in every worker
        if not config_dir.is_dir():
            raise UserError(f"--config-dir {config_dir} is not a folder; allowed: a folder of "
                            "config groups to add to the search path")
        overrides = [f"hydra.searchpath=['file://{config_dir.resolve()}']", *overrides]
    with initialize_config_module(config_module=config_module):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    check_worker_keys(sweeper)
    command = command_of(sweeper.get("worker_command"))
    threads_key = sweeper.get("threads_key")
    storage, extra = sweeper.storage, []
    if storage is None or str(storage).startswith("sqlite"):
        storage = DEFAULT_STORAGE  # SQLite locks under parallel writes
        extra.append(f"hydra.sweeper.storage={storage}")
    create_study(sweeper.study_name, storage, None, None, directions_of(sweeper.direction))
    seed = sweeper.sampler.get("seed") or 0
    threads = max(1, usable_cores() // workers)
    return [
        [*command, "--multirun", *overrides, *extra, "hydra.sweeper.n_jobs=1",
         "hydra.sweeper.workers=1", f"hydra.sweeper.sampler.seed={seed + k}",
         *([f"{threads_key}={threads}"] if threads_key else [])]
        for k in range(workers)
    ]


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset), not
    every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS or Windows
        return os.cpu_count() or 1


def command_of(words: Any) -> list[str]:
    """`hydra.sweeper.worker_command` as a command, `python` as this interpreter (the one with
    mlp_sweep installed); UserError when it is not set."""
    if words is None:
        raise UserError("hydra.sweeper.worker_command=None: the workers need the command that "
                        "runs the app; allowed: a list of words, e.g. [python, my_app.py]")
    return [sys.executable if word == "python" else str(word) for word in words]


def worker_gpus(workers: int, visible: list[str], chosen: list[int] | None = None,
                per_gpu: int | None = None) -> list[str | None]:
    """The GPU each worker sees (its CUDA_VISIBLE_DEVICES), round-robin over the `chosen`
    indexes into `visible` (all by default), `per_gpu` workers on one GPU before the next;
    None for every worker on a machine without a GPU, where nothing changes."""
    if per_gpu is not None and per_gpu < 1:
        raise UserError(f"--workers-per-gpu {per_gpu} is not allowed; allowed: an integer >= 1")
    if not visible:
        if chosen or per_gpu is not None:
            flag = f"--gpus {','.join(map(str, chosen))}" if chosen else f"--workers-per-gpu {per_gpu}"
            raise UserError(f"{flag}: this machine has no visible GPU; allowed: leave it out")
        return [None] * workers
    indexes = list(range(len(visible))) if chosen is None else chosen
    missing = [i for i in indexes if not 0 <= i < len(visible)]
    if missing:
        raise UserError(f"--gpus {','.join(map(str, indexes))}: GPU {missing[0]} is not there; "
                        f"allowed: indexes among the {len(visible)} visible GPU(s), "
                        f"{', '.join(map(str, range(len(visible))))}")
    slots = [visible[i] for i in indexes for _ in range(per_gpu or 1)]
    return [slots[k % len(slots)] for k in range(workers)]


def worker_environments(gpus: list[str | None]) -> list[dict[str, str]]:
    """Each worker's environment: this one, its GPU, and output written line by line (the pool
    prefixes each line with the worker's name)."""
    environments = []
    for gpu in gpus:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gpu is not None:
            environment["CUDA_VISIBLE_DEVICES"] = gpu
        environments.append(environment)
    return environments


def run_workers(commands: list[list[str]], environments: list[dict[str, str]] | None = None) -> int:
    """Start every worker, wait for all; Ctrl-C or SIGTERM is passed on to each of them. Their
    output comes here line by line, each line named by its worker, so that lines never tangle."""
    environments = environments or [None] * len(commands)
    # Each in its own session: a terminal's Ctrl-C reaches this process only, which passes it on
    # once, so that every worker records its running trial as interrupted before it ends
    this_process = os.getpid()
    processes = [subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace",
                                  start_new_session=True,
                                  preexec_fn=lambda: _ended_with(this_process))
                 for command, environment in zip(commands, environments)]
    lock = threading.Lock()
    relays = [threading.Thread(target=_relay, args=(p.stdout, f"[worker {k}] ", lock), daemon=True)
              for k, p in enumerate(processes)]
    for relay in relays:
        relay.start()

    received: list[int] = []

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        # the first Ctrl-C (or SIGTERM) is passed on as it came; a second one kills
        received.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum if len(received) == 1 else signal.SIGKILL)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [process.wait() for process in processes]
        for relay in relays:
            relay.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:  # as a shell reports a command stopped by that signal
        return 128 + received[0]
    return max(codes, key=abs)


def _ended_with(parent: int) -> None:
    """In a worker, before it runs: on Linux, the kernel sends it SIGTERM when `parent` (the
    process that started it) dies, however it dies (kill -9 included), so that no worker goes on
    searching unwatched; its trial is run again by the next sweep on the study, as any
    interrupted trial is. A `worker_command` must run the app itself (not a wrapper that starts
    it), for the signal reaches the worker only."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)


def _relay(stream: IO[str], prefix: str, lock: threading.Lock) -> None:
    """Copy a worker's output to this process's, whole lines at a time, each with `prefix`;
    a progress bar's carriage returns end a line too."""
    for line in stream:
        for part in line.rstrip("\n").split("\r"):
            if part.strip():
                with lock:
                    sys.stdout.write(prefix + part + "\n")
                    sys.stdout.flush()
