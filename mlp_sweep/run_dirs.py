"""A Hydra resolver that gives every run its own folder, even for runs started in the same second.

Hydra's default `outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}` is shared by two runs started in one
second. `${unique_dir:PATH}` creates PATH atomically and, when it already exists, PATH_1, PATH_2...
OmegaConf caches the result in the config (and Hydra copies that cache into each job's config),
so every later resolution returns the same folder instead of creating another.
"""

import os
from pathlib import Path

from omegaconf import OmegaConf

def unique_dir(path: str) -> str:
    """Create and return a folder that did not exist before: `path`, else `path_N`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"


def register() -> None:
    OmegaConf.register_resolver("unique_dir", unique_dir, use_cache=True, replace=True)
