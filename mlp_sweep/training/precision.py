"""`trainer.precision`: the dtype a run's training matrix multiplies use.

fp32 trains in float32. bf16 runs the forward and backward passes under `torch.autocast` with
bfloat16: the weights, the optimizer's state and the loss stay float32, and evaluation is float32.
auto chooses bf16 where the device computes it natively and a short timing of this model's
training step says it is faster, else fp32; the choice is logged and kept in metrics.json.
"""

import copy
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

from mlp_sweep.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")

# CPU instructions that compute bfloat16 products natively (AVX-512 BF16, Intel AMX); without
# them torch emulates bfloat16 and it is slower than float32.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

# auto keeps fp32 unless bf16 is at least this much faster: a choice that noise could flip
# is not worth a run's reproducibility.
AUTO_MIN_SPEEDUP = 1.15


def check_precision(name: object) -> None:
    if name not in PRECISIONS:
        raise ConfigError(f"trainer.precision={name!r} is not allowed; "
                          f"allowed: {', '.join(PRECISIONS)}")


def native_bf16(device: torch.device) -> bool:
    """True where `device` computes bfloat16 matrix products in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)
    return False


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def training_dtype(name: str, device: torch.device, model: nn.Module, batch_size: int,
                   input_shape: tuple[int, ...]) -> torch.dtype:
    """The dtype `trainer.precision=name` trains `model` in on `device`."""
    check_precision(name)
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"trainer.precision=bf16 is not available on trainer.device="
                              f"{device.type}; allowed: fp32, auto")
        return torch.bfloat16
    if not native_bf16(device):
        log.info(f"precision auto: fp32 ({device.type} has no native bfloat16)")
        return torch.float32
    fp32_s, bf16_s = step_times(model, batch_size, input_shape, device)
    chosen = torch.bfloat16 if fp32_s > AUTO_MIN_SPEEDUP * bf16_s else torch.float32
    log.info(f"precision auto: {precision_name(chosen)} (a training step takes "
             f"{fp32_s * 1e3:.2f} ms in fp32, {bf16_s * 1e3:.2f} ms in bf16)")
    return chosen


def step_times(model: nn.Module, batch_size: int, input_shape: tuple[int, ...],
               device: torch.device, steps: int = 8) -> tuple[float, float]:
    """Median seconds of a forward and backward pass of a copy of `model` on random inputs, in
    fp32 and in bf16. Neither the model nor the random number streams of the run are touched."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(batch_size, *input_shape, device=device)
        times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
        for _ in range(steps + 1):  # the first round warms up both paths
            for dtype in times:
                start = time.perf_counter()
                with autocast(device, dtype):
                    out = probe(x)
                out.float().sum().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[dtype].append(time.perf_counter() - start)
    return tuple(sorted(t[1:])[steps // 2] for t in times.values())


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """The context a training step's forward pass runs in for `dtype`."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"
