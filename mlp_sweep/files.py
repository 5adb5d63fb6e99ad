"""Writing files so that a killed process never leaves half of one, and reading them back.

Every write goes to a temporary name beside the target, then is renamed over it: a reader sees
the old file or the new one, whole.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import yaml


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it to `path`. The process id
    in its name keeps two processes writing the same file apart."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, content: dict) -> None:
    write_text(path, json.dumps(content, indent=2) + "\n")


def write_yaml(path: Path, content: dict) -> None:
    write_text(path, yaml.safe_dump(content, sort_keys=False))


def load_yaml(path: Path):
    """A YAML file's content, or {} when it is missing, empty or unreadable."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return {}


def load_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
