"""A Hydra resolver that gives every run its own folder, even for runs started in the same second.

Hydra's default `outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}` is shared by two runs started in one
second. `${unique_dir:PATH}` creates PATH atomically and, when it already exists, PATH_1, PATH_2...
Hydra resolves the sweep folder more than once in a process (some launchers on fresh copies of the
config), so the folder made for a PATH is remembered for the life of the process.
"""

import os
from pathlib import Path

from omegaconf import OmegaConf

_made: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """Create and return a folder that did not exist before: `path`, else `path_N`."""
    if path in _made:
        return _made[path]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)
            _made[path] = candidate
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"


def register() -> None:
    OmegaConf.register_resolver("unique_dir", unique_dir, use_cache=True, replace=True)
