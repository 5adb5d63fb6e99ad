"""Turn `trainer.device` into a torch.device that is really present, and pick CPU threads."""

import os

import torch
from hydra.core.hydra_config import HydraConfig

from mlp_sweep.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; any other name must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"trainer.device={name!r} is not a device name; allowed: auto, cpu, cuda, cuda:N, mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index is not None and device.index >= count):
            raise ConfigError(
                f"trainer.device={name!r} is not present: this machine has {count} CUDA device(s); "
                f"allowed: {', '.join(available_devices())}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"trainer.device={name!r} is not present; allowed: {', '.join(available_devices())}"
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"trainer.device={name!r} is not supported; allowed: {', '.join(available_devices())}"
        )
    return device


def available_devices() -> list[str]:
    """The device names `trainer.device` accepts on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def cpu_threads(requested: int) -> int | None:
    """Torch threads for this job: `requested` when > 0; when 0, the cores shared out among the
    launcher's parallel jobs (joblib's `n_jobs`), or None for torch's own default."""
    if requested:
        return requested
    if not HydraConfig.initialized():
        return None
    n_jobs = HydraConfig.get().launcher.get("n_jobs") or 1
    cores = os.cpu_count() or 1
    if n_jobs < 0:  # joblib: -1 = all cores, -2 = all but one, ...
        n_jobs = max(1, cores + 1 + n_jobs)
    return max(1, cores // n_jobs) if n_jobs > 1 else None
