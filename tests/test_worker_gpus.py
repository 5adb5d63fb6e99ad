"""One GPU per sweep worker: the environment `mlp_sweep.workers` starts each worker with, for a
given list of visible GPUs and flags; bad flags are one line, exit 1, nothing started."""

import sys

import pytest

from mlp_sweep import workers
from mlp_sweep.sweeping.worker_pool import worker_environments, worker_gpus
from mlp_sweep.workers import main, visible_gpus


@pytest.mark.parametrize(("workers", "visible", "chosen", "per_gpu", "expected"), [
    (2, [], None, None, [None, None]),                      # no GPU: nothing changes
    (2, ["0", "1"], None, None, ["0", "1"]),                # one GPU each
    (3, ["0", "1"], None, None, ["0", "1", "0"]),           # round-robin past the last
    (4, ["0", "1", "2", "3"], [0, 2], None, ["0", "2", "0", "2"]),
    (4, ["0", "1"], None, 2, ["0", "0", "1", "1"]),         # two workers share each GPU
    (2, ["0", "1"], [1], 2, ["1", "1"]),
    (2, ["GPU-aa", "GPU-bb"], [1], None, ["GPU-bb", "GPU-bb"]),  # indexes into the visible names
])
def test_each_worker_gets_its_gpu(workers, visible, chosen, per_gpu, expected):
    gpus = worker_gpus(workers, visible, chosen, per_gpu)
    assert gpus == expected
    environments = worker_environments(gpus)
    for gpu, environment in zip(gpus, environments):
        assert environment.get("CUDA_VISIBLE_DEVICES") == gpu


def test_the_visible_gpus_are_the_ones_cuda_visible_devices_lists(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_without_a_gpu_driver_the_gpus_are_counted_without_torch(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(workers, "GPU_DRIVER_FILES", (str(tmp_path / "nvidiactl"),))
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch now raises ImportError
    assert visible_gpus() == []
    (tmp_path / "nvidiactl").touch()  # a driver: torch counts the GPUs
    with pytest.raises(ImportError):
        visible_gpus()


@pytest.mark.parametrize(("visible", "flags", "message"), [
    ("0,1", ["--gpus", "0,3"], "Error: --gpus 0,3: GPU 3 is not there; allowed: indexes among the "
                               "2 visible GPU(s), 0, 1"),
    ("", ["--gpus", "0"], "Error: --gpus 0: this machine has no visible GPU; allowed: leave it out"),
    ("0", ["--workers-per-gpu", "0"], "Error: --workers-per-gpu 0 is not allowed; allowed: an "
                                      "integer >= 1"),
])
def test_bad_gpu_flags_are_one_line_and_start_nothing(tmp_path, monkeypatch, capsys, visible, flags,
                                                      message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert main(["2", *flags]) == 1
    assert capsys.readouterr().err.strip() == message
    assert list(tmp_path.iterdir()) == []  # no study, no sweep folder
