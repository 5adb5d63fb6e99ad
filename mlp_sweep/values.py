"""Plain values of a composed config: numbers, dotted keys, the config without Hydra's node."""

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf


def is_number(value: object) -> bool:
    """An int or a float, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(tree: Mapping, keep_empty: bool = False, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a config as plain containers) as `dotted.key: value` pairs; lists stay
    values. An empty mapping is dropped, or kept as the value `{}` with `keep_empty`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and (value or not keep_empty):
            flat.update(flatten(value, keep_empty, f"{name}."))
        else:
            flat[name] = value
    return flat


def resolved_without_hydra(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, each key resolved against the whole config as the job sees
    it, less the `hydra` node: its interpolations (hydra.job.num, hydra.runtime.output_dir) only
    resolve while Hydra runs a job, and a config composed from Python may carry it unresolved."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True)
            if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"}
